"""Tests of the ranking step: preference pairs from distances, and the ADE distance."""

import numpy as np
import pytest

from dpa_omf.preference import ranking


def test_rank_and_pair_invariants(rng):
    d = rng.normal(size=64).astype(np.float32)
    d[[3, 7, 40]] = d[10]  # ties
    d[5] = np.nan  # ranks last
    pref, unpref = map(np.asarray, ranking.rank_and_pair(d, 16))
    assert pref.shape == unpref.shape == (16,)
    assert len(set(pref) | set(unpref)) == 32  # disjoint, no repeats
    key = np.where(np.isnan(d), np.inf, d)
    assert key[pref].max() <= key[unpref].min()
    assert np.all(np.diff(key[pref]) >= 0) and np.all(np.diff(key[unpref]) <= 0)
    assert unpref[0] == 5
    np.testing.assert_array_equal(pref, np.argsort(key, kind="stable")[:16])
    # Permuting the rollouts permutes the result (ties aside): deterministic.
    again = np.asarray(ranking.rank_and_pair(d, 16)[0])
    np.testing.assert_array_equal(pref, again)
    with pytest.raises(ValueError):
        ranking.rank_and_pair(d[:20], 16)


def test_ade_against_numpy(rng):
    r, a, t = 3, 4, 9
    rxy = rng.normal(size=(r, a, t, 2)).astype(np.float32)
    exy = rng.normal(size=(a, t, 2)).astype(np.float32)
    valid = rng.random((a, t)) < 0.6
    valid[2] = False
    scene, per_agent = ranking.ade_distance(rxy, exy, valid)
    ref = np.zeros((r, a))
    for i in range(r):
        for j in range(a):
            if valid[j].any():
                ref[i, j] = np.linalg.norm(rxy[i, j] - exy[j], axis=-1)[valid[j]].mean()
    np.testing.assert_allclose(np.asarray(per_agent), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(scene), ref[:, [0, 1, 3]].mean(-1), rtol=1e-5)

"""Bootstrap intervals over scenes."""

import numpy as np
import pytest

from dpa_omf.metrics import stats


def test_interval_holds_the_mean_shrinks_with_scenes_and_repeats(rng):
    few = rng.normal(0.7, 0.05, size=16)
    many = rng.normal(0.7, 0.05, size=1024)
    lo, hi = stats.bootstrap_ci(few)
    assert lo < few.mean() < hi
    lo2, hi2 = stats.bootstrap_ci(many)
    assert lo2 < many.mean() < hi2
    assert hi2 - lo2 < (hi - lo) / 4  # ~ 1 / sqrt(64) of the width
    assert stats.bootstrap_ci(few) == (lo, hi)  # fixed seed: reproducible
    # the normal approximation: half-width ~ 1.96 sd / sqrt(n)
    assert (hi2 - lo2) / 2 == pytest.approx(1.96 * many.std() / np.sqrt(many.size), rel=0.15)


def test_paired_difference_cancels_the_scene_effect(rng):
    scene = rng.normal(0.6, 0.2, size=64)  # scenes differ a lot
    a, b = scene + 0.01, scene.copy()
    d = stats.paired_difference(a, b)
    assert d["mean"] == pytest.approx(0.01)
    assert d["lo"] == pytest.approx(0.01) and d["hi"] == pytest.approx(0.01)  # pairing removes the spread
    lo, hi = stats.bootstrap_ci(a)
    assert hi - lo > 0.05  # unpaired, the scene spread dominates


def test_refusals():
    with pytest.raises(ValueError):
        stats.bootstrap_ci(np.array([0.5, np.nan]))
    with pytest.raises(ValueError):
        stats.bootstrap_ci(np.array([]))
    with pytest.raises(ValueError, match="not the same scenes"):
        stats.paired_difference(np.ones(3), np.ones(4))

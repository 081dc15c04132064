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


def test_two_level_with_seeds_that_agree_is_the_scene_bootstrap(rng):
    scenes = rng.normal(0.7, 0.1, size=40)
    same = np.tile(scenes, (3, 1))  # three seeds, identical on every scene
    assert stats.two_level_ci(same) == pytest.approx(stats.bootstrap_ci(scenes), abs=1e-12)
    assert stats.two_level_ci(scenes[None]) == pytest.approx(stats.bootstrap_ci(scenes), abs=1e-12)  # one seed
    d = stats.two_level_paired_difference(same + 0.01, same)
    assert d["mean"] == pytest.approx(0.01) and d["lo"] == pytest.approx(0.01) and d["hi"] == pytest.approx(0.01)


def test_two_level_variance_is_the_sum_of_seed_and_scene_variances(rng):
    """x[s, j] = a_s + b_j: the bootstrap mean is mean(a over resampled seeds) + mean(b over resampled scenes),
    whose variance is var(a) / S + var(b) / N (population variances), independent of each other."""
    a, b = np.array([-0.04, -0.02, 0.0, 0.02, 0.04]), rng.normal(0, 0.1, size=64)
    x = a[:, None] + b[None, :]
    means = stats.two_level_means(x, resamples=20000)
    expected = a.var() / a.size + b.var() / b.size
    assert means.var() == pytest.approx(expected, rel=0.05)
    assert means.mean() == pytest.approx(x.mean(), abs=3e-3)
    lo, hi = stats.two_level_ci(x)
    slo, shi = stats.bootstrap_ci(x.mean(axis=0))  # the scene bootstrap of seed means misses the seeds' spread
    assert (hi - lo) / (shi - slo) == pytest.approx(np.sqrt(expected / (b.var() / b.size)), rel=0.15)


def test_spread_and_the_detectable_difference(rng):
    a, b = rng.normal(0, 0.02, size=3), rng.normal(0, 0.1, size=256)
    sp = stats.spread(a[:, None] + b[None, :])
    assert sp["between_scenes"] == pytest.approx(b.std(ddof=1))
    assert sp["between_seeds"] == pytest.approx(a.std(ddof=1))
    assert sp["standard_error"] == pytest.approx(np.sqrt(b.var(ddof=1) / 256 + a.var(ddof=1) / 3))
    assert stats.detectable_difference(0.01) == pytest.approx(0.01 * (1.959964 + 0.841621), rel=1e-5)
    assert stats.spread(b[None])["between_seeds"] == 0.0
    # the scenes that bring the detectable difference down to a target, and when seeds limit it instead
    n = stats.scenes_needed(0.05, 0.005, 3, 0.018)
    assert stats.detectable_difference(np.sqrt(0.05 ** 2 / n + 0.005 ** 2 / 3)) == pytest.approx(0.018)
    assert stats.scenes_needed(0.05, 0.011, 3, 0.017) == float("inf")  # 2.80 * 0.011 / sqrt(3) = 0.0178 > 0.017
    with pytest.raises(ValueError, match="seeds, scenes"):
        stats.two_level_ci(b)
    with pytest.raises(ValueError, match="not the same seeds"):
        stats.two_level_paired_difference(np.ones((2, 3)), np.ones((3, 3)))

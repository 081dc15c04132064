"""Confidence intervals over scenes (and seeds): the percentile bootstrap, plain, paired and two-level.

Scenes are the unit of resampling (the challenge averages per-scene
metrics). The resampling indices come from a fixed seed, so an interval is
reproducible, and a paired interval resamples the SAME scenes for both
models (their per-scene values are paired: same scenes, same rollout keys).

A study repeats the alignment over seeds and scores every seed on the same
scenes: ``two_level_*`` take ``[S seeds, N scenes]`` arrays and resample
seeds and scenes together, so the interval also holds the spread between
alignment seeds; ``spread`` and ``detectable_difference`` give the smallest
difference such a protocol resolves.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

DEFAULT_RESAMPLES = 2000


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values [N]`` (NaN-free; N >= 1)."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"bootstrap_ci needs a non-empty finite 1-D array, got shape {v.shape}")
    idx = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    means = v[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                      seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over paired scenes and its bootstrap interval: ``{"mean", "lo", "hi"}``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: shapes {a.shape} != {b.shape} (not the same scenes)")
    d = a - b
    lo, hi = bootstrap_ci(d, level, resamples, seed)
    return {"mean": float(d.mean()), "lo": lo, "hi": hi}


def _matrix(values: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or 0 in v.shape or not np.isfinite(v).all():
        raise ValueError(f"{name} needs a finite [seeds, scenes] array with both sizes >= 1, got shape {v.shape}")
    return v


def two_level_means(values: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Bootstrap means ``[resamples]`` of ``values [S seeds, N scenes]``, resampling seeds and scenes together.

    The design is crossed: every seed is scored on the same N scenes (with the seed's rollout keys), so one
    resample draws N scenes (shared by all seeds) and S seeds, both with replacement, and averages the
    S x N block they select. The scene indices are drawn first, from the same generator call as
    ``bootstrap_ci``'s: with one seed, or seeds that agree on every scene, the means equal the scene
    bootstrap's. Their variance approaches var(seed means) / S + var(scene means) / N (population variances)
    minus the interaction's double count, i.e. both sources of spread.
    """
    v = _matrix(values, "two_level_means")
    s, n = v.shape
    rng = np.random.default_rng(seed)
    scenes = rng.integers(0, n, size=(resamples, n))
    seeds = rng.integers(0, s, size=(resamples, s))
    # mean over the selected block = mean over the chosen seeds of each seed's mean over the chosen scenes
    per_seed = np.stack([v[:, idx].mean(axis=1) for idx in scenes])  # [resamples, S]
    return np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)


def two_level_ci(values: np.ndarray, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``values [S seeds, N scenes]`` over seeds and scenes together."""
    means = two_level_means(values, resamples, seed)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def two_level_paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95,
                                resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` (``[S seeds, N scenes]`` each, paired: same seeds' keys, same scenes) and its two-level
    interval: ``{"mean", "lo", "hi"}``."""
    a, b = _matrix(a, "two_level_paired_difference"), _matrix(b, "two_level_paired_difference")
    if a.shape != b.shape:
        raise ValueError(f"two_level_paired_difference: shapes {a.shape} != {b.shape} (not the same seeds and scenes)")
    d = a - b
    lo, hi = two_level_ci(d, level, resamples, seed)
    return {"mean": float(d.mean()), "lo": lo, "hi": hi}


def spread(values: np.ndarray) -> dict[str, float]:
    """The spread of ``values [S seeds, N scenes]`` (e.g. paired differences): ``between_scenes`` (sample SD of the
    seed-averaged scene values), ``between_seeds`` (sample SD of the scene-averaged seed values; 0 with one seed)
    and ``standard_error`` of the grand mean, sqrt(between_scenes^2 / N + between_seeds^2 / S) (conservative:
    each term also holds a share of the seed x scene interaction)."""
    v = _matrix(values, "spread")
    s, n = v.shape
    scene_sd = float(v.mean(axis=0).std(ddof=1)) if n > 1 else 0.0
    seed_sd = float(v.mean(axis=1).std(ddof=1)) if s > 1 else 0.0
    return {"between_scenes": scene_sd, "between_seeds": seed_sd,
            "standard_error": float(np.sqrt(scene_sd ** 2 / n + seed_sd ** 2 / s))}


def detectable_difference(standard_error: float, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at ``level`` detects with probability ``power``, given
    the standard error of the measured difference: (z_{1-(1-level)/2} + z_power) * SE (2.80 SE at 95% / 80%)."""
    z = NormalDist()
    return float((z.inv_cdf(1 - (1 - level) / 2) + z.inv_cdf(power)) * standard_error)


def scenes_needed(between_scenes: float, between_seeds: float, seeds: int, target: float, level: float = 0.95,
                  power: float = 0.8) -> float:
    """Test scenes needed for ``detectable_difference`` to reach ``target`` with ``seeds`` seeds, from ``spread``'s
    two SDs: N = between_scenes^2 / ((target / z)^2 - between_seeds^2 / seeds); ``inf`` when the seeds' spread
    alone keeps the detectable difference above the target (more seeds are needed, not more scenes)."""
    z = detectable_difference(1.0, level, power)
    room = (target / z) ** 2 - between_seeds ** 2 / seeds
    if room <= 0:
        return float("inf")
    return float(between_scenes ** 2 / room)

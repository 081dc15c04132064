"""Confidence intervals over scenes: the percentile bootstrap, plain and paired.

Scenes are the unit of resampling (the challenge averages per-scene
metrics). The resampling indices come from a fixed seed, so an interval is
reproducible, and a paired interval resamples the SAME scenes for both
models (their per-scene values are paired: same scenes, same rollout keys).
"""

from __future__ import annotations

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

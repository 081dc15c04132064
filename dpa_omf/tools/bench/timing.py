"""The benchmarks' one timing helper: the median of several timed calls, the warm-up call excluded.

Every benchmark times through :func:`timed`: ``fn(i)`` is called for run
``i = 0 .. runs - 1`` and each call waits for its result
(``jax.block_until_ready``, which passes host values through), so a figure is
the work done, not its dispatch. The first call is a warm-up (compilation,
caches, first-touch allocation) whose time is reported apart and never enters
the median; a caller that compiled ahead of time (``jitted.lower(...).compile()``)
and whose single call can take minutes passes ``warmup=False``. ``fn(i)`` may
use ``i`` to time different inputs (one scene per run); the warm-up call is
``fn(0)``.

Wall seconds come from ``time.perf_counter``; CPU seconds (all threads of the
process, ``getrusage``) beside them, the figure a busy shared machine distorts
least.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass(frozen=True)
class Timing:
    """What :func:`timed` measured.

    Attributes:
      warmup_s: wall seconds of the warm-up call (compilation included); None without one.
      seconds: wall seconds of each timed call, in order.
      cpu_seconds: CPU seconds of each timed call.
      outputs: each timed call's output, in order (the warm-up's is dropped).
    """

    warmup_s: float | None
    seconds: tuple[float, ...]
    cpu_seconds: tuple[float, ...]
    outputs: tuple[Any, ...]

    @property
    def output(self) -> Any:
        """The last call's output."""
        return self.outputs[-1]

    @property
    def median_s(self) -> float:
        return float(statistics.median(self.seconds))

    @property
    def cpu_median_s(self) -> float:
        return float(statistics.median(self.cpu_seconds))


def timed(fn: Callable[[int], Any], runs: int, warmup: bool = True) -> Timing:
    """Calls ``fn(0)`` once as a warm-up (unless ``warmup`` is False), then ``fn(i)`` for ``i < runs``, timed."""
    if runs < 1:
        raise ValueError(f"timed: runs must be >= 1, got {runs}")
    warmup_s = None
    if warmup:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(0))
        warmup_s = time.perf_counter() - t0
    seconds, cpu, outputs = [], [], []
    for i in range(runs):
        t0, c0 = time.perf_counter(), cpu_seconds()
        outputs.append(jax.block_until_ready(fn(i)))
        seconds.append(time.perf_counter() - t0)
        cpu.append(cpu_seconds() - c0)
    return Timing(warmup_s, tuple(seconds), tuple(cpu), tuple(outputs))

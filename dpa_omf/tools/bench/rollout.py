"""``bench rollout``: cached (KV) vs recompute-the-prefix sampling of R rollouts x A agents over 8 s.

    python -m dpa_omf.bench rollout --json OUT [--agents 32,128] [--rollouts 64] [--chunk 16] [--repeats 3]

Each sampler is compiled ahead of time, then timed ``--repeats`` times with no
warm-up call (``timing.timed(warmup=False)``: the uncached sampler at 128 agents
takes minutes per run on a CPU); medians. JSON: ``results`` (per ``RxA``) and
``devices``.
"""

from __future__ import annotations

import argparse
import time

import jax

from dpa_omf import datatypes as dt
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling
from dpa_omf.testing import bench_scenes
from dpa_omf.tools.bench import timing


def _time_compiled(jitted, static: tuple, args: tuple, repeats: int) -> tuple[float, float]:
    """(compile seconds, median run seconds over ``repeats``) of ``jitted(*static, *args)``, compiled ahead of time."""
    model, cfg = static
    t0 = time.perf_counter()
    compiled = jitted.lower(model, *args, cfg).compile()
    compile_s = time.perf_counter() - t0
    return compile_s, timing.timed(lambda i: compiled(*args), repeats, warmup=False).median_s


def time_rollouts(model_config: mlm.ModelConfig | None = None, num_rollouts: int = 64,
                  agent_counts: tuple[int, ...] = (32, 128), rollout_chunk: int = 16,
                  repeats: int = 3, seed: int = 0) -> dict:
    """Seconds per scene of cached vs uncached sampling (median of ``repeats`` after compiling).

    The scene has ``num_points`` = 20,000 road samples (the older WOMD size).
    Returns ``{f"{R}x{A}": {"cached_s", "uncached_s", "speedup", "cached_compile_s",
    "uncached_compile_s"}}``.
    """
    model = mlm.MotionLM(model_config or mlm.ModelConfig())
    cfg = sampling.RolloutConfig(num_rollouts=num_rollouts, rollout_chunk=rollout_chunk)
    key = jax.random.key(seed)
    results = {}
    for a in agent_counts:
        scene = bench_scenes.lane_scene(a, num_points=20000, seed=seed)
        params = model.init(jax.random.key(seed), dt.stack_scenarios([scene]))
        args = (params, scene, key)
        c_compile, cached = _time_compiled(sampling.sample, (model, cfg), args, repeats)
        u_compile, uncached = _time_compiled(sampling.sample_uncached, (model, cfg), args, repeats)
        results[f"{num_rollouts}x{a}"] = dict(
            cached_s=cached, uncached_s=uncached, speedup=uncached / cached,
            cached_compile_s=c_compile, uncached_compile_s=u_compile)
    return results



def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", default="32,128", help="comma-separated agent counts")
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)


def run(args: argparse.Namespace) -> dict:
    """Cached (KV) vs recompute-the-prefix sampling of R rollouts x A agents over 8 s."""
    res = time_rollouts(num_rollouts=args.rollouts, agent_counts=tuple(int(a) for a in args.agents.split(",")),
                        rollout_chunk=args.chunk, repeats=args.repeats)
    return {"results": res, "devices": [str(d) for d in jax.devices()]}

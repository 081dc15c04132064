"""``bench rollout``: cached (KV) vs recompute-the-prefix sampling of R rollouts x A agents over 8 s.

    python -m dpa_omf.bench rollout --json OUT [--agents 32,128] [--rollouts 64] [--chunk 16[,32,...]] [--repeats 3]

Each sampler is compiled ahead of time, then timed ``--repeats`` times with no
warm-up call (``timing.timed(warmup=False)``: the uncached sampler at 128 agents
takes minutes per run on a CPU); medians. JSON: ``results`` (per ``RxA``) and
``devices``. With several ``--chunk`` values (rollouts sampled together), the
cached sampler is also timed at each, in alternating rounds on the same scene
and key: ``results[RxA]["by_chunk"]`` holds the medians, each one's speed
relative to the first chunk, and whether the tokens are identical (they must
be: the keys are per rollout).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

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



def time_chunks(model: mlm.MotionLM, params, scene: dt.Scenario, key: jax.Array, num_rollouts: int,
                chunks: tuple[int, ...], repeats: int) -> dict:
    """The cached sampler at each rollout chunk, compiled ahead of time, timed in alternating rounds (``repeats``).

    Returns ``{"seconds": {chunk: median}, "speed_vs_first": {chunk: first's seconds / chunk's},
    "identical_tokens": bool}``."""
    compiled, tokens, times = {}, {}, {ch: [] for ch in chunks}
    for ch in chunks:
        cfg = sampling.RolloutConfig(num_rollouts=num_rollouts, rollout_chunk=ch)
        compiled[ch] = sampling.sample.lower(model, params, scene, key, cfg).compile()
        tokens[ch] = np.asarray(compiled[ch](params, scene, key).tokens)  # also the untimed first run
    for _ in range(repeats):
        for ch in chunks:
            t0 = time.perf_counter()
            compiled[ch](params, scene, key).tokens.block_until_ready()
            times[ch].append(time.perf_counter() - t0)
    med = {ch: float(np.median(t)) for ch, t in times.items()}
    return {"seconds": {str(ch): med[ch] for ch in chunks},
            "speed_vs_first": {str(ch): med[chunks[0]] / med[ch] for ch in chunks},
            "identical_tokens": all(np.array_equal(tokens[chunks[0]], tokens[ch]) for ch in chunks)}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", default="32,128", help="comma-separated agent counts")
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--chunk", default="16", help="rollouts sampled together; several (comma-separated): the "
                   "cached sampler is also compared across them (the first one times the uncached sampler)")
    p.add_argument("--repeats", type=int, default=3)


def run(args: argparse.Namespace) -> dict:
    """Cached (KV) vs recompute-the-prefix sampling of R rollouts x A agents over 8 s."""
    chunks = tuple(int(c) for c in str(args.chunk).split(","))
    agents = tuple(int(a) for a in args.agents.split(","))
    res = time_rollouts(num_rollouts=args.rollouts, agent_counts=agents, rollout_chunk=chunks[0],
                        repeats=args.repeats)
    if len(chunks) > 1:
        model = mlm.MotionLM(mlm.ModelConfig())
        for a in agents:
            scene = bench_scenes.lane_scene(a, num_points=20000, seed=0)
            params = model.init(jax.random.key(0), dt.stack_scenarios([scene]))
            res[f"{args.rollouts}x{a}"]["by_chunk"] = time_chunks(model, params, scene, jax.random.key(0),
                                                                  args.rollouts, chunks, args.repeats)
    return {"results": res, "devices": [str(d) for d in jax.devices()]}

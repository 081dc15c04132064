"""Benchmarks against the baselines users would pick, in one run.

    python -m dpa_omf.bench [--compilation_cache=DIR|off] {ot,train,rollout,realism,curate,evaluate,online} --json OUT
        [flags]

Subcommands live in ``BENCHMARKS`` (name -> (add_arguments, run)); add one by
writing ``def bench_x(args) -> dict`` plus its ``_add_x_args(parser)`` and
registering both in ``BENCHMARKS``. The result goes to ``--json`` (atomically).

JAX's persistent compilation cache is on (``dpa_omf/train/compilation_cache.py``;
the JSON's ``compilation_cache`` names the folder), so the compile times a
second run reports are cache loads; ``--compilation_cache=off`` times real
compilation.

``ot``: one scene = 64 rollouts x 128 agents x T steps of 5 features (T = 80 at
10 Hz, 16 at 2 Hz; ``dpa_omf.testing.bench_scenes.ot_scene``), ~60% valid
agents, some experts with ragged validity. Times our OT solvers (the public
entry point ``dpa_omf.preference.distance.ot_distance``, compiled ahead of
time) against a scipy ``linear_sum_assignment`` loop and a POT ``ot.emd``
loop, and measures how often each method's top-16 / bottom-16 rollout sets
equal those of our exact host solver (``ours_exact_host``, the reference,
itself cross-checked against the scipy / POT costs on the loop scenes).

The default runs the fast methods only -- ``ours_exact_host`` on ``--scenes``
(20) scenes and the scipy / POT loops on ``--loop_scenes`` (5) -- about a
minute on an idle 2-core CPU (0.5 s, 0.8 s and 1.3 s per 80-step scene). The
slow methods run only when asked for:

  --methods NAME ...  add some of our other solvers: ``ours_sinkhorn`` (100
                      iterations; ~30 s per 80-step scene on a CPU),
                      ``ours_sinkhorn50``, ``ours_sinkhorn50_rescore``,
                      ``ott_fast`` (ott-jax with our schedule) and ``ours_exact``
                      (on-device JAX auction + SSP: minutes per 80-step scene on
                      a CPU, so it runs on ``--device_exact_scenes`` scenes only).
  --all_methods       all of the above.
  --ott_default       also ott-jax's default Sinkhorn, on one scene (~8 s at 16
                      steps; far longer at 80).

``train``: scenes/s and tokens/s of the pretraining step (the loop's compiled
step) on synthetic scenes, per agent count. ``rollout``: cached (KV) vs
recompute-the-prefix sampling. ``realism``: the WOSAC metric on one scene and
on a vmapped batch. ``curate`` / ``evaluate``: the batched, sharded post-training
paths vs the per-scene loop, on 1 and 8 devices (``dpa_omf/tools/bench_pod.py``).
``online``: seconds per online DPA-OMF round split into sampling, features, OT
and update (``dpa_omf/tools/bench_online.py``). ``compare --baseline=COMMIT -- BENCH ...``:
that benchmark on an older commit and on this tree, alternating, and the ratio
(``dpa_omf/tools/bench_compare.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

import jax
import ml_collections
import numba
import numpy as np
from scipy import optimize
from scipy.spatial import distance as spatial_distance

from dpa_omf import atomic
from dpa_omf import datatypes as dt
from dpa_omf.configs import pretrain as pretrain_config
from dpa_omf.io import reader
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import pretrain
from dpa_omf.metrics import wosac as realism
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling
from dpa_omf.preference import distance, ranking
from dpa_omf.synthetic import dataset as synthetic
from dpa_omf.testing import bench_scenes
from dpa_omf.testing import scenes as fake_scenes
from dpa_omf.tools import bench_compare, bench_input, bench_online, bench_pod
from dpa_omf.train import compilation_cache, loop

os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")  # POT (imported later) would import TF otherwise

TOP_BOTTOM_K = 16


# ----------------------------------------------------------------- ot: baselines (host loops)
def _import_pot():
    """POT (``ot``): imported here, not at the top, because it is a test extra
    that only the ``ot`` benchmark's baselines need."""
    import ot

    return ot


def _problem_list(scene: dict, weights: np.ndarray):
    """Yields (rollout, agent, x [n, F], y [m, F]) float64 scaled features."""
    rp, rv = scene["rollout_phi"], scene["rollout_valid"]
    ep, ev, mask = scene["expert_phi"], scene["expert_valid"], scene["agent_mask"]
    for a in np.flatnonzero(mask & ev.any(-1)):
        y = ep[a][ev[a]].astype(np.float64) * weights
        for r in range(rp.shape[0]):
            if rv[r, a].any():
                yield r, a, rp[r, a][rv[r, a]].astype(np.float64) * weights, y


def _scene_mean(costs: dict, num_rollouts: int) -> np.ndarray:
    out = np.zeros(num_rollouts)
    cnt = np.zeros(num_rollouts)
    for (r, _), c in costs.items():
        out[r] += c
        cnt[r] += 1
    return np.where(cnt > 0, out / np.maximum(cnt, 1), np.nan)


def scipy_lsa_scene(scene: dict, weights: np.ndarray) -> np.ndarray:
    """scipy assignment loop; ragged problems (no assignment form) use POT emd2."""
    ot = _import_pot()
    costs = {}
    for r, a, x, y in _problem_list(scene, weights):
        c = spatial_distance.cdist(x, y)
        if len(x) == len(y):
            i, j = optimize.linear_sum_assignment(c)
            costs[r, a] = c[i, j].mean()
        else:
            costs[r, a] = ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), c)
    return _scene_mean(costs, scene["rollout_phi"].shape[0])


def pot_emd_scene(scene: dict, weights: np.ndarray) -> np.ndarray:
    """POT network-simplex loop (``ot.emd``) over all problems."""
    ot = _import_pot()
    costs = {}
    for r, a, x, y in _problem_list(scene, weights):
        c = spatial_distance.cdist(x, y)
        plan = ot.emd(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), c)
        costs[r, a] = float((plan * c).sum())
    return _scene_mean(costs, scene["rollout_phi"].shape[0])


LOOPS: dict[str, Callable] = {"scipy_lsa": scipy_lsa_scene, "pot_emd": pot_emd_scene}


# ----------------------------------------------------------------- ot: benchmark
# Our solvers beyond the reference; ``ours_exact_host`` always runs.
SLOW_METHODS = ("ours_exact", "ours_sinkhorn", "ours_sinkhorn50", "ours_sinkhorn50_rescore", "ott_fast")


def _topbottom_equal(d: np.ndarray, ref: np.ndarray, k: int) -> bool:
    p, u = (set(np.asarray(z).tolist()) for z in ranking.rank_and_pair(d, k))
    pr, ur = (set(np.asarray(z).tolist()) for z in ranking.rank_and_pair(ref, k))
    return p == pr and u == ur


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _our_methods(steps: int) -> dict[str, distance.OTConfig]:
    chunk = 8 if steps > 40 else 64
    base = distance.OTConfig(rollout_chunk=chunk)
    return {
        "ours_exact_host": dataclasses.replace(base, solver="exact_host"),
        "ours_exact": dataclasses.replace(base, solver="exact"),
        "ours_sinkhorn": dataclasses.replace(base, solver="sinkhorn"),
        "ours_sinkhorn50": dataclasses.replace(base, solver="sinkhorn", sinkhorn_iterations=50),
        "ours_sinkhorn50_rescore": dataclasses.replace(base, solver="sinkhorn", sinkhorn_iterations=50,
                                                       rescore_window=2),
        "ott_fast": dataclasses.replace(base, solver="ott"),
    }


def _scene_args(s: dict) -> tuple:
    return (s["rollout_phi"], s["rollout_valid"], s["expert_phi"], s["expert_valid"], s["agent_mask"])


def _run_ours(name: str, cfg: distance.OTConfig, scenes: list[dict]) -> tuple[list[float], list[np.ndarray], float]:
    """(seconds per scene, scene distances per scene, compile seconds) of one of our solvers."""
    t0 = time.perf_counter()
    jitted = jax.jit(distance.ot_distance, static_argnames="config")
    compiled = jitted.lower(*_scene_args(scenes[0]), config=cfg).compile()  # ahead of time
    compile_s = time.perf_counter() - t0
    times, dists = [], []
    for s in scenes:
        t0 = time.perf_counter()
        scene_d, _ = jax.block_until_ready(compiled(*_scene_args(s)))
        times.append(time.perf_counter() - t0)
        dists.append(np.asarray(scene_d, np.float64))
    _log(f"{name}: compile {compile_s:.1f}s, median {statistics.median(times):.3f}s/scene")
    return times, dists, compile_s


def _ot_setup(args: argparse.Namespace, scenes: list[dict]) -> dict:
    ragged = [(s["agent_mask"] & ~s["expert_valid"].all(-1)).sum() / max(s["agent_mask"].sum(), 1) for s in scenes]
    return dict(rollouts=args.rollouts, agents=args.agents, steps=args.steps, scenes=args.scenes,
                loop_scenes=args.loop_scenes,
                problems_per_scene=int(np.mean([s["agent_mask"].sum() * args.rollouts for s in scenes])),
                ragged_agent_fraction=float(np.mean(ragged)), jax_backend=jax.default_backend(),
                cpu_count=os.cpu_count(), load_before=os.getloadavg(), numba_threads=numba.get_num_threads())


def _selected_methods(args: argparse.Namespace) -> list[str]:
    extra = SLOW_METHODS if args.all_methods else (args.methods or ())
    unknown = sorted(set(extra) - set(SLOW_METHODS))
    if unknown:
        raise ValueError(f"bench ot: unknown methods {unknown}; choose from {SLOW_METHODS}")
    return ["ours_exact_host"] + [m for m in SLOW_METHODS if m in extra]


def _time_methods(args: argparse.Namespace, scenes: list[dict], result: dict) -> dict[str, list[np.ndarray]]:
    """Runs the selected methods; fills seconds / compile / memory figures; returns their distances."""
    dists = {}
    configs = _our_methods(args.steps)
    for name in _selected_methods(args):
        run_scenes = scenes[: args.device_exact_scenes] if name == "ours_exact" else scenes
        if not run_scenes:
            continue
        times, dists[name], result["compile_seconds"][name] = _run_ours(name, configs[name], run_scenes)
        result["seconds_per_scene"][name] = statistics.median(times)
        result["maxrss_mib_after"][name] = _maxrss_mib()

    weights = np.asarray(distance.OTConfig().feature_weights, np.float64)
    for name, fn in LOOPS.items():
        times, dists[name] = [], []
        for s in scenes[: args.loop_scenes]:
            t0 = time.perf_counter()
            dists[name].append(fn(s, weights))
            times.append(time.perf_counter() - t0)
        result["seconds_per_scene"][name] = statistics.median(times)
        result["maxrss_mib_after"][name] = _maxrss_mib()
        _log(f"{name}: median {statistics.median(times):.3f}s/scene")

    if args.ott_default:
        cfg = dataclasses.replace(distance.OTConfig(), solver="ott_default", rollout_chunk=args.rollouts)
        times, dists["ott_default"], _ = _run_ours("ott_default", cfg, scenes[:1])
        result["seconds_per_scene"]["ott_default"] = times[0]
        result["maxrss_mib_after"]["ott_default"] = _maxrss_mib()
    return dists


def _compare(dists: dict[str, list[np.ndarray]], result: dict) -> None:
    """Agreement and cost error of every method against the reference; checks the reference."""
    exact = dists["ours_exact_host"]
    for name, d in dists.items():
        n = len(d)
        result["topbottom_agreement"][name] = float(np.mean([_topbottom_equal(d[i], exact[i], TOP_BOTTOM_K)
                                                            for i in range(n)]))
        result["agreement_scenes"][name] = n
        err = np.abs(np.stack(d) - np.stack(exact[:n])) / np.stack(exact[:n])
        result["cost_error_vs_exact"][name] = dict(scene_rel_mean=float(err.mean()), scene_rel_max=float(err.max()))
    # The reference itself: its costs against the scipy / POT exact loops.
    ref_err = max(result["cost_error_vs_exact"][m]["scene_rel_max"] for m in LOOPS)
    result["exact_host_vs_loops_scene_rel_max"] = ref_err
    if ref_err > 1e-4:
        raise RuntimeError(f"exact_host disagrees with scipy / POT by {ref_err:.2e} (relative)")
    ours = [m for m in dists if (m.startswith("ours") or m == "ott_fast")
            and result["topbottom_agreement"][m] >= 0.99]
    result["fastest_exact_equal"] = min(ours, key=lambda m: result["seconds_per_scene"][m]) if ours else None


def bench_ot(args: argparse.Namespace) -> dict:
    """Runs the OT benchmark; returns the JSON-able result."""
    rng = np.random.default_rng(args.seed)
    scenes = [bench_scenes.ot_scene(rng, args.rollouts, args.agents, args.steps) for _ in range(args.scenes)]
    result = dict(setup=_ot_setup(args, scenes), seconds_per_scene={}, topbottom_agreement={},
                  agreement_scenes={}, compile_seconds={}, maxrss_mib_after={}, cost_error_vs_exact={})
    dists = _time_methods(args, scenes, result)
    _compare(dists, result)
    result["setup"]["load_after"] = os.getloadavg()
    result["maxrss_mib"] = _maxrss_mib()
    return result


def _add_ot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenes", type=int, default=20, help="scenes for our solvers and agreement")
    p.add_argument("--loop_scenes", type=int, default=5, help="scenes for the scipy / POT loops")
    p.add_argument("--device_exact_scenes", type=int, default=1,
                   help="scenes for the on-device JAX exact solver (minutes per scene on a CPU)")
    p.add_argument("--steps", type=int, default=80, help="80 (10 Hz) or 16 (2 Hz)")
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--agents", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="*", default=None,
                   help=f"slow methods to add to the default set: any of {', '.join(SLOW_METHODS)}")
    p.add_argument("--all_methods", action="store_true", help="add every slow method")
    p.add_argument("--ott_default", action="store_true", help="add ott-jax's default Sinkhorn (one scene)")


# ----------------------------------------------------------------- train
def _synthetic_scenes(config: ml_collections.ConfigDict, batch: int) -> dt.Scenario:
    """``batch`` synthetic scenes of the configured size (the data job's world, made in memory)."""
    syn = cfg_lib.synthetic_world(config)
    return dt.stack_scenarios([synthetic.generate_scenario(i, syn) for i in range(batch)])


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_train_step(config: ml_collections.ConfigDict, num_agents: int, batch: int, repeats: int,
                    steps_per_repeat: int) -> dict:
    """Times the pretraining step (the loop's compiled step) on synthetic scenes of ``num_agents``."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.data.num_agents = num_agents
    c.pretrain.batch_size = batch
    c.mesh.data = -1
    model = mlm.MotionLM(cfg_lib.model(c))
    trainer = loop.Trainer(pretrain.make_loss_fn(model), pretrain.make_init_fn(model, c),
                           dataclasses.replace(cfg_lib.pretrain_train(c), progress_bar=False))
    scenes = _synthetic_scenes(c, batch)
    state = trainer.init()
    t = time.perf_counter()
    state, metrics = trainer.step(state, scenes)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    valid_tokens = float(jax.device_get(metrics["valid_tokens"][0]))
    times, cpu_times = [], []
    for _ in range(repeats):
        t, cpu = time.perf_counter(), _cpu_seconds()
        for _ in range(steps_per_repeat):
            state, metrics = trainer.step(state, scenes)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t) / steps_per_repeat)
        cpu_times.append((_cpu_seconds() - cpu) / steps_per_repeat)
    step_s = float(np.median(times))
    return {
        "num_agents": num_agents, "batch": batch, "devices": trainer.mesh.size,
        "param_count": mlm.param_count(state.params), "compile_and_first_step_s": compile_s,
        "step_s_median": step_s, "step_s_all": times, "scenes_per_s": batch / step_s,
        # CPU seconds of all threads per step: what a busy shared machine distorts least.
        "cpu_s_per_step_median": float(np.median(cpu_times)),
        "valid_tokens_per_step": valid_tokens, "tokens_per_s": valid_tokens / step_s,
        "token_slots_per_s": batch * num_agents * model.config.num_steps / step_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "device": jax.devices()[0].device_kind,
    }


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", default="32,128", help="comma-separated agent counts")
    p.add_argument("--batch", default="32:8,128:2", help="agents:batch pairs (or one batch for all)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after compilation (>= 3; median reported)")
    p.add_argument("--steps", type=int, default=1, help="train steps per timed run")
    p.add_argument("--config", default="", help="variant of configs/pretrain.py")


def bench_train(args: argparse.Namespace) -> dict:
    """Scenes/s and tokens/s of the pretraining step (median of >= 3 runs after compilation).

    Peak memory is the process's maxrss so far (it grows with the larger case).
    """
    config = pretrain_config.get_config(args.config or None)
    per = dict(kv.split(":") for kv in args.batch.split(",")) if ":" in args.batch else {}
    results = []
    for a in (int(x) for x in args.agents.split(",")):
        batch = int(per.get(str(a), 8)) if per else int(args.batch)
        results.append(time_train_step(config, a, batch, max(args.repeats, 3), args.steps))
        print(json.dumps(results[-1]), flush=True)
    return {"results": results, "devices": [str(d) for d in jax.devices()]}


# ----------------------------------------------------------------- rollout
def _time_compiled(jitted, static: tuple, args: tuple, repeats: int) -> tuple[float, float]:
    """(compile seconds, median run seconds over ``repeats``) of ``jitted(*static, *args)``.

    Compiles ahead of time, so no untimed warm-up run is needed (the uncached sampler at
    128 agents takes minutes per run on a CPU).
    """
    model, cfg = static
    t0 = time.perf_counter()
    compiled = jitted.lower(model, *args, cfg).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args).x)
        times.append(time.perf_counter() - t0)
    return compile_s, float(np.median(times))


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


def _add_rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", default="32,128", help="comma-separated agent counts")
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)


def bench_rollout(args: argparse.Namespace) -> dict:
    """Cached (KV) vs recompute-the-prefix sampling of R rollouts x A agents over 8 s."""
    res = time_rollouts(num_rollouts=args.rollouts, agent_counts=tuple(int(a) for a in args.agents.split(",")),
                        rollout_chunk=args.chunk, repeats=args.repeats)
    return {"results": res, "devices": [str(d) for d in jax.devices()]}


# ----------------------------------------------------------------- realism
def _add_realism_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=16, help="scenes in the vmapped measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shared", default="", help="../shared folder: time the real golden scene and rollouts")


def _median_time(f, *args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def realism_timings(batch: int = 16, repeats: int = 5, config: realism.RealismConfig = realism.DEFAULT_CONFIG,
                    scene: tuple[dt.Scenario, np.ndarray] | None = None) -> dict:
    """Times the metric on one scene and on a vmapped batch (after compilation).

    Args:
      batch: scenes in the batched measurement.
      repeats: timed runs; the median is reported.
      config: ``RealismConfig`` (its static sizes are fitted to the scene).
      scene: (scenario, sim_xyzh) to time; default ``dpa_omf.testing.scenes.synthetic_scene()``.
    Returns:
      dict with seconds per call (``single_s``, ``batch_s``), per scene, and
      the compile times.
    """
    scenario, sim = scene if scene is not None else fake_scenes.synthetic_scene()
    config = config.fitted(scenario)
    single = realism.jitted_metrics(config)
    t0 = time.perf_counter()
    jax.block_until_ready(single(scenario, sim))
    compile_single = time.perf_counter() - t0
    t_single = _median_time(single, scenario, sim, repeats=repeats)
    scen_b = dt.stack_scenarios([scenario] * batch)
    sim_b = np.stack([sim] * batch)
    batched = realism.jitted_metrics(config, batched=True)
    t0 = time.perf_counter()
    jax.block_until_ready(batched(scen_b, sim_b))
    compile_batch = time.perf_counter() - t0
    t_batch = _median_time(batched, scen_b, sim_b, repeats=max(1, repeats // 2))
    return dict(
        agents=int(np.asarray(scenario.agents.sim_mask).sum()), slots=int(scenario.num_agents),
        rollouts=int(sim.shape[0]), road_graph_points=int(scenario.roadgraph.num_points),
        single_s=t_single, batch=batch, batch_s=t_batch, batch_per_scene_s=t_batch / batch,
        compile_single_s=compile_single, compile_batch_s=compile_batch,
        device=str(jax.devices()[0]),
    )


def bench_realism(args: argparse.Namespace) -> dict:
    """The WOSAC metric on one scene (50 sim agents x 32 rollouts x 80 steps) and on a batch."""
    scene = None
    if args.shared:
        root = os.path.join(args.shared, "golden", "wosac", "submission")
        s = next(reader.read_scenes(os.path.join(args.shared, "womd", "motion_data_one_scenario.tfrecord")))
        r = np.load(os.path.join(root, "rollouts.npz"))
        scene = (s, realism.align_rollouts(s, r["object_id"], r["x"], r["y"], r["z"], r["heading"]))
    res = realism_timings(batch=args.batch, repeats=args.repeats, scene=scene)
    return {"results": res, "devices": [str(d) for d in jax.devices()]}


# ----------------------------------------------------------------- command line
# name -> (add_arguments, run)
BENCHMARKS: dict[str, tuple[Callable, Callable]] = {
    "ot": (_add_ot_args, bench_ot),
    "train": (_add_train_args, bench_train),
    "rollout": (_add_rollout_args, bench_rollout),
    "realism": (_add_realism_args, bench_realism),
    "curate": (bench_pod.add_args, lambda args: bench_pod.run("curate", args)),
    "evaluate": (bench_pod.add_args, lambda args: bench_pod.run("evaluate", args)),
    "online": (bench_online.add_args, bench_online.run),
    "input": (bench_input.add_args, bench_input.run),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:  # a benchmark on an older commit and on this tree (its own flags)
        return bench_compare.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m dpa_omf.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compilation_cache", default=None, help=compilation_cache.FLAG_HELP)
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, (add_args, _) in BENCHMARKS.items():
        p = sub.add_parser(name)
        p.add_argument("--json", required=True, help="output JSON path")
        add_args(p)
    args = parser.parse_args(argv)
    cache = compilation_cache.enable(args.compilation_cache)
    result = BENCHMARKS[args.bench][1](args)
    if getattr(args, "worker", 0):  # a bench_pod worker process: the result goes to its parent on stdout
        print(json.dumps(atomic.jsonable(result)))
        return
    result["benchmark"] = args.bench
    result["compilation_cache"] = cache or compilation_cache.OFF
    atomic.write_json(args.json, result)  # never leave a half-written file
    print(json.dumps({k: result[k] for k in ("seconds_per_scene", "topbottom_agreement", "scenes_per_second")
                      if k in result}, indent=2))


if __name__ == "__main__":
    main()

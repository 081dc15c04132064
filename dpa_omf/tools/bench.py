"""Benchmarks against the baselines users would pick, in one run.

    python -m dpa_omf.tools.bench ot --json OUT [--scenes 20] [--steps 80] [--skip_ott_default]

Subcommands live in ``BENCHMARKS`` (name -> function(argv list) -> dict); add
one by writing ``def bench_x(args) -> dict`` plus its ``_add_x_args(parser)``
and registering both in ``BENCHMARKS``.

``ot``: one scene = 64 rollouts x 128 agents x T steps of 5 features (T = 80 at
10 Hz, 16 at 2 Hz), ~60% valid agents, some experts with ragged validity. Times
our OT kernels (``dpa_omf.preference.distance``) against a scipy
``linear_sum_assignment`` loop, a POT ``ot.emd`` loop and a default-configured
ott-jax Sinkhorn, and measures how often each method's top-16 / bottom-16
rollout sets equal those of our exact host solver (``exact_host``, itself
cross-checked against the scipy / POT costs on the loop scenes). The on-device
exact solver (``ours_exact``: auction + SSP in JAX) is timed on
``--device_exact_scenes`` scenes only: on a CPU it takes minutes per scene.
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
from typing import Callable

os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")  # POT imports TF otherwise (slow)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dpa_omf import datatypes as dt  # noqa: E402
from dpa_omf.metrics import wosac as realism  # noqa: E402
from dpa_omf.testing import scenes  # noqa: E402

NUM_FEATURES = 5


# ----------------------------------------------------------------- synthetic scenes
def _smooth(rng: np.random.Generator, shape, steps: int, corr: float) -> np.ndarray:
    """AR(1) noise ``[*shape, steps]`` with unit marginal variance."""
    e = rng.normal(size=tuple(shape) + (steps,))
    out = np.empty_like(e)
    out[..., 0] = e[..., 0]
    s = np.sqrt(1.0 - corr**2)
    for t in range(1, steps):
        out[..., t] = corr * out[..., t - 1] + s * e[..., t]
    return out


def _collision_runs(rng, shape, steps: int, rate: float) -> np.ndarray:
    """Mostly 0 with rare runs of 1 (``rate`` = probability of a run per track)."""
    out = np.zeros(tuple(shape) + (steps,), np.float32)
    has = rng.random(shape) < rate
    start = rng.integers(0, steps, size=shape)
    length = rng.integers(max(steps // 16, 1), max(steps // 4, 2), size=shape)
    t = np.arange(steps)
    run = (t >= start[..., None]) & (t < (start + length)[..., None])
    out[has[..., None] & run] = 1.0
    return out


def _clip_features(phi: np.ndarray) -> np.ndarray:
    lo = np.array([0.0, -3.0, 0.0, 0.0, 0.0], np.float32)
    hi = np.array([1.0, 6.0, 30.0, 3.0, 20.0], np.float32)
    return np.clip(phi, lo, hi)


def make_ot_scene(rng: np.random.Generator, num_rollouts: int = 64, num_agents: int = 128,
                  steps: int = 80, valid_fraction: float = 0.6, ragged_fraction: float = 0.15) -> dict:
    """A synthetic preference-distance scene with realistic feature values.

    Features per step: collision (0 with rare runs of 1), signed distance to
    the road boundary ~N(1.5, 1) clipped to [-3, 6] m, clearance 0-30 m,
    control effort 0-3 m/s^2, speed 0-20 m/s (temporally correlated). Each
    rollout perturbs the expert with its own magnitude (log-uniform over
    [0.03, 1.5] of each feature's spread), so rollouts are ranked by that
    magnitude with noise and near-ties. Rollouts are valid on every step of
    the valid agents (the sampler simulates them over the whole horizon);
    ``ragged_fraction`` of the valid agents have a logged (expert) track that
    starts late or ends early.

    Returns:
      dict of numpy arrays: rollout_phi ``[R, A, T, 5]``, rollout_valid
      ``[R, A, T]``, expert_phi ``[A, T, 5]``, expert_valid ``[A, T]``,
      agent_mask ``[A]``, magnitude ``[R]``.
    """
    a, t, r = num_agents, steps, num_rollouts
    corr = 0.9 ** (80 / steps)  # same correlation time at 10 Hz and 2 Hz
    expert = np.stack([
        _collision_runs(rng, (a,), t, 0.05),
        1.5 + _smooth(rng, (a,), t, corr),
        rng.uniform(2, 25, (a, 1)) + 3 * _smooth(rng, (a,), t, corr),
        np.abs(0.8 * _smooth(rng, (a,), t, corr)),
        rng.uniform(0, 15, (a, 1)) + 2 * _smooth(rng, (a,), t, corr),
    ], -1).astype(np.float32)
    expert = _clip_features(expert)
    magnitude = np.exp(rng.uniform(np.log(0.03), np.log(1.5), r)).astype(np.float32)
    spread = np.array([0.0, 1.0, 5.0, 0.8, 3.0], np.float32)
    noise = np.stack([_smooth(rng, (r, a), t, corr) for _ in range(NUM_FEATURES)], -1).astype(np.float32)
    rollouts = expert[None] + magnitude[:, None, None, None] * spread * noise
    flips = _collision_runs(rng, (r, a), t, 1.0) * (rng.random((r, a, 1)) < 0.1 * magnitude[:, None, None])
    rollouts[..., 0] = np.maximum(rollouts[..., 0], flips)
    rollouts = _clip_features(rollouts)

    agent_mask = rng.random(a) < valid_fraction
    expert_valid = np.repeat(agent_mask[:, None], t, 1)
    ragged = agent_mask & (rng.random(a) < ragged_fraction)
    for i in np.flatnonzero(ragged):
        k = rng.integers(1, t)
        if rng.random() < 0.5:
            expert_valid[i, k:] = False  # leaves the sensor range
        else:
            expert_valid[i, :k] = False  # appears late
    rollout_valid = np.broadcast_to(agent_mask[None, :, None], (r, a, t)).copy()
    return dict(rollout_phi=rollouts, rollout_valid=rollout_valid, expert_phi=expert,
                expert_valid=expert_valid, agent_mask=agent_mask, magnitude=magnitude)


# ----------------------------------------------------------------- baselines (host loops)
def _problem_list(scene: dict, weights: np.ndarray):
    """Yields (rollout, agent, x [n, F], y [m, F]) float64 scaled features."""
    rp, rv = scene["rollout_phi"], scene["rollout_valid"]
    ep, ev, mask = scene["expert_phi"], scene["expert_valid"], scene["agent_mask"]
    for a in np.flatnonzero(mask & ev.any(-1)):
        y = ep[a][ev[a]].astype(np.float64) * weights
        for r in range(rp.shape[0]):
            if rv[r, a].any():
                yield r, a, rp[r, a][rv[r, a]].astype(np.float64) * weights, y


def _cdist(x, y):
    from scipy.spatial.distance import cdist

    return cdist(x, y)


def _scene_mean(costs: dict, num_rollouts: int) -> np.ndarray:
    out = np.zeros(num_rollouts)
    cnt = np.zeros(num_rollouts)
    for (r, _), c in costs.items():
        out[r] += c
        cnt[r] += 1
    return np.where(cnt > 0, out / np.maximum(cnt, 1), np.nan)


def scipy_lsa_scene(scene: dict, weights: np.ndarray) -> np.ndarray:
    """scipy assignment loop; ragged problems (no assignment form) use POT emd2."""
    import ot
    from scipy.optimize import linear_sum_assignment

    costs = {}
    for r, a, x, y in _problem_list(scene, weights):
        c = _cdist(x, y)
        if len(x) == len(y):
            i, j = linear_sum_assignment(c)
            costs[r, a] = c[i, j].mean()
        else:
            costs[r, a] = ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), c)
    return _scene_mean(costs, scene["rollout_phi"].shape[0])


def pot_emd_scene(scene: dict, weights: np.ndarray) -> np.ndarray:
    """POT network-simplex loop (``ot.emd``) over all problems."""
    import ot

    costs = {}
    for r, a, x, y in _problem_list(scene, weights):
        c = _cdist(x, y)
        plan = ot.emd(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), c)
        costs[r, a] = float((plan * c).sum())
    return _scene_mean(costs, scene["rollout_phi"].shape[0])


# ----------------------------------------------------------------- ot benchmark
def _topbottom_equal(d: np.ndarray, ref: np.ndarray, k: int) -> bool:
    from dpa_omf.preference import distance as D

    p, u = (set(np.asarray(z).tolist()) for z in D.rank_and_pair(d, k))
    pr, ur = (set(np.asarray(z).tolist()) for z in D.rank_and_pair(ref, k))
    return p == pr and u == ur


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _our_methods(steps: int) -> dict:
    from dpa_omf.preference.distance import OTConfig

    chunk = 8 if steps > 40 else 64
    base = OTConfig(rollout_chunk=chunk)
    return {
        "ours_exact_host": dataclasses.replace(base, solver="exact_host"),
        "ours_exact": dataclasses.replace(base, solver="exact"),
        "ours_sinkhorn": dataclasses.replace(base, solver="sinkhorn"),
        "ours_sinkhorn50": dataclasses.replace(base, solver="sinkhorn", sinkhorn_iterations=50),
        "ours_sinkhorn50_rescore": dataclasses.replace(base, solver="sinkhorn", sinkhorn_iterations=50,
                                                       rescore_window=2),
        "ott_fast": dataclasses.replace(base, solver="ott"),
    }


def _run_ours(name, cfg, scenes, log) -> tuple[list[float], list[np.ndarray], float]:
    import jax

    from dpa_omf.preference import distance as D

    def args(s):
        rv, ev = D._broadcast_inputs(s["rollout_phi"], s["rollout_valid"], s["expert_phi"],
                                     s["expert_valid"], s["agent_mask"])
        return (s["rollout_phi"], rv, s["expert_phi"], ev, s["agent_mask"])

    t0 = time.perf_counter()
    compiled = D._ot_distance.lower(*args(scenes[0]), config=cfg).compile()  # ahead of time
    compile_s = time.perf_counter() - t0
    call = lambda s: jax.block_until_ready(compiled(*args(s)))  # noqa: E731
    times, dists = [], []
    for s in scenes:
        t0 = time.perf_counter()
        scene_d, _ = call(s)
        times.append(time.perf_counter() - t0)
        dists.append(np.asarray(scene_d, np.float64))
    log(f"{name}: compile {compile_s:.1f}s, median {statistics.median(times):.3f}s/scene")
    return times, dists, compile_s


def bench_ot(args: argparse.Namespace) -> dict:
    """Runs the OT benchmark; returns the JSON-able result."""
    import jax

    from dpa_omf.preference.distance import OTConfig

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    rng = np.random.default_rng(args.seed)
    scenes = [make_ot_scene(rng, args.rollouts, args.agents, args.steps) for _ in range(args.scenes)]
    weights = np.asarray(OTConfig().feature_weights, np.float64)
    k = 16
    result = dict(
        setup=dict(rollouts=args.rollouts, agents=args.agents, steps=args.steps, scenes=args.scenes,
                   loop_scenes=args.loop_scenes, problems_per_scene=int(np.mean(
                       [s["agent_mask"].sum() * args.rollouts for s in scenes])),
                   ragged_agent_fraction=float(np.mean([
                       (s["agent_mask"] & ~s["expert_valid"].all(-1)).sum() / max(s["agent_mask"].sum(), 1)
                       for s in scenes])),
                   jax_backend=jax.default_backend(), cpu_count=os.cpu_count(),
                   load_before=os.getloadavg()),
        seconds_per_scene={}, topbottom_agreement={}, agreement_scenes={}, compile_seconds={},
        maxrss_mib_after={}, cost_error_vs_exact={},
    )
    import numba

    result["setup"]["numba_threads"] = numba.get_num_threads()
    dists = {}
    for name, cfg in _our_methods(args.steps).items():
        if args.methods and name not in args.methods and name != "ours_exact_host":
            continue
        run_scenes = scenes[: args.device_exact_scenes] if name == "ours_exact" else scenes
        if not run_scenes:
            continue
        times, d, comp = _run_ours(name, cfg, run_scenes, log)
        dists[name] = d
        result["seconds_per_scene"][name] = statistics.median(times)
        result["compile_seconds"][name] = comp
        result["maxrss_mib_after"][name] = _maxrss_mib()
    exact = dists["ours_exact_host"]  # the reference for agreement (cross-checked below)

    loops: dict[str, Callable] = {"scipy_lsa": scipy_lsa_scene, "pot_emd": pot_emd_scene}
    for name, fn in loops.items():
        times, d = [], []
        for s in scenes[: args.loop_scenes]:
            t0 = time.perf_counter()
            d.append(fn(s, weights))
            times.append(time.perf_counter() - t0)
        dists[name] = d
        result["seconds_per_scene"][name] = statistics.median(times)
        result["maxrss_mib_after"][name] = _maxrss_mib()
        log(f"{name}: median {statistics.median(times):.3f}s/scene")

    if not args.skip_ott_default:
        cfg = dataclasses.replace(OTConfig(), solver="ott_default", rollout_chunk=args.rollouts)
        times, d, comp = _run_ours("ott_default", cfg, scenes[:1], log)
        dists["ott_default"] = d
        result["seconds_per_scene"]["ott_default"] = times[0]
        result["maxrss_mib_after"]["ott_default"] = _maxrss_mib()

    for name, d in dists.items():
        n = len(d)
        result["topbottom_agreement"][name] = float(np.mean([_topbottom_equal(d[i], exact[i], k)
                                                            for i in range(n)]))
        result["agreement_scenes"][name] = n
        err = np.abs(np.stack(d) - np.stack(exact[:n])) / np.stack(exact[:n])
        result["cost_error_vs_exact"][name] = dict(scene_rel_mean=float(err.mean()), scene_rel_max=float(err.max()))

    # The reference itself: its costs against the scipy / POT exact loops.
    ref_err = max(result["cost_error_vs_exact"][m]["scene_rel_max"] for m in loops)
    result["exact_host_vs_loops_scene_rel_max"] = ref_err
    if ref_err > 1e-4:
        raise RuntimeError(f"exact_host disagrees with scipy / POT by {ref_err:.2e} (relative)")
    ours = [m for m in dists if (m.startswith("ours") or m == "ott_fast")
            and result["topbottom_agreement"][m] >= 0.99]
    result["fastest_exact_equal"] = min(ours, key=lambda m: result["seconds_per_scene"][m]) if ours else None
    result["setup"]["load_after"] = os.getloadavg()
    result["maxrss_mib"] = _maxrss_mib()
    return result


def _add_ot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenes", type=int, default=20, help="scenes for our kernels and agreement")
    p.add_argument("--loop_scenes", type=int, default=5, help="scenes for the scipy / POT loops")
    p.add_argument("--device_exact_scenes", type=int, default=1,
                   help="scenes for the on-device JAX exact solver (minutes per scene on a CPU)")
    p.add_argument("--steps", type=int, default=80, help="80 (10 Hz) or 16 (2 Hz)")
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--agents", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="*", default=None, help="subset of our methods (ours_exact_host, the reference, always runs)")
    p.add_argument("--skip_ott_default", action="store_true", help="skip ott-jax defaults (~90 s a scene)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", default="32,128", help="comma-separated agent counts")
    p.add_argument("--batch", default="32:8,128:2", help="agents:batch pairs (or one batch for all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=1, help="train steps per timed run")
    p.add_argument("--config", default="", help="variant of configs/pretrain.py")


def bench_train(args: argparse.Namespace) -> dict:
    """Scenes/s and tokens/s of the pretraining step (median of >= 3 runs after compilation)."""
    from configs import pretrain as pretrain_config
    from dpa_omf.jobs import pretrain

    config = pretrain_config.get_config(args.config or None)
    per = dict(kv.split(":") for kv in args.batch.split(",")) if ":" in args.batch else {}
    results = []
    for a in (int(x) for x in args.agents.split(",")):
        batch = int(per.get(str(a), 8)) if per else int(args.batch)
        results.append(pretrain.bench_one(config, a, batch, max(args.repeats, 3), args.steps))
        print(json.dumps(results[-1]), flush=True)
    return {"results": results, "devices": [str(d) for d in jax.devices()]}


def _add_rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", default="32,128", help="comma-separated agent counts")
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)


def bench_rollout(args: argparse.Namespace) -> dict:
    """Cached (KV) vs recompute-the-prefix sampling of R rollouts x A agents over 8 s."""
    from dpa_omf.model import sampling as rollout

    res = rollout.bench_rollout(num_rollouts=args.rollouts, agent_counts=tuple(int(a) for a in args.agents.split(",")),
                                rollout_chunk=args.chunk, repeats=args.repeats)
    return {"results": res, "devices": [str(d) for d in jax.devices()]}


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


def realism_timings(batch: int = 16, repeats: int = 5, config: realism.RealismConfig = realism.RealismConfig(),
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
    scenario, sim = scene if scene is not None else scenes.synthetic_scene()
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
        from dpa_omf.io import womd_example as womd

        root = os.path.join(args.shared, "golden", "wosac", "submission")
        s = next(womd.read_tfrecord(os.path.join(args.shared, "womd", "motion_data_one_scenario.tfrecord")))
        r = np.load(os.path.join(root, "rollouts.npz"))
        scene = (s, realism.align_rollouts(s, r["object_id"], r["x"], r["y"], r["z"], r["heading"]))
    res = realism_timings(batch=args.batch, repeats=args.repeats, scene=scene)
    return {"results": res, "devices": [str(d) for d in jax.devices()]}


# name -> (add_arguments, run)
BENCHMARKS: dict[str, tuple[Callable, Callable]] = {
    "ot": (_add_ot_args, bench_ot),
    "train": (_add_train_args, bench_train),
    "rollout": (_add_rollout_args, bench_rollout),
    "realism": (_add_realism_args, bench_realism),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dpa_omf.tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, (add_args, _) in BENCHMARKS.items():
        p = sub.add_parser(name)
        p.add_argument("--json", required=True, help="output JSON path")
        add_args(p)
    args = parser.parse_args(argv)
    result = BENCHMARKS[args.bench][1](args)
    result["benchmark"] = args.bench
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.json)  # never leave a half-written file
    print(json.dumps({k: result[k] for k in ("seconds_per_scene", "topbottom_agreement")
                      if k in result}, indent=2))


if __name__ == "__main__":
    main()

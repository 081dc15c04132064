"""``bench ot``: our OT solvers against the scipy and POT loops users would pick, and their rankings.

One scene = 64 rollouts x 128 agents x T steps of 5 features (T = 80 at 10 Hz,
16 at 2 Hz; ``dpa_omf.testing.bench_scenes.ot_scene``), ~60% valid agents, some
experts with ragged validity. Times our OT solvers (the public entry point
``dpa_omf.preference.distance.ot_distance``, compiled ahead of time, so each
scene is timed once with no warm-up) against a scipy ``linear_sum_assignment``
loop and a POT ``ot.emd`` loop (medians over scenes, ``timing.timed``), and
measures how often each method's top-16 / bottom-16 rollout sets equal those of
our exact host solver (``ours_exact_host``, the reference, itself cross-checked
against the scipy / POT costs on the loop scenes).

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

JSON: ``setup``, ``seconds_per_scene``, ``topbottom_agreement``,
``agreement_scenes``, ``compile_seconds``, ``maxrss_mib_after``,
``cost_error_vs_exact``, ``exact_host_vs_loops_scene_rel_max``,
``fastest_exact_equal``, ``maxrss_mib``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from collections.abc import Callable

import jax
import numba
import numpy as np
from scipy import optimize
from scipy.spatial import distance as spatial_distance

from dpa_omf.preference import distance, ranking
from dpa_omf.testing import bench_scenes
from dpa_omf.tools.bench import timing

os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")  # POT (imported later) would import TF otherwise

TOP_BOTTOM_K = 16


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


# ----------------------------------------------------------------- benchmark
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


def _raw_config(**kwargs) -> distance.OTConfig:
    """An ``OTConfig`` on raw feature units, as the reference loops (LOOPS) compute them: the benchmark times the
    solvers, not the project's default cost scaling."""
    return distance.OTConfig(feature_scaling="none", **kwargs)


def _our_methods(steps: int) -> dict[str, distance.OTConfig]:
    chunk = 8 if steps > 40 else 64
    base = _raw_config(rollout_chunk=chunk)
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


def _run_ours(name: str, cfg: distance.OTConfig, scenes: list[dict]) -> tuple[timing.Timing, list[np.ndarray], float]:
    """(the timing of one call per scene, scene distances per scene, compile seconds) of one of our solvers."""
    t0 = time.perf_counter()
    jitted = jax.jit(distance.ot_distance, static_argnames="config")
    compiled = jitted.lower(*_scene_args(scenes[0]), config=cfg).compile()  # ahead of time: no warm-up call
    compile_s = time.perf_counter() - t0
    t = timing.timed(lambda i: compiled(*_scene_args(scenes[i]))[0], len(scenes), warmup=False)
    dists = [np.asarray(d, np.float64) for d in t.outputs]
    _log(f"{name}: compile {compile_s:.1f}s, median {t.median_s:.3f}s/scene")
    return t, dists, compile_s


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
        t, dists[name], result["compile_seconds"][name] = _run_ours(name, configs[name], run_scenes)
        result["seconds_per_scene"][name] = t.median_s
        result["maxrss_mib_after"][name] = _maxrss_mib()

    weights = np.asarray(distance.OTConfig().feature_weights, np.float64)
    loop_scenes = scenes[: args.loop_scenes]
    for name, fn in LOOPS.items():
        t = timing.timed(lambda i, fn=fn: fn(loop_scenes[i], weights), len(loop_scenes), warmup=False)  # no compile
        dists[name] = list(t.outputs)
        result["seconds_per_scene"][name] = t.median_s
        result["maxrss_mib_after"][name] = _maxrss_mib()
        _log(f"{name}: median {t.median_s:.3f}s/scene")

    if args.ott_default:
        cfg = _raw_config(solver="ott_default", rollout_chunk=args.rollouts)
        t, dists["ott_default"], _ = _run_ours("ott_default", cfg, scenes[:1])
        result["seconds_per_scene"]["ott_default"] = t.median_s
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


def run(args: argparse.Namespace) -> dict:
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


def add_args(p: argparse.ArgumentParser) -> None:
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



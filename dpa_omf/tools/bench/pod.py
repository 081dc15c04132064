"""``bench curate`` and ``bench evaluate``: the batched, sharded post-training paths vs the per-scene loop.

    python -m dpa_omf.bench curate   --json OUT [--devices 1,8] [--scenes 8] [--scenes_per_device 1]
    python -m dpa_omf.bench evaluate --json OUT [--devices 1,8] [--scenes 8] [--scenes_per_device 1]

Same scenes (synthetic, ``--num_agents`` slots, the default config's sizes:
64 rollouts for curation, 32 for evaluation), same keys, same run. For each
device count D a fresh process with D (fake, on a CPU) devices times:

* ``per_scene_loop``: what the jobs did before: one jitted call per scene on
  one device (curation: ``curation.rank_batch`` of one scene, host OT
  callback inside; evaluation: ``sampling.sample`` then
  ``wosac.evaluate_scene`` with sizes fitted per scene);
* ``batched``: the jobs' path now (``jobs.curate.Ranker`` /
  ``jobs.realism_eval.Evaluator``): ``scenes_per_device`` scenes per device
  per step, split over the D devices.

Each is timed ``--repeats`` times after one compiling pass (``timing.timed``);
scenes/s are medians. The JSON has ``scenes_per_second`` (``{per_scene_loop, batched}`` of
the first device count, and per device count under ``by_devices``), whether
both paths gave identical results, the peak RSS of each process and the
compiled memory of the batched curate step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import jax
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.configs import align as align_config
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import curate, pretrain, realism_eval
from dpa_omf.metrics import model_realism
from dpa_omf.metrics import wosac as realism
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling
from dpa_omf.preference import curation
from dpa_omf.synthetic import dataset as synthetic
from dpa_omf.tools.bench import timing
from dpa_omf.train import checkpointing, sharding


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", default="1,8", help="device counts, one process each (fake CPU devices on a CPU)")
    p.add_argument("--scenes", type=int, default=8, help="scenes timed (a multiple of the batch is fairest)")
    p.add_argument("--scenes_per_device", type=int, default=1,
                   help="scenes per device per step of the batched path (the configs' default on a CPU: 1)")
    p.add_argument("--num_agents", type=int, default=32, help="agent slots per scene")
    p.add_argument("--repeats", type=int, default=2, help="timed passes after the compiling one (median)")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # internal: run in this process


def _setup(num_agents: int):
    c = align_config.get_config("")
    c.data.num_agents = num_agents
    model = mlm.MotionLM(cfg_lib.model(c))
    # The packaged reference (its parameters do not depend on the slot count): realistic rollouts.
    params = checkpointing.restore_params(pretrain.PACKAGED / "checkpoints", pretrain.abstract_params(c))
    return c, model, params


def _scenes(c, n: int) -> list[dt.Scenario]:
    syn = cfg_lib.synthetic_world(c)
    return [synthetic.generate_scenario(10_000 + i, syn) for i in range(n)]


def _curate_worker(args: argparse.Namespace) -> dict:
    c, model, params = _setup(args.num_agents)
    cfg = cfg_lib.curation_config(c)
    scenes = _scenes(c, args.scenes)
    keys = [jax.random.fold_in(jax.random.key(0), i) for i in range(len(scenes))]
    one = jax.local_devices()[0]

    def loop():
        rows = []
        for s, k in zip(scenes, keys):
            b = jax.device_put(dt.stack_scenarios([s]), one)
            res = jax.device_get(curation.rank_batch(model, params, b, jax.numpy.stack([k]), cfg))
            rows.append({n: res[n] for n in curate.Ranker.ROW_KEYS})
        return {n: np.concatenate([r[n] for r in rows]) for n in curate.Ranker.ROW_KEYS}

    ranker = curate.Ranker(model, params, cfg, sharding.make_mesh(devices=jax.local_devices()),
                           args.scenes_per_device)

    def batched():
        step = ranker.step_size
        parts = [ranker.rank(scenes[i:i + step], keys[i:i + step]) for i in range(0, len(scenes), step)]
        return {n: np.concatenate([p[n] for p in parts]) for n in curate.Ranker.ROW_KEYS}

    result = _compare(loop, batched, args.repeats, len(scenes))
    result["batched_step_memory"] = _step_memory(ranker, scenes, keys)
    return result


def _step_memory(ranker: curate.Ranker, scenes: list[dt.Scenario], keys: list) -> dict:
    """Compiled memory of the batched curate step's device half, per device (XLA's own analysis)."""
    step = ranker.step_size
    group = (scenes * step)[:step]
    batch = sharding.put_local_batch(dt.stack_scenarios(group), ranker.mesh)
    k = sharding.put_local_batch(jax.numpy.stack((keys * step)[:step]), ranker.mesh)
    m = ranker.featurize.lower(ranker.params, batch, k).compile().memory_analysis()
    if m is None:
        return {}
    return {"temp_mib": m.temp_size_in_bytes / 2**20, "argument_mib": m.argument_size_in_bytes / 2**20,
            "output_mib": m.output_size_in_bytes / 2**20}


def _evaluate_worker(args: argparse.Namespace) -> dict:
    c, model, params = _setup(args.num_agents)
    cfg = cfg_lib.evaluate(c)
    scenes = _scenes(c, args.scenes)
    base = jax.random.key(cfg.seed)

    def loop():
        rows = []
        for i, s in enumerate(scenes):
            r = sampling.sample(model, params, s, jax.random.fold_in(base, i), cfg.rollout)
            rows.append(realism.evaluate_scene(s, np.asarray(model_realism.sim_xyzh(s, r)), cfg.realism))
        return rows

    evaluator = realism_eval.Evaluator(model, cfg, sharding.make_mesh(devices=jax.local_devices()),
                                       args.scenes_per_device)

    def batched():
        return evaluator.scene_metrics(params, scenes, list(range(len(scenes))))

    result = _compare(loop, batched, args.repeats, len(scenes))
    a, b = loop(), batched()
    result["max_abs_difference"] = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x)
    return result


def _compare(loop, batched, repeats: int, n: int) -> dict:
    t = timing.timed(lambda i: loop(), repeats)
    c_loop, t_loop, a = t.warmup_s, t.median_s, t.output
    t = timing.timed(lambda i: batched(), repeats)
    c_batch, t_batch, b = t.warmup_s, t.median_s, t.output
    same = all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a) if isinstance(a, dict) else a == b
    # (evaluation: the loop fits the metric's sizes per scene, the batch per group: equal up to float rounding)
    return {"scenes": n, "scenes_per_second": {"per_scene_loop": n / t_loop, "batched": n / t_batch},
            "speedup": t_loop / t_batch, "first_pass_seconds": {"per_scene_loop": c_loop, "batched": c_batch},
            "identical": bool(same), "devices": jax.local_device_count(), "backend": jax.default_backend(),
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


WORKERS = {"curate": _curate_worker, "evaluate": _evaluate_worker}


def run(name: str, args: argparse.Namespace) -> dict:
    """One process per device count (``--worker``), each timing both paths; the results merged."""
    if args.worker:
        return WORKERS[name](args)
    by_devices = {}
    for d in [int(x) for x in str(args.devices).split(",") if x]:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={d}")
        if jax.default_backend() != "cpu":
            env.pop("XLA_FLAGS")  # real accelerators: the devices there are
        cache = [f"--compilation_cache={args.compilation_cache}"] if args.compilation_cache else []
        cmd = [sys.executable, "-m", "dpa_omf.bench", *cache, name, "--json", os.devnull, "--worker", str(d),
               "--scenes", str(args.scenes), "--scenes_per_device", str(args.scenes_per_device),
               "--num_agents", str(args.num_agents), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"bench {name} with {d} devices failed:\n{out.stderr[-3000:]}")
        by_devices[str(d)] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name}: {d} device(s): {by_devices[str(d)]['scenes_per_second']}", file=sys.stderr, flush=True)
    first = next(iter(by_devices.values()))
    return {"scenes_per_second": first["scenes_per_second"], "by_devices": by_devices,
            "num_agents": args.num_agents, "scenes_per_device": args.scenes_per_device}

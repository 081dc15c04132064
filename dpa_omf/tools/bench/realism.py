"""``bench realism``: the WOSAC metric on one scene (50 sim agents x 32 rollouts x 80 steps) and on a batch.

    python -m dpa_omf.bench realism --json OUT [--batch 16] [--repeats 5] [--shared ../shared]

Each jitted metric is called once to compile (the warm-up, reported as
``compile_*_s``), then timed (``timing.timed``; medians). JSON: ``results``
(``realism_timings``) and ``devices``.
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.io import reader
from dpa_omf.metrics import wosac as realism
from dpa_omf.testing import scenes as fake_scenes
from dpa_omf.tools.bench import timing


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=16, help="scenes in the vmapped measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shared", default="", help="../shared folder: time the real golden scene and rollouts")


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
    t_single = timing.timed(lambda i: single(scenario, sim), repeats)
    scen_b = dt.stack_scenarios([scenario] * batch)
    sim_b = np.stack([sim] * batch)
    batched = realism.jitted_metrics(config, batched=True)
    t_batch = timing.timed(lambda i: batched(scen_b, sim_b), max(1, repeats // 2))
    return dict(
        agents=int(np.asarray(scenario.agents.sim_mask).sum()), slots=int(scenario.num_agents),
        rollouts=int(sim.shape[0]), road_graph_points=int(scenario.roadgraph.num_points),
        single_s=t_single.median_s, batch=batch, batch_s=t_batch.median_s,
        batch_per_scene_s=t_batch.median_s / batch,
        compile_single_s=t_single.warmup_s, compile_batch_s=t_batch.warmup_s,
        device=str(jax.devices()[0]),
    )


def run(args: argparse.Namespace) -> dict:
    """The WOSAC metric on one scene (50 sim agents x 32 rollouts x 80 steps) and on a batch."""
    scene = None
    if args.shared:
        root = os.path.join(args.shared, "golden", "wosac", "submission")
        s = next(reader.read_scenes(os.path.join(args.shared, "womd", "motion_data_one_scenario.tfrecord")))
        r = np.load(os.path.join(root, "rollouts.npz"))
        scene = (s, realism.align_rollouts(s, r["object_id"], r["x"], r["y"], r["z"], r["heading"]))
    res = realism_timings(batch=args.batch, repeats=args.repeats, scene=scene)
    return {"results": res, "devices": [str(d) for d in jax.devices()]}

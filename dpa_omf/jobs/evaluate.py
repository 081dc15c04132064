"""The evaluate job: WOSAC realism of every model on held-out scenes.

Models: ``reference`` (the pretrained checkpoint) and every aligned model
found in the workdir (``WORKDIR/align/`` is DPA-OMF, ``WORKDIR/align_<name>/``
the baselines). For each, ``evaluate.num_rollouts`` (32) joint rollouts per
held-out scene are sampled on device and scored with the realism metric
(``dpa_omf.metrics.wosac``, the ``evaluate.challenge`` configuration, 2024
by default as in the paper's table). Scene metrics are averaged over scenes as
the challenge does.

Writes ``WORKDIR/evaluate/summary.json`` (per model: ``composite``,
``kinematic``, ``interactive``, ``map``, ``min_ade``, ``ade``,
``collision_rate``, ``offroad_rate``, ``traffic_light_violation_rate`` and
every official likelihood), ``report.md`` and PNG plots.
"""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dpa_omf import atomic
from dpa_omf import datatypes as dt
from dpa_omf.model import sampling as ro
from dpa_omf.jobs import stages
from dpa_omf.jobs import data as data_job
from dpa_omf.io import womd_example as womd
from dpa_omf.metrics import wosac as realism
from dpa_omf.jobs import report
from dpa_omf.model import motion_lm as mlm

STAGE = "evaluate"
# Our summary names -> the official field names.
FIELDS = {
    "composite": "metametric",
    "kinematic": "kinematic",
    "interactive": "interactive",
    "map": "map_based",
    "min_ade": "min_average_displacement_error",
    "ade": "average_displacement_error",
    "collision_rate": "simulated_collision_rate",
    "offroad_rate": "simulated_offroad_rate",
    "traffic_light_violation_rate": "simulated_traffic_light_violation_rate",
}


def model_dirs(workdir: str) -> dict[str, pathlib.Path]:
    """Checkpoint folders of every model to evaluate, by name (reference first)."""
    root = pathlib.Path(workdir)
    out = {"reference": root / "pretrain" / "checkpoints"}
    if (root / "align" / "checkpoints").is_dir():
        out["dpa_omf"] = root / "align" / "checkpoints"
    for d in sorted(root.glob("align_*")):
        if (d / "checkpoints").is_dir() and (d / stages.SUMMARY).exists():
            out[d.name[len("align_"):]] = d / "checkpoints"
    return out


def sim_xyzh(scenario: dt.Scenario, r: ro.Rollouts) -> jax.Array:
    """``[R, A, 80, 4]`` (x, y, z, heading); z is held at the current step (the model is planar)."""
    z = jnp.broadcast_to(scenario.agents.z[None, :, dt.CURRENT_INDEX, None], r.x.shape)
    return jnp.stack([r.x, r.y, z, r.heading], -1)


def held_out_scenes(config: ml_collections.ConfigDict, workdir: str) -> list[dt.Scenario]:
    scenes = []
    for path in data_job.split_files(config, workdir, "valid"):
        for s in womd.read_tfrecord(path):
            scenes.append(s)
            if len(scenes) >= config.evaluate.num_scenes:
                return scenes
    return scenes


def evaluate_model(model: mlm.MotionLM, params, scenes: list[dt.Scenario], config: ml_collections.ConfigDict,
                   seed: int) -> dict[str, float]:
    """Mean over scenes of the official per-scene metrics of one model."""
    rcfg = ro.RolloutConfig(num_rollouts=config.evaluate.num_rollouts,
                            rollout_chunk=min(config.evaluate.rollout_chunk, config.evaluate.num_rollouts),
                            temperature=config.evaluate.temperature, top_p=config.evaluate.top_p)
    mcfg = realism.RealismConfig(challenge=config.evaluate.challenge)
    key = jax.random.key(seed)
    rows = []
    for i, s in enumerate(scenes):
        r = ro.sample(model, params, s, jax.random.fold_in(key, i), rcfg)
        rows.append(realism.evaluate_scene(s, np.asarray(sim_xyzh(s, r)), mcfg))
    return {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    from dpa_omf.train import checkpointing
    from dpa_omf.jobs import pretrain

    out = stages.stage_dir(workdir, STAGE)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    model = mlm.MotionLM(pretrain.model_config(config))
    abstract = pretrain.abstract_params(config)
    scenes = held_out_scenes(config, workdir)
    if not scenes:
        raise ValueError("evaluate: no held-out scene")
    results = {}
    # The same rollout keys for every model (paired comparison), varied by evaluate.seed.
    # evaluate.seed 0 keeps the original key (seed + 1) so earlier recorded evaluations stay reproducible.
    eval_seed = config.seed + 1 if config.evaluate.seed == 0 else stages.derived_seed(config.seed, config.evaluate.seed)
    for name, ckpt in model_dirs(workdir).items():
        params = checkpointing.restore_params(ckpt, abstract)
        t0 = time.time()
        m = evaluate_model(model, params, scenes, config, eval_seed)
        results[name] = {ours: m[official] for ours, official in FIELDS.items()}
        results[name]["likelihoods"] = {k: v for k, v in m.items() if k.endswith("_likelihood")}
        results[name]["seconds"] = time.time() - t0
        logging.info("evaluate %s: %s", name, results[name])
    summary = {
        "models": results,
        "num_scenes": len(scenes),
        "num_rollouts": config.evaluate.num_rollouts,
        "challenge": config.evaluate.challenge,
        "seconds": time.time() - start,
        "config_fingerprint": stages.fingerprint(config, stages.DEPENDS_ON[STAGE]),
    }
    # The contract: per model name at the top level too.
    summary.update({name: r for name, r in results.items()})
    table = report.write_report(out, workdir, summary)
    atomic.write_json(out / stages.SUMMARY, summary)
    print(table)
    return summary

"""The evaluate job: WOSAC realism of every model on held-out scenes, cached per model.

Models: ``reference`` (the pretrained checkpoint) and every finished alignment
stage in the workdir (``WORKDIR/align/`` is DPA-OMF, ``WORKDIR/align_<method>/``
the baselines). For each, ``evaluate.num_rollouts`` (32) joint rollouts per
held-out scene are sampled on device and scored with the realism metric
(``dpa_omf.metrics.wosac``, the ``evaluate.challenge`` configuration, 2024
by default as in the paper's table). Scene metrics are averaged over scenes as
the challenge does. The same rollout keys serve every model (a paired comparison).

Per model, ``WORKDIR/evaluate/models/<name>.json`` caches its results under the
fingerprint of (the evaluation's config sections, the model's checkpoint: its
stage's fingerprint and step): adding ``align_afd`` evaluates only that model.
``WORKDIR/evaluate/summary.json`` names exactly the models (and checkpoint
fingerprints) it covers; per model: ``composite``, ``kinematic``,
``interactive``, ``map``, ``min_ade``, ``ade``, ``collision_rate``,
``offroad_rate``, ``traffic_light_violation_rate`` and every official
likelihood. Also ``report.md`` and PNG plots.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dpa_omf import atomic
from dpa_omf import datatypes as dt
from dpa_omf.io import reader
from dpa_omf.jobs import align, pretrain, report
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import data as data_job
from dpa_omf.jobs import workdir as wd
from dpa_omf.metrics import wosac as realism
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling as ro
from dpa_omf.train import checkpointing

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


EVAL_SECTIONS = ("data", "tokenizer", "model", "evaluate")


def models(workdir: str) -> dict[str, str]:
    """Every model to evaluate: name -> its stage folder (reference first, then finished alignments)."""
    return {"reference": pretrain.STAGE, **align.finished_folders(workdir)}


def checkpoint_id(workdir: str, folder: str) -> dict:
    """What identifies a model's checkpoint: its stage's fingerprint and its latest step."""
    summary = wd.read_summary(workdir, folder) or {}
    steps = checkpointing.saved_steps(wd.stage_dir(workdir, folder) / "checkpoints")
    return {"folder": folder, "fingerprint": summary.get("config_fingerprint"), "step": steps[-1] if steps else None}


def models_fingerprint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The models the evaluation covers (the stage graph fingerprints them with the config)."""
    return {name: checkpoint_id(workdir, folder) for name, folder in models(workdir).items()}


def sim_xyzh(scenario: dt.Scenario, r: ro.Rollouts) -> jax.Array:
    """``[R, A, 80, 4]`` (x, y, z, heading); z is held at the current step (the model is planar)."""
    z = jnp.broadcast_to(scenario.agents.z[None, :, dt.CURRENT_INDEX, None], r.x.shape)
    return jnp.stack([r.x, r.y, z, r.heading], -1)


def held_out_scenes(config: ml_collections.ConfigDict, workdir: str) -> list[dt.Scenario]:
    scenes = []
    for path in data_job.split_files(config, workdir, "valid"):
        for s in reader.read_scenes(path, cfg_lib.reader(config)):
            scenes.append(s)
            if len(scenes) >= config.evaluate.num_scenes:
                return scenes
    return scenes


def evaluate_model(model: mlm.MotionLM, params, scenes: list[dt.Scenario], cfg: cfg_lib.EvaluateConfig
                   ) -> dict[str, float]:
    """Mean over scenes of the official per-scene metrics of one model."""
    key = jax.random.key(cfg.seed)
    rows = []
    for i, s in enumerate(scenes):
        r = ro.sample(model, params, s, jax.random.fold_in(key, i), cfg.rollout)
        rows.append(realism.evaluate_scene(s, np.asarray(sim_xyzh(s, r)), cfg.realism))
    return {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}


def run(config: ml_collections.ConfigDict, workdir: str, fingerprint: str) -> dict:
    """Evaluates the models not cached yet; writes the summary and report over every model."""
    out = wd.stage_dir(workdir, STAGE)
    start = time.time()
    cfg = cfg_lib.evaluate(config)
    eval_fp = wd.fingerprint(config, EVAL_SECTIONS)
    model = mlm.MotionLM(cfg_lib.model(config))
    target = None
    scenes: list[dt.Scenario] = []
    results, num_scenes = {}, 0
    for name, folder in models(workdir).items():
        ckpt = checkpoint_id(workdir, folder)
        cache = out / "models" / f"{name}.json"
        cached = wd.read_json(cache)
        if cached and cached.get("eval_fingerprint") == eval_fp and cached.get("checkpoint") == ckpt:
            results[name], num_scenes = cached["metrics"], cached["num_scenes"]
            continue
        if target is None:  # first model not cached: read the scenes once
            target = pretrain.abstract_params(config)
            scenes = held_out_scenes(config, workdir)
            if not scenes:
                raise ValueError("evaluate: no held-out scene")
        params = checkpointing.restore_params(wd.stage_dir(workdir, folder) / "checkpoints", target)
        t0 = time.time()
        m = evaluate_model(model, params, scenes, cfg)
        results[name] = {ours: m[official] for ours, official in FIELDS.items()}
        results[name]["likelihoods"] = {k: v for k, v in m.items() if k.endswith("_likelihood")}
        results[name]["seconds"] = time.time() - t0
        num_scenes = len(scenes)
        atomic.write_json(cache, {"eval_fingerprint": eval_fp, "checkpoint": ckpt, "num_scenes": num_scenes,
                                  "metrics": results[name]})
        logging.info("evaluate %s: %s", name, results[name])
    summary = {
        "models": results,
        "checkpoints": models_fingerprint(config, workdir),
        "num_scenes": num_scenes,
        "num_rollouts": config.evaluate.num_rollouts,
        "challenge": config.evaluate.challenge,
        "seconds": time.time() - start,
        "config_fingerprint": fingerprint,
    }
    summary.update(dict(results.items()))  # the contract: per model name at the top level too
    report.write_report(out, [wd.stage_dir(workdir, f) for n, f in models(workdir).items() if n != "reference"],
                        summary)
    wd.write_summary(workdir, STAGE, summary)
    return summary


def print_table(workdir: str) -> None:
    """The before/after table of the finished evaluation (process 0 prints)."""
    summary = wd.read_summary(workdir, STAGE)
    if summary is None or not wd.is_writer():
        return
    ref = wd.read_summary(workdir, pretrain.STAGE) or {}
    origin = ("the packaged reference (dpa_omf/assets/reference)" if ref.get("source") == "packaged"
              else "pretrained in this workdir")
    print(f"reference = {origin}, {ref.get('steps')} steps; WOSAC {summary['challenge']} on "
          f"{summary['num_scenes']} held-out scenes x {summary['num_rollouts']} rollouts", flush=True)
    print(report.table(summary["models"]), flush=True)

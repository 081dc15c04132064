"""The submit job: a WOSAC submission of one model (``SimAgentsChallengeSubmission`` shards and the tar).

  python -m dpa_omf.launch --config=configs/submit.py[:smoke|:womd][,<align method>] --workdir=DIR \\
      --config.submit.account_name=YOU@EXAMPLE.COM [--config.submit.scenario_pattern='testing/*.tfrecord*']

What: for every scenario of ``submit.split`` (or of ``submit.scenario_pattern``), in file order (the global
scenario index i), the model ``submit.model`` ('reference' or the alignment method's stage) samples
``submit.num_rollouts`` = 32 joint rollouts of every agent valid at the current step (the challenge's sim
agents, with their object ids) with the key ``fold_in(key(seed), i)``; z is held at the current step
(``metrics.model_realism.sim_xyzh``). :func:`simulate` is the one per-scene sampling call (swap it for a
batched sampler).

Slots: the scenes are read with ``submit.num_agents`` slots (0: ``data.num_agents``; WOMD: 128). Every sim agent
must fit: the reader refuses a scenario with more sim agents than slots, naming the file, the record and the
scenario; nothing is dropped silently. The model's parameters do not depend on the slot count, so the 32-slot
packaged reference simulates 128-slot scenes.

Where: ``WORKDIR/submit_<model>/``: ``shards/submission.binproto-XXXXX-of-NNNNN`` (contiguous blocks of
``submit.scenes_per_shard`` scenes: ``submission.shard_ranges``), ``done/<shard>.json`` (per shard: the
stage's fingerprint, its scenarios, sim agents, seconds), ``submission.tar.gz`` (the file to upload) and
``summary.json``.

Processes: shard k is written by process ``k % N`` only (``workdir.process_share``); the keys depend only on the
seed and the global scenario index, so the files do not depend on N. After a barrier, process 0 packs the tar and
writes the summary. Resume: a shard whose ``done`` record carries this stage's fingerprint is skipped; every file
is written atomically, the shard before its record.
"""

from __future__ import annotations

import dataclasses
import glob
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from dpa_omf import atomic
from dpa_omf import datatypes as dt
from dpa_omf.io import reader
from dpa_omf.jobs import align, evaluate, pretrain
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import data as data_job
from dpa_omf.jobs import workdir as wd
from dpa_omf.metrics import model_realism, submission
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling as ro
from dpa_omf.train import checkpointing

STAGE = "submit"
TAR = "submission.tar.gz"


def folder_name(model: str) -> str:
    """The workdir folder of a model's submission: ``submit_<model>``."""
    return f"{STAGE}_{model}"


def model_folder(model: str) -> str:
    """The stage folder holding the model's checkpoint: ``pretrain`` or the alignment's folder."""
    return pretrain.STAGE if model == "reference" else align.folder_name(model)


def needs(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The stages the submission needs beyond pretrain: the alignment of ``submit.model`` when it names one."""
    return () if config.submit.model == "reference" else (align.STAGE,)


def checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The submitted checkpoint's identity (the stage graph fingerprints it with the config)."""
    return evaluate.checkpoint_id(workdir, model_folder(config.submit.model))


# ----------------------------------------------------------------------------- the plan


def scenario_files(config: ml_collections.ConfigDict, workdir: str, cfg: cfg_lib.SubmitConfig) -> list[str]:
    """The TFRecord files to submit, sorted: ``submit.scenario_pattern``'s, or the data split's."""
    if cfg.scenario_pattern:
        files = sorted(glob.glob(cfg.scenario_pattern))
        if not files:
            raise FileNotFoundError(f"submit.scenario_pattern={cfg.scenario_pattern!r} matches no file")
        return files
    return data_job.split_files(config, workdir, cfg.split)


# ----------------------------------------------------------------------------- one scene


def simulate(model: mlm.MotionLM, params, scenario: dt.Scenario, key: jax.Array,
             rollout: ro.RolloutConfig) -> np.ndarray:
    """The one per-scene sampling call: ``[R, A, 80, 4]`` (x, y, z, heading) of every slot (jitted, one scene)."""
    r = ro.sample(model, params, scenario, key, rollout)
    return np.asarray(model_realism.sim_xyzh(scenario, r))


def scenario_rollouts(model: mlm.MotionLM, params, scenario: dt.Scenario, index: int,
                      cfg: cfg_lib.SubmitConfig):
    """``ScenarioRollouts`` of the global scenario ``index``, checked like the official validator does."""
    key = jax.random.fold_in(jax.random.key(cfg.seed), index)
    msg = submission.rollouts_from_slots(scenario, simulate(model, params, scenario, key, cfg.rollout))
    submission.validate_scenario_rollouts(msg, scenario)
    return msg


def write_shard(model: mlm.MotionLM, params, scenes: reader.SceneReader, sources: list[reader.Source],
                indices: range, path: pathlib.Path, meta: submission.SubmissionMetadata,
                cfg: cfg_lib.SubmitConfig) -> dict:
    """Samples the scenarios ``indices`` (``sources[i]``) and writes their shard; returns its ``done`` record."""
    t0 = time.time()
    msgs, agents = [], 0
    for i in indices:
        scenario = scenes.read(sources[i])
        msgs.append(scenario_rollouts(model, params, scenario, i, cfg))
        agents += int(np.asarray(scenario.agents.sim_mask).sum())
    submission.write_shard(path, msgs, meta)
    return {"scenarios": len(indices), "first": indices.start, "sim_agents": agents, "seconds": time.time() - t0,
            "bytes": path.stat().st_size}


# ----------------------------------------------------------------------------- job


def load_model(config: ml_collections.ConfigDict, workdir: str, model: str) -> tuple[mlm.MotionLM, object]:
    """The model and its parameters, on this process's first device (sampling is per process)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          pretrain.abstract_params(config))
    params = checkpointing.restore_params(wd.stage_dir(workdir, model_folder(model)) / "checkpoints", target)
    return mlm.MotionLM(cfg_lib.model(config)), params


def run(config: ml_collections.ConfigDict, workdir: str, fingerprint: str) -> int:
    """Writes this process's shards (skipping finished ones); process 0 then packs the tar and the summary."""
    start = time.time()
    cfg = cfg_lib.submit(config)
    folder = folder_name(cfg.model)
    out = wd.stage_dir(workdir, folder)
    with reader.SceneReader(scenario_files(config, workdir, cfg), cfg.reader) as scenes:
        sources = scenes.sources()
        if cfg.max_scenarios:
            sources = sources[:cfg.max_scenarios]
        plan = submission.shard_ranges(len(sources), cfg.scenes_per_shard)
        model, params = load_model(config, workdir, cfg.model)
        meta = cfg.submission_metadata(mlm.param_count(params))
        mine = wd.process_share(len(plan))
        for k in mine:
            name = submission.shard_name(k, len(plan))
            done = out / "done" / f"{name}.json"
            if (wd.read_json(done) or {}).get("config_fingerprint") == fingerprint and (out / "shards" / name).exists():
                logging.info("submit: %s finished earlier, skipped", name)
                continue
            record = write_shard(model, params, scenes, sources, plan[k], out / "shards" / name, meta, cfg)
            atomic.write_json(done, {**record, "config_fingerprint": fingerprint})
            wd.say(f"[{folder}] shard {k + 1}/{len(plan)}: {record['scenarios']} scenarios, "
                   f"{record['seconds']:.1f} s ({record['seconds'] / record['scenarios']:.2f} s per scenario)")
    wd.barrier("submit_shards")
    if wd.is_writer():
        _finish(out, plan, meta, cfg, checkpoint(config, workdir), fingerprint, time.time() - start)
    return 0  # the stage graph holds every process at a barrier until the summary is written


def _finish(out: pathlib.Path, plan: list[range], meta: submission.SubmissionMetadata, cfg: cfg_lib.SubmitConfig,
            ckpt: dict, fingerprint: str, seconds: float) -> None:
    """Process 0: checks every shard is done, removes stray shards, packs the tar, writes the summary."""
    names = [submission.shard_name(k, len(plan)) for k in range(len(plan))]
    records = [wd.read_json(out / "done" / f"{n}.json") or {} for n in names]
    missing = [n for n, r in zip(names, records, strict=True) if r.get("config_fingerprint") != fingerprint]
    if missing:
        raise RuntimeError(f"submit: shards not written by any process: {missing[:5]} ({len(missing)} in all)")
    for stray in (out / "shards").glob("submission.binproto-*"):
        if stray.name not in names:  # left by an earlier, unfinished run with another shard count
            stray.unlink()
    tar = submission.package_submission([out / "shards" / n for n in names], out / TAR)
    total = sum(r["scenarios"] for r in records)
    sampling_seconds = sum(r["seconds"] for r in records)
    wd.write_summary(out.parent, out.name, {
        "model": cfg.model, "checkpoint": ckpt, "num_scenarios": total, "num_shards": len(names),
        "num_rollouts": cfg.rollout.num_rollouts, "sim_agents": sum(r["sim_agents"] for r in records),
        "max_shard_bytes": max(r["bytes"] for r in records), "tar": TAR, "tar_bytes": tar.stat().st_size,
        "seconds_per_scenario": sampling_seconds / total, "seconds": seconds,
        "metadata": dataclasses.asdict(meta),
        "config_fingerprint": fingerprint,
    })
    wd.say(f"[{out.name}] {total} scenarios in {len(names)} shards -> {tar}")

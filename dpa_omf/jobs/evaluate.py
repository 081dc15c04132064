"""The evaluate job: WOSAC realism of every model on held-out scenes, cached per model.

Models: ``reference`` (the pretrained checkpoint) and every finished alignment
stage in the workdir (``WORKDIR/align/`` is DPA-OMF, ``WORKDIR/align_<method>/``
the baselines). For each, ``evaluate.num_rollouts`` (32) joint rollouts per
held-out scene are sampled on device and scored with the realism metric
(``dpa_omf.metrics.wosac``, the ``evaluate.challenge`` configuration, 2024
by default as in the paper's table). Scene metrics are averaged over scenes as
the challenge does. The same rollout keys serve every model (a paired comparison).

Sampling settings: ``evaluate.temperature`` / ``evaluate.top_p`` (1 / 1: the
model's own distribution) shape every model's rollouts; the keys do not
depend on them, so one model scored at several settings sees the same keys.
The setting is part of the evaluation's fingerprint (the study's
``sampling/`` folders: one workdir per setting, its finished stages linked),
and the summary records it (``sampling``). ``evaluate.sampled`` adds rows
``<model>@t<T>,p<P>``: a model sampled at another setting with the same keys
(by default the reference sharpened, the control a gain must beat, and
DPA-OMF at its own best); a row of a model not aligned in the workdir is left
out. Each row's cache key holds its setting, so asking for other rows
re-scores none of the others. Every row of an aligned model also gets its
paired difference to each sampled row of the reference (``composite_vs``).

Pod scale: every process runs this job. The held-out scenes (the first
``evaluate.num_scenes`` of the valid split; 0: all of them) form fixed chunks of
``evaluate.scenes_per_chunk``; process p of P scores the chunks ``c % P == p``
with the batched, sharded evaluator (``jobs/realism_eval.py``: scenes split over
the process's devices) and writes each chunk's per-scene metrics as it
finishes (``WORKDIR/evaluate/scenes/<name>-<key>/chunk-XXXXX-of-YYYYY.json``,
``key``: the evaluation's and the checkpoint's fingerprint; each file also names
the process that scored it), so a restart
skips finished chunks; SIGTERM / SIGINT stops every process after the
current chunk and the job exits 75. After a barrier, process 0 aggregates
the chunks of every model once: the per-scene means, a 95% bootstrap
interval of the composite over scenes, and the paired difference to the
reference (same scenes, same rollout keys) with its interval.

Per model, ``WORKDIR/evaluate/models/<name>.json`` caches its results under the
fingerprint of (the evaluation's config sections, the model's checkpoint: its
stage's fingerprint and step): adding ``align_afd`` evaluates only that model.
``WORKDIR/evaluate/summary.json`` names exactly the models (and checkpoint
fingerprints) it covers; per model: ``composite``, ``kinematic``,
``interactive``, ``map``, ``min_ade``, ``ade``, ``collision_rate``,
``offroad_rate``, ``traffic_light_violation_rate``, every official
likelihood, ``composite_ci`` ``[lo, hi]``, (not for the reference)
``composite_vs_reference`` ``{mean, lo, hi}`` and (rows of aligned models,
when the reference has sampled rows) ``composite_vs`` ``{row: {mean, lo,
hi}}``; and ``sampling`` ``{temperature, top_p}``. Also ``report.md`` and
PNG plots.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from dpa_omf import atomic
from dpa_omf import datatypes as dt
from dpa_omf.jobs import align, prepare, pretrain, realism_eval, report
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import workdir as wd
from dpa_omf.metrics import names, stats
from dpa_omf.model import motion_lm as mlm
from dpa_omf.train import checkpointing, sharding

STAGE = "evaluate"


EVAL_SECTIONS = ("data", "tokenizer", "model", "evaluate")


def models(workdir: str) -> dict[str, str]:
    """Every model to evaluate: name -> its stage folder (reference first, then finished alignments)."""
    return {"reference": pretrain.STAGE, **align.finished_folders(workdir)}


@dataclasses.dataclass(frozen=True)
class Row:
    """A row of the evaluation: the checkpoint of a stage folder, sampled at ``sampled`` (temperature, top-p)
    with the same keys as every row, or at the evaluate section's own setting (None)."""

    folder: str
    sampled: tuple[float, float] | None = None


def sampled_name(model: str, setting: tuple[float, float]) -> str:
    """The name of a model's row sampled at another setting, e.g. ``reference@t0.85,p0.9``."""
    return f"{model}@t{setting[0]:g},p{setting[1]:g}"


def check(config: ml_collections.ConfigDict) -> list[str]:
    """The problems of ``evaluate.sampled`` (a rule of ``stages.check``: refused before any compute)."""
    try:
        sampled = cfg_lib.sampled_rows(config.evaluate.sampled)
    except ValueError as e:
        return [str(e)]
    return [f"evaluate.sampled: unknown model {m!r} (reference or one of {sorted(align.METHODS)})"
            for m, _, _ in sampled if m != "reference" and m not in align.METHODS]


def rows(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Row]:
    """Every row: each model at the evaluate section's setting, then ``evaluate.sampled``'s rows of the models
    the workdir has (a row of a model not aligned there is left out)."""
    problems = check(config)
    if problems:
        raise ValueError("; ".join(problems))
    finished = models(workdir)
    out = {name: Row(folder) for name, folder in finished.items()}
    for model, t, p in cfg_lib.sampled_rows(config.evaluate.sampled):
        if model in finished:
            out[sampled_name(model, (t, p))] = Row(finished[model], (t, p))
    return out


def checkpoint_id(workdir: str, folder: str) -> dict:
    """What identifies a model's checkpoint: its stage's fingerprint and its latest step."""
    summary = wd.read_summary(workdir, folder) or {}
    steps = checkpointing.saved_steps(wd.stage_dir(workdir, folder) / "checkpoints")
    return {"folder": folder, "fingerprint": summary.get("config_fingerprint"), "step": steps[-1] if steps else None}


def row_id(workdir: str, row: Row) -> dict:
    """What identifies a row's scores: its checkpoint and, for a sampled row, its setting."""
    ident = checkpoint_id(workdir, row.folder)
    return ident if row.sampled is None else ident | {"sampled": list(row.sampled)}


def models_fingerprint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The rows the evaluation covers (the stage graph fingerprints them with the config)."""
    return {name: row_id(workdir, row) for name, row in rows(config, workdir).items()}


def held_out_sources(config: ml_collections.ConfigDict, workdir: str) -> tuple[prepare.Scenes, list]:
    """The reader of the valid split and its (up to) ``evaluate.num_scenes`` scenes from
    ``evaluate.first_scene`` (0 scenes: all from there on)."""
    scenes = prepare.open_scenes(config, workdir, "valid")
    sources = scenes.sources()
    n, first = config.evaluate.num_scenes, config.evaluate.first_scene
    sources = sources[first:first + n] if n else sources[first:]  # fewer when the split is shorter
    if not sources:
        raise ValueError(f"evaluate: no held-out scene from scene {first} (the valid split has "
                         f"{len(scenes.sources())})")
    return scenes, sources


def chunks(num_scenes: int, per_chunk: int) -> list[list[int]]:
    """Scene indices of every chunk (fixed groups: the same whatever the devices and processes)."""
    return [list(range(i, min(i + per_chunk, num_scenes))) for i in range(0, num_scenes, per_chunk)]


def chunk_name(k: int, n: int) -> str:
    return f"chunk-{k:05d}-of-{n:05d}.json"


def scene_dir(workdir: str, name: str, eval_fp: str, ckpt: dict) -> pathlib.Path:
    """Where a model's per-scene results for this evaluation and checkpoint go."""
    return wd.stage_dir(workdir, STAGE) / "scenes" / f"{name}-{wd.digest([eval_fp, ckpt])}"


def run(config: ml_collections.ConfigDict, workdir: str, fingerprint: str) -> int:
    """Scores this process's chunks of every model not cached; process 0 then aggregates and reports.

    Returns 0 when done, 75 (``checkpointing.EXIT_PREEMPTED``) when SIGTERM / SIGINT stopped it.
    """
    start = time.time()
    cfg = cfg_lib.evaluate(config)
    eval_fp = wd.fingerprint(config, EVAL_SECTIONS)
    scenes, sources = held_out_sources(config, workdir)
    groups = chunks(len(sources), cfg.scenes_per_chunk)
    mine = wd.process_share(len(groups))
    mesh = sharding.make_mesh(devices=jax.local_devices())
    target = pretrain.params_target(config, mesh)
    todo = {name: row for name, row in rows(config, workdir).items() if _cached(workdir, name, row, eval_fp) is None}
    at_least = (0, 0, 0)
    if todo and cfg.sizes_per_job:  # one program for every chunk (the same on every process)
        at_least = realism_eval.job_sizes(lambda i: scenes.read(sources[i]), [i for k in mine for i in groups[k]])
    evaluator = realism_eval.Evaluator(mlm.MotionLM(cfg_lib.model(config)), cfg, mesh, at_least=at_least)
    preempted = False
    with checkpointing.PreemptionFlag() as flag:
        for name, row in todo.items():
            work = _Work(scenes, sources, groups, mine)
            if not _score_chunks(evaluator, target, workdir, name, row, eval_fp, work, flag):
                preempted = True
                break
    scenes.close()
    if wd.any_process(preempted):
        wd.say(f"[{STAGE}] preempted: finished chunks saved; run again to continue")
        return checkpointing.EXIT_PREEMPTED
    if wd.is_writer():
        _aggregate(config, workdir, eval_fp, todo, len(sources), fingerprint, time.time() - start)
    wd.barrier("evaluate_summary")
    return 0


def _cached(workdir: str, name: str, row: Row, eval_fp: str) -> dict | None:
    cached = wd.read_json(wd.stage_dir(workdir, STAGE) / "models" / f"{name}.json")
    if cached and cached.get("eval_fingerprint") == eval_fp and cached.get("checkpoint") == row_id(workdir, row):
        return cached
    return None


@dataclasses.dataclass(frozen=True)
class _Work:
    """The held-out scenes, their chunks and this process's share of them."""

    scenes: prepare.Scenes
    sources: list
    groups: list[list[int]]
    mine: list[int]


def _score_chunks(evaluator: realism_eval.Evaluator, target, workdir: str, name: str, row: Row, eval_fp: str,
                  work: _Work, flag: checkpointing.PreemptionFlag) -> bool:
    """Writes this process's missing chunks of one row; False when stopped by a signal."""
    out = scene_dir(workdir, name, eval_fp, row_id(workdir, row))
    done = sum((out / chunk_name(k, len(work.groups))).exists() for k in work.mine)
    # this process's chunks of the model (process 0 shows its bar; every process scores its own share)
    bar = tqdm.tqdm(total=len(work.mine), initial=done, desc=f"{STAGE} {name}", unit="chunk", dynamic_ncols=True,
                    disable=not wd.is_writer())
    params = None
    groups = work.groups
    with bar:
        for k in work.mine:
            path = out / chunk_name(k, len(groups))
            if path.exists():
                continue
            if flag.is_set():
                return False
            if params is None:
                params = checkpointing.restore_params(wd.stage_dir(workdir, row.folder) / "checkpoints", target)
            t0 = time.time()
            batch = [work.scenes.read(work.sources[i]) for i in groups[k]]
            metrics = evaluator.scene_metrics(params, batch, groups[k], row.sampled)
            atomic.write_json(path, {"scenes": groups[k], "process": jax.process_index(), "seconds": time.time() - t0,
                                     "scenario_ids": [dt.scenario_id_str(s.scenario_id) for s in batch],
                                     "metrics": metrics})
            bar.update(1)
    return True


def _load_scenes(workdir: str, name: str, row: Row, eval_fp: str, num_scenes: int) -> list[dict]:
    out = scene_dir(workdir, name, eval_fp, row_id(workdir, row))
    rows: list[dict | None] = [None] * num_scenes
    for path in sorted(out.glob("chunk-*.json")):
        part = wd.read_json(path)
        for i, m in zip(part["scenes"], part["metrics"], strict=True):
            rows[i] = m
    missing = [i for i, r in enumerate(rows) if r is None]
    if missing:
        raise RuntimeError(f"evaluate: {len(missing)} scenes of {name} have no result in {out} (first: {missing[:5]})")
    return rows  # type: ignore[return-value]


def _aggregate(config, workdir: str, eval_fp: str, todo: dict[str, Row], num_scenes: int, fingerprint: str,
               seconds: float) -> None:
    """Process 0: every row's means, interval and paired differences; the cache files, summary and report."""
    out = wd.stage_dir(workdir, STAGE)
    per_scene = {}
    results = {}
    every = rows(config, workdir)
    for name, row in every.items():
        cached = _cached(workdir, name, row, eval_fp) if name not in todo else None
        if cached is not None and "composite_per_scene" in cached:
            results[name], per_scene[name] = cached["metrics"], np.asarray(cached["composite_per_scene"])
            continue
        scene_rows = _load_scenes(workdir, name, row, eval_fp, num_scenes)
        m = realism_eval.mean_metrics(scene_rows)
        results[name] = names.ours(m, names.summary()) | {"likelihoods": names.ours(m, names.likelihoods())}
        log = realism_eval.log_rates(scene_rows)  # the same for every model (the same scenes)
        if log is not None:
            results[name]["log"] = log
        per_scene[name] = np.asarray([r[names.composite()] for r in scene_rows])
        results[name]["composite_ci"] = list(stats.bootstrap_ci(per_scene[name]))
        atomic.write_json(out / "models" / f"{name}.json",
                          {"eval_fingerprint": eval_fp, "checkpoint": row_id(workdir, row),
                           "num_scenes": num_scenes, "metrics": results[name],
                           "composite_per_scene": per_scene[name].tolist()})
    sharpened = [n for n, r in every.items() if r.folder == pretrain.STAGE and r.sampled is not None]
    for name in results:
        if name != "reference" and "reference" in per_scene:
            results[name]["composite_vs_reference"] = stats.paired_difference(per_scene[name],
                                                                              per_scene["reference"])
        if every[name].folder != pretrain.STAGE and sharpened:
            results[name]["composite_vs"] = {r: stats.paired_difference(per_scene[name], per_scene[r])
                                             for r in sharpened}
    summary = {
        "models": results,
        "checkpoints": models_fingerprint(config, workdir),
        "num_scenes": num_scenes,
        "first_scene": config.evaluate.first_scene,
        "num_rollouts": config.evaluate.num_rollouts,
        "challenge": config.evaluate.challenge,
        "sampling": {"temperature": config.evaluate.temperature, "top_p": config.evaluate.top_p},
        "seconds": seconds,
        "processes": jax.process_count(),
        "config_fingerprint": fingerprint,
    }
    summary.update(dict(results.items()))  # the contract: per model name at the top level too
    report.write_report(out, [wd.stage_dir(workdir, f) for n, f in models(workdir).items() if n != "reference"],
                        summary)
    wd.write_summary(workdir, STAGE, summary)
    logging.info("evaluate: %s", {n: r["composite"] for n, r in results.items()})


def _from(summary: dict) -> str:
    first = summary.get("first_scene", 0)
    return f" (from scene {first})" if first else ""


def print_table(workdir: str) -> None:
    """The before/after table of the finished evaluation (process 0 prints)."""
    summary = wd.read_summary(workdir, STAGE)
    if summary is None or not wd.is_writer():
        return
    ref = wd.read_summary(workdir, pretrain.STAGE) or {}
    origin = ("the packaged reference (dpa_omf/assets/reference)" if ref.get("source") == "packaged"
              else "pretrained in this workdir")
    print(f"reference = {origin}, {ref.get('steps')} steps; WOSAC {summary['challenge']} on "
          f"{summary['num_scenes']} held-out scenes{_from(summary)} x {summary['num_rollouts']} rollouts"
          f"{report.sampled(summary)}", flush=True)
    print(report.table(summary["models"]), flush=True)
    versus = report.versus(summary["models"])
    if versus:
        print(versus, flush=True)

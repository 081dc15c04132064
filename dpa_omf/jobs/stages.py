"""The pipeline as a stage graph, owned here:

  data -> prepare -> pretrain -> curate -> align[_<method>] -> evaluate
                           +--------------------------> submit_<model> (after align when aligned)

(prepare: every shard parsed and fitted once; pretraining needs it only when it trains a reference (the packaged
one reads no data), curation and evaluation always (they read the prepared scenes, ``prepare.open_scenes``))

Each :class:`Stage` declares the stages it needs, the config sections its
output depends on (fingerprinted, see ``workdir.py``), the folder it writes and
whether every process runs it. :func:`ensure` runs what is missing, in order,
the same way for every stage, and prints one line per stage (running or
reused, and why). Every job of the launcher is "ensure the graph up to X":
``configs/data.py`` up to data, ..., and the main job (``configs/align.py``)
up to evaluate (:func:`run_job`).

Adding a stage: write ``jobs/<name>.py`` with its name ``STAGE`` and ``run(config, workdir, fingerprint)``
returning 0 when done (75 when preempted), whose last act is to write
``summary.json`` with ``config_fingerprint=fingerprint`` (``workdir.write_summary``; in a
multi-process job process 0 writes it and the graph holds the others at a barrier until it exists),
then add it to :data:`GRAPH` with its prerequisites and config sections: the launcher's jobs
(:func:`jobs`), ``--restart`` and the device checks (:func:`uses_devices`) follow.

What the graph does for every stage (so a new stage gets it without code of its own): it writes the
stage's ``config.json`` (the sections it fingerprints) when the stage starts, resumes an unfinished folder
only when that file matches, seals the summary with the list of the files the stage wrote (sizes,
sha256), reuses a finished stage only when those files verify, and deletes and reruns the stages named by
the launcher's ``--restart``. See ``workdir.py``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from dpa_omf.jobs import align, curate, data, evaluate, prepare, pretrain, submit, workdir
from dpa_omf.jobs import config as cfg_lib

RunFn = Callable[[ml_collections.ConfigDict, str, str], Any]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One node of the graph.

    Attributes:
      name: the stage's name (``config.job`` values and the graph's keys).
      needs: stages that must be finished first.
      sections: config sections its output depends on (with the seed).
      run: ``run(config, workdir, fingerprint)``; returns 0 when done, 75 when preempted (saved; run again)
        (any other return value counts as done).
      all_processes: every process runs it (sharded training); otherwise process 0 runs it (the stages
        that do not split their work yet). Either way every process then waits at a barrier, so that none
        checks the summary (written by process 0) before it exists.
      folder: the folder under the workdir, from the config (align: one per method).
      extra: more fingerprinted inputs than config sections (evaluate: the models it covers).
      reuse_other: a finished folder with another fingerprint is redone rather than refused (only for
        stages whose outputs nothing else reads, with per-item caches: evaluate).
      more_needs: more prerequisites that depend on the config (submit: the submitted model's alignment).
    """

    name: str
    needs: tuple[str, ...]
    sections: tuple[str, ...]
    run: RunFn
    all_processes: bool
    folder: Callable[[ml_collections.ConfigDict], str] | None = None
    extra: Callable[[ml_collections.ConfigDict, str], Any] | None = None
    reuse_other: bool = False
    more_needs: Callable[[ml_collections.ConfigDict], tuple[str, ...]] | None = None

    def needs_of(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        return self.needs + (self.more_needs(config) if self.more_needs is not None else ())

    def folder_of(self, config: ml_collections.ConfigDict) -> str:
        return self.folder(config) if self.folder is not None else self.name


_BASE = ("data", "tokenizer", "model", "pretrain")
GRAPH: dict[str, Stage] = {s.name: s for s in (
    Stage(data.STAGE, (), ("data",), data.run, all_processes=False),
    Stage(prepare.STAGE, (data.STAGE,), ("data",), prepare.run, all_processes=True),
    Stage(pretrain.STAGE, (data.STAGE,), _BASE, pretrain.run, all_processes=True, extra=pretrain.packaged_id,
          more_needs=pretrain.needs),
    Stage(curate.STAGE, (prepare.STAGE, pretrain.STAGE), _BASE + ("curate",), curate.run, all_processes=True),
    Stage(align.STAGE, (curate.STAGE,), _BASE + ("curate", "align"), align.run, all_processes=True,
          folder=lambda c: align.folder_name(c.align.method)),
    Stage(evaluate.STAGE, (prepare.STAGE, pretrain.STAGE, align.STAGE), _BASE + ("evaluate",), evaluate.run,
          all_processes=True, extra=evaluate.models_fingerprint, reuse_other=True),
    Stage(submit.STAGE, (pretrain.STAGE,), _BASE + ("submit",), submit.run, all_processes=True,
          folder=lambda c: submit.folder_name(c.submit.model), extra=submit.checkpoint, more_needs=submit.needs),
)}
MAIN = "main"  # the main job: the graph up to evaluate, then the realism table


def jobs() -> tuple[str, ...]:
    """The launcher's jobs (``config.job``): every stage of the graph, and the main job."""
    return (*GRAPH, MAIN)


def check(config: ml_collections.ConfigDict, num_devices: int | None = None, process_count: int = 1) -> None:
    """``cfg_lib.check`` with the rules of the registries the config boundary cannot import (the alignment
    methods': ``align.check``, and the evaluation's rows, ``evaluate.check``): every problem of a job's config, before
    any compute."""
    cfg_lib.check(config, num_devices, process_count, rules=(align.check, evaluate.check))


def uses_devices(job: str) -> bool:
    """Whether a job runs on every process's devices, so its config is checked against them: every job but one
    whose stage process 0 alone runs (data). An unknown job counts as one (``run_job`` refuses it)."""
    return job not in GRAPH or GRAPH[job].all_processes


def recorded_config(stage: str, config: ml_collections.ConfigDict, root: str | pathlib.Path) -> dict:
    """What ``stage``'s output depends on, as written to its ``config.json`` (the fingerprinted sections)."""
    s = GRAPH[stage]
    return workdir.recorded_config(config, s.sections, s.extra(config, str(root)) if s.extra else None)


def fingerprint(stage: str, config: ml_collections.ConfigDict, root: str | pathlib.Path) -> str:
    """The fingerprint a finished ``stage`` records in its summary's ``config_fingerprint``."""
    return workdir.digest(recorded_config(stage, config, root))


def ensure(target: str, config: ml_collections.ConfigDict, root: str | pathlib.Path,
           _seen: set[str] | None = None, restart: frozenset[str] = frozenset()) -> int:
    """Runs the missing stages up to ``target``, prerequisites first; returns 0, or 75 when one was preempted.

    A stage in ``restart`` (the launcher's ``--restart``) is deleted and run from scratch. Otherwise a finished
    stage is reused only when its fingerprint matches and its listed outputs verify, and an unfinished one is
    resumed only when its ``config.json`` matches (``workdir.finished``, ``workdir.check_resume``).
    """
    seen = set() if _seen is None else _seen
    stage = GRAPH[target]
    for need in stage.needs_of(config):
        if need not in seen:
            code = ensure(need, config, root, seen, restart)
            if code:
                return code
    seen.add(target)
    folder = stage.folder_of(config)
    recorded = recorded_config(target, config, root)
    fp = workdir.digest(recorded)
    if target in restart:
        workdir.say(f"[{folder}] restarting from scratch (--restart={target})")
        workdir.clear(root, folder)
        workdir.barrier(f"restart_{target}")
    else:
        # A stage stopped between its summary (its last act) and the seal did finish: seal it now.
        workdir.seal(root, folder, fp, recorded)
        workdir.barrier(f"seal_{target}")
        if workdir.finished(root, folder, fp, refuse_other=not stage.reuse_other, stage=target,
                            wanted_config=recorded):
            workdir.say(f"[{folder}] reused: finished earlier with this config ({workdir.stage_dir(root, folder)})")
            return 0
        if not stage.reuse_other:
            workdir.check_resume(root, folder, recorded, target)
    partial = workdir.stage_dir(root, folder).exists() and workdir.read_config(root, folder) == recorded
    workdir.say(f"[{folder}] running: " + ("resuming an unfinished run" if partial else "not run yet in this workdir"))
    workdir.write_config(root, folder, recorded)
    code = _run(stage, config, str(root), fp)
    if code == 0 and not workdir.finished(root, folder, fp, refuse_other=False, stage=target):
        raise RuntimeError(f"stage {folder} ended without writing its summary with fingerprint {fp} "
                           f"({workdir.stage_dir(root, folder) / workdir.SUMMARY})")
    return code


def _run(stage: Stage, config: ml_collections.ConfigDict, root: str, fp: str) -> int:
    if stage.all_processes:
        code = _exit_code(stage.run(config, root, fp))
    else:
        code = _exit_code(stage.run(config, root, fp)) if workdir.is_writer() else 0
    # Process 0 writes the summary as the stage's last act: the others wait for it, then for its seal (the
    # list of the files the stage wrote), before checking it.
    workdir.barrier(f"stage_{stage.name}")
    if code == 0:
        workdir.seal(root, stage.folder_of(config), fp)
        workdir.barrier(f"sealed_{stage.name}")
    return code


def _exit_code(result: Any) -> int:
    return result if isinstance(result, int) else 0


def needed(target: str, config: ml_collections.ConfigDict) -> list[str]:
    """``target`` and every stage it needs, prerequisites first."""
    order: list[str] = []

    def visit(name: str) -> None:
        for need in GRAPH[name].needs_of(config):
            visit(need)
        if name not in order:
            order.append(name)

    visit(target)
    return order


def run_job(config: ml_collections.ConfigDict, root: str, job: str | None = None,
            restart: Sequence[str] = ()) -> int:
    """The launcher's job ``config.job``: the graph up to that stage ('main': up to evaluate, then the table).

    ``restart``: stages to delete and run from scratch (each must be one this job runs).
    """
    job = job or config.job
    if job not in jobs():
        raise cfg_lib.ConfigError(f"config.job={job!r} is not one of {jobs()}")
    target = evaluate.STAGE if job == MAIN else job
    wrong = sorted(set(restart) - set(needed(target, config)))
    if wrong:
        raise workdir.UserError(f"--restart={','.join(wrong)}: not a stage of the {job!r} job (its stages: "
                                f"{', '.join(needed(target, config))})")
    code = ensure(target, config, root, restart=frozenset(restart))
    if code == 0 and target == evaluate.STAGE:
        evaluate.print_table(root)
    return code

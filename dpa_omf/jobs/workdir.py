"""The workdir contract: where each stage writes, when it is finished, and which process writes.

A stage writes into ``WORKDIR/<folder>/`` and is finished when
``WORKDIR/<folder>/summary.json`` exists (written atomically, as the stage's
last act, by one process), records the fingerprint of what the stage's
output depends on: the config sections it reads (and the seed), less the keys
that change how it runs but not what it produces (:data:`NOT_FINGERPRINTED`),
and lists the stage's files, which verify (the seal, below).

Processes (decided here, for every stage): summaries, reports and other
single files are written by process 0 (:func:`is_writer`); stages that split
their work take :func:`process_share` of the items and write only those;
:func:`barrier` makes every process wait for the others, :func:`any_process`
lets them agree (e.g. that one was preempted).

Safety (what keeps a workdir from being silently corrupted):

- ``config.json`` in each stage folder: the resolved config the stage runs with (only the sections it
  fingerprints, :func:`recorded_config`), written when the stage starts. An unfinished folder resumes only
  when it matches; a mismatch names the differing keys with both values (:func:`config_diff`) and the
  launcher's ``--restart=STAGE`` flag, which deletes the folder and runs the stage from scratch.
- Sealing: after a stage returns, process 0 adds ``outputs`` to its summary: every file of the folder
  (relative path -> size, and sha256 when the folder holds at most :data:`HASH_BUDGET` bytes). A stage is
  finished only when sealed with the wanted fingerprint and its outputs verify (sizes always, hashes where
  recorded); a missing or damaged file is refused by name. Consumers read the listed files
  (:func:`listed_outputs`), never a glob.
- One writer per workdir: :func:`hold_lock` takes an OS file lock (``flock``) for the job's life.
- :class:`UserError`: mistakes a user can fix (config values, input files, the workdir, flags). The launcher
  prints their message on one line and exits 2; any other exception keeps its traceback.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from dpa_omf import atomic
from dpa_omf.train.stage_log import is_writer  # the one test of the writing process (process 0)

SUMMARY = "summary.json"
CONFIG = "config.json"
LOCK = ".lock"
# A stage folder of up to this many bytes gets a sha256 per file in its seal, checked again on every reuse
# (about a second per GiB here); a larger one (real-data stages at scale) is checked by sizes only, which
# keeps every job's start fast.
HASH_BUDGET = 2**30
# Never listed as outputs: the seal's own files, and atomic.writing's temporaries of an interrupted write.
_NOT_OUTPUTS = (SUMMARY, CONFIG)

# Keys that change how a stage runs but not what it produces (logging, checkpoint cadence,
# parallelism): left out of the fingerprint, so e.g. turning the progress bar off does not make a
# finished stage look stale.
NOT_FINGERPRINTED = (
    "data.synthetic.num_workers",
    "pretrain.num_workers",
    "pretrain.log_every", "pretrain.progress_bar", "pretrain.prefetch", "pretrain.checkpoint_every",
    "pretrain.keep_checkpoints", "pretrain.async_checkpointing",
    "curate.scenes_per_device", "curate.feature_rollout_chunk", "evaluate.scenes_per_device",
    "pretrain.realism_scenes", "align.realism_scenes",
    "align.log_every", "align.progress_bar", "align.checkpoint_every", "align.keep_checkpoints",
    "pretrain.preemption_sync_every", "align.preemption_sync_every",
    # the evaluate stage fingerprints its rows itself (``evaluate.models_fingerprint``: each with its sampling), so
    # a model's cached scores do not depend on which other rows are asked for
    "evaluate.sampled",
)


class UserError(Exception):
    """A mistake the user can fix (a config value, an input file, the workdir, a flag).

    Its message says what, where and what to do, on one line; the launcher prints it and exits 2.
    """


class WorkdirError(UserError):
    """A workdir that cannot be used as it is: another config, damaged outputs, a corrupt file, a lock."""


def stage_dir(workdir: str | pathlib.Path, folder: str) -> pathlib.Path:
    return pathlib.Path(workdir) / folder


def digest(obj: Any) -> str:
    """A short hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recorded_config(config: ml_collections.ConfigDict, sections: Sequence[str], extra: Any = None) -> dict:
    """What a stage's output depends on: the named config sections (less :data:`NOT_FINGERPRINTED`), the seed
    and ``extra``, as JSON-able values. Written as the stage's ``config.json``; its digest is the fingerprint."""
    d = config.to_dict()
    for path in NOT_FINGERPRINTED:
        *parents, leaf = path.split(".")
        node = d
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    sub = {k: d.get(k) for k in sorted(sections)}
    sub["seed"] = d.get("seed")
    if extra is not None:
        sub["extra"] = extra
    return json.loads(json.dumps(sub, sort_keys=True, default=str))  # tuples as lists, as read back


def fingerprint(config: ml_collections.ConfigDict, sections: Sequence[str], extra: Any = None) -> str:
    """A short hash of the named config sections, the seed and ``extra`` (JSON-able)."""
    return digest(recorded_config(config, sections, extra))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(recorded: dict, wanted: dict, limit: int = 6) -> str:
    """The keys whose values differ, ``key=<recorded> (now <wanted>)``, comma-separated (at most ``limit``)."""
    a, b = _flatten(recorded), _flatten(wanted)
    missing = object()
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, missing) != b.get(k, missing))
    parts = [f"{k}={a.get(k, '<absent>')!r} (now {b.get(k, '<absent>')!r})" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"+{len(keys) - limit} more")
    return ", ".join(parts) or "no key differs"


def read_json(path: str | pathlib.Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it does not exist; a corrupt file is refused by name."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkdirError(f"{path} is corrupt ({type(e).__name__}: {e}); delete it, or restart its stage "
                           "(--restart=STAGE)") from e


def read_summary(workdir: str | pathlib.Path, folder: str) -> dict[str, Any] | None:
    return read_json(stage_dir(workdir, folder) / SUMMARY)


def read_config(workdir: str | pathlib.Path, folder: str) -> dict[str, Any] | None:
    """The config a stage folder records (``config.json``), or None."""
    return read_json(stage_dir(workdir, folder) / CONFIG)


def restart_hint(stage: str) -> str:
    return f"--restart={stage} runs that stage again from scratch"


def finished(workdir: str | pathlib.Path, folder: str, want: str, *, refuse_other: bool = True,
             stage: str | None = None, wanted_config: dict | None = None) -> bool:
    """True if ``folder`` holds a finished stage with fingerprint ``want`` whose listed outputs verify.

    A stage finished with another fingerprint raises (``refuse_other``), naming the keys that differ
    (``wanted_config`` against its ``config.json``): its outputs feed later stages, so it is never silently
    mixed or overwritten. A summary not sealed with ``outputs`` is not finished (the stage was stopped
    between its last write and the seal, and is resumed). Damaged or missing outputs raise.
    """
    stage = stage or folder
    summary = read_summary(workdir, folder)
    if summary is None or "outputs" not in summary:
        return False
    got = summary.get("config_fingerprint")
    if got != want:
        if not refuse_other:
            return False
        recorded = read_config(workdir, folder)
        diff = (config_diff(recorded, wanted_config) if recorded is not None and wanted_config is not None
                else f"fingerprint {got} != {want}")
        raise WorkdirError(f"{stage_dir(workdir, folder)} holds a finished '{folder}' stage made with another "
                           f"config ({diff}); use another --workdir, or {restart_hint(stage)}")
    verify_outputs(workdir, folder, summary["outputs"], stage)
    return True


def check_resume(workdir: str | pathlib.Path, folder: str, wanted_config: dict, stage: str) -> None:
    """Refuses to resume an unfinished stage folder started with another config (its ``config.json``).

    A folder that holds nothing but its ``config.json`` (a stage that failed before writing anything, e.g. on a
    bad input) holds nothing to resume, so the new config simply replaces it. Process 0 decides (the others
    could see the folder while process 0 writes into it) and every process stops when it refuses.
    """
    problem = _resume_problem(stage_dir(workdir, folder), wanted_config, stage) if is_writer() else None
    if any_process(problem is not None):
        raise WorkdirError(problem or f"process 0 refused to resume the '{folder}' stage (see its message)")


def _resume_problem(out: pathlib.Path, wanted_config: dict, stage: str) -> str | None:
    if not out.exists():
        return None
    recorded = read_json(out / CONFIG)
    if recorded == wanted_config:
        return None
    if recorded is not None and not [p for p in out.iterdir() if p.name != CONFIG]:
        return None
    why = ("records no config (made by an older version, or damaged)" if recorded is None
           else f"was started with another config: {config_diff(recorded, wanted_config)}")
    return (f"{out} holds an unfinished '{out.name}' stage that {why}; resuming would mix two runs. "
            f"Run with the config it was started with, use another --workdir, or {restart_hint(stage)}")


def write_config(workdir: str | pathlib.Path, folder: str, recorded: dict) -> None:
    """Records the config a stage runs with (process 0), before it writes anything else."""
    if is_writer():
        atomic.write_json(stage_dir(workdir, folder) / CONFIG, recorded)


def clear(workdir: str | pathlib.Path, folder: str) -> None:
    """Deletes a stage folder (``--restart``; process 0)."""
    out = stage_dir(workdir, folder)
    if is_writer() and out.exists():
        shutil.rmtree(out)


# ----------------------------------------------------------------------------- verified outputs


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_outputs(out: str | pathlib.Path) -> dict[str, dict[str, Any]]:
    """Every file under a stage folder (but its summary and config): relative path -> size and sha256 (None
    when the folder holds more than :data:`HASH_BUDGET` bytes)."""
    out = pathlib.Path(out)
    sizes = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if rel in _NOT_OUTPUTS or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue
        sizes[rel] = path.stat().st_size
    hashed = sum(sizes.values()) <= HASH_BUDGET
    return {rel: {"size": size, "sha256": _sha256(out / rel) if hashed else None} for rel, size in sizes.items()}


def verify_outputs(workdir: str | pathlib.Path, folder: str, outputs: dict[str, dict[str, Any]],
                   stage: str | None = None) -> None:
    """Refuses a finished stage whose listed outputs are missing or damaged, naming the file."""
    out = stage_dir(workdir, folder)
    for rel, want in outputs.items():
        path = out / rel
        problem = None
        if not path.is_file():
            problem = "is missing"
        elif path.stat().st_size != want["size"]:
            problem = f"has {path.stat().st_size} bytes, the stage wrote {want['size']}"
        elif want.get("sha256") and _sha256(path) != want["sha256"]:
            problem = "has changed since the stage wrote it (sha256 mismatch)"
        if problem:
            raise WorkdirError(f"{path} {problem}: the finished '{folder}' stage is damaged; "
                               f"{restart_hint(stage or folder)}")


def seal(workdir: str | pathlib.Path, folder: str, want: str, recorded: dict | None = None) -> None:
    """Adds the list of the folder's files to a stage's summary (process 0).

    Called after a stage returned, and before reuse: a summary with fingerprint ``want`` but no list is a
    stage that finished (the summary is its last act) but was stopped before its seal, or one finished by an
    older version; its files are sealed as they are, and its ``config.json`` (``recorded``) written when
    missing. Nothing happens when the summary is missing, already sealed or has another fingerprint.
    """
    if not is_writer():
        return
    summary = read_summary(workdir, folder)
    if summary is None or summary.get("config_fingerprint") != want or "outputs" in summary:
        return
    if recorded is not None and read_config(workdir, folder) is None:
        write_config(workdir, folder, recorded)
    summary["outputs"] = list_outputs(stage_dir(workdir, folder))
    atomic.write_json(stage_dir(workdir, folder) / SUMMARY, summary)


def listed_outputs(workdir: str | pathlib.Path, folder: str, prefix: str = "") -> list[pathlib.Path]:
    """The files a finished stage listed in its summary (those starting with ``prefix``), in order.

    Consumers read these, never a glob: a file added to or removed from the folder afterwards is not read.
    """
    summary = read_summary(workdir, folder)
    if summary is None or "outputs" not in summary:
        raise WorkdirError(f"{stage_dir(workdir, folder)} holds no finished '{folder}' stage (no sealed "
                           f"{SUMMARY}); run it first")
    return [stage_dir(workdir, folder) / rel for rel in sorted(summary["outputs"]) if rel.startswith(prefix)]


# ----------------------------------------------------------------------------- one writer per workdir


@contextlib.contextmanager
def hold_lock(workdir: str | pathlib.Path) -> Iterator[None]:
    """Holds ``WORKDIR/.lock`` (an exclusive ``flock``) for the block; a second holder is refused.

    Process 0 of a job takes it, for every process of the job (they start together and process 0 runs
    every stage's writes and seals; a lock per process would make the processes of one launch refuse each
    other). Every process learns whether process 0 got it (:func:`any_process`), so a refused multi-host
    launch stops everywhere with the same message. The kernel drops the lock when its holder exits in any way
    (SIGKILL included), so no stale lock blocks the next run; the file itself stays, naming the last holder.
    """
    root = pathlib.Path(workdir)
    fd, problem = None, None
    if is_writer() and root.exists() and not root.is_dir():
        problem = f"--workdir={workdir} is not a folder (a file of that name exists); choose another --workdir"
    elif is_writer():
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            problem = (f"--workdir={workdir} is not a writable folder ({e.strerror}: {e.filename}); "
                       "choose another --workdir")
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held_by = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another job"
                os.close(fd)
                fd = None
                problem = f"--workdir={workdir} is in use by {held_by}; wait for it to end, or use another --workdir"
    if any_process(problem is not None):  # every process stops when process 0 could not take it
        raise WorkdirError(problem or f"process 0 could not lock --workdir={workdir} (see its message)")
    try:
        if fd is not None:
            now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            holder = f"pid {os.getpid()} on {socket.gethostname()} since {now} ({' '.join(sys.argv)[:300]})"
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------- processes


def say(line: str) -> None:
    """One line for the user's terminal (process 0 only); library chatter goes to the log file."""
    if is_writer():
        print(line, file=sys.stderr, flush=True)


def process_share(num_items: int, process_index: int | None = None, process_count: int | None = None) -> list[int]:
    """The work items (shards, chunks) this process does: ``k % P == p``; disjoint, deterministic, all covered."""
    p = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    if not 0 <= p < n:
        raise ValueError(f"process {p} is not one of {n}")
    return list(range(p, num_items, n))


def any_process(flag: bool) -> bool:
    """True when ``flag`` is set on any process (a collective: every process must call it, so also a barrier)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils  # only multi-process jobs need it

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def max_over_processes(values: np.ndarray) -> np.ndarray:
    """The elementwise maximum of ``values`` over every process (a collective: every process must call it)."""
    values = np.asarray(values)
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils  # only multi-process jobs need it

    return np.max(np.asarray(multihost_utils.process_allgather(values)), axis=0)


def barrier(name: str) -> None:
    """Every process waits here for the others (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # only multi-process jobs need it

        multihost_utils.sync_global_devices(f"dpa_omf:{name}")


def write_summary(workdir: str | pathlib.Path, folder: str, summary: dict[str, Any]) -> None:
    """The stage's last act: its summary, atomically, by the writing process."""
    if is_writer():
        atomic.write_json(stage_dir(workdir, folder) / SUMMARY, summary)

"""The workdir contract: where each stage writes, when it is finished, and which process writes.

A stage writes into ``WORKDIR/<folder>/`` and is finished when
``WORKDIR/<folder>/summary.json`` exists (written atomically, as the stage's
last act, by one process) and records the fingerprint of what the stage's
output depends on: the config sections it reads (and the seed), less the keys
that change how it runs but not what it produces (:data:`NOT_FINGERPRINTED`).

Processes (decided here, for every stage): summaries, reports and other
single files are written by process 0 (:func:`is_writer`); stages that split
their work take :func:`process_share` of the items and write only those;
:func:`barrier` makes every process wait for the others, :func:`any_process`
lets them agree (e.g. that one was preempted).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from dpa_omf import atomic

SUMMARY = "summary.json"

# Keys that change how a stage runs but not what it produces (logging, checkpoint cadence,
# parallelism): left out of the fingerprint, so e.g. turning the progress bar off does not make a
# finished stage look stale.
NOT_FINGERPRINTED = (
    "data.synthetic.num_workers",
    "pretrain.num_workers",
    "pretrain.log_every", "pretrain.progress_bar", "pretrain.prefetch", "pretrain.checkpoint_every",
    "pretrain.keep_checkpoints", "pretrain.async_checkpointing",
    "curate.scenes_per_device", "evaluate.scenes_per_device", "pretrain.realism_scenes", "align.realism_scenes",
    "align.log_every", "align.progress_bar", "align.checkpoint_every", "align.keep_checkpoints",
)


def stage_dir(workdir: str | pathlib.Path, folder: str) -> pathlib.Path:
    return pathlib.Path(workdir) / folder


def digest(obj: Any) -> str:
    """A short hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(config: ml_collections.ConfigDict, sections: Sequence[str], extra: Any = None) -> str:
    """A short hash of the named config sections, the seed and ``extra`` (JSON-able)."""
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
    return digest(sub)


def read_json(path: str | pathlib.Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it does not exist."""
    path = pathlib.Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def read_summary(workdir: str | pathlib.Path, folder: str) -> dict[str, Any] | None:
    return read_json(stage_dir(workdir, folder) / SUMMARY)


def finished(workdir: str | pathlib.Path, folder: str, want: str, *, refuse_other: bool = True) -> bool:
    """True if ``folder`` holds a finished stage with fingerprint ``want``.

    A stage finished with another fingerprint raises (``refuse_other``): its
    outputs feed later stages, so it is never silently mixed or overwritten.
    """
    summary = read_summary(workdir, folder)
    if summary is None:
        return False
    got = summary.get("config_fingerprint")
    if got == want:
        return True
    if refuse_other:
        raise RuntimeError(
            f"{stage_dir(workdir, folder)} holds a finished '{folder}' stage made with another config "
            f"(fingerprint {got} != {want}); use another --workdir or delete that folder.")
    return False


def is_writer() -> bool:
    """True on the one process that writes summaries, reports and pictures (process 0)."""
    return jax.process_index() == 0


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


def barrier(name: str) -> None:
    """Every process waits here for the others (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # only multi-process jobs need it

        multihost_utils.sync_global_devices(f"dpa_omf:{name}")


def write_summary(workdir: str | pathlib.Path, folder: str, summary: dict[str, Any]) -> None:
    """The stage's last act: its summary, atomically, by the writing process."""
    if is_writer():
        atomic.write_json(stage_dir(workdir, folder) / SUMMARY, summary)

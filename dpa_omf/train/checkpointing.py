"""Preemption-safe checkpoints: orbax ``CheckpointManager`` plus a signal flag.

A checkpoint is a step folder ``<dir>/<step>/`` holding named items, each a
pytree of arrays saved with ``ocp.args.StandardSave``. The training loop saves
two items, ``params`` and ``train`` (step, optimizer state, rng, data
position), so that a later stage (alignment) can restore the ``params`` item
alone as its frozen reference without knowing the optimizer that made it.

Guarantees (orbax 0.12.8):

* Atomic: orbax writes into a temporary folder and renames it when complete;
  a crash mid-save leaves no step folder, and leftover temporaries are removed
  at the next start (``cleanup_tmp_directories``).
* Async: :meth:`Checkpointer.save` returns once the arrays are copied to host
  memory; the files are written by a background thread, so training continues.
  :meth:`Checkpointer.wait` blocks until the last save is on disk.
* Keep-N: only the ``keep`` most recent steps are kept.
* Multi-host: every process calls ``save`` / ``restore``; orbax writes each
  process's shards and lets process 0 write metadata and finalize.
"""

from __future__ import annotations

import logging
import pathlib
import signal
import threading
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp

PyTree = Any
log = logging.getLogger(__name__)

# Exit status for "saved a checkpoint on SIGTERM/SIGINT, run me again to resume"
# (EX_TEMPFAIL from sysexits.h). Not 0: an orchestrator must not take a
# preempted stage for a finished one; schedulers that requeue on failure will.
EXIT_PREEMPTED = 75


class Checkpointer:
    """Keep-N async checkpoints of named pytree items in one directory.

    Args:
      directory: the checkpoint folder, e.g. ``WORKDIR/pretrain/checkpoints``
        (created if missing).
      item_names: names of the items each step holds.
      keep: number of most recent steps kept on disk.
      async_save: write in a background thread.
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        item_names: tuple[str, ...] = ("params", "train"),
        *,
        keep: int = 3,
        async_save: bool = True,
    ):
        if keep < 1:
            raise ValueError(f"Checkpointer: keep must be >= 1, got {keep}")
        self.directory = pathlib.Path(directory).absolute()
        self.item_names = tuple(item_names)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=self.item_names)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def save(self, step: int, items: Mapping[str, PyTree]) -> bool:
        """Saves ``items`` (name -> pytree of arrays) as step ``step``.

        Saving a step that already exists is a no-op (returns ``False``): a
        resumed run re-saving its restore step must not fail.
        """
        if step in self._mngr.all_steps():
            return False
        self._check_names(items)
        args = ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in items.items()})
        return self._mngr.save(step, args=args, force=True)

    def restore(self, abstract_items: Mapping[str, PyTree], step: int | None = None) -> dict[str, PyTree]:
        """Restores the named items of ``step`` (default: latest).

        Args:
          abstract_items: name -> pytree of ``jax.ShapeDtypeStruct`` with
            ``sharding`` set (see ``sharding.with_shardings``); the arrays come
            back with those shapes, dtypes and shardings. A subset of the saved
            item names may be given.
          step: the step; ``None`` for the latest.

        Raises:
          FileNotFoundError: if there is no checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        args = ocp.args.Composite(**{k: ocp.args.StandardRestore(v) for k, v in abstract_items.items()})
        restored = self._mngr.restore(step, args=args)
        return {k: restored[k] for k in abstract_items}

    def reached_preemption(self, step: int) -> bool:
        """JAX's multi-host preemption sync point (False when not distributed)."""
        return self._mngr.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until every pending async save is on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()

    def _check_names(self, items: Mapping[str, PyTree]) -> None:
        if set(items) != set(self.item_names):
            raise ValueError(f"Checkpointer: items {sorted(items)} != item_names {sorted(self.item_names)}")

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def saved_steps(directory: str | pathlib.Path) -> list[int]:
    """The finished steps in a checkpoint folder, ascending (read-only: opens no manager; orbax renames a step
    folder into place only when its save is complete, so every numeric folder is a finished step)."""
    d = pathlib.Path(directory)
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def restore_params(
    directory: str | pathlib.Path, abstract_params: PyTree, step: int | None = None
) -> PyTree:
    """Loads only the ``params`` item of a training checkpoint.

    For a frozen model (the alignment stage's reference): read once, never
    re-saved, and the source stage's folder is never modified by the reader.

    Args:
      directory: the other stage's checkpoint folder, e.g.
        ``WORKDIR/pretrain/checkpoints``.
      abstract_params: the params' ``ShapeDtypeStruct`` tree with shardings.
      step: the step; ``None`` for the latest.
    """
    directory = pathlib.Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"restore_params: no checkpoint folder {directory}")
    # Read the item directly (no CheckpointManager: a reader never modifies or garbage-collects the folder,
    # and orbax's read-only manager warns on every open).
    steps = saved_steps(directory)
    if not steps:
        raise FileNotFoundError(f"restore_params: no checkpoint in {directory}")
    step = steps[-1] if step is None else step
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory / str(step) / "params", abstract_params)


class PreemptionFlag:
    """Turns SIGTERM / SIGINT into a flag the training loop polls.

    Use as a context manager around the loop; the previous handlers come back on
    exit. A second SIGINT while the flag is already set raises
    ``KeyboardInterrupt`` (so a stuck run can still be stopped by hand).
    Installs nothing when not on the main thread (Python only delivers signals
    there); the flag can still be set with :meth:`set`.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}
        self.signum: int | None = None

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self._event.is_set():
            raise KeyboardInterrupt
        log.warning("received %s: will save a checkpoint and stop", signal.Signals(signum).name)
        self.signum = signum
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            # None: the old handler was installed outside Python; best we can do.
            signal.signal(s, signal.SIG_DFL if h is None else h)
        self._previous.clear()

"""Training outputs of a stage: metrics.jsonl, TensorBoard events, summary.json, progress bar.

All files live in ``WORKDIR/<stage>/`` and are written by process 0 only (every
other process gets a logger that does nothing), so a multi-host job writes each
file once.

* ``metrics.jsonl``: one JSON object per line, ``{"step": int, ...}``. Training
  lines carry ``loss``, ``lr``, ``steps_per_s`` and the loss function's metrics;
  evaluation lines carry ``eval_*`` keys. Each line goes out in one ``write``
  and is flushed; on resume, lines past the restored step (logged after the last
  checkpoint of the interrupted run) and a torn last line are dropped, and the
  file is rewritten atomically, so the file describes exactly one run.
* TensorBoard event files (tensorboardX) beside it: ``train/<key>``, ``eval/<key>``.
* ``summary.json``: the final figures, written atomically (tmp + rename).
* A tqdm progress bar on stderr with the step rate and last loss.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import tqdm
from tensorboardX import SummaryWriter

from dpa_omf import atomic

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def is_writer() -> bool:
    """True on the one process that writes logs, summaries, reports and pictures (process 0)."""
    return jax.process_index() == 0


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Parses a metrics.jsonl; a torn (unparseable) last line is skipped."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # interrupted mid-write
            raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}") from None
    return records


class StageLogger:
    """Writes a stage's metrics, TensorBoard events, summary and progress bar.

    Args:
      stage_dir: ``WORKDIR/<stage>``.
      total_steps: the run's number of steps (progress bar length).
      initial_step: the step the run starts (or resumes) from.
      progress_bar: show the tqdm bar.
      enabled: write anything at all; default: only on process 0.
    """

    def __init__(
        self,
        stage_dir: str | pathlib.Path,
        *,
        total_steps: int,
        initial_step: int = 0,
        progress_bar: bool = True,
        enabled: bool | None = None,
    ):
        self.stage_dir = pathlib.Path(stage_dir)
        self.enabled = is_writer() if enabled is None else enabled
        self.metrics_path = self.stage_dir / METRICS_FILE
        self.records: list[dict[str, Any]] = []
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(initial_step)
        self._tb = SummaryWriter(logdir=str(self.stage_dir), flush_secs=30)
        self._bar = tqdm.tqdm(
            total=total_steps,
            initial=initial_step,
            disable=not progress_bar,
            desc=self.stage_dir.name,
            unit="step",
            dynamic_ncols=True,
        )

    def _truncate_after(self, step: int) -> None:
        """Keeps only records with ``step <= step`` (what the restored state has seen)."""
        raw = self.metrics_path.read_text() if self.metrics_path.exists() else ""
        self.records = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        if text != raw:
            atomic.write_text(self.metrics_path, text)

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        """Appends one record ``{"step": step, **metrics}`` and its TensorBoard scalars."""
        record = {"step": int(step), **atomic.jsonable(dict(metrics))}
        self.records.append(record)  # also off process 0: the caller's in-memory summary
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")  # one write per line: a crash tears at most the last
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self._tb.add_scalar(f"{prefix}/{k.removeprefix(prefix + '_')}", v, step)
        if prefix == "train" and isinstance(record.get("loss"), float):
            postfix = {"loss": f"{record['loss']:.4g}"}
            if isinstance(record.get("steps_per_s"), float):
                postfix["steps/s"] = f"{record['steps_per_s']:.3g}"
            self._bar.set_postfix(postfix, refresh=False)

    def advance(self, n: int = 1) -> None:
        """Moves the progress bar by ``n`` steps."""
        if self._bar is not None:
            self._bar.update(n)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if self.enabled:
            atomic.write_json(self.stage_dir / SUMMARY_FILE, summary)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

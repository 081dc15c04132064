"""The pipeline's stages on disk: where each writes, when it is finished, and the
prerequisites a job runs first.

A stage is finished when ``WORKDIR/<stage>/summary.json`` exists (written
atomically as the stage's last act) and records the same fingerprint of the
config sections the stage depends on. A re-run reuses finished stages; a
stage whose inputs changed is refused rather than silently mixed (delete the
folder or use another workdir).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np
from absl import logging

SUMMARY = "summary.json"

# Config sections each stage's output depends on (beyond `seed`).
DEPENDS_ON = {
    "data": ("data",),
    "pretrain": ("data", "tokenizer", "model", "pretrain"),
    "curate": ("data", "tokenizer", "model", "pretrain", "curate"),
    "align": ("data", "tokenizer", "model", "pretrain", "curate", "align"),
    "evaluate": ("data", "tokenizer", "model", "pretrain", "curate", "align", "evaluate"),
}


# Keys that change how a stage runs but not what it produces (logging, checkpoint cadence,
# parallelism): left out of the fingerprint, so e.g. turning the progress bar off does not make a
# finished stage look stale.
NOT_FINGERPRINTED = (
    "data.synthetic.num_workers",
    "pretrain.log_every", "pretrain.progress_bar", "pretrain.prefetch", "pretrain.checkpoint_every",
    "pretrain.keep_checkpoints", "pretrain.async_checkpointing",
    "align.log_every", "align.progress_bar", "align.checkpoint_every", "align.keep_checkpoints",
    "align.then_evaluate",
)


def derived_seed(*parts: int) -> int:
    """A seed in [0, 2**31) derived from several integers (e.g. the global seed and a
    stage's repeat seed), independent for different tuples."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31))


def stage_dir(workdir: str | pathlib.Path, stage: str) -> pathlib.Path:
    return pathlib.Path(workdir) / stage


def fingerprint(config: ml_collections.ConfigDict, sections: Sequence[str]) -> str:
    """A short hash of the named config sections (and the seed)."""
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
    blob = json.dumps(sub, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_summary(workdir: str | pathlib.Path, stage: str) -> dict[str, Any] | None:
    path = stage_dir(workdir, stage) / SUMMARY
    if not path.exists():
        return None
    return json.loads(path.read_text())


def is_done(workdir: str | pathlib.Path, stage: str, config: ml_collections.ConfigDict,
            sections: Sequence[str] | None = None) -> bool:
    """True if the stage finished with the same config; raises if it finished with another."""
    summary = read_summary(workdir, stage)
    if summary is None:
        return False
    want = fingerprint(config, sections or DEPENDS_ON[stage.split("/")[0]])
    got = summary.get("config_fingerprint")
    if got != want:
        raise RuntimeError(
            f"{stage_dir(workdir, stage)} holds a finished '{stage}' stage made with another config "
            f"(fingerprint {got} != {want}); use another --workdir or delete that folder.")
    return True


def ensure(stage: str, config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
           run: Callable[[ml_collections.ConfigDict, str], Any]) -> dict[str, Any]:
    """Runs ``run(config, workdir)`` unless the stage is already finished; returns its summary."""
    if is_done(workdir, stage, config):
        logging.info("stage %s: finished earlier, reusing %s", stage, stage_dir(workdir, stage))
    else:
        logging.info("stage %s: running", stage)
        run(config, str(workdir))
    summary = read_summary(workdir, stage)
    if summary is None:
        raise RuntimeError(f"stage {stage} ended without writing {stage_dir(workdir, stage) / SUMMARY}")
    return summary

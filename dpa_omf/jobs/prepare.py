"""The prepare stage: every data shard parsed and fitted once into prepared-scene files.

  python -m dpa_omf.launch --config=configs/pretrain.py[:variant] --config.job=prepare --workdir=DIR

(the graph's ``prepare`` entry: after ``data``; fingerprinted by the data section).

For each split, source shard k of ``data.split_files`` (raw WOMD TFRecords of
either format, or the synthetic world's shards) becomes
``WORKDIR/prepare/<split>/<shard name>.scenes`` (``io.prepared``: the shard's
scenes fitted to ``data.num_agents`` x ``data.max_roadgraph_points`` by the one
reader, its checks and errors unchanged). Process p of P prepares the shards
with ``k % P == p``; nothing is written twice.

Resumable file by file: a file is written atomically, and a file already there
whose header matches the source and the reader fingerprint is kept. On SIGTERM
/ SIGINT the file being written is dropped, every process stops, and the stage
returns 75 (``checkpointing.EXIT_PREEMPTED``); the rerun prepares the rest and
ends with the same bytes. The summary records ``reader_fingerprint``
(``prepared.reader_fingerprint``), per split the files and scene counts.

Every stage downstream reads scenes through this module, the prepared files
when this stage finished with the reader fingerprint of their config
(:func:`ready`), otherwise the raw shards (the same scenes bit for bit, ~25x
slower to read):

* pretraining's pipeline takes files, :func:`split_files_or_raw`;
* curation, alignment (its pairs' scenes, held-out ones included), evaluation
  and the training jobs' realism scenes address scenes by ``Source`` (raw file,
  record): :func:`open_scenes`, a ``reader.SceneReader`` or a
  ``prepared.PreparedSceneReader`` whose sources name the same raw files, so the
  curated shards and evaluation chunks do not depend on which one served them.

Pretraining needs this stage when it trains a reference (not for the packaged
one, which reads no data); curation and evaluation always need it (the graph in
``stages.py``). Submission reads the raw shards (``docs/known_limits.md``).
"""

from __future__ import annotations

import os
import pathlib
import time

import ml_collections

from dpa_omf.io import prepared, reader
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import data as data_job
from dpa_omf.jobs import workdir as wd
from dpa_omf.train import checkpointing

STAGE = "prepare"
Scenes = reader.SceneReader | prepared.PreparedSceneReader  # what open_scenes returns


def split_dir(workdir: str | pathlib.Path, split: str) -> pathlib.Path:
    return wd.stage_dir(workdir, STAGE) / split


def prepared_path(workdir: str | pathlib.Path, split: str, source_file: str) -> pathlib.Path:
    """Where the prepared file of one source shard goes."""
    return split_dir(workdir, split) / prepared.prepared_name(source_file)


def ready(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> bool:
    """Whether this stage finished with the reader fingerprint of ``config``'s slots."""
    summary = wd.read_summary(workdir, STAGE)
    return summary is not None and summary.get("reader_fingerprint") == prepared.reader_fingerprint(
        cfg_lib.reader(config))


def split_files_or_raw(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, split: str) -> list[str]:
    """A split's files for the pipeline: the prepared ones when :func:`ready`, else the raw shards."""
    raw = data_job.split_files(config, workdir, split)
    if not ready(config, workdir):
        return raw
    return [str(prepared_path(workdir, split, f)) for f in raw]


def open_scenes(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, split: str,
                files: list[str] | None = None) -> Scenes:
    """The scene source of a split's raw shards (``files``: some of them, default all), sources naming them.

    The prepared files when :func:`ready` and each file's prepared copy was made from it, else a
    ``reader.SceneReader`` of the raw files; either reads the same scenes bit for bit.
    """
    raw = data_job.split_files(config, workdir, split) if files is None else [str(f) for f in files]
    reader_config = cfg_lib.reader(config)
    if ready(config, workdir):
        paths = [str(prepared_path(workdir, split, f)) for f in raw]
        if all(prepared.is_current(p, reader_config, f) for p, f in zip(paths, raw, strict=True)):
            return prepared.PreparedSceneReader(raw, paths, reader_config)
    return reader.SceneReader(raw, reader_config)


def run(config: ml_collections.ConfigDict, workdir: str, fingerprint: str) -> int:
    """Prepares this process's shards of every split; 0 when done, 75 when preempted (rerun to continue)."""
    reader_config = cfg_lib.reader(config)
    start, written, kept, preempted = time.time(), 0, 0, False
    counts: dict[str, dict] = {}
    with checkpointing.PreemptionFlag() as flag:
        for split in data_job.SPLITS:
            files = data_job.split_files(config, workdir, split)
            names = [os.path.basename(f) for f in files]
            if len(set(names)) != len(names):
                raise ValueError(f"prepare: two {split} shards share a file name ({sorted(names)[:4]}...): "
                                 "their prepared files would collide")
            counts[split] = {"files": len(files)}
            split_dir(workdir, split).mkdir(parents=True, exist_ok=True)
            for k in wd.process_share(len(files)):
                out = prepared_path(workdir, split, files[k])
                if prepared.is_current(str(out), reader_config, files[k]):
                    kept += 1
                    continue
                if prepared.prepare_file(files[k], str(out), reader_config, should_stop=flag.is_set) is None:
                    preempted = True
                    break
                written += 1
            if preempted:
                break
    # A collective, so also the barrier after which every process's files exist (process 0 reads their headers).
    if wd.any_process(preempted):  # every process stops together
        wd.say(f"[{STAGE}] preempted: finished files kept; run again to continue")
        return checkpointing.EXIT_PREEMPTED
    if wd.is_writer():
        for split in data_job.SPLITS:
            heads = [prepared.read_header(str(prepared_path(workdir, split, f)))
                     for f in data_job.split_files(config, workdir, split)]
            counts[split]["scenes"] = sum(h["num_scenes"] for h in heads)
        wd.write_summary(workdir, STAGE, {
            "reader_fingerprint": prepared.reader_fingerprint(reader_config), "splits": counts,
            "files_written_process0": written, "files_kept_process0": kept, "seconds": time.time() - start,
            "config_fingerprint": fingerprint})
    return 0

"""The data job: generates the embedded synthetic world into ``WORKDIR/data``.

``WORKDIR/data/{train,valid}/synthetic.tfrecord-*`` are WOMD tf.Example shards (one
reader serves synthetic and real data); ``WORKDIR/data/summary.json`` records
the counts, the scene statistics (valid agents, intersection share, expert
collisions and off-road steps) and the time taken; later stages read the shards
it lists (``workdir.listed_outputs``), never a glob of the folder. With
``data.source='womd'`` the job checks the inputs before it finishes: every file
the patterns match is opened, every record's framing and CRCs are checked, and
the first record of each file is parsed by the reader (its field, shape and
value checks); a bad file stops the job naming file and record, and leaves no
summary (nothing that looks finished).
"""

from __future__ import annotations

import glob
import pathlib
import time

import ml_collections
from absl import logging

from dpa_omf.io import reader, tfrecord
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import workdir as wd
from dpa_omf.synthetic import dataset as synthetic
from dpa_omf.synthetic import scene_stats as synthetic_statistics

STAGE = "data"
SPLITS = ("train", "valid")
# Dataset seed of a split: 2 * config.seed + offset. Scene seeds are dataset_seed * 10^7 + index
# (synthetic.scene_seed), so the splits' scenes never overlap and every seed < 500,000 is valid.
_SPLIT_OFFSET = {"train": 0, "valid": 1}


def dataset_seed(config: ml_collections.ConfigDict, split: str) -> int:
    """The ``generate_dataset`` seed of a split (in [0, 10^6) for every config seed in [0, 500,000))."""
    return 2 * config.seed + _SPLIT_OFFSET[split]


def split_pattern(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, split: str) -> str:
    """The glob pattern of a split's TFRecord files, for either data source."""
    if config.data.source == "womd":
        return config.data.womd.train_pattern if split == "train" else config.data.womd.valid_pattern
    return str(wd.stage_dir(workdir, STAGE) / split / "synthetic.tfrecord-*")


def split_files(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, split: str) -> list[str]:
    """The TFRecord files of a split, for either data source (synthetic: the shards the data stage listed)."""
    if config.data.source == "womd":
        pattern = config.data.womd.train_pattern if split == "train" else config.data.womd.valid_pattern
        files = sorted(glob.glob(pattern))
        if not files:
            raise wd.UserError(f"data.womd.{split}_pattern={pattern!r} matches no file; set it to the WOMD "
                               f"{split} TFRecords (--config.data.womd.{split}_pattern=...)")
        return files
    if wd.read_summary(workdir, STAGE) is None:
        raise wd.UserError(f"no synthetic data in {wd.stage_dir(workdir, 'data')}; run the data job first "
                           "(configs/data.py)")
    return [str(p) for p in wd.listed_outputs(workdir, STAGE, f"{split}/synthetic.tfrecord-")]


def check_womd(files: list[str], config: ml_collections.ConfigDict) -> dict[str, int]:
    """Opens every file, checks every record's framing and CRCs, parses each file's first record.

    Returns ``{"files": n, "records": total}``; raises ``tfrecord.DataError`` naming the file and record.
    """
    records = 0
    for path in files:
        n = sum(1 for _ in tfrecord.iter_records(path))  # header and data CRCs of every record
        if n == 0:
            raise tfrecord.DataError(path, None, None, "holds no record; check data.womd.*_pattern")
        reader.read_scene(reader.Source(path, 0), cfg_lib.reader(config))
        records += n
    return {"files": len(files), "records": records}


def run(config: ml_collections.ConfigDict, workdir: str, fingerprint: str) -> dict:
    """Generates (synthetic) or checks (womd) the data; process 0 only (the graph's rule)."""
    out = wd.stage_dir(workdir, STAGE)
    if config.data.source == "womd":
        summary = {}
        for split in SPLITS:
            checked = check_womd(split_files(config, workdir, split), config)
            summary[split], summary[f"{split}_records"] = checked["files"], checked["records"]
        summary.update(source="womd", config_fingerprint=fingerprint)
        wd.write_summary(workdir, STAGE, summary)
        return summary
    syn = cfg_lib.synthetic_world(config)
    s = config.data.synthetic
    start = time.time()
    counts = {"train": s.num_train, "valid": s.num_valid}
    written = {}
    for split in SPLITS:
        num_shards = max(1, min(s.num_shards, counts[split]))
        logging.info("generating %d synthetic %s scenes into %s", counts[split], split, out / split)
        written[split] = synthetic.generate_dataset(
            str(out / split), num_scenes=counts[split], num_shards=num_shards,
            seed=dataset_seed(config, split), config=syn, num_workers=s.num_workers)
    seconds = time.time() - start
    sample = []
    for path in sorted(written["valid"]):
        sample.extend(reader.read_scenes(path, cfg_lib.reader(config)))
    summary = {
        "source": "synthetic",
        "num_train": s.num_train,
        "num_valid": s.num_valid,
        "seconds": seconds,
        "valid_statistics": synthetic_statistics.scene_statistics(sample),
        "config_fingerprint": fingerprint,
    }
    wd.write_summary(workdir, STAGE, summary)
    logging.info("data: %s", summary)
    return summary

"""The data job: generates the embedded synthetic world into ``WORKDIR/data``.

``WORKDIR/data/{train,valid}/synthetic.tfrecord-*`` are WOMD tf.Example shards (one
reader serves synthetic and real data); ``WORKDIR/data/summary.json`` records
the counts, the scene statistics (valid agents, intersection share, expert
collisions and off-road steps) and the time taken. With ``data.source='womd'``
the job only checks that the configured patterns match files.
"""

from __future__ import annotations

import glob
import pathlib
import time

import ml_collections
from absl import logging

from dpa_omf.jobs import stages
from dpa_omf.synthetic import dataset as synthetic
from dpa_omf.synthetic import statistics as synthetic_statistics
from dpa_omf.train import logging as stage_logging

SPLITS = ("train", "valid")
# Dataset seed of a split: 2 * config.seed + offset. Scene seeds are dataset_seed * 10^7 + index
# (synthetic.scene_seed), so the splits' scenes never overlap and every seed < 500,000 is valid.
_SPLIT_OFFSET = {"train": 0, "valid": 1}


def synthetic_config(config: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
    """The world's config for ``data.num_agents`` slots.

    Up to the default simulated pool (48) the world's defaults hold; more slots
    (up to WOMD's 128) get a pool of that size and proportionally more initial
    vehicles and pedestrians, so the extra slots hold traffic, not padding.
    """
    base = synthetic.SyntheticConfig()
    a, p = config.data.num_agents, config.data.num_roadgraph_points
    if a <= base.pool_size:
        return synthetic.SyntheticConfig(num_agents=a, num_points=p)
    scale = a / base.num_agents
    grow = lambda lo_hi: tuple(int(v * scale) for v in lo_hi)  # noqa: E731
    return synthetic.SyntheticConfig(num_agents=a, num_points=p, pool_size=a,
                                     initial_vehicles=grow(base.initial_vehicles),
                                     initial_pedestrians=grow(base.initial_pedestrians))


def dataset_seed(config: ml_collections.ConfigDict, split: str) -> int:
    """The ``generate_dataset`` seed of a split (in [0, 10^6) for every config seed in [0, 500,000))."""
    return 2 * config.seed + _SPLIT_OFFSET[split]


def split_pattern(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, split: str) -> str:
    """The glob pattern of a split's TFRecord files, for either data source."""
    if config.data.source == "womd":
        return config.data.womd.train_pattern if split == "train" else config.data.womd.valid_pattern
    return str(stages.stage_dir(workdir, "data") / split / "synthetic.tfrecord-*")


def split_files(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, split: str) -> list[str]:
    """The TFRecord files of a split, for either data source."""
    if config.data.source == "womd":
        pattern = config.data.womd.train_pattern if split == "train" else config.data.womd.valid_pattern
        files = sorted(glob.glob(pattern))
        if not files:
            raise FileNotFoundError(f"data.womd.{split}_pattern={pattern!r} matches no file")
        return files
    files = sorted(glob.glob(split_pattern(config, workdir, split)))
    if not files:
        raise FileNotFoundError(f"no synthetic {split} shards under {stages.stage_dir(workdir, 'data')}; "
                                "run the data job first (configs/data.py)")
    return files


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    out = stages.stage_dir(workdir, "data")
    fp = stages.fingerprint(config, stages.DEPENDS_ON["data"])
    if config.data.source == "womd":
        summary = {split: len(split_files(config, workdir, split)) for split in SPLITS}
        summary.update(source="womd", config_fingerprint=fp)
        stage_logging.atomic_write_json(out / stages.SUMMARY, summary)
        return summary
    syn = synthetic_config(config)
    s = config.data.synthetic
    start = time.time()
    counts = {"train": s.num_train, "valid": s.num_valid}
    for split in SPLITS:
        num_shards = max(1, min(s.num_shards, counts[split]))
        logging.info("generating %d synthetic %s scenes into %s", counts[split], split, out / split)
        synthetic.generate_dataset(
            str(out / split), num_scenes=counts[split], num_shards=num_shards,
            seed=dataset_seed(config, split), config=syn, num_workers=s.num_workers)
    seconds = time.time() - start
    from dpa_omf.io import womd_example as womd

    sample = []
    for path in split_files(config, workdir, "valid"):
        sample.extend(womd.read_tfrecord(path))
    summary = {
        "source": "synthetic",
        "num_train": s.num_train,
        "num_valid": s.num_valid,
        "seconds": seconds,
        "valid_statistics": synthetic_statistics.scene_statistics(sample),
        "config_fingerprint": fp,
    }
    stage_logging.atomic_write_json(out / stages.SUMMARY, summary)
    logging.info("data: %s", summary)
    return summary

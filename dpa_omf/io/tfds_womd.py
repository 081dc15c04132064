"""TFDS builder ``womd``: local WOMD shards (manual dir) -> fixed-shape ``Scenario`` features.

Put the WOMD files (tf.Example or Scenario-proto TFRecords, any mix) in the
manual dir; files whose name contains ``training`` / ``validation`` /
``testing`` go to the ``train`` / ``validation`` / ``test`` splits (the WOMD
shard naming), and when no name matches every ``*tfrecord*`` file goes to
``train``. Records are read with the project's reader
(``reader.read_scenes``: CRC-checked, validated) and fitted to the
config's ``max_agents`` x ``max_roadgraph_points``, so the features are exactly
the fields of ``datatypes.Scenario``, named by their path (``agents/x``,
``roadgraph/xyz``, ``traffic_lights/state``, ``scenario_id``...).

    builder = tfds_womd.Womd(config="default", data_dir=DATA)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=WOMD_DIR))
    for ex in tfds.as_numpy(builder.as_dataset(split="train", batch_size=8)):
        scenario = tfds_womd.features_to_scenario(ex)   # a batched numpy Scenario
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from dpa_omf import datatypes as dt
from dpa_omf.io import reader

_SPLIT_KEYWORDS = {"train": ("training",), "validation": ("validation",), "test": ("testing",)}


def _leaves(s: dt.Scenario) -> dict[str, np.ndarray]:
    out = {}
    for part in ("agents", "roadgraph", "traffic_lights"):
        obj = getattr(s, part)
        for f in dataclasses.fields(obj):
            out[f"{part}/{f.name}"] = np.asarray(getattr(obj, f.name))
    out["scenario_id"] = np.asarray(s.scenario_id)
    return out


def scenario_to_features(s: dt.Scenario) -> dict[str, np.ndarray]:
    """A single or batched ``Scenario`` as a flat dict ``{"agents/x": ..., ...}``."""
    return _leaves(s)


def features_to_scenario(d: dict) -> dt.Scenario:
    """Inverse of ``scenario_to_features`` (also for batched dicts from ``tfds.as_numpy``)."""
    def build(cls, part):
        return cls(**{f.name: np.asarray(d[f"{part}/{f.name}"]) for f in dataclasses.fields(cls)})

    return dt.Scenario(agents=build(dt.Agents, "agents"), roadgraph=build(dt.RoadGraph, "roadgraph"),
                       traffic_lights=build(dt.TrafficLights, "traffic_lights"),
                       scenario_id=np.asarray(d["scenario_id"]))


@dataclasses.dataclass
class WomdConfig(tfds.core.BuilderConfig):
    """Sizes of the stored scenes (see ``reader.ReaderConfig``)."""

    max_agents: int = 128
    max_roadgraph_points: int = 30_000


class Womd(tfds.core.GeneratorBasedBuilder):
    """WOMD scenes as fixed-shape ``dpa_omf.datatypes.Scenario`` features."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Scenario fields of dpa_omf.datatypes, from tf.Example or Scenario-proto shards."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download WOMD shards (https://waymo.com/open/, motion dataset: the tf_example or scenario folders) and
    place the TFRecord files in the manual dir. Names containing 'training', 'validation', 'testing' select
    the split; otherwise every file goes to 'train'.
    """
    BUILDER_CONFIGS = [
        WomdConfig(name="default", description="128 agents, 30,000 road-graph samples (current WOMD)."),
        WomdConfig(name="samples20k", description="128 agents, 20,000 road-graph samples (older WOMD).",
                   max_roadgraph_points=20_000),
    ]

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 finds a builder's source through `importlib_resources`, a package it declares only for
        # Python < 3.9, so the lookup fails on a clean 3.11 install; the answer is simply this file.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        template = dt.empty_scenario(self.builder_config.max_agents, self.builder_config.max_roadgraph_points)
        features = {name: tfds.features.Tensor(shape=v.shape, dtype=v.dtype)
                    for name, v in scenario_to_features(template).items()}
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                              homepage="https://waymo.com/open/data/motion/")

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        files = sorted(os.path.join(root, f) for f in os.listdir(root) if "tfrecord" in f and not f.startswith("."))
        if not files:
            raise FileNotFoundError(f"no *tfrecord* file in the manual dir {root}")
        splits = {name: [f for f in files if any(k in os.path.basename(f) for k in keys)]
                  for name, keys in _SPLIT_KEYWORDS.items()}
        splits = {name: fs for name, fs in splits.items() if fs}
        if not splits:
            splits = {"train": files}
        return {name: self._generate_examples(fs) for name, fs in splits.items()}

    def _generate_examples(self, files):
        config = reader.ReaderConfig(max_agents=self.builder_config.max_agents,
                                     max_roadgraph_points=self.builder_config.max_roadgraph_points)
        for path in files:
            for k, s in enumerate(reader.read_scenes(path, config)):
                yield f"{os.path.basename(path)}:{k}", scenario_to_features(s)

"""Shared defaults of every dpa_omf job, and the config checks run at start.

Every job file (`configs/<job>.py`) builds on `base_config()`, so the main job
(`configs/align.py`) and the stages it runs share one config: a stage reads
only its own sections. Variants are comma-separated names after the colon:
`--config=configs/align.py:smoke` or `:womd`. Every default lives here.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("smoke", "womd")


def parse_variants(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
    names = {v.strip() for v in (arg or "").split(",") if v.strip()}
    unknown = names - set(allowed)
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; known: {sorted(allowed)}")
    return names


def base_config(variants: set[str]) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = ""
    c.seed = 0

    # ------------------------------------------------------------ data
    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # 'synthetic' (embedded default, generated into WORKDIR/data) or 'womd'
    c.data.num_agents = 32  # agent slots per scene (WOMD tf.Example: 128)
    c.data.num_roadgraph_points = 4096  # road-graph samples per scene (WOMD: 20,000 or 30,000)
    # The embedded synthetic world: generated once into WORKDIR/data by the data job.
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.num_train = 1000
    c.data.synthetic.num_valid = 100
    c.data.synthetic.num_shards = 8
    c.data.synthetic.num_workers = 2
    # Real WOMD: file patterns (tf.Example or Scenario-proto TFRecords; format detected per file).
    c.data.womd = ml_collections.ConfigDict()
    c.data.womd.train_pattern = ""
    c.data.womd.valid_pattern = ""

    if "smoke" in variants:
        c.data.num_agents = 16
        c.data.synthetic.num_train = 16
        c.data.synthetic.num_valid = 8
        c.data.synthetic.num_shards = 2
        c.data.synthetic.num_workers = 1
    if "womd" in variants:
        c.data.source = "womd"
        c.data.num_agents = 128
        c.data.num_roadgraph_points = 30000
        c.data.womd.train_pattern = "/data/womd/training/*.tfrecord*"
        c.data.womd.valid_pattern = "/data/womd/validation/*.tfrecord*"
    return c


def check_config(c: ml_collections.ConfigDict) -> None:
    """Refuses impossible combinations before any compute (unknown keys are
    already refused by the locked config)."""
    errors = []
    if c.data.source not in ("synthetic", "womd"):
        errors.append(f"data.source={c.data.source!r} must be 'synthetic' or 'womd'")
    if c.data.source == "womd" and not c.data.womd.train_pattern:
        errors.append("data.source='womd' needs data.womd.train_pattern")
    if c.data.num_agents < 1 or c.data.num_agents > 128:
        errors.append(f"data.num_agents={c.data.num_agents} must be in [1, 128]")
    if c.data.num_roadgraph_points < 1:
        errors.append("data.num_roadgraph_points must be positive")
    s = c.data.synthetic
    if s.num_train < 1 or s.num_valid < 1 or s.num_shards < 1 or s.num_workers < 1:
        errors.append("data.synthetic.{num_train,num_valid,num_shards,num_workers} must be positive")
    if errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(errors))

"""Shared defaults of every dpa_omf job (every default lives here and in post_training.py and optim.py).

Every job file (`configs/<job>.py`) builds on `base_config()`, so the main job
(`configs/align.py`) and the stages it runs share one config: a stage reads
only its own sections. Variants are comma-separated names after the colon:
`--config=configs/align.py:smoke` or `:womd`. Every default lives here.

Sections (each becomes frozen dataclasses at the one config boundary, `dpa_omf/jobs/config.py`, which
also checks every rule before any compute):

  data       the input (slots, the synthetic world and its map field by field, or WOMD patterns)
  tokenizer  dpa_omf.model.tokenizer.TokenizerConfig, field by field
  model      dpa_omf.model.motion_lm.ModelConfig (model.encoder: encoder.EncoderConfig)
  pretrain   batch, steps, evaluation, checkpoints, logging (pretrain.optim: train.optim.OptimConfig)
  mesh       dpa_omf.train.sharding.MeshConfig (the data axis size, the logical-axis rules)
  aot        the --dry_run memory check
  curate, align, evaluate, submit   the post-training stages (configs/post_training.py)
"""

from __future__ import annotations

import ml_collections

from dpa_omf.configs import optim as optim_config
from dpa_omf.configs import post_training

VARIANTS = ("smoke", "womd", "long")

# Keys renamed so that one idea has one word (docs/architecture.md, "Glossary"): old key -> new key. An override of
# an old key is refused by the launcher with the new one's name (renamed_keys_error), never silently dropped.
RENAMED_KEYS = {
    "curate.num_pairs": "curate.top_k",
    "align.online.num_pairs": "align.online.top_k",
    "submit.scenarios_per_shard": "submit.scenes_per_shard",
    "data.num_roadgraph_points": "data.max_roadgraph_points",
}


def renamed_keys_error(keys: list[str]) -> str | None:
    """The refusal of overridden ``keys`` (dotted, e.g. 'curate.num_pairs') that were renamed; None when none was."""
    old = [k for k in keys if k in RENAMED_KEYS]
    if not old:
        return None
    return "; ".join(f"config key {k} was renamed: use --config.{RENAMED_KEYS[k]}" for k in old)


def _variant_names(arg: str | None) -> set[str]:
    """The comma-separated variant names of a config file's argument."""
    return {v.strip() for v in (arg or "").split(",") if v.strip()}


def parse_variants(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
    names = _variant_names(arg)
    unknown = names - set(allowed)
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; known: {sorted(allowed)}")
    return names


def parse_method_variant(arg: str | None, allowed: tuple[str, ...]) -> tuple[set[str], str | None]:
    """``(variants, method)``: the known variants, and at most one other name, which is taken as an alignment method.

    The config layer sits below the registry of methods (``dpa_omf/jobs/align.py:METHODS``), so it lists none: the
    config boundary refuses a name that is not a method (``align.check``), naming the registry's methods.
    """
    names = _variant_names(arg)
    others = sorted(names - set(allowed))
    if len(others) > 1:
        raise ValueError(f"choose at most one alignment method variant, got {others} (other variants: "
                         f"{sorted(allowed)})")
    return names - set(others), (others[0] if others else None)


def base_config(variants: set[str]) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = ""
    c.seed = 0
    c.data = _data(variants)
    c.tokenizer = _tokenizer()
    c.model = _model(variants)
    c.pretrain = _pretrain(variants)
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # the data-parallel mesh axis; -1 = every device (the ~1M-parameter model is replicated)
    # Logical axis -> mesh axis ('data') or None (replicated): batches split their 'batch' axis over the data axis.
    c.mesh.rules = (("batch", "data"),)
    c.aot = ml_collections.ConfigDict()
    # Memory per device for the --dry_run check, GiB. 0 = ask the device (memory_stats), or on CPU
    # (no stats) the physical RAM divided among this process's devices.
    c.aot.device_memory_gb = 0.0
    c.aot.headroom = 0.9  # the compiled step must fit in this fraction of the device memory
    # The post-training stages' sections (configs/post_training.py).
    c.curate = post_training.curate(variants)
    c.align = post_training.align(variants)
    c.evaluate = post_training.evaluate(variants)
    c.submit = post_training.submit(variants)
    return c


def _data(variants: set[str]) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.source = "synthetic"  # 'synthetic' (embedded default, generated into WORKDIR/data) or 'womd'
    d.num_agents = 32  # agent slots per scene (WOMD tf.Example: 128)
    d.max_roadgraph_points = 4096  # road-graph samples per scene (WOMD: 20,000 or 30,000)
    # The embedded synthetic world: generated once into WORKDIR/data by the data job.
    d.synthetic = ml_collections.ConfigDict()
    d.synthetic.num_train = 1000
    # Held-out scenes: 0..255 the study's test block (the main job evaluates 0..127), 256..319 the validation block
    # on which the study makes its choices (learning rates, levers, sampling settings; docs/results/alignment.md).
    d.synthetic.num_valid = 320
    d.synthetic.num_shards = 8
    d.synthetic.num_workers = 2
    _world(d.synthetic)
    # Real WOMD: file patterns (tf.Example or Scenario-proto TFRecords; format detected per file).
    d.womd = ml_collections.ConfigDict()
    d.womd.train_pattern = ""
    d.womd.valid_pattern = ""
    if "smoke" in variants:
        d.num_agents = 16
        d.max_roadgraph_points = 1024
        d.synthetic.num_train = 16
        d.synthetic.num_valid = 8
        d.synthetic.num_shards = 2
        d.synthetic.num_workers = 1
    if "long" in variants:
        # The learning-curve run of the packaged reference: 4x the data, so a few passes do not overfit.
        d.synthetic.num_train = 4000
        d.synthetic.num_shards = 32
    if "womd" in variants:
        d.source = "womd"
        d.num_agents = 128
        d.max_roadgraph_points = 30000
        d.womd.train_pattern = "/data/womd/training/*.tfrecord*"
        d.womd.valid_pattern = "/data/womd/validation/*.tfrecord*"
    return d


def _world(s: ml_collections.ConfigDict) -> None:
    """The synthetic world's parameters (``synthetic.config.SyntheticConfig`` and its ``map``, field by field, less
    the slots, which come from ``data.num_agents`` / ``data.max_roadgraph_points``)."""
    s.template_weights = (0.15, 0.2, 0.45, 0.2)  # probabilities of (straight, curved, four_way, t_junction)
    s.burn_in_steps = 20  # steps (0.1 s) simulated before the recorded 91
    s.pool_size = 48  # agents simulated (the recorded ones fill data.num_agents slots); more slots: pool = slots
    s.initial_vehicles = (16, 24)  # agents at the start, inclusive range, for initial_slots slots
    s.initial_pedestrians = (3, 7)
    # The slot count initial_vehicles / initial_pedestrians are sized for: with more slots than pool_size (WOMD's
    # 128), both ranges scale by data.num_agents / initial_slots, so the extra slots hold traffic, not padding.
    s.initial_slots = 32
    s.cyclist_prob = 0.12  # chance that a vehicle slot on a bike-able lane is a cyclist
    s.entering_share = 0.5  # share of the pool left to agents entering later
    s.max_eval_agents = 4  # agents to evaluate besides the SDC
    s.lane_change_prob = 0.3  # chance a vehicle on a multi-lane straight route plans a lane change
    s.dropout_prob = 0.05  # chance an agent (not SDC / evaluated) loses a few steps of track
    s.lookahead_points = 16  # path samples per agent for leader detection
    s.min_roadgraph_spacing = 0.5  # m, the finest road-graph sample spacing
    s.map = ml_collections.ConfigDict()  # procedural map geometry (synthetic.maps.MapConfig), m; pairs are ranges
    s.map.lane_width = (3.3, 3.8)
    s.map.arm_length = (60.0, 80.0)
    s.map.corridor_length = (140.0, 180.0)
    s.map.median_prob = 0.35
    s.map.median_width = (1.5, 3.0)
    s.map.sidewalk_offset = 3.0  # pedestrian line beyond the road edge
    s.map.corner_radius = 2.5
    s.map.crosswalk_width = 3.0
    s.map.min_turn_radius = (80.0, 250.0)  # curved corridors


def _tokenizer() -> ml_collections.ConfigDict:
    """Mirrors ``TokenizerConfig``: 169 = 13 x 13 (lon, lat) acceleration bins."""
    t = ml_collections.ConfigDict()
    t.token_hz = 2  # tokens per second; must divide 10 (2 Hz: 16 tokens of 5 sub-steps over 8 s)
    t.lon_min = -8.0  # m/s^2, strongest braking
    t.lon_max = 4.0  # m/s^2, strongest forward acceleration
    t.lat_max = 6.0  # m/s^2, symmetric lateral range
    t.bin_power = 1.5  # bins denser near 0
    t.speed_threshold = 0.5  # m/s; above it the heading follows the velocity
    t.stop_clamp = True
    t.heading_weight = 1.0  # greedy-tokenizer cost weights
    t.velocity_weight = 0.05
    t.effort_weight = 1e-6
    return t


def _model(variants: set[str]) -> ml_collections.ConfigDict:
    """Mirrors ``ModelConfig`` (its ``tokenizer`` field comes from the ``tokenizer`` section)."""
    m = ml_collections.ConfigDict()
    m.d_model = 128  # ~1.05M parameters with the sizes below
    m.num_heads = 4
    m.mlp_ratio = 2
    m.enc_layers = 2
    m.dec_layers = 3
    m.compute_dtype = "float32"  # or "bfloat16" (parameters and logits stay float32)
    m.encoder = ml_collections.ConfigDict()
    m.encoder.k_agents = 16  # nearest other agents in each agent's local context
    m.encoder.k_roadgraph = 64  # nearest road-graph samples
    m.encoder.roadgraph_stride = 4
    m.encoder.agent_radius = 80.0  # m
    m.encoder.roadgraph_radius = 80.0  # m
    if "smoke" in variants:
        m.d_model, m.num_heads, m.mlp_ratio, m.enc_layers, m.dec_layers = 32, 2, 2, 1, 1
        m.encoder.k_agents, m.encoder.k_roadgraph = 4, 16
    if "womd" in variants:
        m.compute_dtype = "bfloat16"  # accelerators: bf16 matmuls, float32 params and loss
    return m


def _pretrain(variants: set[str]) -> ml_collections.ConfigDict:
    p = ml_collections.ConfigDict()
    # Sized for the main job's budget (data -> evaluate <= 20 min on a 2-core CPU, ~6-7 min of it
    # here). Measured (2026-11-21, default 1.05M model, 32 agents, batch 8, 2-core CPU shared by
    # other jobs at load ~8-12): 2.9-3.5 s of CPU time per train step (9-15 s wall under that load),
    # i.e. ~2-2.5 s wall on the idle 2 cores; 120 steps ~5 min + ~1 min compile and evaluation.
    # 960 scenes: about one pass over the 1,000 synthetic training scenes.
    # Install the reference shipped with the package (dpa_omf/assets/reference) when its manifest matches the
    # data slots, tokenizer and model of this config; False (or a mismatch) trains from scratch.
    p.packaged = True
    p.batch_size = 8  # global scenes per step (split over processes, then over the data axis)
    p.num_steps = 120
    p.eval_batches = 4  # held-out batches of batch_size from WORKDIR/data/valid, the same each time
    p.eval_every = 60  # steps; 0 = only at the end
    # WOSAC realism of the first N held-out scenes at every evaluation (metrics.jsonl, TensorBoard: eval/realism_*;
    # the evaluate section's rollouts and challenge); 0 = off. ~1.2 s per scene on a 2-core CPU, plus compiling.
    p.realism_scenes = 4
    p.checkpoint_every = 40
    p.keep_checkpoints = 3
    # Multi-process jobs agree on a pending preemption (SIGTERM) every this many steps (a collective, so not every
    # step); the saved step and the result do not depend on it.
    p.preemption_sync_every = 10
    p.async_checkpointing = True
    p.log_every = 10
    p.progress_bar = True
    p.prefetch = 2  # batches read ahead by the pipeline (its thread, or each worker)
    p.num_workers = 0  # grain worker processes making training batches (same batches for any count)
    p.shuffle = True
    p.optim = optim_config.optim(learning_rate=1e-3, end_lr_ratio=0.05, weight_decay=0.01)
    if "smoke" in variants:
        p.batch_size = 8  # divisible by the 8 fake CPU devices of the tests
        p.num_steps = 6
        p.eval_batches = 1
        p.eval_every = 0
        p.realism_scenes = 1
        p.checkpoint_every = 3
        p.log_every = 1
        p.progress_bar = False
        p.optim.warmup_steps = 2
    if "long" in variants:
        p.packaged = False  # this run makes the packaged reference
        # Learning curve (BUILD_NOTES: "Reference learning curve"): every 125-step checkpoint is kept so
        # each point of the curve can be evaluated afterwards; cosine decay over the whole run.
        p.num_steps = 1200
        p.eval_every = 125
        p.eval_batches = 8
        p.checkpoint_every = 125
        p.keep_checkpoints = 100
        p.log_every = 25
        p.optim.warmup_steps = 50
    if "womd" in variants:
        p.batch_size = 64  # 8 scenes per device on an 8-device data-parallel mesh
        p.num_steps = 200_000
        p.eval_batches = 16
        p.eval_every = 5_000
        p.checkpoint_every = 2_000
        p.log_every = 100
        p.optim.learning_rate = 5e-4
        p.optim.warmup_steps = 2_000
    return p

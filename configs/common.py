"""Shared defaults of every dpa_omf job, and the config checks run at start.

Every job file (`configs/<job>.py`) builds on `base_config()`, so the main job
(`configs/align.py`) and the stages it runs share one config: a stage reads
only its own sections. Variants are comma-separated names after the colon:
`--config=configs/align.py:smoke` or `:womd`. Every default lives here.

Sections and the frozen dataclasses they become at the job boundary
(`dpa_omf.train.pretrain.{tokenizer,model,optim,mesh,train}_config`):

  data       the input (synthetic world or WOMD patterns), read by the data job and the pipeline
  tokenizer  dpa_omf.model.tokenizer.TokenizerConfig, field by field
  model      dpa_omf.model.motion_lm.ModelConfig (model.encoder: encoder.EncoderConfig)
  pretrain   batch, steps, evaluation, checkpoints, logging (pretrain.optim: train.optim.OptimConfig)
  mesh       dpa_omf.train.sharding.MeshConfig (data, model axis sizes)
  aot        the --dry_run memory check
  curate, align, evaluate   the post-training stages (configs/post_training.py)
"""

from __future__ import annotations

import ml_collections

from configs import optim as optim_config
from configs import post_training

VARIANTS = ("smoke", "womd", "long")
NUM_FUTURE_STEPS = 80  # 10 Hz steps of the 8 s future (datatypes.NUM_FUTURE; no JAX import here)


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
    c.data = _data(variants)
    c.tokenizer = _tokenizer()
    c.model = _model(variants)
    c.pretrain = _pretrain(variants)
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis; -1 = every device left after `model`
    c.mesh.model = 1  # model-parallel (tensor) axis
    c.aot = ml_collections.ConfigDict()
    # Memory per device for the --dry_run check, GiB. 0 = ask the device (memory_stats), or on CPU
    # (no stats) the physical RAM divided among this process's devices.
    c.aot.device_memory_gb = 0.0
    c.aot.headroom = 0.9  # the compiled step must fit in this fraction of the device memory
    # The post-training stages' sections (configs/post_training.py).
    c.curate = post_training.curate(variants)
    c.align = post_training.align(variants)
    c.evaluate = post_training.evaluate(variants)
    return c


def _data(variants: set[str]) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.source = "synthetic"  # 'synthetic' (embedded default, generated into WORKDIR/data) or 'womd'
    d.num_agents = 32  # agent slots per scene (WOMD tf.Example: 128)
    d.num_roadgraph_points = 4096  # road-graph samples per scene (WOMD: 20,000 or 30,000)
    # The embedded synthetic world: generated once into WORKDIR/data by the data job.
    d.synthetic = ml_collections.ConfigDict()
    d.synthetic.num_train = 1000
    d.synthetic.num_valid = 100
    d.synthetic.num_shards = 8
    d.synthetic.num_workers = 2
    # Real WOMD: file patterns (tf.Example or Scenario-proto TFRecords; format detected per file).
    d.womd = ml_collections.ConfigDict()
    d.womd.train_pattern = ""
    d.womd.valid_pattern = ""
    if "smoke" in variants:
        d.num_agents = 16
        d.num_roadgraph_points = 1024
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
        d.num_roadgraph_points = 30000
        d.womd.train_pattern = "/data/womd/training/*.tfrecord*"
        d.womd.valid_pattern = "/data/womd/validation/*.tfrecord*"
    return d


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
    p.batch_size = 8  # global scenes per step (split over processes, then over the data axis)
    p.num_steps = 120
    p.eval_batches = 4  # held-out batches of batch_size from WORKDIR/data/valid, the same each time
    p.eval_every = 60  # steps; 0 = only at the end
    p.checkpoint_every = 40
    p.keep_checkpoints = 3
    p.async_checkpointing = True
    p.log_every = 10
    p.progress_bar = True
    p.prefetch = 2  # batches parsed ahead by the pipeline's thread
    p.shuffle = True
    p.optim = optim_config.optim(learning_rate=1e-3, end_lr_ratio=0.05, weight_decay=0.01)
    if "smoke" in variants:
        p.batch_size = 8  # divisible by the 8 fake CPU devices of the tests
        p.num_steps = 6
        p.eval_batches = 1
        p.eval_every = 0
        p.checkpoint_every = 3
        p.log_every = 1
        p.progress_bar = False
        p.optim.warmup_steps = 2
    if "long" in variants:
        # Learning curve (BUILD_NOTES: "Reference learning curve"): every 125-step checkpoint is kept so
        # each point of the curve can be evaluated afterwards; cosine decay over the whole run.
        p.num_steps = 3000
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


def check_config(c: ml_collections.ConfigDict, num_devices: int | None = None,
                 process_count: int = 1) -> None:
    """Refuses impossible combinations before any compute (unknown keys are
    already refused by the locked config).

    Args:
      c: the whole config.
      num_devices, process_count: when given (inside a job, once JAX knows its
        devices), also checks the mesh against the devices and the batch
        against the processes.
    Raises:
      ValueError listing every problem found.
    """
    errors = _check_data(c) + _check_tokenizer_model(c) + _check_pretrain_mesh(c) + post_training.check(c)
    if num_devices is not None:
        errors += _check_devices(c, num_devices, process_count)
    if errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(errors))


def _check_data(c) -> list[str]:
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
    if not 0 <= c.seed < 500_000:
        errors.append(f"seed={c.seed} must be in [0, 500000) (synthetic dataset seeds are 2 * seed + split)")
    return errors


def _check_tokenizer_model(c) -> list[str]:
    errors = []
    t, m = c.tokenizer, c.model
    if t.token_hz < 1 or 10 % t.token_hz:
        errors.append(f"tokenizer.token_hz={t.token_hz} must divide 10 (each token holds 10/token_hz "
                      f"of the {NUM_FUTURE_STEPS} future 0.1 s steps)")
    if not (t.lon_min < 0 < t.lon_max and t.lat_max > 0):
        errors.append("tokenizer needs lon_min < 0 < lon_max and lat_max > 0")
    if m.d_model < 1 or m.num_heads < 1 or m.d_model % m.num_heads:
        errors.append(f"model.d_model={m.d_model} must be a positive multiple of model.num_heads={m.num_heads}")
    if m.compute_dtype not in ("float32", "bfloat16"):
        errors.append(f"model.compute_dtype={m.compute_dtype!r} must be 'float32' or 'bfloat16'")
    if min(m.mlp_ratio, m.enc_layers, m.dec_layers, m.encoder.k_agents, m.encoder.k_roadgraph,
           m.encoder.roadgraph_stride) < 1:
        errors.append("model.{mlp_ratio,enc_layers,dec_layers} and model.encoder.{k_agents,k_roadgraph,"
                      "roadgraph_stride} must be >= 1")
    return errors


def _check_pretrain_mesh(c) -> list[str]:
    errors = []
    p, mesh = c.pretrain, c.mesh
    for name in ("batch_size", "num_steps", "eval_batches", "checkpoint_every", "keep_checkpoints",
                 "log_every"):
        if p[name] < 1:
            errors.append(f"pretrain.{name}={p[name]} must be >= 1")
    if p.eval_every < 0:
        errors.append(f"pretrain.eval_every={p.eval_every} must be >= 0")
    if mesh.model < 1 or (mesh.data < 1 and mesh.data != -1):
        errors.append(f"mesh.data={mesh.data} must be >= 1 or -1 (all devices), mesh.model={mesh.model} >= 1")
    elif mesh.data > 0 and p.batch_size % mesh.data:
        errors.append(f"pretrain.batch_size={p.batch_size} is not divisible by mesh.data={mesh.data}")
    if not 0 < c.aot.headroom <= 1 or c.aot.device_memory_gb < 0:
        errors.append("aot.headroom must be in (0, 1] and aot.device_memory_gb >= 0")
    return errors


def _check_devices(c, num_devices: int, process_count: int) -> list[str]:
    errors = []
    data, model = c.mesh.data, c.mesh.model
    if model > num_devices or num_devices % max(model, 1):
        errors.append(f"mesh.model={model} does not divide the {num_devices} devices")
        return errors
    data = num_devices // model if data == -1 else data
    if data * model > num_devices:
        errors.append(f"mesh {data} x {model} needs {data * model} devices, only {num_devices} exist")
    elif data * model != num_devices:
        errors.append(f"mesh {data} x {model} does not use all {num_devices} devices "
                      "(set mesh.data=-1 or a size that multiplies to the device count)")
    if c.pretrain.batch_size % data:
        errors.append(f"pretrain.batch_size={c.pretrain.batch_size} is not divisible by the mesh data "
                      f"axis ({data})")
    if c.pretrain.batch_size % process_count:
        errors.append(f"pretrain.batch_size={c.pretrain.batch_size} is not divisible by the "
                      f"{process_count} processes")
    return errors

"""The launcher's ``--dry_run``: the pretraining and curate steps compiled ahead of time, memory per device.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
  python -m dpa_omf.launch --config=configs/pretrain.py:womd --workdir=DIR --dry_run

Builds the mesh from the config and the global batch as ``ShapeDtypeStruct``
(no data is read: WOMD files need not exist), compiles the sharded step
(``dpa_omf.train.aot``) and prints the report; it also goes to
``WORKDIR/aot/report.json``. When the step would not fit, the process exits
non-zero with a message saying by how much. The report's ``curate_step``
gives the curate job's device program too (``curate.scenes_per_device``
scenes per device of this process: rollouts, features, ADE), from XLA's
memory analysis; nothing is run and no checkpoint is read.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import ml_collections

from dpa_omf import atomic
from dpa_omf import datatypes as dt
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import pretrain
from dpa_omf.jobs import workdir as wd
from dpa_omf.model import motion_lm as mlm
from dpa_omf.preference import curation
from dpa_omf.train import aot, loop, sharding


def memory_report(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The pretraining step's memory per device for the configured mesh and global batch."""
    model = mlm.MotionLM(cfg_lib.model(config))
    train_config = cfg_lib.pretrain_train(config)
    mesh = sharding.mesh_from_config(train_config.mesh)
    # Trainer only traces shapes and defines jitted functions: no state is built here.
    trainer = loop.Trainer(loop.Objective(pretrain.make_loss_fn(model), pretrain.make_init_fn(model, config)),
                           train_config, mesh=mesh)
    report = aot.memory_report(trainer, pretrain.global_batch_shapes(config), config.aot.device_memory_gb,
                               config.aot.headroom)
    report.update(job=config.job, global_batch=config.pretrain.batch_size, num_agents=config.data.num_agents,
                  max_roadgraph_points=config.data.max_roadgraph_points, compute_dtype=config.model.compute_dtype,
                  param_count=mlm.param_count(trainer.abstract_state.params), curate_step=curate_memory(config))
    return report


def curate_memory(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The curate job's device program (``curation.featurize_batch`` over this process's devices), per device."""
    mesh = sharding.make_mesh(devices=jax.local_devices())
    cfg = cfg_lib.curation_config(config)
    model = mlm.MotionLM(cfg_lib.model(config))
    step = config.curate.scenes_per_device * mesh.size
    shard = sharding.batch_sharding(mesh)
    scenes = jax.tree.map(lambda x: jax.ShapeDtypeStruct((step,) + x.shape, jax.dtypes.canonicalize_dtype(x.dtype),
                                                         sharding=shard),
                          dt.empty_scenario(config.data.num_agents, config.data.max_roadgraph_points))
    keys = jax.ShapeDtypeStruct((step,), jax.random.key(0).dtype, sharding=shard)
    params = pretrain.params_target(config, mesh)
    fn = sharding.map_over_scenes(lambda p, s, k: curation.featurize_batch(model, p, s, k, cfg), mesh)
    ma = fn.lower(params, scenes, keys).compile().memory_analysis()
    limit, source = aot.device_memory_limit(config.aot.device_memory_gb)
    total = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
    return {"scenes_per_device": config.curate.scenes_per_device, "rollouts": config.curate.num_rollouts,
            "per_device_gib": {"arguments": ma.argument_size_in_bytes / aot.GIB,
                               "outputs": ma.output_size_in_bytes / aot.GIB,
                               "temp": ma.temp_size_in_bytes / aot.GIB, "total": total / aot.GIB},
            "device_memory_bytes": limit, "device_memory_source": source,
            "fits": total <= config.aot.headroom * limit}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The dry run: prints and writes the report; exits non-zero (with the reason) when it would not fit."""
    if config.job != "pretrain":
        sys.exit(f"--dry_run compiles a training step; config.job={config.job!r} has none")
    report = memory_report(config)
    print(json.dumps(report, indent=2, sort_keys=True), flush=True)
    if wd.is_writer():
        atomic.write_json(wd.stage_dir(workdir, "aot") / "report.json", report)
    if not report["fits"]:
        gib = report["per_device_gib"]
        sys.exit(f"aot: the train step needs {gib['total']:.2f} GiB per device (params {gib['params']:.3f}, "
                 f"optimizer {gib['opt_state']:.3f}, activations/temp {gib['activations_and_temp']:.2f}) but "
                 f"{config.aot.headroom:.0%} of {report['device_memory_bytes'] / aot.GIB:.2f} GiB "
                 f"({report['device_memory_source']}) is available: lower pretrain.batch_size, "
                 "use more devices (mesh.data) or bfloat16 compute")
    if not report["curate_step"]["fits"]:
        gib = report["curate_step"]["per_device_gib"]
        sys.exit(f"aot: the curate step needs {gib['total']:.2f} GiB per device: lower curate.scenes_per_device, "
                 "curate.rollout_chunk or curate.feature_rollout_chunk")
    return report

"""The launcher's ``--dry_run``: the pretraining step compiled ahead of time, memory per device, nothing run.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
  python -m dpa_omf.launch --config=configs/pretrain.py:womd --workdir=DIR --dry_run

Builds the mesh from the config and the global batch as ``ShapeDtypeStruct``
(no data is read: WOMD files need not exist), compiles the sharded step
(``dpa_omf.train.aot``) and prints the report; it also goes to
``WORKDIR/aot/report.json``. When the step would not fit, the process exits
non-zero with a message saying by how much.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import ml_collections

from dpa_omf import atomic
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import pretrain
from dpa_omf.jobs import workdir as wd
from dpa_omf.model import motion_lm as mlm
from dpa_omf.train import aot, loop, sharding


def memory_report(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The pretraining step's memory per device for the configured mesh and global batch."""
    model = mlm.MotionLM(cfg_lib.model(config))
    train_config = cfg_lib.pretrain_train(config)
    mesh = sharding.mesh_from_config(train_config.mesh)
    # Trainer only traces shapes and defines jitted functions: no state is built here.
    trainer = loop.Trainer(pretrain.make_loss_fn(model), pretrain.make_init_fn(model, config), train_config,
                           mesh=mesh)
    report = aot.memory_report(trainer, pretrain.global_batch_shapes(config), config.aot.device_memory_gb,
                               config.aot.headroom)
    report.update(job=config.job, global_batch=config.pretrain.batch_size, num_agents=config.data.num_agents,
                  num_roadgraph_points=config.data.num_roadgraph_points, compute_dtype=config.model.compute_dtype,
                  param_count=mlm.param_count(trainer.abstract_state.params))
    return report


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
    return report

"""Ahead-of-time memory check of the sharded train step (the launcher's ``--dry_run``).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
  python -m dpa_omf.launch --config=configs/pretrain.py:womd --workdir=DIR --dry_run

Builds the mesh from the config, the train state's shapes with
``jax.eval_shape`` (no parameter is allocated), lowers and compiles the
pretraining step for the configured mesh and global batch given as
``ShapeDtypeStruct`` (no data is read: WOMD files need not exist), and reports
per device: parameters, optimizer state, batch, XLA's temporaries
(activations kept for the backward pass and scratch), and their total against
the device's memory. Nothing is run. The report goes to stdout and to
``WORKDIR/aot/report.json``; when the step would not fit the process exits
non-zero with a message saying by how much.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from configs import common
from dpa_omf import atomic
from dpa_omf.jobs import stages
from dpa_omf.model import motion_lm as mlm
from dpa_omf.train import logging as stage_logging
from dpa_omf.train import loop, sharding
from dpa_omf.jobs import pretrain

GIB = 2**30


def per_device_bytes(abstract: Any) -> int:
    """Bytes one device holds of a tree of sharded ``ShapeDtypeStruct`` (the largest shard of each leaf)."""
    total = 0
    for x in jax.tree.leaves(abstract):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def device_memory_limit(config: ml_collections.ConfigDict) -> tuple[int, str]:
    """(bytes of memory per device, where the figure comes from)."""
    if config.aot.device_memory_gb > 0:
        return int(config.aot.device_memory_gb * GIB), "config aot.device_memory_gb"
    stats = None
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats raise or return None
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), "device memory_stats()['bytes_limit']"
    # CPU: the (fake) devices of this process share its RAM.
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // jax.local_device_count(), f"physical RAM / {jax.local_device_count()} local devices"


def memory_report(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Compiles the pretraining step for the configured mesh and batch; returns the per-device figures."""
    model = mlm.MotionLM(pretrain.model_config(config))
    train_config = pretrain.train_config(config)
    mesh = sharding.mesh_from_config(train_config.mesh)
    # Trainer only traces shapes and defines jitted functions: no state is built here.
    trainer = loop.Trainer(pretrain.make_loss_fn(model), pretrain.make_init_fn(model, config), train_config,
                           mesh=mesh)
    batch = pretrain.global_batch_shapes(config)
    t = time.perf_counter()
    compiled = trainer.lower_step(batch).compile()
    compile_s = time.perf_counter() - t
    state = trainer.abstract_state
    batch_sharded = sharding.with_shardings(batch, jax.tree.map(lambda _: sharding.batch_sharding(mesh), batch))
    ma = compiled.memory_analysis()
    limit, limit_source = device_memory_limit(config)
    report: dict[str, Any] = {
        "job": config.job,
        "mesh": dict(mesh.shape),
        "devices": mesh.size,
        "device_kind": jax.devices()[0].device_kind,
        "process_count": jax.process_count(),
        "global_batch": config.pretrain.batch_size,
        "num_agents": config.data.num_agents,
        "num_roadgraph_points": config.data.num_roadgraph_points,
        "compute_dtype": config.model.compute_dtype,
        "param_count": mlm.param_count(state.params),
        "compile_s": compile_s,
        "per_device_bytes": {
            "params": per_device_bytes(state.params),
            "opt_state": per_device_bytes(state.opt_state),
            "batch": per_device_bytes(batch_sharded),
        },
        "device_memory_bytes": limit,
        "device_memory_source": limit_source,
        "headroom": config.aot.headroom,
    }
    if ma is None:
        raise RuntimeError(f"aot: the {jax.default_backend()} backend gives no memory analysis")
    xla = {
        "arguments": int(ma.argument_size_in_bytes),
        "outputs": int(ma.output_size_in_bytes),
        "aliased": int(ma.alias_size_in_bytes),  # donated state: outputs reuse argument buffers
        "temp": int(ma.temp_size_in_bytes),  # activations kept for backward + scratch
        "generated_code": int(ma.generated_code_size_in_bytes),
    }
    report["xla_memory_analysis"] = xla
    report["per_device_bytes"]["activations_and_temp"] = xla["temp"]
    total = xla["arguments"] + xla["outputs"] - xla["aliased"] + xla["temp"] + xla["generated_code"]
    report["per_device_bytes"]["total"] = total
    report["fits"] = total <= config.aot.headroom * limit
    report["per_device_gib"] = {k: v / GIB for k, v in report["per_device_bytes"].items()}
    return report


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The dry run: prints and writes the report; exits non-zero (with the reason) when it would not fit."""
    common.check_config(config, jax.device_count(), jax.process_count())
    if config.job != "pretrain":
        sys.exit(f"--dry_run compiles a training step; config.job={config.job!r} has none")
    report = memory_report(config)
    text = json.dumps(report, indent=2, sort_keys=True)
    print(text, flush=True)
    if stage_logging.is_chief():
        atomic.write_json(stages.stage_dir(workdir, "aot") / "report.json", report)
    if not report["fits"]:
        gib = report["per_device_gib"]
        sys.exit(f"aot: the train step needs {gib['total']:.2f} GiB per device (params {gib['params']:.3f}, "
                 f"optimizer {gib['opt_state']:.3f}, activations/temp {gib['activations_and_temp']:.2f}) but "
                 f"{config.aot.headroom:.0%} of {report['device_memory_bytes'] / GIB:.2f} GiB "
                 f"({report['device_memory_source']}) is available: lower pretrain.batch_size, "
                 "use more devices (mesh.data) or bfloat16 compute")
    return report

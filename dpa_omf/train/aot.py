"""Ahead-of-time memory check of a sharded train step: compile it, report memory per device.

Knows no stage and no config file: :func:`memory_report` takes a
:class:`dpa_omf.train.loop.Trainer` and the global batch as
``ShapeDtypeStruct`` (no data is read, no parameter allocated), lowers and
compiles the step for the trainer's mesh and reports per device: parameters,
optimizer state, batch, XLA's temporaries (activations kept for the backward
pass and scratch), and their total against the device's memory. Nothing runs.
The job that calls it from the launcher's ``--dry_run`` is ``dpa_omf/jobs/dry_run.py``.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import numpy as np

from dpa_omf.train import loop, sharding

GIB = 2**30


def per_device_bytes(abstract: Any) -> int:
    """Bytes one device holds of a tree of sharded ``ShapeDtypeStruct`` (the largest shard of each leaf)."""
    total = 0
    for x in jax.tree.leaves(abstract):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def device_memory_limit(memory_gb: float = 0.0) -> tuple[int, str]:
    """(bytes of memory per device, where the figure comes from); ``memory_gb`` > 0 overrides."""
    if memory_gb > 0:
        return int(memory_gb * GIB), "config aot.device_memory_gb"
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats raise or return None
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), "device memory_stats()['bytes_limit']"
    # CPU: the (fake) devices of this process share its RAM.
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // jax.local_device_count(), f"physical RAM / {jax.local_device_count()} local devices"


def memory_report(trainer: loop.Trainer, batch: Any, memory_gb: float = 0.0, headroom: float = 0.9
                  ) -> dict[str, Any]:
    """Compiles ``trainer``'s step for the global ``batch`` shapes; returns the per-device figures.

    ``fits`` says whether the total is within ``headroom`` of the device memory.
    """
    mesh = trainer.mesh
    t = time.perf_counter()
    compiled = trainer.lower_step(batch).compile()
    compile_s = time.perf_counter() - t
    state = trainer.abstract_state
    batch_sharded = sharding.with_shardings(batch, jax.tree.map(lambda _: sharding.batch_sharding(mesh), batch))
    ma = compiled.memory_analysis()
    if ma is None:
        raise RuntimeError(f"aot: the {jax.default_backend()} backend gives no memory analysis")
    limit, limit_source = device_memory_limit(memory_gb)
    xla = {
        "arguments": int(ma.argument_size_in_bytes),
        "outputs": int(ma.output_size_in_bytes),
        "aliased": int(ma.alias_size_in_bytes),  # donated state: outputs reuse argument buffers
        "temp": int(ma.temp_size_in_bytes),  # activations kept for backward + scratch
        "generated_code": int(ma.generated_code_size_in_bytes),
    }
    total = xla["arguments"] + xla["outputs"] - xla["aliased"] + xla["temp"] + xla["generated_code"]
    per_device = {
        "params": per_device_bytes(state.params),
        "opt_state": per_device_bytes(state.opt_state),
        "batch": per_device_bytes(batch_sharded),
        "activations_and_temp": xla["temp"],
        "total": total,
    }
    return {
        "mesh": dict(mesh.shape),
        "devices": mesh.size,
        "device_kind": jax.devices()[0].device_kind,
        "process_count": jax.process_count(),
        "compile_s": compile_s,
        "per_device_bytes": per_device,
        "per_device_gib": {k: v / GIB for k, v in per_device.items()},
        "xla_memory_analysis": xla,
        "device_memory_bytes": limit,
        "device_memory_source": limit_source,
        "headroom": headroom,
        "fits": total <= headroom * limit,
    }

"""Device mesh and named shardings for parameters, optimizer state and batches.

Layout (the modern ``jax.jit`` with shardings, no pmap / pjit):

* A 1-D :class:`jax.sharding.Mesh` with the one axis ``'data'`` (data
  parallelism: the model is small, so there is no model / tensor axis).
* Batches: the leading (batch) dimension of every leaf is split over
  ``'data'``. In a multi-process job every process passes its own rows and
  :func:`global_batch` assembles the global array with
  ``jax.make_array_from_process_local_data``.
* Parameters: replicated, unless a module annotates them with flax logical
  axis names (``nn.with_logical_partitioning`` -> ``nn.LogicallyPartitioned``
  boxes) that :class:`MeshConfig.rules` maps onto ``'data'`` (parameters
  sharded over the data axis, FSDP-style; the MotionLM names no axes, so its
  parameters are replicated). Optimizer state follows the parameter it belongs
  to (``optax.tree_map_params``); its scalars (counts) are replicated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import linen as nn
from flax.core import meta as flax_meta
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any

DATA_AXIS = "data"

# Logical axis name -> mesh axis (None = replicated). Logical names not listed
# are replicated, so a parameter is sharded only where a rule says so.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (("batch", DATA_AXIS),)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh size and logical-axis rules.

    Attributes:
      data: size of the data-parallel axis; ``-1`` takes every device.
      rules: logical axis name -> mesh axis name (``'data'``) or ``None``.
    """

    data: int = -1
    rules: tuple[tuple[str, str | None], ...] = DEFAULT_RULES


def make_mesh(data: int = -1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``('data',)`` mesh over ``devices`` (default: all devices).

    Args:
      data: data-parallel size, ``-1`` for "all the devices".
      devices: the devices to use (e.g. ``jax.devices()[:1]`` for a
        one-device run on a many-device host). In a multi-process job this must
        be the global device list.

    Raises:
      ValueError: if ``data`` is not the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1:
        data = n
    if data != n:
        raise ValueError(f"mesh: data={data} != {n} devices")
    # Auto axes: GSPMD propagates shardings (jax.make_mesh defaults to Explicit
    # axes in this JAX, which would put shardings into every op's type).
    axis_types = (AxisType.Auto,)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh((data,), (DATA_AXIS,), axis_types=axis_types, devices=devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=axis_types)


def mesh_from_config(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    return make_mesh(config.data, devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading dimension on ``'data'``, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def _is_box(x: Any) -> bool:
    return isinstance(x, flax_meta.AxisMetadata)


def param_shardings(
    abstract_params: PyTree, mesh: Mesh, rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES
) -> PyTree:
    """NamedShardings for (possibly logically-boxed) params.

    Args:
      abstract_params: params or their ``jax.eval_shape``; leaves may be
        ``nn.LogicallyPartitioned`` / ``nn.Partitioned`` boxes.
      mesh: the mesh.
      rules: logical -> mesh axis rules (used for ``LogicallyPartitioned``).

    Returns:
      A tree with the structure of the *unboxed* params whose leaves are
      ``NamedSharding``; unannotated leaves are replicated.
    """
    specs = nn.get_partition_spec(abstract_params)  # boxes -> spec, arrays -> P()
    rules = tuple(rules)
    specs = jax.tree.map(
        lambda s, x: nn.logical_to_mesh_axes(x.names, rules) if isinstance(x, nn.LogicallyPartitioned) else s,
        specs,
        abstract_params,
        is_leaf=lambda x: isinstance(x, P) or _is_box(x),
    )
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def unbox(params: PyTree) -> PyTree:
    """Strips flax partitioning boxes (a no-op on plain arrays)."""
    return flax_meta.unbox(params)


def opt_state_shardings(
    tx: optax.GradientTransformation, abstract_params: PyTree, p_shardings: PyTree, mesh: Mesh
) -> PyTree:
    """Shardings for ``tx.init(params)``: moments follow their parameter.

    Args:
      tx: the optimizer.
      abstract_params: unboxed params (or their shapes).
      p_shardings: the params' shardings (same structure).
      mesh: the mesh (non-parameter leaves such as step counts are replicated).
    """
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    return optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        abstract_opt,
        p_shardings,
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def with_shardings(abstract: PyTree, shardings: PyTree) -> PyTree:
    """ShapeDtypeStructs carrying shardings: the target orbax restores into."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def _canonical(x: Any) -> np.ndarray:
    x = np.asarray(x)
    dtype = jax.dtypes.canonicalize_dtype(x.dtype)  # float64 -> float32 without x64
    return x if x.dtype == dtype else x.astype(dtype)


def global_batch(local_batch: PyTree, mesh: Mesh) -> PyTree:
    """Assembles the global, data-sharded batch from this process's rows.

    Args:
      local_batch: a pytree of numpy arrays, each ``[B_local, ...]`` where
        ``B_local = B_global / jax.process_count()``. Single-process:
        ``B_local = B_global``. ``B_global`` must be divisible by the mesh's
        ``data`` size.

    Returns:
      The same pytree of ``jax.Array`` of shape ``[B_global, ...]`` laid out
      by :func:`batch_sharding`.
    """
    sharding = batch_sharding(mesh)
    n_data = mesh.shape[DATA_AXIS]

    def put(x):
        x = _canonical(x)
        if x.ndim == 0:
            raise ValueError("global_batch: every batch leaf needs a leading batch dimension")
        rows = x.shape[0] * jax.process_count()
        if rows % n_data:
            raise ValueError(
                f"global_batch: global batch {rows} (leaf shape {x.shape} x {jax.process_count()} "
                f"processes) is not divisible by the mesh data axis ({n_data})"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, local_batch)



def map_over_scenes(fn, mesh: Mesh):
    """``jit(f)(params, *batch)`` of a per-batch function with the scene axis split over ``'data'``.

    Args:
      fn: ``fn(params, *batch) -> pytree``; every ``batch`` leaf and every
        output leaf has the scene axis first. It sees the scenes of ONE device
        (``shard_map``), so host callbacks inside it run once per device on
        that device's scenes, and a scene's result depends on the per-device
        batch shape, never on the number of devices.
      mesh: the mesh (in a multi-process job, a mesh of this process's local
        devices: jobs that split their work by process use one).
    Returns:
      The jitted function; the global batch must be a multiple of the data-axis size.
    """
    def mapped(params, *batch):
        return jax.shard_map(fn, mesh=mesh, in_specs=(P(),) + (P(DATA_AXIS),) * len(batch),
                             out_specs=P(DATA_AXIS), check_vma=False)(params, *batch)

    return jax.jit(mapped)


def put_local_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """This process's batch (leading scene axis) split over ``mesh``, a mesh of local devices only."""
    return jax.device_put(batch, batch_sharding(mesh))

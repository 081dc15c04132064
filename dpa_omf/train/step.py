"""The pure pieces of a training step: the state pytree and the jittable step functions.

:mod:`dpa_omf.train.loop` compiles them with shardings and drives them (checkpoints,
logging, preemption); these functions know nothing of meshes or files.

* :class:`TrainState`: everything a resumed run needs, as one pytree.
* :func:`init_state`, :func:`train_step`, :func:`eval_step`: pure; metrics as
  ``name -> (sum, count)`` so ragged counts weigh correctly when summed over
  batches and divided once on the host (:func:`reduce_pairs`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dpa_omf.train import sharding

PyTree = Any
LossFn = Callable[[PyTree, PyTree, jax.Array, PyTree], tuple[jax.Array, Mapping[str, Any]]]
EvalFn = Callable[[PyTree, PyTree, jax.Array, PyTree], Mapping[str, Any]]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs, as one pytree.

    Attributes:
      step: int32 ``[]``, number of updates applied.
      params: the trained parameters (unboxed).
      opt_state: optax state.
      rng: uint32 ``[2]`` raw key data of the run key (constant; the step key
        is ``fold_in(run key, step)``). Raw data, not a typed key, so the
        checkpoint holds plain arrays.
      data_index: int32 ``[]``, number of training batches consumed: where the
        batch iterator restarts.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    rng: jax.Array
    data_index: jax.Array

    def to_items(self) -> dict[str, PyTree]:
        """The checkpoint items: ``params`` alone (loadable as a frozen model) and the rest."""
        return {
            "params": self.params,
            "train": {
                "step": self.step,
                "opt_state": self.opt_state,
                "rng": self.rng,
                "data_index": self.data_index,
            },
        }

    @classmethod
    def from_items(cls, items: Mapping[str, PyTree]) -> TrainState:
        return cls(params=items["params"], **items["train"])


def _as_pair(v: Any) -> tuple[jax.Array, jax.Array]:
    """A metric as ``(sum, count)``: scalars count as one sample."""
    if isinstance(v, (tuple, list)):
        s, c = v
        return jnp.asarray(s, jnp.float32), jnp.asarray(c, jnp.float32)
    return jnp.asarray(v, jnp.float32), jnp.ones([], jnp.float32)


def _pairs(metrics: Mapping[str, Any]) -> dict[str, tuple[jax.Array, jax.Array]]:
    return {k: _as_pair(v) for k, v in metrics.items()}


def init_state(
    init_params_fn: Callable[[jax.Array], PyTree],
    tx: optax.GradientTransformation,
    rng: jax.Array,
    initial_params: PyTree | None = None,
) -> TrainState:
    """A fresh state (pure; jitted with ``out_shardings`` by :class:`Trainer`).

    Args:
      init_params_fn: ``rng -> params`` (possibly boxed).
      tx: the optimizer.
      rng: typed key; split into the params key and the run key.
      initial_params: start from these params instead (e.g. alignment starts
        from the reference model); ``init_params_fn`` is then not called.
    """
    params_rng, run_rng = jax.random.split(rng)
    params = initial_params if initial_params is not None else sharding.unbox(init_params_fn(params_rng))
    return TrainState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(run_rng),
        data_index=jnp.zeros([], jnp.int32),
    )


def train_step(
    loss_fn: LossFn, tx: optax.GradientTransformation, state: TrainState, batch: PyTree, frozen: PyTree
) -> tuple[TrainState, dict[str, tuple[jax.Array, jax.Array]]]:
    """One optimizer update on one global batch.

    Returns the new state and metrics as ``name -> (sum, count)``, with
    ``loss`` and ``grad_norm`` (before clipping) added.
    """
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng, frozen)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        data_index=state.data_index + 1,
    )
    out = _pairs(metrics)
    out["loss"] = _as_pair(loss)
    out["grad_norm"] = _as_pair(optax.tree.norm(grads))
    return new_state, out


def eval_step(
    eval_fn: EvalFn, params: PyTree, batch: PyTree, rng: jax.Array, frozen: PyTree
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Metrics of one held-out global batch as ``name -> (sum, count)``."""
    return _pairs(eval_fn(params, batch, rng, frozen))


def loss_as_eval_fn(loss_fn: LossFn) -> EvalFn:
    """The default evaluation: the loss and the loss function's metrics."""

    def eval_fn(params, batch, rng, frozen):
        loss, metrics = loss_fn(params, batch, rng, frozen)
        return {**metrics, "loss": loss}

    return eval_fn


def reduce_pairs(pairs: Mapping[str, tuple[Any, Any]]) -> dict[str, float]:
    """Host-side ``sum / count`` per metric (NaN where the count is 0)."""
    pairs = jax.device_get(pairs)
    out = {}
    for k, (s, c) in pairs.items():
        out[k] = float(s) / float(c) if float(c) > 0 else float("nan")
    return out

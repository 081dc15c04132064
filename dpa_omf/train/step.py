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
PrepareFn = Callable[[PyTree, PyTree, jax.Array, PyTree], tuple[PyTree, Mapping[str, Any]]]

# fold_in data of the prepare key (the updates of a step use 0 .. updates - 1)
PREPARE_KEY = 0x7FFF_FFFF


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


def _update(loss_fn: LossFn, tx: optax.GradientTransformation, params: PyTree, opt_state: PyTree, batch: PyTree,
            rng: jax.Array, frozen: PyTree) -> tuple[PyTree, PyTree, dict[str, tuple[jax.Array, jax.Array]]]:
    """One optimizer update: ``(params, opt_state, metrics)`` with ``loss`` and ``grad_norm`` added."""
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng, frozen)
    updates, opt_state = tx.update(grads, opt_state, params)
    out = _pairs(metrics)
    out["loss"] = _as_pair(loss)
    out["grad_norm"] = _as_pair(optax.tree.norm(grads))
    return optax.apply_updates(params, updates), opt_state, out


def train_step(
    loss_fn: LossFn, tx: optax.GradientTransformation, state: TrainState, batch: PyTree, frozen: PyTree,
    prepare_fn: PrepareFn | None = None, updates: int = 1,
) -> tuple[TrainState, dict[str, tuple[jax.Array, jax.Array]]]:
    """One step on one global batch: an optional prepare, then ``updates`` optimizer updates.

    Without ``prepare_fn`` and with one update (pretraining, offline alignment) this is
    one update with the step key ``fold_in(run key, step)``. An online stage passes
    ``prepare_fn(params, batch, rng, frozen) -> (batch, metrics)``: it turns the
    loaded batch into training data with the step's *current* parameters (no
    gradient flows through them), e.g. samples and ranks the policy's own rollouts,
    with the key ``fold_in(step key, PREPARE_KEY)``; the ``updates`` updates then all
    train on that prepared batch, update ``i`` with the key ``fold_in(step key, i)``
    (one update: the step key itself). The step is one program; a checkpoint
    between steps never splits a prepared batch from its updates.

    Returns the new state and metrics as ``name -> (sum, count)`` (summed over the
    updates), with ``loss`` and ``grad_norm`` (before clipping) added, and the
    prepare's metrics.
    """
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    prep_metrics = {}
    if prepare_fn is not None:
        # The updates differentiate the loss in its params argument only: the prepared batch is data.
        batch, prep_metrics = prepare_fn(jax.lax.stop_gradient(state.params), batch,
                                         jax.random.fold_in(rng, PREPARE_KEY), frozen)
    if updates == 1:
        params, opt_state, out = _update(loss_fn, tx, state.params, state.opt_state, batch, rng, frozen)
    else:
        def body(carry, i):
            params, opt_state = carry
            params, opt_state, m = _update(loss_fn, tx, params, opt_state, batch, jax.random.fold_in(rng, i), frozen)
            return (params, opt_state), m

        (params, opt_state), ms = jax.lax.scan(body, (state.params, state.opt_state),
                                                jnp.arange(updates, dtype=jnp.uint32))
        out = jax.tree.map(lambda v: v.sum(0), ms)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              data_index=state.data_index + 1)
    return new_state, {**_pairs(prep_metrics), **out}


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

"""The sharded training loop shared by every training stage (pretraining, alignment).

A stage supplies what differs -- an :class:`Objective` (the loss, the parameter
initializer and what they take), a batch iterator and a :class:`Reporting`
(held-out evaluation, hooks, its own summary figures) -- and :func:`train` does
the rest: mesh, sharded state, compiled step, evaluation, logging, checkpoints,
resume and preemption. :class:`Trainer` (mesh, state, compiled steps; no
files) takes the same :class:`Objective`.

Contracts (``Objective``: ``loss_fn``, ``init_params_fn``, ``eval_fn``,
``prepare_fn``, ``frozen``, ``initial_params``; ``train``:
``batch_iterator_factory``; ``Reporting``: ``eval_batches_fn``, ``extra_eval``,
``hooks``, ``summary_extra``):

* ``loss_fn(params, batch, rng, frozen) -> (loss, metrics)``: pure and
  jittable. ``batch`` is the *global* batch (a pytree of ``jax.Array``, leading
  dim = global batch size, split over the mesh's ``data`` axis; reductions over
  it are cross-device reductions, inserted by XLA). ``rng`` is a typed PRNG key,
  ``jax.random.fold_in(run_key, step)``. ``frozen`` is the optional frozen
  pytree (e.g. a reference model's params) or ``None``. ``loss`` is a float
  scalar to minimize. ``metrics`` maps names to either a scalar or a pair
  ``(sum, count)`` -- masked sums and counts are added over evaluation batches
  and divided once on the host, so ragged valid-agent counts weigh correctly.
* ``init_params_fn(rng) -> params``: pure; leaves may carry flax logical-axis
  boxes (``nn.with_logical_partitioning``), mapped onto the mesh by
  ``MeshConfig.rules``; otherwise params are replicated.
* ``frozen``: a frozen pytree passed to every loss / eval / prepare call
  (e.g. the reference model's params), placed on the mesh once, never saved;
  ``initial_params``: start from these params instead of ``init_params_fn``'s.
* ``batch_iterator_factory(start) -> iterable`` of *process-local* batches
  (pytrees of numpy arrays, leading dim = global batch / process count),
  starting at batch index ``start`` (the number of batches already consumed):
  a resumed run asks for the batches it has not seen yet, so it sees exactly
  the batches an uninterrupted run would have.
* ``eval_batches_fn() -> iterable`` of process-local held-out batches, the same
  ones at every evaluation; ``eval_fn(params, batch, rng, frozen) -> metrics``
  (default: the loss function's loss and metrics).
* ``prepare_fn(params, batch, rng, frozen) -> (batch, metrics)`` (optional,
  online stages): pure and jittable; turns the loaded global batch into the
  step's training data with the current parameters (gradient stopped), e.g.
  samples and ranks the policy's own rollouts. The step then takes
  ``TrainConfig.updates_per_step`` updates on that data, all in one compiled
  program (:func:`dpa_omf.train.step.train_step`), so a checkpoint (taken
  between steps) never separates prepared data from its updates and a resumed
  run prepares exactly what an uninterrupted run would.
* ``hooks``: called on the host after every step (after its metrics are
  logged, before the preemption check, evaluation and checkpoint) as
  ``hook(step, state)``; ``state`` is donated to the next step, so a hook must
  not keep it. ``extra_eval(params) -> metrics`` adds figures to every
  evaluation (e.g. the realism of a few held-out scenes); it may return ``{}``
  on processes that do not log. ``summary_extra`` adds the stage's own figures
  to summary.json (e.g. its ``config_fingerprint``, which marks the stage
  done): a mapping, or a function of the loop's summary returning one, called
  once at the end so that the file is written once, complete.

Outputs in ``WORKDIR/<stage>/``: ``checkpoints/`` (orbax), ``metrics.jsonl``,
TensorBoard events, ``summary.json`` (only when the run completes; its presence
means "stage done").

A complete user: ``dpa_omf/jobs/pretrain.py:run`` (and ``jobs/align.py:run`` with a frozen reference).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dpa_omf.train import checkpointing, optim, sharding, stage_log
from dpa_omf.train import step as step_lib

PyTree = Any
LossFn = step_lib.LossFn
EvalFn = step_lib.EvalFn
TrainState = step_lib.TrainState
Hook = Callable[[int, TrainState], None]

log = logging.getLogger(__name__)

COMPLETED = "completed"
PREEMPTED = "preempted"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; ``step`` is the first bad step (1-based)."""

    def __init__(self, step: int, value: float, stage: str):
        self.step = step
        super().__init__(f"{stage}: non-finite training loss {value} at step {step}")


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Knobs of the training loop (the stage's loss and model have their own).

    Attributes:
      num_steps: number of optimizer updates in the whole run.
      seed: seeds parameter init and the per-step rng stream.
      optim: optimizer (AdamW, warm-up + cosine, clipping).
      mesh: device mesh shape and logical-axis rules.
      log_every: write training metrics (and check the loss is finite) every
        this many steps; the first and the last step are always logged.
      eval_every: evaluate every this many steps (and at the end); 0 = only at
        the end. Needs ``eval_batches_fn``.
      checkpoint_every: save every this many steps (and at the end, and on
        SIGTERM/SIGINT).
      keep_checkpoints: number of most recent checkpoints kept.
      async_checkpointing: write checkpoints in a background thread.
      progress_bar: show a tqdm bar (process 0 only).
      preemption_sync_every: in a multi-process job, agree on a pending
        SIGTERM every this many steps (a tiny all-gather; each process may get
        the signal at a different step).
      updates_per_step: optimizer updates per step on the step's batch (online
        stages: updates per prepared round); the schedule counts updates.
    """

    num_steps: int = 120
    seed: int = 0
    optim: optim.OptimConfig = optim.OptimConfig()
    mesh: sharding.MeshConfig = sharding.MeshConfig()
    log_every: int = 10
    eval_every: int = 60
    checkpoint_every: int = 40
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    progress_bar: bool = True
    preemption_sync_every: int = 10
    updates_per_step: int = 1

    @property
    def num_updates(self) -> int:
        """Optimizer updates of the whole run (the learning-rate schedule's length)."""
        return self.num_steps * self.updates_per_step

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first impossible field."""
        positive = ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "preemption_sync_every",
                    "updates_per_step")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"TrainConfig.eval_every must be >= 0, got {self.eval_every}")
        self.optim.validate()


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """What a stage trains: its functions and the pytrees they take (contracts in the module docstring).

    Attributes:
      loss_fn: ``(params, batch, rng, frozen) -> (loss, metrics)``.
      init_params_fn: ``rng -> params``.
      eval_fn: held-out metrics; None: :func:`dpa_omf.train.step.loss_as_eval_fn` of ``loss_fn``.
      prepare_fn: online stages: prepares each step's data with the current params; None: the batch as loaded.
      frozen: a frozen pytree for every call (e.g. the reference's params), or None.
      initial_params: start from these params instead of ``init_params_fn``'s, or None.
    """

    loss_fn: LossFn
    init_params_fn: Callable[[jax.Array], PyTree]
    eval_fn: EvalFn | None = None
    prepare_fn: step_lib.PrepareFn | None = None
    frozen: PyTree = None
    initial_params: PyTree | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Reporting:
    """What a run reports besides its training metrics (contracts in the module docstring).

    Attributes:
      eval_batches_fn: ``() -> iterable`` of process-local held-out batches; None: no held-out batches.
      extra_eval: ``params -> metrics`` added to every evaluation, or None.
      hooks: ``hook(step, state)`` after every step.
      summary_extra: the stage's own summary.json figures (a mapping or a function of the loop's summary), or None.
    """

    eval_batches_fn: Callable[[], Iterable[PyTree]] | None = None
    extra_eval: Callable[[PyTree], Mapping[str, float]] | None = None
    hooks: Sequence[Hook] = ()
    summary_extra: Mapping[str, Any] | Callable[[dict[str, Any]], Mapping[str, Any]] | None = None


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Mesh, shardings and compiled step functions for one loss and model.

    Build order follows "shapes first": ``jax.eval_shape`` of the state, then
    its shardings, then the state built (or restored) directly in that layout.

    Args:
      objective: what is trained (:class:`Objective`).
      config: the loop config.
      mesh: the device mesh; default: ``config.mesh`` over all devices.
    """

    def __init__(self, objective: Objective, config: TrainConfig, *, mesh: Mesh | None = None):
        config.validate()
        loss_fn, init_params_fn, initial_params = objective.loss_fn, objective.init_params_fn, objective.initial_params
        self.config = config
        self.mesh = mesh if mesh is not None else sharding.mesh_from_config(config.mesh)
        self.tx, self.schedule = optim.make_optimizer(config.optim, config.num_updates)
        self.rng = jax.random.key(config.seed)
        rules = config.mesh.rules

        # Shapes first.
        boxed = jax.eval_shape(init_params_fn, self.rng) if initial_params is None else initial_params
        p_shardings = sharding.param_shardings(boxed, self.mesh, rules)
        abstract_params = jax.eval_shape(sharding.unbox, boxed)
        repl = sharding.replicated(self.mesh)
        self.state_shardings = TrainState(
            step=repl,
            params=p_shardings,
            opt_state=sharding.opt_state_shardings(self.tx, abstract_params, p_shardings, self.mesh),
            rng=repl,
            data_index=repl,
        )
        self._initial_params = None
        if initial_params is not None:
            self._initial_params = jax.device_put(sharding.unbox(initial_params), p_shardings)
        init_fn = functools.partial(step_lib.init_state, init_params_fn, self.tx)
        self.abstract_state = sharding.with_shardings(
            jax.eval_shape(init_fn, self.rng, self._initial_params), self.state_shardings
        )
        self.frozen, frozen_shardings = _place_frozen(objective.frozen, self.mesh, rules)
        batch_sh = sharding.batch_sharding(self.mesh)

        # Then the compiled functions, every layout fixed.
        self._init = jax.jit(init_fn, out_shardings=self.state_shardings)
        self._train_step = jax.jit(
            functools.partial(step_lib.train_step, loss_fn, self.tx, prepare_fn=objective.prepare_fn,
                              updates=config.updates_per_step),
            in_shardings=(self.state_shardings, batch_sh, frozen_shardings),
            out_shardings=(self.state_shardings, repl),
            donate_argnums=(0,),
        )
        self._eval_step = jax.jit(
            functools.partial(step_lib.eval_step, objective.eval_fn or step_lib.loss_as_eval_fn(loss_fn)),
            in_shardings=(p_shardings, batch_sh, repl, frozen_shardings),
            out_shardings=repl,
        )

    def init(self) -> TrainState:
        """A fresh state, created directly with its shardings."""
        return self._init(self.rng, self._initial_params)

    def restore(self, ckpt: checkpointing.Checkpointer, step: int | None = None) -> TrainState:
        """The checkpointed state, restored into the same shardings as :meth:`init`."""
        return TrainState.from_items(ckpt.restore(self.abstract_state.to_items(), step))

    def step(self, state: TrainState, local_batch: PyTree) -> tuple[TrainState, dict]:
        """One update from this process's share of the batch. ``state`` is donated."""
        return self._train_step(state, sharding.global_batch(local_batch, self.mesh), self.frozen)

    def evaluate(self, params: PyTree, local_batches: Iterable[PyTree]) -> dict[str, float]:
        """Metrics over held-out batches: sums and counts added, divided once.

        Batch ``i`` gets the rng ``fold_in(key(seed + 1), i)``, the same at every
        evaluation, so evaluations differ only through the params.
        """
        eval_rng = jax.random.key(self.config.seed + 1)
        total = None
        for i, local in enumerate(local_batches):
            batch = sharding.global_batch(local, self.mesh)
            m = self._eval_step(params, batch, jax.random.fold_in(eval_rng, i), self.frozen)
            total = m if total is None else jax.tree.map(jnp.add, total, m)
        if total is None:
            raise ValueError("evaluate: eval_batches_fn gave no batches")
        return step_lib.reduce_pairs(total)

    def lower_step(self, global_batch_shapes: PyTree) -> jax.stages.Lowered:
        """Lowers the train step for ahead-of-time compilation (memory analysis).

        Args:
          global_batch_shapes: pytree of ``jax.ShapeDtypeStruct`` of the
            *global* batch.
        """
        batch_sh = sharding.batch_sharding(self.mesh)
        batch_shardings = jax.tree.map(lambda _: batch_sh, global_batch_shapes)
        batch = sharding.with_shardings(global_batch_shapes, batch_shardings)
        return self._train_step.lower(self.abstract_state, batch, self.frozen)


def _place_frozen(frozen: PyTree, mesh: Mesh, rules) -> tuple[PyTree, PyTree]:
    """Puts the frozen pytree on the mesh once; keeps a NamedSharding already on this mesh."""
    if frozen is None:
        return None, None
    shardings = sharding.param_shardings(frozen, mesh, rules)
    frozen = sharding.unbox(frozen)

    def keep_if_on_mesh(x, s):
        on_mesh = isinstance(x, jax.Array) and isinstance(x.sharding, jax.sharding.NamedSharding)
        return x.sharding if on_mesh and x.sharding.mesh == mesh else s

    shardings = jax.tree.map(keep_if_on_mesh, frozen, shardings)
    return jax.device_put(frozen, shardings), shardings


# ----------------------------------------------------------------------------- loop


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      state: the final state (or the state saved at preemption).
      status: ``"completed"`` or ``"preempted"``.
      summary: the figures written to summary.json (empty when preempted).
    """

    state: TrainState
    status: str
    summary: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """0 when completed, ``checkpointing.EXIT_PREEMPTED`` (75) when preempted."""
        return 0 if self.status == COMPLETED else checkpointing.EXIT_PREEMPTED


class _LossWatch:
    """Keeps the step losses since the last check as device scalars (no sync per step)."""

    def __init__(self, stage: str):
        self.stage = stage
        self._pending: list[tuple[int, jax.Array]] = []

    def add(self, step: int, loss_pair) -> None:
        self._pending.append((step, loss_pair[0]))

    def check(self) -> None:
        """Raises :class:`NonFiniteLossError` naming the first bad step since the last check."""
        values = jax.device_get([v for _, v in self._pending])
        for (step, _), v in zip(self._pending, values):
            if not np.isfinite(v):
                raise NonFiniteLossError(step, float(v), self.stage)
        self._pending.clear()


def _stop_requested(flag: checkpointing.PreemptionFlag, ckpt, step: int, config: TrainConfig) -> bool:
    if jax.process_count() == 1:
        return flag.is_set()
    # Every process must stop at the same step, or the collective save hangs.
    stop = False
    if step % config.preemption_sync_every == 0:
        stop = bool(np.any(multihost_utils.process_allgather(np.int32(flag.is_set()))))
    return stop or ckpt.reached_preemption(step)


def _evaluator(trainer: Trainer, reporting: Reporting) -> Callable[[PyTree], dict[str, float]] | None:
    """``params -> metrics``: the held-out batches' metrics and ``extra_eval``'s (None: no evaluation)."""
    eval_batches_fn, extra_eval = reporting.eval_batches_fn, reporting.extra_eval
    if eval_batches_fn is None and extra_eval is None:
        return None

    def evaluate(params):
        m = dict(trainer.evaluate(params, eval_batches_fn())) if eval_batches_fn is not None else {}
        return {**m, **(extra_eval(params) if extra_eval is not None else {})}

    return evaluate


def _restore_or_init(trainer: Trainer, ckpt: checkpointing.Checkpointer, stage_name: str) -> tuple[TrainState, int]:
    """The latest checkpointed state and its step, else a fresh state at step 0 (both sharded)."""
    start = ckpt.latest_step()
    if start is None:
        return trainer.init(), 0
    state = trainer.restore(ckpt, start)
    log.info("%s: resumed from step %d", stage_name, start)
    return state, start


def _run_steps(trainer: Trainer, ckpt: checkpointing.Checkpointer, logger: stage_log.StageLogger,
               state: TrainState, start: int, batches: Iterator[PyTree], flag: checkpointing.PreemptionFlag,
               hooks: Sequence[Hook], evaluate: Callable[[PyTree], dict[str, float]] | None,
               stage_name: str, data_start: int) -> tuple[TrainState, int, str, dict[str, float]]:
    """The loop of :func:`train`: steps from ``start``, each followed by its log, hooks, evaluation, checkpoint.

    Returns ``(state, step, status, eval_metrics)``: the last state, its step,
    ``COMPLETED`` or ``PREEMPTED``, and the last evaluation's metrics (``{}``: none).
    """
    config = trainer.config
    watch = _LossWatch(stage_name)
    eval_metrics: dict[str, float] = {}
    step = start
    t_log, step_log = time.perf_counter(), step
    while step < config.num_steps:
        # -- one step
        try:
            local_batch = next(batches)
        except StopIteration:
            raise RuntimeError(
                f"{stage_name}: batch iterator ended at step {step} (started at batch {data_start})"
            ) from None
        state, metrics = trainer.step(state, local_batch)
        step += 1
        watch.add(step, metrics["loss"])
        logger.advance()
        last = step == config.num_steps

        # -- log (syncs with the device: only every log_every steps)
        if step % config.log_every == 0 or last or step == start + 1:
            watch.check()
            values = step_lib.reduce_pairs(metrics)
            now = time.perf_counter()
            values["lr"] = float(trainer.schedule(step * config.updates_per_step - 1))  # the step's last update
            # Host wall time over the interval (the first one includes compilation).
            values["steps_per_s"] = (step - step_log) / max(now - t_log, 1e-9)
            t_log, step_log = now, step
            logger.log(step, values)

        for hook in hooks:
            hook(step, state)
        stop = _stop_requested(flag, ckpt, step, config)

        # -- evaluate
        eval_due = last or (config.eval_every and step % config.eval_every == 0)
        if evaluate is not None and not stop and eval_due:
            eval_metrics = {f"eval_{k}": v for k, v in evaluate(state.params).items()}
            logger.log(step, eval_metrics, prefix="eval")
            if step_log == step:
                t_log = time.perf_counter()  # keep evaluation out of the step rate

        # -- checkpoint
        if stop or last or step % config.checkpoint_every == 0:
            watch.check()  # never checkpoint a NaN state
            ckpt.save(step, state.to_items())
        if stop:
            log.warning("%s: preempted; saved step %d, exit code %d", stage_name, step,
                        checkpointing.EXIT_PREEMPTED)
            return state, step, PREEMPTED, eval_metrics
    return state, step, COMPLETED, eval_metrics


def _summary(stage_name: str, step: int, start: int, eval_metrics: Mapping[str, float],
             records: Sequence[Mapping[str, Any]], seconds: float, mesh: Mesh, summary_extra) -> dict[str, Any]:
    """The figures of a completed run (summary.json), the stage's own ``summary_extra`` added."""
    losses = [r["loss"] for r in records if "loss" in r]
    summary = {
        "stage": stage_name,
        "steps": step,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        **eval_metrics,
        "resumed_from_step": start,
        "wall_time_s": seconds,
        "num_devices": mesh.size,
        "mesh": dict(mesh.shape),
        "process_count": jax.process_count(),
    }
    if summary_extra is not None:
        summary.update(summary_extra(dict(summary)) if callable(summary_extra) else summary_extra)
    return summary


def train(objective: Objective, batch_iterator_factory: Callable[[int], Iterable[PyTree]], config: TrainConfig,
          workdir: str | pathlib.Path, stage_name: str, *, reporting: Reporting = Reporting(),
          mesh: Mesh | None = None) -> TrainResult:
    """Trains ``objective`` for ``config.num_steps`` steps, resuming from ``WORKDIR/<stage>/checkpoints``.

    See the module docstring for the contracts of ``objective``, the batches and ``reporting``.
    ``mesh``: the device mesh; default: ``config.mesh`` over all devices.

    Returns:
      A :class:`TrainResult`; on SIGTERM/SIGINT the state is saved at the
      current step and the result has status ``"preempted"``: the caller
      should exit with ``result.exit_code`` and run the same command again.

    Raises:
      NonFiniteLossError: the loss became NaN/inf (nothing past the last finite check is saved).
      RuntimeError: the batch iterator ran out.
    """
    t_start = time.perf_counter()
    stage_dir = pathlib.Path(workdir) / stage_name

    # -- mesh, model, shardings, compiled steps
    trainer = Trainer(objective, config, mesh=mesh)

    # -- state: restore if a checkpoint exists, else build it sharded
    ckpt = checkpointing.Checkpointer(stage_dir / "checkpoints", keep=config.keep_checkpoints,
                                      async_save=config.async_checkpointing)
    state, start = _restore_or_init(trainer, ckpt, stage_name)
    data_start = int(jax.device_get(state.data_index))

    # -- the steps, each followed by its log, hooks, evaluation and checkpoint
    logger = stage_log.StageLogger(stage_dir, total_steps=config.num_steps, initial_step=start,
                                       progress_bar=config.progress_bar)
    evaluate = _evaluator(trainer, reporting)
    batches = None
    try:
        with checkpointing.PreemptionFlag() as flag:
            batches = iter(batch_iterator_factory(data_start))
            state, step, status, eval_metrics = _run_steps(trainer, ckpt, logger, state, start, batches, flag,
                                                           reporting.hooks, evaluate, stage_name, data_start)
        ckpt.wait()
    finally:
        ckpt.close()
        logger.close()
        if hasattr(batches, "close"):
            batches.close()  # stop a prefetching pipeline's worker thread

    # -- summary.json, only when completed (its presence means "stage done")
    summary: dict[str, Any] = {}
    if status == COMPLETED:
        if evaluate is not None and not eval_metrics:
            # Nothing left to train (resumed at the end): evaluate the final params.
            eval_metrics = {f"eval_{k}": v for k, v in evaluate(state.params).items()}
        summary = _summary(stage_name, step, start, eval_metrics, logger.records, time.perf_counter() - t_start,
                           trainer.mesh, reporting.summary_extra)
        logger.write_summary(summary)
    return TrainResult(state=state, status=status, summary=summary)

"""The pretraining job: next-token prediction of the reference MotionLM.

  python -m dpa_omf.launch --config=configs/pretrain.py[:smoke|:womd] --workdir=DIR

Reads top to bottom as :func:`run`: config checks against the devices, the
data stage (generated once into ``WORKDIR/data`` for the synthetic source),
the model, the per-process input pipelines (train: shuffled, repeating,
restartable at any batch index; valid: the same first batches every time),
then the shared sharded loop (:func:`dpa_omf.train.loop.train`), which owns
mesh, state, checkpoints, resume, preemption and logging.

Outputs in ``WORKDIR/pretrain/``: ``checkpoints/`` (orbax: ``params`` and
``train`` items), ``metrics.jsonl``, TensorBoard events, and ``summary.json``
(written last, by process 0 only) with ``first_loss``, ``final_loss``,
``eval_loss``, ``eval_nll`` (= ``eval_nll_per_token``, nats per valid
agent-token), ``eval_accuracy``, ``steps``, ``seconds``, ``param_count``,
``config_fingerprint``.

The ConfigDict -> frozen dataclass conversions of the shared sections
(``tokenizer_config``, ``model_config``, ``optim_config``, ``mesh_config``,
``train_config``, ``pipeline_config``) live here and are reused by the later
stages, so every stage builds the same model from the same config.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from configs import common
from dpa_omf import datatypes as dt
from dpa_omf.jobs import stages
from dpa_omf.jobs import data as data_job
from dpa_omf.io import pipeline as pipe
from dpa_omf.model import encoder as enc
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import tokenizer as tok
from dpa_omf.train import checkpointing, loop, optim, sharding

log = logging.getLogger(__name__)

STAGE = "pretrain"


# ----------------------------------------------------------------------------- config boundary


def tokenizer_config(c: ml_collections.ConfigDict) -> tok.TokenizerConfig:
    return tok.TokenizerConfig(**c.tokenizer.to_dict())


def model_config(c: ml_collections.ConfigDict) -> mlm.ModelConfig:
    m = c.model.to_dict()
    encoder = enc.EncoderConfig(**m.pop("encoder"))
    return mlm.ModelConfig(**m, encoder=encoder, tokenizer=tokenizer_config(c))


def optim_config(c: ml_collections.ConfigDict) -> optim.OptimConfig:
    return optim.OptimConfig(**c.pretrain.optim.to_dict())


def mesh_config(c: ml_collections.ConfigDict) -> sharding.MeshConfig:
    return sharding.MeshConfig(data=c.mesh.data)


def train_config(c: ml_collections.ConfigDict) -> loop.TrainConfig:
    p = c.pretrain
    return loop.TrainConfig(
        num_steps=p.num_steps, seed=c.seed, optim=optim_config(c), mesh=mesh_config(c),
        log_every=p.log_every, eval_every=p.eval_every, checkpoint_every=p.checkpoint_every,
        keep_checkpoints=p.keep_checkpoints, async_checkpointing=p.async_checkpointing,
        progress_bar=p.progress_bar,
    )


def pipeline_config(c: ml_collections.ConfigDict, workdir: str, split: str,
                    process_count: int) -> pipe.PipelineConfig:
    """This process's pipeline of a split: ``batch_size`` = global batch / process count."""
    train = split == "train"
    return pipe.PipelineConfig(
        file_patterns=(data_job.split_pattern(c, workdir, split),),
        batch_size=c.pretrain.batch_size // process_count,
        max_agents=c.data.num_agents,
        max_roadgraph_points=c.data.num_roadgraph_points,
        shuffle=train and c.pretrain.shuffle,
        seed=c.seed,
        num_epochs=None,  # repeat; evaluation takes a fixed number of batches
        prefetch=c.pretrain.prefetch if train else 0,
    )


# ----------------------------------------------------------------------------- model pieces


def example_scenario(c: ml_collections.ConfigDict, batch: int = 1) -> dt.Scenario:
    """An all-invalid numpy Scenario batch ``[batch, ...]`` of the configured sizes (init template)."""
    one = dt.empty_scenario(c.data.num_agents, c.data.num_roadgraph_points)
    return jax.tree.map(lambda x: np.broadcast_to(x, (batch,) + x.shape), one)


def global_batch_shapes(c: ml_collections.ConfigDict) -> dt.Scenario:
    """``jax.ShapeDtypeStruct`` tree of one global training batch (no data read)."""
    one = dt.empty_scenario(c.data.num_agents, c.data.num_roadgraph_points)
    b = c.pretrain.batch_size
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((b,) + x.shape, jax.dtypes.canonicalize_dtype(x.dtype)), one)


def make_loss_fn(model: mlm.MotionLM) -> loop.LossFn:
    """Teacher-forced next-token cross-entropy over the valid agent-steps of a global batch.

    The logged futures are tokenized inside the step (greedy tokenizer, pure JAX,
    no gradient flows through it: it reads only the batch). Returns the mean NLL
    per valid token and masked sums: ``nll`` and ``accuracy`` as (sum, count).
    """

    def loss_fn(params, batch: dt.Scenario, rng, frozen):
        del rng, frozen
        tokens, token_valid = mlm.tokenize_scenario(batch, model.config.tokenizer)
        loss, m = model.loss_and_metrics(params, batch, tokens, token_valid)
        return loss, {"nll": (m["nll_sum"], m["count"]), "accuracy": (m["correct_sum"], m["count"]),
                      "valid_tokens": m["count"]}

    return loss_fn


def make_init_fn(model: mlm.MotionLM, c: ml_collections.ConfigDict) -> Callable[[jax.Array], Any]:
    example = example_scenario(c)
    return lambda rng: model.init(rng, example)


def abstract_params(c: ml_collections.ConfigDict) -> Any:
    """The model's parameter shapes (``ShapeDtypeStruct`` tree), without allocating them."""
    model = mlm.MotionLM(model_config(c))
    return jax.eval_shape(make_init_fn(model, c), jax.random.key(c.seed))


def load_params(c: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None = None,
                step: int | None = None) -> tuple[mlm.MotionLM, Any]:
    """The pretrained (reference) model and its params, replicated on ``mesh`` (default: all devices)."""
    model = mlm.MotionLM(model_config(c))
    mesh = mesh if mesh is not None else sharding.mesh_from_config(mesh_config(c))
    shapes = abstract_params(c)
    target = sharding.with_shardings(shapes, sharding.param_shardings(shapes, mesh, mesh_config(c).rules))
    params = checkpointing.restore_params(stages.stage_dir(workdir, STAGE) / "checkpoints", target, step)
    return model, params


# ----------------------------------------------------------------------------- data


def ensure_data(c: ml_collections.ConfigDict, workdir: str) -> None:
    """Runs the data stage on process 0 if it is missing; every process then checks it sees it.

    A multi-host job needs a workdir every process can read (a shared file
    system or a bucket); the other processes wait at a barrier meanwhile.
    """
    if jax.process_index() == 0:
        stages.ensure("data", c, workdir, data_job.run)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("dpa_omf:data_stage")
        if not stages.is_done(workdir, "data", c):
            raise RuntimeError(f"process {jax.process_index()} does not see the data stage in "
                               f"{stages.stage_dir(workdir, 'data')}: the workdir must be shared")


def train_batches(c: ml_collections.ConfigDict, workdir: str) -> Callable[[int], pipe.ScenarioPipeline]:
    """``start -> pipeline`` of this process's training batches from batch index ``start``.

    Process i of n reads every n-th record of each epoch's shuffled order, so the
    n local batches of step k together hold exactly the records of the
    one-process global batch k: the loss curve does not depend on the process count.
    """
    config = pipeline_config(c, workdir, "train", jax.process_count())

    def factory(start: int) -> pipe.ScenarioPipeline:
        pipeline = pipe.ScenarioPipeline(config)
        pipeline.skip(start)
        return pipeline

    return factory


def eval_batches(c: ml_collections.ConfigDict, workdir: str) -> Callable[[], Iterator[dt.Scenario]]:
    """``() -> iterator`` of this process's held-out batches: the first ``eval_batches`` of the file order.

    Each batch is a numpy Scenario ``[batch_size / process_count, A, ...]``;
    the files are indexed once here and the batches re-read at each evaluation
    (WOMD-sized held-out sets do not fit in host memory).
    """
    pipeline = pipe.ScenarioPipeline(pipeline_config(c, workdir, "valid", jax.process_count()))
    n = c.pretrain.eval_batches
    if n * pipeline.config.batch_size > pipeline.records_per_process:
        log.warning("pretrain: %d eval batches of %d need more than the %d held-out records per process; "
                    "some scenes count more than once", n, pipeline.config.batch_size,
                    pipeline.records_per_process)
    return lambda: (pipeline.make_batch(k) for k in range(n))


# ----------------------------------------------------------------------------- job


def run(config: ml_collections.ConfigDict, workdir: str, *, hooks: Sequence[loop.Hook] = ()) -> int:
    """Pretrains into ``WORKDIR/pretrain``; returns 0 when done, 75 when preempted (saved; rerun)."""
    t0 = time.time()
    # -- checks: the config against the devices and processes, before any compute
    common.check_config(config, jax.device_count(), jax.process_count())
    if stages.is_done(workdir, STAGE, config):
        log.info("pretrain: finished earlier in %s", stages.stage_dir(workdir, STAGE))
        return 0

    # -- data
    ensure_data(config, workdir)

    # -- model
    model = mlm.MotionLM(model_config(config))
    init_fn = make_init_fn(model, config)
    num_params = mlm.param_count(jax.eval_shape(init_fn, jax.random.key(config.seed)))
    log.info("pretrain: MotionLM with %d parameters, %d agents, %s compute", num_params,
             config.data.num_agents, config.model.compute_dtype)
    fingerprint = stages.fingerprint(config, stages.DEPENDS_ON[STAGE])

    def summary_extra(summary: dict) -> dict:
        nll = summary.get("eval_nll")
        return {
            "config_fingerprint": fingerprint,
            "param_count": num_params,
            "seconds": time.time() - t0,  # the whole job, data stage and compilation included
            "batch_size": config.pretrain.batch_size,
            "num_agents": config.data.num_agents,
            "eval_nll_per_token": nll,
            "eval_perplexity": math.exp(nll) if nll is not None and math.isfinite(nll) else None,
        }

    # -- train (mesh, sharded state, resume, preemption, logs: the shared loop)
    result = loop.train(
        make_loss_fn(model), init_fn, train_batches(config, workdir), train_config(config), workdir, STAGE,
        eval_batches_fn=eval_batches(config, workdir), hooks=hooks, summary_extra=summary_extra,
    )
    if result.summary:
        log.info("pretrain: %s", json.dumps(result.summary, default=str))
    return result.exit_code

"""The pretraining job: next-token prediction of the reference MotionLM.

  python -m dpa_omf.launch --config=configs/pretrain.py[:smoke|:womd|:long] --workdir=DIR

Reads top to bottom as :func:`run`: config checks against the devices, the
model, the per-process input pipelines (train: shuffled, repeating,
restartable at any batch index; valid: the same first batches every time),
then the shared sharded loop (:func:`dpa_omf.train.loop.train`), which owns
mesh, state, checkpoints, resume, preemption and logging. The data stage runs
first (the stage graph, ``jobs/stages.py``).

The packaged reference: ``dpa_omf/assets/reference/`` ships converged
parameters for the embedded default (``manifest.json``: how they were made,
held-out NLL, realism; ``checkpoints/``: the params-only orbax checkpoint). With
``pretrain.packaged`` (the default) and a config whose data slots, tokenizer and
model match the manifest, the stage installs that checkpoint instead of
training; any mismatch trains from scratch and says why in one line.

Outputs in ``WORKDIR/pretrain/``: ``checkpoints/`` (orbax: ``params`` and
``train`` items), ``metrics.jsonl``, TensorBoard events, and ``summary.json``
(written last, by process 0 only) with ``first_loss``, ``final_loss``,
``eval_loss``, ``eval_nll`` (= ``eval_nll_per_token``, nats per valid
agent-token), ``eval_accuracy``, ``steps``, ``seconds``, ``param_count``,
``config_fingerprint``.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.io import pipeline as pipe
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import prepare, realism_eval
from dpa_omf.jobs import workdir as wd
from dpa_omf.model import motion_lm as mlm
from dpa_omf.train import checkpointing, loop, sharding

log = logging.getLogger(__name__)

STAGE = "pretrain"
PACKAGED = pathlib.Path(__file__).resolve().parents[1] / "assets" / "reference"


# ----------------------------------------------------------------------------- model pieces


def example_scenario(c: ml_collections.ConfigDict, batch: int = 1) -> dt.Scenario:
    """An all-invalid numpy Scenario batch ``[batch, ...]`` of the configured sizes (init template)."""
    one = dt.empty_scenario(c.data.num_agents, c.data.max_roadgraph_points)
    return jax.tree.map(lambda x: np.broadcast_to(x, (batch,) + x.shape), one)


def global_batch_shapes(c: ml_collections.ConfigDict) -> dt.Scenario:
    """``jax.ShapeDtypeStruct`` tree of one global training batch (no data read)."""
    one = dt.empty_scenario(c.data.num_agents, c.data.max_roadgraph_points)
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
    model = mlm.MotionLM(cfg_lib.model(c))
    return jax.eval_shape(make_init_fn(model, c), jax.random.key(c.seed))


def load_params(c: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None = None,
                step: int | None = None) -> tuple[mlm.MotionLM, Any]:
    """The pretrained (reference) model and its params, replicated on ``mesh`` (default: all devices)."""
    model = mlm.MotionLM(cfg_lib.model(c))
    mesh = mesh if mesh is not None else sharding.mesh_from_config(cfg_lib.mesh(c))
    params = checkpointing.restore_params(wd.stage_dir(workdir, STAGE) / "checkpoints", params_target(c, mesh), step)
    return model, params


def params_target(c: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Any:
    """What a checkpoint's params restore into: their shapes with their shardings on ``mesh``."""
    shapes = abstract_params(c)
    return sharding.with_shardings(shapes, sharding.param_shardings(shapes, mesh, cfg_lib.mesh(c).rules))


# ----------------------------------------------------------------------------- data


def _pipeline_config(c: ml_collections.ConfigDict, workdir: str, split: str) -> pipe.PipelineConfig:
    """The split's pipeline: the prepare stage's files when it ran for these slots, else the raw shards."""
    return cfg_lib.pipeline(c, tuple(prepare.split_files_or_raw(c, workdir, split)), split == "train",
                            jax.process_count())


def train_batches(c: ml_collections.ConfigDict, workdir: str) -> Callable[[int], pipe.ScenarioPipeline]:
    """``start -> pipeline`` of this process's training batches from batch index ``start``.

    Process i of n reads every n-th record of each epoch's shuffled order, so the
    n local batches of step k together hold exactly the records of the
    one-process global batch k: the loss curve does not depend on the process count.
    """
    config = _pipeline_config(c, workdir, "train")

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
    pipeline = pipe.ScenarioPipeline(_pipeline_config(c, workdir, "valid"))
    n = c.pretrain.eval_batches
    if n * pipeline.config.batch_size > pipeline.records_per_process:
        log.warning("pretrain: %d eval batches of %d need more than the %d held-out records per process; "
                    "some scenes count more than once", n, pipeline.config.batch_size,
                    pipeline.records_per_process)
    return lambda: (pipeline.make_batch(k) for k in range(n))


# ----------------------------------------------------------------------------- the packaged reference


def compatibility(c: ml_collections.ConfigDict) -> dict:
    """What a reference's parameters depend on beyond training: the world, the slots, tokenizer and model."""
    d = c.to_dict()
    return {"data": {k: d["data"][k] for k in ("source", "num_agents", "max_roadgraph_points")},
            "tokenizer": d["tokenizer"], "model": d["model"]}


def packaged_manifest() -> dict | None:
    return wd.read_json(PACKAGED / "manifest.json")


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}={y!r} (packaged: {x!r})")
    return out


def packaged_mismatch(c: ml_collections.ConfigDict) -> str | None:
    """Why the packaged reference does not serve this config, or None when it does."""
    if not c.pretrain.packaged:
        return "pretrain.packaged=False"
    manifest = packaged_manifest()
    if manifest is None:
        return f"no packaged reference in {PACKAGED}"
    diff = _differences(manifest["compatibility"], compatibility(c))
    return None if not diff else "this config differs from it: " + ", ".join(diff[:4]) + (
        f" (+{len(diff) - 4} more)" if len(diff) > 4 else "")


def needs(c: ml_collections.ConfigDict) -> tuple[str, ...]:
    """More prerequisites (the graph's ``more_needs``): the prepared scenes when a reference is trained here; the
    packaged reference reads no data."""
    return () if packaged_mismatch(c) is None else (prepare.STAGE,)


def packaged_id(c: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """The packaged reference's identity when it serves this config (the stage graph fingerprints it)."""
    del workdir
    if packaged_mismatch(c) is not None:
        return None
    m = packaged_manifest()
    return {"packaged": m["compatibility_fingerprint"], "steps": m["steps"]}


def install_packaged(workdir: str, fingerprint: str) -> int:
    """Copies the packaged params-only checkpoint into ``WORKDIR/pretrain`` and writes the summary."""
    m = packaged_manifest()
    out = wd.stage_dir(workdir, STAGE)
    if wd.is_writer():
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        shutil.copytree(PACKAGED / "checkpoints", out / "checkpoints")
    wd.barrier("packaged_reference")
    wd.say(f"[pretrain] packaged reference: {m['steps']} steps, held-out NLL {m['heldout_nll']:.3f}, composite "
           f"{m['realism']['composite']:.4f} (dpa_omf/assets/reference; --config.pretrain.packaged=False trains "
           "from scratch)")
    wd.write_summary(workdir, STAGE, {
        "source": "packaged", "steps": m["steps"], "eval_nll": m["heldout_nll"], "eval_nll_per_token": m["heldout_nll"],
        "eval_accuracy": m.get("heldout_accuracy"), "manifest": m, "config_fingerprint": fingerprint})
    return 0


# ----------------------------------------------------------------------------- job


def run(config: ml_collections.ConfigDict, workdir: str, fingerprint: str, *,
        hooks: Sequence[loop.Hook] = ()) -> int:
    """Pretrains into ``WORKDIR/pretrain``; returns 0 when done, 75 when preempted (saved; rerun)."""
    t0 = time.time()
    # -- the config was checked by the launcher (against the devices and processes too), before any compute
    why_not = packaged_mismatch(config)
    if why_not is None:
        return install_packaged(workdir, fingerprint)
    if config.pretrain.packaged:
        wd.say(f"[pretrain] training from scratch: the packaged reference does not serve this config ({why_not})")

    # -- model
    model = mlm.MotionLM(cfg_lib.model(config))
    init_fn = make_init_fn(model, config)
    num_params = mlm.param_count(jax.eval_shape(init_fn, jax.random.key(config.seed)))
    log.info("pretrain: MotionLM with %d parameters, %d agents, %s compute", num_params,
             config.data.num_agents, config.model.compute_dtype)

    def summary_extra(summary: dict) -> dict:
        nll = summary.get("eval_nll")
        return {
            "config_fingerprint": fingerprint,
            "param_count": num_params,
            "seconds": time.time() - t0,  # the whole job, compilation included
            "batch_size": config.pretrain.batch_size,
            "num_agents": config.data.num_agents,
            "eval_nll_per_token": nll,
            "eval_perplexity": math.exp(nll) if nll is not None and math.isfinite(nll) else None,
        }

    # -- train (mesh, sharded state, resume, preemption, logs: the shared loop)
    reporting = loop.Reporting(eval_batches_fn=eval_batches(config, workdir),
                               extra_eval=realism_eval.training_realism(config, workdir, "pretrain"), hooks=hooks,
                               summary_extra=summary_extra)
    result = loop.train(loop.Objective(make_loss_fn(model), init_fn), train_batches(config, workdir),
                        cfg_lib.pretrain_train(config), workdir, STAGE, reporting=reporting)
    if result.summary:
        log.info("pretrain: %s", json.dumps(result.summary, default=str))
    return result.exit_code

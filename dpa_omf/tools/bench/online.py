"""``bench online``: seconds per online DPA-OMF round, split into sampling, features, OT and update.

    python -m dpa_omf.bench online --json OUT [--config online] [--repeats 3] [--reference]

At the configured sizes (``configs/align.py:<config>``: ``align.batch_size``
scenes per round, ``align.online.num_rollouts`` rollouts each, the curate
section's features and solver, ``steps_per_round`` updates) on one device,
each part compiled alone (a warm-up call, under ``compile``) and timed ``--repeats`` times
(``timing.timed``; medians):

* ``sampling``: the round's rollouts (``sampling.sample`` vmapped over scenes);
* ``features``: ``curation.featurize_batch`` (sampling + features of rollouts
  and experts + ADE) minus ``sampling``;
* ``ot``: ``curation.rank_features`` (per-agent OT of every rollout, ranking,
  pairs; the exact host solver on a CPU);
* ``update``: the loop's compiled step on an already prepared round (the
  updates alone);
* ``round``: the loop's compiled online step (prepare + updates in one
  program), what a training step costs; ``parts_sum`` is the sum of the
  four parts, for comparison.

Scenes come from the configured synthetic world; parameters are the packaged
reference with ``--reference`` (when the config matches it), else a random
initialization (the sampling and update costs do not depend on the weights;
the OT cost depends a little on how spread the rollouts are).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource

import jax
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.configs import align as align_config
from dpa_omf.jobs import align, curate, pretrain
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling
from dpa_omf.preference import curation
from dpa_omf.synthetic import dataset as synthetic
from dpa_omf.tools.bench import timing
from dpa_omf.train import checkpointing, loop


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="online", help="variant of configs/align.py (online is added)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after compiling (median)")
    p.add_argument("--reference", action="store_true", help="use the packaged reference's parameters")


def run(args: argparse.Namespace) -> dict:
    variants = ",".join(sorted({v for v in args.config.split(",") if v} | {"online"}))
    c = align_config.get_config(variants)
    model = mlm.MotionLM(cfg_lib.model(c))
    params, source = pretrain.make_init_fn(model, c)(jax.random.key(0)), "random init"
    if args.reference:
        why_not = pretrain.packaged_mismatch(c)
        if why_not:
            raise SystemExit(f"bench online --reference: {why_not}")
        mesh1 = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
        params = checkpointing.restore_params(pretrain.PACKAGED / "checkpoints", pretrain.params_target(c, mesh1))
        source = "packaged reference"
    cfg = cfg_lib.align(c)
    ccfg, why = cfg_lib.online_curation(c, num_devices=1)
    b = c.align.batch_size
    world = cfg_lib.synthetic_world(c)
    scenes = dt.stack_scenarios([synthetic.generate_scenario(i, world) for i in range(b)])
    keys = jax.numpy.stack([curate.rollout_key(jax.random.key(c.seed), i, 0) for i in range(b)])
    reps = max(args.repeats, 1)

    sample = jax.jit(lambda p, s, k: jax.vmap(lambda sc, kk: sampling.sample(model, p, sc, kk, ccfg.rollout))(s, k))
    featurize = jax.jit(lambda p, s, k: curation.featurize_batch(model, p, s, k, ccfg))
    rank = jax.jit(lambda f: curation.rank_features(f, ccfg))
    out = {"config": variants, "params": source, "scenes_per_round": b, "rollouts_per_scene": ccfg.rollout.num_rollouts,
           "updates_per_round": c.align.online.steps_per_round, "loss": cfg.online.loss, "solver": ccfg.ot.solver,
           "solver_choice": why, "num_agents": c.data.num_agents, "device": jax.devices()[0].device_kind}
    t = timing.timed(lambda i: sample(params, scenes, keys), reps)
    out["sampling_s"], out["compile"] = t.median_s, {"sampling_s": t.warmup_s}
    t = timing.timed(lambda i: featurize(params, scenes, keys), reps)
    out["compile"]["featurize_s"] = t.warmup_s
    out["features_s"] = max(t.median_s - out["sampling_s"], 0.0)
    host_feats = jax.device_get(t.output)  # the job's exact host solver runs on the host copy, as in curation
    t = timing.timed(lambda i: rank(host_feats), reps)
    out["ot_s"], out["compile"]["ot_s"], ranked = t.median_s, t.warmup_s, t.output

    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    tcfg = dataclasses.replace(align.train_config(c), progress_bar=False)
    loss_fn = align.make_loss_fn(model, cfg)
    prepared = jax.device_get(dict(scenario=scenes, tokens=ranked["tokens"], distance=ranked["ot_distance"],
                                   preferred=ranked["preferred"], unpreferred=ranked["unpreferred"]))
    objective = loop.Objective(loss_fn, lambda r: params, frozen=params, initial_params=params)
    updates = loop.Trainer(objective, tcfg, mesh=mesh)
    rounds = loop.Trainer(dataclasses.replace(objective, prepare_fn=align.METHODS["online"].prepare(model, cfg, ccfg)),
                          tcfg, mesh=mesh)
    raw = dict(scenario=jax.device_get(scenes), keys=np.asarray(jax.device_get(jax.random.key_data(keys))))
    for name, trainer, batch in (("update", updates, prepared), ("round", rounds, raw)):
        state = trainer.init()

        def step(i, trainer=trainer, batch=batch):
            nonlocal state
            state, metrics = trainer.step(state, batch)
            return metrics

        t = timing.timed(step, reps)
        out[f"{name}_s"], out["compile"][f"{name}_s"] = t.median_s, t.warmup_s
    out["parts_sum_s"] = out["sampling_s"] + out["features_s"] + out["ot_s"] + out["update_s"]
    out["rollouts_per_s"] = b * ccfg.rollout.num_rollouts / out["round_s"]
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out

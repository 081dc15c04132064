"""Cheap diagnostics of the preference signal behind the alignment levers (issue 20), from a curated workdir.

    python -m dpa_omf.tools.preference_diagnostics --workdir=WORKDIR --out=FILE.json [--variant=V] [--scenes=8]

``--variant``: the ``configs/align.py`` variant the workdir was made with (its data, model, tokenizer,
features and curation settings). For the first ``--scenes`` curated rankings of ``WORKDIR/curate``, with the
reference of ``WORKDIR/pretrain``:

1. Agreement of the reference with the labels: the share of comparisons in which the reference already gives
   the better rollout the higher CPL score (lambda = 1; alpha does not change it), from the metrics of the
   alignment losses themselves (``train.losses``): scene credit on the curated (k-th closest, k-th farthest)
   pairs and on every ordered pair of the R rollouts; agent credit (each agent ranks by its own stored OT
   distance, shards with ``ot_agent_distance``) on the pairs' two sides and on every ordered pair; and agent
   credit restricted to the agents the realism metric evaluates.
2. What share of the OT cost each feature carries under each cost scaling (``curate.weight_mode`` /
   ``feature_scaling``): with the exact plan P of an agent, its cost sum_ij P_ij ||D_ij|| splits exactly into
   sum_k sum_ij P_ij D_ijk^2 / ||D_ij|| (D: the scaled feature differences), feature k's term over the cost,
   pooled over the scene's rollouts and counted agents, then averaged over scenes. The rollouts' states are
   re-integrated from their stored tokens (the sampler's kinematics), so they are the rollouts that were ranked.

Writes the figures as JSON to ``--out`` and prints them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.configs import align as align_config
from dpa_omf.io import reader
from dpa_omf.jobs import align_losses, curate, pretrain
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.model import tokenizer as tok
from dpa_omf.preference import distance as dist
from dpa_omf.preference import features as feat
from dpa_omf.train import losses

SCALINGS = {"scale (today)": dict(weight_mode="scale", feature_scaling="none"),
            "quadratic": dict(weight_mode="quadratic", feature_scaling="none"),
            "expert_std + scale": dict(weight_mode="scale", feature_scaling="expert_std")}


def agreement(lp: jax.Array, valid: jax.Array, shards: dict, row: int, eval_mask: np.ndarray) -> dict:
    """(agreeing comparisons, comparisons) of one scene's R rollouts ``lp, valid [R, A, S]`` per kind."""
    cpl = losses.CPLConfig(conservative_lambda=1.0)
    agent = dataclasses.replace(cpl, credit="agent")
    d = jnp.asarray(shards["ot_distance"][row], jnp.float32)[None]
    pairs = np.stack([shards["preferred"][row], shards["unpreferred"][row]], 1)  # [K, 2]
    out = {}

    def count(name, m):
        out[name] = (int(m["pref_accuracy_sum"]), int(m["pairs"]))

    count("scene_pairs", losses.ranked_cpl_loss(lp[pairs], valid[pairs], jnp.arange(2.0)[None].repeat(len(pairs), 0),
                                                cpl)[1])
    count("scene_all_ordered", losses.ranked_cpl_loss(lp[None], valid[None], d, cpl)[1])
    if "ot_agent_distance" in shards:
        da = jnp.asarray(shards["ot_agent_distance"][row], jnp.float32)
        counted = jnp.asarray(shards["ot_agent_counted"][row])
        count("agent_pairs", losses.ranked_cpl_loss(lp[pairs], valid[pairs], da[pairs], agent,
                                                    counted=counted[pairs])[1])
        count("agent_all_ordered", losses.ranked_cpl_loss(lp[None], valid[None], da[None], agent,
                                                          counted=counted[None])[1])
        ev = counted & jnp.asarray(eval_mask)[None]
        count("evaluated_agents_all_ordered", losses.ranked_cpl_loss(lp[None], valid[None], da[None], agent,
                                                                     counted=ev[None])[1])
    return out


def feature_costs(phi_r, valid_r, phi_e, valid_e, agents, cfg: dist.OTConfig) -> np.ndarray:
    """Per-feature terms ``[F]`` of the scene's OT cost, summed over rollouts and counted agents."""
    spread = dist.expert_spread(phi_e, valid_e, agents, cfg) if cfg.feature_scaling != "none" else None
    x = dist.scale_features(phi_r, cfg, spread)  # [R, A, T, F]
    y = dist.scale_features(phi_e, cfg, spread)  # [A, T, F]
    counted = dist.counted_agents(valid_r, valid_e, agents)  # [R, A]
    r, a, t, f = x.shape
    one = jnp.zeros([t], bool).at[0].set(True)
    vx = jnp.where(counted[..., None], valid_r, one).reshape(r * a, t)
    vy = jnp.where(counted[..., None], jnp.broadcast_to(valid_e, (r, a, t)), one).reshape(r * a, t)
    ys = jnp.broadcast_to(y, (r, a, t, f)).reshape(r * a, t, f)
    _, plans = dist.solve_plans(x.reshape(r * a, t, f), ys, vx, vy, dataclasses.replace(cfg, solver="exact_host"))
    diff = x.reshape(r * a, t, 1, f) - ys[:, None]  # [P, T, T, F]
    norm = jnp.sqrt(jnp.sum(diff * diff, -1, keepdims=True))
    terms = jnp.where(norm > 0, diff * diff / jnp.where(norm > 0, norm, 1.0), 0.0)
    per = jnp.einsum("pij,pijf->pf", plans, terms)
    return np.asarray(jnp.where(counted.reshape(-1, 1), per, 0.0).sum(0))


def diagnose(config, workdir: str, num_scenes: int) -> dict:
    model, params = pretrain.load_params(config, workdir)
    shards = curate.load_shards(workdir)
    store = reader.SceneReader([str(f) for f in shards["files"]], cfg_lib.reader(config))
    ccfg = cfg_lib.curation_config(config)
    tcfg = cfg_lib.tokenizer(config)
    log_probs = jax.jit(lambda p, s, q, v: align_losses.sequence_log_probs(model, p, s, q, v)[0])
    totals: dict[str, list[int]] = {}
    shares = {name: [] for name in SCALINGS}
    n = min(num_scenes, len(shards["tokens"]))
    for row in range(n):
        s = store.read(reader.Source(store.files[int(shards["file_index"][row])], int(shards["record_index"][row])))
        tokens = jnp.asarray(shards["tokens"][row], jnp.int32)  # [R, A, S]
        sim = np.asarray(s.agents.sim_mask, bool)
        valid = jnp.broadcast_to(jnp.asarray(sim)[None, :, None], tokens.shape)
        lp = log_probs(params, s, tokens, valid)
        eval_mask = shards["eval_mask"][row] if "eval_mask" in shards else np.asarray(s.agents.eval_mask) & sim
        for k, (good, total) in agreement(lp, valid, shards, row, eval_mask).items():
            acc = totals.setdefault(k, [0, 0])
            acc[0] += good
            acc[1] += total
        s0 = jax.tree.map(lambda v, r=tokens.shape[0]: jnp.broadcast_to(v, (r,) + v.shape),
                          tok.state_at(s.agents, dt.CURRENT_INDEX))
        states = tok.integrate(s0, tokens, tcfg)
        phi_r, valid_r = feat.rollout_features(s, states.x, states.y, states.heading, states.vel_x, states.vel_y,
                                               ccfg.features)
        phi_e, valid_e = feat.expert_features(s, ccfg.features)
        for name, kw in SCALINGS.items():
            c = feature_costs(phi_r, valid_r, phi_e, valid_e, jnp.asarray(sim),
                              dataclasses.replace(ccfg.ot, **kw))
            shares[name].append(c / max(c.sum(), 1e-12))
        print(f"scene {row + 1}/{n}", file=sys.stderr, flush=True)
    return {
        "scenes": n, "num_rollouts": int(shards["tokens"].shape[1]),
        "reference_agrees_with_label": {k: {"share": g / max(t, 1), "comparisons": t} for k, (g, t) in
                                        totals.items()},
        "ot_cost_share_by_feature": {name: dict(zip(dist.FEATURE_NAMES, np.mean(v, 0).round(4).tolist()))
                                     for name, v in shares.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dpa_omf.tools.preference_diagnostics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variant", default=None)
    p.add_argument("--scenes", type=int, default=8)
    a = p.parse_args(argv)
    result = diagnose(align_config.get_config(a.variant), a.workdir, a.scenes)
    pathlib.Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

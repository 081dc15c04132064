"""The align job: fine-tune the reference model on automatically ranked rollouts.

Methods (``align.method``):
  dpa_omf       multi-agent CPL on the OT-ranked pairs (16 closest vs 16 farthest).
  dpa_adef      the same on pairs ranked by ADE to the expert.
  sft_best_oa   supervised fine-tuning on the ``sft_top_k`` (32) closest rollouts by OT.
  sft_best_ade  the same by ADE.
  afd           adversarial feedback from demonstrations: the expert is preferred
                over every generated rollout.
  dpo           DPO on the OT pairs with the frozen reference (optional extra).

Every method trains with the shared sharded loop (``dpa_omf.train.loop``):
same mesh, checkpoints, resume, preemption and logs as pretraining. The
reference parameters are restored once from ``WORKDIR/pretrain/checkpoints``,
passed as the initial parameters and as the frozen pytree (KL, DPO), and never
re-saved. Outputs: ``WORKDIR/align/`` for DPA-OMF, ``WORKDIR/align_<method>/``
for the others.

A training example is one ranked scene: its scenario (re-read from the data
files by reference) and ``align.pairs_per_scene`` of its pairs (or sequences),
drawn deterministically from the step index. The scene is encoded once and the
2P sequences are decoded against that encoding.

Logged per evaluation on held-out rankings (the last ``align.heldout_fraction``
of the curated scenes, never trained on): preference classification accuracy
(S+ > S-), the mean NLL per token of preferred, unpreferred and expert
sequences, and KL(policy || reference) per token on the expert contexts.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dpa_omf import datatypes as dt
from dpa_omf.io import reader
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import curate, pretrain
from dpa_omf.jobs import workdir as wd
from dpa_omf.model import decoder as dec
from dpa_omf.model import motion_lm as mlm
from dpa_omf.train import loop, losses

PAIR_METHODS = ("dpa_omf", "dpa_adef", "dpo")
SFT_METHODS = cfg_lib.SFT_METHODS


def folder_name(method: str) -> str:
    """The workdir folder of an alignment method's stage: ``align`` (DPA-OMF) or ``align_<method>``."""
    return "align" if method == "dpa_omf" else f"align_{method}"


def finished_folders(workdir: str) -> dict[str, str]:
    """Every finished alignment stage in the workdir: method -> folder."""
    out = {}
    for method in cfg_lib.ALIGN_METHODS:
        folder = folder_name(method)
        if (wd.stage_dir(workdir, folder) / wd.SUMMARY).exists():
            out[method] = folder
    return out


# ----------------------------------------------------------------------------- examples
def side_indices(shards: dict, cfg: cfg_lib.AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rollout indices of the two sides of every ranking, ``[N, K]`` each.

    Pair methods: (preferred, unpreferred) by OT (stored) or by ADE (re-ranked).
    SFT: (the top-k, the top-k) (the second side is unused). AFD: (unused, the
    generated rollouts compared against the expert: every rollout).
    """
    if cfg.method in ("dpa_omf", "dpo"):
        return shards["preferred"], shards["unpreferred"]
    k = shards["preferred"].shape[1]
    if cfg.method == "dpa_adef":
        order = np.argsort(shards["ade_distance"], axis=1, kind="stable")
        return order[:, :k], order[:, ::-1][:, :k]
    if cfg.method in SFT_METHODS:
        key = "ot_distance" if cfg.method == "sft_best_oa" else "ade_distance"
        top = np.argsort(shards[key], axis=1, kind="stable")[:, :cfg.sft_top_k]
        return top, top
    r = shards["tokens"].shape[1]  # afd
    every = np.broadcast_to(np.arange(r), (shards["tokens"].shape[0], r))
    return every, every


class PairBatches:
    """Deterministic batches of ranked scenes: batch k is a pure function of k.

    Each batch holds B scenes (numpy ``Scenario [B, ...]``), ``pos`` / ``neg``
    int32 token sequences ``[B, P, A, S]`` and their validity ``[B, P, A, S]``.
    """

    def __init__(self, shards: dict, rows: np.ndarray, store: reader.SceneReader, cfg: cfg_lib.AlignConfig, batch_size: int,
                 seed: int, shuffle: bool = True):
        self.shards, self.rows, self.store, self.cfg = shards, rows, store, cfg
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.pos_idx, self.neg_idx = side_indices(shards, cfg)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.rows
        return np.random.default_rng([self.seed, epoch]).permutation(self.rows)

    def batch(self, k: int) -> dict:
        n = len(self.rows)
        picks = [k * self.batch_size + i for i in range(self.batch_size)]
        rows = [self._order(p // n)[p % n] for p in picks]
        rng = np.random.default_rng([self.seed, 1_000_003, k])
        scenes, pos, neg = [], [], []
        p = self.cfg.pairs_per_scene
        for row in rows:
            fi, ri = int(self.shards["file_index"][row]), int(self.shards["record_index"][row])
            scenes.append(self.store.read(reader.Source(self.store.files[fi], ri)))
            kp, kn = self.pos_idx[row], self.neg_idx[row]
            j = rng.choice(len(kp), size=p, replace=len(kp) < p)
            # Pair methods keep the (k-th best, k-th worst) pairing; AFD draws its own negatives.
            jn = j if self.cfg.method in PAIR_METHODS else rng.choice(len(kn), size=p, replace=len(kn) < p)
            toks = self.shards["tokens"][row].astype(np.int32)
            pos.append(toks[kp[j]])
            neg.append(toks[kn[jn]])
        scenario = dt.stack_scenarios(scenes)
        sim = np.asarray(scenario.agents.sim_mask, bool)[:, None, :, None]
        pos, neg = np.stack(pos), np.stack(neg)
        valid = np.broadcast_to(sim, pos.shape)
        return dict(scenario=scenario, pos=pos, neg=neg, pos_valid=valid, neg_valid=valid)

    def from_step(self, start: int):
        k = start
        while True:
            yield self.batch(k)
            k += 1


# ----------------------------------------------------------------------------- losses
def _sequence_log_probs(model: mlm.MotionLM, params, scenario: dt.Scenario, seqs: jax.Array,
                        valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log pi of P sequences of ONE scene, encoding the scene once.

    Args:
      scenario: one scene; seqs, valid: ``[P, A, S]``.
    Returns:
      (log-probs ``[P, A, S]`` (0 where invalid), logits ``[P, A, S, V]``).
    """
    encoded = model.encode_scene(params, scenario)
    inputs = dec.input_tokens(seqs, valid)
    logits = jax.vmap(lambda inp: model.decode_full(params, encoded, inp))(inputs)
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    lp = jnp.take_along_axis(lp, jnp.clip(seqs, 0, lp.shape[-1] - 1)[..., None], -1)[..., 0]
    return jnp.where(valid, lp, 0.0), logits


def _batched_log_probs(model, params, scenario, seqs, valid):
    """``[B, P, A, S]`` log-probs and logits for a batch of scenes."""
    return jax.vmap(functools.partial(_sequence_log_probs, model, params))(scenario, seqs, valid)


def _expert(model: mlm.MotionLM, scenario: dt.Scenario) -> tuple[jax.Array, jax.Array]:
    """The logged future's tokens as ``[B, 1, A, S]`` sequences and their validity."""
    tokens, valid = mlm.tokenize_scenario(scenario, model.config.tokenizer)
    valid = valid & scenario.agents.sim_mask[..., None]
    return tokens[:, None], valid[:, None]


def make_loss_fn(model: mlm.MotionLM, cfg: cfg_lib.AlignConfig) -> loop.LossFn:
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731 - [B, P, ...] -> [B * P, ...]

    def loss_fn(params, batch, rng, frozen):
        del rng
        s = batch["scenario"]
        if cfg.method in SFT_METHODS:
            lp, _ = _batched_log_probs(model, params, s, batch["pos"], batch["pos_valid"])
            return losses.sft_loss(lp, batch["pos_valid"])
        lp_neg, _ = _batched_log_probs(model, params, s, batch["neg"], batch["neg_valid"])
        if cfg.method == "afd":
            exp_tok, exp_valid = _expert(model, s)
            lp_exp, _ = _batched_log_probs(model, params, s, exp_tok, exp_valid)
            loss, m = losses.afd_loss(lp_exp[:, 0], exp_valid[:, 0], lp_neg, batch["neg_valid"], cfg.cpl)
        else:
            lp_pos, _ = _batched_log_probs(model, params, s, batch["pos"], batch["pos_valid"])
            if cfg.method == "dpo":
                ref_pos, _ = _batched_log_probs(model, frozen, s, batch["pos"], batch["pos_valid"])
                ref_neg, _ = _batched_log_probs(model, frozen, s, batch["neg"], batch["neg_valid"])
                loss, m = losses.dpo_loss(flat(lp_pos), flat(batch["pos_valid"]), flat(lp_neg),
                                          flat(batch["neg_valid"]), flat(ref_pos), flat(ref_neg), cfg.dpo_beta)
            else:
                loss, m = losses.cpl_loss(flat(lp_pos), flat(batch["pos_valid"]), flat(lp_neg),
                                          flat(batch["neg_valid"]), cfg.cpl)
        return loss, _pairs(m)

    return loss_fn


def _pairs(m: dict) -> dict:
    """Loss metrics as (masked sum, count) pairs for the loop."""
    out = {}
    if "pref_accuracy_sum" in m:
        out["pref_accuracy"] = (m["pref_accuracy_sum"], m["pairs"])
        out["pref_loss"] = (m["pref_loss_sum"], m["pairs"])
    out["nll_preferred"] = (m["nll_preferred_sum"], m["tokens_preferred"])
    if "nll_unpreferred_sum" in m:
        out["nll_unpreferred"] = (m["nll_unpreferred_sum"], m["tokens_unpreferred"])
    return out


def make_eval_fn(model: mlm.MotionLM, cfg: cfg_lib.AlignConfig):
    """Held-out metrics: preference accuracy on OT pairs, NLLs, and KL to the reference."""
    score = cfg.cpl.score

    def eval_fn(params, batch, rng, frozen):
        del rng
        s = batch["scenario"]
        pv, nv = batch["pos_valid"], batch["neg_valid"]
        lp_pos, _ = _batched_log_probs(model, params, s, batch["pos"], pv)
        lp_neg, _ = _batched_log_probs(model, params, s, batch["neg"], nv)
        exp_tok, exp_valid = _expert(model, s)
        lp_exp, logits = _batched_log_probs(model, params, s, exp_tok, exp_valid)
        _, ref_logits = _batched_log_probs(model, frozen, s, exp_tok, exp_valid)
        s_pos = losses.sequence_score(lp_pos, pv, score)
        s_neg = losses.sequence_score(lp_neg, nv, score)
        kl, kl_n = losses.token_kl(logits, ref_logits, exp_valid)
        nll = lambda lp, v: (-jnp.where(v, lp, 0.0).sum(), v.sum())  # noqa: E731
        return {
            "pref_accuracy": ((s_pos > s_neg).sum(), s_pos.size),
            "nll_preferred": nll(lp_pos, pv),
            "nll_unpreferred": nll(lp_neg, nv),
            "nll_expert": nll(lp_exp, exp_valid),
            "kl_to_reference": (kl, kl_n),
        }

    return eval_fn


# ----------------------------------------------------------------------------- job
def run(config: ml_collections.ConfigDict, workdir: str, fingerprint: str) -> int:
    """Aligns into ``WORKDIR/align[_<method>]``; returns 0 when done, 75 when preempted (saved; rerun)."""
    t0 = time.time()
    cfg = cfg_lib.align(config)
    model, ref = pretrain.load_params(config, workdir)
    shards = curate.load_shards(workdir)
    n = shards["tokens"].shape[0]
    n_held = max(1, int(round(n * cfg.heldout_fraction))) if n > 1 else 0
    train_rows, held_rows = np.arange(n - n_held), np.arange(n - n_held, n)
    if len(train_rows) == 0:
        raise ValueError(f"align: {n} curated scenes leave none for training after holding out {n_held}")
    store = reader.SceneReader([str(f) for f in shards["files"]], cfg_lib.reader(config))
    b = config.align.batch_size // jax.process_count()
    train_b = PairBatches(shards, train_rows, store, cfg, b, cfg_lib.align_seed(config))
    # Held-out evaluation always uses the OT pairs: the preference the paper's accuracy measures.
    eval_cfg = dataclasses.replace(cfg, method="dpa_omf")
    held = PairBatches(shards, held_rows if len(held_rows) else train_rows, store, eval_cfg, b,
                       config.seed, shuffle=False)
    n_eval = max(1, min(config.align.eval_batches, -(-len(held.rows) // b)))
    eval_batches = [held.batch(k) for k in range(n_eval)]
    result = loop.train(
        make_loss_fn(model, cfg), lambda rng: ref, train_b.from_step, cfg_lib.align_train(config), workdir,
        folder_name(cfg.method), eval_fn=make_eval_fn(model, cfg), eval_batches_fn=lambda: iter(eval_batches),
        frozen=ref, initial_params=ref,
        summary_extra=lambda s: {"config_fingerprint": fingerprint, "method": cfg.method,
                                 "train_scenes": int(len(train_rows)), "heldout_scenes": int(n_held),
                                 "seconds": time.time() - t0})
    return result.exit_code

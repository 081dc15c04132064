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
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.io import reader
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import curate, pretrain, realism_eval
from dpa_omf.jobs import workdir as wd
from dpa_omf.model import decoder as dec
from dpa_omf.model import motion_lm as mlm
from dpa_omf.train import loop, losses


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


# ----------------------------------------------------------------------------- pair sides
def _stored_pairs(shards: dict, cfg: cfg_lib.AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """(preferred, unpreferred) as curated: the K closest vs the K farthest by OT."""
    del cfg
    return shards["preferred"], shards["unpreferred"]


def _ade_pairs(shards: dict, cfg: cfg_lib.AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """The same rollouts re-ranked by ADE to the expert: the K closest vs the K farthest."""
    del cfg
    k = shards["preferred"].shape[1]
    order = np.argsort(shards["ade_distance"], axis=1, kind="stable")
    return order[:, :k], order[:, ::-1][:, :k]


def _top_k(key: str):
    def sides(shards: dict, cfg: cfg_lib.AlignConfig) -> tuple[np.ndarray, np.ndarray]:
        """(the ``sft_top_k`` closest by ``key``, the same): SFT uses the first side only."""
        top = np.argsort(shards[key], axis=1, kind="stable")[:, :cfg.sft_top_k]
        return top, top

    return sides


def _every_rollout(shards: dict, cfg: cfg_lib.AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """(unused, every generated rollout): AFD compares each against the expert."""
    del cfg
    n, r = shards["tokens"].shape[:2]
    every = np.broadcast_to(np.arange(r), (n, r))
    return every, every


class PairBatches:
    """Deterministic batches of ranked scenes: batch k is a pure function of k.

    Each batch holds B scenes (numpy ``Scenario [B, ...]``), ``pos`` / ``neg``
    int32 token sequences ``[B, P, A, S]`` and their validity ``[B, P, A, S]``.
    """

    def __init__(self, shards: dict, rows: np.ndarray, store: reader.SceneReader, cfg: cfg_lib.AlignConfig,
                 batch_size: int, seed: int, shuffle: bool = True):
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
            # Paired methods keep the (k-th best, k-th worst) pairing; the others draw negatives apart.
            jn = j if METHODS[self.cfg.method].paired else rng.choice(len(kn), size=p, replace=len(kn) < p)
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


class _LogProbs:
    """The log-probabilities a loss asks for, computed once each: ``policy('pos' | 'neg')``,
    ``reference('pos' | 'neg')`` (the frozen reference) and ``expert()`` (the logged future)."""

    def __init__(self, model: mlm.MotionLM, params, frozen, batch: dict):
        self.model, self.params, self.frozen, self.batch = model, params, frozen, batch

    def valid(self, side: str) -> jax.Array:
        return self.batch[f"{side}_valid"]

    def policy(self, side: str) -> jax.Array:
        return _batched_log_probs(self.model, self.params, self.batch["scenario"], self.batch[side],
                                  self.valid(side))[0]

    def reference(self, side: str) -> jax.Array:
        return _batched_log_probs(self.model, self.frozen, self.batch["scenario"], self.batch[side],
                                  self.valid(side))[0]

    def expert(self) -> tuple[jax.Array, jax.Array]:
        tokens, valid = _expert(self.model, self.batch["scenario"])
        lp, _ = _batched_log_probs(self.model, self.params, self.batch["scenario"], tokens, valid)
        return lp[:, 0], valid[:, 0]


def _flat(x: jax.Array) -> jax.Array:
    """``[B, P, ...] -> [B * P, ...]``: every pair of every scene."""
    return x.reshape((-1, *x.shape[2:]))


def _cpl_loss(lp: _LogProbs, cfg: cfg_lib.AlignConfig):
    lp_neg = lp.policy("neg")
    lp_pos = lp.policy("pos")
    return losses.cpl_loss(_flat(lp_pos), _flat(lp.valid("pos")), _flat(lp_neg), _flat(lp.valid("neg")), cfg.cpl)


def _dpo_loss(lp: _LogProbs, cfg: cfg_lib.AlignConfig):
    lp_neg, lp_pos = lp.policy("neg"), lp.policy("pos")
    ref_pos, ref_neg = lp.reference("pos"), lp.reference("neg")
    return losses.dpo_loss(_flat(lp_pos), _flat(lp.valid("pos")), _flat(lp_neg), _flat(lp.valid("neg")),
                           _flat(ref_pos), _flat(ref_neg), cfg.dpo_beta)


def _sft_loss(lp: _LogProbs, cfg: cfg_lib.AlignConfig):
    del cfg
    return losses.sft_loss(lp.policy("pos"), lp.valid("pos"))


def _afd_loss(lp: _LogProbs, cfg: cfg_lib.AlignConfig):
    lp_neg = lp.policy("neg")
    lp_exp, exp_valid = lp.expert()
    return losses.afd_loss(lp_exp, exp_valid, lp_neg, lp.valid("neg"), cfg.cpl)


@dataclasses.dataclass(frozen=True)
class Method:
    """An alignment method: the two sides it compares and the loss it optimizes.

    Attributes:
      sides: ``(shards, cfg) -> (pos [N, K], neg [N, K])`` rollout indices per curated scene.
      loss: ``(log_probs, cfg) -> (loss, metrics)``; ``log_probs`` computes what the loss asks for.
      paired: draw the k-th ``pos`` with the k-th ``neg`` (ranked pairs); else negatives are drawn apart.
    """

    sides: Callable[[dict, cfg_lib.AlignConfig], tuple[np.ndarray, np.ndarray]]
    loss: Callable[[_LogProbs, cfg_lib.AlignConfig], tuple[jax.Array, dict]]
    paired: bool


# The alignment methods. Adding one: an entry here and its name in configs/post_training.py:ALIGN_METHODS
# (which makes the configs/align.py:<name> variant, the align_<name> folder and its evaluation row).
METHODS: dict[str, Method] = {
    "dpa_omf": Method(_stored_pairs, _cpl_loss, paired=True),  # CPL on the OT-ranked pairs (the paper)
    "dpa_adef": Method(_ade_pairs, _cpl_loss, paired=True),  # CPL on ADE-ranked pairs
    "sft_best_oa": Method(_top_k("ot_distance"), _sft_loss, paired=False),  # SFT on the closest by OT
    "sft_best_ade": Method(_top_k("ade_distance"), _sft_loss, paired=False),  # SFT on the closest by ADE
    "afd": Method(_every_rollout, _afd_loss, paired=False),  # the expert preferred over every rollout
    "dpo": Method(_stored_pairs, _dpo_loss, paired=True),  # DPO against the frozen reference
}


def side_indices(shards: dict, cfg: cfg_lib.AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rollout indices of the two sides of every ranking, ``[N, K]`` each (the method's ``sides``)."""
    return METHODS[cfg.method].sides(shards, cfg)


def make_loss_fn(model: mlm.MotionLM, cfg: cfg_lib.AlignConfig) -> loop.LossFn:
    method = METHODS[cfg.method]

    def loss_fn(params, batch, rng, frozen):
        del rng
        loss, m = method.loss(_LogProbs(model, params, frozen, batch), cfg)
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
        nll = lambda lp, v: (-jnp.where(v, lp, 0.0).sum(), v.sum())
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
    n_held = max(1, round(n * cfg.heldout_fraction)) if n > 1 else 0
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
        frozen=ref, initial_params=ref, extra_eval=realism_eval.training_realism(config, workdir, "align"),
        summary_extra=lambda s: {"config_fingerprint": fingerprint, "method": cfg.method,
                                 "train_scenes": len(train_rows), "heldout_scenes": int(n_held),
                                 "seconds": time.time() - t0})
    return result.exit_code

"""The alignment methods' losses and in-step data makers (the registry in ``align.py`` names them).

Every loss has the signature ``(log_probs: LogProbs, cfg: AlignConfig) -> (loss, metrics)``: ``LogProbs``
decodes, on demand and once each, the batch's sequences under the policy and the frozen reference
(``preferred`` / ``unpreferred`` ``[B, P, A, S]``, ``all`` ``[B, M, A, S]``, the expert's ``[B, 1, A, S]``); metrics are
``(masked sum, count)`` pairs. The in-step makers (``online_prepare``, ``catk_prepare``) follow
``loop.train``'s ``prepare_fn`` contract: ``(params, frozen, batch, rng) -> (batch, metrics)``.

Anchors shared by the offline CPL methods and online DPA-OMF (one implementation,
:func:`anchored_log_probs`): per-token KL(policy || reference) on the trained sequences and the
DPO-style ratio log pi - log pi_ref.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp

from dpa_omf import datatypes as dt
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.model import decoder as dec
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling
from dpa_omf.preference import curation
from dpa_omf.train import losses


def sequence_log_probs(model: mlm.MotionLM, params, scenario: dt.Scenario, seqs: jax.Array,
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


def batched_log_probs(model, params, scenario, seqs, valid):
    """``[B, P, A, S]`` log-probs and logits for a batch of scenes."""
    return jax.vmap(functools.partial(sequence_log_probs, model, params))(scenario, seqs, valid)


def joint_log_probs(model: mlm.MotionLM, params, scenario: dt.Scenario,
                    sides: list[tuple[jax.Array, jax.Array]]) -> list[tuple[jax.Array, jax.Array]]:
    """``batched_log_probs`` of several sets of sequences of the same scenes (``[(seqs, valid)]``, each
    ``[B, P_i, A, S]``), each scene encoded ONCE for all of them (a pair's two sides share the encoder's forward
    and backward pass): ``[(log-probs, logits)]`` per set, in order."""
    if len(sides) == 1:
        return [batched_log_probs(model, params, scenario, *sides[0])]
    lp, logits = batched_log_probs(model, params, scenario, jnp.concatenate([q for q, _ in sides], 1),
                                   jnp.concatenate([v for _, v in sides], 1))
    cut = list(itertools.accumulate(q.shape[1] for q, _ in sides))[:-1]
    return list(zip(jnp.split(lp, cut, 1), jnp.split(logits, cut, 1)))


def expert_sequences(model: mlm.MotionLM, scenario: dt.Scenario) -> tuple[jax.Array, jax.Array]:
    """The logged future's tokens as ``[B, 1, A, S]`` sequences and their validity."""
    tokens, valid = mlm.tokenize_scenario(scenario, model.config.tokenizer)
    valid = valid & scenario.agents.sim_mask[..., None]
    return tokens[:, None], valid[:, None]


class LogProbs:
    """The log-probabilities a loss asks for, computed once each: ``policy('preferred' | 'unpreferred')``,
    ``reference('preferred' | 'unpreferred')`` (the frozen reference) and ``expert()`` (the logged future)."""

    def __init__(self, model: mlm.MotionLM, params, frozen, batch: dict, rng: jax.Array | None = None):
        self.model, self.params, self.frozen, self.batch, self.rng = model, params, frozen, batch, rng

    def valid(self, side: str) -> jax.Array:
        return self.batch[f"{side}_valid"]

    def policy(self, side: str) -> jax.Array:
        return self.policy_sides(side)[0]

    def reference(self, side: str) -> jax.Array:
        return self.reference_sides(side)[0]

    def policy_sides(self, *sides: str) -> list[jax.Array]:
        """The policy's log-probs of each side, the scenes encoded once for all of them."""
        return [x for x, _ in self.joint(self.params, sides)]

    def reference_sides(self, *sides: str) -> list[jax.Array]:
        return [x for x, _ in self.joint(self.frozen, sides)]

    def joint(self, params, sides: tuple[str, ...]) -> list[tuple[jax.Array, jax.Array]]:
        """(log-probs, logits) of each side under ``params`` (``joint_log_probs``)."""
        return joint_log_probs(self.model, params, self.batch["scenario"],
                               [(self.batch[s], self.valid(s)) for s in sides])

    def expert(self) -> tuple[jax.Array, jax.Array]:
        tokens, valid = expert_sequences(self.model, self.batch["scenario"])
        lp, _ = batched_log_probs(self.model, self.params, self.batch["scenario"], tokens, valid)
        return lp[:, 0], valid[:, 0]


def _flat(x: jax.Array) -> jax.Array:
    """``[B, P, ...] -> [B * P, ...]``: every pair of every scene."""
    return x.reshape((-1, *x.shape[2:]))


def _agent_weight(scenario: dt.Scenario, cfg: cfg_lib.AlignConfig) -> jax.Array | None:
    """``[B, A]`` weights: ``eval_agent_weight`` on the agents the realism metric evaluates, 1 on the
    others; None when that weight is 1 (the unweighted loss)."""
    if cfg.eval_agent_weight == 1.0:
        return None
    evaluated = scenario.agents.eval_mask & scenario.agents.sim_mask
    return jnp.where(evaluated, cfg.eval_agent_weight, 1.0).astype(jnp.float32)


def _per_pair(x: jax.Array | None, p: int) -> jax.Array | None:
    """``[B, ...] -> [B * P, ...]``: a scene's value once per pair."""
    return None if x is None else jnp.repeat(x, p, axis=0)


def cpl_loss(lp: LogProbs, cfg: cfg_lib.AlignConfig):
    """The offline CPL methods: CPL on the drawn pairs or rankings, with the configured credit, anchors and
    agent weights (the defaults: :func:`losses.cpl_loss` on the pairs, scene credit, no anchor)."""
    b = lp.batch
    weight = _agent_weight(b["scenario"], cfg)
    if cfg.offline_loss != "pairs":
        score, raw, kl = anchored_log_probs(lp, "all", cfg.kl_weight, cfg.reference_ratio)
        ranked = functools.partial(losses.ranked_cpl_loss, valid=b["all_valid"], cfg=cfg.cpl, agent_weight=weight,
                                   distance=b["agent_distance"] if cfg.cpl.credit == "agent" else b["distance"],
                                   counted=b.get("agent_counted"))
        loss, m = ranked(score)
        if score is not raw:  # the NLLs of the sequences themselves, not of the ratio
            m = {**m, **{k: v for k, v in ranked(raw)[1].items() if k.startswith(("nll_", "tokens_"))}}
        return _with_kl(loss, m, kl, cfg.kl_weight)
    (sp, rp, klp), (sn, rn, kln) = anchored_log_probs(lp, ("preferred", "unpreferred"), cfg.kl_weight,
                                                      cfg.reference_ratio)
    p = b["preferred"].shape[1]
    if cfg.cpl.credit == "agent":  # each pair is a ranking of two, per agent
        two = lambda x, y: _flat(jnp.stack([x, y], axis=2))  # [B, P, ...] x 2 -> [B * P, 2, ...]
        loss, m = losses.ranked_cpl_loss(
            two(sp, sn), two(lp.valid("preferred"), lp.valid("unpreferred")),
            two(b["preferred_agent_distance"], b["unpreferred_agent_distance"]), cfg.cpl,
            agent_weight=_per_pair(weight, p),
            counted=two(b["preferred_agent_counted"], b["unpreferred_agent_counted"]))
    else:
        loss, m = losses.cpl_loss(_flat(sp), _flat(lp.valid("preferred")), _flat(sn), _flat(lp.valid("unpreferred")),
                                  cfg.cpl, agent_weight=_per_pair(weight, p))
    if sp is not rp or cfg.cpl.credit == "agent":  # the NLLs of each side's sequences themselves
        m["nll_preferred_sum"], m["tokens_preferred"] = losses.token_nll(rp, lp.valid("preferred"))
        m["nll_unpreferred_sum"], m["tokens_unpreferred"] = losses.token_nll(rn, lp.valid("unpreferred"))
    return _with_kl(loss, m, (klp[0] + kln[0], klp[1] + kln[1]), cfg.kl_weight)


def _with_kl(loss: jax.Array, m: dict, kl: tuple, kl_weight: float) -> tuple[jax.Array, dict]:
    """Adds the KL anchor ``kl_weight`` x (KL sum / count) and its metrics (nothing at weight 0)."""
    if kl_weight:
        loss = loss + kl_weight * kl[0] / jnp.maximum(kl[1], 1)
        m["kl_sum"], m["kl_tokens"] = kl
    return loss, m


def dpo_loss(lp: LogProbs, cfg: cfg_lib.AlignConfig):
    lp_preferred, lp_unpreferred = lp.policy_sides("preferred", "unpreferred")
    ref_preferred, ref_unpreferred = lp.reference_sides("preferred", "unpreferred")
    return losses.dpo_loss(_flat(lp_preferred), _flat(lp.valid("preferred")), _flat(lp_unpreferred),
                           _flat(lp.valid("unpreferred")), _flat(ref_preferred), _flat(ref_unpreferred), cfg.dpo_beta)


def sft_loss(lp: LogProbs, cfg: cfg_lib.AlignConfig):
    del cfg
    return losses.sft_loss(lp.policy("preferred"), lp.valid("preferred"))


def afd_loss(lp: LogProbs, cfg: cfg_lib.AlignConfig):
    lp_unpreferred = lp.policy("unpreferred")
    lp_exp, exp_valid = lp.expert()
    return losses.afd_loss(lp_exp, exp_valid, lp_unpreferred, lp.valid("unpreferred"), cfg.cpl)


def anchored_log_probs(lp: LogProbs, side: str | tuple[str, ...], kl_weight: float, reference_ratio: bool):
    """(log-probs the score uses, raw log-probs, (KL sum, count)) of ``batch[side]``: the anchors to the
    reference of online DPA-OMF (``align.online.*``) and of the offline CPL methods (``align.*``). A tuple of
    sides gives a list of those triples, the scenes encoded once for all sides (``LogProbs.joint``).

    With ``reference_ratio`` the score uses log pi - log pi_ref (DPO-style); with
    ``kl_weight`` the per-token KL(policy || reference) on those sequences' contexts.
    """
    sides = (side,) if isinstance(side, str) else side
    policy = lp.joint(lp.params, sides)
    zero = (jnp.zeros([]), jnp.zeros([]))
    if not (reference_ratio or kl_weight):
        out = [(raw, raw, zero) for raw, _ in policy]
    else:
        ref = jax.lax.stop_gradient(lp.joint(lp.frozen, sides))
        out = [((raw - r if reference_ratio else raw), raw,
                losses.token_kl(logits, r_logits, lp.valid(s)) if kl_weight else zero)
               for s, (raw, logits), (r, r_logits) in zip(sides, policy, ref)]
    return out[0] if isinstance(side, str) else out


def online_pairs(batch: dict, rng: jax.Array, num: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``num`` of each scene's K (closest, farthest) pairs, drawn with ``rng``: (preferred, unpreferred
    ``[B, num, A, S]``, the drawn pair indices ``[B, num]``)."""
    b, k = batch["preferred"].shape
    keys = jax.random.split(rng, b)
    j = jax.vmap(lambda kk: jax.random.choice(kk, k, (num,), replace=num > k))(keys)
    take = lambda idx: jnp.take_along_axis(batch["tokens"], jnp.take_along_axis(idx, j, 1)[:, :, None, None], 1)
    return take(batch["preferred"]), take(batch["unpreferred"]), j


def _sim_valid(scenario: dt.Scenario, seqs: jax.Array) -> jax.Array:
    return jnp.broadcast_to(scenario.agents.sim_mask[:, None, :, None], seqs.shape)


def online_loss(lp: LogProbs, cfg: cfg_lib.AlignConfig):
    """Online DPA-OMF on the round's ranked rollouts (``lp.batch`` from :func:`online_prepare`)."""
    b, o = lp.batch, cfg.online
    s = b["scenario"]
    if o.loss == "ranked":
        lp = LogProbs(lp.model, lp.params, lp.frozen, {**b, "all": b["tokens"],
                                                       "all_valid": _sim_valid(s, b["tokens"])}, lp.rng)
        score_lp, raw, kl = anchored_log_probs(lp, "all", o.kl_weight, o.reference_ratio)
        loss, m = losses.ranked_cpl_loss(score_lp, lp.batch["all_valid"], b["distance"], cfg.cpl)
        if score_lp is not raw:  # the NLLs of the sequences themselves, not of the ratio
            _, m_raw = losses.ranked_cpl_loss(raw, lp.batch["all_valid"], b["distance"], cfg.cpl)
            m = {**m, **{k: v for k, v in m_raw.items() if k.startswith(("nll_", "tokens_"))}}
    else:
        preferred, unpreferred, _ = online_pairs(b, lp.rng, cfg.pairs_per_scene)
        sides = {"preferred": preferred, "unpreferred": unpreferred, "preferred_valid": _sim_valid(s, preferred),
                 "unpreferred_valid": _sim_valid(s, unpreferred)}
        lp = LogProbs(lp.model, lp.params, lp.frozen, {**b, **sides}, lp.rng)
        (sp, rp, klp), (sn, rn, kln) = anchored_log_probs(lp, ("preferred", "unpreferred"), o.kl_weight,
                                                          o.reference_ratio)
        loss, m = losses.cpl_loss(_flat(sp), _flat(lp.valid("preferred")), _flat(sn), _flat(lp.valid("unpreferred")),
                                  cfg.cpl)
        m["nll_preferred_sum"], m["tokens_preferred"] = losses.token_nll(rp, lp.valid("preferred"))
        m["nll_unpreferred_sum"], m["tokens_unpreferred"] = losses.token_nll(rn, lp.valid("unpreferred"))
        kl = (klp[0] + kln[0], klp[1] + kln[1])
    return _with_kl(loss, m, kl, o.kl_weight)


def expert_loss(lp: LogProbs, cfg: cfg_lib.AlignConfig):
    """The compute-matched control: next-token prediction of the logged futures."""
    del cfg
    lp_exp, valid = lp.expert()
    return losses.sft_loss(lp_exp, valid)


def online_prepare(model: mlm.MotionLM, cfg: cfg_lib.AlignConfig, ccfg: curation.CurationConfig):
    """Round data: R rollouts per scene from the CURRENT params, ranked by OT (``curation.rank_batch``)."""
    def prepare(params, batch, rng, frozen):
        del rng, frozen
        s = batch["scenario"]
        r = curation.rank_batch(model, params, s, jax.random.wrap_key_data(batch["keys"]), ccfg)
        d = r["ot_distance"]
        out = dict(scenario=s, tokens=r["tokens"], distance=d, preferred=r["preferred"],
                   unpreferred=r["unpreferred"])
        metrics = {"round_ot_distance": (d.sum(), d.size), "round_best_ot_distance": (d.min(1).sum(), d.shape[0]),
                   "round_ade": (r["ade_distance"].sum(), d.size)}
        return out, metrics

    return prepare


def catk_prepare(model: mlm.MotionLM, cfg: cfg_lib.AlignConfig, ccfg: curation.CurationConfig):
    """Round data: ``pairs_per_scene`` CAT-K rollouts per scene from the frozen reference."""
    del ccfg
    rcfg = sampling.RolloutConfig(num_rollouts=cfg.pairs_per_scene, rollout_chunk=cfg.pairs_per_scene,
                                  closest_top_k=cfg.catk_top_k)

    def prepare(params, batch, rng, frozen):
        del params, rng
        s = batch["scenario"]
        r = jax.vmap(lambda sc, k: sampling.sample(model, frozen, sc, k, rcfg))(
            s, jax.random.wrap_key_data(batch["keys"]))
        valid = _sim_valid(s, r.tokens)
        fut = slice(dt.NUM_HISTORY, dt.NUM_STEPS)
        logged = (s.agents.valid[..., fut] & s.agents.sim_mask[..., None])[:, None]  # [B, 1, A, 80]
        err = jnp.hypot(r.x - s.agents.x[:, None, :, fut], r.y - s.agents.y[:, None, :, fut])
        metrics = {"catk_ade": (jnp.where(logged, err, 0.0).sum(), jnp.broadcast_to(logged, err.shape).sum())}
        return dict(scenario=s, preferred=r.tokens, preferred_valid=valid, unpreferred=r.tokens,
                    unpreferred_valid=valid), metrics

    return prepare



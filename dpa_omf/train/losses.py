"""Preference-alignment losses as pure functions of per-token log-probabilities.

Every function takes log pi(a_t^i | A_<t, scene) of whole joint sequences
(``[B, A, S]``: pairs x agents x token steps) with their validity masks, so the
same losses serve every model and every sharding. Metrics are returned as
masked sums plus counts (divided once on the host).

Score normalization (``ScoreConfig.normalize``). CPL's segment score sums
alpha * gamma^t * log pi over steps and agents. With up to 128 agents x 16
steps the raw sum reaches thousands of nats and the logistic loss saturates
(its gradient vanishes for every pair but the closest). We therefore divide by
the number of valid agents by default (``'agents'``): the score is the
discounted per-agent sequence log-likelihood, whose scale (16 tokens x ~2 nats
x alpha=0.1 ~ 3) matches single-agent CPL and does not change with the number
of agents in a scene. ``'sum'`` keeps the raw sum (scale alpha instead),
``'tokens'`` divides by the valid token count.

Credit (``CPLConfig.credit``). ``'scene'``: one score per joint sequence and
one label per scene (the paper). ``'agent'``: each agent i gets its own score
S_i = alpha * sum_t gamma^t log pi(a_t^i | A_<t, scene) (:func:`agent_scores`;
the normalization then applies per agent) and its own ranking of the rollouts,
by its own OT distance; every (agent, better, worse) comparison is one CPL
term (:func:`ranked_cpl_loss`).

Agent weights (``agent_weight [..., A]``, optional): scene credit weights each
agent's terms inside the score (a weighted per-agent mean under 'agents'),
agent credit weights each agent's comparisons in the mean; None is the
unweighted loss (the jobs weight the agents the realism metric evaluates).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    alpha: float = 0.1  # temperature of the score
    gamma: float = 1.0  # per-token-step discount
    normalize: str = "agents"  # 'agents' | 'tokens' | 'sum'

    def __post_init__(self):
        if self.normalize not in ("agents", "tokens", "sum"):
            raise ValueError(f"normalize={self.normalize!r} must be 'agents', 'tokens' or 'sum'")


CREDITS = ("scene", "agent")


@dataclasses.dataclass(frozen=True)
class CPLConfig:
    score: ScoreConfig = ScoreConfig()
    conservative_lambda: float = 0.5  # lambda in (0, 1]: weight of the unpreferred score
    bc_weight: float = 0.0  # optional behaviour cloning (mean NLL per token of the preferred side)
    credit: str = "scene"  # 'scene' (one label per joint sequence) | 'agent' (per-agent scores and rankings)

    def __post_init__(self):
        if not 0.0 < self.conservative_lambda <= 1.0:
            raise ValueError(f"conservative_lambda={self.conservative_lambda} must be in (0, 1]")
        if self.credit not in CREDITS:
            raise ValueError(f"credit={self.credit!r} must be one of {CREDITS}")


def sequence_score(log_probs: jax.Array, valid: jax.Array, cfg: ScoreConfig,
                   agent_weight: jax.Array | None = None) -> jax.Array:
    """CPL segment score S(tau) of joint sequences.

    Args:
      log_probs: ``[..., A, S]`` log pi of each agent's token at each step.
      valid: ``[..., A, S]`` bool, token is modelled (agent valid, step valid).
      cfg: alpha, gamma and the normalization.
      agent_weight: optional ``[..., A]`` (broadcastable) weight of each agent's
        terms; the normalization counts weighted agents (tokens). None: all 1.
    Returns:
      ``[...]`` scores: alpha * sum_{t, i} w_i gamma^t * log pi, normalized
      (0 for a sequence with no valid token, or no weight).
    """
    num_steps = log_probs.shape[-1]
    discount = cfg.gamma ** jnp.arange(num_steps, dtype=log_probs.dtype)
    masked = jnp.where(valid, log_probs, 0.0) * discount
    if agent_weight is not None:
        w = jnp.broadcast_to(agent_weight, valid.shape[:-1]).astype(masked.dtype)
        total = cfg.alpha * (masked.sum(-1) * w).sum(-1)
        if cfg.normalize == "sum":
            return total
        per_agent = jnp.any(valid, -1) if cfg.normalize == "agents" else valid.sum(-1)
        count = (per_agent * w).sum(-1)
        return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)
    total = cfg.alpha * masked.sum(axis=(-2, -1))
    if cfg.normalize == "agents":
        count = jnp.any(valid, axis=-1).sum(axis=-1)
    elif cfg.normalize == "tokens":
        count = valid.sum(axis=(-2, -1))
    else:
        return total
    return total / jnp.maximum(count, 1).astype(total.dtype)


def agent_scores(log_probs: jax.Array, valid: jax.Array, cfg: ScoreConfig) -> jax.Array:
    """Per-agent CPL scores S_i = alpha * sum_t gamma^t log pi(a_t^i | ...), normalized per agent.

    ``[..., A, S]`` -> ``[..., A]``: :func:`sequence_score` of each agent alone
    ('agents': the agent's discounted sum; 'tokens': divided by its valid tokens).
    """
    return sequence_score(log_probs[..., None, :], valid[..., None, :], cfg)


def token_nll(log_probs: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Masked sum of -log pi and the valid-token count (over all axes)."""
    return -jnp.where(valid, log_probs, 0.0).sum(), valid.sum()


def cpl_loss(lp_preferred: jax.Array, valid_preferred: jax.Array, lp_unpreferred: jax.Array,
             valid_unpreferred: jax.Array, cfg: CPLConfig,
             agent_weight: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Multi-agent contrastive preference learning (Hejna et al.) on pairs, scene credit.

    loss = -log( exp S+ / (exp S+ + exp(lambda S-)) ) = -log sigmoid(S+ - lambda S-),
    averaged over pairs, plus ``bc_weight`` x the mean per-token NLL of the
    preferred sequences. (Agent credit on pairs: :func:`ranked_cpl_loss` with
    the two sides as a ranking of two.)

    Args:
      lp_preferred, lp_unpreferred: ``[P, A, S]`` log-probs of the preferred / unpreferred side.
      valid_preferred, valid_unpreferred: ``[P, A, S]`` bool masks.
      agent_weight: optional ``[P, A]`` weight of each agent in the scores.
    Returns:
      (scalar loss, metrics of masked sums and counts).
    """
    if cfg.credit != "scene":
        raise ValueError("cpl_loss scores whole sequences (credit='scene'); agent credit: ranked_cpl_loss")
    s_preferred = sequence_score(lp_preferred, valid_preferred, cfg.score, agent_weight)
    s_unpreferred = sequence_score(lp_unpreferred, valid_unpreferred, cfg.score, agent_weight)
    per_pair = -jax.nn.log_sigmoid(s_preferred - cfg.conservative_lambda * s_unpreferred)
    loss = per_pair.mean()
    nll_preferred, n_preferred = token_nll(lp_preferred, valid_preferred)
    nll_unpreferred, n_unpreferred = token_nll(lp_unpreferred, valid_unpreferred)
    if cfg.bc_weight:
        loss = loss + cfg.bc_weight * nll_preferred / jnp.maximum(n_preferred, 1)
    metrics = {
        "pref_loss_sum": per_pair.sum(),
        "pref_accuracy_sum": (s_preferred > s_unpreferred).sum(),  # lambda = 1: which side is more likely
        "pairs": jnp.asarray(per_pair.shape[0]),
        "nll_preferred_sum": nll_preferred, "tokens_preferred": n_preferred,
        "nll_unpreferred_sum": nll_unpreferred, "tokens_unpreferred": n_unpreferred,
    }
    return loss, metrics


def ranked_cpl_loss(lp: jax.Array, valid: jax.Array, distance: jax.Array, cfg: CPLConfig,
                    agent_weight: jax.Array | None = None, counted: jax.Array | None = None
                    ) -> tuple[jax.Array, dict]:
    """CPL over every ordered pair of a ranking (CPL's ranked variant): every rollout is used.

    Scene credit (``cfg.credit='scene'``): for each scene's R ranked sequences,
    every pair (i, j) with ``distance_i < distance_j`` is a comparison with i
    preferred, of the scores S_i, S_j (:func:`sequence_score`). Agent credit
    (``'agent'``): each agent a of each scene ranks the R rollouts by its own
    distance ``distance[:, :, a]``, and every (a, i, j) with ``distance_ia <
    distance_ja`` compares the agent scores S_a(i), S_a(j) (:func:`agent_scores`);
    only rollouts where the agent has a valid token and a ``counted`` distance
    take part. loss = the (``agent_weight``-weighted, agent credit) mean over
    all comparisons of -log sigmoid(S_better - lambda S_worse) (ties make none),
    plus ``bc_weight`` x the mean NLL per token of the better half of each
    ranking. Each sequence is decoded once: R scores make all R (R - 1) / 2
    comparisons. A ranking of two (the sides of a pair) is the pair loss.

    Args:
      lp, valid: ``[B, R, A, S]`` log-probs and masks of the R sequences of B scenes.
      distance: their distance to the expert (lower is preferred): ``[B, R]``
        (scene credit) or ``[B, R, A]`` (agent credit: each agent's own).
      agent_weight: optional ``[B, A]``: scene credit weighs the agents inside
        the scores, agent credit weighs each agent's comparisons.
      counted: agent credit, optional bool ``[B, R, A]``: the agent's distance
        in that rollout is defined (None: wherever the agent has a valid token).
    Returns:
      (scalar loss, metrics of masked sums and counts: the comparisons' loss and
      accuracy (unweighted); the NLL of the better and the worse half of each ranking).
    """
    r = distance.shape[1]
    if cfg.credit == "agent":
        if distance.shape != valid.shape[:3]:
            raise ValueError(f"agent credit needs per-agent distances {valid.shape[:3]}, got {distance.shape}")
        entry = jnp.any(valid, -1) if counted is None else jnp.any(valid, -1) & counted  # [B, R, A]
        s = jnp.swapaxes(agent_scores(lp, valid, cfg.score), 1, 2)  # [B, A, R]: one ranking per agent
        d = jnp.swapaxes(jnp.where(entry, distance, jnp.inf), 1, 2)
        ok = jnp.swapaxes(entry, 1, 2)
        better = ok[..., :, None] & ok[..., None, :] & (d[..., :, None] < d[..., None, :])  # [B, A, i, j]
        w = None if agent_weight is None else agent_weight[..., None, None]
        rank = jnp.argsort(jnp.argsort(d, axis=-1, stable=True), axis=-1, stable=True)
        n_ok = ok.sum(-1, keepdims=True)
        top = jnp.swapaxes(ok & (rank < n_ok // 2), 1, 2)[..., None]  # [B, R, A, 1]
        bottom = jnp.swapaxes(ok & (rank >= n_ok - n_ok // 2), 1, 2)[..., None]
    else:
        s = sequence_score(lp, valid, cfg.score, None if agent_weight is None else agent_weight[:, None])  # [B, R]
        better = distance[:, :, None] < distance[:, None, :]  # [B, i, j]: i preferred over j
        w = None
        rank = jnp.argsort(jnp.argsort(distance, axis=1, stable=True), axis=1, stable=True)  # 0 = closest
        top = (rank < r // 2)[..., None, None]
        bottom = (rank >= r - r // 2)[..., None, None]
    per_pair = -jax.nn.log_sigmoid(s[..., :, None] - cfg.conservative_lambda * s[..., None, :])
    n_pairs = better.sum()
    pair_sum = jnp.where(better, per_pair, 0.0).sum()
    if w is None:
        loss = pair_sum / jnp.maximum(n_pairs, 1)
    else:
        total_w = jnp.where(better, w, 0.0).sum()
        loss = jnp.where(better, w * per_pair, 0.0).sum() / jnp.where(total_w > 0, total_w, 1.0)
    nll_preferred, n_preferred = token_nll(lp, valid & top)
    nll_unpreferred, n_unpreferred = token_nll(lp, valid & bottom)
    if cfg.bc_weight:
        loss = loss + cfg.bc_weight * nll_preferred / jnp.maximum(n_preferred, 1)
    metrics = {
        "pref_loss_sum": pair_sum,
        "pref_accuracy_sum": (better & (s[..., :, None] > s[..., None, :])).sum(),
        "pairs": n_pairs,
        "nll_preferred_sum": nll_preferred, "tokens_preferred": n_preferred,
        "nll_unpreferred_sum": nll_unpreferred, "tokens_unpreferred": n_unpreferred,
    }
    return loss, metrics


def sft_loss(lp: jax.Array, valid: jax.Array) -> tuple[jax.Array, dict]:
    """Supervised fine-tuning on selected (top-ranked) sequences: mean NLL per token."""
    nll, n = token_nll(lp, valid)
    loss = nll / jnp.maximum(n, 1)
    return loss, {"nll_preferred_sum": nll, "tokens_preferred": n}


def afd_loss(lp_expert: jax.Array, valid_expert: jax.Array, lp_gen: jax.Array, valid_gen: jax.Array,
             cfg: CPLConfig) -> tuple[jax.Array, dict]:
    """Adversarial feedback from demonstrations: the expert is preferred over every generated sample.

    Args:
      lp_expert, valid_expert: ``[P, A, S]`` the expert (logged) sequence of each example.
      lp_gen, valid_gen: ``[P, K, A, S]`` K generated samples of the same scene.
    """
    k = lp_gen.shape[1]

    def rep(x):  # [P, ...] -> [P * K, ...], each example's expert once per sample
        return jnp.repeat(x[:, None], k, axis=1).reshape((-1,) + x.shape[1:])

    def flat(x):  # [P, K, ...] -> [P * K, ...]
        return x.reshape((-1,) + x.shape[2:])

    return cpl_loss(rep(lp_expert), rep(valid_expert), flat(lp_gen), flat(valid_gen), cfg)


def dpo_loss(lp_preferred: jax.Array, valid_preferred: jax.Array, lp_unpreferred: jax.Array,
             valid_unpreferred: jax.Array, ref_preferred: jax.Array, ref_unpreferred: jax.Array, beta: float = 0.1,
             score: ScoreConfig = ScoreConfig(alpha=1.0)) -> tuple[jax.Array, dict]:
    """DPO with a frozen reference: -log sigmoid(beta [(S+ - R+) - (S- - R-)]).

    ``ref_preferred`` / ``ref_unpreferred`` are the frozen reference model's log-probs of the
    same tokens (no gradient flows into them).
    """
    ref_preferred, ref_unpreferred = jax.lax.stop_gradient(ref_preferred), jax.lax.stop_gradient(ref_unpreferred)
    margin_preferred = sequence_score(lp_preferred, valid_preferred, score) - sequence_score(
        ref_preferred, valid_preferred, score)
    margin_unpreferred = sequence_score(lp_unpreferred, valid_unpreferred, score) - sequence_score(
        ref_unpreferred, valid_unpreferred, score)
    margin = margin_preferred - margin_unpreferred
    per_pair = -jax.nn.log_sigmoid(beta * margin)
    nll_preferred, n_preferred = token_nll(lp_preferred, valid_preferred)
    nll_unpreferred, n_unpreferred = token_nll(lp_unpreferred, valid_unpreferred)
    metrics = {
        "pref_loss_sum": per_pair.sum(), "pref_accuracy_sum": (margin > 0).sum(),
        "pairs": jnp.asarray(per_pair.shape[0]),
        "nll_preferred_sum": nll_preferred, "tokens_preferred": n_preferred,
        "nll_unpreferred_sum": nll_unpreferred, "tokens_unpreferred": n_unpreferred,
    }
    return per_pair.mean(), metrics


def token_kl(logits_policy: jax.Array, logits_ref: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Exact per-token KL(policy || reference) between the two next-token distributions.

    Args:
      logits_policy, logits_ref: ``[..., V]`` logits at the same contexts (e.g.
        teacher-forced on held-out logged sequences).
      valid: ``[...]`` bool.
    Returns:
      (masked sum of KL over tokens, count of valid tokens).
    """
    lp = jax.nn.log_softmax(logits_policy.astype(jnp.float32), axis=-1)
    lr = jax.nn.log_softmax(logits_ref.astype(jnp.float32), axis=-1)
    kl = (jnp.exp(lp) * (lp - lr)).sum(axis=-1)
    return jnp.where(valid, kl, 0.0).sum(), valid.sum()

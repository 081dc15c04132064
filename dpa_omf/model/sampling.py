"""On-device autoregressive sampling of joint multi-agent rollouts with a KV cache.

One scene is encoded ONCE (local contexts, pooled agent embeddings and every decoder layer's
cross-attention keys/values) and shared by all its rollouts. Rollouts are processed in chunks of
``rollout_chunk`` (``lax.map`` over chunks bounds memory: the KV cache is
``chunk x H x S x A x Dh`` per layer, heads first, time-major); inside a chunk, ``lax.scan`` runs
over the S token steps: all agents of all rollouts of the chunk sample their step-t tokens
simultaneously (agents are conditionally independent within a step; the chunk is one batch of the
decoder step, so each agent's context is read once for all its rollouts), the new keys/values are
written into the cache at position t (past tokens are never recomputed; attention reads only a
prefix of the cache that holds step t), and the tokens are integrated into 10 Hz states.

Randomness: the key of rollout r at step t is ``fold_in(fold_in(key, r), t)``, so the result
does not depend on the chunk size, and cached and uncached sampling draw identical tokens.

Closest among top-K (``RolloutConfig.closest_top_k = K``, CAT-K: Zhang et al., CVPR 2025): at
every step each agent takes, among its K most likely tokens, the one whose next state (the
token's end, integrated by the tokenizer's kinematics) has its box corners closest on average
to the logged box at that time; where the log is invalid it samples among those K by
probability. The rollouts stay near the log while visiting the policy's own states: CAT-K's
closed-loop fine-tuning targets. ``K = 0`` is ordinary sampling.

Log-probs: ``Rollouts.log_probs`` are log pi(token) under the UNTEMPERED model (what the
teacher-forced ``MotionLM.token_log_probs`` computes and what preference losses use), even
when the tokens were drawn with a temperature or top-p.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct

from dpa_omf import datatypes as dt
from dpa_omf.geometry import shapes
from dpa_omf.model import decoder as dec
from dpa_omf.model import motion_lm as ml
from dpa_omf.model import tokenizer as tok


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Sampler knobs.

    Attributes:
      num_rollouts: R joint rollouts per scene.
      rollout_chunk: rollouts sampled together (R must be a multiple; bounds memory).
      temperature: logits are divided by it before sampling (> 0).
      top_p: nucleus sampling mass in (0, 1]; 1 disables it.
      closest_top_k: K > 0: CAT-K rollouts, the token closest to the log among the K most
        likely (module docstring); needs the scene's logged future. 0: sample.
    """

    num_rollouts: int = 64
    rollout_chunk: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    closest_top_k: int = 0

    def __post_init__(self):
        if self.num_rollouts <= 0 or self.rollout_chunk <= 0:
            raise ValueError("RolloutConfig: num_rollouts and rollout_chunk must be > 0")
        if self.num_rollouts % min(self.rollout_chunk, self.num_rollouts):
            raise ValueError(f"RolloutConfig: num_rollouts={self.num_rollouts} is not a multiple of "
                             f"rollout_chunk={self.rollout_chunk}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("RolloutConfig: need temperature > 0 and 0 < top_p <= 1")
        if not 0 <= self.closest_top_k <= tok.NUM_TOKENS:
            raise ValueError(f"RolloutConfig: closest_top_k={self.closest_top_k} must be in [0, {tok.NUM_TOKENS}]")

    @property
    def chunk(self) -> int:
        return min(self.rollout_chunk, self.num_rollouts)


@struct.dataclass
class Rollouts(tok.KinematicState):
    """Sampled joint futures of one scene: the tokenizer's ``KinematicState`` at every 10 Hz step, and the tokens.

      x, y, heading, vel_x, vel_y (``KinematicState``): float32 ``[R, A, 80]`` at 10 Hz steps
        CURRENT_INDEX+1 .. 90: metres, radians, m/s.
      tokens: int32 ``[R, A, S]`` sampled actions.
      log_probs: float32 ``[R, A, S]`` untempered log pi of the tokens (0 for invalid agents).
      valid: bool ``[A]`` simulated agents (valid at the current step); other rows are filler.
    """

    tokens: jax.Array
    log_probs: jax.Array
    valid: jax.Array


# ------------------------------------------------------------------ sampling primitives
def _nucleus(logits: jax.Array, top_p) -> jax.Array:
    """``logits`` with the tokens outside the top-p nucleus set to -inf."""
    probs = jax.nn.softmax(logits, -1)
    sorted_p = -jnp.sort(-probs, -1)
    # Mass strictly before each sorted entry; keep entries that start inside the nucleus
    # (the most likely token is always kept).
    before = jnp.cumsum(sorted_p, -1) - sorted_p
    n_keep = jnp.sum(before < top_p, -1, keepdims=True)
    threshold = jnp.take_along_axis(sorted_p, n_keep - 1, -1)
    return jnp.where(probs >= threshold, logits, -jnp.inf)


def sample_token(key: jax.Array, logits: jax.Array, temperature, top_p) -> jax.Array:
    """Draws tokens ``[...]`` from logits ``[..., V]`` with temperature and nucleus (top-p).

    ``temperature`` and ``top_p`` are Python numbers (static: no sort when ``top_p`` is 1) or traced
    float32 scalars (one program for every setting; the nucleus is computed only where ``top_p < 1``,
    under ``lax.cond``). Both give the same tokens for the same values.
    """
    logits = logits / temperature
    if isinstance(top_p, (int, float)):
        if top_p < 1.0:
            logits = _nucleus(logits, top_p)
    else:
        logits = jax.lax.cond(top_p < 1.0, _nucleus, lambda lg, _: lg, logits, top_p)
    return jax.random.categorical(key, logits, -1).astype(jnp.int32)


def _setting(cfg: RolloutConfig, setting):
    """(temperature, top_p): the config's (static), or a traced ``[2]`` ``setting``'s."""
    return (cfg.temperature, cfg.top_p) if setting is None else (setting[0], setting[1])


def _keys(key: jax.Array, rollout_ids: jax.Array, t) -> jax.Array:
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, r), t))(rollout_ids)


def _chunked(fn, cfg: RolloutConfig):
    """Runs ``fn(rollout_ids [chunk]) -> pytree [chunk, ...]`` over all rollouts, chunk by chunk."""
    ids = jnp.arange(cfg.num_rollouts, dtype=jnp.int32).reshape(-1, cfg.chunk)
    out = jax.lax.map(fn, ids)
    return jax.tree.map(lambda v: v.reshape((cfg.num_rollouts,) + v.shape[2:]), out)


def _finish(outs, valid: jax.Array) -> Rollouts:
    """Per-step outputs (tokens [R, S, A], log-probs, substates [R, S, A, H]) -> Rollouts."""
    tokens, lps, subs = outs
    tokens = jnp.where(valid[:, None], jnp.swapaxes(tokens, -1, -2), tok.ZERO_TOKEN)
    lps = jnp.where(valid[:, None], jnp.swapaxes(lps, -1, -2), 0.0)
    # [R, S, A, H] -> [R, A, S * H]

    def flat(v):
        return jnp.moveaxis(v, 1, 2).reshape(v.shape[0], v.shape[2], -1)

    return Rollouts(x=flat(subs.x), y=flat(subs.y), heading=flat(subs.heading),
                    vel_x=flat(subs.vel_x), vel_y=flat(subs.vel_y), tokens=tokens,
                    log_probs=lps, valid=valid)


def _draw(key, rollout_ids, t, logits, cfg: RolloutConfig, setting=None):
    """Samples ``[chunk, A]`` tokens at step t and their untempered log-probs."""
    keys = _keys(key, rollout_ids, t)
    temperature, top_p = _setting(cfg, setting)
    toks = jax.vmap(lambda k, lg: sample_token(k, lg, temperature, top_p))(keys, logits)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), toks[..., None], -1)[..., 0]
    return toks, lp


def _draw_closest(key, rollout_ids, t, logits, state: tok.KinematicState, scenario: dt.Scenario,
                  cfg: RolloutConfig, tcfg: tok.TokenizerConfig, setting=None):
    """CAT-K: ``[chunk, A]`` tokens closest to the log among the ``closest_top_k`` most likely, and their
    untempered log-probs.

    Args:
      logits: ``[chunk, A, V]``; state: the agents' states before step ``t`` (fields ``[chunk, A]``).
    """
    k = cfg.closest_top_k
    top_logits, top_tokens = jax.lax.top_k(logits, k)  # [n, A, K]
    cand = jax.tree.map(lambda v: jnp.broadcast_to(v[..., None], top_tokens.shape), state)
    end, _ = tok.step_token(cand, top_tokens, tcfg)  # [n, A, K]
    a = scenario.agents
    idx = dt.CURRENT_INDEX + (t + 1) * tcfg.sub_steps  # the 10 Hz index at the token's end
    take = lambda v: jax.lax.dynamic_index_in_dim(jnp.asarray(v, jnp.float32), idx, -1, keepdims=False)
    length, width = take(a.length), take(a.width)
    logged = shapes.box_corners(take(a.x), take(a.y), length, width, take(a.heading))  # [A, 4, 2]
    corners = shapes.box_corners(end.x, end.y, length[:, None], width[:, None], end.heading)  # [n, A, K, 4, 2]
    dist = jnp.linalg.norm(corners - logged[:, None], axis=-1).mean(-1)  # [n, A, K] mean corner distance
    closest = jnp.argmin(dist, -1)
    keys = _keys(key, rollout_ids, t)
    temperature = _setting(cfg, setting)[0]
    sampled = jax.vmap(lambda kk, lg: jax.random.categorical(kk, lg / temperature, -1))(keys, top_logits)
    logged_valid = jax.lax.dynamic_index_in_dim(a.valid, idx, -1, keepdims=False)  # [A]
    pick = jnp.where(logged_valid, closest, sampled)
    toks = jnp.take_along_axis(top_tokens, pick[..., None], -1)[..., 0].astype(jnp.int32)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), toks[..., None], -1)[..., 0]
    return toks, lp


def _initial_state(scenario: dt.Scenario, n: int) -> tok.KinematicState:
    s0 = tok.state_at(scenario.agents, dt.CURRENT_INDEX)  # [A]
    return jax.tree.map(lambda v: jnp.broadcast_to(v, (n,) + v.shape), s0)


# ------------------------------------------------------------------ cached sampler
@functools.partial(jax.jit, static_argnames=("model", "cfg"))
def sample(model: ml.MotionLM, params, scenario: dt.Scenario, key: jax.Array,
           cfg: RolloutConfig, setting: jax.Array | None = None) -> Rollouts:
    """R joint rollouts of ONE scene (no batch dim) with a KV cache. See the module docstring.

    ``setting``: float32 ``[2]`` (temperature, top_p), traced, used instead of ``cfg``'s: one program
    samples at every setting (the evaluator's rows at other settings); the same tokens as ``cfg`` with
    those values (``sample_token``).
    """
    tcfg = model.config.tokenizer
    encoded = model.encode_scene(params, scenario)  # once per scene, shared by all rollouts
    valid = encoded["agent_mask"]
    num_agents = valid.shape[0]

    def run_chunk(rollout_ids):
        n = rollout_ids.shape[0]
        cache = model.init_cache(num_agents, (n,))

        def body(carry, t):
            cache, prev, state = carry
            logits, cache = model.decode_step(params, encoded, prev, t, cache)  # [n, A, V]
            if cfg.closest_top_k:
                toks, lp = _draw_closest(key, rollout_ids, t, logits, state, scenario, cfg, tcfg, setting)
            else:
                toks, lp = _draw(key, rollout_ids, t, logits, cfg, setting)
            state, subs = tok.step_token(state, toks, tcfg)
            return (cache, toks, state), (toks, lp, subs)

        init = (cache, jnp.full((n, num_agents), dec.BOS_TOKEN, jnp.int32), _initial_state(scenario, n))
        _, outs = jax.lax.scan(body, init, jnp.arange(tcfg.num_token_steps, dtype=jnp.int32))
        return jax.tree.map(lambda v: jnp.moveaxis(v, 0, 1), outs)  # [n, S, ...]

    return _finish(_chunked(run_chunk, cfg), valid)


# ------------------------------------------------------------------ uncached reference
@functools.partial(jax.jit, static_argnames=("model", "cfg"))
def sample_uncached(model: ml.MotionLM, params, scenario: dt.Scenario, key: jax.Array,
                    cfg: RolloutConfig) -> Rollouts:
    """Same as ``sample`` but recomputes the decoder over the whole prefix at every step.

    The scene encoding is still computed once (the comparison isolates the KV cache). Draws the
    same tokens as ``sample`` for the same key (up to float rounding near ties).
    """
    tcfg = model.config.tokenizer
    s_steps = tcfg.num_token_steps
    encoded = model.encode_scene(params, scenario)
    valid = encoded["agent_mask"]
    num_agents = valid.shape[0]
    full_fn = jax.vmap(lambda inp: model.decode_full(params, encoded, inp))

    def run_chunk(rollout_ids):
        n = rollout_ids.shape[0]

        def body(carry, t):
            inputs, state = carry  # inputs [n, A, S]: BOS then the tokens drawn so far
            logits = jax.lax.dynamic_index_in_dim(full_fn(inputs), t, 2, keepdims=False)
            if cfg.closest_top_k:
                toks, lp = _draw_closest(key, rollout_ids, t, logits, state, scenario, cfg, tcfg)
            else:
                toks, lp = _draw(key, rollout_ids, t, logits, cfg)
            nxt = jnp.minimum(t + 1, s_steps - 1)  # the last token is never an input
            inputs = jnp.where(t + 1 < s_steps,
                               jax.lax.dynamic_update_index_in_dim(inputs, toks, nxt, 2), inputs)
            state, subs = tok.step_token(state, toks, tcfg)
            return (inputs, state), (toks, lp, subs)

        inputs = jnp.full((n, num_agents, s_steps), dec.BOS_TOKEN, jnp.int32)
        _, outs = jax.lax.scan(body, (inputs, _initial_state(scenario, n)),
                               jnp.arange(s_steps, dtype=jnp.int32))
        return jax.tree.map(lambda v: jnp.moveaxis(v, 0, 1), outs)

    return _finish(_chunked(run_chunk, cfg), valid)

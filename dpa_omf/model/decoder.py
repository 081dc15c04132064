"""Joint autoregressive decoder over agents x token steps (one scene, no batch dim).

Sequence: the decoder token at (agent a, step t) embeds the PREVIOUS action of agent a
(``BOS`` at t = 0, ``UNKNOWN`` after an invalid token step) + a learned step embedding + the
agent embedding (its pooled local scene embedding and its pose in the scene frame, which acts as
the agent-identity embedding: equivariant to agent order, unlike slot-index embeddings). Its
output predicts the action of agent a at step t.

Masks: (a, t) attends to (b, t') iff t' <= t and agent b is modelled: since the input at t'
holds actions up to t' - 1, the agent sees ALL agents' actions before t and none at t (agents
are conditionally independent within a step). It cross-attends to its own local context
tokens only. Rows of unmodelled agents are computed but ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from dpa_omf import datatypes as dt
from dpa_omf.model import layers
from dpa_omf.model.encoder import POS_SCALE, VEL_SCALE
from dpa_omf.model.tokenizer import NUM_TOKENS

BOS_TOKEN = NUM_TOKENS  # 169: input at step 0
UNKNOWN_TOKEN = NUM_TOKENS + 1  # 170: input after an invalid (unobserved) token step
NUM_INPUT_TOKENS = NUM_TOKENS + 2


def scene_pose_features(agents: dt.Agents) -> jax.Array:
    """Pose of every agent at the current step in a scene frame: ``[A, 13]``.

    The frame is centred on the mean current position of the simulated agents (axes of the
    world frame), so the decoder can relate agents to one another.
    """
    cur = dt.CURRENT_INDEX
    f = lambda v: jnp.asarray(v, jnp.float32)[:, cur]
    sim = jnp.asarray(agents.sim_mask, bool)
    n = jnp.maximum(sim.sum(), 1)
    x, y = f(agents.x), f(agents.y)
    cx, cy = jnp.sum(jnp.where(sim, x, 0.0)) / n, jnp.sum(jnp.where(sim, y, 0.0)) / n
    h = f(agents.heading)
    feats = jnp.stack([(x - cx) * POS_SCALE, (y - cy) * POS_SCALE, jnp.cos(h), jnp.sin(h),
                       f(agents.vel_x) * VEL_SCALE, f(agents.vel_y) * VEL_SCALE,
                       f(agents.length) * 0.2, f(agents.width) * 0.2], -1)
    feats = jnp.concatenate([feats, jax.nn.one_hot(agents.type, 5)], -1)
    return jnp.where(sim[:, None], feats, 0.0)


def input_tokens(tokens: jax.Array, token_valid: jax.Array) -> jax.Array:
    """Shifted decoder inputs ``[..., A, S]`` from targets ``[..., A, S]``."""
    prev = jnp.where(token_valid, tokens, UNKNOWN_TOKEN)[..., :-1]
    bos = jnp.full(prev.shape[:-1] + (1,), BOS_TOKEN, prev.dtype)
    return jnp.concatenate([bos, prev], -1)


class JointDecoder(nn.Module):
    """See the module docstring. ``num_steps`` = S."""

    d_model: int
    num_heads: int
    mlp_ratio: int
    num_layers: int
    num_steps: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        d = self.d_model
        self.token_embed = nn.Embed(NUM_INPUT_TOKENS, d, embedding_init=nn.initializers.normal(0.02))
        self.step_embed = self.param("step_embedding", nn.initializers.normal(0.02), (self.num_steps, d))
        self.agent_proj = layers.Mlp(d, d, self.dtype)
        self.blocks = [layers.DecoderBlock(self.num_heads, d, self.mlp_ratio, self.dtype)
                       for _ in range(self.num_layers)]
        self.ln_out = nn.LayerNorm(dtype=self.dtype)
        # Zero-initialised head: the untrained model starts at the uniform distribution.
        self.head = nn.Dense(NUM_TOKENS, dtype=self.dtype, kernel_init=nn.initializers.zeros)

    def agent_embedding(self, pooled, pose):
        """Pooled scene embedding ``[A, D]`` + pose ``[A, 13]`` -> ``[A, D]``."""
        return self.agent_proj(jnp.concatenate([pooled, pose.astype(pooled.dtype)], -1))

    def embed(self, in_tokens, steps, agent_emb):
        """Inputs ``[..., A, Q]`` at step indices ``steps [Q]`` -> ``[..., A, Q, D]``."""
        x = self.token_embed(in_tokens) + self.step_embed[steps]
        return (x + agent_emb[..., None, :]).astype(self.dtype)

    def cross_kv(self, ctx):
        """Per-layer cross-attention keys/values of the context ``[A, K, D]`` (once per scene)."""
        return tuple(blk.cross_kv(ctx) for blk in self.blocks)

    def logits(self, x):
        return self.head(self.ln_out(x)).astype(jnp.float32)

    @staticmethod
    def self_mask(agent_mask, num_steps):
        """Self-attention mask ``[A * S, A * S]`` (query, key) on the agent-major order."""
        step = jnp.tile(jnp.arange(num_steps), agent_mask.shape[0])
        key_ok = jnp.repeat(agent_mask, num_steps)
        return (step[None, :] <= step[:, None]) & key_ok[None, :]

    def __call__(self, in_tokens, agent_emb, agent_mask, cross_kvs, ctx_mask):
        """Teacher-forced logits ``[A, S, 169]`` (float32) for inputs ``[A, S]``."""
        _a, s = in_tokens.shape
        x = self.embed(in_tokens, jnp.arange(s), agent_emb)
        mask = self.self_mask(agent_mask, s)
        for blk, (ck, cv) in zip(self.blocks, cross_kvs):
            x = blk(x, mask, ck, cv, ctx_mask)
        return self.logits(x)

    def forward(self, in_tokens, agent_emb, agent_mask, ctx, ctx_mask):
        """``__call__`` from the context tokens ``[A, K, D]`` instead of their per-layer
        keys/values: the training path (see ``DecoderBlock.forward``); same logits."""
        _a, s = in_tokens.shape
        x = self.embed(in_tokens, jnp.arange(s), agent_emb)
        self_bias = layers.mask_bias(self.self_mask(agent_mask, s))  # once for all blocks
        ctx_bias = layers.mask_bias(ctx_mask)[:, None, :]
        for blk in self.blocks:
            x = blk.forward(x, self_bias, ctx, ctx_bias)
        return self.logits(x)

    def step(self, in_tokens_t, t, agent_emb, agent_mask, cross_kvs, ctx_mask, cache):
        """Cached step ``t``: inputs ``[..., A]`` (leading axes: rollouts sampled together, each with its own
        cache ``[..., H, S, A, Dh]`` per layer, time-major) -> (logits ``[..., A, 169]``, new cache)."""
        x = self.embed(in_tokens_t[..., None], t[None], agent_emb)[..., 0, :]
        new_cache = []
        for blk, (ck, cv), (k, v) in zip(self.blocks, cross_kvs, cache):
            x, k, v = blk.step(x, k, v, t, agent_mask, ck, cv, ctx_mask)
            new_cache.append((k, v))
        return self.logits(x), tuple(new_cache)

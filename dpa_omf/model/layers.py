"""Transformer building blocks (flax linen) shared by the scene encoder and the decoder.

All blocks work on unbatched tokens (``[N, D]`` queries); batching is done by ``jax.vmap`` in
``motion_lm``. Parameters are float32; ``dtype`` is the compute dtype (bfloat16 optional);
softmax statistics are always float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

NEG_INF = -1e9  # finite: a fully masked row gives a uniform (ignored) distribution, not NaN


class Mlp(nn.Module):
    """Two-layer GELU MLP ``[..., in] -> [..., out]``."""

    hidden: int
    out: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
        return nn.Dense(self.out, dtype=self.dtype, name="fc2")(nn.gelu(x))


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Scaled dot-product attention.

    Args:
      q: ``[..., Q, H, Dh]``; k, v: ``[..., K, H, Dh]``; mask: bool broadcastable to
        ``[..., H, Q, K]`` (True = may attend).
    Returns:
      ``[..., Q, H, Dh]`` in the dtype of ``v``.
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k).astype(jnp.float32) * scale
    logits = jnp.where(mask, logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("...hqk,...khd->...qhd", probs, v)


class Attention(nn.Module):
    """Multi-head attention with separately callable projections (for KV caching)."""

    num_heads: int
    d_model: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        dh = self.d_model // self.num_heads
        proj = lambda name: nn.DenseGeneral((self.num_heads, dh), dtype=self.dtype, name=name)
        self.q_proj, self.k_proj, self.v_proj = proj("query"), proj("key"), proj("value")
        self.out_proj = nn.DenseGeneral(self.d_model, axis=(-2, -1), dtype=self.dtype, name="out")

    def kv(self, x):
        """``[..., K, D] -> (k, v)`` each ``[..., K, H, Dh]``."""
        return self.k_proj(x), self.v_proj(x)

    def query(self, x):
        return self.q_proj(x)

    def output(self, q, k, v, mask):
        return self.out_proj(attend(q, k, v, mask))

    def __call__(self, x_q, x_kv, mask):
        k, v = self.kv(x_kv)
        return self.output(self.query(x_q), k, v, mask)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm self-attention block: ``[..., N, D]`` tokens, key mask ``[..., N]``."""

    num_heads: int
    d_model: int
    mlp_ratio: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_mask):
        h = nn.LayerNorm(dtype=self.dtype, name="ln_attn")(x)
        x = x + Attention(self.num_heads, self.d_model, self.dtype, name="attn")(
            h, h, key_mask[..., None, None, :])
        h = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
        return x + Mlp(self.d_model * self.mlp_ratio, self.d_model, self.dtype, name="mlp")(h)


class DecoderBlock(nn.Module):
    """Pre-LN block: causal self-attention, cross-attention to per-agent context, MLP.

    ``__call__`` is the teacher-forced pass over all queries; ``self_kv`` / ``step`` are the
    pieces of the cached pass. Both use the same parameters, so they agree to rounding.
    """

    num_heads: int
    d_model: int
    mlp_ratio: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.ln_self = nn.LayerNorm(dtype=self.dtype)
        self.self_attn = Attention(self.num_heads, self.d_model, self.dtype)
        self.ln_cross = nn.LayerNorm(dtype=self.dtype)
        self.cross_attn = Attention(self.num_heads, self.d_model, self.dtype)
        self.ln_mlp = nn.LayerNorm(dtype=self.dtype)
        self.mlp = Mlp(self.d_model * self.mlp_ratio, self.d_model, self.dtype)

    def cross_kv(self, ctx):
        """Context ``[A, K, D]`` -> cross-attention (k, v) ``[A, K, H, Dh]`` (once per scene)."""
        return self.cross_attn.kv(ctx)

    def _cross_and_mlp(self, x, cross_k, cross_v, ctx_mask):
        # x: [..., A, Q, D]; each agent attends to its own context only.
        h = self.ln_cross(x)
        x = x + self.cross_attn.output(self.cross_attn.query(h), cross_k, cross_v,
                                       ctx_mask[..., None, None, :])
        return x + self.mlp(self.ln_mlp(x))

    def __call__(self, x, self_mask, cross_k, cross_v, ctx_mask):
        """Teacher-forced pass.

        Args:
          x: ``[A, S, D]`` decoder tokens.
          self_mask: bool ``[A * S, A * S]`` (query, key) on the flattened agent-major order.
          cross_k, cross_v: ``[A, K, H, Dh]``; ctx_mask: bool ``[A, K]``.
        """
        a, s, d = x.shape
        h = self.ln_self(x).reshape(a * s, d)
        x = x + self.self_attn(h, h, self_mask[None]).reshape(a, s, d)
        return self._cross_and_mlp(x, cross_k, cross_v, ctx_mask)

    def step(self, x_t, cache_k, cache_v, t, key_mask, cross_k, cross_v, ctx_mask):
        """One cached step for all agents.

        Args:
          x_t: ``[A, D]`` inputs of step ``t``.
          cache_k, cache_v: ``[A, S, H, Dh]`` keys/values of steps < t (rest arbitrary).
          t: int32 scalar step index.
          key_mask: bool ``[A]`` agents that may be attended to.
          cross_k, cross_v, ctx_mask: as in ``__call__``.
        Returns:
          (output ``[A, D]``, updated cache_k, cache_v).
        """
        h = self.ln_self(x_t)
        k_t, v_t = self.self_attn.kv(h)  # [A, H, Dh]
        cache_k = jax.lax.dynamic_update_index_in_dim(cache_k, k_t.astype(cache_k.dtype), t, 1)
        cache_v = jax.lax.dynamic_update_index_in_dim(cache_v, v_t.astype(cache_v.dtype), t, 1)
        a, s = cache_k.shape[:2]
        steps = jnp.arange(s)
        mask = (steps[None, :] <= t) & key_mask[:, None]  # [A', S] keys
        q = self.self_attn.query(h)  # [A, H, Dh]
        out = self.self_attn.output(q, cache_k.reshape((a * s,) + cache_k.shape[2:]),
                                    cache_v.reshape((a * s,) + cache_v.shape[2:]),
                                    mask.reshape(1, 1, a * s))
        x_t = x_t + out
        x_t = self._cross_and_mlp(x_t[:, None], cross_k, cross_v, ctx_mask)[:, 0]
        return x_t, cache_k, cache_v

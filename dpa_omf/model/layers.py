"""Transformer building blocks (flax linen) shared by the scene encoder and the decoder.

All blocks work on unbatched tokens (``[N, D]`` queries); batching is done by ``jax.vmap`` in
``motion_lm``. Parameters are float32; ``dtype`` is the compute dtype (bfloat16 optional);
softmax statistics are always float32.

Speed on a CPU (measured on the default pretraining step, see ``attend``): attention is written
heads-first with the mask as an additive bias shared by all layers, the softmax normalisation
deferred to the output and a closed-form backward pass; the teacher-forced cross-attention
folds its key/value projections into the queries (``Attention.cross_attend``). Parameters are
exactly those of the former ``nn.DenseGeneral`` layers (``DenseParams``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

# The cached self-attention reads one of this many static prefixes of the KV cache (DecoderBlock.step).
SELF_ATTENTION_SPANS = 4
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


def mask_bias(mask: jax.Array) -> jax.Array:
    """Additive float32 attention bias of a bool mask: 0 where True, ``NEG_INF`` where False."""
    return jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)


def _as_bias(mask: jax.Array) -> jax.Array:
    return mask_bias(mask) if mask.dtype == jnp.bool_ else mask


@jax.custom_vjp
def _attend_hf(q, k, v, bias):
    """Heads-first attention ``q [..., Q, d] k [..., K, d] v [..., K, e] -> [..., Q, e]``.

    ``q`` is already scaled; ``bias`` (float32, broadcastable to ``[..., Q, K]``) is added to
    the logits. The softmax normalisation is applied to the ``[..., Q, e]`` output instead of
    the ``[..., Q, K]`` weights (fewer elements); the backward pass (below) uses the closed-form
    softmax-attention gradient from the saved weights instead of differentiating each step.
    """
    return _attend_hf_fwd(q, k, v, bias)[0]


def _attend_hf_fwd(q, k, v, bias):
    logits = jnp.einsum("...qd,...kd->...qk", q, k).astype(jnp.float32) + bias
    row_max = jnp.max(logits, -1, keepdims=True)
    unnorm = jnp.exp(logits - row_max)
    inv = 1.0 / jnp.sum(unnorm, -1, keepdims=True)
    out = jnp.einsum("...qk,...kd->...qd", unnorm.astype(v.dtype), v) * inv.astype(v.dtype)
    probs = (unnorm * inv).astype(v.dtype)
    # A fully masked row has uniform weights that do not depend on q, k (as with jnp.where).
    row_ok = (row_max > 0.5 * NEG_INF).astype(jnp.float32)
    return out, (q, k, v, probs, out, bias, row_ok)


def _attend_hf_bwd(res, g):
    q, k, v, probs, out, bias, row_ok = res
    g = g.astype(v.dtype)
    dv = jnp.einsum("...qk,...qd->...kd", probs, g)
    dp = jnp.einsum("...qd,...kd->...qk", g, v).astype(jnp.float32)
    delta = jnp.sum(g.astype(jnp.float32) * out.astype(jnp.float32), -1, keepdims=True)
    ds = (probs.astype(jnp.float32) * ((dp - delta) * row_ok)).astype(q.dtype)
    dq = jnp.einsum("...qk,...kd->...qd", ds, k)
    dk = jnp.einsum("...qk,...qd->...kd", ds, q)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), jnp.zeros_like(bias)


_attend_hf.defvjp(_attend_hf_fwd, _attend_hf_bwd)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Scaled dot-product attention.

    Args:
      q: ``[..., Q, H, Dh]``; k, v: ``[..., K, H, Dh]``; mask: bool broadcastable to
        ``[..., H, Q, K]`` (True = may attend), or a float32 additive bias of that shape
        (``mask_bias``; computed once and shared by the layers that use the same mask).
    Returns:
      ``[..., Q, H, Dh]`` in the dtype of ``v``.

    Same function as ``softmax(where(mask, q.k * scale, NEG_INF)) @ v``, computed the cheaper
    way on a CPU: heads-first batched matmuls (no ``[.., Q, H, K]`` transposes), the mask added
    as a bias, the scale folded into ``q``, the normalisation applied to the output and a
    closed-form backward pass.
    """
    return attend_heads_first(q, jnp.swapaxes(k, -2, -3), jnp.swapaxes(v, -2, -3), mask)


def attend_heads_first(q: jax.Array, kh: jax.Array, vh: jax.Array, mask: jax.Array) -> jax.Array:
    """``attend`` with keys and values already heads-first, ``[..., H, K, Dh]``: what a KV cache
    or a per-scene cross-attention context keeps, so no step transposes them (the transposes
    took a quarter of the cached sampler's time on a CPU). ``q`` ``[..., Q, H, Dh]``, mask and
    result as in ``attend``."""
    qh = jnp.swapaxes(q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype), -2, -3)  # [..., H, Q, Dh]
    return jnp.swapaxes(_attend_hf(qh, kh, vh, _as_bias(mask)), -2, -3)


def _dense_init(n_in: int, n_out: int, base):
    """``nn.DenseGeneral``'s initialisation: ``base`` on the flattened ``(in, out)`` shape."""

    def init(rng, shape, dtype=jnp.float32):
        return jnp.reshape(base(rng, (n_in, n_out), dtype), shape)

    return init


class DenseParams(nn.Module):
    """The parameters of ``nn.DenseGeneral(features, axis=<the last len(in_shape) axes>)``.

    Same names (``kernel`` ``in_shape + features``, ``bias`` ``features``), dtype (float32)
    and initialisation, so parameters and checkpoints are interchangeable with DenseGeneral;
    the caller does the contraction, which lets attention fold projections (see
    ``Attention.cross_attend``). Returns ``(kernel, bias)`` cast to ``dtype``.
    """

    in_shape: tuple[int, ...]
    features: tuple[int, ...]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self):
        n_in, n_out = math.prod(self.in_shape), math.prod(self.features)
        kernel = self.param("kernel", _dense_init(n_in, n_out, nn.initializers.lecun_normal()),
                            self.in_shape + self.features, jnp.float32)
        bias = self.param("bias", _dense_init(1, n_out, nn.initializers.zeros_init()),
                          self.features, jnp.float32)
        return kernel.astype(self.dtype), bias.astype(self.dtype)


def _apply_dense(x, params, n_in: int):
    """``x [..., *in] @ kernel [*in, *out] + bias`` (the contraction of nn.DenseGeneral)."""
    kernel, bias = params
    x = x.astype(kernel.dtype)
    dims = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x, kernel, (dims, ((), ()))) + bias


class Attention(nn.Module):
    """Multi-head attention with separately callable projections (for KV caching).

    Parameters: ``query``, ``key``, ``value`` (kernel ``[D, H, Dh]``, bias ``[H, Dh]``) and
    ``out`` (kernel ``[H, Dh, D]``, bias ``[D]``), exactly those of the DenseGeneral layers
    this module used to hold.
    """

    num_heads: int
    d_model: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        hd = (self.num_heads, self.d_model // self.num_heads)
        proj = lambda name: DenseParams((self.d_model,), hd, self.dtype, name=name)
        self.q_proj, self.k_proj, self.v_proj = proj("query"), proj("key"), proj("value")
        self.out_proj = DenseParams(hd, (self.d_model,), self.dtype, name="out")

    def kv(self, x):
        """``[..., K, D] -> (k, v)`` each ``[..., K, H, Dh]``."""
        return _apply_dense(x, self.k_proj(), 1), _apply_dense(x, self.v_proj(), 1)

    def query(self, x):
        return _apply_dense(x, self.q_proj(), 1)

    def output(self, q, k, v, mask):
        return _apply_dense(attend(q, k, v, mask), self.out_proj(), 2)

    def output_heads_first(self, q, kh, vh, mask):
        """``output`` from heads-first keys/values ``[..., H, K, Dh]`` (``attend_heads_first``)."""
        return _apply_dense(attend_heads_first(q, kh, vh, mask), self.out_proj(), 2)

    def __call__(self, x_q, x_kv, mask):
        k, v = self.kv(x_kv)
        return self.output(self.query(x_q), k, v, mask)

    def cross_attend(self, x_q, ctx, bias):
        """``__call__(x_q, ctx, bias)`` for few queries per context: the key and value
        projections are folded into the queries and the attended context, so the context
        ``[..., K, D]`` is never projected (``Q < K`` per context makes this cheaper).

        ``logits = (q W_k^T) . ctx`` (the key bias adds a per-query constant, which the
        softmax ignores), ``out = (sum_k p_k ctx_k) W_v + b_v`` (the weights sum to 1).

        All heads share the keys (the context itself), so they are stacked as ``H * Q``
        queries of one attention per context.

        Args:
          x_q: ``[..., Q, D]``; ctx: ``[..., K, D]``; bias: float32 broadcastable to
            ``[..., H * Q, K]``, e.g. ``[..., 1, K]`` (``mask_bias`` of the key mask).
        Returns:
          ``[..., Q, D]``.
        """
        wk, _ = self.k_proj()
        wv, bv = self.v_proj()
        h, dh = self.num_heads, self.d_model // self.num_heads
        q = self.query(x_q) * jnp.asarray(dh ** -0.5, self.dtype)  # [..., Q, H, Dh]
        qk = jnp.einsum("...qhe,dhe->...hqd", q, wk)  # [..., H, Q, D]
        nq = qk.shape[-2]
        qk = qk.reshape(qk.shape[:-3] + (h * nq, qk.shape[-1]))
        ctx = ctx.astype(self.dtype)
        att = _attend_hf(qk, ctx, ctx, bias)  # [..., H * Q, D]
        att = att.reshape(att.shape[:-2] + (h, nq, att.shape[-1]))
        o = jnp.einsum("...hqd,dhe->...qhe", att, wv) + bv
        return _apply_dense(o, self.out_proj(), 2)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm self-attention block: ``[..., N, D]`` tokens, key mask ``[..., N]``."""

    num_heads: int
    d_model: int
    mlp_ratio: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_mask):
        # key_mask: bool [..., N], or its mask_bias (computed once for all blocks).
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
        """Context ``[A, K, D]`` -> cross-attention keys ``[A, H, Dh, K]`` and values ``[A, H, K, Dh]``,
        once per scene, in the layouts the attention's two matmuls read (no per-step transposes)."""
        k, v = self.cross_attn.kv(ctx)  # [A, K, H, Dh]
        # The barrier keeps XLA from folding these transposes into their readers, which would
        # move them back into the sampler's step loop (once per step).
        return jax.lax.optimization_barrier((jnp.moveaxis(k, -3, -1), jnp.swapaxes(v, -2, -3)))

    def _cross_and_mlp(self, x, cross_k, cross_v, ctx_mask):
        # x: [..., A, Q, D]; cross_k, cross_v: cross_kv's layouts; each agent attends to its own context only.
        h = self.ln_cross(x)
        x = x + self.cross_attn.output_heads_first(self.cross_attn.query(h), jnp.swapaxes(cross_k, -1, -2),
                                                   cross_v, ctx_mask[..., None, None, :])
        return x + self.mlp(self.ln_mlp(x))

    def forward(self, x, self_bias, ctx, ctx_bias):
        """Teacher-forced pass from the context tokens themselves (the training path).

        Same function as ``__call__(x, self_mask, *cross_kv(ctx), ctx_mask)``, cheaper: the
        cross-attention folds its key/value projections into the few queries per agent
        (``Attention.cross_attend``) instead of projecting every context token.

        Args:
          x: ``[A, S, D]``; self_bias: ``mask_bias`` of the self-attention mask,
            ``[A * S, A * S]``; ctx: ``[A, K, D]``; ctx_bias: ``mask_bias`` of ``ctx_mask``,
            ``[A, 1, K]``.
        """
        a, s, d = x.shape
        h = self.ln_self(x).reshape(a * s, d)
        x = x + self.self_attn(h, h, self_bias[None]).reshape(a, s, d)
        x = x + self.cross_attn.cross_attend(self.ln_cross(x), ctx, ctx_bias)
        return x + self.mlp(self.ln_mlp(x))

    def __call__(self, x, self_mask, cross_k, cross_v, ctx_mask):
        """Teacher-forced pass.

        Args:
          x: ``[A, S, D]`` decoder tokens.
          self_mask: bool ``[A * S, A * S]`` (query, key) on the flattened agent-major order.
          cross_k, cross_v: ``[A, H, K, Dh]`` (``cross_kv``); ctx_mask: bool ``[A, K]``.
        """
        a, s, d = x.shape
        h = self.ln_self(x).reshape(a * s, d)
        x = x + self.self_attn(h, h, self_mask[None]).reshape(a, s, d)
        return self._cross_and_mlp(x, cross_k, cross_v, ctx_mask)

    def step(self, x_t, cache_k, cache_v, t, key_mask, cross_k, cross_v, ctx_mask):
        """One cached step for all agents of one scene, of one rollout or of several sampled together.

        Args:
          x_t: ``[..., A, D]`` inputs of step ``t``; the leading axes (none, or the rollouts ``[N]``)
            share the scene (its context) and each have their own cache.
          cache_k, cache_v: heads-first, time-major ``[..., H, S, A, Dh]`` keys/values of steps < t (rest
            arbitrary): the first steps are a prefix ``[..., H, span * A, Dh]`` as attention reads them.
          t: int32 scalar step index.
          key_mask: bool ``[A]`` agents that may be attended to.
          cross_k, cross_v, ctx_mask: as in ``__call__``.
        Returns:
          (output ``[..., A, D]``, updated cache_k, cache_v).
        """
        lead = x_t.shape[:-2]
        a, d = x_t.shape[-2:]
        h = self.ln_self(x_t)
        k_t, v_t = self.self_attn.kv(h)  # [..., A, H, Dh]
        put = lambda cache, new: jax.lax.dynamic_update_index_in_dim(
            cache, jnp.swapaxes(new, -2, -3).astype(cache.dtype), t, cache.ndim - 3)
        cache_k, cache_v = put(cache_k, k_t), put(cache_v, v_t)
        nh, s, _, dh = cache_k.shape[-4:]
        mask = (jnp.arange(s)[:, None] <= t) & key_mask[None, :]  # [S, A'] keys
        q = self.self_attn.query(h)  # [..., A, H, Dh]

        def attend_prefix(span: int):
            # Keys of the first ``span`` steps: a prefix of the time-major cache, so no copy of the rest.
            def run(q, ck, cv, mask):
                flat = lambda c: c[..., :span, :, :].reshape(lead + (nh, span * a, dh))
                return attend_heads_first(q, flat(ck), flat(cv), mask[:span].reshape(1, 1, span * a))
            return run

        # Keys after step t are masked (weight exactly 0): attend over the shortest of SELF_ATTENTION_SPANS
        # static prefixes that holds step t (lax.switch runs that one), not over all S steps.
        block = -(-s // SELF_ATTENTION_SPANS)
        spans = [min(end, s) for end in range(block, s + block, block)]
        att = jax.lax.switch(t // block, [attend_prefix(n) for n in spans], q, cache_k, cache_v, mask)
        x_t = x_t + _apply_dense(att, self.self_attn.out_proj(), 2)
        # Cross-attention agent-major: agent a's queries (one per rollout) against its own context are one
        # matmul, ``[N, Dh] x [Dh, K]`` per agent and head, in the layout the per-scene keys are stored in.
        xa = jnp.moveaxis(x_t.reshape((-1, a, d)), 0, 1)  # [A, N, D]
        xa = self._cross_and_mlp(xa, cross_k, cross_v, ctx_mask)
        return jnp.moveaxis(xa, 1, 0).reshape(x_t.shape), cache_k, cache_v

"""MotionLM-style joint multi-agent model: local scene encoder + joint autoregressive decoder.

Why flax linen: parameters are an explicit pytree (``{"params": ...}``) that passes through
``jax.jit`` with shardings, ``optax`` and ``orbax`` with no glue, and the KV cache is an
explicit array pytree threaded through ``lax.scan`` (no mutable module state), which nnx's
stateful objects would have to be split/merged around.

Public API (all functions pure; ``MotionLM`` is a hashable frozen config holder, usable as a
jit static argument)::

    model = MotionLM(ModelConfig())
    params = model.init(rng, scenario)                                  # scenario [B, ...]
    logits = model.logits(params, scenario, tokens, token_valid)        # [B, A, S, 169]
    lp = model.token_log_probs(params, scenario, tokens, token_valid)  # [B, A, S]
    loss, metrics = model.loss_and_metrics(params, scenario, tokens, token_valid)
    tokens, token_valid = tokenize_scenario(scenario, model.config.tokenizer)

Modelled agents are ``agents.sim_mask`` (valid at the current step); every other slot is
masked out as a key and its outputs are ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from dpa_omf import datatypes as dt
from dpa_omf.model import decoder as dec
from dpa_omf.model import encoder as enc
from dpa_omf.model import tokenizer as tok

Params = Any
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Model sizes. The default has 1.05M parameters; d_model=256, num_heads=8, mlp_ratio=4,
    enc_layers=3, dec_layers=4 gives ~7.2M; d_model=320, 8 heads, mlp_ratio=4, 4 + 5 layers ~14M.

    Attributes:
      d_model: width of every token.
      num_heads: attention heads (d_model % num_heads == 0).
      mlp_ratio: MLP hidden width / d_model.
      enc_layers: self-attention blocks over each agent's local context.
      dec_layers: decoder blocks (causal self-attention + cross-attention + MLP).
      compute_dtype: "float32" or "bfloat16" (parameters stay float32; logits are float32).
      encoder: local-context sizes.
      tokenizer: the action vocabulary (sets S, the number of token steps).
    """

    d_model: int = 128
    num_heads: int = 4
    mlp_ratio: int = 2
    enc_layers: int = 2
    dec_layers: int = 3
    compute_dtype: str = "float32"
    encoder: enc.EncoderConfig = dataclasses.field(default_factory=enc.EncoderConfig)
    tokenizer: tok.TokenizerConfig = dataclasses.field(default_factory=tok.TokenizerConfig)

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"ModelConfig: d_model={self.d_model} not divisible by num_heads={self.num_heads}")
        if self.compute_dtype not in _DTYPES:
            raise ValueError(f"ModelConfig.compute_dtype={self.compute_dtype!r} not in {sorted(_DTYPES)}")

    @property
    def num_steps(self) -> int:
        return self.tokenizer.num_token_steps

    @property
    def dtype(self):
        return _DTYPES[self.compute_dtype]


class _Net(nn.Module):
    cfg: ModelConfig

    def setup(self):
        c = self.cfg
        self.encoder = enc.SceneEncoder(c.d_model, c.num_heads, c.mlp_ratio, c.enc_layers, c.dtype)
        self.decoder = dec.JointDecoder(c.d_model, c.num_heads, c.mlp_ratio, c.dec_layers,
                                        c.num_steps, c.dtype)

    def encode(self, ctx, pose):
        """-> dict(agent_emb [A, D], ctx_mask [A, K], cross_kvs per layer: keys [A, H, Dh, K], values [A, H, K, Dh])."""
        tokens, ctx_mask, pooled = self.encoder(ctx)
        return dict(agent_emb=self.decoder.agent_embedding(pooled, pose), ctx_mask=ctx_mask,
                    cross_kvs=self.decoder.cross_kv(tokens))

    def __call__(self, ctx, pose, agent_mask, in_tokens):
        """Teacher-forced logits (training): the decoder attends to the context tokens
        directly (``JointDecoder.forward``), never building the per-layer cross keys/values
        that ``encode`` makes for the cached rollouts."""
        tokens, ctx_mask, pooled = self.encoder(ctx)
        agent_emb = self.decoder.agent_embedding(pooled, pose)
        return self.decoder.forward(in_tokens, agent_emb, agent_mask, tokens, ctx_mask)

    def decode(self, e, agent_mask, in_tokens):
        """Full (uncached) decoder pass over inputs ``[A, S]`` with a precomputed encoding."""
        return self.decoder(in_tokens, e["agent_emb"], agent_mask, e["cross_kvs"], e["ctx_mask"])

    def step(self, e, agent_mask, in_tokens_t, t, cache):
        return self.decoder.step(in_tokens_t, t, e["agent_emb"], agent_mask, e["cross_kvs"],
                                 e["ctx_mask"], cache)


def _jit_method(fn):
    """jit a method with ``self`` (a hashable frozen config holder) static."""
    return jax.jit(fn, static_argnums=0)


def _first(tree):
    return jax.tree.map(lambda v: v[0], tree)


def tokenize_scenario(scenario: dt.Scenario, tok_config: tok.TokenizerConfig
                      ) -> tuple[jax.Array, jax.Array]:
    """Greedy tokens of the logged future: (int32 ``[..., A, S]``, bool valid ``[..., A, S]``)."""
    tokens, valid, _ = tok.tokenize(scenario.agents, tok_config)
    return tokens, valid


@dataclasses.dataclass(frozen=True)
class MotionLM:
    """Functional wrapper; see the module docstring."""

    config: ModelConfig = dataclasses.field(default_factory=ModelConfig)

    @property
    def net(self) -> _Net:
        return _Net(self.config)

    # ---------------------------------------------------------------- single-scene pieces
    @_jit_method
    def scene_inputs(self, scenario: dt.Scenario):
        """(context features, pose ``[A, 13]``, agent mask ``[A]``) of ONE scene."""
        ctx = enc.local_context(scenario, self.config.encoder)
        return ctx, dec.scene_pose_features(scenario.agents), jnp.asarray(scenario.agents.sim_mask, bool)

    @_jit_method
    def _scene_logits(self, params, scenario, tokens, token_valid):
        ctx, pose, mask = self.scene_inputs(scenario)
        in_tok = dec.input_tokens(tokens, token_valid & mask[:, None])
        return self.net.apply({"params": params}, ctx, pose, mask, in_tok)

    @_jit_method
    def encode_scene(self, params: Params, scenario: dt.Scenario) -> dict:
        """Encodes ONE scene once (shared by all its rollouts): a pytree of arrays."""
        ctx, pose, mask = self.scene_inputs(scenario)
        e = self.net.apply({"params": params}, ctx, pose, method=_Net.encode)
        return dict(e, agent_mask=mask)

    def init_cache(self, num_agents: int, rollouts: tuple[int, ...] = ()):
        """Zero KV cache of one scene: per layer (k, v) heads-first, time-major ``[*rollouts, H, S, A, Dh]`` in
        the compute dtype (``rollouts``: leading axes of rollouts sampled together, one cache each)."""
        c = self.config
        shape = tuple(rollouts) + (c.num_heads, c.num_steps, num_agents, c.d_model // c.num_heads)
        z = lambda: jnp.zeros(shape, c.dtype)
        return tuple((z(), z()) for _ in range(c.dec_layers))

    @_jit_method
    def decode_step(self, params: Params, encoded: dict, in_tokens_t: jax.Array, t: jax.Array, cache):
        """Cached step of ONE scene: inputs ``[..., A]`` at step ``t`` -> (logits ``[..., A, 169]``, cache).

        Leading axes are rollouts sampled together (``init_cache(A, rollouts)``): they share the scene's
        encoding, so the cross-attention reads each agent's context once for all of them."""
        e = {k: v for k, v in encoded.items() if k != "agent_mask"}
        return self.net.apply({"params": params}, e, encoded["agent_mask"], in_tokens_t,
                              jnp.asarray(t, jnp.int32), cache, method=_Net.step)

    @_jit_method
    def decode_full(self, params: Params, encoded: dict, in_tokens: jax.Array) -> jax.Array:
        """Uncached logits ``[A, S, 169]`` of ONE scene from decoder inputs ``[A, S]``."""
        e = {k: v for k, v in encoded.items() if k != "agent_mask"}
        return self.net.apply({"params": params}, e, encoded["agent_mask"], in_tokens,
                              method=_Net.decode)

    @_jit_method
    def scene_logits(self, params: Params, scenario: dt.Scenario, tokens, token_valid):
        """Teacher-forced logits ``[A, S, 169]`` of ONE scene."""
        return self._scene_logits(params, scenario, tokens, token_valid)

    # ---------------------------------------------------------------- batched API
    @_jit_method
    def init(self, rng: jax.Array, scenario: dt.Scenario) -> Params:
        """Parameters from the first scene of a batch ``[B, ...]`` (shapes only matter)."""
        s = _first(scenario)
        ctx, pose, mask = self.scene_inputs(s)
        in_tok = jnp.full((s.num_agents, self.config.num_steps), dec.BOS_TOKEN, jnp.int32)
        return self.net.init(rng, ctx, pose, mask, in_tok)["params"]

    @_jit_method
    def logits(self, params: Params, scenario: dt.Scenario, tokens, token_valid) -> jax.Array:
        """Teacher-forced logits ``[B, A, S, 169]`` float32."""
        return jax.vmap(self._scene_logits, in_axes=(None, 0, 0, 0))(params, scenario, tokens, token_valid)

    @_jit_method
    def token_log_probs(self, params: Params, scenario: dt.Scenario, tokens, token_valid) -> jax.Array:
        """log pi(token | earlier tokens of all agents, scene): ``[B, A, S]``, 0 where invalid."""
        logits = self.logits(params, scenario, tokens, token_valid)
        return _gather_log_probs(logits, tokens, self._valid(scenario, token_valid))

    @_jit_method
    def loss_and_metrics(self, params: Params, scenario: dt.Scenario, tokens, token_valid):
        """Mean next-token NLL over valid agent-steps, and metrics as masked sums + counts.

        Returns:
          (loss scalar, dict(nll_sum, correct_sum, count)) — accuracy = correct_sum / count.
        """
        logits = self.logits(params, scenario, tokens, token_valid)
        valid = self._valid(scenario, token_valid)
        lp = _gather_log_probs(logits, tokens, valid)
        count = valid.sum().astype(jnp.float32)
        nll_sum = -lp.sum()
        correct = (jnp.argmax(logits, -1) == tokens) & valid
        metrics = dict(nll_sum=nll_sum, correct_sum=correct.sum().astype(jnp.float32), count=count)
        return nll_sum / jnp.maximum(count, 1.0), metrics

    @staticmethod
    def _valid(scenario, token_valid):
        return jnp.asarray(token_valid, bool) & jnp.asarray(scenario.agents.sim_mask, bool)[..., None]


def _gather_log_probs(logits, tokens, valid):
    lp = jax.nn.log_softmax(logits, -1)
    lp = jnp.take_along_axis(lp, jnp.clip(tokens, 0, tok.NUM_TOKENS - 1)[..., None], -1)[..., 0]
    return jnp.where(valid, lp, 0.0)


def param_count(params: Params) -> int:
    return sum(int(v.size) for v in jax.tree.leaves(params))

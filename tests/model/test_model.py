"""MotionLM: shapes, masks, time-causality, equivariance, cache consistency, learning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.model import decoder as dec
from dpa_omf.model import encoder as enc
from dpa_omf.model import motion_lm as ml
from dpa_omf.model import tokenizer as tk

TINY = ml.ModelConfig(d_model=32, num_heads=2, mlp_ratio=2, enc_layers=1, dec_layers=2,
                      encoder=enc.EncoderConfig(k_agents=4, k_roadgraph=8, roadgraph_stride=1))


def toy_scenario(seed: int, num_agents: int = 6, num_points: int = 64, num_sim: int | None = None) -> dt.Scenario:
    """A small random scene: agents driven by random tokens, random road samples and lights.

    The last ``num_agents - num_sim`` agents are invalid at the current step (context only).
    """
    rng = np.random.default_rng(seed)
    a = num_agents
    num_sim = a - 1 if num_sim is None else num_sim
    s = dt.empty_scenario(a, num_points)
    h = rng.uniform(-np.pi, np.pi, a)
    v = rng.uniform(0.0, 12.0, a)
    f = lambda x: jnp.asarray(x, jnp.float32)
    s0 = tk.KinematicState(f(rng.uniform(-30, 30, a)), f(rng.uniform(-30, 30, a)), f(h),
                           f(v * np.cos(h)), f(v * np.sin(h)))
    fut = tk.integrate(s0, jnp.asarray(rng.integers(0, 169, (a, 16))), tk.TokenizerConfig())
    t_hist = np.arange(-dt.NUM_PAST, 1) * dt.DT
    hist = lambda p, vel: np.asarray(p)[:, None] + np.asarray(vel)[:, None] * t_hist
    cat = lambda h_, fu: np.concatenate([h_, np.asarray(fu)], 1).astype(np.float32)
    rep = lambda x: np.repeat(np.asarray(x)[:, None], dt.NUM_HISTORY, 1)
    valid = np.ones((a, dt.NUM_STEPS), bool)
    valid[num_sim:, dt.CURRENT_INDEX:] = False  # context-only agents, seen in the past
    ones = np.ones((a, dt.NUM_STEPS), np.float32)
    agents = s.agents.replace(
        x=cat(hist(s0.x, s0.vel_x), fut.x), y=cat(hist(s0.y, s0.vel_y), fut.y),
        heading=cat(rep(s0.heading), fut.heading), vel_x=cat(rep(s0.vel_x), fut.vel_x),
        vel_y=cat(rep(s0.vel_y), fut.vel_y), length=4.5 * ones, width=2.0 * ones, valid=valid,
        type=rng.integers(1, 4, a).astype(np.int32), id=np.arange(a, dtype=np.int32),
        sim_mask=valid[:, dt.CURRENT_INDEX])
    agents = agents.replace(**{k: np.where(valid, getattr(agents, k), 0.0).astype(np.float32)
                               for k in ("x", "y", "heading", "vel_x", "vel_y")})
    xyz = np.zeros((num_points, 3), np.float32)
    xyz[:, :2] = rng.uniform(-60, 60, (num_points, 2))
    d = rng.normal(size=(num_points, 3)).astype(np.float32)
    rg = s.roadgraph.replace(xyz=xyz, dir=d / np.linalg.norm(d, axis=-1, keepdims=True),
                             type=rng.integers(1, 20, num_points).astype(np.int32),
                             id=np.arange(num_points, dtype=np.int32), valid=np.ones(num_points, bool))
    tl = s.traffic_lights
    tl_valid = np.zeros_like(tl.valid)
    tl_valid[:, :3] = True
    sp = np.zeros_like(tl.stop_point)
    sp[:, :3, :2] = rng.uniform(-30, 30, (3, 2))
    lights = tl.replace(valid=tl_valid, stop_point=sp,
                        state=np.where(tl_valid, rng.integers(1, 9, tl.state.shape), 0).astype(np.int32))
    return s.replace(agents=agents, roadgraph=rg, traffic_lights=lights).validate("toy")


def perturbed_params(model, scenario, seed=0, scale=0.3):
    """Initial parameters plus noise: the zero-initialised head would hide dependencies."""
    params = model.init(jax.random.key(seed), scenario)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def batch():
    scen = dt.stack_scenarios([toy_scenario(0), toy_scenario(1)])
    tokens, valid = ml.tokenize_scenario(scen, TINY.tokenizer)
    return scen, tokens, valid


@pytest.fixture(scope="module")
def tiny():
    return ml.MotionLM(TINY)


@pytest.fixture(scope="module")
def params(tiny, batch):
    """Perturbed tiny parameters, built once (compiles are the slow part of these tests)."""
    return perturbed_params(tiny, batch[0])


@pytest.fixture(scope="module")
def base_logits(tiny, batch, params):
    scen, tokens, valid = batch
    return tiny.logits(params, scen, tokens, valid)


def test_default_size_about_one_million_parameters():
    model = ml.MotionLM(ml.ModelConfig())
    scen = dt.stack_scenarios([toy_scenario(0, num_agents=4, num_points=32)])
    shapes = jax.eval_shape(model.init, jax.random.key(0), scen)
    n = ml.param_count(shapes)
    assert 0.8e6 <= n <= 1.3e6, n
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(shapes))


def test_parameter_shapes_do_not_depend_on_scene_size():
    # Fewer road samples / agents than k: the context is padded, not shortened.
    model = ml.MotionLM(TINY)
    small = jax.eval_shape(model.init, jax.random.key(0), dt.stack_scenarios([toy_scenario(0, 3, 4)]))
    large = jax.eval_shape(model.init, jax.random.key(0), dt.stack_scenarios([toy_scenario(0, 9, 200)]))
    assert jax.tree.map(lambda v: v.shape, small) == jax.tree.map(lambda v: v.shape, large)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        ml.ModelConfig(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="compute_dtype"):
        ml.ModelConfig(compute_dtype="float16")


def test_shapes_uniform_start_and_masked_log_probs(tiny, batch):
    scen, tokens, valid = batch
    params = tiny.init(jax.random.key(0), scen)
    logits = tiny.logits(params, scen, tokens, valid)
    assert logits.shape == (2, 6, 16, 169) and logits.dtype == jnp.float32
    lp = tiny.token_log_probs(params, scen, tokens, valid)
    assert lp.shape == (2, 6, 16)
    model_valid = np.asarray(valid) & np.asarray(scen.agents.sim_mask)[..., None]
    np.testing.assert_allclose(np.asarray(lp)[model_valid], -np.log(169.0), rtol=1e-5)  # zero head
    assert np.all(np.asarray(lp)[~model_valid] == 0.0)
    loss, m = tiny.loss_and_metrics(params, scen, tokens, valid)
    assert float(loss) == pytest.approx(np.log(169.0), rel=1e-5)
    assert float(m["count"]) == model_valid.sum() > 0
    assert float(m["nll_sum"]) == pytest.approx(float(loss) * model_valid.sum(), rel=1e-5)


def test_time_causal_and_joint(tiny, batch, params, base_logits):
    scen, tokens, valid = batch
    base = base_logits
    t = 7
    # Changing every agent's tokens at steps >= t leaves all logits at steps <= t unchanged.
    changed = tokens.at[:, :, t:].set((tokens[:, :, t:] + 17) % 169)
    new = tiny.logits(params, scen, changed, valid)
    np.testing.assert_allclose(new[:, :, : t + 1], base[:, :, : t + 1], atol=1e-5)
    assert float(jnp.abs(new[:, :, t + 1:] - base[:, :, t + 1:]).max()) > 1e-3
    # Agent 1's token at t influences agent 0 at t + 1 (joint model), not at t.
    one = tokens.at[:, 1, t].set((tokens[:, 1, t] + 40) % 169)
    new = tiny.logits(params, scen, one, valid)
    np.testing.assert_allclose(new[:, 0, : t + 1], base[:, 0, : t + 1], atol=1e-5)
    assert float(jnp.abs(new[:, 0, t + 1] - base[:, 0, t + 1]).max()) > 1e-4


def test_unmodelled_agents_and_invalid_tokens_are_masked(tiny, batch, params, base_logits):
    scen, tokens, valid = batch
    sim = np.asarray(scen.agents.sim_mask)
    base = base_logits
    ghost = int(np.flatnonzero(~sim[0])[0])
    other = tokens.at[:, ghost].set((tokens[:, ghost] + 50) % 169)
    new = tiny.logits(params, scen, other, valid)
    np.testing.assert_allclose(np.asarray(new)[sim], np.asarray(base)[sim], atol=1e-5)
    # An invalid token is fed as UNKNOWN: its value does not matter.
    inval = valid.at[:, 0, 3].set(False)
    a = tiny.logits(params, scen, tokens, inval)
    b = tiny.logits(params, scen, tokens.at[:, 0, 3].set(0), inval)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_agent_permutation_equivariance(tiny, batch, params, base_logits):
    scen, tokens, valid = batch
    perm = np.array([3, 0, 4, 1, 2, 5])
    p_agents = jax.tree.map(lambda v: v[:, perm], scen.agents)
    p_scen = scen.replace(agents=p_agents)
    base = base_logits
    new = tiny.logits(params, p_scen, tokens[:, perm], valid[:, perm])
    sim = np.asarray(scen.agents.sim_mask)[:, perm]
    np.testing.assert_allclose(np.asarray(new)[sim], np.asarray(base[:, perm])[sim], atol=1e-4)


def test_translation_invariance(tiny, batch, params, base_logits):
    scen, tokens, valid = batch
    shift = np.float32(500.0)
    ag = scen.agents
    moved = scen.replace(
        agents=ag.replace(x=np.where(ag.valid, ag.x + shift, 0.0), y=np.where(ag.valid, ag.y - shift, 0.0)),
        roadgraph=scen.roadgraph.replace(xyz=scen.roadgraph.xyz + np.array([shift, -shift, 0], np.float32)),
        traffic_lights=scen.traffic_lights.replace(
            stop_point=scen.traffic_lights.stop_point + np.array([shift, -shift, 0], np.float32)))
    sim = np.asarray(ag.sim_mask)
    a = np.asarray(base_logits)[sim]
    b = np.asarray(tiny.logits(params, moved, tokens, valid))[sim]
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_cached_decoding_matches_teacher_forcing(tiny, batch, params, base_logits):
    scen, tokens, valid = batch
    s0 = jax.tree.map(lambda v: v[0], scen)
    full = base_logits[0]
    e = tiny.encode_scene(params, s0)
    inputs = dec.input_tokens(tokens[0], valid[0] & s0.agents.sim_mask[:, None])

    def body(cache, t):
        logits, cache = tiny.decode_step(params, e, inputs[:, t], t, cache)
        return cache, logits

    _, steps = jax.lax.scan(body, tiny.init_cache(s0.num_agents), jnp.arange(16))
    sim = np.asarray(s0.agents.sim_mask)
    np.testing.assert_allclose(np.asarray(jnp.swapaxes(steps, 0, 1))[sim], np.asarray(full)[sim], atol=1e-4)


def test_bf16_compute_runs_close_to_f32(batch, params, base_logits):
    scen, tokens, valid = batch
    m16 = ml.MotionLM(dataclasses.replace(TINY, compute_dtype="bfloat16"))
    l16 = m16.logits(params, scen, tokens, valid)
    assert l16.dtype == jnp.float32 and bool(jnp.isfinite(l16).all())
    sim = np.asarray(scen.agents.sim_mask)
    p32 = jax.nn.softmax(base_logits)[sim]
    p16 = jax.nn.softmax(l16)[sim]
    assert float(jnp.abs(p16 - p32).sum(-1).mean()) < 0.1  # total variation per step


def test_training_steps_reduce_loss(tiny, batch):
    scen, tokens, valid = batch
    params = tiny.init(jax.random.key(0), scen)
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        (loss, _), g = jax.value_and_grad(tiny.loss_and_metrics, has_aux=True)(params, scen, tokens, valid)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss, g

    losses = []
    for i in range(40):
        params, state, loss, g = step(params, state)
        if i == 0:
            assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(g))
        losses.append(float(loss))
    assert losses[-1] < 0.6 * losses[0], losses


# The default model's parameter tree (path, shape; all float32), written out from the code
# that trained the first long run: checkpoints of that code must keep loading into this one.
# A change here breaks every saved checkpoint (see test_default_parameter_tree_is_pinned).
DEFAULT_PARAM_TREE = """
decoder/agent_proj/fc1/bias 128
decoder/agent_proj/fc1/kernel 141 128
decoder/agent_proj/fc2/bias 128
decoder/agent_proj/fc2/kernel 128 128
decoder/blocks_0/cross_attn/key/bias 4 32
decoder/blocks_0/cross_attn/key/kernel 128 4 32
decoder/blocks_0/cross_attn/out/bias 128
decoder/blocks_0/cross_attn/out/kernel 4 32 128
decoder/blocks_0/cross_attn/query/bias 4 32
decoder/blocks_0/cross_attn/query/kernel 128 4 32
decoder/blocks_0/cross_attn/value/bias 4 32
decoder/blocks_0/cross_attn/value/kernel 128 4 32
decoder/blocks_0/ln_cross/bias 128
decoder/blocks_0/ln_cross/scale 128
decoder/blocks_0/ln_mlp/bias 128
decoder/blocks_0/ln_mlp/scale 128
decoder/blocks_0/ln_self/bias 128
decoder/blocks_0/ln_self/scale 128
decoder/blocks_0/mlp/fc1/bias 256
decoder/blocks_0/mlp/fc1/kernel 128 256
decoder/blocks_0/mlp/fc2/bias 128
decoder/blocks_0/mlp/fc2/kernel 256 128
decoder/blocks_0/self_attn/key/bias 4 32
decoder/blocks_0/self_attn/key/kernel 128 4 32
decoder/blocks_0/self_attn/out/bias 128
decoder/blocks_0/self_attn/out/kernel 4 32 128
decoder/blocks_0/self_attn/query/bias 4 32
decoder/blocks_0/self_attn/query/kernel 128 4 32
decoder/blocks_0/self_attn/value/bias 4 32
decoder/blocks_0/self_attn/value/kernel 128 4 32
decoder/blocks_1/cross_attn/key/bias 4 32
decoder/blocks_1/cross_attn/key/kernel 128 4 32
decoder/blocks_1/cross_attn/out/bias 128
decoder/blocks_1/cross_attn/out/kernel 4 32 128
decoder/blocks_1/cross_attn/query/bias 4 32
decoder/blocks_1/cross_attn/query/kernel 128 4 32
decoder/blocks_1/cross_attn/value/bias 4 32
decoder/blocks_1/cross_attn/value/kernel 128 4 32
decoder/blocks_1/ln_cross/bias 128
decoder/blocks_1/ln_cross/scale 128
decoder/blocks_1/ln_mlp/bias 128
decoder/blocks_1/ln_mlp/scale 128
decoder/blocks_1/ln_self/bias 128
decoder/blocks_1/ln_self/scale 128
decoder/blocks_1/mlp/fc1/bias 256
decoder/blocks_1/mlp/fc1/kernel 128 256
decoder/blocks_1/mlp/fc2/bias 128
decoder/blocks_1/mlp/fc2/kernel 256 128
decoder/blocks_1/self_attn/key/bias 4 32
decoder/blocks_1/self_attn/key/kernel 128 4 32
decoder/blocks_1/self_attn/out/bias 128
decoder/blocks_1/self_attn/out/kernel 4 32 128
decoder/blocks_1/self_attn/query/bias 4 32
decoder/blocks_1/self_attn/query/kernel 128 4 32
decoder/blocks_1/self_attn/value/bias 4 32
decoder/blocks_1/self_attn/value/kernel 128 4 32
decoder/blocks_2/cross_attn/key/bias 4 32
decoder/blocks_2/cross_attn/key/kernel 128 4 32
decoder/blocks_2/cross_attn/out/bias 128
decoder/blocks_2/cross_attn/out/kernel 4 32 128
decoder/blocks_2/cross_attn/query/bias 4 32
decoder/blocks_2/cross_attn/query/kernel 128 4 32
decoder/blocks_2/cross_attn/value/bias 4 32
decoder/blocks_2/cross_attn/value/kernel 128 4 32
decoder/blocks_2/ln_cross/bias 128
decoder/blocks_2/ln_cross/scale 128
decoder/blocks_2/ln_mlp/bias 128
decoder/blocks_2/ln_mlp/scale 128
decoder/blocks_2/ln_self/bias 128
decoder/blocks_2/ln_self/scale 128
decoder/blocks_2/mlp/fc1/bias 256
decoder/blocks_2/mlp/fc1/kernel 128 256
decoder/blocks_2/mlp/fc2/bias 128
decoder/blocks_2/mlp/fc2/kernel 256 128
decoder/blocks_2/self_attn/key/bias 4 32
decoder/blocks_2/self_attn/key/kernel 128 4 32
decoder/blocks_2/self_attn/out/bias 128
decoder/blocks_2/self_attn/out/kernel 4 32 128
decoder/blocks_2/self_attn/query/bias 4 32
decoder/blocks_2/self_attn/query/kernel 128 4 32
decoder/blocks_2/self_attn/value/bias 4 32
decoder/blocks_2/self_attn/value/kernel 128 4 32
decoder/head/bias 169
decoder/head/kernel 128 169
decoder/ln_out/bias 128
decoder/ln_out/scale 128
decoder/step_embedding 16 128
decoder/token_embed/embedding 171 128
encoder/agent_mlp/fc1/bias 128
encoder/agent_mlp/fc1/kernel 85 128
encoder/agent_mlp/fc2/bias 128
encoder/agent_mlp/fc2/kernel 128 128
encoder/block0/attn/key/bias 4 32
encoder/block0/attn/key/kernel 128 4 32
encoder/block0/attn/out/bias 128
encoder/block0/attn/out/kernel 4 32 128
encoder/block0/attn/query/bias 4 32
encoder/block0/attn/query/kernel 128 4 32
encoder/block0/attn/value/bias 4 32
encoder/block0/attn/value/kernel 128 4 32
encoder/block0/ln_attn/bias 128
encoder/block0/ln_attn/scale 128
encoder/block0/ln_mlp/bias 128
encoder/block0/ln_mlp/scale 128
encoder/block0/mlp/fc1/bias 256
encoder/block0/mlp/fc1/kernel 128 256
encoder/block0/mlp/fc2/bias 128
encoder/block0/mlp/fc2/kernel 256 128
encoder/block1/attn/key/bias 4 32
encoder/block1/attn/key/kernel 128 4 32
encoder/block1/attn/out/bias 128
encoder/block1/attn/out/kernel 4 32 128
encoder/block1/attn/query/bias 4 32
encoder/block1/attn/query/kernel 128 4 32
encoder/block1/attn/value/bias 4 32
encoder/block1/attn/value/kernel 128 4 32
encoder/block1/ln_attn/bias 128
encoder/block1/ln_attn/scale 128
encoder/block1/ln_mlp/bias 128
encoder/block1/ln_mlp/scale 128
encoder/block1/mlp/fc1/bias 256
encoder/block1/mlp/fc1/kernel 128 256
encoder/block1/mlp/fc2/bias 128
encoder/block1/mlp/fc2/kernel 256 128
encoder/light_mlp/fc1/bias 128
encoder/light_mlp/fc1/kernel 12 128
encoder/light_mlp/fc2/bias 128
encoder/light_mlp/fc2/kernel 128 128
encoder/ln_out/bias 128
encoder/ln_out/scale 128
encoder/modality_embedding 4 128
encoder/roadgraph_mlp/fc1/bias 128
encoder/roadgraph_mlp/fc1/kernel 26 128
encoder/roadgraph_mlp/fc2/bias 128
encoder/roadgraph_mlp/fc2/kernel 128 128
encoder/self_mlp/fc1/bias 128
encoder/self_mlp/fc1/kernel 84 128
encoder/self_mlp/fc2/bias 128
encoder/self_mlp/fc2/kernel 128 128
encoder/slot_embedding 97 128
"""


def test_default_parameter_tree_is_pinned():
    from flax import traverse_util

    model = ml.MotionLM(ml.ModelConfig())
    scen = dt.stack_scenarios([toy_scenario(0, num_agents=4, num_points=32)])
    shapes = jax.eval_shape(model.init, jax.random.key(0), scen)
    got = sorted(("/".join(k), tuple(v.shape), str(v.dtype))
                 for k, v in traverse_util.flatten_dict(shapes).items())
    want = sorted((path, tuple(int(d) for d in dims), "float32")
                  for path, *dims in (line.split() for line in DEFAULT_PARAM_TREE.strip().splitlines()))
    assert got == want
    assert ml.param_count(shapes) == 1_048_233


def test_attention_matches_the_plain_formula_and_its_gradient():
    """layers.attend (heads-first, bias, deferred normalisation, closed-form backward) against
    softmax(where(mask, q.k * scale, NEG_INF)) @ v, values and gradients."""
    from dpa_omf.model import layers

    def plain(q, k, v, mask):
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k) * q.shape[-1] ** -0.5
        probs = jax.nn.softmax(jnp.where(mask, logits, layers.NEG_INF), -1)
        return jnp.einsum("...hqk,...khd->...qhd", probs, v)

    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.normal(size=(3, n, 2, 8)), jnp.float32) for n in (5, 7, 7))
    mask = jnp.asarray(r.random((3, 1, 1, 7)) < 0.7).at[..., 0].set(True)
    mask = mask.at[1].set(False)  # a fully masked row: uniform weights in both
    w = jnp.asarray(r.normal(size=(3, 5, 2, 8)), jnp.float32)
    for m in (mask, layers.mask_bias(mask)):
        np.testing.assert_allclose(layers.attend(q, k, v, m), plain(q, k, v, mask), atol=1e-5)
        g_new = jax.grad(lambda *a, m=m: jnp.sum(w * layers.attend(*a, m)), argnums=(0, 1, 2))(q, k, v)
        g_old = jax.grad(lambda *a: jnp.sum(w * plain(*a, mask)), argnums=(0, 1, 2))(q, k, v)
        for a, b in zip(g_new, g_old):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_training_path_matches_the_rollout_path(tiny, batch, params, base_logits):
    """The teacher-forced logits (cross-attention folded into the queries) equal the rollout
    path's uncached pass from the per-layer context keys/values (encode_scene, decode_full)."""
    scen, tokens, valid = batch
    for b in range(2):
        s = jax.tree.map(lambda v, b=b: v[b], scen)
        e = tiny.encode_scene(params, s)
        inputs = dec.input_tokens(tokens[b], valid[b] & s.agents.sim_mask[:, None])
        full = tiny.decode_full(params, e, inputs)
        sim = np.asarray(s.agents.sim_mask)
        np.testing.assert_allclose(np.asarray(full)[sim], np.asarray(base_logits[b])[sim], atol=1e-4)

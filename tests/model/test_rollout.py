"""On-device sampler: consistency with teacher forcing, cache vs recompute, chunking, top-p."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_model import TINY, perturbed_params, toy_scenario

from dpa_omf import datatypes as dt
from dpa_omf.model import motion_lm as ml
from dpa_omf.model import sampling as ro
from dpa_omf.model import tokenizer as tk

CFG = ro.RolloutConfig(num_rollouts=4, rollout_chunk=2, temperature=0.8, top_p=0.95)


@pytest.fixture(scope="module")
def setup():
    model = ml.MotionLM(TINY)
    scene = toy_scenario(3, num_agents=6)
    params = perturbed_params(model, dt.stack_scenarios([scene]), seed=2, scale=0.2)
    return model, params, scene


@pytest.fixture(scope="module")
def cached(setup):
    model, params, scene = setup
    return ro.sample(model, params, scene, jax.random.key(7), CFG)


def test_shapes_and_validity(setup, cached):
    _, _, scene = setup
    r = cached
    a = scene.num_agents
    assert r.x.shape == r.y.shape == r.heading.shape == r.vel_x.shape == (4, a, 80)
    assert r.tokens.shape == r.log_probs.shape == (4, a, 16) and r.tokens.dtype == jnp.int32
    np.testing.assert_array_equal(r.valid, scene.agents.sim_mask)
    v = np.asarray(r.valid)
    assert np.all((np.asarray(r.tokens) >= 0) & (np.asarray(r.tokens) < 169))
    assert np.all(np.asarray(r.log_probs)[:, v] < 0.0)
    assert np.all(np.asarray(r.log_probs)[:, ~v] == 0.0)
    assert np.all(np.asarray(r.tokens)[:, ~v] == tk.ZERO_TOKEN)
    # Rollouts differ from one another (sampling, not argmax).
    assert not np.array_equal(r.tokens[0][v], r.tokens[1][v])


def test_states_are_the_integral_of_the_tokens(setup, cached):
    model, _, scene = setup
    r = cached
    s0 = tk.state_at(scene.agents, dt.CURRENT_INDEX)
    s0 = jax.tree.map(lambda v: jnp.broadcast_to(v, (4,) + v.shape), s0)
    states = tk.integrate(s0, r.tokens, model.config.tokenizer)
    v = np.asarray(r.valid)
    np.testing.assert_allclose(np.asarray(states.x)[:, v], np.asarray(r.x)[:, v], atol=1e-4)
    np.testing.assert_allclose(np.asarray(states.heading)[:, v], np.asarray(r.heading)[:, v], atol=1e-5)


def test_sampled_log_probs_equal_teacher_forced(setup, cached):
    model, params, scene = setup
    r = cached
    scenes = jax.tree.map(lambda v: np.broadcast_to(v, (4,) + np.shape(v)), scene)
    lp = model.token_log_probs(params, scenes, r.tokens, jnp.ones(r.tokens.shape, bool))
    v = np.asarray(r.valid)
    np.testing.assert_allclose(np.asarray(lp)[:, v], np.asarray(r.log_probs)[:, v], atol=1e-4)


def test_cached_and_uncached_draw_identical_tokens(setup, cached):
    model, params, scene = setup
    u = ro.sample_uncached(model, params, scene, jax.random.key(7), CFG)
    np.testing.assert_array_equal(u.tokens, cached.tokens)
    np.testing.assert_allclose(u.log_probs, cached.log_probs, atol=1e-4)
    np.testing.assert_allclose(u.x, cached.x, atol=1e-4)


def test_result_does_not_depend_on_chunking_but_on_key(setup, cached):
    model, params, scene = setup
    one_chunk = ro.RolloutConfig(num_rollouts=4, rollout_chunk=4, temperature=0.8, top_p=0.95)
    r = ro.sample(model, params, scene, jax.random.key(7), one_chunk)
    np.testing.assert_array_equal(r.tokens, cached.tokens)
    other = ro.sample(model, params, scene, jax.random.key(8), one_chunk)
    assert not np.array_equal(other.tokens, cached.tokens)


def test_sample_token_top_p_and_temperature():
    logits = jnp.log(jnp.array([0.4, 0.3, 0.2, 0.1]))
    keys = jax.random.split(jax.random.key(0), 2000)
    draw = jax.vmap(lambda k, p, t: ro.sample_token(k, logits, t, p), in_axes=(0, None, None))
    nucleus = np.asarray(jax.jit(draw, static_argnums=(1, 2))(keys, 0.6, 1.0))
    assert set(np.unique(nucleus)) == {0, 1}  # 0.4 + 0.3 covers 0.6
    frac = (nucleus == 0).mean()
    assert abs(frac - 0.4 / 0.7) < 0.05  # renormalised inside the nucleus
    greedy = np.asarray(draw(keys[:50], 1e-6, 1.0))
    assert np.all(greedy == 0)
    cold = np.asarray(draw(keys[:50], 1.0, 1e-3))
    assert np.all(cold == 0)
    full = np.asarray(draw(keys, 1.0, 1.0))
    assert set(np.unique(full)) == {0, 1, 2, 3}


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.8, 0.95), (0.7, 1.0)])
def test_a_traced_setting_draws_the_static_settings_rollouts(setup, temperature, top_p):
    """One program for every (temperature, top-p): the traced setting gives what the config's gives."""
    model, params, scene = setup
    key = jax.random.key(7)
    static = ro.sample(model, params, scene, key, ro.RolloutConfig(4, 2, temperature, top_p))
    base = ro.RolloutConfig(num_rollouts=4, rollout_chunk=2)
    setting = jnp.asarray([temperature, top_p], jnp.float32)
    traced = ro.sample(model, params, scene, key, base, setting)
    for name in ("tokens", "log_probs", "x", "heading"):
        np.testing.assert_array_equal(getattr(traced, name), getattr(static, name), err_msg=name)
    compiled = ro.sample._cache_size()
    ro.sample(model, params, scene, key, base, jnp.asarray([0.5, 0.5], jnp.float32))
    assert ro.sample._cache_size() == compiled  # no new program for another setting


def test_sample_token_traced_nucleus():
    logits = jnp.log(jnp.array([0.4, 0.3, 0.2, 0.1]))
    keys = jax.random.split(jax.random.key(0), 500)
    draw = jax.jit(jax.vmap(lambda k, p, t: ro.sample_token(k, logits, t, p), in_axes=(0, None, None)))
    for p, t in ((0.6, 1.0), (1.0, 0.5), (0.95, 0.8)):
        static = jax.vmap(lambda k, t=t, p=p: ro.sample_token(k, logits, t, p))(keys)
        np.testing.assert_array_equal(draw(keys, jnp.float32(p), jnp.float32(t)), static)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple"):
        ro.RolloutConfig(num_rollouts=10, rollout_chunk=4)
    with pytest.raises(ValueError):
        ro.RolloutConfig(top_p=0.0)
    assert ro.RolloutConfig(num_rollouts=8, rollout_chunk=64).chunk == 8

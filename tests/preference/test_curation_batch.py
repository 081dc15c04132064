"""Batched curation gives every scene exactly what it gets alone (same keys => same rollouts => same pairs)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.configs import align as align_config
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.preference import curation
from dpa_omf.preference import distance as dist
from dpa_omf.preference import features as feat


@pytest.fixture(scope="module")
def smoke(smoke_model):
    """The smoke model and scenes, their keys, and their batch ranked once with the states (as
    :func:`curation.rank_scene` ranks one scene): one compile of the batched program for both tests."""
    c = align_config.get_config("smoke")
    model, params, scenes = smoke_model
    keys = [jax.random.fold_in(jax.random.key(7), i) for i in range(3)]
    cfg = cfg_lib.curation_config(c)
    batch = jax.device_get(curation.rank_batch(model, params, dt.stack_scenarios(scenes), jnp.stack(keys), cfg,
                                               states=True))
    return cfg, model, params, scenes, keys, batch


def test_rank_batch_equals_scene_by_scene(smoke):
    cfg, model, params, scenes, keys, batch = smoke
    for b, (s, k) in enumerate(zip(scenes, keys)):
        one = jax.device_get(curation.rank_scene(model, params, s, k, cfg))
        for name in ("tokens", "ot_distance", "ade_distance", "preferred", "unpreferred", "per_agent",
                     "per_agent_counted", "eval_mask"):
            np.testing.assert_array_equal(batch[name][b], one[name], err_msg=name)  # bit for bit
        # What the shards store for per-agent credit: the scene distance is the counted agents' mean, and the
        # evaluated agents are simulated ones.
        counted = one["per_agent_counted"]
        assert counted.any(1).all() and not one["per_agent"][~counted].any()
        np.testing.assert_allclose(one["ot_distance"], one["per_agent"].sum(1) / counted.sum(1), rtol=1e-5)
        sim = np.asarray(s.agents.sim_mask)
        np.testing.assert_array_equal(one["eval_mask"], np.asarray(s.agents.eval_mask) & sim)


def test_feature_batches_equal_single_scenes(smoke):
    """Compiled, as curation runs them (one program per function; op by op they take minutes on 2 cores)."""
    cfg, _, _, scenes, _, r = smoke
    batch_fns = jax.jit(feat.rollout_features_batch, static_argnums=6), jax.jit(feat.expert_features_batch,
                                                                                 static_argnums=1)
    single_fns = jax.jit(feat.rollout_features, static_argnums=6), jax.jit(feat.expert_features, static_argnums=1)
    stacked = dt.stack_scenarios(scenes)
    phi_b, valid_b = batch_fns[0](stacked, *(r[k] for k in ("x", "y", "heading", "vel_x", "vel_y")), cfg.features)
    exp_b, exp_valid_b = batch_fns[1](stacked, cfg.features)
    for b, s in enumerate(scenes):
        phi, valid = single_fns[0](s, *(r[k][b] for k in ("x", "y", "heading", "vel_x", "vel_y")), cfg.features)
        np.testing.assert_array_equal(np.asarray(phi_b[b]), np.asarray(phi))
        np.testing.assert_array_equal(np.asarray(valid_b[b]), np.asarray(valid))
        exp, exp_valid = single_fns[1](s, cfg.features)
        np.testing.assert_array_equal(np.asarray(exp_b[b]), np.asarray(exp))
        np.testing.assert_array_equal(np.asarray(exp_valid_b[b]), np.asarray(exp_valid))


def test_ordered_sum_is_left_to_right_and_shape_independent(rng):
    x = rng.normal(size=(5, 37)).astype(np.float32) * np.float32(1e3)
    want = np.zeros(5, np.float32)
    for j in range(37):
        want = want + x[:, j]  # float32, index order
    np.testing.assert_array_equal(np.asarray(dist.ordered_sum(jnp.asarray(x), -1)), want)
    one = np.stack([np.asarray(dist.ordered_sum(jnp.asarray(x[i]), -1)) for i in range(5)])
    np.testing.assert_array_equal(one, want)


def test_auto_solver_follows_the_backend():
    assert dist.solver_for_backend("auto", "cpu")[0] == "exact_host"
    assert dist.solver_for_backend("auto", "gpu")[0] == "exact"
    assert dist.solver_for_backend("auto", "tpu")[0] == "exact"
    assert dist.solver_for_backend("sinkhorn", "gpu") == ("sinkhorn", "named in the config")
    c = align_config.get_config("smoke")
    assert c.curate.solver == "auto"
    assert cfg_lib.curation_config(c, backend="gpu").ot.solver == "exact"
    assert cfg_lib.curation_config(c, backend="cpu").ot.solver == "exact_host"


def test_feature_rollout_chunks_do_not_change_values(smoke):
    cfg, _, _, scenes, _, batch = smoke
    states = [batch[k][0] for k in ("x", "y", "heading", "vel_x", "vel_y")]  # scene 0's rollouts, ranked once
    num_rollouts = states[0].shape[0]
    # 3 -> chunks of 2 (the largest divisor of 8 at most 3): a lax.map of several chunks.
    assert feat.rollout_chunk_size(num_rollouts, dataclasses.replace(cfg.features, rollout_chunk=3)) == 2
    runs = {}
    for grid, chunk in ((64, None), (64, 3), (None, 3)):  # grid None: exhaustive search
        fc = dataclasses.replace(cfg.features, rollout_chunk=chunk, road_edge_grid=grid)
        runs[grid, chunk] = jax.device_get(jax.jit(lambda *v, fc=fc: feat.rollout_features_stats(scenes[0], *v, fc))(
            *states))
    phi, valid, stats = runs[64, None]
    assert valid.any() and np.abs(phi).max() > 0
    for (grid, chunk), (phi_c, valid_c, stats_c) in runs.items():
        np.testing.assert_array_equal(phi_c, phi, err_msg=f"phi, grid {grid}, chunk {chunk}")  # bit for bit
        np.testing.assert_array_equal(valid_c, valid)
        if grid is not None:
            assert stats_c == stats, chunk

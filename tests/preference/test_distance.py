"""Tests of the preference distance: exact OT vs scipy / POT, Sinkhorn ranking, boundary re-scoring."""

import os

os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")  # POT would import TF otherwise

import dataclasses

import jax
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from dpa_omf.preference import distance as D
from dpa_omf.preference import ot_device as ot_kernels
from dpa_omf.preference import ranking

ot = pytest.importorskip("ot")

UNIT = (1.0, 1.0, 1.0, 1.0, 1.0)


def _reference_cost(x, y, vx, vy, w=UNIT):
    """float64 POT exact cost between uniform measures on the valid points."""
    w = np.asarray(w, np.float64)
    xs, ys = x[vx].astype(np.float64) * w, y[vy].astype(np.float64) * w
    c = np.sqrt(((xs[:, None] - ys[None]) ** 2).sum(-1))
    a = np.full(len(xs), 1.0 / len(xs))
    b = np.full(len(ys), 1.0 / len(ys))
    return ot.emd2(a, b, c), c


def _random_mask(rng, t, k):
    m = np.zeros(t, bool)
    m[rng.choice(t, k, replace=False)] = True
    return m


def _problems(rng, num, t, kind):
    x = rng.normal(size=(num, t, 5)).astype(np.float32)
    y = (rng.normal(size=(num, t, 5)) + 0.3).astype(np.float32)
    vx = np.ones((num, t), bool)
    vy = np.ones((num, t), bool)
    for p in range(num):
        if kind == "equal_masked":
            k = rng.integers(1, t + 1)
            vx[p], vy[p] = _random_mask(rng, t, k), _random_mask(rng, t, k)
        elif kind == "ragged":
            vx[p] = _random_mask(rng, t, rng.integers(1, t + 1))
            vy[p] = _random_mask(rng, t, rng.integers(1, t + 1))
        elif kind == "rollout_full":
            vy[p] = _random_mask(rng, t, rng.integers(1, t + 1))
    return x, y, vx, vy


@pytest.mark.parametrize("solver", D.EXACT_SOLVERS)
@pytest.mark.parametrize("kind", ["full", "equal_masked", "ragged", "rollout_full"])
def test_exact_matches_pot(rng, kind, solver):
    x, y, vx, vy = _problems(rng, 24, 16, kind)
    cfg = D.OTConfig(solver=solver, feature_weights=UNIT)
    cost, plan = jax.jit(D.solve_plans, static_argnames="config")(x, y, vx, vy, config=cfg)
    cost, plan = np.asarray(cost), np.asarray(plan)
    for p in range(len(x)):
        ref, _ = _reference_cost(x[p], y[p], vx[p], vy[p])
        np.testing.assert_allclose(cost[p], ref, rtol=1e-4, err_msg=f"problem {p} ({kind})")
        # The plan is a coupling of the two uniform measures.
        np.testing.assert_allclose(plan[p].sum(1)[vx[p]], 1.0 / vx[p].sum(), rtol=1e-5)
        np.testing.assert_allclose(plan[p].sum(0)[vy[p]], 1.0 / vy[p].sum(), rtol=1e-5)
        assert np.all(plan[p][~vx[p]] == 0) and np.all(plan[p][:, ~vy[p]] == 0)


@pytest.mark.parametrize("solver", D.EXACT_SOLVERS)
def test_exact_matches_scipy_assignment_full_size(rng, solver):
    # 80 x 80 with heavy ties (integer-valued features): the hard case for an
    # auction and for the row-reduction of the host solver.
    t = 80
    x = rng.integers(0, 3, size=(6, t, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=(6, t, 5)).astype(np.float32)
    v = np.ones((6, t), bool)
    cfg = D.OTConfig(solver=solver, feature_weights=UNIT)
    cost, _ = jax.jit(D.solve_plans, static_argnames="config")(x, y, v, v, config=cfg)
    for p in range(6):
        c = np.sqrt(((x[p][:, None].astype(np.float64) - y[p][None]) ** 2).sum(-1))
        r, col = linear_sum_assignment(c)
        np.testing.assert_allclose(float(cost[p]), c[r, col].mean(), rtol=1e-4)


def test_ssp_kernel_on_divisible_and_coprime_sizes(rng):
    for n, m in [(8, 4), (7, 5), (1, 9), (12, 12)]:
        t = 12
        x = rng.normal(size=(t, 5)).astype(np.float32)
        y = rng.normal(size=(t, 5)).astype(np.float32)
        vx, vy = np.arange(t) < n, np.arange(t) >= t - m
        c = D.pairwise_cost(x, y)
        plan = np.asarray(jax.jit(ot_kernels.ssp_transport)(c, vx, vy))
        ref, _ = _reference_cost(x, y, vx, vy)
        np.testing.assert_allclose((plan * np.asarray(c)).sum(), ref, rtol=1e-5)


@pytest.mark.parametrize("solver", D.EXACT_SOLVERS)
def test_weights_scale_features_inside_norm(rng, solver):
    x, y, vx, vy = _problems(rng, 4, 10, "ragged")
    w = (10.0, 5.0, 2.0, 1.0, 1.0)
    for mode, eff in [("scale", w), ("quadratic", tuple(np.sqrt(w)))]:
        cfg = D.OTConfig(solver=solver, feature_weights=w, weight_mode=mode, feature_scaling="none")
        xs, ys = D.scale_features(x, cfg), D.scale_features(y, cfg)
        cost, _ = jax.jit(D.solve_plans, static_argnames="config")(xs, ys, vx, vy, config=cfg)
        for p in range(4):
            ref, _ = _reference_cost(x[p], y[p], vx[p], vy[p], eff)
            np.testing.assert_allclose(float(cost[p]), ref, rtol=1e-4)


@pytest.mark.parametrize("solver", D.EXACT_SOLVERS)
def test_ot_distance_shapes_masks_and_scene_mean(rng, solver):
    r, a, t = 4, 5, 12
    rp = rng.normal(size=(r, a, t, 5)).astype(np.float32)
    ep = rng.normal(size=(a, t, 5)).astype(np.float32)
    rv = np.ones((a, t), bool)  # [A, T] broadcast over rollouts
    ev = np.ones((a, t), bool)
    ev[1, 6:] = False  # ragged expert
    ev[3] = False  # no valid expert step: not counted
    mask = np.array([True, True, True, True, False])  # agent 4 not scored
    cfg = D.OTConfig(solver=solver, rollout_chunk=2, feature_scaling="none")  # raw units, as the reference
    scene, per_agent = D.ot_distance(rp, rv, ep, ev, mask, cfg)
    assert scene.shape == (r,) and per_agent.shape == (r, a)
    per_agent = np.asarray(per_agent)
    assert np.all(per_agent[:, 3:] == 0)
    for i in range(r):
        for j in range(3):
            ref, _ = _reference_cost(rp[i, j], ep[j], rv[j], ev[j], cfg.feature_weights)
            np.testing.assert_allclose(per_agent[i, j], ref, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(scene), per_agent[:, :3].mean(-1), rtol=1e-6)
    # A scene with no counted agent is NaN, not a silent 0.
    scene0, _ = D.ot_distance(rp, rv, ep, ev, np.zeros(a, bool), cfg)
    assert np.all(np.isnan(np.asarray(scene0)))


def test_expert_spread_scaling_hand_computed(rng):
    """feature_scaling='expert_std': each feature divided by the expert's standard deviation over the scored
    agents' valid steps (at least the floor) before the weights; the cost is then plain L2 of the result."""
    r, a, t = 2, 3, 8
    rp = rng.normal(size=(r, a, t, 5)).astype(np.float32)
    ep = (rng.normal(size=(a, t, 5)) * np.array([0.0, 3.0, 0.5, 0.01, 2.0])).astype(np.float32)
    ev = np.ones((a, t), bool)
    ev[1, 5:] = False
    ep[1, 5:] = 1e3  # invalid steps take no part
    mask = np.array([True, True, False])
    ep[2] = -1e3  # nor do unscored agents
    w = (10.0, 5.0, 2.0, 1.0, 1.0)
    floor = (1.0, 0.1, 0.1, 0.1, 0.1)
    cfg = D.OTConfig(feature_weights=w, feature_scaling="expert_std", spread_floor=floor)
    pooled = ep[:2][ev[:2]].astype(np.float64)  # [steps, 5]
    want = np.maximum(pooled.std(0), floor)
    np.testing.assert_allclose(D.expert_spread(ep, ev, mask, cfg), want, rtol=1e-5)
    assert want[0] == 1.0 and want[3] == pytest.approx(0.1)  # floored: no spread / too little
    _, per_agent = D.ot_distance(rp, np.ones((a, t), bool), ep, ev, mask, cfg)
    for i in range(r):
        for j in range(2):
            ref, _ = _reference_cost(rp[i, j], ep[j], np.ones(t, bool), ev[j], np.asarray(w) / want)
            np.testing.assert_allclose(float(per_agent[i, j]), ref, rtol=1e-4)
    # A scene's spread does not depend on the batch it is ranked in (bit for bit).
    eps = np.stack([ep, ep[::-1] * 2.0, ep + 1.0])
    evs = np.stack([ev, ev[::-1], ev])
    masks = np.stack([mask, mask[::-1], mask])
    batched = jax.jit(jax.vmap(lambda e, v, m: D.expert_spread(e, v, m, cfg)))(eps, evs, masks)
    for b in range(3):
        np.testing.assert_array_equal(batched[b], jax.jit(D.expert_spread, static_argnames="config")(
            eps[b], evs[b], masks[b], config=cfg))
    # The default is this scaling; 'none' puts the weights on raw units.
    assert D.OTConfig().feature_scaling == "expert_std"
    _, raw = D.ot_distance(rp, np.ones((a, t), bool), ep, ev, mask,
                           D.OTConfig(feature_weights=w, feature_scaling="none"))
    ref, _ = _reference_cost(rp[0, 0], ep[0], np.ones(t, bool), ev[0], w)
    np.testing.assert_allclose(float(raw[0, 0]), ref, rtol=1e-4)
    with pytest.raises(ValueError, match="spread"):
        D.scale_features(rp, cfg)
    with pytest.raises(ValueError, match="feature_scaling"):
        D.OTConfig(feature_scaling="minmax")
    with pytest.raises(ValueError, match="spread_floor"):
        D.OTConfig(spread_floor=(1.0, 0.0, 1.0, 1.0, 1.0))


def _synthetic_scene(rng, r=64, a=12, t=40):
    """Rollouts = expert + noise of clearly different magnitudes per rollout."""
    expert = rng.normal(size=(a, t, 5)).astype(np.float32) * np.array([0.3, 1, 5, 1, 5], np.float32)
    scale = np.linspace(0.05, 3.0, r)[rng.permutation(r)]
    noise = rng.normal(size=(r, a, t, 5)).astype(np.float32)
    rollouts = expert[None] + scale[:, None, None, None].astype(np.float32) * noise
    ev = np.ones((a, t), bool)
    ev[: a // 3, t // 2 :] = False  # ragged experts
    return rollouts, np.ones((r, a, t), bool), expert, ev, np.ones(a, bool), scale


def test_sinkhorn_ranking_matches_exact_sets(rng):
    rollouts, rv, expert, ev, mask, _ = _synthetic_scene(rng)
    exact, _ = D.ot_distance(rollouts, rv, expert, ev, mask, D.OTConfig(solver="exact"))
    sink, _ = D.ot_distance(rollouts, rv, expert, ev, mask, D.OTConfig(solver="sinkhorn"))
    pe, ue = ranking.rank_and_pair(exact)
    ps, us = ranking.rank_and_pair(sink)
    assert set(np.asarray(pe).tolist()) == set(np.asarray(ps).tolist())
    assert set(np.asarray(ue).tolist()) == set(np.asarray(us).tolist())
    # Sinkhorn's rounded plan is feasible, so its cost is an upper bound.
    assert np.all(np.asarray(sink) >= np.asarray(exact) * (1 - 1e-5))
    np.testing.assert_allclose(np.asarray(sink), np.asarray(exact), rtol=0.02)


def test_rescoring_makes_boundary_rollouts_exact(rng):
    rollouts, rv, expert, ev, mask, _ = _synthetic_scene(rng, a=6, t=20)
    exact, _ = D.ot_distance(rollouts, rv, expert, ev, mask, D.OTConfig(solver="exact"))
    # A deliberately poor Sinkhorn (few iterations) whose boundary rollouts are re-scored.
    cfg = D.OTConfig(solver="sinkhorn", sinkhorn_iterations=10, rescore_window=3)
    approx, _ = D.ot_distance(rollouts, rv, expert, ev, mask, dataclasses.replace(cfg, rescore_window=0))
    res, _ = D.ot_distance(rollouts, rv, expert, ev, mask, cfg)
    order = np.asarray(D.stable_argsort(approx))
    sel = order[D.boundary_ranks(64, 16, 3)]
    np.testing.assert_allclose(np.asarray(res)[sel], np.asarray(exact)[sel], rtol=1e-4)
    others = np.setdiff1d(np.arange(64), sel)
    np.testing.assert_array_equal(np.asarray(res)[others], np.asarray(approx)[others])


def test_host_solver_equals_device_solver_and_vmaps(rng):
    rollouts, rv, expert, ev, mask, _ = _synthetic_scene(rng, r=8, a=5, t=20)
    dev, pa_dev = D.ot_distance(rollouts, rv, expert, ev, mask, D.OTConfig(solver="exact"))
    host, pa_host = D.ot_distance(rollouts, rv, expert, ev, mask, D.OTConfig(solver="exact_host"))
    np.testing.assert_allclose(np.asarray(host), np.asarray(dev), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(pa_host), np.asarray(pa_dev), rtol=1e-4, atol=1e-6)
    # Under vmap (e.g. several scenes at once) the host callback runs per scene.
    cfg = D.OTConfig(solver="exact_host")
    both = jax.vmap(lambda r: D.ot_distance(r, rv, expert, ev, mask, cfg)[0])(np.stack([rollouts, rollouts[::-1]]))
    np.testing.assert_allclose(np.asarray(both[0]), np.asarray(host), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(both[1]), np.asarray(host)[::-1], rtol=1e-6)


def test_host_solver_many_small_problems_with_ties(rng):
    """Near-ties and exact ties (integer features) on many sizes, against POT."""
    from dpa_omf.preference import ot_host

    num, t = 300, 9
    x = rng.integers(0, 3, size=(num, t, 2)).astype(np.float32)
    y = rng.integers(0, 3, size=(num, t, 2)).astype(np.float32)
    x[::2] += rng.normal(size=x[::2].shape).astype(np.float32) * 1e-6  # near-ties
    vx = rng.random((num, t)) < 0.7
    vy = rng.random((num, t)) < 0.7
    vx[:, 0] = vy[:, 0] = True
    vy[: num // 3] = vx[: num // 3]  # a third are assignment problems
    cost, plans = ot_host.solve_plans(x, y, vx, vy)
    for p in range(num):
        ref, _ = _reference_cost(np.pad(x[p], ((0, 0), (0, 3))), np.pad(y[p], ((0, 0), (0, 3))), vx[p], vy[p])
        np.testing.assert_allclose(cost[p], ref, rtol=1e-5, atol=1e-7, err_msg=f"problem {p}")
        np.testing.assert_allclose(plans[p].sum(1)[vx[p]], 1.0 / vx[p].sum(), rtol=1e-5)
        np.testing.assert_allclose(plans[p].sum(0)[vy[p]], 1.0 / vy[p].sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="expected x, y"):
        ot_host.solve_costs(x[:, :, 0], y, vx, vy)


@pytest.mark.parametrize("solver", D.EXACT_SOLVERS)
def test_coupling_of_one_agent(rng, solver):
    x = rng.normal(size=(10, 5)).astype(np.float32)
    y = rng.normal(size=(10, 5)).astype(np.float32)
    vy = np.arange(10) < 7
    cost, plan = D.ot_coupling(x, np.ones(10, bool), y, vy, D.OTConfig(solver=solver, feature_scaling="none"))
    ref, _ = _reference_cost(x, y, np.ones(10, bool), vy, D.OTConfig().feature_weights)
    spread = np.array([1.0, 2.0, 0.5, 1.0, 4.0], np.float32)  # expert_std: the scene's spread, given
    scaled, _ = D.ot_coupling(x, np.ones(10, bool), y, vy, D.OTConfig(solver=solver), spread)
    ref_scaled, _ = _reference_cost(x, y, np.ones(10, bool), vy, np.asarray(D.OTConfig().feature_weights) / spread)
    np.testing.assert_allclose(float(scaled), ref_scaled, rtol=1e-4)
    np.testing.assert_allclose(float(cost), ref, rtol=1e-4)
    assert plan.shape == (10, 10)
    np.testing.assert_allclose(float(plan.sum()), 1.0, rtol=1e-5)
    with pytest.raises(ValueError):
        D.ot_coupling(x, np.zeros(10, bool), y, vy)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        D.OTConfig(solver="hungarian")
    with pytest.raises(ValueError):
        D.OTConfig(weight_mode="cubic")
    with pytest.raises(ValueError):
        D.OTConfig(rescore_solver="sinkhorn")
    with pytest.raises(ValueError):
        D.OTConfig(auction_levels=2**20)


def test_a_new_solver_is_one_registry_entry(rng, monkeypatch):
    """A solver is one ``SOLVERS`` entry: the config accepts it, 'auto' can pick it, and the entry point calls it
    (here the independent coupling: a feasible plan, so its cost bounds the exact one from above)."""
    def independent(x, y, vx, vy, config):
        plan = (vx[:, :, None] / vx.sum(-1)[:, None, None]) * (vy[:, None, :] / vy.sum(-1)[:, None, None])
        return jax.numpy.sum(plan * D.pairwise_cost(x, y), axis=(-2, -1)), plan

    monkeypatch.setitem(D.SOLVERS, "independent", D.Solver(independent, auto_on=("quantum",), why="test"))
    assert "independent" in D.config_solvers()
    assert D.solver_for_backend("auto", "quantum") == ("independent", "auto on a quantum backend: test")
    assert D.device_solver("independent") == "independent" and D.device_solver("exact_host") == "exact"
    rollouts, rv, expert, ev, mask, _ = _synthetic_scene(rng, r=4, a=3, t=10)
    exact, _ = D.ot_distance(rollouts, rv, expert, ev, mask, D.OTConfig(solver="exact"))
    indep, _ = D.ot_distance(rollouts, rv, expert, ev, mask, D.OTConfig(solver="independent"))
    assert np.all(np.asarray(indep) >= np.asarray(exact) * (1 - 1e-5)) and np.any(np.asarray(indep) > exact)
    with pytest.raises(ValueError, match="rescore_solver must be one of"):
        D.OTConfig(rescore_solver="independent")

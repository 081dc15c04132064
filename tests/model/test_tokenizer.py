"""Acceleration vocabulary: bins, kinematics, greedy inverse, gaps, real-scene reconstruction."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.model import tokenizer as tk

CFG = tk.TokenizerConfig()


def _agents_from_states(states: tk.KinematicState, s0: tk.KinematicState) -> dt.Agents:
    """Agents ``[A, 91]`` whose future is ``states`` (``[A, 80]``) and whose history is s0 held."""
    a = s0.x.shape[0]
    hist = lambda v: np.repeat(np.asarray(v)[:, None], dt.NUM_HISTORY, 1)  # noqa: E731
    full = lambda f: np.concatenate([hist(getattr(s0, f)), np.asarray(getattr(states, f))], 1)  # noqa: E731
    ones = np.ones((a, dt.NUM_STEPS), np.float32)
    return dt.Agents(x=full("x"), y=full("y"), z=0 * ones, heading=full("heading"),
                     vel_x=full("vel_x"), vel_y=full("vel_y"), length=4.5 * ones, width=2 * ones,
                     height=1.5 * ones, valid=np.ones((a, dt.NUM_STEPS), bool),
                     type=np.ones(a, np.int32), id=np.arange(a, dtype=np.int32),
                     is_sdc=np.zeros(a, bool), eval_mask=np.zeros(a, bool), sim_mask=np.ones(a, bool))


def _random_start(rng, a, speed=(8.0, 20.0)) -> tk.KinematicState:
    h = rng.uniform(-np.pi, np.pi, a)
    v = rng.uniform(*speed, a)
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return tk.KinematicState(f(rng.uniform(-50, 50, a)), f(rng.uniform(-50, 50, a)), f(h),
                             f(v * np.cos(h)), f(v * np.sin(h)))


# ------------------------------------------------------------------ vocabulary
def test_bins_bounds_uniqueness_and_zero():
    lon, lat = tk.bin_centers(CFG)
    assert lon.shape == (13,) and lat.shape == (13,)
    assert np.all(np.diff(lon) > 0) and np.all(np.diff(lat) > 0)  # strictly increasing = unique
    assert lon[0] == pytest.approx(CFG.lon_min) and lon[-1] == pytest.approx(CFG.lon_max)
    assert lat[0] == pytest.approx(-CFG.lat_max) and lat[-1] == pytest.approx(CFG.lat_max)
    acc = tk.token_accelerations(CFG)
    assert acc.shape == (tk.NUM_TOKENS, 2) == (169, 2)
    assert len({tuple(r) for r in acc.tolist()}) == 169
    np.testing.assert_array_equal(acc[tk.ZERO_TOKEN], [0.0, 0.0])
    assert tk.token_from_bins(6, 6) == tk.ZERO_TOKEN
    # Denser near zero than at the extremes (bin_power > 1).
    assert lon[7] - lon[6] < lon[12] - lon[11]


def test_config_rates_and_validation():
    assert (CFG.sub_steps, CFG.num_token_steps) == (5, 16)
    c10 = tk.TokenizerConfig(token_hz=10)
    assert (c10.sub_steps, c10.num_token_steps) == (1, 80)
    with pytest.raises(ValueError, match="token_hz"):
        tk.TokenizerConfig(token_hz=3)
    with pytest.raises(ValueError):
        tk.TokenizerConfig(lon_min=1.0)


# ------------------------------------------------------------------ kinematics
def test_zero_token_keeps_velocity_and_heading(rng):
    s0 = _random_start(rng, 4)
    toks = jnp.full((4, 16), tk.ZERO_TOKEN)
    out = tk.integrate(s0, toks, CFG)
    assert out.x.shape == (4, 80)
    t = np.arange(1, 81) * dt.DT
    np.testing.assert_allclose(out.x, s0.x[:, None] + s0.vel_x[:, None] * t, atol=1e-3)
    np.testing.assert_allclose(out.y, s0.y[:, None] + s0.vel_y[:, None] * t, atol=1e-3)
    np.testing.assert_allclose(np.cos(out.heading - s0.heading[:, None]), 1.0, atol=1e-5)


def test_heading_follows_velocity_above_threshold_and_is_held_below():
    f = lambda v: jnp.asarray([v], jnp.float32)  # noqa: E731
    lon, lat = tk.bin_centers(CFG)
    left = tk.token_from_bins(6, 12)  # pure lateral acceleration to the left
    fast = tk.KinematicState(f(0.0), f(0.0), f(0.0), f(10.0), f(0.0))
    end, _ = tk.step_token(fast, jnp.asarray([left]), CFG)
    assert float(end.heading[0]) == pytest.approx(float(jnp.arctan2(end.vel_y, end.vel_x)[0]), abs=1e-6)
    assert float(end.heading[0]) > 0.1  # turned left
    still = tk.KinematicState(f(0.0), f(0.0), f(0.3), f(0.0), f(0.0))
    small = tk.token_from_bins(7, 6)  # smallest forward acceleration: stays below the threshold
    assert lon[7] * CFG.sub_steps * dt.DT < CFG.speed_threshold
    end, _ = tk.step_token(still, jnp.asarray([small]), CFG)
    assert float(end.heading[0]) == pytest.approx(0.3)
    assert float(end.speed[0]) > 0.0


def test_stop_clamp_brakes_to_rest_without_reversing():
    f = lambda v: jnp.asarray([v], jnp.float32)  # noqa: E731
    s = tk.KinematicState(f(0.0), f(0.0), f(0.0), f(1.0), f(0.0))
    hard_brake = tk.token_from_bins(0, 6)
    end, subs = tk.step_token(s, jnp.asarray([hard_brake]), CFG)
    assert float(end.speed[0]) == 0.0
    assert np.all(np.diff(np.asarray(subs.x[0])) >= 0.0)  # never rolls backwards
    nc = dataclasses.replace(CFG, stop_clamp=False)
    end_nc, subs_nc = tk.step_token(s, jnp.asarray([hard_brake]), nc)
    # Without the clamp the velocity crosses zero, the heading (following the velocity) turns
    # around, and the agent never comes to rest: the failure mode the clamp exists for.
    assert float(end_nc.speed[0]) > 0.0
    assert np.any(np.cos(np.asarray(subs_nc.heading[0])) < 0.0)


# ------------------------------------------------------------------ greedy inverse
def test_round_trip_recovers_tokens_when_exactly_representable(rng):
    # Without the stop clamp distinct tokens give distinct trajectories, so recovery is exact.
    cfg = dataclasses.replace(CFG, stop_clamp=False)
    s0 = _random_start(rng, 32)
    tokens = jnp.asarray(rng.integers(0, 169, (32, 16)), jnp.int32)
    agents = _agents_from_states(tk.integrate(s0, tokens, cfg), s0)
    got, valid, recon = tk.tokenize(agents, cfg)
    assert got.shape == (32, 16) and got.dtype == jnp.int32
    assert bool(valid.all())
    np.testing.assert_array_equal(got, tokens)
    assert float(tk.future_ade(recon, agents).max()) < 1e-3


def test_round_trip_default_config_reproduces_trajectory(rng):
    # With the stop clamp several braking tokens can give the same trajectory; the
    # trajectory (not necessarily the token) must come back, and the effort tie-break must
    # pick the gentlest of equivalent tokens.
    s0 = _random_start(rng, 32, speed=(0.0, 6.0))
    tokens = jnp.asarray(rng.integers(0, 169, (32, 16)), jnp.int32)
    truth = tk.integrate(s0, tokens, CFG)
    agents = _agents_from_states(truth, s0)
    got, _, recon = tk.tokenize(agents, CFG)
    again = tk.integrate(s0, got, CFG)
    np.testing.assert_allclose(again.x, truth.x, atol=2e-3)
    np.testing.assert_allclose(again.y, truth.y, atol=2e-3)
    effort = lambda t: np.sum(tk.token_accelerations(CFG)[np.asarray(t)] ** 2)  # noqa: E731
    assert effort(got) <= effort(tokens) + 1e-6


def test_ten_hz_round_trip(rng):
    cfg = tk.TokenizerConfig(token_hz=10, stop_clamp=False)
    s0 = _random_start(rng, 8)
    tokens = jnp.asarray(rng.integers(0, 169, (8, 80)), jnp.int32)
    agents = _agents_from_states(tk.integrate(s0, tokens, cfg), s0)
    got, valid, _ = tk.tokenize(agents, cfg)
    assert got.shape == (8, 80) and bool(valid.all())
    np.testing.assert_array_equal(got, tokens)


def test_greedy_does_not_accumulate_error(rng):
    # A smooth trajectory between the bins: a constant 1.7 m/s^2 deceleration that no token
    # matches. The error stays bounded instead of growing with time.
    a = 8
    s0 = _random_start(rng, a, speed=(15.0, 16.0))
    t = np.arange(1, 81) * dt.DT
    v0 = np.asarray(s0.speed)[:, None]
    dist = v0 * t - 0.5 * 1.7 * t**2
    c, s = np.cos(np.asarray(s0.heading))[:, None], np.sin(np.asarray(s0.heading))[:, None]
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    speed = v0 - 1.7 * t
    fut = tk.KinematicState(f(s0.x[:, None] + c * dist), f(s0.y[:, None] + s * dist),
                            f(np.broadcast_to(np.asarray(s0.heading)[:, None], (a, 80))),
                            f(c * speed), f(s * speed))
    agents = _agents_from_states(fut, s0)
    _, _, recon = tk.tokenize(agents, CFG)
    err = np.hypot(recon.x - fut.x, recon.y - fut.y)
    assert err.max() < 0.15
    assert err[:, 40:].max() < 2 * err[:, :40].max() + 0.02  # no drift in the second half


def test_gap_validity_and_reanchoring(rng):
    cfg = dataclasses.replace(CFG, stop_clamp=False)
    s0 = _random_start(rng, 3)
    tokens = jnp.asarray(rng.integers(0, 169, (3, 16)), jnp.int32)
    agents = _agents_from_states(tk.integrate(s0, tokens, cfg), s0)
    valid = np.array(agents.valid)
    # Agent 0: boundary b_4 = CURRENT + 20 missing -> tokens 3 and 4 invalid, re-anchored at b_5.
    valid[0, dt.CURRENT_INDEX + 20] = False
    # Agent 1: an interior sub-step missing -> every token still valid.
    valid[1, dt.CURRENT_INDEX + 7] = False
    # Agent 2: not valid at the current step -> not simulated, no valid token.
    valid[2, dt.CURRENT_INDEX] = False
    agents = agents.replace(valid=valid, sim_mask=valid[:, dt.CURRENT_INDEX])
    got, tvalid, recon = tk.tokenize(agents, cfg)
    expect0 = np.ones(16, bool)
    expect0[[3, 4]] = False
    np.testing.assert_array_equal(tvalid[0], expect0)
    assert bool(tvalid[1].all()) and not bool(tvalid[2].any())
    # Valid tokens are recovered exactly, including after the gap thanks to re-anchoring.
    np.testing.assert_array_equal(np.asarray(got[0])[expect0], np.asarray(tokens[0])[expect0])
    np.testing.assert_array_equal(got[1], tokens[1])
    after = slice(5 * cfg.sub_steps, 80)
    np.testing.assert_allclose(recon.x[0, after], agents.x[0, dt.CURRENT_INDEX + 1:][after], atol=1e-3)


def test_batched_shapes_match_single(rng):
    cfg = dataclasses.replace(CFG, stop_clamp=False)
    s0 = _random_start(rng, 4)
    tokens = jnp.asarray(rng.integers(0, 169, (4, 16)), jnp.int32)
    agents = _agents_from_states(tk.integrate(s0, tokens, cfg), s0)
    batch = jax.tree.map(lambda v: np.stack([v, v]), agents)
    got, valid, _ = tk.tokenize(batch, cfg)
    assert got.shape == (2, 4, 16) and valid.shape == (2, 4, 16)
    np.testing.assert_array_equal(got[1], tokens)


# ------------------------------------------------------------------ real WOMD scene
@pytest.mark.shared
def test_real_scene_reconstruction_error(shared_dir):
    from dpa_omf.io import reader

    scene = next(iter(reader.read_scenes(str(shared_dir / "womd" / "motion_data_one_example.tfrecord"))))
    tokens, valid, recon = tk.tokenize(scene.agents, CFG)
    ade = np.asarray(tk.future_ade(recon, scene.agents))
    full = scene.agents.valid.all(-1)
    vehicles = full & (scene.agents.type == dt.AGENT_TYPE_VEHICLE)
    assert vehicles.sum() >= 10  # the sample has 20 fully valid vehicles
    med, mx = float(np.median(ade[vehicles])), float(ade[vehicles].max())
    print(f"2 Hz reconstruction ADE of {vehicles.sum()} fully valid vehicles: median {med:.3f} m, max {mx:.3f} m")
    assert med <= 0.3
    assert mx <= 1.0
    # Fully valid agents have only valid tokens; unsimulated agents none.
    assert bool(np.asarray(valid)[full].all())
    assert not bool(np.asarray(valid)[~scene.agents.sim_mask].any())
    # The reconstruction is exactly the integral of the tokens for gap-free agents.
    again = tk.integrate(tk.state_at(scene.agents, dt.CURRENT_INDEX), tokens, CFG)
    np.testing.assert_allclose(np.asarray(again.x)[full], np.asarray(recon.x)[full], atol=1e-3)

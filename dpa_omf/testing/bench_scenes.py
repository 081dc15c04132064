"""Synthetic scenes for the benchmarks (``dpa_omf.tools.bench``): only shapes and plausible magnitudes matter.

* :func:`ot_scene`: preference features of R rollouts and the expert (the
  ``bench ot`` input, numpy).
* :func:`lane_scene`: a :class:`dpa_omf.datatypes.Scenario` of agents driving
  along parallel lanes (the ``bench rollout`` input).
"""

from __future__ import annotations

import numpy as np

from dpa_omf import datatypes as dt

NUM_FEATURES = 5


# ----------------------------------------------------------------- preference features (bench ot)
def _smooth(rng: np.random.Generator, shape, steps: int, corr: float) -> np.ndarray:
    """AR(1) noise ``[*shape, steps]`` with unit marginal variance."""
    e = rng.normal(size=tuple(shape) + (steps,))
    out = np.empty_like(e)
    out[..., 0] = e[..., 0]
    s = np.sqrt(1.0 - corr**2)
    for t in range(1, steps):
        out[..., t] = corr * out[..., t - 1] + s * e[..., t]
    return out


def _collision_runs(rng, shape, steps: int, rate: float) -> np.ndarray:
    """Mostly 0 with rare runs of 1 (``rate`` = probability of a run per track)."""
    out = np.zeros(tuple(shape) + (steps,), np.float32)
    has = rng.random(shape) < rate
    start = rng.integers(0, steps, size=shape)
    length = rng.integers(max(steps // 16, 1), max(steps // 4, 2), size=shape)
    t = np.arange(steps)
    run = (t >= start[..., None]) & (t < (start + length)[..., None])
    out[has[..., None] & run] = 1.0
    return out


def _clip_features(phi: np.ndarray) -> np.ndarray:
    lo = np.array([0.0, -3.0, 0.0, 0.0, 0.0], np.float32)
    hi = np.array([1.0, 6.0, 30.0, 3.0, 20.0], np.float32)
    return np.clip(phi, lo, hi)


def ot_scene(rng: np.random.Generator, num_rollouts: int = 64, num_agents: int = 128,
                  steps: int = 80, valid_fraction: float = 0.6, ragged_fraction: float = 0.15) -> dict:
    """A synthetic preference-distance scene with realistic feature values.

    Features per step: collision (0 with rare runs of 1), signed distance to
    the road boundary ~N(1.5, 1) clipped to [-3, 6] m, clearance 0-30 m,
    control effort 0-3 m/s^2, speed 0-20 m/s (temporally correlated). Each
    rollout perturbs the expert with its own magnitude (log-uniform over
    [0.03, 1.5] of each feature's spread), so rollouts are ranked by that
    magnitude with noise and near-ties. Rollouts are valid on every step of
    the valid agents (the sampler simulates them over the whole horizon);
    ``ragged_fraction`` of the valid agents have a logged (expert) track that
    starts late or ends early.

    Returns:
      dict of numpy arrays: rollout_phi ``[R, A, T, 5]``, rollout_valid
      ``[R, A, T]``, expert_phi ``[A, T, 5]``, expert_valid ``[A, T]``,
      agent_mask ``[A]``, magnitude ``[R]``.
    """
    a, t, r = num_agents, steps, num_rollouts
    corr = 0.9 ** (80 / steps)  # same correlation time at 10 Hz and 2 Hz
    expert = np.stack([
        _collision_runs(rng, (a,), t, 0.05),
        1.5 + _smooth(rng, (a,), t, corr),
        rng.uniform(2, 25, (a, 1)) + 3 * _smooth(rng, (a,), t, corr),
        np.abs(0.8 * _smooth(rng, (a,), t, corr)),
        rng.uniform(0, 15, (a, 1)) + 2 * _smooth(rng, (a,), t, corr),
    ], -1).astype(np.float32)
    expert = _clip_features(expert)
    magnitude = np.exp(rng.uniform(np.log(0.03), np.log(1.5), r)).astype(np.float32)
    spread = np.array([0.0, 1.0, 5.0, 0.8, 3.0], np.float32)
    noise = np.stack([_smooth(rng, (r, a), t, corr) for _ in range(NUM_FEATURES)], -1).astype(np.float32)
    rollouts = expert[None] + magnitude[:, None, None, None] * spread * noise
    flips = _collision_runs(rng, (r, a), t, 1.0) * (rng.random((r, a, 1)) < 0.1 * magnitude[:, None, None])
    rollouts[..., 0] = np.maximum(rollouts[..., 0], flips)
    rollouts = _clip_features(rollouts)

    agent_mask = rng.random(a) < valid_fraction
    expert_valid = np.repeat(agent_mask[:, None], t, 1)
    ragged = agent_mask & (rng.random(a) < ragged_fraction)
    for i in np.flatnonzero(ragged):
        k = rng.integers(1, t)
        if rng.random() < 0.5:
            expert_valid[i, k:] = False  # leaves the sensor range
        else:
            expert_valid[i, :k] = False  # appears late
    rollout_valid = np.broadcast_to(agent_mask[None, :, None], (r, a, t)).copy()
    return dict(rollout_phi=rollouts, rollout_valid=rollout_valid, expert_phi=expert,
                expert_valid=expert_valid, agent_mask=agent_mask, magnitude=magnitude)


# ----------------------------------------------------------------- scenario (bench rollout)
def lane_scene(num_agents: int, num_points: int = 4000, seed: int = 0) -> dt.Scenario:
    """A simple numpy scene for timing: agents on parallel lanes at 5-15 m/s, all valid.

    Only shapes and plausible magnitudes matter for timing (cost does not depend on values).
    """
    rng = np.random.default_rng(seed)
    s = dt.empty_scenario(num_agents, num_points)
    t = (np.arange(dt.NUM_STEPS) - dt.CURRENT_INDEX) * dt.DT
    lane = rng.integers(0, 8, num_agents)
    speed = rng.uniform(5.0, 15.0, num_agents)
    x0 = rng.uniform(-100.0, 100.0, num_agents)

    def f32(v):
        return np.asarray(v, np.float32)

    def full(v):  # [A] -> [A, T], constant over time
        return f32(np.broadcast_to(v[:, None], (num_agents, dt.NUM_STEPS)))

    agents = s.agents.replace(
        x=f32(x0[:, None] + speed[:, None] * t), y=full(lane * 3.5), vel_x=full(speed),
        length=np.full((num_agents, dt.NUM_STEPS), 4.5, np.float32),
        width=np.full((num_agents, dt.NUM_STEPS), 2.0, np.float32),
        valid=np.ones((num_agents, dt.NUM_STEPS), bool), type=np.ones(num_agents, np.int32),
        id=np.arange(num_agents, dtype=np.int32), sim_mask=np.ones(num_agents, bool))
    px = rng.uniform(-200.0, 200.0, num_points)
    py = rng.integers(0, 9, num_points) * 3.5 - 1.75
    rg = s.roadgraph.replace(xyz=f32(np.stack([px, py, np.zeros_like(px)], -1)),
                             dir=f32(np.tile([1.0, 0.0, 0.0], (num_points, 1))),
                             type=np.full(num_points, dt.RG_LANE_SURFACE_STREET, np.int32),
                             valid=np.ones(num_points, bool))
    return s.replace(agents=agents, roadgraph=rg)

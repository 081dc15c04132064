"""Preference features on hand-built scenes with known answers."""

import jax
import jax.numpy as jnp
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.preference import features

# One compiled program for every scene below (they share shapes): op by op, the first call compiles each
# primitive and took ~35 s on 2 loaded cores.
_expert_features = jax.jit(features.expert_features)


def _scene(y1: float) -> dt.Scenario:
    """Road edge along y = -5 (road on its left, y > -5); three cars driving +x.

    agent 0: (10 t, 0) at 10 m/s; agent 1: (10 t, y1) at 10 m/s;
    agent 2: starts at x = 40, accelerating at 2 m/s^2 along +x.
    """
    s = dt.empty_scenario(num_agents=3, num_points=64)
    a, rg = s.agents, s.roadgraph
    t = (np.arange(dt.NUM_STEPS) - dt.CURRENT_INDEX) * dt.DT
    a.x[0], a.y[0], a.vel_x[0] = 10 * t, 0.0, 10.0
    a.x[1], a.y[1], a.vel_x[1] = 10 * t, y1, 10.0
    a.x[2], a.y[2], a.vel_x[2] = 40 + 5 * t + t**2, 0.0, 5 + 2 * t
    a.length[:], a.width[:], a.height[:] = 4.0, 2.0, 1.5
    a.valid[:3] = True
    a.type[:3] = dt.AGENT_TYPE_VEHICLE
    a.id[:3] = [1, 2, 3]
    a.sim_mask[:3] = True
    n = 41
    rg.xyz[:n, 0] = np.linspace(-100, 300, n)
    rg.xyz[:n, 1] = -5.0
    rg.dir[:n, 0] = 1.0
    rg.type[:n] = dt.RG_ROAD_EDGE_BOUNDARY
    rg.id[:n] = 7
    rg.valid[:n] = True
    return s.validate()


def test_expert_features_known_values():
    phi, valid = _expert_features(_scene(y1=3.0))
    phi, valid = np.asarray(phi), np.asarray(valid)
    assert phi.shape == (3, dt.NUM_FUTURE, features.NUM_FEATURES) and valid.all()
    col, road, clear, effort, speed = (phi[..., i] for i in range(5))
    # Boxes 2 m wide at y = 0 and y = 3: a 1 m gap between parallel sides, no collision.
    np.testing.assert_allclose(clear[0], 1.0, atol=1e-4)
    np.testing.assert_allclose(clear[1], 1.0, atol=1e-4)
    assert (col[:2] == 0).all()
    # Agent 0's lowest corner is at y = -1, 4 m inside the edge at y = -5 (negative = on road).
    np.testing.assert_allclose(road[0], -4.0, atol=1e-4)
    np.testing.assert_allclose(speed[0], 10.0, atol=1e-5)
    np.testing.assert_allclose(effort[0], 0.0, atol=1e-4)
    np.testing.assert_allclose(effort[2], 2.0, atol=1e-3)
    np.testing.assert_allclose(speed[2, -1], 5 + 2 * 8.0, atol=1e-4)
    # Clearance is capped for agents that do not interact.
    assert (clear[2] == features.FeatureConfig().clearance_cap).all()


def test_overlap_is_a_collision():
    phi, _ = _expert_features(_scene(y1=1.5))  # 0.5 m lateral overlap
    phi = np.asarray(phi)
    assert (phi[:2, :, 0] == 1.0).all()
    assert (phi[:2, :, 2] < 0).all()
    assert (phi[2, :, 0] == 0.0).all()


def test_rollout_features_match_expert_on_replayed_log():
    s = _scene(y1=3.0)
    fut = slice(dt.NUM_HISTORY, dt.NUM_STEPS)
    a = s.agents

    def stack(v):  # two identical rollouts
        return jnp.stack([jnp.asarray(v[:, fut])] * 2)

    phi_r, valid_r = jax.jit(features.rollout_features)(s, stack(a.x), stack(a.y), stack(a.heading),
                                                        stack(a.vel_x), stack(a.vel_y))
    phi_e, _ = _expert_features(s)
    assert phi_r.shape == (2, 3, dt.NUM_FUTURE, 5) and bool(valid_r.all())
    np.testing.assert_allclose(phi_r[0], phi_e, atol=1e-5)
    np.testing.assert_allclose(phi_r[1], phi_e, atol=1e-5)

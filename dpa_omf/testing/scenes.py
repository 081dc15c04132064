"""Fake scenes for tests and benchmarks (numpy, no JAX computation).

Production packages never import this module; tests and ``dpa_omf.tools`` do.
"""

from __future__ import annotations

import numpy as np

from dpa_omf import datatypes as dt


def synthetic_scene(num_agents: int = 128, num_sim: int = 50, num_eval: int = 4,
                    num_points: int = 20000, seed: int = 0,
                    num_rollouts: int = 32) -> tuple[dt.Scenario, np.ndarray]:
    """A WOMD-sized fake scene and rollouts, for the realism metric's benchmark.

    Agents drive along parallel lanes bounded by two road edges; a quarter of
    the road-graph samples are road edges, half lanes; one red light.

    Args:
      num_agents, num_points: agent slots and road-graph samples.
      num_sim, num_eval: agents to simulate / to evaluate (the first slots).
      seed: numpy seed of speeds, lanes and rollout noise.
      num_rollouts: rollouts (the challenge's 32 by default).
    Returns:
      (numpy scenario, float32 sim_xyzh ``[num_rollouts, A, 80, 4]``).
    """
    rng = np.random.default_rng(seed)
    s = dt.empty_scenario(num_agents, num_points)
    a, t = s.agents, np.arange(dt.NUM_STEPS, dtype=np.float32)
    lane = rng.integers(0, 4, num_sim)
    speed = rng.uniform(2, 15, num_sim).astype(np.float32)
    x0 = rng.uniform(-100, 100, num_sim).astype(np.float32)
    a.x[:num_sim] = x0[:, None] + speed[:, None] * t * dt.DT
    a.y[:num_sim] = (lane * 3.5 + 1.75)[:, None]
    a.length[:num_sim], a.width[:num_sim], a.height[:num_sim] = 4.5, 2.0, 1.6
    a.vel_x[:num_sim] = speed[:, None]
    a.valid[:num_sim] = True
    a.type[:num_sim] = dt.AGENT_TYPE_VEHICLE
    a.id[:num_sim] = np.arange(num_sim)
    a.sim_mask[:num_sim] = True
    a.eval_mask[:num_eval] = True
    a.is_sdc[0] = True
    rg = s.roadgraph
    n_edge, n_lane = num_points // 4, num_points // 2
    xs = np.linspace(-400, 400, n_edge // 2, dtype=np.float32)
    rg.xyz[: n_edge // 2, 0], rg.xyz[n_edge // 2 : n_edge, 0] = xs[::-1], xs
    rg.xyz[: n_edge // 2, 1], rg.xyz[n_edge // 2 : n_edge, 1] = 14.0, 0.0
    rg.id[: n_edge // 2], rg.id[n_edge // 2 : n_edge] = 1, 2
    rg.type[:n_edge] = dt.RG_ROAD_EDGE_BOUNDARY
    per = n_lane // 4
    for k in range(4):
        sl = slice(n_edge + k * per, n_edge + (k + 1) * per)
        rg.xyz[sl, 0] = np.linspace(-400, 400, per, dtype=np.float32)
        rg.xyz[sl, 1] = k * 3.5 + 1.75
        rg.id[sl], rg.type[sl] = 10 + k, dt.RG_LANE_SURFACE_STREET
    rg.valid[: n_edge + 4 * per] = True
    tl = s.traffic_lights
    tl.lane_id[:, 0], tl.state[:, 0], tl.valid[:, 0] = 10, dt.TL_STOP, True
    tl.stop_point[:, 0] = [50.0, 1.75, 0.0]
    noise = rng.normal(0, 0.3, (num_rollouts, num_sim, dt.NUM_FUTURE)).astype(np.float32)
    sim = np.zeros((num_rollouts, num_agents, dt.NUM_FUTURE, 4), np.float32)
    sim[:, :num_sim, :, 0] = a.x[None, :num_sim, dt.NUM_HISTORY:] + np.cumsum(noise, -1)
    sim[:, :num_sim, :, 1] = a.y[None, :num_sim, dt.NUM_HISTORY:] + 0.1 * np.cumsum(noise, -1)
    return s, sim

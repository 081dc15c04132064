"""Fake WOMD scenes for tests and benchmarks: random canonical ``Scenario`` s that the io readers round-trip.

Write them with ``io.example_writer.write_tfrecord`` to get tf.Example files.
"""

from __future__ import annotations

import jax
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.io.fit import canonicalize, polyline_directions


def random_scenario(rng: np.random.Generator, num_agents: int = 32, num_points: int = 1000,
                    scenario_id: str = "random", num_used_agents: int | None = None) -> dt.Scenario:
    """A canonical random scene (not traffic: smooth random walks), for tests and benchmarks.

    Args:
      rng: numpy generator.
      num_agents: agent slots A; the first ``num_used_agents`` (default 3/4 of A) are used.
      num_points: road-graph samples P; about 80% hold random polylines.
      scenario_id: up to 16 ASCII characters.
    Returns:
      a single numpy ``Scenario`` that passes ``validate()``, with zeros at invalid entries.
    """
    s = dt.empty_scenario(num_agents, num_points)
    a, r, t = s.agents, s.roadgraph, s.traffic_lights
    n = num_used_agents if num_used_agents is not None else max(1, 3 * num_agents // 4)
    steps = np.arange(dt.NUM_STEPS)
    speed = rng.uniform(0, 15, [n, 1])
    heading = rng.uniform(-np.pi, np.pi, [n, 1]) + np.cumsum(rng.normal(0, 0.01, [n, dt.NUM_STEPS]), axis=1)
    a.heading[:n] = heading
    a.vel_x[:n], a.vel_y[:n] = speed * np.cos(heading), speed * np.sin(heading)
    a.x[:n] = rng.uniform(-50, 50, [n, 1]) + np.cumsum(a.vel_x[:n] * dt.DT, axis=1)
    a.y[:n] = rng.uniform(-50, 50, [n, 1]) + np.cumsum(a.vel_y[:n] * dt.DT, axis=1)
    a.z[:n] = rng.normal(0, 0.1, [n, 1])
    a.length[:n], a.width[:n], a.height[:n] = 4.5, 2.0, 1.6
    start = rng.integers(0, dt.CURRENT_INDEX + 1, [n, 1])
    stop = rng.integers(dt.CURRENT_INDEX + 1, dt.NUM_STEPS + 1, [n, 1])
    a.valid[:n] = (steps >= start) & (steps < stop)
    a.valid[n - 1, dt.CURRENT_INDEX] = n == 1 or bool(rng.integers(2))  # some agents not valid now
    a.valid[0, dt.CURRENT_INDEX] = True  # the SDC always is
    a.type[:n] = rng.integers(1, 4, [n])
    a.id[:n] = rng.permutation(10 * num_agents)[:n]
    a.is_sdc[0] = True
    a.sim_mask[:] = a.valid[:, dt.CURRENT_INDEX]
    a.eval_mask[:] = a.sim_mask & (rng.random(num_agents) < 0.2)
    a.eval_mask[0] = True
    # Road graph: random polylines filling ~80% of the samples.
    used = int(0.8 * num_points)
    lengths = rng.integers(5, 50, [max(1, used // 5)])
    ids = np.repeat(np.arange(len(lengths)), lengths)[:used]
    xy = np.cumsum(rng.normal(0, 0.5, [used, 2]), axis=0)
    r.xyz[:used, :2], r.xyz[:used, 2] = xy, rng.normal(0, 0.1, [used])
    r.id[:used] = ids + 100
    r.type[:used] = rng.choice([1, 2, 6, 7, 15, 16, 18], len(lengths))[ids]
    r.dir[:used] = polyline_directions(r.xyz[:used], r.id[:used])
    r.valid[:used] = True
    # Traffic lights: 4 slots, with a stop point and state changing over time.
    t.valid[:, :4] = True
    t.lane_id[:, :4] = np.arange(4) + 100
    t.state[:, :4] = rng.integers(1, dt.TL_NUM_STATES, [dt.NUM_STEPS, 4])
    t.stop_point[:, :4] = rng.uniform(-50, 50, [1, 4, 3])
    return canonicalize(s.replace(scenario_id=dt.scenario_id_to_bytes(scenario_id)))


def bits_equal(a, b) -> bool:
    """Same tree, and every leaf has the same dtype, shape and bytes (stricter than ``tree_equal``)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.shape(x) == np.shape(y)
        and np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(la, lb, strict=True))


def tree_equal(a, b) -> bool:
    """Whether two pytrees (e.g. ``Scenario`` s) have equal leaves (exact, NaN != NaN)."""
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))

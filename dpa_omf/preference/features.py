"""Preference features phi per agent per 10 Hz future step.

phi = [collision status, distance to road boundary, minimum clearance to other
road users, control effort, speed] (DESIGN.md), for the 80 future steps of the
agents valid at the current step. The geometry is the realism metric's own
(``dpa_omf.geometry.scene``, shared with ``dpa_omf.metrics.wosac``:
rounded-box distance to the nearest object with the official rounding, signed
distance of the most off-road box corner to the road-edge polylines with the
official sign rule), so the feedback that ranks rollouts and the metric that
judges them measure the same things.

The same function serves the expert (logged future) and rollouts (simulated
future). No Python loop over agents or rollouts: the R rollouts of a scene
go through ``lax.map`` in chunks of ``FeatureConfig.rollout_chunk`` (vmapped
inside a chunk), which bounds the temporaries (the road-edge candidate search
``[chunk x A x 80 x 4 corners, K]`` and the pairwise clearance
``[chunk x A x A x 80]``) without changing a value: the road-edge index is
built once per scene from every rollout's box centres, its exact fallback
runs once per scene on the corners no chunk's grid tier certified (a pass
costs the same for one query as for thousands: run per chunk, it doubled the
features' time at the default sizes), and each query's and each agent's
result is computed alone. The ``*_batch`` variants take B scenes at once
(batched curation) and give every scene the values the one-scene functions
give it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dpa_omf import datatypes as dt
from dpa_omf.geometry import scene, segment_index
from dpa_omf.geometry import shapes as geo

NUM_FEATURES = 5
FEATURE_NAMES = ("collision", "road_distance", "clearance", "effort", "speed")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Feature ranges (hashable: static under jit).

    clearance_cap: clearance above this is "no interaction" and clipped (m):
      the OT cost should not reward or punish distances between agents that
      do not interact.
    road_distance_clip: the signed road-edge distance is clipped to
      [-clip, clip] (m): deep inside the road it carries no preference signal.
    effort_cap: accelerations are clipped to this magnitude (m/s^2), so a
      single integration glitch cannot dominate a distance.
    max_road_edge_points: road-edge slots after compaction (None: every
      road-graph slot); see ``geometry.scene.road_edge_segments``.
    road_edge_grid, road_edge_candidates: the metric's per-scene road-edge
      index (``geometry.segment_index``: grid cells per side, candidates per
      cell; grid None: exhaustive search). Queries the index cannot certify
      are searched exhaustively, so the features never depend on these knobs.
    rollout_chunk: rollouts featurized together (``lax.map`` over chunks; the
      largest divisor of R at most this; None: all R at once). Bounds the
      temporaries, never changes a value (at WOMD sizes, 128 agents and 30k
      road-graph points, ~41 MB per rollout; docs/benchmarks.md).
    """

    clearance_cap: float = 10.0
    road_distance_clip: float = 5.0
    effort_cap: float = 10.0
    max_road_edge_points: int | None = None
    road_edge_grid: int | None = 64
    road_edge_candidates: int = 64
    rollout_chunk: int | None = 8

    def __post_init__(self):
        if self.rollout_chunk is not None and self.rollout_chunk < 1:
            raise ValueError(f"FeatureConfig: rollout_chunk={self.rollout_chunk} must be >= 1 (or None: all at once)")


def _road_index(edges: geo.Segments, x: jax.Array, y: jax.Array, valid: jax.Array, config: FeatureConfig):
    """The scene's road-edge index covering the box centres ``x, y`` (bool ``valid``, any shape), built once
    for every query of the scene (None: exhaustive search, ``road_edge_grid`` None)."""
    if config.road_edge_grid is None:
        return None
    return scene.road_edge_index(edges, config.road_edge_grid, config.road_edge_candidates,
                                 jnp.stack([x, y], -1), valid)


def _road_distance(tr: dict, edges: geo.Segments, config: FeatureConfig) -> tuple[jax.Array, jax.Array]:
    """Signed road-edge distance of the most off-road box corner, ``[E, T]`` from ``[E, T]`` trajectories,
    through the scene's index built once here; and the count of corner queries it sent to the fallback."""
    return scene.distance_to_road_edge(tr, edges, _road_index(edges, tr["x"], tr["y"], tr["valid"], config))


def _trajectories(scenario: dt.Scenario, x, y, heading, valid) -> dict:
    """Box trajectories (sizes and z held at the current step) of ``[..., A, 80]`` futures."""
    a = scenario.agents
    cur = dt.CURRENT_INDEX

    def size(v):
        return jnp.broadcast_to(v[:, cur], x.shape[:-1])[..., None] * jnp.ones_like(x)

    return {"x": x, "y": y, "z": size(a.z), "length": size(a.length), "width": size(a.width), "height": size(a.height),
            "heading": heading, "valid": valid}


def _future_features(scenario: dt.Scenario, edges: geo.Segments, x, y, heading, vel_x, vel_y, valid, road,
                     config: FeatureConfig) -> jax.Array:
    """Features of one joint future of all agents.

    Args:
      scenario: one scene (``[A, 91]`` agents).
      edges: the scene's road edges (``geometry.scene.road_edge_segments``).
      x, y, heading, vel_x, vel_y: ``[A, 80]`` future states.
      valid: bool ``[A, 80]``.
      road: ``[A, 80]`` signed road-edge distance (``_road_distance``).
    Returns:
      ``[A, 80, 5]`` float32 features (zero at invalid steps).
    """
    a = scenario.agents
    cur = dt.CURRENT_INDEX

    def size(v):  # box size held at the current step
        return jnp.broadcast_to(v[:, cur:cur + 1], x.shape)

    length, width = size(a.length), size(a.width)
    boxes = jnp.stack([x, y, length, width, heading], axis=-1)  # [A, T, 5]
    idx = jnp.arange(x.shape[0])
    clearance = scene.distance_to_nearest_object(boxes, boxes, idx, valid, valid)  # [A, T]
    collision = (clearance < scene.COLLISION_DISTANCE_THRESHOLD).astype(jnp.float32)
    has_edges = jnp.any(edges.valid)
    road = jnp.where(has_edges, jnp.clip(road, -config.road_distance_clip, config.road_distance_clip),
                     -config.road_distance_clip)
    # Effort from the velocity change over each 0.1 s step; the step before the
    # first future step is the logged current state.
    vx0, vy0 = a.vel_x[:, cur:cur + 1], a.vel_y[:, cur:cur + 1]
    vx_prev = jnp.concatenate([vx0, vel_x[:, :-1]], axis=1)
    vy_prev = jnp.concatenate([vy0, vel_y[:, :-1]], axis=1)
    prev_ok = jnp.concatenate([a.valid[:, cur:cur + 1], valid[:, :-1]], axis=1)
    effort = jnp.hypot(vel_x - vx_prev, vel_y - vy_prev) / dt.DT
    effort = jnp.where(prev_ok, jnp.minimum(effort, config.effort_cap), 0.0)
    speed = jnp.hypot(vel_x, vel_y)
    phi = jnp.stack([collision, road, jnp.clip(clearance, -config.clearance_cap, config.clearance_cap),
                     effort, speed], axis=-1)
    return jnp.where(valid[..., None], phi, 0.0).astype(jnp.float32)


def expert_features(scenario: dt.Scenario, config: FeatureConfig = FeatureConfig()) -> tuple[jax.Array, jax.Array]:
    """phi of the logged future of one scene.

    Returns:
      (``[A, 80, 5]`` features, bool ``[A, 80]`` valid = logged valid and
      the agent is simulated).
    """
    scenario = jax.tree.map(jnp.asarray, scenario)  # numpy in, traced indexing below
    tr, edges = _expert_boxes(scenario, config)
    return _expert_phi(scenario, edges, _road_distance(tr, edges, config)[0], config)


def expert_features_batch(scenarios: dt.Scenario, config: FeatureConfig = FeatureConfig()
                          ) -> tuple[jax.Array, jax.Array]:
    """:func:`expert_features` of B scenes (``[B, ...]``), the same values scene by scene."""
    return jax.vmap(lambda s: expert_features(s, config))(jax.tree.map(jnp.asarray, scenarios))


def _expert_boxes(scenario: dt.Scenario, config: FeatureConfig) -> tuple[dict, geo.Segments]:
    edges, _ = scene.road_edge_segments(scenario.roadgraph, config.max_road_edge_points)
    a = scenario.agents
    fut = slice(dt.NUM_HISTORY, dt.NUM_STEPS)
    valid = a.valid[:, fut] & a.sim_mask[:, None]
    return _trajectories(scenario, a.x[:, fut], a.y[:, fut], a.heading[:, fut], valid), edges


def _expert_phi(scenario: dt.Scenario, edges: geo.Segments, road: jax.Array, config: FeatureConfig
                ) -> tuple[jax.Array, jax.Array]:
    a = scenario.agents
    fut = slice(dt.NUM_HISTORY, dt.NUM_STEPS)
    valid = a.valid[:, fut] & a.sim_mask[:, None]
    phi = _future_features(scenario, edges, a.x[:, fut], a.y[:, fut], a.heading[:, fut], a.vel_x[:, fut],
                           a.vel_y[:, fut], valid, road, config)
    return phi, valid


def rollout_features(scenario: dt.Scenario, x: jax.Array, y: jax.Array, heading: jax.Array, vel_x: jax.Array,
                     vel_y: jax.Array, config: FeatureConfig = FeatureConfig()) -> tuple[jax.Array, jax.Array]:
    """phi of R simulated futures of one scene.

    Args:
      scenario: one scene.
      x, y, heading, vel_x, vel_y: ``[R, A, 80]`` simulated states (every
        simulated agent is valid at every future step).
    Returns:
      (``[R, A, 80, 5]`` features, bool ``[R, A, 80]`` valid).
    """
    return rollout_features_stats(scenario, x, y, heading, vel_x, vel_y, config)[:2]


def rollout_features_stats(scenario: dt.Scenario, x: jax.Array, y: jax.Array, heading: jax.Array,
                           vel_x: jax.Array, vel_y: jax.Array, config: FeatureConfig = FeatureConfig()
                           ) -> tuple[jax.Array, jax.Array, dict]:
    """:func:`rollout_features` and the road-edge index's statistics: int32 ``road_edge_queries`` (box
    corners of valid boxes) and ``road_edge_fallbacks`` (those searched exhaustively).

    One road-edge index for the scene (covering every rollout's box centres), then ``lax.map`` over chunks of
    ``rollout_chunk_size(R, config)`` rollouts: the values do not depend on the chunk.
    """
    scenario = jax.tree.map(jnp.asarray, scenario)
    edges, _ = scene.road_edge_segments(scenario.roadgraph, config.max_road_edge_points)
    valid = jnp.broadcast_to(scenario.agents.sim_mask[None, :, None], x.shape)  # [R, A, 80]
    r = x.shape[0]
    c = rollout_chunk_size(r, config)
    cvalid = valid[:c]  # every rollout simulates the same agents
    chunks = tuple(v.reshape(r // c, c, *v.shape[1:]) for v in (x, y, heading, vel_x, vel_y))

    def boxes(cx, cy, ch):  # [C, A, 80] -> [C * A, 80] box trajectories
        return {k: v.reshape((-1, *v.shape[2:])) for k, v in _trajectories(scenario, cx, cy, ch, cvalid).items()}

    def phi_of(states, road):  # [C, A, 80] each, road [C * A, 80] -> [C, A, 80, 5]
        def one(*s):
            return _future_features(scenario, edges, *s, config)

        return jax.vmap(one)(*states, cvalid, road.reshape(states[0].shape))

    index = _road_index(edges, x, y, valid, config)
    if index is None:  # exhaustive search, chunk by chunk
        def exhaustive(states):
            return phi_of(states, scene.distance_to_road_edge(boxes(*states[:3]), edges)[0])

        phi, fallbacks = jax.lax.map(exhaustive, chunks), jnp.int32(0)
    else:
        # The index's grid tier chunk by chunk; the exact tiers once for the whole scene's uncertified corners
        # (a pass costs the same for 1 or 32k of them); then the distances and features chunk by chunk.
        def grid(states):
            tr = boxes(*states[:3])
            corners = scene.road_edge_corners(tr)
            j, todo = segment_index.grid_search(corners, edges, index, scene.Z_STRETCH, tr["valid"][..., None])
            return corners, j, todo

        corners, j, todo = jax.lax.map(grid, chunks)
        j = segment_index.fallback_search(corners, edges, j, todo, scene.Z_STRETCH)
        fallbacks = jnp.sum(todo, dtype=jnp.int32)
        phi = jax.lax.map(lambda a: phi_of(a[0], scene.distance_to_nearest_edge(a[1], edges, a[2])),
                          (chunks, corners, j))
    stats = {"road_edge_queries": 4 * jnp.sum(valid, dtype=jnp.int32), "road_edge_fallbacks": fallbacks}
    return phi.reshape((*x.shape, NUM_FEATURES)), valid, stats


def rollout_chunk_size(num_rollouts: int, config: FeatureConfig) -> int:
    """Rollouts per chunk of :func:`rollout_features`: the largest divisor of ``num_rollouts`` at most
    ``config.rollout_chunk`` (all of them when it is None)."""
    c = num_rollouts if config.rollout_chunk is None else min(config.rollout_chunk, num_rollouts)
    while num_rollouts % c:
        c -= 1
    return c


def rollout_features_batch(scenarios: dt.Scenario, x: jax.Array, y: jax.Array, heading: jax.Array,
                           vel_x: jax.Array, vel_y: jax.Array, config: FeatureConfig = FeatureConfig()
                           ) -> tuple[jax.Array, jax.Array]:
    """:func:`rollout_features` of B scenes at once (``[B, ...]`` everything), the same values scene by scene
    (each scene's road-edge index is its own; the exhaustive fallback is a loop, not a ``cond``, so a scene's
    features do not depend on its batch-mates and vmap runs no search it does not need)."""
    def one(s, *v):
        return rollout_features(s, *v, config)

    return jax.vmap(one)(jax.tree.map(jnp.asarray, scenarios), x, y, heading, vel_x, vel_y)



"""Per-step WOSAC features: the kernels behind ``wosac.compute_features``.

Official definitions (``waymo_open_dataset/wdl_limited/sim_agents_metrics``,
1.6.7) on fixed shapes, jit- and vmap-able:

* trajectories: the logged history followed by simulated or logged futures,
  box sizes held at the current step (``trajectories``, ``boxes``);
* kinematics: linear / angular speed and acceleration by central differences
  (``kinematic_features``, ``kinematic_validity``);
* interactions: time to collision with the object in front
  (``time_to_collision``); the distance to the nearest object is
  ``geometry.scene.distance_to_nearest_object``;
* map: road-edge and lane segments of a scene (``prepare_map``), signal
  geometry (``prepare_signals``), the official lane assignment
  (``nearest_lane_segment``) and red-light violations
  (``red_light_violation``); the road-edge distance is
  ``geometry.scene.distance_to_road_edge``.

The official quirks these kernels reproduce are listed in ``wosac``'s
docstring. ``Features`` is what ``wosac.compute_features`` returns.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from flax import struct

from dpa_omf import datatypes as dt
from dpa_omf.geometry import scene, segment_index
from dpa_omf.geometry import shapes as geo

Array = Any

# Official constants (interaction_features.py).
MAX_HEADING_DIFF = math.radians(75.0)
MAX_HEADING_DIFF_FOR_SMALL_OVERLAP = math.radians(10.0)
SMALL_OVERLAP_THRESHOLD = 0.5
MAXIMUM_TIME_TO_COLLISION = 5.0
LARGE = geo.EXTREMELY_LARGE_DISTANCE


@struct.dataclass
class Features:
    """Per-step metric features of the evaluated agents.

    B = 1 (log) or the number of rollouts; E = ``max_eval_agents`` slots;
    T = 80 simulated steps. Values at invalid entries are arbitrary.

      eval_index: int32 ``[E]`` agent slot of each evaluated agent.
      eval_valid: bool ``[E]`` slot holds an evaluated agent.
      object_id, object_type: int32 ``[E]``.
      valid: bool ``[B, E, T]`` (log: logged validity; sim: True).
      average_displacement_error: ``[B, E]`` metres.
      linear_speed ``[B, E, T]`` m/s, linear_acceleration m/s^2,
      angular_speed rad/s, angular_acceleration rad/s^2,
      distance_to_nearest_object m, collision_per_step bool,
      time_to_collision s, distance_to_road_edge m, offroad_per_step bool,
      traffic_light_violation_per_step bool.
    """

    eval_index: Array
    eval_valid: Array
    object_id: Array
    object_type: Array
    valid: Array
    average_displacement_error: Array
    linear_speed: Array
    linear_acceleration: Array
    angular_speed: Array
    angular_acceleration: Array
    distance_to_nearest_object: Array
    collision_per_step: Array
    time_to_collision: Array
    distance_to_road_edge: Array
    offroad_per_step: Array
    traffic_light_violation_per_step: Array


# ==================================================================== trajectories
def trajectories(scenario: dt.Scenario, future_xyzh: Array, future_valid: Array) -> dict:
    """History + future trajectories of the agents to simulate.

    Args:
      scenario: one scene (agent arrays ``[A, 91]``).
      future_xyzh: ``[B, A, 80, 4]`` (x, y, z, heading) after the current step.
      future_valid: bool ``[B, A, 80]``.
    Returns:
      dict of ``[B, A, 91]`` arrays: x, y, z, heading, length, width, height,
      valid (False for agents that are not simulated).
    """
    a = scenario.agents
    h = dt.NUM_HISTORY
    b = future_xyzh.shape[0]

    def cat(hist: Array, fut: Array) -> Array:
        hist = jnp.broadcast_to(hist[None, :, :h], (b, *hist[:, :h].shape))
        return jnp.concatenate([hist, fut], axis=-1)

    def size(v: Array) -> Array:
        cur = jnp.broadcast_to(v[:, dt.CURRENT_INDEX:h], v[:, h:].shape)
        return cat(v, jnp.broadcast_to(cur[None], (b, *cur.shape)))

    sim = a.sim_mask[None, :, None]
    return {
        "x": cat(a.x, future_xyzh[..., 0]), "y": cat(a.y, future_xyzh[..., 1]),
        "z": cat(a.z, future_xyzh[..., 2]), "heading": cat(a.heading, future_xyzh[..., 3]),
        "length": size(a.length), "width": size(a.width), "height": size(a.height),
        "valid": cat(a.valid, future_valid) & sim,
    }


# ==================================================================== kinematics
def _central_diff(t: Array) -> Array:
    """``(t[i+1] - t[i-1]) / 2`` along the last axis, NaN at both ends."""
    pad = jnp.full((*t.shape[:-1], 1), jnp.nan, t.dtype)
    return jnp.concatenate([pad, (t[..., 2:] - t[..., :-2]) / 2, pad], axis=-1)


def _central_and(v: Array) -> Array:
    pad = jnp.zeros((*v.shape[:-1], 1), bool)
    return jnp.concatenate([pad, v[..., 2:] & v[..., :-2], pad], axis=-1)


def kinematic_features(x: Array, y: Array, z: Array, heading: Array, dt_s: float = dt.DT):
    """Linear / angular speed and acceleration by central differences.

    Args:
      x, y, z, heading: ``[..., T]`` positions (m) and yaw (rad).
      dt_s: seconds per step.
    Returns:
      (linear_speed m/s, linear_acceleration m/s^2, angular_speed rad/s,
      angular_acceleration rad/s^2), each ``[..., T]``; speeds are NaN at the
      first and last step, accelerations at the first and last two.
    """
    d = [_central_diff(c) for c in (x, y, z)]
    speed = jnp.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) / dt_s
    accel = _central_diff(speed) / dt_s
    # Wrap twice the 2-step heading change, as officially (<= pi/2 per step).
    dh_step = geo.wrap_angle(_central_diff(heading) * 2) / 2
    d2h_step = geo.wrap_angle(_central_diff(dh_step) * 2) / 2
    return speed, accel, dh_step / dt_s, d2h_step / (dt_s**2)


def kinematic_validity(valid: Array) -> tuple[Array, Array]:
    """Validity of central-difference speeds and accelerations, ``[..., T]``."""
    speed_valid = _central_and(valid)
    return speed_valid, _central_and(speed_valid)


# ==================================================================== interactions
def boxes(tr: dict, steps: slice) -> Array:
    """``[N, T, 5]`` (x, y, length, width, heading) boxes from ``[N, 91]`` trajectories."""
    return jnp.stack([tr[k][:, steps] for k in ("x", "y", "length", "width", "heading")], axis=-1)


def time_to_collision(
    eval_boxes: Array, eval_speed: Array, all_boxes: Array, all_speed: Array, all_valid: Array
) -> Array:
    """Time to collision with the object in front, official rules.

    An object is "in front" when it is ahead of the ego's front side, heading
    within 75 deg of the ego, overlapping the ego's lateral extent (within
    10 deg if the overlap is under 0.5 m). Constant speeds; capped at 5 s.

    Args:
      eval_boxes: ``[E, T, 5]``; eval_speed: ``[E, T]`` m/s (z ignored).
      all_boxes: ``[A, T, 5]``; all_speed: ``[A, T]``; all_valid: bool ``[A, T]``.
    Returns:
      ``[E, T]`` seconds.
    """
    ego = eval_boxes[:, None]  # [E, 1, T, 5]
    oth = all_boxes[None]  # [1, A, T, 5]
    yaw_diff = jnp.abs(oth[..., 4] - ego[..., 4])
    c, s = jnp.abs(jnp.cos(yaw_diff)), jnp.abs(jnp.sin(yaw_diff))
    ol, ow = oth[..., 2] / 2.0, oth[..., 3] / 2.0
    long_off = ol * c + ow * s
    lat_off = ol * s + ow * c
    rel = geo.rotate_2d(oth[..., :2] - ego[..., :2], -ego[..., 4])
    long_d = rel[..., 0] - ego[..., 2] / 2.0 - long_off
    lat_o = jnp.abs(rel[..., 1]) - ego[..., 3] / 2.0 - lat_off
    following = (
        (long_d > 0.0) & (yaw_diff <= MAX_HEADING_DIFF) & (lat_o < 0.0)
        & ((lat_o < -SMALL_OVERLAP_THRESHOLD) | (yaw_diff <= MAX_HEADING_DIFF_FOR_SMALL_OVERLAP))
    )
    ok = all_valid[None] & following
    masked = long_d + (1.0 - ok.astype(long_d.dtype)) * LARGE  # [E, A, T]
    j = jnp.argmin(masked, axis=1)  # [E, T]
    dist = jnp.take_along_axis(masked, j[:, None], axis=1)[:, 0]
    ahead_speed = all_speed[j, jnp.arange(j.shape[1])[None]]
    rel_speed = eval_speed - ahead_speed
    safe = jnp.where(rel_speed > 0.0, rel_speed, 1.0)
    return jnp.where(rel_speed > 0.0, jnp.minimum(dist / safe, MAXIMUM_TIME_TO_COLLISION), MAXIMUM_TIME_TO_COLLISION)


# ==================================================================== map
@struct.dataclass
class MapData:
    """Road-graph data prepared once per scene for the map features.

      edges: ``geo.Segments`` of the road edges ``[Se]`` (official wrap rule).
      edge_index: the road edges' grid (``geometry.segment_index``), or None
        (exhaustive road-edge search).
      lane_start, lane_end: ``[Sl, 2]`` lane "segments" as the official
        traffic-light code forms them; lane_valid bool ``[Sl]``; lane_id ``[Sl]``.
      overflow: bool, a compaction dropped road-edge or lane points.
    """

    edges: geo.Segments
    edge_index: segment_index.SegmentIndex | None
    lane_start: Array
    lane_end: Array
    lane_valid: Array
    lane_id: Array
    overflow: Array


def prepare_map(rg: dt.RoadGraph, max_road_edge_points: int | None = None,
                max_lane_points: int | None = None, road_edge_grid: int | None = None,
                road_edge_candidates: int = 64, cover_xy: Array | None = None,
                cover_valid: Array | None = None) -> MapData:
    """Road-edge segments (and their index) and lane segments of one scene (``[P]`` road graph).

    Args:
      rg: the scene's road graph.
      max_road_edge_points, max_lane_points: slots after compaction (None:
        every road-graph slot); see ``wosac.RealismConfig``.
      road_edge_grid, road_edge_candidates: the road-edge index (grid None:
        none, exhaustive search).
      cover_xy, cover_valid: ``[..., 2]`` box centres of the road-edge queries
        (and bool validity) whose extent the index also covers (None: the
        road edges' extent only).
    """
    edges, e_over = scene.road_edge_segments(rg, max_road_edge_points)
    index = None if road_edge_grid is None else scene.road_edge_index(edges, road_edge_grid, road_edge_candidates,
                                                                      cover_xy, cover_valid)
    is_lane = rg.valid & (rg.type == dt.RG_LANE_SURFACE_STREET)
    lxyz, lid, lkeep, l_over = scene.compact_points(rg, is_lane, max_lane_points)
    _, _, same_next, ln, lmax = scene.polyline_lengths(lid, lkeep)
    nxt = jnp.concatenate([lxyz[1:, :2], lxyz[-1:, :2]], axis=0)
    lane_end = jnp.where(same_next[:, None], nxt, 0.0)
    lane_valid = lkeep & (ln >= 2) & (same_next | (ln < lmax))
    return MapData(edges=edges, edge_index=index, lane_start=lxyz[:, :2], lane_end=lane_end, lane_valid=lane_valid,
                   lane_id=lid, overflow=e_over | l_over)


def _lane_distance(points: Array, start: Array, end: Array, valid: Array) -> Array:
    """Official lane-assignment distance |v + t e| (sic: a sign slip), ``[..., S]``.

    Args:
      points: ``[..., 2]``; start, end: ``[S, 2]``; valid: bool ``[..., S]``.
    """
    sx, sy = start[:, 0], start[:, 1]
    ex, ey = end[:, 0] - sx, end[:, 1] - sy
    ee = ex * ex + ey * ey
    vx, vy = points[..., 0, None] - sx, points[..., 1, None] - sy
    t = jnp.clip(jnp.where(ee != 0, (vx * ex + vy * ey) / jnp.where(ee != 0, ee, 1.0), 0.0), 0.0, 1.0)
    wx, wy = vx + ex * t, vy + ey * t
    return jnp.where(valid, jnp.sqrt(wx * wx + wy * wy), LARGE)


def _stop_segments(md: MapData, lane_id: Array, stop_xy: Array) -> tuple[Array, Array, Array]:
    """Segment of a signal's lane nearest to its stop point (official "fence").

    Args:
      lane_id: int ``[...]``; stop_xy: ``[..., 2]``.
    Returns:
      (start ``[..., 2]``, direction ``[..., 2]``, stop projection ``[...]``).
    """
    in_lane = md.lane_valid & (md.lane_id == lane_id[..., None])
    j = jnp.argmin(_lane_distance(stop_xy, md.lane_start, md.lane_end, in_lane), axis=-1)
    s, e = md.lane_start[j], md.lane_end[j] - md.lane_start[j]
    ee = geo.dot_2d(e, e)
    t = jnp.where(ee != 0, geo.dot_2d(stop_xy - s, e) / jnp.where(ee != 0, ee, 1.0), 0.0)
    return s, e, t


def prepare_signals(tl: dt.TrafficLights, md: MapData) -> dict:
    """Per-step signal geometry for steps 10..90 (the crossing needs step t-1).

    Returns dict of ``[81, L]`` arrays: ``stop`` (red: STOP or ARROW_STOP and
    the lane is a known surface-street lane), ``lane_id``, and for the crossing
    test the fence at t (``s1, e1, t1``) and at t-1 for the same lane
    (``s0, e0, t0``; stop point (0, 0) when the lane had no state at t-1).
    """
    c = dt.CURRENT_INDEX
    stop_xy = tl.stop_point[..., :2]
    lane_known = jnp.any(md.lane_valid & (md.lane_id == tl.lane_id[..., None]), axis=-1)
    red = tl.valid & ((tl.state == dt.TL_STOP) | (tl.state == dt.TL_ARROW_STOP)) & lane_known
    # Stop point of the same lane one step earlier (slots may move between steps).
    same = (tl.lane_id[1:, :, None] == tl.lane_id[:-1, None, :]) & tl.valid[:-1, None, :]  # [90, L, L]
    k = jnp.argmax(same, axis=-1)
    prev_stop = jnp.take_along_axis(stop_xy[:-1], k[..., None].repeat(2, -1), axis=1)
    prev_xy = jnp.where(jnp.any(same, -1)[..., None], prev_stop, 0.0)
    lane = tl.lane_id[c:]
    s1, e1, t1 = _stop_segments(md, lane, stop_xy[c:])
    s0, e0, t0 = _stop_segments(md, lane, prev_xy[c - 1:])
    return {"stop": red[c:], "lane_id": lane, "s1": s1, "e1": e1, "t1": t1, "s0": s0, "e0": e0, "t0": t0}


def nearest_lane_segment(xy: Array, valid: Array, md: MapData, block: int | None, k: int,
                         steps_per_group: int = 9) -> tuple[Array, Array]:
    """Official lane assignment: index of the nearest lane segment.

    The official distance |v + t e| is at least |v| (the distance to the
    segment's start), so blocks bounded by their start points prune exactly.

    Args:
      xy: ``[E, T, 2]``; valid: bool ``[E, T]``.
      block, k: pruning (None: exhaustive); groups of ``steps_per_group`` steps.
    Returns:
      (segment index int32 ``[E, T]``, exact bool ``[E, T]``).
    """
    e, t = xy.shape[:2]
    if block is None or t % steps_per_group:
        d = _lane_distance(xy, md.lane_start, md.lane_end, md.lane_valid)
        return jnp.argmin(d, axis=-1).astype(jnp.int32), jnp.ones((e, t), bool)
    start = geo.pad_blocks(md.lane_start, block, 0.0)
    end = geo.pad_blocks(md.lane_end, block, 0.0)
    lvalid = geo.pad_blocks(md.lane_valid, block, False)
    nb = lvalid.shape[0] // block
    lo = jnp.where(lvalid[:, None], start, jnp.inf).reshape(nb, block, 2).min(1)
    hi = jnp.where(lvalid[:, None], start, -jnp.inf).reshape(nb, block, 2).max(1)

    def dist2(p, items):  # p [G, n, 2], items [G, C]
        sx, sy = start[items][:, None, :, 0], start[items][:, None, :, 1]
        ex, ey = end[items][:, None, :, 0] - sx, end[items][:, None, :, 1] - sy
        ee = ex * ex + ey * ey
        vx, vy = p[..., 0, None] - sx, p[..., 1, None] - sy
        tt = jnp.clip(jnp.where(ee != 0, (vx * ex + vy * ey) / jnp.where(ee != 0, ee, 1.0), 0.0), 0.0, 1.0)
        wx, wy = vx + ex * tt, vy + ey * tt
        # The plain distance, so that ties break exactly as in the official argmin.
        return jnp.where(lvalid[items][:, None, :], jnp.sqrt(wx * wx + wy * wy), jnp.inf)

    g = e * t // steps_per_group
    j, exact = geo.pruned_argmin(xy.reshape(g, steps_per_group, 2), lo, hi, dist2, block, k,
                                 valid.reshape(g, steps_per_group), squared=False)
    return j.reshape(e, t), exact.reshape(e, t) | ~valid


def red_light_violation(xy: Array, valid: Array, md: MapData, sig: dict,
                        block: int | None = None, k: int = 16) -> tuple[Array, Array]:
    """Red-light violations of evaluated agents, official rule.

    Args:
      xy: ``[E, 81, 2]`` centres for steps 10..90; valid: bool ``[E, 81]``.
      block, k: pruning of the lane assignment (None: exhaustive).
    Returns:
      (bool ``[E, 80]`` for steps 11..90: the agent's nearest lane has a red
      signal at t and the agent passed its stop point between t-1 and t;
      bool ``[E, 81]`` exactness of the lane assignment).
    """
    j, exact = nearest_lane_segment(xy, valid, md, block, k)
    cur_lane = md.lane_id[j]  # [E, 81]

    def rel_t(p, s, e):  # p [E, T, 2]; s, e [T, L, 2]
        ee = geo.dot_2d(e, e)
        num = geo.dot_2d(p[:, :, None] - s[None], e[None])
        return jnp.where(ee != 0, num / jnp.where(ee != 0, ee, 1.0), 0.0)

    behind = rel_t(xy[:, :-1], sig["s0"][1:], sig["e0"][1:]) < sig["t0"][None, 1:]
    ahead = rel_t(xy[:, 1:], sig["s1"][1:], sig["e1"][1:]) > sig["t1"][None, 1:]
    match = cur_lane[:, 1:, None] == sig["lane_id"][None, 1:]
    hit = valid[:, 1:, None] & match & sig["stop"][None, 1:] & behind & ahead
    return jnp.any(hit, axis=-1), exact

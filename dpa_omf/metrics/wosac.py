"""WOSAC realism metric in pure JAX (2024 / 2025 sim-agents challenge).

Reimplements the official Waymo Open Sim Agents Challenge metric
(``waymo_open_dataset/wdl_limited/sim_agents_metrics``, package version 1.6.7)
on fixed shapes so that it runs under ``jax.jit`` and ``jax.vmap`` over scenes.

Pipeline (per scene):

1. Trajectories ``[B, A, 91]``: the logged history (steps 0..10) followed by
   80 simulated steps (B = 32 rollouts), or by the logged future (B = 1, "log").
   Only agents to simulate (``sim_mask``, valid at the current step) take part.
   Box sizes of future steps are those of the current step, as officially.
2. Per-step features of the evaluated agents (``eval_mask``: the sdc and the
   tracks to predict), gathered into ``max_eval_agents`` slots: linear / angular
   speed and acceleration (central differences, NaN padded), distance to the
   nearest object (rounded boxes) and collisions, time to collision with the
   object in front, signed distance to road edges and off-road, red-light
   violations. See ``compute_features``.
3. Estimators: per-object histograms pooled over rollouts x steps, Bernoulli
   estimates of "ever collided / off-road / ran a red light", each scored by
   the log-likelihood of the logged value, averaged with the official validity
   masks and exponentiated; weighted sum = meta-metric. See ``compute_metrics``.

Quirks of the official code reproduced on purpose (each matters for the
golden numbers in ``shared/golden/wosac``):
* simulated speeds are NaN at the last step and accelerations at the last two;
  these NaNs enter the simulated histograms (into the last bin, like
  ``tf.searchsorted``);
* ADE divides by the number of valid logged steps over all 91 steps;
* the sign rule at road-edge segment ends wraps around closed polylines only
  for polylines as long as the longest road edge (padding artefact);
* lane assignment for traffic lights measures |p - a + t (b - a)| (a sign
  slip in the official code) and links each lane's last point to the origin
  (zero padding) unless the lane is the longest one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dpa_omf import datatypes as dt
from dpa_omf.geometry import shapes as geo
from dpa_omf.metrics import wosac_config as rc

Array = Any

# Official constants (interaction_features.py, map_metric_features.py).
COLLISION_DISTANCE_THRESHOLD = 0.0
OFFROAD_DISTANCE_THRESHOLD = 0.0
CORNER_ROUNDING_FACTOR = 0.7
MAX_HEADING_DIFF = math.radians(75.0)
MAX_HEADING_DIFF_FOR_SMALL_OVERLAP = math.radians(10.0)
SMALL_OVERLAP_THRESHOLD = 0.5
MAXIMUM_TIME_TO_COLLISION = 5.0
Z_STRETCH = 3.0
LARGE = geo.EXTREMELY_LARGE_DISTANCE
NUM_ROLLOUTS = 32


@dataclasses.dataclass(frozen=True)
class RealismConfig:
    """Realism-metric settings (hashable: a static argument of ``jax.jit``).

    Attributes:
      challenge: official configuration, '2024' or '2025'.
      max_eval_agents: evaluated-agent slots per scene (WOMD: the sdc plus at
        most 8 tracks to predict). Scenes with more are flagged
        (``eval_overflow``) and their extra agents ignored.
      rollout_batch: rollouts processed together (``lax.map`` batch size);
        trades memory for speed.
      max_road_edge_points, max_lane_points: compact the road-edge / lane
        samples into this many slots before the brute-force nearest-segment
        searches (None: keep all road-graph slots). Overflow is flagged.
      road_edge_block, road_edge_blocks_searched: exact block pruning of the
        nearest-road-edge search (``geometry.nearest_segment_3d_grouped``);
        block None searches every segment. When pruning cannot certify a
        query, ``map_search_inexact`` is flagged (re-run with None).
      lane_block, lane_blocks_searched: the same for the lane assignment of
        the traffic-light feature (lanes are denser: more blocks searched).
    """

    challenge: str = "2025"
    max_eval_agents: int = 16
    rollout_batch: int = 8
    max_road_edge_points: int | None = None
    max_lane_points: int | None = None
    road_edge_block: int | None = 32
    road_edge_blocks_searched: int = 16
    lane_block: int | None = 32
    lane_blocks_searched: int = 32

    def __post_init__(self):
        rc.get_metrics_config(self.challenge)
        if self.max_eval_agents < 1 or self.rollout_batch < 1:
            raise ValueError(f"bad RealismConfig: {self}")

    @property
    def metrics_config(self) -> rc.MetricsConfig:
        return rc.get_metrics_config(self.challenge)

    def fitted(self, scenarios: dt.Scenario, quantum: int = 1024) -> "RealismConfig":
        """A copy whose static sizes fit concrete scenes (one or a batch).

        Sets ``max_eval_agents`` to the largest number of evaluated agents and
        the road-edge / lane capacities to the largest counts rounded up to a
        multiple of ``quantum`` (few distinct shapes, so few compilations).
        The work of the map searches scales with these capacities.
        """
        a, rg = scenarios.agents, scenarios.roadgraph
        n_eval = np.sum(np.asarray(a.eval_mask) & np.asarray(a.sim_mask), axis=-1)
        rtype, rvalid = np.asarray(rg.type), np.asarray(rg.valid, bool)
        n_edge = np.sum(rvalid & np.isin(rtype, dt.RG_ROAD_EDGE_TYPES), axis=-1)
        n_lane = np.sum(rvalid & (rtype == dt.RG_LANE_SURFACE_STREET), axis=-1)
        up = lambda n: int(max(1, -(-int(np.max(n)) // quantum)) * quantum)  # noqa: E731
        return dataclasses.replace(self, max_eval_agents=max(1, int(np.max(n_eval))),
                                   max_road_edge_points=up(n_edge), max_lane_points=up(n_lane))


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
def _trajectories(scenario: dt.Scenario, future_xyzh: Array, future_valid: Array) -> dict:
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
        hist = jnp.broadcast_to(hist[None, :, :h], (b,) + hist[:, :h].shape)
        return jnp.concatenate([hist, fut], axis=-1)

    def size(v: Array) -> Array:
        cur = jnp.broadcast_to(v[:, dt.CURRENT_INDEX:h], v[:, h:].shape)
        return cat(v, jnp.broadcast_to(cur[None], (b,) + cur.shape))

    sim = a.sim_mask[None, :, None]
    return dict(
        x=cat(a.x, future_xyzh[..., 0]), y=cat(a.y, future_xyzh[..., 1]),
        z=cat(a.z, future_xyzh[..., 2]), heading=cat(a.heading, future_xyzh[..., 3]),
        length=size(a.length), width=size(a.width), height=size(a.height),
        valid=cat(a.valid, future_valid) & sim,
    )


# ==================================================================== kinematics
def _central_diff(t: Array) -> Array:
    """``(t[i+1] - t[i-1]) / 2`` along the last axis, NaN at both ends."""
    pad = jnp.full(t.shape[:-1] + (1,), jnp.nan, t.dtype)
    return jnp.concatenate([pad, (t[..., 2:] - t[..., :-2]) / 2, pad], axis=-1)


def _central_and(v: Array) -> Array:
    pad = jnp.zeros(v.shape[:-1] + (1,), bool)
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
def _boxes(tr: dict, steps: slice) -> Array:
    """``[N, T, 5]`` (x, y, length, width, heading) boxes from ``[N, 91]`` trajectories."""
    return jnp.stack([tr[k][:, steps] for k in ("x", "y", "length", "width", "heading")], axis=-1)


def distance_to_nearest_object(
    eval_boxes: Array, all_boxes: Array, eval_index: Array, eval_ok: Array, all_valid: Array
) -> Array:
    """Signed distance from each evaluated box to the closest other valid box.

    Args:
      eval_boxes: ``[E, T, 5]``; all_boxes: ``[A, T, 5]`` boxes (x, y, l, w, yaw).
      eval_index: int ``[E]`` slot of each evaluated agent in ``all_boxes``.
      eval_ok: bool ``[E, T]`` evaluated agent valid; all_valid: bool ``[A, T]``.
    Returns:
      ``[E, T]`` metres (1e10 when nothing else is valid), rounded boxes with
      the official rounding factor 0.7.
    """
    d = geo.rounded_box_signed_distance(eval_boxes[:, None], all_boxes[None], CORNER_ROUNDING_FACTOR)
    other = jnp.arange(all_boxes.shape[0])[None, :, None] != eval_index[:, None, None]
    ok = eval_ok[:, None] & all_valid[None] & other
    return jnp.min(jnp.where(ok, d, LARGE), axis=1)


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
      lane_start, lane_end: ``[Sl, 2]`` lane "segments" as the official
        traffic-light code forms them; lane_valid bool ``[Sl]``; lane_id ``[Sl]``.
      overflow: bool, a compaction dropped road-edge or lane points.
    """

    edges: geo.Segments
    lane_start: Array
    lane_end: Array
    lane_valid: Array
    lane_id: Array
    overflow: Array


def _compact(rg: dt.RoadGraph, keep: Array, size: int | None):
    """Moves the kept points first (stable) and truncates to ``size`` slots."""
    p = keep.shape[0]
    size = p if size is None else min(size, p)
    order = jnp.argsort(~keep, stable=True)[:size]
    overflow = jnp.sum(keep) > size
    return rg.xyz[order], rg.id[order], keep[order], overflow


def _polyline_lengths(ids: Array, keep: Array) -> tuple[Array, Array, Array, Array, Array]:
    """first, last point index, continues-to-next flag, point count of each
    point's polyline (0 at dropped points) and the longest count."""
    first, last, same_next = geo.polyline_bounds(ids, keep)
    n = jnp.where(keep, last - first + 1, 0)
    return first, last, same_next, n, jnp.max(n)


def prepare_map(rg: dt.RoadGraph, config: RealismConfig) -> MapData:
    """Road-edge segments and lane segments of one scene (``[P]`` road graph)."""
    is_edge = rg.valid & ((rg.type == dt.RG_ROAD_EDGE_BOUNDARY) | (rg.type == dt.RG_ROAD_EDGE_MEDIAN))
    exyz, eid, ekeep, e_over = _compact(rg, is_edge, config.max_road_edge_points)
    first, last, _, n, max_n = _polyline_lengths(eid, ekeep)
    p = ekeep.shape[0]
    fc, lc = jnp.clip(first, 0, p - 1), jnp.clip(last, 0, p - 1)
    # Official padding artefact: closed polylines wrap only at the maximum length.
    wrap = geo.is_closed_polyline(exyz, fc, lc) & (n == max_n)
    edges = geo.polyline_segments(exyz, eid, ekeep, wrap=wrap)

    is_lane = rg.valid & (rg.type == dt.RG_LANE_SURFACE_STREET)
    lxyz, lid, lkeep, l_over = _compact(rg, is_lane, config.max_lane_points)
    _, _, same_next, ln, lmax = _polyline_lengths(lid, lkeep)
    nxt = jnp.concatenate([lxyz[1:, :2], lxyz[-1:, :2]], axis=0)
    lane_end = jnp.where(same_next[:, None], nxt, 0.0)
    lane_valid = lkeep & (ln >= 2) & (same_next | (ln < lmax))
    return MapData(edges=edges, lane_start=lxyz[:, :2], lane_end=lane_end, lane_valid=lane_valid,
                   lane_id=lid, overflow=e_over | l_over)


def distance_to_road_edge(eval_tr: dict, edges: geo.Segments, block: int | None = None,
                          k: int = 16, steps_per_group: int = 10) -> tuple[Array, Array]:
    """Signed distance of the most off-road bottom corner.

    Args:
      eval_tr: dict of ``[E, T]`` trajectories (x, y, z, length, width,
        height, heading, valid).
      edges: road-edge ``Segments``.
      block, k: block pruning of the nearest-segment search (None: exhaustive);
        queries are grouped by ``steps_per_group`` steps x 4 corners.
    Returns:
      (``[E, T]`` metres, bool exactness of the pruned search, all True when
      exhaustive).
    """
    corners = geo.box_bottom_corners_3d(*(eval_tr[k] for k in ("x", "y", "z", "length", "width", "height", "heading")))
    e, t = corners.shape[:2]
    if block is None or t % steps_per_group:
        d = geo.signed_distance_to_polylines(corners, edges, Z_STRETCH)  # [E, T, 4]
        return jnp.max(d, axis=-1), jnp.ones((e, t), bool)
    g = e * t // steps_per_group
    grouped = corners.reshape(g, steps_per_group * 4, 3)
    pv = jnp.broadcast_to(eval_tr["valid"][..., None], (e, t, 4)).reshape(g, steps_per_group * 4)
    j, exact = geo.nearest_segment_3d_grouped(grouped, edges, Z_STRETCH, block, k, pv)
    d = geo.signed_distance_to_polylines(corners, edges, Z_STRETCH, nearest=j.reshape(e, t, 4))
    return jnp.max(d, axis=-1), exact.reshape(e, t, 4).all(-1) | ~eval_tr["valid"]


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
    prev_xy = jnp.where(jnp.any(same, -1)[..., None], jnp.take_along_axis(stop_xy[:-1], k[..., None].repeat(2, -1), axis=1), 0.0)
    lane = tl.lane_id[c:]
    s1, e1, t1 = _stop_segments(md, lane, stop_xy[c:])
    s0, e0, t0 = _stop_segments(md, lane, prev_xy[c - 1:])
    return dict(stop=red[c:], lane_id=lane, s1=s1, e1=e1, t1=t1, s0=s0, e0=e0, t0=t0)


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
    start = geo._pad_blocks(md.lane_start, block, 0.0)
    end = geo._pad_blocks(md.lane_end, block, 0.0)
    lvalid = geo._pad_blocks(md.lane_valid, block, False)
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


# ==================================================================== features
def _eval_slots(agents: dt.Agents, max_eval: int) -> tuple[Array, Array, Array]:
    """Slots of the evaluated agents (sorted by slot), padded to ``max_eval``."""
    mask = agents.eval_mask & agents.sim_mask
    (idx,) = jnp.nonzero(mask, size=max_eval, fill_value=0)
    ok = jnp.arange(max_eval) < jnp.sum(mask)
    return idx.astype(jnp.int32), ok, jnp.sum(mask) > max_eval


def _rollout_features(tr: dict, log_xyz: Array, log_valid: Array, eval_index: Array,
                      md: MapData, sig: dict, config: RealismConfig) -> dict:
    """Features of one rollout.

    Args:
      tr: dict of ``[A, 91]`` trajectories (see ``_trajectories``).
      log_xyz: ``[E, 91, 3]`` logged positions of the evaluated agents.
      log_valid: bool ``[E, 91]`` logged validity of the evaluated agents.
      eval_index: int32 ``[E]``.
    Returns:
      dict of ``[E, 80]`` features and ``[E]`` ADE.
    """
    h = dt.NUM_HISTORY
    fut = slice(h, None)
    ev = {k: v[eval_index] for k, v in tr.items()}
    speed, accel, ang_speed, ang_accel = kinematic_features(ev["x"], ev["y"], ev["z"], ev["heading"])

    disp = jnp.sqrt((ev["x"] - log_xyz[..., 0]) ** 2 + (ev["y"] - log_xyz[..., 1]) ** 2
                    + (ev["z"] - log_xyz[..., 2]) ** 2)
    ade = jnp.sum(jnp.where(log_valid, disp, 0.0), -1) / jnp.sum(log_valid.astype(jnp.float32), -1)

    eval_boxes, all_boxes = _boxes(ev, fut), _boxes(tr, fut)
    ev_valid, all_valid = ev["valid"][:, fut], tr["valid"][:, fut]
    dist = distance_to_nearest_object(eval_boxes, all_boxes, eval_index, ev_valid, all_valid)

    speed_2d = kinematic_features(tr["x"], tr["y"], jnp.zeros_like(tr["x"]), tr["heading"])[0]
    ttc = time_to_collision(eval_boxes, speed_2d[eval_index][:, fut], all_boxes, speed_2d[:, fut], all_valid)

    ev_fut = {k: v[:, fut] for k, v in ev.items()}
    road, road_exact = distance_to_road_edge(ev_fut, md.edges, config.road_edge_block,
                                             config.road_edge_blocks_searched)
    road = jnp.where(ev_valid, road, -LARGE)

    c = dt.CURRENT_INDEX
    xy = jnp.stack([ev["x"][:, c:], ev["y"][:, c:]], axis=-1)
    tl, lane_exact = red_light_violation(xy, ev["valid"][:, c:], md, sig, config.lane_block,
                                         config.lane_blocks_searched)
    return dict(
        average_displacement_error=ade,
        linear_speed=speed[:, fut], linear_acceleration=accel[:, fut],
        angular_speed=ang_speed[:, fut], angular_acceleration=ang_accel[:, fut],
        distance_to_nearest_object=dist, collision_per_step=dist < COLLISION_DISTANCE_THRESHOLD,
        time_to_collision=ttc, distance_to_road_edge=road,
        offroad_per_step=road > OFFROAD_DISTANCE_THRESHOLD, traffic_light_violation_per_step=tl,
        map_search_inexact=jnp.any(ev_valid & ~road_exact) | jnp.any(~lane_exact),
    )


def _features_for(scenario: dt.Scenario, future_xyzh: Array, future_valid: Array,
                  eval_index: Array, eval_valid: Array, md: MapData, sig: dict,
                  config: RealismConfig, batch_size: int) -> tuple[Features, Array]:
    a = scenario.agents
    tr = _trajectories(scenario, future_xyzh, future_valid)
    log_xyz = jnp.stack([a.x, a.y, a.z], axis=-1)[eval_index]
    log_valid = a.valid[eval_index]
    f = functools.partial(_rollout_features, log_xyz=log_xyz, log_valid=log_valid,
                          eval_index=eval_index, md=md, sig=sig, config=config)
    out = jax.lax.map(f, tr, batch_size=min(batch_size, future_xyzh.shape[0]))
    inexact = jnp.any(out.pop("map_search_inexact"))
    return Features(
        eval_index=eval_index, eval_valid=eval_valid, object_id=a.id[eval_index],
        object_type=a.type[eval_index], valid=tr["valid"][:, eval_index, dt.NUM_HISTORY:],
        **out,
    ), inexact


def compute_features(scenario: dt.Scenario, sim_xyzh: Array, config: RealismConfig = RealismConfig(),
                     sim_mask: Array | None = None) -> tuple[Features, Features, dict]:
    """Official per-step features of the log and of the rollouts.

    Args:
      scenario: one scene, agent arrays ``[A, 91]``.
      sim_xyzh: ``[R, A, 80, 4]`` simulated x, y, z (m) and heading (rad) for
        the 80 steps after the current one, in the scenario's agent slots
        (slots that are not simulated are ignored).
      config: ``RealismConfig``.
      sim_mask: optional bool ``[A]`` agents to simulate (default
        ``scenario.agents.sim_mask``, the official rule).
    Returns:
      (log features with B = 1, sim features with B = R, flags) where flags
      holds bool ``eval_overflow``, ``map_overflow`` and ``map_search_inexact``.
    """
    if sim_mask is not None:
        scenario = scenario.replace(agents=scenario.agents.replace(sim_mask=sim_mask))
    a = scenario.agents
    eval_index, eval_valid, eval_over = _eval_slots(a, config.max_eval_agents)
    md = prepare_map(scenario.roadgraph, config)
    sig = prepare_signals(scenario.traffic_lights, md)
    h = dt.NUM_HISTORY
    log_future = jnp.stack([a.x, a.y, a.z, a.heading], axis=-1)[None, :, h:]
    log, log_inexact = _features_for(scenario, log_future, a.valid[None, :, h:], eval_index, eval_valid,
                                     md, sig, config, 1)
    sim_valid = jnp.ones(sim_xyzh.shape[:3], bool)
    sim, sim_inexact = _features_for(scenario, sim_xyzh.astype(jnp.float32), sim_valid, eval_index,
                                     eval_valid, md, sig, config, config.rollout_batch)
    return log, sim, dict(eval_overflow=eval_over, map_overflow=md.overflow,
                          map_search_inexact=log_inexact | sim_inexact)


# ==================================================================== estimators
def histogram_edges(fc: rc.FeatureConfig) -> np.ndarray:
    """float32 ``[num_bins + 1]`` bin edges formed like ``tf.linspace`` in float32."""
    lo, hi, n = np.float32(fc.min_val), np.float32(fc.max_val), fc.num_bins
    delta = np.float32((hi - lo) / np.float32(n))
    inner = lo + np.arange(1, n, dtype=np.float32) * delta
    return np.concatenate([[lo], inner, [hi]]).astype(np.float32)


def histogram_bins(x: Array, fc: rc.FeatureConfig) -> Array:
    """Bin index of each value, official clipping and edge rules.

    Values are clipped into [min_val, max_val]; ``edges[k] <= x < edges[k+1]``
    gives bin k (the top edge belongs to the last bin); NaN goes to the last
    bin, as ``tf.searchsorted(side='right')`` puts it.
    """
    edges = jnp.asarray(histogram_edges(fc))
    xc = jnp.clip(x, edges[0], edges[-1])
    k = jnp.sum(edges[1:-1] <= xc[..., None], axis=-1).astype(jnp.int32)
    return jnp.where(jnp.isnan(x), fc.num_bins - 1, k)


def histogram_log_likelihood(log_values: Array, sim_values: Array, fc: rc.FeatureConfig) -> Array:
    """Log-likelihood of logged values under the simulated histograms.

    Args:
      log_values: ``[E, T]``; sim_values: ``[R, E, T]`` (bool for Bernoulli).
      fc: the component's ``FeatureConfig``.
    Returns:
      ``[E, T]`` log-probabilities (natural log) of the logged bins, with the
      additive pseudocount in every bin.
    """
    log_bins = histogram_bins(log_values.astype(jnp.float32), fc)
    sim_bins = histogram_bins(sim_values.astype(jnp.float32), fc)
    onehot = jax.nn.one_hot(sim_bins, fc.num_bins, dtype=jnp.float32)  # [R, E, T, K]
    if fc.independent_timesteps:
        counts = jnp.sum(onehot, axis=(0, 2))[:, None, :]  # [E, 1, K]
    else:
        counts = jnp.sum(onehot, axis=0)  # [E, T, K]
    counts = counts + fc.pseudocount
    picked = jnp.take_along_axis(jnp.broadcast_to(counts, log_bins.shape + (fc.num_bins,)),
                                 log_bins[..., None], axis=-1)[..., 0]
    return jnp.log(picked) - jnp.log(jnp.sum(counts, axis=-1))


def _masked_mean(x: Array, mask: Array) -> Array:
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.sum(mask.astype(jnp.float32))


def metrics_from_features(log: Features, sim: Features, mc: rc.MetricsConfig) -> dict:
    """Scene metrics (official definitions) from log and sim features.

    Returns:
      dict of float32 scalars: the ten ``<component>_likelihood`` values,
      ``metametric``, ``kinematic`` / ``interactive`` / ``map_based`` buckets,
      ``average_displacement_error``, ``min_average_displacement_error`` and
      the three ``simulated_*_rate`` values.
    """
    ev = log.eval_valid
    lv = log.valid[0] & ev[:, None]  # [E, T]
    speed_v, accel_v = kinematic_validity(lv)
    is_vehicle = (log.object_type == dt.AGENT_TYPE_VEHICLE)[:, None]
    out = {}

    def lik(name: str, mask: Array) -> None:
        ll = histogram_log_likelihood(getattr(log, name)[0], getattr(sim, name), mc.component(name))
        out[f"{name}_likelihood"] = jnp.exp(_masked_mean(ll, mask))

    for name in ("linear_speed", "angular_speed"):
        lik(name, speed_v)
    for name in ("linear_acceleration", "angular_acceleration"):
        lik(name, accel_v)
    lik("distance_to_nearest_object", lv)
    lik("time_to_collision", lv & is_vehicle)
    lik("distance_to_road_edge", lv)

    def indication(feat: Features, name: str, mask: Array) -> Array:
        return jnp.any(getattr(feat, name) & mask, axis=-1)  # [B, E]

    def bernoulli(component: str, feature: str, mask: Array) -> Array:
        sim_ind = indication(sim, feature, mask)
        log_ind = indication(log, feature, mask)[0]
        ll = histogram_log_likelihood(log_ind[:, None], sim_ind[..., None], mc.component(component))[:, 0]
        out[f"{component}_likelihood"] = jnp.exp(_masked_mean(ll, ev))
        return sim_ind

    coll = bernoulli("collision_indication", "collision_per_step", lv)
    off = bernoulli("offroad_indication", "offroad_per_step", lv)
    bernoulli("traffic_light_violation", "traffic_light_violation_per_step", lv & is_vehicle)
    tl_any = indication(sim, "traffic_light_violation_per_step", lv)

    evr = jnp.broadcast_to(ev, coll.shape)
    out["simulated_collision_rate"] = _masked_mean(coll.astype(jnp.float32), evr)
    out["simulated_offroad_rate"] = _masked_mean(off.astype(jnp.float32), evr)
    out["simulated_traffic_light_violation_rate"] = _masked_mean(tl_any.astype(jnp.float32), evr)
    ade = sim.average_displacement_error
    out["average_displacement_error"] = _masked_mean(ade, evr)
    per_rollout = jnp.sum(jnp.where(evr, ade, 0.0), -1) / jnp.sum(ev.astype(jnp.float32))
    out["min_average_displacement_error"] = jnp.min(per_rollout)

    out["metametric"] = sum(mc.component(c).weight * out[f"{c}_likelihood"] for c in rc.COMPONENTS)
    for bucket, names in rc.BUCKETS.items():
        wsum = sum(mc.component(c).weight for c in names)
        if wsum > 0:
            out[bucket] = sum(mc.component(c).weight * out[f"{c}_likelihood"] for c in names) / wsum
        else:  # the official code refuses a zero-weight bucket; report NaN instead
            out[bucket] = jnp.float32(jnp.nan)
    return out


def compute_metrics(scenario: dt.Scenario, sim_xyzh: Array, config: RealismConfig = RealismConfig()) -> dict:
    """WOSAC realism metrics of one scene (jit- and vmap-able; config static).

    Args:
      scenario: one scene (agent arrays ``[A, 91]``).
      sim_xyzh: float32 ``[R, A, 80, 4]`` rollouts in agent slots (x, y, z,
        heading); only slots with ``scenario.agents.sim_mask`` are read.
      config: ``RealismConfig`` (challenge name and compute settings).
    Returns:
      dict of scalars: the official metric fields (see
      ``metrics_from_features``), ``num_eval_agents`` and the bool flags
      ``eval_overflow`` / ``map_overflow`` / ``map_search_inexact`` (results
      unreliable when set; ``evaluate_scene`` re-runs exhaustively).
    """
    log, sim, flags = compute_features(scenario, sim_xyzh, config)
    out = metrics_from_features(log, sim, config.metrics_config)
    out["num_eval_agents"] = jnp.sum(log.eval_valid)
    return {**out, **flags}


@functools.lru_cache(maxsize=None)
def jitted_metrics(config: RealismConfig, batched: bool = False):
    """``jax.jit`` of ``compute_metrics`` for one config (vmapped over scenes if batched)."""
    f = functools.partial(compute_metrics, config=config)
    return jax.jit(jax.vmap(f) if batched else f)


OFFICIAL_FIELDS = (
    "metametric",
    *(f"{c}_likelihood" for c in rc.COMPONENTS),
    "average_displacement_error", "min_average_displacement_error",
    "simulated_collision_rate", "simulated_offroad_rate", "simulated_traffic_light_violation_rate",
)
BUCKET_FIELDS = tuple(rc.BUCKETS)
FLAGS = ("eval_overflow", "map_overflow", "map_search_inexact")


@functools.lru_cache(maxsize=None)
def _jitted_features(config: RealismConfig):
    return jax.jit(functools.partial(compute_features, config=config))


def features_checked(scenario: dt.Scenario, sim_xyzh: np.ndarray,
                     config: RealismConfig = RealismConfig()) -> tuple[Features, Features, dict, RealismConfig]:
    """Host-side ``compute_features`` of one concrete scene with safe sizes.

    Fits the static sizes to the scene, and re-runs with an exhaustive
    road-edge search when the pruned one could not certify every query (e.g.
    agents far off the map). Returns (log, sim, flags, config used).
    """
    config = config.fitted(scenario)
    # Features do not depend on the challenge: one compilation serves both.
    key = lambda c: dataclasses.replace(c, challenge="2025")  # noqa: E731
    log, sim, flags = jax.device_get(_jitted_features(key(config))(scenario, sim_xyzh))
    if bool(flags["map_search_inexact"]) and (config.road_edge_block or config.lane_block):
        config = dataclasses.replace(config, road_edge_block=None, lane_block=None)
        log, sim, flags = jax.device_get(_jitted_features(key(config))(scenario, sim_xyzh))
    return log, sim, flags, config


def evaluate_scene(scenario: dt.Scenario, sim_xyzh: np.ndarray, config: RealismConfig = RealismConfig()) -> dict:
    """Official-named metrics (Python floats) of one concrete scene; see ``features_checked``."""
    log, sim, flags, config = features_checked(scenario, sim_xyzh, config)
    m = jax.device_get(_jitted_from_features(config.metrics_config)(log, sim))
    return metrics_to_official_dict({**m, **flags})


@functools.lru_cache(maxsize=None)
def _jitted_from_features(mc: rc.MetricsConfig):
    return jax.jit(functools.partial(metrics_from_features, mc=mc))


def metrics_to_official_dict(metrics: dict) -> dict:
    """Python floats under the official field names plus the three buckets."""
    for flag in FLAGS:
        if flag in metrics and bool(np.any(np.asarray(metrics[flag]))):
            raise ValueError(f"realism metric: {flag} is set; raise RealismConfig limits")
    return {k: float(np.asarray(metrics[k])) for k in OFFICIAL_FIELDS + BUCKET_FIELDS}


# ==================================================================== inputs
def align_rollouts(scenario: dt.Scenario, object_id: np.ndarray, x: np.ndarray, y: np.ndarray,
                   z: np.ndarray, heading: np.ndarray, source: str = "<rollouts>") -> np.ndarray:
    """Places rollouts given per object id into the scenario's agent slots.

    Args:
      scenario: one concrete (numpy) scene.
      object_id: int ``[N]`` ids of the simulated objects.
      x, y, z, heading: ``[R, N, 80]``.
      source: name used in error messages.
    Returns:
      float32 ``[R, A, 80, 4]``.
    Raises:
      ValueError when the ids are not exactly the agents to simulate, the
      horizon is not 80 steps, shapes disagree, or a value is not finite.
    """
    a = scenario.agents
    object_id = np.asarray(object_id).astype(np.int64)
    arrs = [np.asarray(v, np.float32) for v in (x, y, z, heading)]
    if arrs[0].ndim != 3 or any(v.shape != arrs[0].shape for v in arrs):
        raise ValueError(f"{source}: x, y, z, heading must share a [R, N, 80] shape, got "
                         f"{[v.shape for v in arrs]}")
    r, n, t = arrs[0].shape
    if t != dt.NUM_FUTURE:
        raise ValueError(f"{source}: horizon is {t} steps, the challenge needs {dt.NUM_FUTURE}")
    if object_id.shape != (n,):
        raise ValueError(f"{source}: object_id has shape {object_id.shape}, expected ({n},)")
    sim_ids = np.asarray(a.id)[np.asarray(a.sim_mask, bool)].astype(np.int64)
    missing = sorted(set(sim_ids.tolist()) - set(object_id.tolist()))
    extra = sorted(set(object_id.tolist()) - set(sim_ids.tolist()))
    if missing or extra or len(set(object_id.tolist())) != n:
        raise ValueError(f"{source}: rollouts must cover exactly the {len(sim_ids)} agents valid at the "
                         f"current step; missing {missing}, not sim agents {extra}, "
                         f"duplicates {n - len(set(object_id.tolist()))}")
    for name, v in zip(("x", "y", "z", "heading"), arrs):
        if not np.isfinite(v).all():
            i = tuple(int(k) for k in np.argwhere(~np.isfinite(v))[0])
            raise ValueError(f"{source}: non-finite {name} at [rollout, object, step] = {i}")
    slot = {int(i): s for s, i in enumerate(np.asarray(a.id).tolist()) if i >= 0}
    out = np.zeros((r, a.id.shape[-1], t, 4), np.float32)
    out[:, [slot[int(i)] for i in object_id]] = np.stack(arrs, axis=-1)
    return out


def _read_scenario(path: str, scenario_id: str | None) -> dt.Scenario:
    from dpa_omf.io import reader  # TensorFlow lives in the data package only.

    scenarios = reader.read_scenes(path, fmt="scenario")
    found = []
    for s in scenarios:
        sid = dt.scenario_id_str(s.scenario_id)
        found.append(sid)
        if scenario_id is None or sid == scenario_id:
            return s
    raise ValueError(f"{path}: scenario {scenario_id!r} not found (file holds {found})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="WOSAC realism metric of rollouts on one scenario.")
    p.add_argument("--scenario", required=True, help="Scenario-proto TFRecord file")
    p.add_argument("--scenario_id", default=None)
    p.add_argument("--rollouts", required=True,
                   help="npz with x, y, z, heading [R, n_objects, 80] and object_id [n_objects]")
    p.add_argument("--config", default="2025", choices=sorted(rc.CONFIGS))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    scenario = _read_scenario(args.scenario, args.scenario_id)
    with np.load(args.rollouts) as f:
        missing = [k for k in ("x", "y", "z", "heading", "object_id") if k not in f.files]
        if missing:
            raise ValueError(f"{args.rollouts}: missing arrays {missing}")
        sim = align_rollouts(scenario, f["object_id"], f["x"], f["y"], f["z"], f["heading"], args.rollouts)
    out = evaluate_scene(scenario, sim, RealismConfig(challenge=args.config))
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:45s} {v:.6f}")
    return 0


# ==================================================================== benchmark
def synthetic_scene(num_agents: int = 128, num_sim: int = 50, num_eval: int = 4,
                    num_points: int = 20000, seed: int = 0) -> tuple[dt.Scenario, np.ndarray]:
    """A WOMD-sized synthetic scene and 32 rollouts, for benchmarks.

    Agents drive along parallel lanes bounded by two road edges; a quarter of
    the road-graph samples are road edges, half lanes. Returns (scenario,
    sim_xyzh ``[32, A, 80, 4]``).
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
    noise = rng.normal(0, 0.3, (NUM_ROLLOUTS, num_sim, dt.NUM_FUTURE)).astype(np.float32)
    sim = np.zeros((NUM_ROLLOUTS, num_agents, dt.NUM_FUTURE, 4), np.float32)
    sim[:, :num_sim, :, 0] = a.x[None, :num_sim, dt.NUM_HISTORY:] + np.cumsum(noise, -1)
    sim[:, :num_sim, :, 1] = a.y[None, :num_sim, dt.NUM_HISTORY:] + 0.1 * np.cumsum(noise, -1)
    return s, sim


def _median_time(f, *args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_realism(batch: int = 16, repeats: int = 5, config: RealismConfig = RealismConfig(),
                  scene: tuple[dt.Scenario, np.ndarray] | None = None) -> dict:
    """Times the metric on one scene and on a vmapped batch (after compilation).

    Args:
      batch: scenes in the batched measurement.
      repeats: timed runs; the median is reported.
      config: ``RealismConfig`` (its static sizes are fitted to the scene).
      scene: (scenario, sim_xyzh) to time; default ``synthetic_scene()``.
    Returns:
      dict with seconds per call (``single_s``, ``batch_s``), per scene, and
      the compile times.
    """
    scenario, sim = scene if scene is not None else synthetic_scene()
    config = config.fitted(scenario)
    single = jitted_metrics(config)
    t0 = time.perf_counter()
    jax.block_until_ready(single(scenario, sim))
    compile_single = time.perf_counter() - t0
    t_single = _median_time(single, scenario, sim, repeats=repeats)
    scen_b = dt.stack_scenarios([scenario] * batch)
    sim_b = np.stack([sim] * batch)
    batched = jitted_metrics(config, batched=True)
    t0 = time.perf_counter()
    jax.block_until_ready(batched(scen_b, sim_b))
    compile_batch = time.perf_counter() - t0
    t_batch = _median_time(batched, scen_b, sim_b, repeats=max(1, repeats // 2))
    return dict(
        agents=int(np.asarray(scenario.agents.sim_mask).sum()), slots=int(scenario.num_agents),
        rollouts=int(sim.shape[0]), road_graph_points=int(scenario.roadgraph.num_points),
        single_s=t_single, batch=batch, batch_s=t_batch, batch_per_scene_s=t_batch / batch,
        compile_single_s=compile_single, compile_batch_s=compile_batch,
        device=str(jax.devices()[0]),
    )


if __name__ == "__main__":
    sys.exit(main())

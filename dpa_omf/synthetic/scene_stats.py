"""Statistics of synthetic (or any) scenes: interactivity and expert quality.

``scene_statistics`` summarises single numpy scenes (the data job records it
for the validation split); the detectors behind it are public for tests:
``collision_mask`` (overlapping oriented boxes), ``offroad_mask`` and
``signed_distance_to_road_edge`` (the road-edge sign rule), and
``stop_line_crossings`` (red-light running). The only synthetic module that
runs JAX: the geometry is ``dpa_omf.geometry.shapes``, jitted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.geometry import shapes as geo

# The detectors below are thin wrappers over ``dpa_omf.geometry.shapes``, the
# geometry the realism metric and the preference features use, so that the
# dataset statistics, the metric and the features share one implementation of
# oriented boxes, box overlap and the road-edge sign rule.
_QUERY_BUCKET = 256  # signed-distance queries padded to 256 * 2^k (few jit shapes)
_QUERY_CHUNK = 256  # queries per vectorised nearest-segment search ([chunk, P] temporaries)


@jax.jit
def _collision_mask_jit(x, y, length, width, heading, valid):
    """``[A, T]`` tracks -> bool ``[A, T]`` overlap with another valid box at the same step."""
    corners = geo.box_corners(x, y, length, width, heading)  # [A, T, 4, 2]
    # Sharp rectangles (rounding 0, unlike the metric's 0.7): a negative distance
    # is a true box overlap; touching boxes (distance 0) do not count.
    d = geo.convex_polygon_signed_distance(corners[:, None], corners[None])  # [A, A, T]
    other = ~jnp.eye(x.shape[0], dtype=bool)[..., None]
    return jnp.any((d < 0.0) & valid[:, None] & valid[None] & other, axis=1)


def collision_mask(agents: dt.Agents) -> np.ndarray:
    """bool ``[A, T]``: valid agent-steps whose oriented box (sharp corners)
    overlaps the box of another agent valid at the same step."""
    a = agents
    boxes = (jnp.asarray(v, jnp.float32) for v in (a.x, a.y, a.length, a.width, a.heading))
    return np.asarray(_collision_mask_jit(*boxes, jnp.asarray(a.valid, bool)))


@jax.jit
def _road_edge_distance_jit(points, xyz, ids, valid, types):
    """``[Q, 2]`` points, one scene's ``[P]`` road graph -> ``[Q]`` signed distance (m)."""
    is_edge = valid & jnp.isin(types, jnp.asarray(dt.RG_ROAD_EDGE_TYPES, types.dtype))
    # Polylines are runs of consecutive points with one id (the WOMD layout, and
    # synthetic.dataset.sample_roadgraph's); closed ones (ends within 1 m) wrap, as in the official sign rule.
    seg = geo.polyline_segments(xyz, ids, is_edge)
    pts = jnp.concatenate([points, jnp.zeros_like(points[:, :1])], axis=-1)
    # z_stretch 0: the closest edge is chosen in the plane (the statistic is 2D).
    d = jax.lax.map(lambda p: geo.signed_distance_to_polylines(p, seg, z_stretch=0.0), pts,
                    batch_size=_QUERY_CHUNK)
    return jnp.where(jnp.any(seg.valid), d, jnp.inf)


def signed_distance_to_road_edge(points: np.ndarray, rg: dt.RoadGraph) -> np.ndarray:
    """``[Q]`` signed distance (m) of ``[Q, 2]`` points to the road edges (types
    ``dt.RG_ROAD_EDGE_TYPES``) of a single scenario's ``[P]`` road graph:
    negative on the road, positive off it (WOSAC convention: edges have the road
    on their left; ``geometry.signed_distance_to_polylines``). +inf when the map
    has no road edge."""
    points = np.asarray(points, np.float32).reshape(-1, 2)
    q = len(points)
    size = _QUERY_BUCKET
    while size < q:
        size *= 2
    padded = np.zeros([size, 2], np.float32)
    padded[:q] = points
    d = _road_edge_distance_jit(jnp.asarray(padded), jnp.asarray(rg.xyz, jnp.float32), jnp.asarray(rg.id),
                                jnp.asarray(rg.valid, bool), jnp.asarray(rg.type))
    return np.asarray(d)[:q]


def offroad_mask(s: dt.Scenario) -> np.ndarray:
    """bool ``[A, T]``: valid vehicle steps whose box centre is off the road
    (signed distance to the road edges > 0)."""
    a = s.agents
    sel = np.asarray(a.valid, bool) & (np.asarray(a.type) == dt.AGENT_TYPE_VEHICLE)[:, None]
    out = np.zeros_like(sel)
    pts = np.stack([np.asarray(a.x)[sel], np.asarray(a.y)[sel]], -1)
    out[sel] = signed_distance_to_road_edge(pts, s.roadgraph) > 0
    return out


def stop_line_crossings(s: dt.Scenario) -> tuple[int, int]:
    """(crossings on red, all crossings) of signalled stop lines by vehicle / cyclist fronts.

    A crossing is a front bumper passing a light's stop point along its lane
    (within 1.6 m laterally) between two consecutive valid steps; it is "on red"
    when the light has been ``TL_STOP`` for the previous 0.5 s as well.
    """
    a, tl, rg = s.agents, s.traffic_lights, s.roadgraph
    drivers = np.isin(a.type, (dt.AGENT_TYPE_VEHICLE, dt.AGENT_TYPE_CYCLIST))
    fx = a.x + a.length / 2 * np.cos(a.heading)
    fy = a.y + a.length / 2 * np.sin(a.heading)
    ok = a.valid[:, 1:] & a.valid[:, :-1] & drivers[:, None]  # [A, T-1]
    red_total, total = 0, 0
    for k in np.nonzero(tl.valid.any(0))[0]:
        step = int(np.argmax(tl.valid[:, k]))
        lane = np.nonzero(rg.valid & (rg.id == tl.lane_id[step, k]))[0]
        if len(lane) < 2:
            continue
        u = rg.xyz[lane[-1], :2] - rg.xyz[lane[-2], :2]
        u = u / max(np.linalg.norm(u), 1e-9)
        sp = tl.stop_point[step, k, :2]
        lon = (fx - sp[0]) * u[0] + (fy - sp[1]) * u[1]
        lat = np.abs((fx - sp[0]) * u[1] - (fy - sp[1]) * u[0])
        cross = ok & (lon[:, :-1] < 0) & (lon[:, 1:] >= 0) & (lat[:, :-1] < 1.6) & (lat[:, 1:] < 1.6)
        st = np.where(tl.valid[:, k], tl.state[:, k], dt.TL_UNKNOWN)
        red_now = st[1:] == dt.TL_STOP
        red_before = np.concatenate([np.zeros(4, bool), st[:-5] == dt.TL_STOP])
        red_total += int((cross & (red_now & red_before)[None]).sum())
        total += int(cross.sum())
    return red_total, total


def scene_statistics(scenarios) -> dict:
    """Interactivity and expert quality of single (unbatched) numpy scenarios.

    Returns a dict with
      num_scenes; median_valid_agents / mean_valid_agents (valid at the current step);
      intersection_fraction (scenes with signalled lanes);
      light_change_fraction (scenes whose light states change within the 91 steps);
      collision_fraction (valid agent-steps overlapping another agent's box);
      offroad_fraction (valid vehicle steps with the box centre off the road);
      moving_fraction (agents valid now that move > 2 m over the future);
      entering_fraction (recorded agents first seen after step 0);
      stop_line_crossings / red_light_crossings (see ``stop_line_crossings``);
      type_counts (valid-now agents per type name).
    """
    valid_now, inter, change, coll, coll_n, off, off_n, moving, moving_n = [], 0, 0, 0, 0, 0, 0, 0, 0
    entering, recorded, red_cross, all_cross = 0, 0, 0, 0
    types = dict.fromkeys(dt.AGENT_TYPE_NAMES.values(), 0)
    for s in scenarios:
        a = s.agents
        now = a.valid[:, dt.CURRENT_INDEX]
        valid_now.append(int(now.sum()))
        tl = s.traffic_lights
        signalled = tl.valid.any()
        inter += int(signalled)
        if signalled:
            st = np.where(tl.valid, tl.state, -1)
            change += int((st[1:] != st[:-1])[tl.valid[1:] & tl.valid[:-1]].any())
        cm = collision_mask(a)
        coll += int(cm.sum())
        coll_n += int(a.valid.sum())
        om = offroad_mask(s)
        off += int(om.sum())
        off_n += int((a.valid & (a.type == dt.AGENT_TYPE_VEHICLE)[:, None]).sum())
        both = a.valid[:, dt.CURRENT_INDEX] & a.valid[:, -1]
        disp = np.hypot(a.x[:, -1] - a.x[:, dt.CURRENT_INDEX], a.y[:, -1] - a.y[:, dt.CURRENT_INDEX])
        moving += int((both & (disp > 2.0)).sum())
        moving_n += int(both.sum())
        for code, name in dt.AGENT_TYPE_NAMES.items():
            types[name] += int((now & (a.type == code)).sum())
        seen = a.valid.any(1)
        recorded += int(seen.sum())
        entering += int((seen & ~a.valid[:, 0]).sum())
        r, c = stop_line_crossings(s)
        red_cross += r
        all_cross += c
    n = len(valid_now)
    return {"num_scenes": n, "median_valid_agents": float(np.median(valid_now)) if n else 0.0,
            "mean_valid_agents": float(np.mean(valid_now)) if n else 0.0,
            "intersection_fraction": inter / max(n, 1), "light_change_fraction": change / max(inter, 1),
            "collision_fraction": coll / max(coll_n, 1), "offroad_fraction": off / max(off_n, 1),
            "moving_fraction": moving / max(moving_n, 1), "entering_fraction": entering / max(recorded, 1),
            "stop_line_crossings": all_cross, "red_light_crossings": red_cross, "type_counts": types}

"""Scene distances shared by the WOSAC metric and the preference features.

The realism metric (``dpa_omf.metrics.wosac``) and the preference features
(``dpa_omf.preference.features``) measure the same two things, with the
official WOSAC definitions (``interaction_features.py``,
``map_metric_features.py``), so that the feedback that ranks rollouts and the
metric that judges them agree:

* ``distance_to_nearest_object``: signed distance between boxes with rounded
  corners (rounding 0.7); below ``COLLISION_DISTANCE_THRESHOLD`` is a collision.
* ``distance_to_road_edge``: signed distance of a box's most off-road bottom
  corner to the road-edge polylines (negative on the road); above
  ``OFFROAD_DISTANCE_THRESHOLD`` is off-road. The road edges come from
  ``road_edge_segments``, which reproduces the official padding artefact of
  the sign rule (closed polylines wrap only at the longest road-edge length),
  and the nearest edge is found through ``road_edge_index``, a per-scene grid
  (``geometry.segment_index``) whose answers equal the exhaustive search's.

Pure JAX on fixed shapes (jit- and vmap-able), built on ``geometry.shapes``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dpa_omf import datatypes as dt
from dpa_omf.geometry import segment_index
from dpa_omf.geometry import shapes as geo

Array = Any

# Official constants (interaction_features.py, map_metric_features.py).
COLLISION_DISTANCE_THRESHOLD = 0.0
OFFROAD_DISTANCE_THRESHOLD = 0.0
CORNER_ROUNDING_FACTOR = 0.7
Z_STRETCH = 3.0  # vertical scaling when choosing the closest road edge (over- and underpasses)


# ==================================================================== road graph
def compact_points(rg: dt.RoadGraph, keep: Array, size: int | None) -> tuple[Array, Array, Array, Array]:
    """Moves the kept road-graph points first (stable order) and truncates to ``size`` slots.

    Args:
      rg: one scene's road graph, ``[P]`` points.
      keep: bool ``[P]`` points of interest.
      size: slots kept (None: all ``P``).
    Returns:
      (xyz ``[S, 3]``, id ``[S]``, keep bool ``[S]``, overflow: bool scalar,
      some kept point did not fit).
    """
    p = keep.shape[0]
    size = p if size is None else min(size, p)
    order = jnp.argsort(~keep, stable=True)[:size]
    overflow = jnp.sum(keep) > size
    return rg.xyz[order], rg.id[order], keep[order], overflow


def polyline_lengths(ids: Array, keep: Array) -> tuple[Array, Array, Array, Array, Array]:
    """Polyline extent of each point of a flat ``[P]`` point list.

    Returns:
      (first, last point index ``[P]``, bool ``[P]`` continues to the next
      point, point count of each point's polyline ``[P]`` (0 at dropped
      points), the longest count (scalar)).
    """
    first, last, same_next = geo.polyline_bounds(ids, keep)
    n = jnp.where(keep, last - first + 1, 0)
    return first, last, same_next, n, jnp.max(n)


def road_edge_index(edges: geo.Segments, cells: int = 64, k: int = 64, points: Array | None = None,
                    points_valid: Array | None = None) -> segment_index.SegmentIndex:
    """The scene's road-edge grid (``segment_index.build_segment_index``), built once and reused by every query;
    ``points`` / ``points_valid``: the queries' box centres, whose extent the grid also covers."""
    return segment_index.build_segment_index(edges, cells, k, points, points_valid)


def road_edge_segments(rg: dt.RoadGraph, max_points: int | None = None) -> tuple[geo.Segments, Array]:
    """Road-edge segments of one scene, with the official wrap rule.

    Args:
      rg: one scene's road graph, ``[P]`` points.
      max_points: road-edge slots after compaction (None: ``P``); the work of
        the nearest-edge searches scales with it.
    Returns:
      (``geo.Segments`` with ``[S]`` arrays, bool overflow: road-edge points
      were dropped).
    """
    is_edge = rg.valid & ((rg.type == dt.RG_ROAD_EDGE_BOUNDARY) | (rg.type == dt.RG_ROAD_EDGE_MEDIAN))
    exyz, eid, ekeep, overflow = compact_points(rg, is_edge, max_points)
    first, last, _, n, max_n = polyline_lengths(eid, ekeep)
    p = ekeep.shape[0]
    fc, lc = jnp.clip(first, 0, p - 1), jnp.clip(last, 0, p - 1)
    # Official padding artefact: closed polylines wrap only at the maximum length.
    wrap = geo.is_closed_polyline(exyz, fc, lc) & (n == max_n)
    return geo.polyline_segments(exyz, eid, ekeep, wrap=wrap), overflow


# ==================================================================== distances
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
    return jnp.min(jnp.where(ok, d, geo.EXTREMELY_LARGE_DISTANCE), axis=1)


def distance_to_road_edge(eval_tr: dict, edges: geo.Segments,
                          index: segment_index.SegmentIndex | None = None) -> tuple[Array, Array]:
    """Signed distance of the most off-road bottom corner.

    Args:
      eval_tr: dict of ``[E, T]`` trajectories (x, y, z, length, width,
        height, heading, valid).
      edges: road-edge ``Segments`` (``road_edge_segments``).
      index: the scene's ``road_edge_index`` (None: exhaustive search); the
        distances are the same either way.
    Returns:
      (``[E, T]`` metres, int32 scalar: corner queries of valid boxes the
      index could not certify, searched exhaustively; 0 without an index).
      There are ``4 * sum(valid)`` corner queries.
    """
    if index is None:
        names = ("x", "y", "z", "length", "width", "height", "heading")
        corners = geo.box_bottom_corners_3d(*(eval_tr[name] for name in names))
        return jnp.max(geo.signed_distance_to_polylines(corners, edges, Z_STRETCH), axis=-1), jnp.int32(0)
    corners = road_edge_corners(eval_tr)
    j, fallbacks = segment_index.nearest_segment(corners, edges, index, Z_STRETCH, eval_tr["valid"][..., None])
    return distance_to_nearest_edge(corners, edges, j), fallbacks


def road_edge_corners(eval_tr: dict) -> Array:
    """The ``[E, T, 4, 3]`` bottom corners whose road-edge distances ``distance_to_road_edge`` takes (its
    first part: callers that split its work, e.g. the preference features over rollout chunks, share it)."""
    names = ("x", "y", "z", "length", "width", "height", "heading")
    corners = geo.box_bottom_corners_3d(*(eval_tr[name] for name in names))  # [E, T, 4, 3]
    # Corners materialized once, as the exhaustive search's reduction does: fused
    # into the index's gathers, XLA would round some of them differently (1 ulp).
    return jax.lax.optimization_barrier(corners)


def distance_to_nearest_edge(corners: Array, edges: geo.Segments, nearest: Array) -> Array:
    """The last part of ``distance_to_road_edge``: ``[..., T]`` signed distance of the most off-road of the
    ``[..., T, 4, 3]`` corners (``road_edge_corners``) given each corner's nearest segment (int ``[..., T, 4]``,
    ``segment_index.nearest_segment``)."""
    return jnp.max(geo.signed_distance_to_polylines(corners, edges, Z_STRETCH, nearest=nearest), axis=-1)

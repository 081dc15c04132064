"""Shared planar geometry for the realism metric and the preference features.

Everything here is pure JAX, float32, and batched over arbitrary leading
dimensions (``...``) unless a docstring says otherwise. Units are metres and
radians (heading counter-clockwise from +x).

The arithmetic deliberately follows the official Waymo Open Sim Agents
Challenge (WOSAC) code where the order of float32 operations decides a result:
box corners are formed in absolute (scenario-frame) coordinates exactly as
``box_utils.get_upright_3d_box_corners`` does, so that the corners (and every
distance derived from them) round the same way. Differences of nearby absolute
coordinates are then exact in float32 (Sterbenz), which is why the distances
below agree with the official ones to ~1e-6 m even though the coordinates are
~1e4 m.

Polylines are given as a flat padded list of points (the ``RoadGraph`` layout
of ``dpa_omf.datatypes``): consecutive valid points with the same id form one
polyline, and the segment ``i`` runs from point ``i`` to point ``i + 1``.
``polyline_segments`` turns that list into per-segment arrays with the
neighbour links needed by the sign rule of ``signed_distance_to_polylines``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = Any

# Padding value for masked distances (same constant as the official code).
EXTREMELY_LARGE_DISTANCE = 1e10


# ---------------------------------------------------------------- basics
def wrap_angle(angle: Array) -> Array:
    """Wraps angles into [-pi, pi) (floor-mod semantics, as the official code)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def cross_2d(a: Array, b: Array) -> Array:
    """``a.x * b.y - a.y * b.x`` for ``[..., 2]`` vectors."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def dot_2d(a: Array, b: Array) -> Array:
    """``a.x * b.x + a.y * b.y`` for ``[..., 2]`` vectors."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]


def rotate_2d(xy: Array, yaw: Array) -> Array:
    """Rotates ``[..., 2]`` points counter-clockwise by ``yaw [...]`` radians."""
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    return jnp.stack([c * xy[..., 0] - s * xy[..., 1], s * xy[..., 0] + c * xy[..., 1]], axis=-1)


def _safe_divide(num: Array, den: Array) -> Array:
    """``num / den`` with 0 where ``den == 0`` (``tf.math.divide_no_nan``)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


# ---------------------------------------------------------------- boxes
def box_corners(x: Array, y: Array, length: Array, width: Array, heading: Array) -> Array:
    """Corners of oriented 2D boxes.

    Computed with numpy when every argument is a numpy array or a Python number
    (the plots, ``dpa_omf.viz``, draw without tracing or dispatching JAX ops),
    with ``jax.numpy`` otherwise (jit-able; the metric's float32 rounding).

    Args:
      x, y: ``[...]`` box centre, metres.
      length, width: ``[...]`` box size along / across the heading, metres.
      heading: ``[...]`` yaw, radians.
    Returns:
      ``[..., 4, 2]`` corners, counter-clockwise, starting front-left:
      (+l/2, +w/2), (-l/2, +w/2), (-l/2, -w/2), (+l/2, -w/2) in the box frame.
    """
    xp = jnp
    if not any(isinstance(v, jax.Array) for v in (x, y, length, width, heading)):
        xp = np
        x, y, length, width, heading = (np.asarray(v) for v in (x, y, length, width, heading))
    c, s = xp.cos(heading), xp.sin(heading)
    l2, w2 = length * 0.5, width * 0.5
    sl = xp.stack([l2, -l2, -l2, l2], axis=-1)
    sw = xp.stack([w2, w2, -w2, -w2], axis=-1)
    c, s = c[..., None], s[..., None]
    # Same association as the official rotation-matrix einsum, then translate.
    cx = (c * sl - s * sw) + x[..., None]
    cy = (s * sl + c * sw) + y[..., None]
    return xp.stack([cx, cy], axis=-1)


def box_bottom_corners_3d(
    x: Array, y: Array, z: Array, length: Array, width: Array, height: Array, heading: Array
) -> Array:
    """``[..., 4, 3]`` bottom corners of upright 3D boxes (z = centre z - height / 2)."""
    xy = box_corners(x, y, length, width, heading)
    zc = (-(height * 0.5)) + z
    return jnp.concatenate([xy, jnp.broadcast_to(zc[..., None, None], (*xy.shape[:-1], 1))], axis=-1)


def safe_inverse(x: Array) -> Array:
    """``1 / x`` where ``x > 0``, else 0 (degenerate segments: squared lengths of 0)."""
    return jnp.where(x > 0, 1.0 / jnp.where(x > 0, x, 1.0), 0.0)


def seg_dist2_2d(vx: Array, vy: Array, ex: Array, ey: Array, inv_ee: Array) -> Array:
    """Squared planar distance from point v (relative to a segment start) to segment e (``inv_ee = 1 / |e|^2``)."""
    t = jnp.clip((vx * ex + vy * ey) * inv_ee, 0.0, 1.0)
    dx, dy = vx - ex * t, vy - ey * t
    return dx * dx + dy * dy


def segment_terms(start: Array, end: Array) -> Array:
    """``[..., 4]`` per-segment terms of ``segment_dist2``: the direction (ex, ey, ez) and ``1 / (ex^2 + ey^2)``.

    Materialized once (an optimization barrier) so that every search reads the same rounded values.
    """
    ex, ey, ez = (end[..., c] - start[..., c] for c in range(3))
    return jax.lax.optimization_barrier(jnp.stack([ex, ey, ez, safe_inverse(ex * ex + ey * ey)], axis=-1))


def segment_dist2(points: Array, start: Array, terms: Array, valid: Array, z_stretch: float = 1.0) -> Array:
    """Squared distance from points to segments: planar projection, z-stretched 3D offset.

    The one point-to-segment distance of the nearest-segment searches
    (exhaustive and indexed alike, so that both round the same way): the
    projection parameter is taken in 2D (as officially) and the offset from the
    projected point is measured in 3D with its vertical part scaled.

    Args:
      points: ``[..., 3]``; start: ``[..., 3]``; terms: ``[..., 4]``
        (``segment_terms``); valid: bool ``[...]`` (all broadcastable against
        each other after the last axis).
      z_stretch: factor on vertical offsets.
    Returns:
      ``[...]`` squared distance (+inf for invalid segments), m^2.
    """
    ex, ey, ez, inv_ee = (terms[..., c] for c in range(4))
    vx, vy, vz = (points[..., c] - start[..., c] for c in range(3))
    t = jnp.clip((vx * ex + vy * ey) * inv_ee, 0.0, 1.0)
    ox, oy, oz = vx - ex * t, vy - ey * t, (vz - ez * t) * z_stretch
    return jnp.where(valid, ox * ox + oy * oy + oz * oz, jnp.inf)


def convex_polygon_signed_distance(poly_a: Array, poly_b: Array) -> Array:
    """Signed distance between convex polygons (counter-clockwise vertices).

    Positive: the Euclidean gap between disjoint polygons. Negative: minus the
    penetration depth (the smallest translation along an edge normal that
    separates them). This is the signed distance of the origin to the
    Minkowski difference ``A - B``, which is what the official WOSAC code
    computes via an explicit Minkowski-sum octagon.

    Written vertex by vertex on ``[...]``-shaped arrays (static unrolled loops)
    so that XLA vectorizes over the batch instead of the tiny vertex axes.

    Args:
      poly_a: ``[..., N, 2]``.
      poly_b: ``[..., M, 2]`` (broadcastable against ``poly_a``'s batch dims).
    Returns:
      ``[...]`` signed distance, metres.
    """
    n, m = poly_a.shape[-2], poly_b.shape[-2]
    ax, ay = [poly_a[..., i, 0] for i in range(n)], [poly_a[..., i, 1] for i in range(n)]
    bx, by = [poly_b[..., j, 0] for j in range(m)], [poly_b[..., j, 1] for j in range(m)]

    def edges(px, py):
        k = len(px)
        ex = [px[(i + 1) % k] - px[i] for i in range(k)]
        ey = [py[(i + 1) % k] - py[i] for i in range(k)]
        ee = [x * x + y * y for x, y in zip(ex, ey, strict=False)]
        inv_ee = [safe_inverse(e) for e in ee]
        inv_len = [jnp.where(e > 0, jax.lax.rsqrt(jnp.where(e > 0, e, 1.0)), 0.0) for e in ee]
        return ex, ey, inv_ee, inv_len

    eax, eay, ia, la = edges(ax, ay)
    ebx, eby, ib, lb = edges(bx, by)
    # d[i][j] = b_j - a_i: exact in float32 for nearby absolute coordinates.
    dx = [[bx[j] - ax[i] for j in range(m)] for i in range(n)]
    dy = [[by[j] - ay[i] for j in range(m)] for i in range(n)]

    # Separating-axis values (outward normal of a CCW edge e is (e.y, -e.x)).
    seps = []
    for i in range(n):  # min_j (b_j - a_i) . n_i
        seps.append(functools.reduce(jnp.minimum, [(dx[i][j] * eay[i] - dy[i][j] * eax[i]) * la[i] for j in range(m)]))
    for j in range(m):  # min_i (a_i - b_j) . n_j
        seps.append(functools.reduce(jnp.minimum, [(-dx[i][j] * eby[j] + dy[i][j] * ebx[j]) * lb[j] for i in range(n)]))
    max_sep = functools.reduce(jnp.maximum, seps)

    # Gap between disjoint polygons: closest vertex-edge pair, both ways.
    gaps = []
    for i in range(n):
        for j in range(m):
            # vertex b_j vs edge a_i (vector a_i -> b_j = d[i][j]);
            gaps.append(seg_dist2_2d(dx[i][j], dy[i][j], eax[i], eay[i], ia[i]))
            # vertex a_i vs edge b_j (vector b_j -> a_i = -d[i][j]).
            gaps.append(seg_dist2_2d(-dx[i][j], -dy[i][j], ebx[j], eby[j], ib[j]))
    gap = jnp.sqrt(functools.reduce(jnp.minimum, gaps))
    return jnp.where(max_sep <= 0.0, max_sep, gap)


def rounded_box_shrink(length: Array, width: Array, rounding: float) -> Array:
    """Corner radius of a rounded box: ``min(length, width) * rounding / 2``."""
    return jnp.minimum(length, width) * rounding / 2.0


def rounded_box_signed_distance(box_a: Array, box_b: Array, rounding: float = 0.7) -> Array:
    """Signed distance between 2D boxes with rounded corners.

    A rounded box is the set of points within ``r = min(l, w) * rounding / 2``
    of its rectangular core (the box shrunk by ``r`` on every side); rounding 0
    gives sharp rectangles, 1 capsules. The official WOSAC collision check uses
    rounding 0.7.

    Args:
      box_a, box_b: ``[..., 5]`` boxes (x, y, length, width, heading), metres /
        radians, broadcastable against each other.
      rounding: corner rounding factor in [0, 1].
    Returns:
      ``[...]`` signed distance (negative when overlapping), metres.
    """
    ca, ra = _rounded_core(box_a, rounding)
    cb, rb = _rounded_core(box_b, rounding)
    return convex_polygon_signed_distance(ca, cb) - ra - rb


def _rounded_core(box: Array, rounding: float) -> tuple[Array, Array]:
    x, y, length, width, heading = (box[..., i] for i in range(5))
    r = rounded_box_shrink(length, width, rounding)
    core = box_corners(x, y, length - 2.0 * r, width - 2.0 * r, heading)
    return core, r


# ---------------------------------------------------------------- polylines
@struct.dataclass
class Segments:
    """Polyline segments built from a flat padded point list, shape ``[S]``.

    Segment ``i`` runs from point ``i`` to point ``i + 1`` of the flat list.

      start, end: float32 ``[S, 3]``.
      valid: bool ``[S]``, both points valid and in the same polyline.
      prev, next: int32 ``[S]`` index of the preceding / following segment of
        the same polyline (wrapping around for closed polylines when allowed).
      has_prev, has_next: bool ``[S]``, whether ``prev`` / ``next`` exist.
    """

    start: Array
    end: Array
    valid: Array
    prev: Array
    next: Array
    has_prev: Array
    has_next: Array


def polyline_bounds(ids: Array, valid: Array) -> tuple[Array, Array, Array]:
    """Start / end point index of each point's polyline in a flat list.

    Args:
      ids: int ``[P]`` polyline id per point.
      valid: bool ``[P]`` point mask (points outside the set of interest are
        invalid).
    Returns:
      (first, last, same_next): int32 ``[P]`` index of the first / last point
      of the polyline containing each point (meaningless at invalid points),
      and bool ``[P]`` whether point ``i + 1`` continues point ``i``'s polyline.
    """
    p = ids.shape[-1]
    idx = jnp.arange(p, dtype=jnp.int32)
    nxt_valid = jnp.concatenate([valid[1:], jnp.zeros([1], bool)])
    nxt_id = jnp.concatenate([ids[1:], ids[-1:]])
    same_next = valid & nxt_valid & (ids == nxt_id)
    same_prev = jnp.concatenate([jnp.zeros([1], bool), same_next[:-1]])
    is_first = valid & ~same_prev
    is_last = valid & ~same_next
    first = jax.lax.cummax(jnp.where(is_first, idx, -1), axis=0)
    last = jax.lax.cummin(jnp.where(is_last, idx, p), axis=0, reverse=True)
    return first, last, same_next


def polyline_segments(
    xyz: Array, ids: Array, valid: Array, wrap: Array | None = None
) -> Segments:
    """Builds segments (with neighbour links) from a flat padded point list.

    Args:
      xyz: float32 ``[P, 3]`` points.
      ids: int ``[P]`` polyline ids.
      valid: bool ``[P]`` points belonging to the polylines of interest.
      wrap: optional bool ``[P]`` (read at each polyline's first point): link
        the polyline's last segment to its first one (a closed polyline). None:
        wrap every polyline whose first and last points are within 1 m (3D).
    Returns:
      ``Segments`` with S = P.
    """
    p = xyz.shape[0]
    idx = jnp.arange(p, dtype=jnp.int32)
    first, last, same_next = polyline_bounds(ids, valid)
    first_c = jnp.clip(first, 0, p - 1)
    last_c = jnp.clip(last, 0, p - 1)
    if wrap is None:
        wrap = is_closed_polyline(xyz, first_c, last_c)
    else:
        wrap = wrap[first_c]
    end = jnp.concatenate([xyz[1:], xyz[-1:]], axis=0)
    seg_valid = same_next
    is_first_seg = seg_valid & (idx == first_c)
    is_last_seg = seg_valid & (idx == last_c - 1)
    has_prev = seg_valid & (~is_first_seg | wrap)
    has_next = seg_valid & (~is_last_seg | wrap)
    prev = jnp.where(is_first_seg, last_c - 1, idx - 1)
    nxt = jnp.where(is_last_seg, first_c, idx + 1)
    return Segments(
        start=xyz, end=end, valid=seg_valid,
        prev=jnp.clip(prev, 0, p - 1), next=jnp.clip(nxt, 0, p - 1),
        has_prev=has_prev, has_next=has_next,
    )


def is_closed_polyline(xyz: Array, first: Array, last: Array, tol_m2: float = 1.0) -> Array:
    """bool ``[P]``: the polyline of each point starts and ends within ``sqrt(tol_m2)``."""
    d = xyz[first] - xyz[last]
    return jnp.sum(d * d, axis=-1) < tol_m2


def segment_projection(points: Array, start: Array, end: Array) -> tuple[Array, Array]:
    """Projection parameter and side of points w.r.t. segments (2D).

    Args:
      points, start, end: ``[..., 2+]`` (only x, y used), broadcastable.
    Returns:
      (rel_t, side): ``[...]`` position of the projection along the segment
      (0 at start, 1 at end; 0 for a degenerate segment) and the sign of
      ``cross(point - start, end - start)``: +1 on the right (starboard), -1 on
      the left (port), 0 on the line.
    """
    v = points[..., :2] - start[..., :2]
    e = end[..., :2] - start[..., :2]
    rel_t = _safe_divide(dot_2d(v, e), dot_2d(e, e))
    return rel_t, jnp.sign(cross_2d(v, e))


def _segment_offset(points: Array, start: Array, end: Array) -> tuple[Array, Array]:
    """3D vector from the closest point of each segment (2D projection) to the point."""
    v = points - start
    e = end - start
    rel_t = _safe_divide(dot_2d(v, e), dot_2d(e, e))
    return v - e * jnp.clip(rel_t, 0.0, 1.0)[..., None], rel_t


def nearest_segment_3d(points: Array, seg: Segments, z_stretch: float = 1.0) -> Array:
    """Index of the closest valid segment by ``segment_dist2``: the exhaustive search.

    ``geometry.segment_index.nearest_segment`` gives the same indices through a
    per-scene grid.

    Args:
      points: ``[..., 3]`` query points.
      seg: ``Segments`` with ``[S]`` arrays.
      z_stretch: factor on vertical offsets (separates over- and underpasses).
    Returns:
      int32 ``[...]`` segment index (ties: lowest index).
    """
    terms = segment_terms(seg.start, seg.end)
    d2 = segment_dist2(points[..., None, :], seg.start, terms, seg.valid, z_stretch)  # [..., S]
    return jnp.argmin(d2, axis=-1).astype(jnp.int32)


def pruned_argmin(points: Array, lo: Array, hi: Array, dist2_fn, block: int, k: int,
                  point_valid: Array | None = None, scale: Array | None = None,
                  squared: bool = True) -> tuple[Array, Array]:
    """Exact nearest-item search with block pruning, for grouped queries.

    Items (e.g. segments) come in consecutive blocks of ``block`` with bounding
    boxes ``[lo, hi]`` such that the squared distance from a point to any item
    of a block is at least the squared (scaled) distance from the point to the
    block's box. For each group of nearby query points, the ``k`` blocks with
    the smallest bound to the group's bounding box are searched exhaustively.
    The answer is provably the global one when the best squared distance found
    is within the (k+1)-th smallest bound; ``exact`` says so per point.

    Args:
      points: ``[G, n, D]`` query points in G groups of n.
      lo, hi: ``[NB, D]`` block boxes (+inf / -inf for empty blocks).
      dist2_fn: ``(points [G, n, D], item_index [G, C]) -> [G, n, C]`` squared
        distances (+inf for invalid items).
      block, k: block size and number of blocks searched per group.
      point_valid: optional bool ``[G, n]``: invalid points are left out of the
        group boxes and never certified.
      scale: optional ``[D]`` factors applied to box gaps (e.g. a z stretch).
      squared: ``dist2_fn`` returns squared distances (False: plain ones).
    Returns:
      (item index int32 ``[G, n]``, ties to the lowest index; exact bool ``[G, n]``).
    """
    nb = lo.shape[0]
    k = min(k, nb)
    pv = jnp.ones(points.shape[:2], bool) if point_valid is None else point_valid
    glo = jnp.where(pv[..., None], points, jnp.inf).min(axis=1)  # [G, D]
    ghi = jnp.where(pv[..., None], points, -jnp.inf).max(axis=1)
    gap = jnp.maximum(jnp.maximum(lo[None] - ghi[:, None], glo[:, None] - hi[None]), 0.0)  # [G, NB, D]
    if scale is not None:
        gap = gap * scale
    lb2 = jnp.sum(gap * gap, axis=-1)
    lb2 = jnp.where(jnp.isnan(lb2), jnp.inf, lb2)  # empty blocks / groups
    neg, order = jax.lax.top_k(-lb2, min(k + 1, nb))  # the k+1 smallest bounds
    chosen = order[:, :k]
    items = (chosen[..., None] * block + jnp.arange(block)).reshape(chosen.shape[0], -1)  # [G, C]
    d2 = dist2_fn(points, items)
    best = jnp.min(d2, axis=-1, keepdims=True)
    idx = jnp.min(jnp.where(d2 == best, items[:, None, :], jnp.iinfo(jnp.int32).max), axis=-1)
    bound = -neg[:, k] if nb > k else jnp.full(neg.shape[:1], jnp.inf)
    best2 = best[..., 0] if squared else best[..., 0] ** 2
    return idx.astype(jnp.int32), (best2 <= bound[:, None]) & pv


def pad_blocks(a: Array, block: int, value) -> Array:
    """Pads the leading axis of ``a`` with ``value`` up to a multiple of ``block``."""
    pad = -a.shape[0] % block
    return jnp.concatenate([a, jnp.full((pad, *a.shape[1:]), value, a.dtype)]) if pad else a


def signed_distance_to_polylines(
    points: Array, seg: Segments, z_stretch: float = 3.0, nearest: Array | None = None
) -> Array:
    """Signed 2D distance from points to the boundary drawn by oriented polylines.

    Polylines are oriented with the inside (e.g. the road) on their port (left)
    side: the distance is negative inside and positive outside. The closest
    segment is chosen by 3D distance with vertical offsets scaled by
    ``z_stretch``; the returned magnitude is the planar distance to it. Where
    the point projects before the start (after the end) of that segment, the
    sign comes from the local convexity with the previous (next) segment, as in
    the official WOSAC ``_compute_signed_distance_to_polylines``.

    Args:
      points: float32 ``[..., 3]``.
      seg: ``Segments`` with ``[S]`` arrays (at least one valid segment).
      z_stretch: vertical scaling when choosing the closest segment.
      nearest: optional int ``[...]`` closest-segment indices already found
        (e.g. by ``segment_index.nearest_segment``).
    Returns:
      ``[...]`` signed distance, metres.
    """
    j = nearest_segment_3d(points, seg, z_stretch) if nearest is None else nearest

    def side(k: Array) -> tuple[Array, Array, Array]:
        rel_t, n = segment_projection(points, seg.start[k], seg.end[k])
        return rel_t, n, (seg.end[k] - seg.start[k])[..., :2]

    rel_t, n, e = side(j)
    off, _ = _segment_offset(points, seg.start[j], seg.end[j])
    dist_2d = jnp.sqrt(off[..., 0] ** 2 + off[..., 1] ** 2)

    jp, jn = seg.prev[j], seg.next[j]
    _, n_prev, e_prev = side(jp)
    _, n_next, e_next = side(jn)
    convex_before = cross_2d(e_prev, e) > 0.0
    convex_after = cross_2d(e, e_next) > 0.0
    sign_before = jnp.where(convex_before, jnp.maximum(n, n_prev), jnp.minimum(n, n_prev))
    sign_after = jnp.where(convex_after, jnp.maximum(n, n_next), jnp.minimum(n, n_next))
    sign = jnp.where(
        (rel_t < 0.0) & seg.has_prev[j], sign_before,
        jnp.where((rel_t > 1.0) & seg.has_next[j], sign_after, n),
    )
    return sign * dist_2d


"""Hand-built checks of dpa_omf.geometry.shapes (boxes, polygons, polylines)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from dpa_omf.geometry import shapes as geo


def box(x, y, length, width, heading=0.0):
    return jnp.asarray([x, y, length, width, heading], jnp.float32)


def test_box_corners_counter_clockwise_and_rotated():
    c = np.asarray(geo.box_corners(jnp.float32(1.0), jnp.float32(2.0), jnp.float32(4.0), jnp.float32(2.0),
                                   jnp.float32(math.pi / 2)))
    # Heading +90 deg: the front (+l/2) points to +y.
    np.testing.assert_allclose(c, [[0.0, 4.0], [0.0, 0.0], [2.0, 0.0], [2.0, 4.0]], atol=1e-6)
    area2 = sum(c[i, 0] * c[(i + 1) % 4, 1] - c[i, 1] * c[(i + 1) % 4, 0] for i in range(4))
    assert area2 > 0  # counter-clockwise
    c3 = np.asarray(geo.box_bottom_corners_3d(*(jnp.float32(v) for v in (0, 0, 5, 4, 2, 2, 0))))
    np.testing.assert_allclose(c3[:, 2], 4.0)


@pytest.mark.parametrize("heading", [0.0, 0.3, -2.0])
def test_sharp_box_distance_known_gap_any_orientation(heading):
    # Two 4 x 2 boxes front to back with a 1.5 m gap, the pair rotated rigidly.
    d = geo.rounded_box_signed_distance(box(0, 0, 4, 2), box(5.5, 0, 4, 2), rounding=0.0)
    np.testing.assert_allclose(d, 1.5, atol=1e-6)

    def rot(x, y):
        return x * math.cos(heading) - y * math.sin(heading), x * math.sin(heading) + y * math.cos(heading)

    a, b = rot(10.0, -3.0), rot(15.5, -3.0)
    d = geo.rounded_box_signed_distance(box(*a, 4, 2, heading), box(*b, 4, 2, heading), rounding=0.0)
    np.testing.assert_allclose(d, 1.5, atol=1e-5)


def test_rounded_boxes_flat_sides_keep_gap_corners_round_off():
    # Face to face: rounding does not change the gap between flat sides.
    d = geo.rounded_box_signed_distance(box(0, 0, 4, 2), box(5.0, 0, 4, 2), rounding=0.7)
    np.testing.assert_allclose(d, 1.0, atol=1e-6)
    # Corner to corner (diagonal offset): rounded corners are farther apart.
    sharp = geo.rounded_box_signed_distance(box(0, 0, 4, 2), box(5, 3, 4, 2), rounding=0.0)
    rounded = geo.rounded_box_signed_distance(box(0, 0, 4, 2), box(5, 3, 4, 2), rounding=0.7)
    np.testing.assert_allclose(sharp, math.hypot(1.0, 1.0), atol=1e-6)
    r = 0.7  # min(4, 2) * 0.7 / 2 per box
    np.testing.assert_allclose(rounded, math.hypot(1.0 + 2 * r, 1.0 + 2 * r) - 2 * r, atol=1e-5)


def test_overlapping_boxes_give_minus_penetration_depth():
    d = geo.rounded_box_signed_distance(box(0, 0, 4, 2), box(3.5, 0.2, 4, 2), rounding=0.0)
    np.testing.assert_allclose(d, -0.5, atol=1e-6)
    # A rotated box crossing another: SAT depth is the smallest overlap.
    d = geo.rounded_box_signed_distance(box(0, 0, 4, 2), box(0, 0, 4, 2, math.pi / 2), rounding=0.0)
    np.testing.assert_allclose(d, -3.0, atol=1e-5)


def test_polygon_distance_is_symmetric_and_batched(rng):
    a = jnp.asarray(rng.normal(0, 3, (64, 5)).astype(np.float32))
    b = jnp.asarray(rng.normal(0, 3, (64, 5)).astype(np.float32))
    a = a.at[:, 2:4].set(jnp.abs(a[:, 2:4]) + 0.5)
    b = b.at[:, 2:4].set(jnp.abs(b[:, 2:4]) + 0.5)
    d_ab = geo.rounded_box_signed_distance(a, b)
    d_ba = geo.rounded_box_signed_distance(b, a)
    np.testing.assert_allclose(d_ab, d_ba, atol=1e-5)
    # Versus a dense sampling of the sharp boxes' boundaries (separated pairs).
    ca = np.asarray(geo.box_corners(*(a[:, i] for i in (0, 1, 2, 3, 4))))
    cb = np.asarray(geo.box_corners(*(b[:, i] for i in (0, 1, 2, 3, 4))))
    d = np.asarray(geo.convex_polygon_signed_distance(jnp.asarray(ca), jnp.asarray(cb)))
    u = np.linspace(0, 1, 401)[:, None]
    for i in np.where(d > 0.05)[0][:10]:
        pa = np.concatenate([ca[i, k] + u * (ca[i, (k + 1) % 4] - ca[i, k]) for k in range(4)])
        pb = np.concatenate([cb[i, k] + u * (cb[i, (k + 1) % 4] - cb[i, k]) for k in range(4)])
        brute = np.min(np.linalg.norm(pa[:, None] - pb[None], axis=-1))
        assert abs(brute - d[i]) < 0.02


def flat_polyline(points, pid=1):
    xyz = np.zeros((len(points), 3), np.float32)
    xyz[:, :2] = points
    return jnp.asarray(xyz), jnp.full(len(points), pid, jnp.int32), jnp.ones(len(points), bool)


def test_signed_distance_to_straight_edge_sides():
    # Edge along +x: the port (left, +y) side is on-road (negative).
    seg = geo.polyline_segments(*flat_polyline([[0, 0], [10, 0], [20, 0]]))
    q = jnp.asarray([[5, 2, 0], [5, -3, 0], [15, 0.5, 0]], jnp.float32)
    np.testing.assert_allclose(geo.signed_distance_to_polylines(q, seg), [-2, 3, -0.5], atol=1e-6)


def test_signed_distance_closed_square_sign_rule_at_vertices():
    # Counter-clockwise square: inside negative, outside positive, including
    # points that project beyond both segments meeting at a convex corner.
    sq = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    seg = geo.polyline_segments(*flat_polyline(sq))
    q = jnp.asarray([[5, 5, 0], [2, 1, 0], [12, -2, 0], [-1, 11, 0], [5, 12, 0]], jnp.float32)
    d = geo.signed_distance_to_polylines(q, seg)
    np.testing.assert_allclose(d, [-5, -1, math.hypot(2, 2), math.hypot(1, 1), 2], atol=1e-5)
    # Near the start/end vertex the wrap-around link gives the right sign.
    assert bool(seg.has_prev[0]) and int(seg.prev[0]) == 3
    d0 = geo.signed_distance_to_polylines(jnp.asarray([[-1.0, -1.0, 0.0]]), seg)
    np.testing.assert_allclose(d0, [math.sqrt(2)], atol=1e-5)


def test_signed_distance_concave_corner_and_z_stretch():
    # Concave corner (road inside the L): outside point near the inner corner.
    seg = geo.polyline_segments(*flat_polyline([[0, 0], [10, 0], [10, -10]]))
    d = geo.signed_distance_to_polylines(jnp.asarray([[11, 1, 0]], jnp.float32), seg)
    assert float(d[0]) < 0  # beyond both segment ends, on the road side of the turn
    # Two edges, one 6 m above: the z-stretched choice picks the same level.
    xyz = np.array([[0, 0, 0], [10, 0, 0], [0, 1, 6], [10, 1, 6]], np.float32)
    seg2 = geo.polyline_segments(jnp.asarray(xyz), jnp.asarray([1, 1, 2, 2]), jnp.ones(4, bool))
    q = jnp.asarray([[5, 0.8, 6.0]], jnp.float32)
    np.testing.assert_allclose(geo.signed_distance_to_polylines(q, seg2, z_stretch=3.0), [0.2], atol=1e-5)


def test_polyline_segments_from_padded_flat_list():
    xyz = np.zeros((8, 3), np.float32)
    xyz[:3, 0] = [0, 1, 2]
    xyz[3:6, 0] = [5, 6, 7]
    ids = jnp.asarray([1, 1, 1, 2, 2, 2, 0, 0])
    valid = jnp.asarray([True] * 6 + [False] * 2)
    seg = geo.polyline_segments(jnp.asarray(xyz), ids, valid, wrap=jnp.zeros(8, bool))
    np.testing.assert_array_equal(seg.valid, [1, 1, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(seg.has_prev, [0, 1, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(seg.has_next, [1, 0, 0, 1, 0, 0, 0, 0])

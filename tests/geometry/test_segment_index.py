"""The road-edge grid index (dpa_omf.geometry.segment_index) gives the exhaustive search's answers, exactly."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.geometry import scene
from dpa_omf.geometry import segment_index as si
from dpa_omf.geometry import shapes as geo


def _wavy_roads() -> geo.Segments:
    """Six wavy roads 8 m apart, 0.5 m sampling, rising 0.1 m per metre, and a 10 m ring."""
    x = np.arange(100, dtype=np.float32) * 0.5
    roads = [np.stack([x, 8.0 * k + np.sin(x / 5), 0.1 * x], -1) for k in range(6)]
    ang = np.linspace(0, 2 * np.pi, 129)[:-1]
    ring = np.stack([80 + 10 * np.cos(ang), 20 + 10 * np.sin(ang), 0 * ang], -1)
    pts = np.concatenate(roads + [ring]).astype(np.float32)
    ids = np.concatenate([np.repeat(np.arange(6), 100), np.full(128, 9)])
    return geo.polyline_segments(jnp.asarray(pts), jnp.asarray(ids), jnp.ones(len(pts), bool))


@jax.jit
def _both(q, seg, index, valid):
    return geo.nearest_segment_3d(q, seg, 3.0), *si.nearest_segment(q, seg, index, 3.0, valid)


def test_index_equals_exhaustive_and_counts_fallbacks(rng):
    seg = _wavy_roads()
    index = jax.jit(si.build_segment_index, static_argnums=(1, 2))(seg, 32, 32)
    # Points along the roads and at the ring's centre (every segment about as far: not certifiable),
    # and points far outside the grid.
    near = rng.uniform([-5, -5, 0], [55, 45, 0], (3000, 3))
    near[:, 2] = 0.1 * near[:, 0] + rng.normal(0, 0.1, 3000)  # near the roads' height
    centre = np.asarray([80, 20, 0]) + rng.normal(0, 0.5, (50, 3))
    far = rng.uniform([300, 300, 0], [400, 400, 1], (20, 3))
    q = jnp.asarray(np.concatenate([near, centre, far]), jnp.float32)
    valid = jnp.ones(q.shape[0], bool).at[-5:].set(False)
    full, j, fallbacks = _both(q, seg, index, valid)
    np.testing.assert_array_equal(np.asarray(j)[:-5], np.asarray(full)[:-5])
    _, certified = si._candidate_search(q, seg, index, 3.0)
    certified = np.asarray(certified)
    assert not certified[-20:].any() and not certified[3000:3050].all()
    assert int(fallbacks) == int(np.sum(~certified[:-5]))
    assert 0 < int(fallbacks) < 0.5 * q.shape[0]


def test_index_covering_the_queries_certifies_points_off_the_map(rng):
    seg = _wavy_roads()
    # Boxes 40-150 m off the roads (the map-only grid leaves every one of them to the fallback), the defaults.
    far = rng.uniform([-150, -120, 0], [-40, -60, 5], (400, 3))
    near = rng.uniform([-5, -5, 0], [55, 45, 5], (400, 3))
    q = jnp.asarray(np.concatenate([far, near, [[np.nan, 0.0, 0.0]]]), jnp.float32)
    valid = jnp.ones(q.shape[0], bool).at[-1].set(False)  # an invalid NaN point does not widen the grid
    map_only = si.build_segment_index(seg, 64, 64)
    covering = jax.jit(si.build_segment_index, static_argnums=(1, 2))(seg, 64, 64, q, valid)
    assert np.all(np.isfinite(np.asarray(covering.origin)))
    full, j, fallbacks = _both(q, seg, covering, valid)
    np.testing.assert_array_equal(np.asarray(j)[:-1], np.asarray(full)[:-1])
    _, _, map_only_fallbacks = _both(q, seg, map_only, valid)
    assert int(map_only_fallbacks) >= 400
    assert int(fallbacks) < 0.25 * int(map_only_fallbacks)  # 86 of 447 when written (parallel roads: near-ties)


def test_index_without_valid_segments_answers_like_exhaustive():
    seg = _wavy_roads()
    seg = seg.replace(valid=jnp.zeros_like(seg.valid))
    index = si.build_segment_index(seg, 8, 4)
    q = jnp.asarray([[1.0, 2.0, 0.0], [30.0, 4.0, 1.0]])
    full, j, fallbacks = _both(q, seg, index, jnp.ones(2, bool))
    np.testing.assert_array_equal(j, full)
    assert int(fallbacks) == 0


@pytest.mark.shared
def test_road_edge_distance_with_index_equals_exhaustive_on_the_golden_scene(shared_dir, rng):
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "metrics"))
    from test_realism import scenario_from_golden_arrays

    s = jax.tree.map(jnp.asarray, scenario_from_golden_arrays(shared_dir / "golden" / "wosac"))
    edges, _ = scene.road_edge_segments(s.roadgraph, 4096)
    a = s.agents
    tr = {k: getattr(a, k) for k in ("x", "y", "z", "length", "width", "height", "heading")}
    # The logged boxes, and the same boxes moved by up to 3 m and turned.
    tr = {k: jnp.concatenate([v, v + (rng.uniform(-3, 3, v.shape) if k in ("x", "y", "heading") else 0)])
          for k, v in tr.items()}
    tr["valid"] = jnp.concatenate([a.valid & a.sim_mask[:, None]] * 2)
    f = jax.jit(scene.distance_to_road_edge)
    ref, none = f(tr, edges)
    d, fallbacks = f(tr, edges, scene.road_edge_index(edges))
    v = np.asarray(tr["valid"])
    np.testing.assert_array_equal(np.asarray(d)[v], np.asarray(ref)[v])
    assert int(none) == 0 and int(fallbacks) < 0.5 * 4 * v.sum()
    assert d.shape[1] == dt.NUM_STEPS

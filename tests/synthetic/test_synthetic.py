"""Tests of the embedded synthetic world (dpa_omf.synthetic.dataset / synthetic_map)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.synthetic import dataset as syn
from dpa_omf.synthetic import maps as smap

CFG = syn.SyntheticConfig()
NUM_STAT_SCENES = 50


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def scenes():
    return [syn.generate_scenario(syn.scene_seed(1, i), CFG) for i in range(NUM_STAT_SCENES)]


def only(template: str) -> syn.SyntheticConfig:
    w = [0.0] * 4
    w[smap.TEMPLATES.index(template)] = 1.0
    return dataclasses.replace(CFG, template_weights=tuple(w))


# ------------------------------------------------------------------ determinism
def test_same_seed_same_scene_different_seed_different_scene():
    a, b, c = (syn.generate_scenario(s, CFG) for s in (7, 7, 8))
    assert _leaves_equal(a, b)
    assert not np.array_equal(a.agents.x, c.agents.x)
    assert not np.array_equal(a.roadgraph.xyz, c.roadgraph.xyz)
    assert dt.scenario_id_str(a.scenario_id) == "syn0000000000007"
    assert dt.scenario_id_str(c.scenario_id) == "syn0000000000008"


def test_seed_range_and_config_are_checked():
    with pytest.raises(ValueError, match="seed"):
        syn.generate_scenario(-1, CFG)
    with pytest.raises(ValueError, match="pool_size"):
        syn.SyntheticConfig(num_agents=64, pool_size=48)
    with pytest.raises(ValueError, match="template_weights"):
        syn.SyntheticConfig(template_weights=(0, 0, 0, 0))
    with pytest.raises(ValueError, match="num_shards"):
        syn.generate_dataset("/nonexistent", num_scenes=2, num_shards=3)


# ------------------------------------------------------------------ shapes and invariants
@pytest.mark.parametrize("template", smap.TEMPLATES)
def test_shapes_and_invariants(template):
    s = syn.generate_scenario(11, only(template))
    s.validate()
    a, rg, tl = s.agents, s.roadgraph, s.traffic_lights
    assert a.x.shape == (CFG.num_agents, dt.NUM_STEPS) and a.x.dtype == np.float32
    assert rg.xyz.shape == (CFG.num_points, 3) and tl.state.shape == (dt.NUM_STEPS, dt.NUM_TRAFFIC_LIGHTS)
    real = a.valid.any(1)
    # Padding slots follow the reader's conventions.
    assert (a.id[~real] == -1).all() and (a.type[~real] == 0).all()
    assert len(np.unique(a.id[real])) == real.sum()
    assert set(np.unique(a.type[real])) <= {dt.AGENT_TYPE_VEHICLE, dt.AGENT_TYPE_PEDESTRIAN, dt.AGENT_TYPE_CYCLIST}
    for f in ("x", "y", "z", "heading", "vel_x", "vel_y", "length", "width", "height"):
        assert (getattr(a, f)[~a.valid] == 0).all(), f
    # One SDC, a vehicle valid at the current step, evaluated with up to max_eval_agents others.
    assert a.is_sdc.sum() == 1 and a.valid[a.is_sdc, dt.CURRENT_INDEX].all()
    assert a.type[a.is_sdc][0] == dt.AGENT_TYPE_VEHICLE
    assert a.eval_mask[a.is_sdc].all() and 2 <= a.eval_mask.sum() <= 1 + CFG.max_eval_agents
    assert (a.sim_mask == a.valid[:, dt.CURRENT_INDEX]).all()
    # Box sizes by type.
    L = a.length[:, dt.CURRENT_INDEX]
    veh = a.sim_mask & (a.type == dt.AGENT_TYPE_VEHICLE)
    ped = a.sim_mask & (a.type == dt.AGENT_TYPE_PEDESTRIAN)
    assert ((L[veh] > 3.5) & (L[veh] < 10)).all() and (L[ped] < 1.0).all()
    # Road graph: dir is the unit vector to the next sample of the same polyline.
    v = rg.valid
    same_next = v[:-1] & v[1:] & (rg.id[:-1] == rg.id[1:])
    step = (rg.xyz[1:] - rg.xyz[:-1])[same_next]
    expect = step / np.linalg.norm(step, axis=-1, keepdims=True)
    np.testing.assert_allclose(rg.dir[:-1][same_next], expect, atol=1e-4)
    last = v & ~np.concatenate([same_next, [False]])
    assert (rg.dir[last] == 0).all()
    # Spacing: the configured minimum along the arc, so chords across the 90 degree
    # corners of crosswalks may be shorter by up to 1/sqrt(2); at most ~2 m.
    two_point = np.isin(rg.id, np.unique(rg.id[v])[np.bincount(np.unique(rg.id[v], return_inverse=True)[1]) == 2])
    gaps = np.linalg.norm(step[:, :2], axis=-1)[~two_point[:-1][same_next]]
    assert gaps.min() >= CFG.min_roadgraph_spacing * 0.7 and gaps.max() < 2.0
    assert (rg.id[~v] == -1).all() and (rg.type[~v] == 0).all()
    assert np.isin(rg.type[v], (dt.RG_LANE_SURFACE_STREET, dt.RG_ROAD_LINE_BROKEN_SINGLE_WHITE,
                                dt.RG_ROAD_LINE_SOLID_DOUBLE_YELLOW, dt.RG_ROAD_EDGE_BOUNDARY,
                                dt.RG_ROAD_EDGE_MEDIAN, dt.RG_CROSSWALK)).all()
    # Lights: on signalled maps, each slot is a lane polyline ending at its stop point.
    signalled = template in ("four_way", "t_junction")
    assert tl.valid.any() == signalled
    for k in np.nonzero(tl.valid[0])[0]:
        lane = rg.valid & (rg.id == tl.lane_id[0, k])
        assert (rg.type[lane] == dt.RG_LANE_SURFACE_STREET).all() and lane.any()
        end = rg.xyz[np.nonzero(lane)[0][-1]]
        np.testing.assert_allclose(tl.stop_point[0, k], end, atol=0.05)
        assert np.isin(tl.state[:, k], (dt.TL_STOP, dt.TL_CAUTION, dt.TL_GO)).all()
    assert (tl.lane_id[~tl.valid] == -1).all() and (tl.state[~tl.valid] == 0).all()


def test_velocity_is_finite_difference_and_heading_follows_it():
    s = syn.generate_scenario(3, CFG)
    a = s.agents
    v = a.valid
    inner = v[:, 1:-1] & v[:, :-2] & v[:, 2:]
    vx = (a.x[:, 2:] - a.x[:, :-2]) / (2 * dt.DT)
    vy = (a.y[:, 2:] - a.y[:, :-2]) / (2 * dt.DT)
    np.testing.assert_allclose(a.vel_x[:, 1:-1][inner], vx[inner], atol=2e-2)
    np.testing.assert_allclose(a.vel_y[:, 1:-1][inner], vy[inner], atol=2e-2)
    fast = v & (np.hypot(a.vel_x, a.vel_y) > 1.0)
    diff = np.angle(np.exp(1j * (a.heading - np.arctan2(a.vel_y, a.vel_x))))
    assert np.abs(diff[fast]).max() < 1e-3


# ------------------------------------------------------------------ maps
@pytest.mark.parametrize("template", smap.TEMPLATES)
def test_map_lanes_on_road_and_sidewalks_off_road(template):
    """Road edges follow the WOSAC orientation: lanes are inside, sidewalks outside."""
    rng = np.random.default_rng(5)
    m = smap.build_map(rng, template)
    cfg = dataclasses.replace(CFG, num_points=20000)
    rg = syn._roadgraph(m, lambda x, y: 0.0 * x, cfg)
    for r in m.vehicle_routes:
        d = syn.signed_distance_to_road_edge(smap.resample(r.xy, 2.0), rg)
        assert (d < -0.5).all(), (template, r.key, d.max())
    for r in m.ped_routes:
        pts = smap.resample(r.xy, 1.0)
        s = smap.arc_length(pts)
        side = (s < r.s_cross[0] - 0.5) | (s > r.s_cross[1] + 0.5)
        d = syn.signed_distance_to_road_edge(pts[side], rg)
        assert (d > 0.25).all(), (template, d.min())  # kerb corners come within ~0.5 m


def test_road_edge_distance_and_box_overlap_by_hand():
    """The detectors' geometry (dpa_omf.geometry.shapes) on cases worked out by hand."""
    # A closed 10 m square road edge, counter-clockwise (road on its left, inside),
    # followed by a lane that must be ignored; 16 padding points.
    rg = dt.empty_scenario(1, 24).roadgraph
    sq = np.array([[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], np.float32)
    rg.xyz[:5, :2], rg.type[:5], rg.id[:5], rg.valid[:5] = sq, dt.RG_ROAD_EDGE_BOUNDARY, 3, True
    rg.xyz[5:8, :2], rg.type[5:8], rg.id[5:8], rg.valid[5:8] = [[20, 0], [30, 0], [40, 0]], \
        dt.RG_LANE_SURFACE_STREET, 4, True
    # Inside, outside, beyond convex corners (at the closing point (0, 0) the sign
    # needs the wrap-around link), on the lane (20 m from the edge point (10, 0.5)).
    pts = np.array([[5, 5], [5, 1.5], [15, 5], [-1, 5], [12, 12], [-1, -1], [0.5, 0.25], [30, 0.5]],
                   np.float32)
    d = syn.signed_distance_to_road_edge(pts, rg)
    np.testing.assert_allclose(d, [-5, -1.5, 5, 1, np.sqrt(8), np.sqrt(2), -0.25, 20], rtol=1e-5)
    rg.valid[:5] = False  # no road edge left: +inf everywhere
    assert np.isinf(syn.signed_distance_to_road_edge(pts, rg)).all()
    # Two 4 m x 2 m boxes overlapping only near sharp corners (a 0.7-rounded box
    # check would miss it), then moved 0.2 m further apart diagonally: no overlap.
    a = dt.empty_scenario(3, 1).agents
    a.valid[:2, :2] = True
    a.length[:2], a.width[:2] = 4.0, 2.0
    a.x[1, 0], a.y[1, 0] = 3.9, 1.9
    a.x[1, 1], a.y[1, 1] = 4.1, 2.1
    a.x[2, 0] = 0.5  # invalid agent on top of agent 0: ignored
    np.testing.assert_array_equal(syn.collision_mask(a)[:, :3], [[True, False, False]] * 2 + [[False] * 3])


def test_statistic_detectors_fire():
    """The collision / off-road / red-light detectors used below can fail."""
    s = syn.generate_scenario(syn.scene_seed(1, 2), only("four_way"))
    a = s.agents
    x, y, valid = a.x.copy(), a.y.copy(), a.valid.copy()
    x[1], y[1], valid[1] = a.x[0] + 1.0, a.y[0], a.valid[0]  # agent 1 on top of the SDC
    bumped = a.replace(x=x, y=y, valid=valid)
    assert syn.collision_mask(bumped)[[0, 1]].sum() == 2 * a.valid[0].sum()
    road = syn.generate_scenario(4, only("straight"))  # a corridor: 100 m aside is off-road
    b = road.agents
    side = np.where(np.arange(len(b.x))[:, None] == 0, 100.0, 0.0)
    aside = b.replace(x=b.x - np.sin(b.heading) * side, y=b.y + np.cos(b.heading) * side)
    assert not syn.offroad_mask(road)[0].any()
    assert syn.offroad_mask(road.replace(agents=aside))[0, b.valid[0]].all()
    red = s.traffic_lights.replace(state=np.where(s.traffic_lights.valid, dt.TL_STOP, 0))
    r_ok, n_ok = syn.stop_line_crossings(s)
    r_red, n_red = syn.stop_line_crossings(s.replace(traffic_lights=red))
    # With every light red, crossings after the first 0.5 s all count as violations.
    assert r_ok == 0 < n_ok == n_red and r_red >= 1


# ------------------------------------------------------------------ statistics
def test_default_scenes_are_interactive_and_clean(scenes):
    st = syn.scene_statistics(scenes)
    assert st["num_scenes"] == NUM_STAT_SCENES
    assert st["median_valid_agents"] >= 16
    assert 0.3 <= st["intersection_fraction"] <= 0.95
    assert st["light_change_fraction"] >= 0.3
    assert st["collision_fraction"] <= 2e-3
    assert st["offroad_fraction"] <= 1e-3
    assert st["moving_fraction"] >= 0.5
    assert st["entering_fraction"] >= 0.05
    assert st["stop_line_crossings"] >= 20 and st["red_light_crossings"] == 0
    assert st["type_counts"]["pedestrian"] > 0 and st["type_counts"]["cyclist"] > 0


def test_queues_at_red_and_lights_change(scenes):
    """Signalled scenes have light changes and vehicles standing still at red lights."""
    stopped_at_red = 0
    changed = 0
    for s in scenes:
        tl, a = s.traffic_lights, s.agents
        if not tl.valid.any():
            continue
        changed += int((tl.state[1:] != tl.state[:-1]).any())
        veh = a.valid & (a.type == dt.AGENT_TYPE_VEHICLE)[:, None]
        slow = veh & (np.hypot(a.vel_x, a.vel_y) < 0.2)
        for k in np.nonzero(tl.valid[0])[0]:
            sp = tl.stop_point[:, k, :2]  # [T, 2]
            near = np.hypot(a.x - sp[None, :, 0], a.y - sp[None, :, 1]) < 6.0
            red = tl.state[:, k] == dt.TL_STOP
            stopped_at_red += int((slow & near & red[None]).any(1).sum())
    assert changed >= 5 and stopped_at_red >= 5


# ------------------------------------------------------------------ dataset files
def test_dataset_roundtrip_is_exact(tmp_path):
    from dpa_omf.io import reader

    paths = syn.generate_dataset(str(tmp_path), num_scenes=5, num_shards=2, seed=3, config=CFG, num_workers=1)
    assert [p.split("/")[-1] for p in paths] == ["synthetic.tfrecord-00000-of-00002",
                                                 "synthetic.tfrecord-00001-of-00002"]
    back = [s for p in paths for s in reader.read_scenes(p)]
    assert len(back) == 5
    for i, s in enumerate(back):
        assert _leaves_equal(s, syn.generate_scenario(syn.scene_seed(3, i), CFG)), i
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info["records"] == [2, 3] and info["seed"] == 3 and info["config"]["num_agents"] == CFG.num_agents


@pytest.mark.slow
def test_dataset_is_independent_of_worker_count(tmp_path):
    one = syn.generate_dataset(str(tmp_path / "one"), 4, 2, seed=9, num_workers=1)
    two = syn.generate_dataset(str(tmp_path / "two"), 4, 2, seed=9, num_workers=2)
    for p, q in zip(one, two):
        assert open(p, "rb").read() == open(q, "rb").read()

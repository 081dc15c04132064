"""Scene statistics and their detectors (dpa_omf.synthetic.scene_stats)."""

import dataclasses

import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.synthetic import dataset as syn
from dpa_omf.synthetic import maps as smap
from dpa_omf.synthetic import scene_stats as stats
from dpa_omf.synthetic.config import SyntheticConfig

CFG = SyntheticConfig()


def only(template: str) -> SyntheticConfig:
    w = [0.0] * 4
    w[smap.TEMPLATES.index(template)] = 1.0
    return dataclasses.replace(CFG, template_weights=tuple(w))


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
    d = stats.signed_distance_to_road_edge(pts, rg)
    np.testing.assert_allclose(d, [-5, -1.5, 5, 1, np.sqrt(8), np.sqrt(2), -0.25, 20], rtol=1e-5)
    rg.valid[:5] = False  # no road edge left: +inf everywhere
    assert np.isinf(stats.signed_distance_to_road_edge(pts, rg)).all()
    # Two 4 m x 2 m boxes overlapping only near sharp corners (a 0.7-rounded box
    # check would miss it), then moved 0.2 m further apart diagonally: no overlap.
    a = dt.empty_scenario(3, 1).agents
    a.valid[:2, :2] = True
    a.length[:2], a.width[:2] = 4.0, 2.0
    a.x[1, 0], a.y[1, 0] = 3.9, 1.9
    a.x[1, 1], a.y[1, 1] = 4.1, 2.1
    a.x[2, 0] = 0.5  # invalid agent on top of agent 0: ignored
    np.testing.assert_array_equal(stats.collision_mask(a)[:, :3], [[True, False, False]] * 2 + [[False] * 3])


def test_statistic_detectors_fire():
    """The collision / off-road / red-light detectors used below can fail."""
    s = syn.generate_scenario(syn.scene_seed(1, 2), only("four_way"))
    a = s.agents
    x, y, valid = a.x.copy(), a.y.copy(), a.valid.copy()
    x[1], y[1], valid[1] = a.x[0] + 1.0, a.y[0], a.valid[0]  # agent 1 on top of the SDC
    bumped = a.replace(x=x, y=y, valid=valid)
    assert stats.collision_mask(bumped)[[0, 1]].sum() == 2 * a.valid[0].sum()
    road = syn.generate_scenario(4, only("straight"))  # a corridor: 100 m aside is off-road
    b = road.agents
    side = np.where(np.arange(len(b.x))[:, None] == 0, 100.0, 0.0)
    aside = b.replace(x=b.x - np.sin(b.heading) * side, y=b.y + np.cos(b.heading) * side)
    assert not stats.offroad_mask(road)[0].any()
    assert stats.offroad_mask(road.replace(agents=aside))[0, b.valid[0]].all()
    red = s.traffic_lights.replace(state=np.where(s.traffic_lights.valid, dt.TL_STOP, 0))
    r_ok, n_ok = stats.stop_line_crossings(s)
    r_red, n_red = stats.stop_line_crossings(s.replace(traffic_lights=red))
    # With every light red, crossings after the first 0.5 s all count as violations.
    assert r_ok == 0 < n_ok == n_red and r_red >= 1


def test_default_scenes_are_interactive_and_clean(stat_scenes):
    st = stats.scene_statistics(stat_scenes)
    assert st["num_scenes"] == len(stat_scenes) == 50
    assert st["median_valid_agents"] >= 16
    assert 0.3 <= st["intersection_fraction"] <= 0.95
    assert st["light_change_fraction"] >= 0.3
    assert st["collision_fraction"] <= 2e-3
    assert st["offroad_fraction"] <= 1e-3
    assert st["moving_fraction"] >= 0.5
    assert st["entering_fraction"] >= 0.05
    assert st["stop_line_crossings"] >= 20 and st["red_light_crossings"] == 0
    assert st["type_counts"]["pedestrian"] > 0 and st["type_counts"]["cyclist"] > 0

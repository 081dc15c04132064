"""The synthetic world's scenes and dataset files (dpa_omf.synthetic.dataset, config)."""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.io import reader
from dpa_omf.synthetic import dataset as syn
from dpa_omf.synthetic import maps as smap
from dpa_omf.synthetic.config import SyntheticConfig

CFG = SyntheticConfig()


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb, strict=False))


def only(template: str) -> SyntheticConfig:
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
        SyntheticConfig(num_agents=64, pool_size=48)
    with pytest.raises(ValueError, match="template_weights"):
        SyntheticConfig(template_weights=(0, 0, 0, 0))
    with pytest.raises(ValueError, match="num_shards"):
        syn.generate_dataset("/nonexistent", num_scenes=2, num_shards=3)


# ------------------------------------------------------------------ shapes and invariants
@pytest.mark.parametrize("template", smap.TEMPLATES)
def test_shapes_and_invariants(template):
    s = syn.generate_scenario(11, only(template))
    s.validate()
    a, rg, tl = s.agents, s.roadgraph, s.traffic_lights
    assert a.x.shape == (CFG.num_agents, dt.NUM_STEPS) and a.x.dtype == np.float32
    assert rg.xyz.shape == (CFG.max_roadgraph_points, 3) and tl.state.shape == (dt.NUM_STEPS, dt.NUM_TRAFFIC_LIGHTS)
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


# ------------------------------------------------------------------ dataset files
def test_dataset_roundtrip_is_exact(tmp_path):
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
    for p, q in zip(one, two, strict=True):
        assert pathlib.Path(p).read_bytes() == pathlib.Path(q).read_bytes()

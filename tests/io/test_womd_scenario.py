"""WOMD Scenario-proto reader: the shared real files against the official facts, agent selection, errors."""

import json

import numpy as np
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.io import protos, reader, tfrecord
from dpa_omf.io import womd_scenario as scenario_proto
from dpa_omf.io.tfrecord import DataError, Source

SCENARIO_FILE = "womd/motion_data_one_scenario.tfrecord"
BIG_FILE = "womd/womd_scenario_input.tfrecord"
TYPE_NAMES = {1: "TYPE_VEHICLE", 2: "TYPE_PEDESTRIAN", 3: "TYPE_CYCLIST"}


@pytest.fixture
def facts(shared_dir):
    return json.loads((shared_dir / "golden/wosac/facts.json").read_text())


@pytest.fixture
def scene_637(shared_dir):
    (s, info), = list(reader.read_scenes_with_info(shared_dir / SCENARIO_FILE))
    return s, info


@pytest.mark.shared
def test_facts_counts(scene_637, facts):
    s, info = scene_637
    a = s.agents
    n = facts["n_tracks"]
    assert info.fmt == "scenario" and info.num_agents == n == 83 and info.num_dropped_agents == 0
    assert dt.scenario_id_str(s.scenario_id) == facts["scenario_id"]
    assert a.valid.shape == (128, dt.NUM_STEPS)
    assert int(a.valid[:, dt.CURRENT_INDEX].sum()) == facts["n_sim_agents"] == 50
    assert int(a.eval_mask.sum()) == facts["n_evaluation_agents"] == 4
    assert sorted(a.id[a.sim_mask].tolist()) == facts["sim_agent_ids"]
    assert sorted(a.id[a.eval_mask].tolist()) == facts["evaluation_agent_ids"]
    # Track order is kept: slot i is track i, the SDC at its track index, padding after the tracks.
    assert np.flatnonzero(a.is_sdc).tolist() == [facts["sdc_track_index"]]
    assert int(a.id[facts["sdc_track_index"]]) == facts["sdc_id"]
    assert (a.id[n:] == -1).all() and not a.valid[n:].any()
    ttp = [i for i in facts["tracks_to_predict_track_index"]]
    assert a.eval_mask[ttp].all()
    by_type = {TYPE_NAMES[t]: int((a.type[:n] == t).sum()) for t in TYPE_NAMES if (a.type[:n] == t).any()}
    assert by_type == facts["tracks_by_type"]
    sim_by_type = {TYPE_NAMES[t]: int((a.type[a.sim_mask] == t).sum()) for t in TYPE_NAMES
                   if (a.type[a.sim_mask] == t).any()}
    assert sim_by_type == facts["sim_agents_by_type"]


@pytest.mark.shared
def test_matches_golden_arrays(scene_637, shared_dir, facts):
    s, _ = scene_637
    g = np.load(shared_dir / "golden/wosac/scenario_arrays.npz")
    a, n = s.agents, facts["n_tracks"]
    np.testing.assert_array_equal(a.id[:n], g["object_id"])
    np.testing.assert_array_equal(a.type[:n], g["object_type"])
    np.testing.assert_array_equal(a.valid[:n], g["valid"])
    for ours, theirs in (("x", "x"), ("y", "y"), ("z", "z"), ("heading", "heading"), ("length", "length"),
                         ("width", "width"), ("height", "height"), ("vel_x", "velocity_x"), ("vel_y", "velocity_y")):
        np.testing.assert_array_equal(getattr(a, ours)[:n][g["valid"]], g[theirs][g["valid"]], err_msg=ours)
    rg = s.roadgraph
    for code_set, key in (((15, 16), "road_edge"), ((2,), "surface_lane")):
        mask = rg.valid & np.isin(rg.type, code_set)
        assert set(np.unique(rg.id[mask])) == set(g[f"{key}_ids"].tolist())
        assert int(mask.sum()) == int(g[f"{key}_lengths"].sum())
        # Same points, polyline by polyline, in order.
        for fid, start, length in zip(g[f"{key}_ids"], np.cumsum(g[f"{key}_lengths"]) - g[f"{key}_lengths"],
                                      g[f"{key}_lengths"], strict=True):
            np.testing.assert_allclose(rg.xyz[rg.id == fid], g[f"{key}_points"][start:start + length], atol=1e-3)
    tl = s.traffic_lights
    lanes = g["signal_lane_ids"]
    slot = [int(np.flatnonzero(tl.lane_id[dt.CURRENT_INDEX] == lane)[0]) for lane in lanes]
    np.testing.assert_array_equal(tl.valid[:, slot], g["signal_present"])
    np.testing.assert_array_equal(tl.state[:, slot][g["signal_present"]], g["signal_states"][g["signal_present"]])
    np.testing.assert_allclose(tl.stop_point[:, slot][g["signal_present"]],
                               g["signal_stop_points"][g["signal_present"]], atol=1e-3)
    assert sorted(set(tl.lane_id[tl.valid].tolist())) == facts["traffic_signal_lane_ids"]


@pytest.mark.shared
def test_map_features(scene_637, facts):
    s, _ = scene_637
    rg = s.roadgraph
    ids, types = rg.id[rg.valid], rg.type[rg.valid]
    per_feature = {int(i): int(t) for i, t in zip(ids, types, strict=True)}
    assert len(per_feature) == facts["n_map_features"] == 301
    kinds = {"lane": (1, 2, 3), "road_line": tuple(range(5, 14)), "road_edge": (14, 15, 16), "stop_sign": (17,),
             "crosswalk": (18,), "speed_bump": (19,)}
    counts = {k: sum(t in codes for t in per_feature.values()) for k, codes in kinds.items()}
    assert counts == facts["map_features_by_type"]
    # Polygons are closed; stop signs are one sample; directions are unit or zero.
    for fid, t in per_feature.items():
        pts = rg.xyz[rg.valid & (rg.id == fid)]
        if t in (18, 19):
            np.testing.assert_array_equal(pts[0], pts[-1])
        if t == 17:
            assert len(pts) == 1
    norms = np.linalg.norm(rg.dir[rg.valid], axis=-1)
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0))
    assert rg.valid.shape == (scenario_proto.DEFAULT_MAX_ROADGRAPH_POINTS,)


@pytest.mark.shared
def test_more_tracks_than_slots(shared_dir):
    """257 tracks into 128 slots: every required agent kept, the nearest others fill up, order kept."""
    path = shared_dir / BIG_FILE
    msg = protos.Scenario.FromString(tfrecord.read_first_record(path))
    full, _ = scenario_proto.scenario_from_proto(msg, Source("full"), reader.ReaderConfig(max_agents=257))
    (s, info), = list(reader.read_scenes_with_info(path))
    assert info.num_agents == len(msg.tracks) == 257
    assert info.num_dropped_agents == 129 and len(info.dropped_agent_ids) == 129
    a, fa = s.agents, full.agents
    assert a.valid.shape == (128, dt.NUM_STEPS) and (a.id >= 0).all()
    required = fa.sim_mask | fa.eval_mask
    assert int(required.sum()) == 84  # valid at the current step (the 5 to evaluate are among them)
    assert set(fa.id[required]) <= set(a.id)
    assert int(a.sim_mask.sum()) == int(fa.sim_mask.sum()) and int(a.eval_mask.sum()) == int(fa.eval_mask.sum())
    # Proto order preserved among the kept tracks.
    track_index = {int(t.id): i for i, t in enumerate(msg.tracks)}
    order = [track_index[int(i)] for i in a.id]
    assert order == sorted(order)
    # The optional agents kept are closer to the SDC than every dropped one.
    sdc = np.flatnonzero(fa.is_sdc)[0]
    c = np.array([fa.x[sdc, dt.CURRENT_INDEX], fa.y[sdc, dt.CURRENT_INDEX]])
    dist = np.where(fa.valid, np.hypot(fa.x - c[0], fa.y - c[1]), np.inf).min(1)
    kept_optional = np.isin(fa.id, a.id) & ~required
    dropped = ~np.isin(fa.id, a.id)
    assert set(fa.id[dropped].tolist()) == set(info.dropped_agent_ids)
    assert dist[kept_optional].max() <= dist[dropped].min()


@pytest.mark.shared
def test_too_many_required_agents(shared_dir):
    with pytest.raises(DataError, match=r"womd_scenario_input\.tfrecord: record 0: field 'tracks': 84 agents "
                                        r"must be kept .* 64 agent slots"):
        next(reader.read_scenes(shared_dir / BIG_FILE, reader.ReaderConfig(max_agents=64)))


@pytest.mark.shared
def test_auto_detection(shared_dir):
    assert reader.file_format(str(shared_dir / SCENARIO_FILE)) == "scenario"
    assert reader.file_format(str(shared_dir / BIG_FILE)) == "scenario"
    assert reader.file_format(str(shared_dir / "womd/motion_data_one_example.tfrecord")) == "example"


# ---------------------------------------------------------------- synthetic protos, errors
def _proto(num_tracks=3, valid_now=True) -> "protos.Scenario":
    msg = protos.Scenario(scenario_id="proto-test", current_time_index=dt.CURRENT_INDEX, sdc_track_index=0)
    msg.timestamps_seconds.extend(np.arange(dt.NUM_STEPS) * 0.1)
    for i in range(num_tracks):
        track = msg.tracks.add(id=100 + i, object_type=1 + i % 3)
        for t in range(dt.NUM_STEPS):
            track.states.add(center_x=t * 1.0 + i * 10, center_y=float(i), center_z=0.5, length=4.0, width=2.0,
                             height=1.5, heading=0.1, velocity_x=10.0, velocity_y=0.0,
                             valid=valid_now or t != dt.CURRENT_INDEX)
    msg.tracks_to_predict.add(track_index=num_tracks - 1)
    lane = msg.map_features.add(id=7)
    lane.lane.type = 2
    for x in range(5):
        lane.lane.polyline.add(x=float(x), y=0.0, z=0.0)
    cw = msg.map_features.add(id=8)
    for x, y in ((0, 0), (1, 0), (1, 1), (0, 1)):
        cw.crosswalk.polygon.add(x=float(x), y=float(y), z=0.0)
    edge = msg.map_features.add(id=9)
    edge.road_edge.type = 2
    for x in range(3):
        edge.road_edge.polyline.add(x=float(x), y=5.0, z=0.0)
    msg.map_features.add(id=10).stop_sign.position.CopyFrom(protos.MapPoint(x=3.0, y=1.0, z=0.0))
    for t in range(dt.NUM_STEPS):
        msg.dynamic_map_states.add().lane_states.add(lane=7, state=4 if t < 50 else 6,
                                                      stop_point=protos.MapPoint(x=4.0, y=0.0, z=0.0))
    return msg


def test_synthetic_proto_conversion():
    s = scenario_proto.parse_scenario(_proto().SerializeToString(), Source("mem"),
                                      reader.ReaderConfig(max_agents=8, max_roadgraph_points=64))
    a, rg, tl = s.agents, s.roadgraph, s.traffic_lights
    assert a.id[:3].tolist() == [100, 101, 102] and a.type[:3].tolist() == [1, 2, 3]
    assert a.is_sdc.tolist()[:3] == [True, False, False] and a.eval_mask[:3].tolist() == [True, False, True]
    np.testing.assert_allclose(a.x[1, :3], [10, 11, 12])
    assert rg.valid.sum() == 5 + 5 + 3 + 1
    assert rg.type[rg.valid].tolist() == [2] * 5 + [18] * 5 + [16] * 3 + [17]
    np.testing.assert_allclose(rg.dir[:4], [[1, 0, 0]] * 4)
    np.testing.assert_allclose(rg.dir[4], [0, 0, 0])  # end of the lane
    np.testing.assert_allclose(rg.xyz[9], rg.xyz[5])  # crosswalk closed
    np.testing.assert_allclose(rg.dir[8], [0, -1, 0])  # closing segment (0,1) -> (0,0)
    assert tl.valid[:, 0].all() and not tl.valid[:, 1:].any()
    assert tl.state[49, 0] == dt.TL_STOP and tl.state[50, 0] == dt.TL_GO and tl.lane_id[0, 0] == 7


def test_proto_errors_name_field(tmp_path):
    def write(msg):
        path = tmp_path / "p.tfrecord"
        tfrecord.write_records(path, [_proto().SerializeToString(), msg.SerializeToString()])
        return path

    bad = _proto()
    bad.tracks[1].states[42].center_x = float("nan")
    with pytest.raises(DataError, match=r"p\.tfrecord: record 1: field 'tracks\[1\]\.states\[42\]\.center_x'"):
        list(reader.read_scenes(write(bad)))
    with pytest.raises(DataError, match=r"record 1: field 'tracks\[\*\]\.states\[10\]\.valid': scene has no agent"):
        list(reader.read_scenes(write(_proto(valid_now=False))))
    bad = _proto()
    del bad.tracks[2].states[-1]
    with pytest.raises(DataError, match=r"record 1: field 'tracks\[2\]\.states': has 90 states, expected 91"):
        list(reader.read_scenes(write(bad)))
    bad = _proto()
    bad.sdc_track_index = 7
    with pytest.raises(DataError, match=r"field 'sdc_track_index'"):
        list(reader.read_scenes(write(bad)))
    bad = _proto()
    bad.map_features[1].crosswalk.polygon[2].y = float("inf")
    with pytest.raises(DataError, match=r"field 'map_features\[1\]\.crosswalk': non-finite"):
        list(reader.read_scenes(write(bad)))
    with pytest.raises(DataError, match=r"record 1: not a valid Scenario proto"):
        path = tmp_path / "g.tfrecord"
        tfrecord.write_records(path, [_proto().SerializeToString(), b"\x12\xff\xff garbage"])
        list(reader.read_scenes(path, fmt="scenario"))

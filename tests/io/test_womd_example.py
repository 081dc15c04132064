"""WOMD tf.Example reader: the real file, fitting to fewer slots, and clear errors on bad features."""

import numpy as np
import pytest
import tensorflow as tf

from dpa_omf import datatypes as dt
from dpa_omf.io import example_writer, fit, reader, tfrecord, womd_example
from dpa_omf.io.tfrecord import DataError
from dpa_omf.testing.womd import random_scenario, tree_equal

EXAMPLE_FILE = "womd/motion_data_one_example.tfrecord"


def _write(tmp_path, records, name="bad.tfrecord"):
    path = tmp_path / name
    tfrecord.write_records(path, records)
    return path


def tf_values(example: tf.train.Example, name: str) -> np.ndarray:
    f = example.features.feature[name]
    return np.array(getattr(f, f.WhichOneof("kind")).value)


# ---------------------------------------------------------------- real data
@pytest.mark.shared
def test_real_example_file_shapes_and_counts(shared_dir):
    (s, info), = list(reader.read_scenes_with_info(shared_dir / EXAMPLE_FILE))
    assert info.fmt == "example"
    assert s.agents.valid.shape == (128, dt.NUM_STEPS)
    assert s.roadgraph.valid.shape == (20_000,)
    assert s.traffic_lights.valid.shape == (dt.NUM_STEPS, dt.NUM_TRAFFIC_LIGHTS)
    assert dt.scenario_id_str(s.scenario_id) == "a3bb37c25ce56418"
    assert int(s.agents.sim_mask.sum()) == 73
    assert int(s.agents.is_sdc.sum()) == 1
    # SDC + the 8 tracks_to_predict of this record.
    assert int(s.agents.eval_mask.sum()) == 9
    assert int(s.roadgraph.valid.sum()) == 20_000
    s.validate()

@pytest.mark.shared
def test_real_example_matches_tensorflow_parsing(shared_dir):
    """Our wire-format decoder agrees with tf.train.Example on every field it reads."""
    path = shared_dir / EXAMPLE_FILE
    raw = tfrecord.read_first_record(path)
    ex = tf.train.Example.FromString(raw)
    s = womd_example.parse_example(raw)
    periods = womd_example.PERIODS
    valid = np.concatenate([tf_values(ex, f"state/{p}/valid").reshape(128, n) for p, n in periods], 1) > 0
    np.testing.assert_array_equal(s.agents.valid, valid)
    for name, field in womd_example.STATE_FLOAT_FIELDS.items():
        ref = np.concatenate([tf_values(ex, f"state/{p}/{name}").reshape(128, n) for p, n in periods], 1)
        np.testing.assert_array_equal(getattr(s.agents, field), np.where(valid, ref, 0).astype(np.float32))
    np.testing.assert_array_equal(s.agents.id, tf_values(ex, "state/id").astype(np.int32))
    np.testing.assert_array_equal(s.roadgraph.xyz, tf_values(ex, "roadgraph_samples/xyz").reshape(-1, 3))
    np.testing.assert_array_equal(s.roadgraph.dir, tf_values(ex, "roadgraph_samples/dir").reshape(-1, 3))
    np.testing.assert_array_equal(s.roadgraph.id, tf_values(ex, "roadgraph_samples/id"))
    tl_valid = tf_values(ex, "traffic_light_state/future/valid").reshape(80, 16) > 0
    np.testing.assert_array_equal(s.traffic_lights.valid[dt.CURRENT_INDEX + 1:], tl_valid)
    np.testing.assert_array_equal(
        s.traffic_lights.state[dt.CURRENT_INDEX + 1:],
        np.where(tl_valid, tf_values(ex, "traffic_light_state/future/state").reshape(80, 16), 0))
    # Our recomputed directions agree with the ones stored in WOMD, except at the very last sample, whose
    # polyline the 20,000-sample cap cut (WOMD's direction points to a sample that is not stored).
    ours = fit.polyline_directions(s.roadgraph.xyz, s.roadgraph.id)
    np.testing.assert_allclose(ours[:-1], s.roadgraph.dir[:-1], atol=2e-3)

@pytest.mark.shared
def test_real_example_fewer_agent_slots_keeps_required(shared_dir):
    (s, info), = list(reader.read_scenes_with_info(shared_dir / EXAMPLE_FILE, reader.ReaderConfig(max_agents=80)))
    full = next(reader.read_scenes(shared_dir / EXAMPLE_FILE))
    assert s.agents.valid.shape == (80, dt.NUM_STEPS)
    assert info.num_dropped_agents == 128 - 80
    assert set(s.agents.id[s.agents.sim_mask]) == set(full.agents.id[full.agents.sim_mask])
    assert set(s.agents.id[s.agents.eval_mask]) == set(full.agents.id[full.agents.eval_mask])
    with pytest.raises(DataError, match="73 agents must be kept.*max_agents"):
        next(reader.read_scenes(shared_dir / EXAMPLE_FILE, reader.ReaderConfig(max_agents=50)))

@pytest.mark.shared
def test_real_example_subsampled_roadgraph(shared_dir):
    (s, info), = list(reader.read_scenes_with_info(shared_dir / EXAMPLE_FILE,
                                                  reader.ReaderConfig(max_roadgraph_points=6000)))
    full = next(reader.read_scenes(shared_dir / EXAMPLE_FILE))
    rg = s.roadgraph
    assert rg.valid.shape == (6000,) and 0 < rg.valid.sum() <= 6000
    assert info.num_dropped_points == 20_000 - rg.valid.sum()
    # Every polyline survives with its first and last sample.
    ids = full.roadgraph.id
    firsts = np.concatenate([[True], ids[1:] != ids[:-1]])
    lasts = np.concatenate([ids[1:] != ids[:-1], [True]])
    kept = {tuple(p) for p in rg.xyz[rg.valid]}
    assert all(tuple(p) in kept for p in full.roadgraph.xyz[firsts | lasts])
    norms = np.linalg.norm(rg.dir[rg.valid], axis=-1)
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0))


# ---------------------------------------------------------------- bad input
def _edit_example(data: bytes, edit) -> bytes:
    ex = tf.train.Example.FromString(data)
    edit(ex.features.feature)
    return ex.SerializeToString()

def test_missing_feature_names_feature_and_record(tmp_path, three_records):
    bad = _edit_example(three_records[1], lambda f: f.pop("state/future/velocity_y"))
    path = _write(tmp_path, [three_records[0], bad, three_records[2]])
    with pytest.raises(DataError, match=r"bad\.tfrecord: record 1: field 'state/future/velocity_y': missing"):
        list(reader.read_scenes(path))

def test_wrong_length_feature(tmp_path, three_records):
    def edit(f):
        f["roadgraph_samples/type"].int64_list.value.append(2)

    path = _write(tmp_path, [three_records[0], three_records[1], _edit_example(three_records[2], edit)])
    with pytest.raises(DataError, match=r"record 2: field 'roadgraph_samples/type': has 101 values, expected 100"):
        list(reader.read_scenes(path))

def test_wrong_kind_feature(tmp_path, three_records):
    def edit(f):
        values = list(f["state/past/valid"].int64_list.value)
        f["state/past/valid"].Clear()
        f["state/past/valid"].float_list.value.extend(values)

    path = _write(tmp_path, [_edit_example(three_records[0], edit)])
    with pytest.raises(DataError, match=r"record 0: field 'state/past/valid': expected a int64_list"):
        list(reader.read_scenes(path))

def test_nan_at_valid_entry(tmp_path, rng):
    s = random_scenario(rng, 8, 100, "nan")
    a = s.agents
    slot = int(np.flatnonzero(a.valid[:, 40])[0])
    y = a.y.copy()
    y[slot, 40] = np.nan
    path = _write(tmp_path, [example_writer.scenario_to_example(s),
                             example_writer.scenario_to_example(s.replace(agents=a.replace(y=y)))])
    with pytest.raises(DataError, match=rf"record 1: field 'state/future/y': non-finite .*slot {slot}, step 29"):
        list(reader.read_scenes(path))
    # NaN at an invalid entry is not an error (values there are ignored and zeroed).
    inv = np.argwhere(~a.valid)[0]
    y2 = a.y.copy()
    y2[tuple(inv)] = np.nan
    clean = womd_example.parse_example(example_writer.scenario_to_example(s.replace(agents=a.replace(y=y2))))
    assert tree_equal(clean, s)

def test_nan_roadgraph(tmp_path, rng):
    s = random_scenario(rng, 8, 100, "nanrg")
    xyz = s.roadgraph.xyz.copy()
    xyz[3, 1] = np.inf
    path = _write(tmp_path, [example_writer.scenario_to_example(s.replace(roadgraph=s.roadgraph.replace(xyz=xyz)))])
    with pytest.raises(DataError, match=r"record 0: field 'roadgraph_samples/xyz': non-finite"):
        list(reader.read_scenes(path))

def test_scene_without_valid_agent(tmp_path, rng):
    s = random_scenario(rng, 8, 100, "empty")
    valid = s.agents.valid.copy()
    valid[:, dt.CURRENT_INDEX] = False
    bad = s.replace(agents=s.agents.replace(valid=valid, sim_mask=np.zeros(8, bool),
                                            eval_mask=np.zeros(8, bool)))
    path = _write(tmp_path, [example_writer.scenario_to_example(s), example_writer.scenario_to_example(bad)])
    with pytest.raises(DataError, match=r"record 1: field 'state/current/valid': scene has no agent valid"):
        list(reader.read_scenes(path))

def test_garbage_record(tmp_path):
    path = _write(tmp_path, [b"\x0a\xff\xff\xff\x0f garbage"])
    with pytest.raises(DataError, match=r"record 0"):
        list(reader.read_scenes(path, fmt="example"))

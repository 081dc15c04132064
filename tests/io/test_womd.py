"""WOMD tf.Example reader / writer: real file, exact round trip, and clear errors on bad input."""

import jax
import numpy as np
import pytest
import tensorflow as tf

from dpa_omf import datatypes as dt
from dpa_omf.io import example_writer, fit, reader, tfrecord, womd_example
from dpa_omf.io.tfrecord import DataError
from dpa_omf.testing.womd import random_scenario

EXAMPLE_FILE = "womd/motion_data_one_example.tfrecord"


def tree_equal(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


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


# ---------------------------------------------------------------- round trip
def test_varint_roundtrip():
    v = np.array([0, 1, 127, 128, 300, 2**31, -1, -5, 2**62, 2**63 - 1, -(2**63)], np.int64)
    data = example_writer.encode_varints(v)
    # The packed payload of an Int64List: the protobuf library decodes it back, and encodes v the same way.
    packed = bytes([0x0A]) + bytes([len(data)]) + data  # field 1, wire type 2; len(data) < 128
    np.testing.assert_array_equal(np.array(tf.train.Int64List.FromString(packed).value, np.int64), v)
    assert tf.train.Int64List(value=v.tolist()).SerializeToString() == packed


def test_roundtrip_exact(rng):
    s = random_scenario(rng, num_agents=24, num_points=700, scenario_id="roundtrip-00001")
    s.validate()
    data = example_writer.scenario_to_example(s)
    back = womd_example.parse_example(data)
    assert tree_equal(back, s)
    # The bytes are a valid tf.Example that TensorFlow reads to the same values, in the WOMD layout.
    ex = tf.train.Example.FromString(data)
    np.testing.assert_array_equal(tf_values(ex, "state/future/x").reshape(24, 80)[s.agents.valid[:, 11:]],
                                  s.agents.x[:, 11:][s.agents.valid[:, 11:]])
    assert tf_values(ex, "roadgraph_samples/xyz").size == 3 * 700
    parsed = tf.io.parse_single_example(data, {"state/current/x": tf.io.FixedLenFeature([24], tf.float32),
                                               "roadgraph_samples/id": tf.io.FixedLenFeature([700], tf.int64),
                                               "scenario/id": tf.io.FixedLenFeature([], tf.string)})
    assert parsed["scenario/id"].numpy() == b"roundtrip-00001"
    np.testing.assert_array_equal(parsed["roadgraph_samples/id"].numpy()[s.roadgraph.valid],
                                  s.roadgraph.id[s.roadgraph.valid])


def test_write_read_file_exact(tmp_path, rng):
    scenes = [random_scenario(rng, 16, 300, f"scene-{i}") for i in range(4)]
    path = tmp_path / "scenes.tfrecord"
    assert example_writer.write_tfrecord(path, scenes) == 4
    assert reader.file_format(str(path)) == "example"
    back = list(reader.read_scenes(path))
    assert len(back) == 4 and all(tree_equal(a, b) for a, b in zip(back, scenes))
    # A batched scenario is written as one record per scene.
    example_writer.write_tfrecord(tmp_path / "batch.tfrecord", [dt.stack_scenarios(scenes)])
    assert all(tree_equal(a, b) for a, b in zip(reader.read_scenes(tmp_path / "batch.tfrecord"), scenes))


def test_canonicalize_zeroes_invalid(rng):
    s = random_scenario(rng, 8, 100)
    dirty = s.replace(agents=s.agents.replace(x=np.where(s.agents.valid, s.agents.x, 123.0)))
    assert not tree_equal(dirty, s)
    assert tree_equal(womd_example.parse_example(example_writer.scenario_to_example(dirty)), s)
    assert tree_equal(fit.canonicalize(dirty), s)


# ---------------------------------------------------------------- bad input
def _write(tmp_path, records, name="bad.tfrecord"):
    path = tmp_path / name
    tfrecord.write_records(path, records)
    return path


def _edit_example(data: bytes, edit) -> bytes:
    ex = tf.train.Example.FromString(data)
    edit(ex.features.feature)
    return ex.SerializeToString()


@pytest.fixture
def three_records(rng):
    return [example_writer.scenario_to_example(random_scenario(rng, 8, 100, f"r{i}")) for i in range(3)]


def test_corrupted_crc_names_file_and_record(tmp_path, three_records):
    path = _write(tmp_path, three_records)
    raw = bytearray(path.read_bytes())
    second = tfrecord.index_records(path)[1]
    raw[second + 12 + 500] ^= 0x40  # a payload byte of record 1
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"bad\.tfrecord: record 1: corrupted record") as e:
        list(reader.read_scenes(path))
    assert e.value.path == str(path) and e.value.record == 1


def test_corrupted_length_names_record(tmp_path, three_records):
    path = _write(tmp_path, three_records)
    raw = bytearray(path.read_bytes())
    raw[tfrecord.index_records(path)[2] + 1] ^= 0x01  # the length field of record 2
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"record 2: corrupted record header"):
        tfrecord.index_records(path)
    with pytest.raises(DataError, match=r"record 2: corrupted record header"):
        list(reader.read_scenes(path))


def test_truncated_file_names_record(tmp_path, three_records):
    path = _write(tmp_path, three_records)
    raw = path.read_bytes()
    cut = tfrecord.index_records(path)[2] + 12 + 100
    path.write_bytes(raw[:cut])
    with pytest.raises(DataError, match=r"bad\.tfrecord: record 2: truncated file"):
        list(reader.read_scenes(path))
    with pytest.raises(DataError, match=r"record 2: truncated file"):
        tfrecord.index_records(path)


def test_tensorflow_fallback_reader_errors(tmp_path, three_records, monkeypatch):
    """Without a native CRC the TF C++ reader is used; its errors are rewrapped the same way."""
    monkeypatch.setattr(tfrecord, "_native_crc", None)
    monkeypatch.setattr(tfrecord, "_native_crc_resolved", True)
    path = _write(tmp_path, three_records)
    assert len(list(reader.read_scenes(path))) == 3
    raw = bytearray(path.read_bytes())
    raw[tfrecord.index_records(path)[1] + 12 + 50] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"record 1: corrupted record"):
        list(reader.read_scenes(path))


def test_native_crc_matches_reference():
    fn = tfrecord.native_crc32c()
    if fn is None:
        pytest.skip("no native CRC-32C here: the TensorFlow reader is used")
    data = np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    assert fn(data) == tfrecord.crc32c(data)


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


def test_write_is_atomic(tmp_path, rng):
    def scenes():
        yield random_scenario(rng, 8, 100)
        raise RuntimeError("generator failed")

    path = tmp_path / "partial.tfrecord"
    with pytest.raises(RuntimeError):
        example_writer.write_tfrecord(path, scenes())
    assert not path.exists() and not list(tmp_path.iterdir())

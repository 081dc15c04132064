"""tf.Example writer: exact round trip through the reader, bytes TensorFlow reads in the WOMD layout."""

import numpy as np
import tensorflow as tf

from dpa_omf import datatypes as dt
from dpa_omf.io import example_writer, fit, reader, womd_example
from dpa_omf.testing.womd import random_scenario, tree_equal


def tf_values(example: tf.train.Example, name: str) -> np.ndarray:
    f = example.features.feature[name]
    return np.array(getattr(f, f.WhichOneof("kind")).value)

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
    assert len(back) == 4 and all(tree_equal(a, b) for a, b in zip(back, scenes, strict=True))
    # A batched scenario is written as one record per scene.
    example_writer.write_tfrecord(tmp_path / "batch.tfrecord", [dt.stack_scenarios(scenes)])
    assert all(tree_equal(a, b) for a, b in zip(reader.read_scenes(tmp_path / "batch.tfrecord"), scenes, strict=True))

def test_canonicalize_zeroes_invalid(rng):
    s = random_scenario(rng, 8, 100)
    dirty = s.replace(agents=s.agents.replace(x=np.where(s.agents.valid, s.agents.x, 123.0)))
    assert not tree_equal(dirty, s)
    assert tree_equal(womd_example.parse_example(example_writer.scenario_to_example(dirty)), s)
    assert tree_equal(fit.canonicalize(dirty), s)

"""The one scene reader: typed sources in errors, random access equals sequential reading, fitted shapes."""

import numpy as np
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.io import example_writer, protos, reader, tfrecord
from dpa_omf.io.reader import DataError, ReaderConfig, SceneReader, Source
from dpa_omf.testing.womd import random_scenario, tree_equal

BIG_FILE = "womd/womd_scenario_input.tfrecord"  # 257 tracks, 84 valid at the current step, 5 to evaluate
SLOTS = ReaderConfig(max_agents=24, max_roadgraph_points=320)


@pytest.fixture
def five_scenes(tmp_path, rng):
    """A tf.Example file of 5 scenes with 10-20 agents and 150-300 road-graph samples."""
    scenes = [random_scenario(rng, int(rng.integers(10, 21)), int(rng.integers(150, 301)), f"s{i}")
              for i in range(5)]
    path = tmp_path / "five.tfrecord"
    example_writer.write_tfrecord(path, scenes)
    return str(path), scenes


# ---------------------------------------------------------------- Source
def test_source_is_a_typed_value():
    s = Source("/data/a.tfrecord", 3)
    assert (s.file, s.record) == ("/data/a.tfrecord", 3) and s == ("/data/a.tfrecord", 3)
    assert str(s) == "/data/a.tfrecord: record 3" and str(Source("mem")) == "mem"
    assert hash(s) == hash(Source("/data/a.tfrecord", 3))  # usable as a key
    e = DataError.at(s, "state/id", "bad")
    assert str(e) == "/data/a.tfrecord: record 3: field 'state/id': bad"
    assert e.source == s and (e.path, e.record, e.field) == ("/data/a.tfrecord", 3, "state/id")


def test_errors_carry_the_source_through_every_read_path(five_scenes, tmp_path):
    """A bad record is named by (file, record) whether read sequentially, by Source or by a SceneReader."""
    path, scenes = five_scenes
    records = [data for _, data in tfrecord.iter_records(path)]
    bad = scenes[3].replace(agents=scenes[3].agents.replace(
        valid=np.zeros_like(scenes[3].agents.valid), sim_mask=np.zeros_like(scenes[3].agents.sim_mask),
        eval_mask=np.zeros_like(scenes[3].agents.eval_mask)))
    records[3] = example_writer.scenario_to_example(bad)
    bad_path = str(tmp_path / "with: colon record 9.tfrecord")  # a name that would confuse string parsing
    tfrecord.write_records(bad_path, records)
    where = Source(bad_path, 3)
    with pytest.raises(DataError) as seq:
        list(reader.read_scenes(bad_path, SLOTS))
    with pytest.raises(DataError) as one:
        reader.read_scene(where, SLOTS)
    with SceneReader([path, bad_path], SLOTS) as scenes_reader, pytest.raises(DataError) as many:
        scenes_reader.read(where)
    for e in (seq, one, many):
        assert e.value.source == where and e.value.field == "state/current/valid"
        assert str(e.value).startswith(f"{where}: field 'state/current/valid': scene has no agent valid")


def test_missing_record_and_unknown_file(five_scenes):
    path, _ = five_scenes
    with pytest.raises(DataError, match=r"five\.tfrecord: record 5: no such record: the file holds 5"):
        reader.read_scene(Source(path, 5), SLOTS)
    with SceneReader([path], SLOTS) as r, pytest.raises(ValueError, match="not one of the 1 files"):
        r.read(Source(path + ".other", 0))


# ---------------------------------------------------------------- random access == sequential
def test_read_scene_equals_sequential_reading(five_scenes):
    path, _ = five_scenes
    for config in (SLOTS, ReaderConfig(max_agents=16, max_roadgraph_points=100), ReaderConfig()):
        sequential = list(reader.read_scenes(path, config))
        assert len(sequential) == 5
        for k in (4, 0, 2):  # out of order
            assert tree_equal(reader.read_scene(Source(path, k), config), sequential[k]), (config, k)


def test_scene_reader_equals_sequential_reading_across_files(five_scenes, shared_dir):
    path, _ = five_scenes
    files = [path, str(shared_dir / "womd/motion_data_one_scenario.tfrecord"),
             str(shared_dir / "womd/motion_data_one_example.tfrecord")]
    config = ReaderConfig(max_agents=128, max_roadgraph_points=30_000)
    with SceneReader(files, config) as r:
        assert r.num_records.tolist() == [5, 1, 1]
        sources = r.sources()
        assert sources[:2] == [Source(path, 0), Source(path, 1)] and sources[-1] == Source(files[2], 0)
        for source in reversed(sources):
            s = r.read(source)
            assert s.agents.valid.shape == (128, dt.NUM_STEPS) and s.roadgraph.valid.shape == (30_000,)
            expected = list(reader.read_scenes(source.file, config))[source.record]
            assert tree_equal(s, expected), source


def test_scene_reader_requires_slots(five_scenes):
    path, _ = five_scenes
    for config in (ReaderConfig(), ReaderConfig(max_agents=8), ReaderConfig(max_roadgraph_points=8)):
        with pytest.raises(ValueError, match="max_agents and max_roadgraph_points"):
            SceneReader([path], config)
    with pytest.raises(ValueError, match="unknown record format"):
        SceneReader([path], SLOTS, fmt="json")


# ---------------------------------------------------------------- fitted to the config, not the file
@pytest.mark.shared
def test_fewer_slots_than_tracks_keeps_every_agent_to_simulate(shared_dir):
    """The 257-track Scenario proto fitted to 96 slots: [96, ...] shapes, all 84 agents to simulate kept."""
    path = str(shared_dir / BIG_FILE)
    msg = protos.Scenario.FromString(tfrecord.read_first_record(path))
    full = reader.read_scene(Source(path, 0), ReaderConfig(max_agents=257, max_roadgraph_points=30_000))
    config = ReaderConfig(max_agents=96, max_roadgraph_points=30_000)
    with SceneReader([path], config) as r:
        s, info = r.read_with_info(Source(path, 0))
    assert tree_equal(s, reader.read_scene(Source(path, 0), config))
    a, fa = s.agents, full.agents
    assert a.valid.shape == (96, dt.NUM_STEPS) and a.id.shape == a.sim_mask.shape == (96,)
    assert s.roadgraph.valid.shape == (30_000,) and s.traffic_lights.valid.shape == (dt.NUM_STEPS, 16)
    assert info.num_agents == len(msg.tracks) == 257 and info.num_dropped_agents == 257 - 96
    assert int(fa.sim_mask.sum()) == int(a.sim_mask.sum()) == 84
    assert set(a.id[a.sim_mask].tolist()) == set(fa.id[fa.sim_mask].tolist())
    assert set(a.id[a.eval_mask].tolist()) == set(fa.id[fa.eval_mask].tolist()) and int(a.eval_mask.sum()) == 5
    assert a.is_sdc.sum() == 1 and int(a.id[a.is_sdc][0]) == int(fa.id[fa.is_sdc][0])
    s.validate()


@pytest.mark.shared
def test_every_shared_file_gets_the_configured_shapes(shared_dir):
    config = ReaderConfig(max_agents=96, max_roadgraph_points=4_000)
    files = sorted(str(p) for p in (shared_dir / "womd").glob("*.tfrecord"))
    with SceneReader(files, config) as r:
        shapes = {(r.read(src).agents.valid.shape, r.read(src).roadgraph.valid.shape) for src in r.sources()}
    assert shapes == {((96, dt.NUM_STEPS), (4_000,))}

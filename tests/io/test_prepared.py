"""Prepared scenes: bit-for-bit equal to the raw reader's, fingerprinted, atomic, refused when stale or truncated."""

import pathlib

import numpy as np
import pytest

from dpa_omf.io import example_writer, prepared, reader, tfrecord
from dpa_omf.io.tfrecord import DataError
from dpa_omf.testing.womd import bits_equal, random_scenario

CONFIG = reader.ReaderConfig(max_agents=24, max_roadgraph_points=320)


def prepare_all(files, out_dir, config):
    out = [str(out_dir / prepared.prepared_name(f)) for f in files]
    for f, o in zip(files, out, strict=True):
        assert prepared.prepare_file(f, o, config) == len(tfrecord.index_records(f))
    return out


def assert_same_scenes(files, prepared_files, config):
    raw = reader.SceneReader(files, config)
    with prepared.PreparedReader(prepared_files, config) as back:
        sources = raw.sources()
        assert len(back) == len(sources)
        for r, src in enumerate(sources):
            assert bits_equal(back[r], raw.read(src)), src


@pytest.fixture(scope="module")
def example_shards(tmp_path_factory):
    """2 tf.Example files of 3 synthetic scenes with 10-30 agents, 150-400 samples (some beyond the slots)."""
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("raw")
    files = []
    for f in range(2):
        scenes = [random_scenario(rng, int(rng.integers(10, 31)), int(rng.integers(150, 401)), f"s{f}-{i}")
                  for i in range(3)]
        files.append(str(folder / f"part-{f}.tfrecord"))
        example_writer.write_tfrecord(files[-1], scenes)
    return files


def test_synthetic_shards_read_back_bit_for_bit(example_shards, tmp_path):
    assert_same_scenes(example_shards, prepare_all(example_shards, tmp_path, CONFIG), CONFIG)


@pytest.mark.parametrize("slots", [(128, 30_000), (96, 5_000)])
def test_real_womd_both_formats_read_back_bit_for_bit(shared_dir, tmp_path, slots):
    womd = shared_dir / "womd"
    one = [str(womd / n) for n in ("motion_data_one_example.tfrecord", "motion_data_one_scenario.tfrecord",
                                   "womd_scenario_input.tfrecord")]
    # a multi-record Scenario-proto shard: both real scenarios, twice
    protos = [data for f in one[1:] for _, data in tfrecord.iter_records(f)]
    multi = str(tmp_path / "scenarios.tfrecord")
    tfrecord.write_records(multi, protos + protos)
    files = one + [multi]
    config = reader.ReaderConfig(*slots)
    out = tmp_path / "prepared"
    out.mkdir()
    prepared_files = prepare_all(files, out, config)
    assert [prepared.read_header(p)["source"]["format"] for p in prepared_files] == [
        "example", "scenario", "scenario", "scenario"]
    assert_same_scenes(files, prepared_files, config)


def test_other_reader_config_is_refused(example_shards, tmp_path):
    (out,) = prepare_all(example_shards[:1], tmp_path, CONFIG)
    other = reader.ReaderConfig(max_agents=32, max_roadgraph_points=320)
    assert prepared.reader_fingerprint(other) != prepared.reader_fingerprint(CONFIG)
    assert prepared.is_current(out, CONFIG, example_shards[0]) and not prepared.is_current(out, other,
                                                                                        example_shards[0])
    with pytest.raises(DataError, match="prepare again"):
        prepared.PreparedReader([out], other)


def test_truncated_file_is_refused(example_shards, tmp_path):
    (out,) = prepare_all(example_shards[:1], tmp_path, CONFIG)
    path = pathlib.Path(out)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated or corrupt"):
        prepared.PreparedReader([out], CONFIG)
    assert not prepared.is_current(out, CONFIG, example_shards[0])


def test_stopped_prepare_leaves_nothing_and_rerun_is_byte_identical(example_shards, tmp_path):
    src, out = example_shards[0], tmp_path / "a.scenes"
    calls = iter(range(100))
    assert prepared.prepare_file(src, out, CONFIG, should_stop=lambda: next(calls) == 2) is None
    assert list(tmp_path.iterdir()) == []
    prepared.prepare_file(src, out, CONFIG)
    prepared.prepare_file(src, tmp_path / "b.scenes", CONFIG)
    assert out.read_bytes() == (tmp_path / "b.scenes").read_bytes()


def test_bad_source_record_names_file_record_and_field(tmp_path, rng):
    scenes = [random_scenario(rng, 8, 100, f"r{i}") for i in range(3)]
    scenes[1].agents.x[0, 10] = np.nan  # valid at the current step
    src = str(tmp_path / "bad.tfrecord")
    example_writer.write_tfrecord(src, scenes)
    with pytest.raises(DataError, match=r"bad.tfrecord: record 1: field 'state/current/x'"):
        prepared.prepare_file(src, tmp_path / "bad.scenes", CONFIG)
    assert not (tmp_path / "bad.scenes").exists()

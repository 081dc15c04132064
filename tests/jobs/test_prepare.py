"""The prepare stage: raw scenes, read by every later stage when the slots match; a preempted run resumes to equal
bytes."""

import shutil
import sys

import jax
import job_processes as jp
import pytest

from dpa_omf.configs import pretrain as pretrain_config
from dpa_omf.io import pipeline as pipe
from dpa_omf.io import prepared, reader
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import data as data_job
from dpa_omf.jobs import evaluate, prepare, pretrain, stages
from dpa_omf.jobs import workdir as wdir
from dpa_omf.testing.womd import bits_equal, tree_equal
from dpa_omf.train import checkpointing


@pytest.fixture(scope="module")
def data_workdir(tmp_path_factory):
    """The smoke synthetic data (16 train scenes in 2 shards, 8 valid)."""
    wd = tmp_path_factory.mktemp("prepare_data")
    assert stages.ensure("data", pretrain_config.get_config("smoke"), wd) == 0
    return wd


def _copy(data_workdir, tmp_path, name):
    wd = tmp_path / name
    shutil.copytree(data_workdir / "data", wd / "data")
    return wd


def _files(wd):
    return {p.relative_to(wd): p.read_bytes() for p in sorted((wd / prepare.STAGE).rglob(f"*{prepared.SUFFIX}"))}


def test_prepared_scenes_are_the_raw_ones_and_pretraining_reads_them(data_workdir, tmp_path):
    c = pretrain_config.get_config("smoke")
    wd = _copy(data_workdir, tmp_path, "wd")
    assert not prepare.ready(c, wd) and pretrain._pipeline_config(c, str(wd), "train").file_patterns == tuple(
        data_job.split_files(c, wd, "train"))
    assert stages.ensure("prepare", c, wd) == 0
    assert prepare.ready(c, wd)
    for split in data_job.SPLITS:
        raw = reader.SceneReader(data_job.split_files(c, wd, split), cfg_lib.reader(c))
        ready = prepared.PreparedReader(prepare.split_files_or_raw(c, wd, split), cfg_lib.reader(c))
        assert len(ready) == len(raw.sources()) > 0
        assert all(tree_equal(ready[r], raw.read(s)) for r, s in enumerate(raw.sources()))
    config = pretrain._pipeline_config(c, str(wd), "train")
    assert all(f.endswith(prepared.SUFFIX) for f in config.file_patterns)
    fast = pipe.ScenarioPipeline(config, 0, 1)
    slow = pipe.ScenarioPipeline(pretrain._pipeline_config(c, str(data_workdir), "train"), 0, 1)
    assert fast.prepared and not slow.prepared
    assert all(tree_equal(next(fast), next(slow)) for _ in range(4))
    other = pretrain_config.get_config("smoke")
    other.data.num_agents = 24  # other slots: the prepared files do not serve it
    assert not prepare.ready(other, wd)
    assert prepare.split_files_or_raw(other, wd, "train") == data_job.split_files(other, wd, "train")


def test_curation_alignment_and_evaluation_read_the_raw_scenes_from_the_prepared_files(data_workdir, tmp_path,
                                                                                         monkeypatch):
    c = pretrain_config.get_config("smoke")
    wd = _copy(data_workdir, tmp_path, "wd")
    assert type(prepare.open_scenes(c, wd, "valid")) is reader.SceneReader  # not prepared yet: the raw shards
    for stage in ("curate", "evaluate"):  # both read scenes through open_scenes, so the graph prepares them first
        order = stages.needed(stage, c)
        assert order.index("data") < order.index("prepare") < order.index(stage)
    assert stages.ensure("prepare", c, wd) == 0
    for split in data_job.SPLITS:
        files = data_job.split_files(c, wd, split)
        raw = reader.SceneReader(files, cfg_lib.reader(c))
        want = {src: raw.read(src) for src in raw.sources()}
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "tensorflow", None)  # the stages after prepare read without TensorFlow
            fast = prepare.open_scenes(c, wd, split)
            assert isinstance(fast, prepared.PreparedSceneReader)
            assert fast.files == raw.files and fast.sources() == raw.sources()  # what curation and evaluation record
            for src, scene in want.items():
                got = fast.read(src)
                assert bits_equal(got, scene), src
                assert all(x.flags.writeable for x in jax.tree.leaves(got))
        some = prepare.open_scenes(c, wd, split, files[1:])  # alignment: the curated shards' files
        assert isinstance(some, prepared.PreparedSceneReader) and some.sources() == raw.sources()[raw.num_records[0]:]
    held, sources = evaluate.held_out_sources(c, str(wd))
    assert isinstance(held, prepared.PreparedSceneReader) and sources
    with pytest.raises(ValueError, match="not one of"):
        held.read(reader.Source("elsewhere.tfrecord", 0))
    other = pretrain_config.get_config("smoke")
    other.data.num_agents = 24  # other slots: the raw shards again
    assert type(prepare.open_scenes(other, wd, "train")) is reader.SceneReader


def test_preempted_prepare_resumes_to_the_same_bytes(data_workdir, tmp_path, monkeypatch):
    c = pretrain_config.get_config("smoke")
    whole = _copy(data_workdir, tmp_path, "whole")
    assert prepare.run(c, str(whole), "fp") == 0
    polls = {"n": 0}

    def stop_on_the_twelfth_poll(self):
        polls["n"] += 1
        return polls["n"] >= 12  # the first train shard (8 scenes) is done, the second is not

    wd = _copy(data_workdir, tmp_path, "stopped")
    with monkeypatch.context() as m:
        m.setattr(checkpointing.PreemptionFlag, "is_set", stop_on_the_twelfth_poll)
        assert prepare.run(c, str(wd), "fp") == checkpointing.EXIT_PREEMPTED
    assert len(_files(wd)) == 1 and wdir.read_summary(wd, prepare.STAGE) is None
    assert not list((wd / prepare.STAGE).rglob("*.tmp*"))
    assert prepare.run(c, str(wd), "fp") == 0
    assert wdir.read_summary(wd, prepare.STAGE)["files_kept_process0"] == 1
    assert _files(wd) == _files(whole) and len(_files(wd)) == 4  # 2 train + 2 valid shards


@pytest.mark.slow  # two jax.distributed processes (~1 min)
def test_two_processes_share_the_shards_and_write_the_same_files(data_workdir, tmp_path):
    c = pretrain_config.get_config("smoke")
    one = _copy(data_workdir, tmp_path, "one")
    assert prepare.run(c, str(one), "fp") == 0
    two = _copy(data_workdir, tmp_path, "two")
    results = jp.wait(jp.two_processes(["--config=configs/pretrain.py:smoke", "--config.job=prepare"], two))
    for i, (rc, err) in enumerate(results):
        assert rc == 0, f"process {i}: {err[-3000:]}"
    assert _files(two) == _files(one)
    summary = wdir.read_summary(two, prepare.STAGE)
    assert summary["files_written_process0"] == 2  # shard 0 of each split; process 1 wrote the other two

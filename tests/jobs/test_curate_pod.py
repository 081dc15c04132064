"""The curate job at pod scale: the same shard files whatever the processes, devices, batching and preemptions.

Every run curates the 16 smoke training scenes once (``rankings_per_example=1``) into 4 shards of 4 scenes
from one data and pretrain stage (made once, copied into each run's workdir), so every run must write the
same 4 files byte for byte. The reference is one process with 4 fake devices (a separate process); the
others: two jax.distributed processes of 2 devices each, one device ranking 1 or 4 scenes per step, and a
run stopped by SIGTERM mid-shard then restarted (the last three in the test process, on one of its devices).
"""

import json
import os
import signal

import jax
import job_processes as jp
import numpy as np
import pytest

from dpa_omf.configs import curate as curate_config
from dpa_omf.jobs import curate, stages
from dpa_omf.jobs import workdir as wd
from dpa_omf.train import checkpointing, sharding, stage_log

NUM_SHARDS = 4  # 16 scenes, 4 per shard
OVERRIDES = {"rankings_per_example": 1.0, "scenes_per_shard": 4, "pictures": False}
CURATE = ["--config=configs/curate.py:smoke"] + [f"--config.curate.{k}={v}" for k, v in OVERRIDES.items()]
SHARDS = [curate.shard_name(k, NUM_SHARDS) for k in range(NUM_SHARDS)]


def _config(**curate_overrides):
    c = curate_config.get_config("smoke")
    for k, v in {**OVERRIDES, **curate_overrides}.items():
        c.curate[k] = v
    return c


def _shards(workdir) -> dict[str, bytes]:
    """Every file the curate stage wrote whose name starts with ``shard-`` (finished and partial), as bytes."""
    return {p.name: p.read_bytes() for p in sorted((workdir / "curate").glob("shard-*"))}


def _summary(workdir) -> dict:
    return json.loads((workdir / "curate" / "summary.json").read_text())


def _assert_same_shards(workdir, reference) -> None:
    got, want = _shards(workdir), _shards(reference)
    assert sorted(got) == sorted(want) == SHARDS
    for name in SHARDS:
        if got[name] != want[name]:  # say which arrays differ
            a, b = np.load(workdir / "curate" / name), np.load(reference / "curate" / name)
            diff = [k for k in b.files if not np.array_equal(a[k], b[k])]
            pytest.fail(f"{name} differs from the reference: arrays {diff or '(none: the file bytes only)'}")


def _write_rows(path, shard, n: int) -> None:
    """A partial file holding the first ``n`` rankings of ``shard`` (what a run stopped after them saves)."""
    np.savez(path, **{k: shard[k][:n] for k in shard.files if k != "files"})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A workdir with the smoke data and pretrain stages (made once; every curate run starts from a copy)."""
    wd = tmp_path_factory.mktemp("pretrained")
    assert stages.ensure("pretrain", _config(), wd) == 0
    return wd


@pytest.fixture
def workdir(pretrained, tmp_path):
    """A fresh workdir holding copies of the pretrained one's data and pretrain stages."""
    return jp.copy_stages(pretrained, tmp_path / "wd", "data", "pretrain")


@pytest.fixture(scope="module")
def reference(pretrained, tmp_path_factory):
    """The reference run: one process, 4 fake CPU devices (1 scene per device per step: 4 per step)."""
    wd = jp.copy_stages(pretrained, tmp_path_factory.mktemp("reference") / "wd", "data", "pretrain")
    (rc, err), = jp.wait([jp.launch(CURATE, wd, num_devices=4, multihost="no")])
    assert rc == 0, err[-3000:]
    summary = _summary(wd)
    assert summary["processes"] == 1 and summary["devices_per_process"] == 4 and summary["scenes_per_step"] == 4
    assert summary["shards_this_run_by_process"] == [[0, 1, 2, 3]]
    assert summary["num_examples"] == 16
    return wd


@pytest.fixture
def one_device(monkeypatch):
    """In-process runs on one of the test process's 8 devices."""
    monkeypatch.setattr(curate, "local_mesh", lambda: sharding.make_mesh(devices=jax.devices()[:1]))


def test_process_shards_split_every_shard_once():
    for num_shards in range(10):
        for process_count in range(1, 6):
            shares = [wd.process_share(num_shards, p, process_count) for p in range(process_count)]
            assert sorted(k for share in shares for k in share) == list(range(num_shards))  # all, each once
            for p, share in enumerate(shares):
                assert share == sorted(share) and all(k % process_count == p for k in share)
            assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced


@pytest.mark.slow
def test_two_processes_write_the_shards_of_one_process(tmp_path, pretrained, reference):
    """2 processes x 2 devices: the same shard files as 1 process x 4 devices; each process ranked its share."""
    wd = jp.copy_stages(pretrained, tmp_path / "wd", "data", "pretrain")
    for i, (rc, err) in enumerate(jp.wait(jp.two_processes(CURATE, wd, num_devices=2))):
        assert rc == 0, f"process {i}: {err[-3000:]}"
    _assert_same_shards(wd, reference)
    summary = _summary(wd)
    assert summary["processes"] == 2 and summary["devices_per_process"] == 2 and summary["scenes_per_step"] == 2
    # Which process wrote which shard, as the processes report it (gathered by process 0): shard k by k % 2.
    assert summary["shards_this_run_by_process"] == [[0, 2], [1, 3]]
    want = _summary(reference)
    for key in ("num_examples", "num_pairs", "preferred_mean_distance", "unpreferred_mean_distance",
                "ot_ade_rank_correlation"):
        assert summary[key] == want[key], key


@pytest.mark.parametrize("scenes_per_device", [1, 4])
def test_scenes_per_device_changes_no_shard(workdir, reference, one_device, scenes_per_device):
    """One device ranking 1 or 4 scenes per step (the reference: 4 devices x 1): the same files."""
    assert stages.ensure("curate", _config(scenes_per_device=scenes_per_device), workdir) == 0
    _assert_same_shards(workdir, reference)
    assert _summary(workdir)["scenes_per_step"] == scenes_per_device


@pytest.mark.slow
def test_sigterm_mid_shard_then_restart_gives_the_uninterrupted_shards(workdir, reference, one_device,
                                                                       monkeypatch):
    """SIGTERM after 6 of 16 one-scene steps (shard 0 done, 2 of shard 1's 4 scenes ranked): exit 75 with
    shard 0 and shard 1's 2 rankings saved; the restart (4 scenes per step: a changed batch) ranks only the
    10 scenes left and ends with the uninterrupted run's files, none left over."""
    steps, stop = [], True
    rank_step = curate._ShardRanker.rank_step

    def counting_rank_step(self, step):
        out = rank_step(self, step)
        steps.append(len(step))
        if len(steps) == 6 and stop:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to the job's handler
        return out

    monkeypatch.setattr(curate._ShardRanker, "rank_step", counting_rank_step)
    assert stages.ensure("curate", _config(scenes_per_device=1), workdir) == checkpointing.EXIT_PREEMPTED
    assert steps == [1] * 6
    saved = _shards(workdir)
    partial = curate.partial_path(workdir / "curate" / SHARDS[1]).name
    assert sorted(saved) == [SHARDS[0], partial]
    assert saved[SHARDS[0]] == _shards(reference)[SHARDS[0]]
    rows, want = np.load(workdir / "curate" / partial), np.load(reference / "curate" / SHARDS[1])
    assert len(rows["repeat"]) == 2
    for k in rows.files:  # the finished rankings, as the uninterrupted run has them
        np.testing.assert_array_equal(rows[k], want[k][:2], err_msg=k)
    assert not (workdir / "curate" / "summary.json").exists()

    # A kill between a shard's write and its partial file's removal leaves both: the restart must neither
    # read nor keep that partial file.
    _write_rows(curate.partial_path(workdir / "curate" / SHARDS[0]), np.load(reference / "curate" / SHARDS[0]), 2)
    steps.clear()
    stop = False
    assert stages.ensure("curate", _config(scenes_per_device=4), workdir) == 0
    assert steps == [2, 4, 4]  # the rest of shard 1, then shards 2 and 3: nothing ranked twice
    _assert_same_shards(workdir, reference)  # and no partial file left
    assert _summary(workdir)["shards_this_run_by_process"] == [[1, 2, 3]]
    assert _summary(workdir)["num_examples"] == 16


def test_partial_files_are_no_shards(tmp_path, reference):
    """A partial file beside the finished shards (left by a kill between a shard's write and the partial
    file's removal) is not read as rankings: the preference set has every ranking once."""
    wd = jp.copy_stages(reference, tmp_path / "wd", "data", "curate")
    _write_rows(curate.partial_path(wd / "curate" / SHARDS[1]), np.load(wd / "curate" / SHARDS[1]), 2)
    assert [p.name for p in curate.shard_files(str(wd))] == SHARDS
    got, want = curate.load_shards(str(wd)), curate.load_shards(str(reference))
    assert len(got["repeat"]) == 16
    for k in want.keys() - {"files"}:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ----------------------------------------------------------------------------- alignment on the curated shards


def _align_losses(workdir, folder: str) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in stage_log.read_metrics(workdir / folder / "metrics.jsonl")
            if "loss" in r]


@pytest.mark.slow
def test_two_processes_align_online_as_one_process(tmp_path, pretrained):
    """Online DPA-OMF, 2 processes x 1 device: the losses of 1 process x 2 devices at every step (each
    process reads its half of every global batch and ranks its scenes' rollouts inside the round). With
    the on-device Sinkhorn solver, curation included: the on-device exact solver compiles for minutes on a
    CPU. The batches' split of the pair methods is tested in tests/jobs/test_align.py."""
    job = ["--config=configs/align.py:smoke,online", "--config.job=align", "--config.align.realism_scenes=0",
           "--config.curate.solver=sinkhorn", *CURATE[1:]]
    single, multi = (jp.copy_stages(pretrained, tmp_path / name, "data", "pretrain") for name in ("single", "multi"))
    (rc, err), = jp.wait([jp.launch(job, single, num_devices=2, multihost="no")])
    assert rc == 0, err[-3000:]
    for i, (rc, err) in enumerate(jp.wait(jp.two_processes(job, multi, num_devices=1))):
        assert rc == 0, f"process {i}: {err[-3000:]}"
    want, got = _align_losses(single, "align_online"), _align_losses(multi, "align_online")
    assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5)
    summary = json.loads((multi / "align_online" / "summary.json").read_text())
    assert summary["process_count"] == 2 and summary["num_devices"] == 2 and summary["online_solver"] == "sinkhorn"
    assert summary["eval_pref_accuracy"] == pytest.approx(
        json.loads((single / "align_online" / "summary.json").read_text())["eval_pref_accuracy"], abs=1e-6)

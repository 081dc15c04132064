"""A workdir that cannot be silently corrupted (dpa_omf/jobs/workdir.py, stages.py, data.py, launch.py).

The stage graph's own rules are tested on stand-in stages (their ``run`` writes files and a summary
the way a real stage does), so these tests take seconds: the recorded ``config.json`` and a resume
only with that config, the seal (the list of outputs with sizes and hashes) and its verification on
reuse, consumers reading the listed files, the workdir lock, the WOMD input checks of the data stage,
and the launcher's one-line errors. The real jobs, killed in every stage and launched twice at once,
are in test_workdir_kill.py (slow).
"""

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from dpa_omf.configs import align as align_config
from dpa_omf.configs import data as data_config
from dpa_omf.io import example_writer, tfrecord
from dpa_omf.jobs import curate, stages
from dpa_omf.jobs import data as data_job
from dpa_omf.jobs import workdir as wd
from dpa_omf.testing import womd as fake_womd

REPO = pathlib.Path(__file__).resolve().parents[2]


def _stand_in(monkeypatch, name: str, calls: list, *, stop_after: int | None = None):
    """Replaces GRAPH[name].run by one that writes two files and its summary (or stops with 75 first)."""

    def run(config, root, fp):
        out = wd.stage_dir(root, stages.GRAPH[name].folder_of(config))
        out.mkdir(parents=True, exist_ok=True)
        calls.append(sorted(p.name for p in out.iterdir()))
        (out / "part-0.bin").write_bytes(b"a" * 100)
        if stop_after == len(calls):
            return 75
        (out / "sub").mkdir(exist_ok=True)
        (out / "sub" / "part-1.bin").write_bytes(bytes(range(50)))
        wd.write_summary(root, stages.GRAPH[name].folder_of(config), {"config_fingerprint": fp})
        return 0

    monkeypatch.setitem(stages.GRAPH, name, dataclasses.replace(stages.GRAPH[name], run=run))


def _config(**data):
    c = data_config.get_config("smoke")
    for k, v in data.items():
        setattr(c.data, k, v)
    return c


def test_each_stage_records_its_config_and_seals_its_outputs(tmp_path, monkeypatch):
    calls = []
    _stand_in(monkeypatch, "data", calls)
    c = _config()
    assert stages.ensure("data", c, tmp_path) == 0
    out = tmp_path / "data"
    recorded = wd.read_json(out / wd.CONFIG)
    assert recorded == stages.recorded_config("data", c, tmp_path)
    assert set(recorded) == {"data", "seed"}  # only the sections the stage fingerprints
    assert wd.digest(recorded) == stages.fingerprint("data", c, tmp_path)
    outputs = wd.read_summary(tmp_path, "data")["outputs"]
    assert outputs == {"part-0.bin": {"size": 100, "sha256": wd._sha256(out / "part-0.bin")},
                       "sub/part-1.bin": {"size": 50, "sha256": wd._sha256(out / "sub" / "part-1.bin")}}
    assert stages.ensure("data", c, tmp_path) == 0 and len(calls) == 1  # reused


def test_a_finished_stage_of_another_config_names_the_keys_and_the_restart_flag(tmp_path, monkeypatch):
    calls = []
    _stand_in(monkeypatch, "data", calls)
    assert stages.ensure("data", _config(), tmp_path) == 0
    other = _config(num_agents=8)
    with pytest.raises(wd.WorkdirError, match=r"data.num_agents=16 \(now 8\).*--restart=data"):
        stages.ensure("data", other, tmp_path)
    assert stages.ensure("data", other, tmp_path, restart=frozenset({"data"})) == 0
    assert calls == [[wd.CONFIG], [wd.CONFIG]]  # the restart started from an empty folder (but its config)
    assert wd.read_config(tmp_path, "data")["data"]["num_agents"] == 8


def test_an_unfinished_stage_resumes_only_with_the_config_it_started_with(tmp_path, monkeypatch):
    # Reproduction 1 of the issue: a stopped stage re-run with another learning rate mixed two runs.
    calls = []
    _stand_in(monkeypatch, "data", calls, stop_after=1)
    assert stages.ensure("data", _config(), tmp_path) == 75
    with pytest.raises(wd.WorkdirError, match=r"unfinished 'data' stage .*data.num_agents=16 \(now 8\)"
                                              r".*--restart=data"):
        stages.ensure("data", _config(num_agents=8), tmp_path)
    assert len(calls) == 1  # refused before running
    assert stages.ensure("data", _config(), tmp_path) == 0  # the same config resumes
    assert calls[1] == [wd.CONFIG, "part-0.bin"]


def test_an_unfinished_folder_without_a_recorded_config_is_refused(tmp_path, monkeypatch):
    _stand_in(monkeypatch, "data", [])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "part-0.bin").write_bytes(b"old")
    with pytest.raises(wd.WorkdirError, match=r"records no config.*--restart=data"):
        stages.ensure("data", _config(), tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "delete", "same_size_edit"])
def test_damaged_or_missing_outputs_are_refused_by_name(tmp_path, monkeypatch, damage):
    # Reproduction 2: a truncated checkpoint file or a deleted shard was reused.
    _stand_in(monkeypatch, "data", [])
    assert stages.ensure("data", _config(), tmp_path) == 0
    path = tmp_path / "data" / "sub" / "part-1.bin"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:25])
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes(bytes(reversed(range(50))))
    with pytest.raises(wd.WorkdirError, match=f"{re.escape(str(path))}.*--restart=data"):
        stages.ensure("data", _config(), tmp_path)
    assert stages.ensure("data", _config(), tmp_path, restart=frozenset({"data"})) == 0


def test_a_large_stage_is_checked_by_sizes_only(tmp_path, monkeypatch):
    _stand_in(monkeypatch, "data", [])
    monkeypatch.setattr(wd, "HASH_BUDGET", 149)  # the stand-in writes 150 bytes
    assert stages.ensure("data", _config(), tmp_path) == 0
    outputs = wd.read_summary(tmp_path, "data")["outputs"]
    assert [o["sha256"] for o in outputs.values()] == [None, None]
    path = tmp_path / "data" / "part-0.bin"
    path.write_bytes(b"b" * 100)  # same size: not seen
    assert stages.ensure("data", _config(), tmp_path) == 0
    path.write_bytes(b"b" * 99)
    with pytest.raises(wd.WorkdirError, match="has 99 bytes, the stage wrote 100"):
        stages.ensure("data", _config(), tmp_path)


def test_a_summary_written_but_not_sealed_is_sealed_on_the_next_run(tmp_path, monkeypatch):
    """A kill between the stage's summary (its last act) and the seal: the stage finished, and is reused."""
    calls = []
    _stand_in(monkeypatch, "data", calls)
    c = _config()
    assert stages.ensure("data", c, tmp_path) == 0
    summary = wd.read_summary(tmp_path, "data")
    (tmp_path / "data" / wd.SUMMARY).write_text(json.dumps({"config_fingerprint": summary["config_fingerprint"]}))
    assert stages.ensure("data", c, tmp_path) == 0 and len(calls) == 1
    assert wd.read_summary(tmp_path, "data")["outputs"] == summary["outputs"]


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b'{"config_fingerprint": '])
def test_a_corrupt_summary_names_the_file(tmp_path, monkeypatch, content):
    _stand_in(monkeypatch, "data", [])
    assert stages.ensure("data", _config(), tmp_path) == 0
    (tmp_path / "data" / wd.SUMMARY).write_bytes(content)
    with pytest.raises(wd.WorkdirError, match=f"{re.escape(str(tmp_path / 'data' / wd.SUMMARY))} is corrupt"):
        stages.ensure("data", _config(), tmp_path)


def test_restart_names_only_stages_of_the_job(tmp_path):
    with pytest.raises(wd.UserError, match="--restart=align: not a stage of the 'data' job"):
        stages.run_job(data_config.get_config("smoke"), str(tmp_path), restart=["align"])


def test_consumers_read_the_listed_shards_never_a_glob(tmp_path):
    out = tmp_path / "curate"
    out.mkdir()
    names = [curate.shard_name(k, 2) for k in range(2)]
    for k, name in enumerate(names):
        np.savez(out / name, repeat=np.full(3, k))
    (out / wd.SUMMARY).write_text('{"config_fingerprint": "x"}')
    wd.seal(tmp_path, "curate", "x")
    np.savez(out / curate.shard_name(2, 3), repeat=np.zeros(3))  # a stray shard of another run
    assert [p.name for p in curate.shard_files(str(tmp_path))] == names
    assert curate.shard_files(str(tmp_path), num_shards=2) == [out / n for n in names]
    (out / names[1]).unlink()
    with pytest.raises(wd.WorkdirError, match=f"{re.escape(str(out / names[1]))} is missing.*--restart=curate"):
        wd.verify_outputs(tmp_path, "curate", wd.read_summary(tmp_path, "curate")["outputs"], "curate")


def test_synthetic_data_files_are_the_listed_ones(tmp_path, monkeypatch):
    c = _config()
    with pytest.raises(wd.UserError, match="run the data job first"):
        data_job.split_files(c, tmp_path, "train")
    _stand_in(monkeypatch, "data", [])
    assert stages.ensure("data", c, tmp_path) == 0
    out = tmp_path / "data"
    for name in ("synthetic.tfrecord-00000-of-00001", "dataset_info.json"):
        (out / "train" / name).parent.mkdir(exist_ok=True)
        (out / "train" / name).write_bytes(b"x")
    (out / wd.SUMMARY).write_text(json.dumps({"config_fingerprint": stages.fingerprint("data", c, tmp_path)}))
    wd.seal(tmp_path, "data", stages.fingerprint("data", c, tmp_path))
    (out / "train" / "synthetic.tfrecord-00001-of-00002").write_bytes(b"x")  # not listed
    assert data_job.split_files(c, tmp_path, "train") == [str(out / "train" / "synthetic.tfrecord-00000-of-00001")]


# ----------------------------------------------------------------------------- the lock


def test_one_job_per_workdir(tmp_path):
    with wd.hold_lock(tmp_path):
        second = wd.hold_lock(tmp_path)
        with pytest.raises(wd.WorkdirError, match=f"is in use by pid {os.getpid()} on"):
            second.__enter__()
    with wd.hold_lock(tmp_path):  # released at the end of the block
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = (f"import time; from dpa_omf.jobs import workdir as wd\nwith wd.hold_lock({str(tmp_path)!r}):\n"
            "    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(wd.WorkdirError, match=f"in use by pid {holder.pid} on"), wd.hold_lock(tmp_path):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with wd.hold_lock(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / wd.LOCK).read_text()


@pytest.mark.parametrize("kind", ["file", "read_only"])
def test_a_bad_workdir_is_refused(tmp_path, kind):
    root = tmp_path / "wd"
    if kind == "file":
        root.write_text("not a folder")
    else:
        root.mkdir()
        root.chmod(0o500)
        if os.access(root, os.W_OK):  # root ignores permissions
            pytest.skip("running as root")
    with pytest.raises(wd.WorkdirError, match=f"--workdir={re.escape(str(root))} is not a (writable )?folder"), \
            wd.hold_lock(root):
        pass


# ----------------------------------------------------------------------------- WOMD inputs


def _womd_file(path: pathlib.Path, n: int = 2) -> pathlib.Path:
    rng = np.random.default_rng(0)
    example_writer.write_tfrecord(str(path), [fake_womd.random_scenario(rng, num_agents=8, num_points=64)
                                              for _ in range(n)])
    return path


def _womd_config(train: pathlib.Path, valid: pathlib.Path):
    c = data_config.get_config("smoke")
    c.data.source = "womd"
    c.data.womd.train_pattern, c.data.womd.valid_pattern = str(train), str(valid)
    return c


@pytest.mark.parametrize("bad", ["random_bytes", "cut_in_half", "empty", "bad_crc"])
def test_bad_womd_inputs_stop_the_data_stage_before_it_looks_finished(tmp_path, bad):
    # Reproduction 4: random bytes or a file cut in half were marked finished; the corrected pattern was refused.
    good = _womd_file(tmp_path / "valid.tfrecord")
    path = tmp_path / "train.tfrecord"
    data = _womd_file(tmp_path / "ok.tfrecord").read_bytes()
    if bad == "random_bytes":
        path.write_bytes(np.random.default_rng(1).bytes(5000))
    elif bad == "cut_in_half":
        path.write_bytes(data[:len(data) // 2])
    elif bad == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(data[:-20] + bytes([data[-20] ^ 1]) + data[-19:])
    with pytest.raises(tfrecord.DataError, match=re.escape(str(path))):
        stages.ensure("data", _womd_config(path, good), tmp_path / "wd")
    assert wd.read_summary(tmp_path / "wd", "data") is None  # nothing that looks finished
    c = _womd_config(tmp_path / "ok.tfrecord", good)  # the corrected pattern is accepted
    assert stages.ensure("data", c, tmp_path / "wd") == 0
    summary = wd.read_summary(tmp_path / "wd", "data")
    assert (summary["train"], summary["train_records"], summary["valid_records"]) == (1, 2, 2)


def test_a_pattern_that_matches_nothing_is_a_user_error(tmp_path):
    c = _womd_config(tmp_path / "none-*.tfrecord", tmp_path / "none-*.tfrecord")
    with pytest.raises(wd.UserError, match=r"data\.womd\.train_pattern=.*matches no file"):
        stages.ensure("data", c, tmp_path / "wd")


# ----------------------------------------------------------------------------- the launcher's one-line errors


def _launch(args, workdir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpa_omf.launch", *args, f"--workdir={workdir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"))


def _assert_one_line(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stderr
    fatal = [line for line in out.stderr.splitlines() if line.startswith("FATAL")]
    assert len(fatal) == 1 and all(n in fatal[0] for n in needles), out.stderr
    assert "Traceback" not in out.stderr


def test_user_mistakes_end_in_one_line_and_exit_code_2(tmp_path):
    root = tmp_path / "wd"
    out = _launch(["--config=configs/data.py:smoke", "--config.data.source=womd",
                   f"--config.data.womd.train_pattern={tmp_path}/none-*"], root)
    _assert_one_line(out, "data.womd.train_pattern=", "matches no file")
    logs = list((root / "logs").glob("dpa_omf*"))
    assert any("Traceback" in p.read_text(errors="replace") for p in logs)  # the traceback is in the log
    _assert_one_line(_launch(["--config=configs/pretrain.py:smoke", "--config.pretrain.num_steps=-5"], root),
                     "invalid config")
    (tmp_path / "file").write_text("")
    out = _launch(["--config=configs/data.py:smoke", "--verbosity=1"], tmp_path / "file")
    assert out.returncode == 2 and "Traceback" in out.stderr  # --verbosity=1 shows it (and INFO lines)
    assert [line for line in out.stderr.splitlines() if line.startswith("FATAL")] == [
        f"FATAL: --workdir={tmp_path / 'file'} is not a folder (a file of that name exists); choose another "
        "--workdir"], out.stderr


def test_a_second_launch_on_a_held_workdir_is_refused(tmp_path):
    with wd.hold_lock(tmp_path):
        out = _launch(["--config=configs/data.py:smoke"], tmp_path)
    _assert_one_line(out, "is in use by pid", "wait for it to end, or use another --workdir")
    assert not (tmp_path / "data").exists()


def test_print_config_shows_the_resolved_config_and_stops(tmp_path):
    out = _launch(["--config=configs/align.py:smoke", "--config.align.optim.learning_rate=0.0005",
                   "--print_config"], tmp_path / "wd")
    assert out.returncode == 0, out.stderr
    assert "learning_rate: 0.0005" in out.stdout and "job: main" in out.stdout
    assert not (tmp_path / "wd").exists()


def test_reused_config_sections_are_those_of_the_graph(tmp_path):
    """config.json holds exactly the sections the stage fingerprints (and the seed), for every stage."""
    c = align_config.get_config("smoke")
    for name, stage in stages.GRAPH.items():
        if name == "submit":
            continue  # its fingerprint needs a checkpoint
        assert set(stages.recorded_config(name, c, tmp_path)) - {"extra"} == set(stage.sections) | {"seed"}


def test_a_new_stage_is_one_graph_entry(tmp_path, monkeypatch, capsys):
    """A stage added to GRAPH (and its run function) is a job of the launcher, runs after its prerequisites,
    records its config, is reused when finished and can be restarted, with no other list to edit."""
    calls, scored = [], []

    def score(config, root, fp):
        scored.append(fp)
        wd.write_summary(root, "score", {"config_fingerprint": fp})
        return 0

    monkeypatch.setitem(stages.GRAPH, "score", stages.Stage("score", (data_job.STAGE,), ("data",), score,
                                                            all_processes=True))
    _stand_in(monkeypatch, data_job.STAGE, calls)
    c = _config()
    assert "score" in stages.jobs() and stages.uses_devices("score") and not stages.uses_devices(data_job.STAGE)
    assert stages.run_job(c, str(tmp_path), job="score") == 0
    assert len(calls) == 1 and len(scored) == 1
    assert wd.read_config(tmp_path, "score") == stages.recorded_config("score", c, tmp_path)
    assert stages.run_job(c, str(tmp_path), job="score") == 0 and len(scored) == 1  # reused
    assert stages.run_job(c, str(tmp_path), job="score", restart=["score"]) == 0 and len(scored) == 2
    assert "[score] reused" in capsys.readouterr().err

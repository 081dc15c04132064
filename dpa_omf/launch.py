r"""The one entry point of every dpa_omf job.

  python -m dpa_omf.launch --config=configs/align.py[:variant] [--workdir=DIR] \
      [--config.train.num_steps=100 ...] [--multihost=auto|yes|no] [--dry_run]

It parses flags, applies process-wide JAX settings, starts JAX's distributed
runtime when (and only when) the process is part of a multi-host job, checks
the config before any compute, and dispatches on ``config.job`` to a
``run(config, workdir)`` function. All logic lives in those functions; this
file stays thin.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, optionally ':variant'.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Folder for every stage's outputs.")
_MULTIHOST = flags.DEFINE_enum(
    "multihost", "auto", ["auto", "yes", "no"],
    "Start jax.distributed: 'auto' detects a multi-host job from the environment "
    "(JAX_COORDINATOR_ADDRESS, SLURM with >1 task, multi-worker TPU VM, Open MPI).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Compile the sharded train step ahead of time, report memory per device, run nothing.")

# job name -> "module:function"; imported lazily so that the data job never imports the model.
JOBS = {
    "data": "dpa_omf.jobs.data:run",
    "pretrain": "dpa_omf.jobs.pretrain:run",
    "curate": "dpa_omf.jobs.curate:run",
    "align": "dpa_omf.jobs.align:run",
    "evaluate": "dpa_omf.jobs.evaluate:run",
}


def multihost_from_env(env: dict[str, str] | None = None) -> bool:
    """Whether the environment says this process is one of several of a job."""
    env = dict(os.environ if env is None else env)
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    return False


def init_distributed(mode: str, coordinator: str | None, num_processes: int | None,
                     process_id: int | None) -> bool:
    """Calls ``jax.distributed.initialize`` for a multi-host job; never otherwise."""
    explicit = coordinator is not None or num_processes is not None
    if mode == "no" or (mode == "auto" and not explicit and not multihost_from_env()):
        return False
    import jax

    kwargs = {}
    if coordinator is not None:
        kwargs["coordinator_address"] = coordinator
    if num_processes is not None:
        kwargs["num_processes"] = num_processes
    if process_id is not None:
        kwargs["process_id"] = process_id
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def resolve_job(job: str):
    if job not in JOBS:
        raise ValueError(f"config.job={job!r} is not one of {sorted(JOBS)}")
    module, fn = JOBS[job].split(":")
    return getattr(importlib.import_module(module), fn)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/align.py")
    from configs import common

    common.check_config(config)  # unknown keys are refused by the locked config; combinations here.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import jax

    jax.config.update("jax_threefry_partitionable", True)  # rng values independent of sharding
    init_distributed(_MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _DRY_RUN.value:
        from dpa_omf.train import aot

        aot.run(config, _WORKDIR.value)
        return
    run = resolve_job(config.job)
    logging.info("job %s -> %s", config.job, _WORKDIR.value)
    result = run(config, _WORKDIR.value)
    if isinstance(result, int) and result != 0:
        sys.exit(result)


def _parse_flags(argv):
    """absl flag parsing with a clear message for keys the locked config does not have."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # raised by ml_collections' config overrides, not flags.Error
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        sys.exit(f"FATAL: unknown config key {e} in {overrides}: the config is locked; every key lives in "
                 "configs/common.py (or configs/post_training.py)")
    except flags.Error as e:
        sys.exit(f"FATAL Flags parsing error: {e}")


def entry_point():
    # Make `configs` importable when the package is run from the repository root or installed.
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo_root not in sys.path:
        sys.path.insert(0, repo_root)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    entry_point()

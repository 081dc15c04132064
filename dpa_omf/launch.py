r"""The one entry point of every dpa_omf job.

  python -m dpa_omf.launch --config=configs/align.py[:variant] [--workdir=DIR] \
      [--config.train.num_steps=100 ...] [--multihost=auto|yes|no] [--dry_run] \
      [--compilation_cache=DIR|off] [--restart=STAGE[,STAGE]] [--print_config]

It parses flags, routes library logs to a file, applies process-wide JAX
settings (among them the persistent compilation cache, before anything
compiles: ``dpa_omf/train/compilation_cache.py``), starts JAX's distributed
runtime when (and only when) the process is part of a multi-host job, checks
the config before any compute, and runs the stage graph up to ``config.job``
(``dpa_omf/jobs/stages.py``; the main job, ``configs/align.py``, runs it up to
evaluate and prints the realism table).

One job at a time per workdir: process 0 holds an OS lock on ``WORKDIR/.lock``
for the job's life (``jobs/workdir.py``); a second launch is refused. A stage
folder made with another config is refused, naming the keys that differ;
``--restart=STAGE`` deletes it and runs it from scratch. ``--print_config``
prints the resolved config (after the variant and every override) and stops.

User mistakes (a config value, a missing or corrupt input or workdir file, a
bad workdir or flag: ``workdir.UserError``, ``io.tfrecord.DataError`` and
missing files) end in one line, ``FATAL: <what, where, what to do>``, and exit
code 2; their traceback goes to the log file, and to the terminal with
``--verbosity=1``. Any other exception is an internal error and keeps its
traceback.

The terminal shows one line per stage (running or reused, and why), progress
bars, warnings and the final table; everything else (orbax, absl, JAX INFO
lines) goes to the log file in ``WORKDIR/logs/`` (or ``--log_dir``). See it
all on the terminal with ``--alsologtostderr`` or ``--verbosity=1``.
"""

from __future__ import annotations

import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from dpa_omf import allocator

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
# compilation_cache.FLAG_HELP, written out: that module imports JAX, which the launcher loads only in main().
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Folder of JAX's persistent compilation cache, or 'off' (default: "
    "$DPA_OMF_COMPILATION_CACHE, else $JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/dpa_omf/jax_compilation_cache).")
_RESTART = flags.DEFINE_list(
    "restart", [], "Stages to delete and run again from scratch (e.g. --restart=align): for a stage folder "
    "made with another config, or damaged.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config and stop.")
EXIT_USER_ERROR = 2


def multihost_from_env(env: dict[str, str] | None = None) -> bool:
    """Whether the environment says this process is one of several of a job."""
    env = dict(os.environ if env is None else env)
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return True
    return int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1


def init_distributed(mode: str, coordinator: str | None, num_processes: int | None,
                     process_id: int | None) -> bool:
    """Calls ``jax.distributed.initialize`` for a multi-host job; never otherwise."""
    explicit = coordinator is not None or num_processes is not None
    if mode == "no" or (mode == "auto" and not explicit and not multihost_from_env()):
        return False
    import jax  # here, not at the top: the launcher parses flags and routes logs before JAX loads

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


def quiet_terminal() -> bool:
    """Until the job starts, only warnings reach the terminal (unless more is asked for); True when quieted."""
    f = flags.FLAGS
    if f.logtostderr or f.alsologtostderr or f.verbosity >= 1:
        return False
    logging.set_verbosity(logging.WARNING)
    return True


def route_logs(workdir: str) -> None:
    """Library chatter (INFO and up) to the log file in ``WORKDIR/logs`` (or ``--log_dir``); the terminal keeps
    warnings and errors. Called once the config is accepted, so a refused config writes nothing."""
    f = flags.FLAGS
    log_dir = f.log_dir or os.path.join(workdir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    logging.get_absl_handler().use_absl_log_file("dpa_omf", log_dir)
    f.stderrthreshold = "warning"
    logging.set_verbosity(logging.INFO)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/align.py")
    if _PRINT_CONFIG.value:
        print(config)
        return
    try:
        run(config)
    except Exception as e:  # a user error becomes one line; any other keeps its traceback
        if not is_user_error(e):
            raise
        if flags.FLAGS.verbosity >= 1:
            traceback.print_exc()
        else:
            logging.info("user error", exc_info=True)  # INFO: the log file only (the terminal keeps warnings)
        print(f"FATAL: {e}{_hint(e)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def is_user_error(e: BaseException) -> bool:
    """A mistake the user can fix: bad config values, input or workdir files, flags (not an internal error)."""
    # Here, not at the top: the launcher loads the package (and JAX, through jobs.workdir) only inside main().
    from dpa_omf.io import tfrecord
    from dpa_omf.jobs import workdir

    return isinstance(e, (workdir.UserError, tfrecord.DataError, FileNotFoundError, NotADirectoryError,
                          PermissionError))


def _hint(e: BaseException) -> str:
    """What to do, where the message itself does not say it."""
    from dpa_omf.io import tfrecord  # here, like every package import of the launcher: inside main() only

    if isinstance(e, tfrecord.DataError):
        return " (repair or leave out that file (data.womd.*_pattern), or change the config value it names)"
    if isinstance(e, OSError) and not e.strerror:
        return ": no such file"
    return ""


def run(config) -> None:
    """The job: JAX set-up, the config checks, the workdir lock, then the stage graph up to ``config.job``."""
    quiet = quiet_terminal()
    import jax  # after the logs are routed (JAX logs at import)

    from dpa_omf.train import compilation_cache  # imports JAX, so after the logs are routed like it

    jax.config.update("jax_threefry_partitionable", True)  # rng values independent of sharding
    compilation_cache.enable(_COMPILATION_CACHE.value)  # before anything compiles
    init_distributed(_MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    # Imported after jax.distributed.initialize, which must come before any JAX computation.
    from dpa_omf.jobs import stages, workdir

    # Unknown keys are refused by the locked config; combinations here (and the mesh and batches against the
    # devices for every job that trains), before anything is written.
    if not stages.uses_devices(config.job) and not _DRY_RUN.value:
        stages.check(config)
    else:
        stages.check(config, jax.device_count(), jax.process_count())
    with workdir.hold_lock(_WORKDIR.value):  # refuses a second job on this workdir before it writes anything
        if quiet:
            route_logs(_WORKDIR.value)
        if _DRY_RUN.value:
            from dpa_omf.jobs import dry_run  # only --dry_run needs it

            dry_run.run(config, _WORKDIR.value)
            return
        logging.info("job %s -> %s", config.job, _WORKDIR.value)
        code = stages.run_job(config, _WORKDIR.value, restart=_RESTART.value)
    if code:
        sys.exit(code)


def _parse_flags(argv):
    """absl flag parsing with a clear message for keys the locked config does not have (renamed ones name their new
    key)."""
    from dpa_omf.configs import common  # ml_collections only: the package's JAX modules load inside main()

    renamed = common.renamed_keys_error([a.split("=")[0].removeprefix("--config.") for a in argv[1:]
                                         if a.startswith("--config.")])
    if renamed:
        print(f"FATAL: {renamed}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # raised by ml_collections' config overrides, not flags.Error
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        print(f"FATAL: unknown config key {e} in {overrides}: the config is locked; every key lives in "
              "dpa_omf/configs/common.py (or dpa_omf/configs/post_training.py)", file=sys.stderr)
    except flags.Error as e:
        print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def entry_point():
    # TensorFlow only reads records here: keep its C++ start-up lines (oneDNN notice, INFO) off the terminal.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    # Make `configs` importable when the package is run from the repository root or installed.
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo_root not in sys.path:
        sys.path.insert(0, repo_root)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    allocator.ensure()  # first: glibc reads its malloc settings only at process start
    entry_point()

"""JAX's persistent compilation cache for every entry point: a second run of the same shapes loads, not compiles.

Contract: :func:`enable` is called once per process by each entry point (the launcher, ``python -m
dpa_omf.bench``, ``python -m dpa_omf.tools.realism_cli``), after flags are parsed and before anything
compiles. It picks the folder, in this order:

1. the ``--compilation_cache=DIR|off`` flag (the ``path`` argument), when given;
2. the environment variable ``DPA_OMF_COMPILATION_CACHE`` (``DIR`` or ``off``);
3. JAX's own ``JAX_COMPILATION_CACHE_DIR``, when set;
4. ``$XDG_CACHE_HOME/dpa_omf/jax_compilation_cache`` (``~/.cache/dpa_omf/...`` without ``XDG_CACHE_HOME``).

``off`` (any case) turns the cache off for the process, whatever JAX's own variables say. Otherwise every
compiled program is written (no minimum compile time, no minimum size: the metric's CPU programs compile in
fractions of a second, but there are dozens of them), so the second run of the same shapes on the same
machine and versions reads them all back. The folder grows without bound (JAX evicts only when
``jax_compilation_cache_max_size`` is set); deleting it at any time is safe. JAX treats the cache as trusted
code: never point it at a folder others can write to.

Multi-process jobs (``jax.distributed``) work unchanged, one folder or one per host: only process 0 writes
the cache (JAX's rule, in ``jax._src.compiler``), and JAX's cache keys include the process's own devices, so
only process 0 loads its programs on a second run; the other processes compile as without the cache (checked:
two processes of the smoke pretraining sharing one folder, second run: 57 hits on process 0, 57 misses and no
write on process 1). ``gs://`` folders need ``etils[epath]``. A folder that cannot be created is reported and
the process runs without the cache: it is an optimization, never a reason to fail a job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

ENV_VAR = "DPA_OMF_COMPILATION_CACHE"
OFF = "off"
FLAG_HELP = (f"Folder of JAX's persistent compilation cache, or '{OFF}' (default: ${ENV_VAR}, else "
             "$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/dpa_omf/jax_compilation_cache).")

log = logging.getLogger(__name__)


def default_dir(env: Mapping[str, str] | None = None) -> str:
    """``$XDG_CACHE_HOME/dpa_omf/jax_compilation_cache``, else under ``~/.cache``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dpa_omf", "jax_compilation_cache")


def resolve(path: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The cache folder chosen by the flag value ``path`` and the environment (see the module docstring);
    None when the cache is off. Local folders come back absolute; URLs (``gs://...``) as given."""
    env = os.environ if env is None else env
    choice = path or env.get(ENV_VAR) or env.get("JAX_COMPILATION_CACHE_DIR") or default_dir(env)
    if choice.strip().lower() == OFF:
        return None
    if "://" in choice:
        return choice
    return os.path.abspath(os.path.expanduser(choice))


def enable(path: str | None = None) -> str | None:
    """Turns JAX's persistent compilation cache on (or off) for this process; returns the folder or None.

    Args:
      path: the ``--compilation_cache`` flag's value: a folder, ``off``, or None (not given: the
        environment decides, see the module docstring).
    Returns:
      the folder every compiled program is read from and written to, or None when the cache is off.
    """
    folder = resolve(path)
    if folder is not None and "://" not in folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            log.warning("compilation cache off: cannot create %s (%s)", folder, e)
            folder = None
    # A cache JAX already opened in this process (another folder, or a test's) is closed, so the choice holds.
    jax_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", folder is not None)
    jax.config.update("jax_compilation_cache_dir", folder)
    if folder is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size limit, no override
    return folder

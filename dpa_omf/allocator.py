"""glibc malloc settings for every entry point, set before the interpreter starts.

XLA's CPU runtime allocates ~1 GB of scratch per training step; with glibc's
defaults the buffers are returned to the kernel and mapped afresh each step, and
the page faults take ~30% of a step (BUILD_NOTES.md, "Pretraining"; 1.65x on
``bench train`` with these settings). glibc reads its tunables only at process
start, so ``ensure()``, called first thing by each entry point
(``python -m dpa_omf.launch``, ``python -m dpa_omf.bench``,
``python -m dpa_omf.study``), re-executes the interpreter once with
``SETTINGS`` when they are absent.

It does nothing when the user set any ``MALLOC_*`` variable (their choice is
kept), when ``DPA_OMF_ALLOCATOR=system``, off Linux, or when the C library is
not glibc. Tests get them from ``tests/conftest.py`` (the xdist workers and the
jobs they start); a shell gets them with ``eval "$(python -m dpa_omf.allocator)"``,
which prints them as ``export`` lines.

Standard library only: it runs before anything else is imported.
"""

from __future__ import annotations

import os
import platform
import sys

SETTINGS = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
}
_OPT_OUT = "DPA_OMF_ALLOCATOR"  # "system": keep the C library's defaults


def wanted(env: dict[str, str] | None = None) -> bool:
    """Whether this process should run with ``SETTINGS`` and does not yet."""
    env = dict(os.environ if env is None else env)
    if env.get(_OPT_OUT, "").lower() == "system" or sys.platform != "linux":
        return False
    if any(k.startswith("MALLOC_") for k in env):
        return False  # the user's own settings, or ours already
    return platform.libc_ver()[0] == "glibc"


def ensure() -> None:
    """Re-executes this interpreter with ``SETTINGS`` (same arguments) when ``wanted()``; else returns."""
    if not wanted():
        return
    env = {**os.environ, **SETTINGS}
    argv = [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def shell_exports() -> str:
    """``export NAME=VALUE`` lines of ``SETTINGS`` (empty when not ``wanted()``)."""
    return "".join(f"export {k}={v}\n" for k, v in SETTINGS.items()) if wanted() else ""


if __name__ == "__main__":
    sys.stdout.write(shell_exports())

"""The entry points' malloc settings (dpa_omf/allocator.py): applied once before start, never over the user's."""

import os
import subprocess
import sys

import pytest

from dpa_omf import allocator

pytestmark = pytest.mark.skipif(not allocator.wanted({}), reason="not Linux with glibc")

_PROBE = ("from dpa_omf import allocator; allocator.ensure(); import os; "
          "print(sorted((k, v) for k, v in os.environ.items() if k.startswith('MALLOC_')))")


def _run(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "DPA_OMF_ALLOCATOR"}
    return subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_reexec_sets_the_settings_before_start():
    assert _run({}) == str(sorted(allocator.SETTINGS.items()))


def test_user_settings_and_opt_out_are_kept():
    assert _run({"MALLOC_ARENA_MAX": "4"}) == str([("MALLOC_ARENA_MAX", "4")])
    assert _run({"DPA_OMF_ALLOCATOR": "system"}) == "[]"
    assert not allocator.wanted({"MALLOC_ARENA_MAX": "4"})

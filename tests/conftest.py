"""Test setup: 8 fake CPU devices and the allocator settings, set before JAX is imported anywhere."""

import os
import pathlib
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One test run, one fresh compilation cache (dpa_omf/train/compilation_cache.py), never the user's: the process that
# starts the run (the xdist controller, or pytest alone) makes a new folder in the system temp dir (mode 0700: JAX
# runs what it loads) and removes it at the end (pytest_unconfigure); the xdist workers and every job the tests start
# inherit it through the environment, so a program compiled once (the smoke model's steps, the metric) is loaded by
# the other worker, the later jobs and a job's later runs. In-process tests use it through JAX's own variables, with
# every program written (as enable() does). The tests of the cache and the bench give their own folder.
# DPA_OMF_TEST_COMPILATION_CACHE=off turns it off everywhere (every program compiled where it is used).
TEST_CACHE_VAR = "DPA_OMF_TEST_COMPILATION_CACHE"
_made_cache: str | None = None
if "PYTEST_XDIST_WORKER" not in os.environ:
    if os.environ.get(TEST_CACHE_VAR, "").strip().lower() == "off":
        os.environ["DPA_OMF_COMPILATION_CACHE"] = "off"
        os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    else:
        _made_cache = tempfile.mkdtemp(prefix="dpa_omf_test_jax_cache_")
        os.environ.update({"DPA_OMF_COMPILATION_CACHE": _made_cache, "JAX_COMPILATION_CACHE_DIR": _made_cache,
                           "JAX_ENABLE_COMPILATION_CACHE": "true",
                           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"})
# The allocator settings of every entry point (dpa_omf/allocator.py): this process reads them too late, but the
# xdist workers, started after this file is loaded, and the jobs the tests start get them from birth.
from dpa_omf import allocator  # standard library only: imports no JAX

if allocator.wanted():
    os.environ.update(allocator.SETTINGS)

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("DPA_OMF_SHARED", REPO.parent / "shared"))


def pytest_unconfigure(config):
    """Removes the run's compilation cache, in the process that made it (the workers have ended by then)."""
    if _made_cache is not None:
        shutil.rmtree(_made_cache, ignore_errors=True)


@pytest.fixture
def shared_dir() -> pathlib.Path:
    """The ../shared folder with the real WOMD files and golden values.

    Fails (does not skip) when it is absent, unless DPA_OMF_ALLOW_NO_SHARED=1,
    in which case the test is skipped with a message saying so.
    """
    if not (SHARED / "womd").is_dir():
        msg = f"../shared not found at {SHARED} (set DPA_OMF_SHARED)"
        if os.environ.get("DPA_OMF_ALLOW_NO_SHARED") == "1":
            pytest.skip(msg)
        pytest.fail(msg)
    return SHARED


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def restore_compilation_cache():
    """For tests that turn JAX's persistent compilation cache on in the test process: afterwards the
    process compiles as before (JAX's cache settings restored, the opened cache closed)."""
    import jax  # here, not at the top: the test setup stays free of JAX; only the cache tests need it
    from jax.experimental.compilation_cache import compilation_cache as jax_cache

    names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
             "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    yield
    for n, v in saved.items():
        jax.config.update(n, v)
    jax_cache.reset_cache()


@pytest.fixture(scope="session")
def smoke_model():
    """The ``configs/align.py:smoke`` model, its initial parameters (key 0) and three synthetic scenes of that world:
    ``(model, params, scenes)``, shared by the tests that need a small model and real-shaped scenes."""
    import jax  # here, not at the top: the test setup stays free of JAX

    from dpa_omf.configs import align as align_config
    from dpa_omf.jobs import config as cfg_lib
    from dpa_omf.jobs import pretrain
    from dpa_omf.model import motion_lm as mlm
    from dpa_omf.synthetic import dataset as synthetic

    c = align_config.get_config("smoke")
    model = mlm.MotionLM(cfg_lib.model(c))
    params = pretrain.make_init_fn(model, c)(jax.random.key(0))
    scenes = [synthetic.generate_scenario(i, cfg_lib.synthetic_world(c)) for i in range(3)]
    return model, params, scenes

"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("DPA_OMF_SHARED", REPO.parent / "shared"))


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

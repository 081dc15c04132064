"""Atomic file writes: nothing written is ever left half-done.

Every writer goes through :func:`writing`: the content goes to a temporary
file in the destination folder (same file system), is flushed and fsynced,
then renamed over the destination in one step. A crash or an exception
mid-write leaves the old file (or none) and removes the temporary.

Standard library and numpy only: every layer of the package may use it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path to write; renames it to ``path`` when the block ends cleanly."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with writing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def jsonable(v: Any) -> Any:
    """Floats as floats, non-finite as None (JSON has no NaN), arrays via ``tolist``."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "tolist"):
        v = v.tolist()
        if isinstance(v, list):
            return jsonable(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n")


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())

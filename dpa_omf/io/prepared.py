"""Prepared scenes: WOMD records parsed and fitted once, stored as fixed-size binary records.

Parsing a WOMD record (protobuf decode, ``fit.fit_scenario``) costs ~10-50 ms
per scene on one CPU thread. A prepared file holds the same scenes already
fitted to a ``ReaderConfig``'s slots, so reading one is one ``pread`` and a few
``np.frombuffer`` views, and reading a batch one ``preadv`` per scene straight
into the batch's arrays (``PreparedReader.read_batch``).

File contract (one prepared file per source TFRecord, same record order):

* ``MAGIC`` (8 bytes), the header's length (uint64 little endian), the JSON
  header, spaces up to a multiple of ``ALIGN`` bytes (``data_offset``);
* then ``num_scenes`` records of ``record_bytes`` each: scene k of the source
  file, the leaves' raw bytes (C order, little endian) concatenated in
  ``jax.tree`` order of ``Scenario``;
* the header: ``format`` (``FORMAT``), ``version``, ``fingerprint``
  (``reader_fingerprint`` of the ``ReaderConfig`` the scenes were fitted
  with), ``reader`` (that config), ``source`` (``file``: the source's base name,
  ``format``: 'example' / 'scenario', ``bytes``: its size), ``num_scenes``,
  ``record_bytes`` and ``leaves``: ``[path, dtype, shape]`` of every array of
  one fitted ``Scenario``.

Why not ArrayRecord (grain's native format): measured on this 2-core VM with a
real WOMD scene fitted to 128 agents x 30,000 road-graph samples (1.5 MB), one
ArrayRecord read took 1.6-2.2 ms uncompressed and 4-5 ms with snappy / zstd,
a ``pread`` of the same bytes 0.4 ms; the raw reader takes ~10 ms. Through the
pipeline (``python -m dpa_omf.bench input``, one process, load average ~8 on
the 2 cores): 1,013 prepared vs 16 raw scenes/s at those slots, 11,700 vs 526
at 32 x 4,096. Fixed-size
records need no index and no decompression; the price is disk (uncompressed,
1.5 MB per WOMD-sized scene; zstd would make it ~0.6 MB).

A scene read back is bit for bit the ``reader.SceneReader`` scene of the same
source record: the reader's checks ran when the file was written
(``prepare_file``), and their ``DataError`` s name the source file, record and
field. ``PreparedReader`` gives random access over many prepared files by
global record index (file order, then record order), as ``reader.SceneReader``
does over TFRecords; it refuses a file whose fingerprint differs from the one
it expects, and a file whose size disagrees with its header (truncated).
``PreparedSceneReader`` is ``reader.SceneReader``'s interface (``files``,
``num_records``, ``sources()``, ``read(Source)``) over prepared files, its
sources naming the raw files they were prepared from: the stages that address
scenes by ``Source`` (curation, alignment, evaluation) read either one through
``jobs.prepare.open_scenes``, and what they record (source files, record
indices) does not depend on which.
Records carry no checksum (a crc32c of 1.5 MB costs more than the read).

No TensorFlow is imported here: reading needs only numpy.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import struct
from collections.abc import Callable, Sequence

import jax
import numpy as np

from dpa_omf import atomic
from dpa_omf import datatypes as dt
from dpa_omf.io import reader as scene_reader
from dpa_omf.io import tfrecord
from dpa_omf.io.fit import ReaderConfig
from dpa_omf.io.tfrecord import DataError

FORMAT = "dpa_omf.prepared_scenes"
VERSION = 1
MAGIC = b"DPAOMFPS"
ALIGN = 4096  # records start on a page boundary
SUFFIX = ".scenes"


def reader_fingerprint(config: ReaderConfig) -> str:
    """What a prepared scene depends on: the format version and the ``ReaderConfig`` (16 hex digits)."""
    if config.max_agents is None or config.max_roadgraph_points is None:
        raise ValueError(f"prepared scenes need a ReaderConfig with both slot counts set, got {config}")
    blob = json.dumps({"format": FORMAT, "version": VERSION, "reader": dataclasses.asdict(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepared_name(source_file: str) -> str:
    """The prepared file's base name for a source TFRecord (its base name + ``SUFFIX``)."""
    return os.path.basename(os.fspath(source_file)) + SUFFIX


@dataclasses.dataclass(frozen=True)
class SceneCodec:
    """Scene <-> bytes for a fixed ``[max_agents]`` x ``[max_roadgraph_points]`` Scenario layout."""

    num_agents: int
    num_points: int

    @functools.cached_property
    def _template(self) -> tuple[list[tuple[str, np.dtype, tuple[int, ...]]], jax.tree_util.PyTreeDef]:
        leaves, treedef = jax.tree_util.tree_flatten_with_path(dt.empty_scenario(self.num_agents, self.num_points))
        return [(jax.tree_util.keystr(p), np.asarray(x).dtype, np.shape(x)) for p, x in leaves], treedef

    @functools.cached_property
    def record_bytes(self) -> int:
        return sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for _, dtype, shape in self._template[0])

    def leaves_spec(self) -> list[list]:
        """``[path, dtype, shape]`` of each leaf (written to the header)."""
        return [[p, d.str, list(s)] for p, d, s in self._template[0]]

    def encode(self, scene: dt.Scenario) -> bytes:
        spec, treedef = self._template
        leaves, got = jax.tree.flatten(scene)
        if got != treedef:
            raise ValueError(f"scene structure {got} is not a Scenario")
        parts = []
        for (path, dtype, shape), x in zip(spec, leaves, strict=True):
            x = np.asarray(x)
            if x.shape != shape or x.dtype != dtype:
                raise ValueError(f"{path}: expected {dtype}{list(shape)}, got {x.dtype}{list(x.shape)}")
            parts.append(np.ascontiguousarray(x, dtype.newbyteorder("<")).tobytes())
        return b"".join(parts)

    @functools.cached_property
    def _views(self) -> list[tuple[np.dtype, int, int, tuple[int, ...]]]:
        """``(little-endian dtype, count, byte offset, shape)`` of each leaf in a record."""
        out, offset = [], 0
        for _, dtype, shape in self._template[0]:
            n = int(np.prod(shape, dtype=np.int64))
            out.append((dtype.newbyteorder("<"), n, offset, shape))
            offset += n * dtype.itemsize
        return out

    def decode(self, data: bytes) -> dt.Scenario:
        """The scene of ``encode``'s bytes (read-only arrays viewing ``data``, little-endian dtypes)."""
        if len(data) != self.record_bytes:
            raise ValueError(f"a prepared scene holds {len(data)} bytes, the layout {self.record_bytes}")
        leaves = [np.frombuffer(data, d, n, o).reshape(shape) for d, n, o, shape in self._views]
        return jax.tree.unflatten(self._template[1], leaves)


def header(config: ReaderConfig, source_file: str, source_format: str, num_scenes: int) -> dict:
    """The JSON header of a prepared file (see the module docstring)."""
    codec = SceneCodec(config.max_agents, config.max_roadgraph_points)
    return {"format": FORMAT, "version": VERSION, "fingerprint": reader_fingerprint(config),
            "reader": dataclasses.asdict(config),
            "source": {"file": os.path.basename(source_file), "format": source_format,
                       "bytes": os.path.getsize(source_file)},
            "num_scenes": num_scenes, "record_bytes": codec.record_bytes, "leaves": codec.leaves_spec()}


def _encode_header(head: dict) -> bytes:
    blob = json.dumps(head, sort_keys=True).encode()
    size = -(-(len(MAGIC) + 8 + len(blob)) // ALIGN) * ALIGN
    return (MAGIC + struct.pack("<Q", len(blob)) + blob).ljust(size, b" ")


def read_header(path: str) -> dict:
    """The header of a prepared file, with ``data_offset`` added; ``DataError`` naming the file if it is not one.

    Checks the magic, the version and that the file size is the header's
    ``data_offset + num_scenes * record_bytes`` (a truncated file is refused).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        start = f.read(len(MAGIC) + 8)
        if len(start) < len(MAGIC) + 8 or start[:len(MAGIC)] != MAGIC:
            raise DataError(path, None, None, "not a prepared-scenes file (bad magic)")
        (n,) = struct.unpack("<Q", start[len(MAGIC):])
        try:
            head = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(path, None, None, "not a prepared-scenes file (unreadable header)") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise DataError(path, None, None, "not a prepared-scenes file (format field)")
    if head.get("version") != VERSION:
        raise DataError(path, None, None, f"prepared-scenes version {head.get('version')}, this code reads {VERSION}")
    head["data_offset"] = -(-(len(MAGIC) + 8 + n) // ALIGN) * ALIGN
    want = head["data_offset"] + head["num_scenes"] * head["record_bytes"]
    size = os.path.getsize(path)
    if size != want:
        raise DataError(path, None, None, f"{size} bytes, the header announces {want} "
                        f"({head['num_scenes']} scenes): truncated or corrupt; prepare it again")
    return head


def is_current(path: str, config: ReaderConfig, source_file: str) -> bool:
    """Whether ``path`` is a complete prepared file of ``source_file`` under ``config``."""
    try:
        head = read_header(path)
    except (OSError, ValueError):
        return False
    src = head.get("source", {})
    return (head.get("fingerprint") == reader_fingerprint(config)
            and src.get("file") == os.path.basename(source_file)
            and src.get("bytes") == os.path.getsize(source_file))


def prepare_file(source_file: str, out_path: str, config: ReaderConfig, fmt: str = "auto",
                 should_stop: Callable[[], bool] = lambda: False) -> int | None:
    """Writes the prepared file of one source TFRecord; returns its scene count, or None if stopped.

    Every record goes through ``reader.read_scenes`` (CRC, parse, fit, checks),
    so a bad record raises the reader's ``DataError`` naming the source file,
    record and field. The file is written under a temporary name and renamed
    when complete (``atomic``): ``out_path`` is either absent or whole, and the
    same source and config always give the same bytes. ``should_stop`` is
    polled between records (preemption); a stopped call leaves no file.
    """
    source_file, out_path = os.fspath(source_file), os.fspath(out_path)
    codec = SceneCodec(config.max_agents, config.max_roadgraph_points)
    source_format = scene_reader.file_format(source_file, fmt)
    try:
        return _write(source_file, out_path, config, codec, source_format, should_stop)
    except _StoppedError:
        return None


def _write(source_file: str, out_path: str, config: ReaderConfig, codec: SceneCodec, source_format: str,
           should_stop: Callable[[], bool]) -> int:
    num_scenes = len(tfrecord.index_records(source_file))
    head = _encode_header(header(config, source_file, source_format, num_scenes))
    with atomic.writing(out_path) as tmp, open(tmp, "wb") as out:
        out.write(head)
        for scene in scene_reader.read_scenes(source_file, config, source_format):
            if should_stop():
                raise _StoppedError
            out.write(codec.encode(scene))
    return num_scenes


class _StoppedError(Exception):
    """Raised inside ``prepare_file``'s atomic write to discard a stopped file."""


class PreparedReader:
    """Random access to the scenes of prepared files, by global record index.

    Args:
      files: prepared files, in the order that defines the global index.
      config: the ``ReaderConfig`` the scenes must have been fitted with (each
        header's fingerprint must equal ``reader_fingerprint(config)``).

    Attributes:
      files: the files, as strings.
      num_records: scenes per file, ``[len(files)]`` int64.
      headers: each file's header.

    Picklable (grain worker processes): open file descriptors are dropped and
    reopened on first use.
    """

    def __init__(self, files: Sequence[str], config: ReaderConfig):
        self.files = [os.fspath(f) for f in files]
        self.config = config
        want = reader_fingerprint(config)
        self.headers = [read_header(f) for f in self.files]
        for f, head in zip(self.files, self.headers, strict=True):
            if head["fingerprint"] != want:
                raise DataError(f, None, None, f"prepared with reader config {head['reader']} (fingerprint "
                                f"{head['fingerprint']}), not {dataclasses.asdict(config)} ({want}); prepare again")
        self.num_records = np.array([h["num_scenes"] for h in self.headers], np.int64)
        self._first = np.concatenate([[0], np.cumsum(self.num_records)]).astype(np.int64)
        self._codec = SceneCodec(config.max_agents, config.max_roadgraph_points)
        self._size = self._codec.record_bytes
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return int(self._first[-1])

    def locate(self, r: int) -> tuple[int, int]:
        """``(file index, record index in that file)`` of global record ``r``."""
        return scene_reader.locate(self._first, r)

    def __getitem__(self, r: int) -> dt.Scenario:
        """The scene of global record ``r`` (read-only arrays)."""
        f, k = self.locate(int(r))
        data = os.pread(self._fd(f), self._size, self._offset(f, k))
        if len(data) != self._size:
            raise DataError(self.files[f], k, None, f"truncated: {len(data)} of {self._size} bytes")
        return self._codec.decode(data)

    def read_batch(self, records: Sequence[int], empty: Callable = np.empty) -> dt.Scenario:
        """The scenes of global records ``records`` stacked into a batch ``[len(records), ...]``.

        Equal to ``stack_scenarios([self[r] for r in records])``, without its copies: each record is
        read by one ``preadv`` straight into its rows of the batch's arrays, made by ``empty(shape, dtype)``
        (e.g. shared memory in a worker process).
        """
        leaves = [empty((len(records), *shape), d) for d, _, _, shape in self._codec._views]
        for i, r in enumerate(records):
            f, k = self.locate(int(r))
            got = os.preadv(self._fd(f), [x[i] for x in leaves], self._offset(f, k))
            if got != self._size:
                raise DataError(self.files[f], k, None, f"truncated: {got} of {self._size} bytes")
        return jax.tree.unflatten(self._codec._template[1], leaves)

    def _fd(self, f: int) -> int:
        fd = self._fds.get(f)
        if fd is None:
            fd = self._fds[f] = os.open(self.files[f], os.O_RDONLY)
        return fd

    def _offset(self, f: int, k: int) -> int:
        return self.headers[f]["data_offset"] + k * self._size

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __enter__(self) -> PreparedReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PreparedSceneReader:
    """``reader.SceneReader``'s interface served from prepared files; sources name the raw files.

    Args:
      sources: the raw TFRecord files, in the order that defines the records (as ``SceneReader``'s ``files``).
      files: their prepared files, one per source, same order.
      config: the ``ReaderConfig`` (each prepared file's fingerprint must match it).

    Each prepared file must have been made from its source: the header's ``source`` names the source's base
    name and size (a ``DataError`` otherwise; prepare again). ``read(Source(f, k))`` is bit for bit
    ``SceneReader(sources, config).read(Source(f, k))``, in writable arrays of their own. Picklable.

    Attributes:
      files: the raw source files, as strings (what ``Source`` s name).
      num_records: records per file, ``[len(files)]`` int64.
    """

    def __init__(self, sources: Sequence[str], files: Sequence[str], config: ReaderConfig):
        self.files = [os.fspath(f) for f in sources]
        if len(files) != len(self.files):
            raise ValueError(f"{len(files)} prepared files for {len(self.files)} sources")
        self.config = config
        self._prepared = PreparedReader(files, config)
        for src, path, head in zip(self.files, self._prepared.files, self._prepared.headers, strict=True):
            made_from = head.get("source", {})
            if made_from.get("file") != os.path.basename(src) or made_from.get("bytes") != os.path.getsize(src):
                raise DataError(path, None, None, f"prepared from {made_from}, not from {src} "
                                f"({os.path.getsize(src)} bytes); prepare again")
        self.num_records = self._prepared.num_records
        self._index = {f: i for i, f in enumerate(self.files)}

    def sources(self) -> list[scene_reader.Source]:
        """Every record of every source file, in file order (as ``SceneReader.sources``)."""
        return [scene_reader.Source(f, k) for f, n in zip(self.files, self.num_records, strict=True)
                for k in range(int(n))]

    def read(self, source: scene_reader.Source) -> dt.Scenario:
        """The fitted scene at ``source`` (its file must be one of ``files``)."""
        fi = self._index.get(source.file)
        if fi is None:
            raise ValueError(f"{source}: not one of the {len(self.files)} files of this reader")
        n = int(self.num_records[fi])
        if source.record is None or not 0 <= source.record < n:
            raise DataError.at(source, None, f"no such record: the file holds {n}")
        batch = self._prepared.read_batch([int(self._prepared._first[fi]) + source.record])
        return jax.tree.map(lambda x: x[0], batch)

    def close(self) -> None:
        self._prepared.close()

    def __enter__(self) -> PreparedSceneReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

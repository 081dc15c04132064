"""The one way to read WOMD scenes: TFRecord files of either format -> fixed-shape numpy ``Scenario`` s.

Every consumer (training pipeline, curation, alignment, evaluation, tools)
reads through this module, so a record always becomes the same ``Scenario``:

* ``read_scene(source, config)``: one record, addressed by a ``Source``
  ``(file, record index)``, read at its byte offset (``tfrecord.index_records``).
* ``read_scenes(path, config)``: every record of one file, in order.
* ``SceneReader(files, config)``: random access to the records of many files
  (offsets indexed once, one open reader per file); its config must set both
  slot counts, so every scene it returns has agents ``[max_agents, 91]`` and
  road graph ``[max_roadgraph_points]``.

A record is a WOMD tf.Example (``womd_example``) or a WOMD ``Scenario`` proto
(``womd_scenario``), detected from a file's first record unless ``fmt`` says
which; both are fitted to the config's slots by ``fit.fit_scenario``. Errors are
``DataError`` s naming the file, the record index and the field.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.io import tfrecord, womd_example, womd_scenario
from dpa_omf.io.fit import DEFAULT_CONFIG, ReaderConfig, RecordInfo
from dpa_omf.io.tfrecord import DataError, Source

__all__ = ["FORMATS", "DataError", "ReaderConfig", "RecordInfo", "SceneReader", "Source", "detect_format",
           "file_format", "locate", "parse_record", "read_scene", "read_scenes", "read_scenes_with_info"]

FORMATS = ("auto", "example", "scenario")


def detect_format(data: bytes) -> str:
    """'example' or 'scenario' for one serialized record (see ``womd_example.is_example``)."""
    return "example" if womd_example.is_example(data) else "scenario"


def parse_record(data: bytes, source: Source, fmt: str = "auto",
                 config: ReaderConfig = DEFAULT_CONFIG) -> tuple[dt.Scenario, RecordInfo]:
    """Parses and fits one record of either format.

    Args:
      data: the serialized tf.Example or Scenario proto.
      source: where it comes from, named in errors.
      fmt: 'auto' (detected from ``data``), 'example' or 'scenario'.
      config: the output slots (see ``ReaderConfig``).
    Returns:
      ``(single Scenario, RecordInfo)``.
    """
    if fmt == "auto":
        fmt = detect_format(data)
    if fmt == "example":
        return womd_example.parse_example_with_info(data, source, config)
    if fmt == "scenario":
        return womd_scenario.parse_scenario_with_info(data, source, config)
    raise ValueError(f"unknown record format {fmt!r} (expected one of {FORMATS})")


def file_format(path: str, fmt: str = "auto") -> str:
    """The format of a file, from its first record ('example' if the file is empty)."""
    if fmt != "auto":
        return fmt
    first = tfrecord.read_first_record(path)
    return "example" if first is None else detect_format(first)


def read_scenes_with_info(path: str, config: ReaderConfig = DEFAULT_CONFIG,
                          fmt: str = "auto") -> Iterator[tuple[dt.Scenario, RecordInfo]]:
    """Like ``read_scenes`` but yields ``(Scenario, RecordInfo)`` pairs."""
    path = os.fspath(path)
    fmt = file_format(path, fmt)
    for k, data in tfrecord.iter_records(path):
        yield parse_record(data, Source(path, k), fmt, config)


def read_scenes(path: str, config: ReaderConfig = DEFAULT_CONFIG, fmt: str = "auto") -> Iterator[dt.Scenario]:
    """Reads every record of a TFRecord file as numpy ``Scenario`` s.

    Args:
      path: a TFRecord file of WOMD tf.Examples or WOMD Scenario protos.
      config: output slots; its None fields keep a tf.Example's own sizes (see
        ``ReaderConfig``): pass both slot counts for shapes that do not follow the file.
      fmt: 'auto' (detected from the file's first record), 'example' or 'scenario'.
    Yields:
      single scenarios, in file order.
    Raises:
      DataError naming file, record index and field for corrupt / truncated
      files and bad records.
    """
    for s, _ in read_scenes_with_info(path, config, fmt):
        yield s


def locate(first: np.ndarray, r: int) -> tuple[int, int]:
    """``(file index, record index in that file)`` of global record ``r`` (records numbered file after file).

    Args:
      first: ``[num_files + 1]`` int, the global index of each file's first record, then the total
        (``concatenate([[0], cumsum(records per file)])``).
    """
    if not 0 <= r < first[-1]:
        raise IndexError(f"record {r} not in [0, {int(first[-1])})")
    f = int(np.searchsorted(first, r, side="right") - 1)
    return f, int(r - first[f])


def read_scene(source: Source, config: ReaderConfig, fmt: str = "auto") -> dt.Scenario:
    """Reads the one record ``source`` = (file, record index), without reading the records before it.

    For many reads from the same files use a ``SceneReader`` (it indexes each file once).
    """
    with SceneReader([source.file], config, fmt, require_slots=False) as reader:
        return reader.read(source)


class SceneReader:
    """Random access to the records of TFRecord files, fitted to the config's slots.

    Args:
      files: TFRecord files (either WOMD format; detected per file unless ``fmt``).
      config: ``max_agents`` and ``max_roadgraph_points`` must both be set, so
        every scene has agents ``[max_agents, 91]`` and road graph
        ``[max_roadgraph_points]`` whatever the file holds.
      fmt: 'auto', 'example' or 'scenario'.
      require_slots: set False only to keep a tf.Example's own sizes (``read_scene``).

    Picklable (worker processes): the open files are not part of the pickle.

    Attributes:
      files: the files, as strings, in the given order.
      num_records: records per file, ``[len(files)]`` int.
    """

    def __init__(self, files: Sequence[str], config: ReaderConfig, fmt: str = "auto", require_slots: bool = True):
        if require_slots and (config.max_agents is None or config.max_roadgraph_points is None):
            raise ValueError(f"SceneReader needs a ReaderConfig with max_agents and max_roadgraph_points set, "
                             f"got {config}")
        if fmt not in FORMATS:
            raise ValueError(f"unknown record format {fmt!r} (expected one of {FORMATS})")
        self.files = [os.fspath(f) for f in files]
        self.config, self.fmt = config, fmt
        self._index = {f: i for i, f in enumerate(self.files)}
        self._offsets = [tfrecord.index_records(f) for f in self.files]
        self.num_records = np.array([len(o) for o in self._offsets], np.int64)
        self._readers: dict[int, tfrecord.RecordReader] = {}
        self._formats: dict[int, str] = {}

    def sources(self) -> list[Source]:
        """Every record of every file, in file order."""
        return [Source(f, k) for f, n in zip(self.files, self.num_records, strict=True) for k in range(int(n))]

    def read(self, source: Source) -> dt.Scenario:
        """The fitted scene at ``source`` (its file must be one of ``files``)."""
        return self.read_with_info(source)[0]

    def read_with_info(self, source: Source) -> tuple[dt.Scenario, RecordInfo]:
        """``read`` that also returns the ``RecordInfo``."""
        fi = self._index.get(source.file)
        if fi is None:
            raise ValueError(f"{source}: not one of the {len(self.files)} files of this SceneReader")
        offsets = self._offsets[fi]
        if source.record is None or not 0 <= source.record < len(offsets):
            raise DataError.at(source, None, f"no such record: the file holds {len(offsets)}")
        if fi not in self._readers:
            self._readers[fi] = tfrecord.RecordReader(source.file)
            self._formats[fi] = file_format(source.file, self.fmt)
        data, _ = self._readers[fi].read(int(offsets[source.record]), source.record)
        return parse_record(data, source, self._formats[fi], self.config)

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()

    def __getstate__(self) -> dict:
        """Pickled without its open files (grain worker processes reopen them on first read)."""
        state = dict(self.__dict__)
        state["_readers"], state["_formats"] = {}, {}
        return state

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Input pipeline: TFRecord files -> fixed-shape numpy ``Scenario`` batches, sharded per process.

Order and sharding are defined on *records*, not files: the headers of every
file are indexed once (``tfrecord.index_records``, no payload read), giving N
records. Epoch e visits the records in the order ``permutation(seed, e)`` (or
file order without shuffling); process i of n takes every n-th record of that
order, truncated to ``N // n`` so that every process yields the same number of
batches (a multi-host step needs all of them). Concatenating the epochs gives
each process one stream of records; batch k holds stream positions
``[k * batch_size, (k + 1) * batch_size)``. The batch content is therefore a
pure function of (files, seed, process index / count, k): the iterator state is
just k, which ``get_state`` / ``set_state`` save and restore, and a resumed run
sees exactly the batches it would have seen.

Records of both formats (WOMD tf.Example and Scenario protos, detected per
file) are read by ``reader.SceneReader`` (the one reader every stage uses: CRC
checked, fitted to ``max_agents`` x ``max_roadgraph_points``). A background
thread prefetches a few batches so that parsing overlaps the training step.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import queue
import threading
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.io import reader as scene_reader
from dpa_omf.io.reader import ReaderConfig, Source


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Knobs of ``ScenarioPipeline``.

    Attributes:
      file_patterns: glob patterns of TFRecord files (either WOMD format).
      batch_size: scenes per batch *per process*.
      max_agents: agent slots A of every batch (scenes are padded; larger scenes
        keep their required agents and the nearest others).
      max_roadgraph_points: road-graph samples P (padded / subsampled).
      shuffle: visit records in a seeded random order, new each epoch.
      seed: shuffling seed.
      num_epochs: passes over the data; None repeats forever.
      drop_remainder: drop a final partial batch (only matters with num_epochs).
      fmt: 'auto' (per file), 'example' or 'scenario'.
      prefetch: batches prepared ahead by a background thread (0: none).
    """

    file_patterns: tuple[str, ...] = ()
    batch_size: int = 8
    max_agents: int = 128
    max_roadgraph_points: int = 30_000
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None
    drop_remainder: bool = True
    fmt: str = "auto"
    prefetch: int = 2

    def __post_init__(self):
        if isinstance(self.file_patterns, str):
            raise ValueError("PipelineConfig.file_patterns must be a sequence of patterns, not one string")
        if self.batch_size < 1:
            raise ValueError(f"PipelineConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"PipelineConfig.num_epochs must be >= 1 or None, got {self.num_epochs}")
        if self.fmt not in ("auto", "example", "scenario"):
            raise ValueError(f"PipelineConfig.fmt must be 'auto', 'example' or 'scenario', got {self.fmt!r}")
        if self.prefetch < 0:
            raise ValueError(f"PipelineConfig.prefetch must be >= 0, got {self.prefetch}")


def expand_patterns(patterns: Sequence[str]) -> list[str]:
    """Sorted, de-duplicated files matching the glob patterns; an error if a pattern matches nothing."""
    files = []
    for pattern in patterns:
        if "://" in pattern:
            import tensorflow as tf  # lazy: only remote patterns need TensorFlow

            matched = tf.io.gfile.glob(pattern)
        else:
            matched = glob.glob(os.path.expanduser(pattern))
        if not matched:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        files.extend(matched)
    return sorted(set(files))


class ScenarioPipeline:
    """Iterator over fixed-shape ``Scenario`` batches for this process.

    Each batch is a numpy ``Scenario`` with agents ``[B, max_agents, 91]``, road
    graph ``[B, max_roadgraph_points]``, traffic lights ``[B, 91, 16]`` and
    scenario ids ``[B, 16]`` (B = ``batch_size``).

    Args:
      config: a ``PipelineConfig``.
      process_index, process_count: this process's shard; default
        ``jax.process_index()`` / ``jax.process_count()``.
    """

    def __init__(self, config: PipelineConfig, process_index: int | None = None,
                 process_count: int | None = None):
        if process_index is None or process_count is None:
            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self.config, self.process_index, self.process_count = config, process_index, process_count
        self.files = expand_patterns(config.file_patterns)
        self._scenes = scene_reader.SceneReader(
            self.files, ReaderConfig(max_agents=config.max_agents, max_roadgraph_points=config.max_roadgraph_points),
            config.fmt)
        counts = self._scenes.num_records
        self._file_of = np.repeat(np.arange(len(self.files), dtype=np.int32), counts)
        self._first_of_file = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.num_records = int(counts.sum())
        self.records_per_process = self.num_records // process_count
        if self.records_per_process == 0:
            raise ValueError(f"{self.num_records} records in {len(self.files)} files cannot feed "
                             f"{process_count} processes")
        if self.records_per_process < config.batch_size and config.drop_remainder and config.num_epochs:
            raise ValueError(f"{self.records_per_process} records per process, fewer than batch_size "
                             f"{config.batch_size}: no complete batch")
        self._epoch_cache: tuple[int, np.ndarray] | None = None
        self._next_batch = 0  # batches consumed by the caller
        self._worker: _Prefetcher | None = None

    # ------------------------------------------------------------ order
    @property
    def num_batches(self) -> int | None:
        """Batches this process yields in total (None when repeating forever)."""
        if self.config.num_epochs is None:
            return None
        total = self.config.num_epochs * self.records_per_process
        b = self.config.batch_size
        return total // b if self.config.drop_remainder else -(-total // b)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global record indices this process visits in ``epoch``, ``[records_per_process]``."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            n = self.num_records
            order = (np.random.default_rng([self.config.seed, epoch]).permutation(n) if self.config.shuffle
                     else np.arange(n))
            mine = order[self.process_index::self.process_count][: self.records_per_process]
            self._epoch_cache = (epoch, mine)
        return self._epoch_cache[1]

    def batch_records(self, k: int) -> np.ndarray:
        """Global record indices of this process's batch ``k`` (``[<= batch_size]``)."""
        b, per = self.config.batch_size, self.records_per_process
        end = (k + 1) * b
        if self.config.num_epochs is not None:
            end = min(end, self.config.num_epochs * per)
        positions = np.arange(k * b, end)
        return np.array([self.epoch_order(int(p // per))[p % per] for p in positions], np.int64)

    # ------------------------------------------------------------ reading
    def source(self, r: int) -> Source:
        """The file and record index of global record ``r``."""
        f = int(self._file_of[r])
        return Source(self.files[f], int(r - self._first_of_file[f]))

    def read_record(self, r: int) -> dt.Scenario:
        """Reads and fits global record ``r``."""
        return self._scenes.read(self.source(r))

    def make_batch(self, k: int) -> dt.Scenario | None:
        """Batch ``k`` of this process, or None past the end."""
        if self.num_batches is not None and k >= self.num_batches:
            return None
        return dt.stack_scenarios([self.read_record(int(r)) for r in self.batch_records(k)])

    # ------------------------------------------------------------ iteration + state
    def __iter__(self) -> Iterator[dt.Scenario]:
        return self

    def __next__(self) -> dt.Scenario:
        if self.config.prefetch == 0:
            batch = self.make_batch(self._next_batch)
        else:
            if self._worker is None:
                self._worker = _Prefetcher(self, self._next_batch, self.config.prefetch)
            try:
                batch = self._worker.get()
            except BaseException:
                self._stop_worker()  # the thread has ended; a retry restarts at the same batch
                raise
        if batch is None:
            self._stop_worker()
            raise StopIteration
        self._next_batch += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serializable position: the number of batches consumed, plus what it depends on."""
        return {"next_batch": self._next_batch, "seed": self.config.seed, "num_records": self.num_records,
                "batch_size": self.config.batch_size, "process_index": self.process_index,
                "process_count": self.process_count}

    def set_state(self, state: dict) -> None:
        """Restores a ``get_state`` position; the next batch is the one that followed it."""
        mine = self.get_state()
        for key in ("seed", "num_records", "batch_size", "process_index", "process_count"):
            if key in state and state[key] != mine[key]:
                raise ValueError(f"cannot restore pipeline state: {key} was {state[key]}, is now {mine[key]} "
                                 "(a resumed run must read the same files with the same settings)")
        self._stop_worker()
        self._next_batch = int(state["next_batch"])

    def skip(self, num_batches: int) -> None:
        """Advances by ``num_batches`` without reading them."""
        self.set_state({"next_batch": self._next_batch + int(num_batches)})

    def close(self) -> None:
        self._stop_worker()
        self._scenes.close()

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def __del__(self):
        try:
            self._stop_worker()
        except Exception:  # interpreter shutdown: nothing left to stop
            pass


class _Prefetcher:
    """Background thread making batches start, start + 1, ... into a bounded queue.

    Errors (e.g. a corrupt record) are passed through the queue and raised by ``get``.
    """

    def __init__(self, pipeline: ScenarioPipeline, start: int, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pipeline, start), daemon=True)
        self._thread.start()

    def _run(self, pipeline: ScenarioPipeline, k: int) -> None:
        while not self._stop.is_set():
            try:
                item = pipeline.make_batch(k)
            except BaseException as e:  # re-raised in the consumer
                item = e
            if not self._put(item) or item is None or isinstance(item, BaseException):
                return
            k += 1

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> dt.Scenario | None:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

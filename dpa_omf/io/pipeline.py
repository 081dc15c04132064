"""Input pipeline: scene files -> fixed-shape numpy ``Scenario`` batches, sharded per process, on grain.

Order and sharding are defined on *records*, not files: the files' records
are numbered globally (file order, then record order), giving N records. Epoch
e visits the records in the order ``permutation(seed, e)`` (or file order
without shuffling); process i of n takes every n-th record of that order,
truncated to ``N // n`` so that every process yields the same number of
batches (a multi-host step needs all of them). Concatenating the epochs gives
each process one stream of records; batch k holds stream positions
``[k * batch_size, (k + 1) * batch_size)``. The batch content is therefore a
pure function of (files, seed, process index / count, k) (``BatchMaker``): the
iterator state is just k, which ``get_state`` / ``set_state`` save and
restore; the training loop checkpoints k with the train state
(``TrainState.data_index``) and restarts the pipeline there, so a resumed run
sees exactly the batches it would have seen.

Files are either raw WOMD TFRecords (tf.Example or Scenario protos, detected
per file; read and fitted by ``reader.SceneReader``, the one reader every
stage uses) or prepared-scene files (``prepared.SUFFIX``: the same scenes,
fitted once by the prepare stage; ``prepared.PreparedReader``, 20-60x faster
on one process, see ``bench input``); the scenes, and so the batches, are bit
for bit the same.

Iteration runs on grain: ``MapDataset.range(k0, end).map(BatchMaker)``, read
ahead by ``prefetch`` batches in a thread, and with ``num_workers > 0`` made in
that many worker processes (``mp_prefetch``: worker w makes batches k0 + w,
k0 + w + num_workers, ..., and the iterator yields them in order). Since each
batch is a pure function of k, the batches are the same for every worker count.
With workers a batch is made in shared memory and handed over without a copy;
still, on prepared files one process is faster than 1 or 2 workers: a batch's
fresh shared memory (created, page-faulted, opened and unlinked per batch; grain
0.2.18 reuses no blocks) costs more than reading it (docs/benchmarks.md).
Workers are for the raw protos' CPU-bound parsing on hosts with idle cores.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
from collections.abc import Callable, Iterator, Sequence

import grain
import jax
import numpy as np
from absl import flags

from dpa_omf import datatypes as dt
from dpa_omf.io import prepared
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
      fmt: 'auto' (per file), 'example' or 'scenario' (raw TFRecords only).
      prefetch: batches read ahead (by a thread, or by each worker process) (0: none).
      num_workers: grain worker processes making batches (0: this process).
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
    num_workers: int = 0

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
        if self.num_workers < 0:
            raise ValueError(f"PipelineConfig.num_workers must be >= 0, got {self.num_workers}")

    @property
    def reader(self) -> ReaderConfig:
        return ReaderConfig(max_agents=self.max_agents, max_roadgraph_points=self.max_roadgraph_points)


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


class RawScenes:
    """Random access by global record index to raw TFRecords, through ``reader.SceneReader`` (picklable)."""

    def __init__(self, files: Sequence[str], config: ReaderConfig, fmt: str = "auto"):
        self._reader = scene_reader.SceneReader(files, config, fmt)
        self.files, self.num_records = self._reader.files, self._reader.num_records
        self._first = np.concatenate([[0], np.cumsum(self.num_records)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._first[-1])

    def source(self, r: int) -> Source:
        """The file and record index of global record ``r``."""
        f, k = scene_reader.locate(self._first, r)
        return Source(self.files[f], k)

    def __getitem__(self, r: int) -> dt.Scenario:
        return self._reader.read(self.source(int(r)))

    def read_batch(self, records: Sequence[int], empty: Callable = np.empty) -> dt.Scenario:
        """The scenes of global records ``records`` stacked into a batch ``[len(records), ...]`` made by ``empty``."""
        scenes = [self[r] for r in records]
        return jax.tree.map(lambda *xs: np.stack(xs, out=empty((len(xs), *xs[0].shape), xs[0].dtype)), *scenes)

    def close(self) -> None:
        self._reader.close()


def open_scenes(files: Sequence[str], config: ReaderConfig, fmt: str = "auto") -> RawScenes | prepared.PreparedReader:
    """The global-index scene source of ``files``: prepared files (all ``prepared.SUFFIX``) or raw TFRecords."""
    kinds = {f.endswith(prepared.SUFFIX) for f in files}
    if kinds == {True}:
        return prepared.PreparedReader(files, config)
    if kinds == {True, False}:
        raise ValueError(f"the files mix prepared ({prepared.SUFFIX}) and raw TFRecord files: {list(files)[:4]}")
    return RawScenes(files, config, fmt)


@dataclasses.dataclass
class BatchMaker:
    """Batch k of one process's stream, a pure function of k (picklable: grain workers run it).

    Attributes:
      scenes: the global-index scene source (``open_scenes``).
      config: the pipeline config (batch size, shuffling, seed, epochs).
      process_index, process_count: the process's shard.
      shared_memory: make batches in shared memory (grain worker processes then pass them to the main process
        without a copy).
    """

    scenes: RawScenes | prepared.PreparedReader
    config: PipelineConfig
    process_index: int
    process_count: int
    shared_memory: bool = False

    def __post_init__(self):
        self.num_records = len(self.scenes)
        self.records_per_process = self.num_records // self.process_count
        self._epoch_cache: tuple[int, np.ndarray] | None = None

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
        """Global record indices of batch ``k`` (``[<= batch_size]``)."""
        b, per = self.config.batch_size, self.records_per_process
        end = (k + 1) * b
        if self.config.num_epochs is not None:
            end = min(end, self.config.num_epochs * per)
        positions = np.arange(k * b, end)
        return np.array([self.epoch_order(int(p // per))[p % per] for p in positions], np.int64)

    def __call__(self, k: int) -> dt.Scenario:
        empty = grain.multiprocessing.SharedMemoryArray if self.shared_memory else np.empty
        return self.scenes.read_batch(self.batch_records(int(k)), empty)


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
        self._scenes = open_scenes(self.files, config.reader, config.fmt)
        self._maker = BatchMaker(self._scenes, config, process_index, process_count)
        self.num_records = self._maker.num_records
        self.records_per_process = self._maker.records_per_process
        if self.records_per_process == 0:
            raise ValueError(f"{self.num_records} records in {len(self.files)} files cannot feed "
                             f"{process_count} processes")
        if self.records_per_process < config.batch_size and config.drop_remainder and config.num_epochs:
            raise ValueError(f"{self.records_per_process} records per process, fewer than batch_size "
                             f"{config.batch_size}: no complete batch")
        self._next_batch = 0  # batches consumed by the caller
        self._iter: grain.DatasetIterator | None = None

    # ------------------------------------------------------------ order
    @property
    def prepared(self) -> bool:
        """Whether the files are prepared-scene files."""
        return isinstance(self._scenes, prepared.PreparedReader)

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
        return self._maker.epoch_order(epoch)

    def batch_records(self, k: int) -> np.ndarray:
        """Global record indices of this process's batch ``k`` (``[<= batch_size]``)."""
        return self._maker.batch_records(k)

    # ------------------------------------------------------------ reading
    def read_record(self, r: int) -> dt.Scenario:
        """Reads (and fits) global record ``r``."""
        return self._scenes[int(r)]

    def make_batch(self, k: int) -> dt.Scenario | None:
        """Batch ``k`` of this process, or None past the end."""
        if self.num_batches is not None and k >= self.num_batches:
            return None
        return self._maker(k)

    def dataset(self, start: int = 0) -> grain.IterDataset:
        """The grain dataset of batches ``start, start + 1, ...`` (prefetch and workers from the config)."""
        end = self.num_batches if self.num_batches is not None else sys.maxsize
        workers = self.config.num_workers
        maker = dataclasses.replace(self._maker, shared_memory=True) if workers else self._maker
        ds = grain.MapDataset.range(start, max(start, end)).map(maker)
        prefetch = self.config.prefetch
        if workers > 0:
            if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags: outside an absl app, the defaults
                flags.FLAGS.mark_as_parsed()
            return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self.config.num_workers,
                                             per_worker_buffer_size=max(1, prefetch)))
        return ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch))

    # ------------------------------------------------------------ iteration + state
    def __iter__(self) -> Iterator[dt.Scenario]:
        return self

    def __next__(self) -> dt.Scenario:
        if self._iter is None:
            self._iter = iter(self.dataset(self._next_batch))
        try:
            batch = next(self._iter)
        except StopIteration:
            self._stop()
            raise
        except BaseException:
            self._stop()  # a retry restarts at the same batch
            raise
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
        self._stop()
        self._next_batch = int(state["next_batch"])

    def skip(self, num_batches: int) -> None:
        """Advances by ``num_batches`` without reading them."""
        self.set_state({"next_batch": self._next_batch + int(num_batches)})

    def close(self) -> None:
        self._stop()
        self._scenes.close()

    def _stop(self) -> None:
        if self._iter is not None:
            close = getattr(self._iter, "close", None)
            if close is not None:
                close()
            self._iter = None

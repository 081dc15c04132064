"""``python -m dpa_omf.bench input``: scenes/s of one process's input pipeline, raw protos vs prepared files.

    python -m dpa_omf.bench input --json OUT [--shared ../shared] [--workers 0,1,2] [--seconds 4]

Two datasets, each read the same way (``io.pipeline.ScenarioPipeline``:
shuffled, repeating, batches of ``--batch`` scenes, one process):

* ``womd``: the real WOMD records of ``--shared``/womd (one tf.Example, two
  Scenario protos), copied ``--copies`` times into one tf.Example and one
  Scenario-proto TFRecord, fitted to 128 agents x 30,000 road-graph samples
  (the ``:womd`` config's slots);
* ``synthetic``: ``--synthetic_scenes`` scenes of the embedded world in 2
  shards, at the default config's slots (32 x 4,096).

For each: ``raw`` (TFRecords parsed and fitted by ``reader.SceneReader``, no
prefetch, no workers), ``prepared`` (the prepare stage's files,
``io.prepared``: no prefetch, no workers), ``prepared_workers_N`` for each N in
``--workers`` (grain worker processes; ``prefetch`` 2 per worker; worker start-up
is excluded: the clock starts after the first batch) and ``raw_workers_2``.
Every rate is scenes per second of a stream, timed over at least ``--seconds``
and ``--min_batches`` batches (the one benchmark not timed by
``timing.timed``'s median of repeated calls: a pipeline is a stream);
``prepare_seconds_per_scene`` is the one-off cost of preparing. The JSON's
``scenes_per_second`` is the ``womd`` set (the ``synthetic`` set is under
``datasets``), with the machine's load average at the start: other jobs sharing the CPU lower every figure.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

import numpy as np

from dpa_omf.configs import pretrain as pretrain_config
from dpa_omf.io import pipeline as pipe
from dpa_omf.io import prepared, reader, tfrecord
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.synthetic import dataset as synthetic

WOMD_FILES = {"example": ("motion_data_one_example.tfrecord",),
              "scenario": ("motion_data_one_scenario.tfrecord", "womd_scenario_input.tfrecord")}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shared", default="../shared", help="the shared folder holding womd/ (real WOMD records)")
    p.add_argument("--copies", type=int, default=16, help="copies of each real record in the womd set")
    p.add_argument("--synthetic_scenes", type=int, default=16, help="scenes of the synthetic set (0: skip it)")
    p.add_argument("--workers", default="0,1,2", help="grain worker counts to time on prepared files")
    p.add_argument("--batch", type=int, default=8, help="scenes per batch")
    p.add_argument("--seconds", type=float, default=4.0, help="minimum timed seconds per figure")
    p.add_argument("--min_batches", type=int, default=4, help="minimum timed batches per figure")


def scenes_per_second(config: pipe.PipelineConfig, seconds: float, min_batches: int) -> float:
    """One process's steady rate: batches after the first (start-up, workers spawning) until both minimums."""
    p = pipe.ScenarioPipeline(config, 0, 1)
    try:
        next(p)
        n, start = 0, time.perf_counter()
        while n < min_batches or time.perf_counter() - start < seconds:
            next(p)
            n += 1
        return n * config.batch_size / (time.perf_counter() - start)
    finally:
        p.close()


def prepare_all(files: list[str], out_dir: pathlib.Path, config: reader.ReaderConfig) -> tuple[list[str], float]:
    """The prepared files of ``files`` and the seconds per scene it took."""
    out, scenes, start = [], 0, time.perf_counter()
    for f in files:
        out.append(str(out_dir / prepared.prepared_name(f)))
        scenes += prepared.prepare_file(f, out[-1], config)
    return out, (time.perf_counter() - start) / scenes


def measure(files: list[str], config: reader.ReaderConfig, work: pathlib.Path, args: argparse.Namespace) -> dict:
    """Every figure of one dataset (see the module docstring)."""
    ready, prepare_cost = prepare_all(files, work, config)
    base = pipe.PipelineConfig(batch_size=args.batch, max_agents=config.max_agents,
                               max_roadgraph_points=config.max_roadgraph_points, seed=0, prefetch=0)
    rate = lambda patterns, **kw: scenes_per_second(
        pipe.PipelineConfig(**{**base.__dict__, "file_patterns": tuple(patterns), **kw}), args.seconds,
        args.min_batches)
    rates = {"raw": rate(files), "prepared": rate(ready)}
    for w in sorted({int(x) for x in args.workers.split(",") if x}):
        if w > 0:
            rates[f"prepared_workers_{w}"] = rate(ready, num_workers=w, prefetch=2)
    rates["raw_workers_2"] = rate(files, num_workers=2, prefetch=2)
    scene_bytes = prepared.SceneCodec(config.max_agents, config.max_roadgraph_points).record_bytes
    return {"scenes_per_second": rates, "prepared_over_raw": rates["prepared"] / rates["raw"],
            "prepare_seconds_per_scene": prepare_cost, "num_scenes": int(sum(len(tfrecord.index_records(f))
                                                                              for f in files)),
            "slots": [config.max_agents, config.max_roadgraph_points], "prepared_bytes_per_scene": scene_bytes,
            "raw_bytes": int(sum(os.path.getsize(f) for f in files))}


def womd_files(shared: str, copies: int, out: pathlib.Path) -> list[str]:
    """One tf.Example and one Scenario-proto TFRecord holding ``copies`` copies of each real record."""
    files = []
    for fmt, names in WOMD_FILES.items():
        records = [data for n in names for _, data in tfrecord.iter_records(os.path.join(shared, "womd", n))]
        files.append(str(out / f"womd_{fmt}.tfrecord"))
        tfrecord.write_records(files[-1], records * copies)
    return files


def run(args: argparse.Namespace) -> dict:
    load = os.getloadavg()
    datasets = {}
    with tempfile.TemporaryDirectory(prefix="bench_input_") as tmp:
        tmp = pathlib.Path(tmp)
        for name in ("womd", "synthetic"):
            (tmp / name / "prepared").mkdir(parents=True)
        datasets["womd"] = measure(womd_files(args.shared, args.copies, tmp / "womd"),
                                   reader.ReaderConfig(max_agents=128, max_roadgraph_points=30_000),
                                   tmp / "womd" / "prepared", args)
        if args.synthetic_scenes:
            c = pretrain_config.get_config()
            files = synthetic.generate_dataset(str(tmp / "synthetic"), args.synthetic_scenes, 2, seed=0,
                                               config=cfg_lib.synthetic_world(c), num_workers=1)
            datasets["synthetic"] = measure(files, cfg_lib.reader(c), tmp / "synthetic" / "prepared", args)
    return {"scenes_per_second": datasets["womd"]["scenes_per_second"], "datasets": datasets,
            "load_average_at_start": [float(np.round(x, 2)) for x in load], "cpu_count": os.cpu_count(),
            "batch": args.batch, "note": "one process; the CPU is shared with other jobs (see load_average_at_start)"}

"""Benchmarks against the baselines users would pick: the command line, one module per benchmark.

    python -m dpa_omf.bench [--compilation_cache=DIR|off] {ot,train,rollout,realism,curate,evaluate,online,input}
        --json OUT [flags]
    python -m dpa_omf.bench compare --baseline=COMMIT [--rounds 3] --json OUT -- BENCH [flags]

Each benchmark is a module of ``dpa_omf/tools/bench/`` with
``add_args(parser)`` and ``run(args) -> dict``, registered in ``BENCHMARKS``
(name -> (add_arguments, run)); adding one is a module and an entry here.
Every timing goes through ``timing.timed`` (the median of several calls, the
warm-up call excluded). The result goes to ``--json`` (atomically).

* ``ot`` (``ot.py``): our OT solvers vs scipy / POT loops, and their rankings;
* ``train`` (``train.py``): scenes/s and tokens/s of the pretraining step;
* ``rollout`` (``rollout.py``): cached (KV) vs recompute-the-prefix sampling;
* ``realism`` (``realism.py``): the WOSAC metric on one scene and a vmapped batch;
* ``curate`` / ``evaluate`` (``pod.py``): the batched, sharded post-training
  paths vs the per-scene loop, on 1 and 8 devices;
* ``online`` (``online.py``): seconds per online DPA-OMF round by part;
* ``input`` (``input_pipeline.py``): scenes/s of the input pipeline, raw vs prepared;
* ``compare`` (``compare.py``): a benchmark on an older commit and on this
  tree, alternating, and the ratio.

JAX's persistent compilation cache is on (``dpa_omf/train/compilation_cache.py``;
the JSON's ``compilation_cache`` names the folder), so the compile times a
second run reports are cache loads; ``--compilation_cache=off`` times real
compilation.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from dpa_omf import atomic
from dpa_omf.tools.bench import compare, input_pipeline, online, ot, pod, realism, rollout, train
from dpa_omf.train import compilation_cache

# name -> (add_arguments, run)
BENCHMARKS: dict[str, tuple[Callable, Callable]] = {
    "ot": (ot.add_args, ot.run),
    "train": (train.add_args, train.run),
    "rollout": (rollout.add_args, rollout.run),
    "realism": (realism.add_args, realism.run),
    "curate": (pod.add_args, lambda args: pod.run("curate", args)),
    "evaluate": (pod.add_args, lambda args: pod.run("evaluate", args)),
    "online": (online.add_args, online.run),
    "input": (input_pipeline.add_args, input_pipeline.run),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:  # a benchmark on an older commit and on this tree (its own flags)
        return compare.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m dpa_omf.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compilation_cache", default=None, help=compilation_cache.FLAG_HELP)
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, (add_args, _) in BENCHMARKS.items():
        p = sub.add_parser(name)
        p.add_argument("--json", required=True, help="output JSON path")
        add_args(p)
    args = parser.parse_args(argv)
    cache = compilation_cache.enable(args.compilation_cache)
    result = BENCHMARKS[args.bench][1](args)
    if getattr(args, "worker", 0):  # a pod.py worker process: the result goes to its parent on stdout
        print(json.dumps(atomic.jsonable(result)))
        return
    result["benchmark"] = args.bench
    result["compilation_cache"] = cache or compilation_cache.OFF
    atomic.write_json(args.json, result)  # never leave a half-written file
    print(json.dumps({k: result[k] for k in ("seconds_per_scene", "topbottom_agreement", "scenes_per_second")
                      if k in result}, indent=2))

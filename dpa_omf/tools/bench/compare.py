"""``bench compare``: one benchmark on an older commit and on the current tree, alternating, in one run.

    python -m dpa_omf.bench compare --baseline=f67e03c [--rounds 3] [--metric PATH] --json OUT \\
        -- curate [the benchmark's own flags]

The baseline commit is extracted (``git archive``) into a temporary folder; each
round runs ``python -m dpa_omf.bench BENCH`` once in the baseline tree and once
in the current tree (the order alternates between rounds, so drifting load on a
shared machine hits both), each in a fresh process with the same flags, hence
the same scenes and keys. Each tree runs as its users run it: the malloc
settings of ``dpa_omf/allocator.py`` are removed from the children's
environment, so a tree whose entry point sets them (the current one) has them
and an older one does not; the user's own ``MALLOC_*`` values are kept.

The metric (higher is better) is read from each run's JSON by a dotted path
(``--metric``; default per benchmark in ``DEFAULT_METRICS``). The JSON written
to ``--json`` has every run's value, both medians, ``ratio`` = median(current)
/ median(baseline), the commits and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from dpa_omf import allocator, atomic

DEFAULT_METRICS = {
    "curate": "scenes_per_second.batched",
    "evaluate": "scenes_per_second.batched",
    "train": "results.0.scenes_per_s",
}
REPO = pathlib.Path(__file__).resolve().parents[3]


def metric_value(result: dict, path: str) -> float:
    """The number at a dotted ``path`` (list indices as numbers) of a benchmark's JSON."""
    v = result
    for part in path.split("."):
        v = v[int(part)] if isinstance(v, list) else v[part]
    return float(v)


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def _extract(commit: str, dest: pathlib.Path) -> None:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def _child_env(tree: pathlib.Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if allocator.SETTINGS.get(k) != v}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH", "")])])
    return env


def _run_once(tree: pathlib.Path, bench: list[str], out: pathlib.Path, metric: str) -> float:
    cmd = [sys.executable, "-m", "dpa_omf.bench", bench[0], "--json", str(out), *bench[1:]]
    proc = subprocess.run(cmd, cwd=tree, env=_child_env(tree), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bench compare: {' '.join(cmd)} in {tree} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return metric_value(json.loads(out.read_text()), metric)


def run(args: argparse.Namespace) -> dict:
    bench = [a for a in args.bench if a != "--"]
    if not bench:
        raise SystemExit("bench compare: name the benchmark after '--', e.g. -- curate --devices 1")
    metric = args.metric or DEFAULT_METRICS.get(bench[0])
    if metric is None:
        raise SystemExit(f"bench compare: no default metric for {bench[0]!r}; pass --metric")
    baseline = _git("rev-parse", "--verify", f"{args.baseline}^{{commit}}")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    current = _git("rev-parse", "HEAD") + ("+dirty" if dirty else "")  # the tree as the runs start
    values: dict[str, list[float]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory(prefix="dpa_omf_baseline_") as tmp:
        old = pathlib.Path(tmp) / "tree"
        old.mkdir()
        _extract(baseline, old)
        trees = {"baseline": old, "current": REPO}
        for r in range(args.rounds):
            for side in (("baseline", "current") if r % 2 == 0 else ("current", "baseline")):
                v = _run_once(trees[side], bench, pathlib.Path(tmp) / f"{side}_{r}.json", metric)
                values[side].append(v)
                print(f"round {r}: {side} {metric} = {v:.4g}", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in values.items()}
    return {"benchmark": bench[0], "bench_args": bench[1:], "metric": metric, "rounds": args.rounds,
            "baseline_commit": baseline, "current_commit": current,
            "values": values, "median": med, "ratio": med["current"] / med["baseline"],
            "command": " ".join(["python -m dpa_omf.bench compare", *sys.argv[2:]])}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m dpa_omf.bench compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="older commit (anything git rev-parse takes)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each tree, alternating (median)")
    p.add_argument("--metric", default=None, help="dotted path of the JSON number compared (higher is better)")
    p.add_argument("--json", required=True, help="output JSON path")
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- BENCH [its flags]")
    args = p.parse_args(argv)
    result = run(args)
    atomic.write_json(args.json, result)
    print(json.dumps({k: result[k] for k in ("metric", "median", "ratio")}, indent=2))

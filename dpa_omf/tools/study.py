"""The research result: every alignment method over several seeds, with mean and spread.

    python -m dpa_omf.tools.study --workdir=DIR [--seeds=0,1,2]
        [--methods=dpa_omf,sft_best_oa,dpa_adef,afd] [--shared_from=MAIN_WORKDIR]
        [--config=configs/align.py] [-- --config.key=value ...]

Protocol. One synthetic world, one reference model and one curated preference
set (the main job's stages ``data``, ``pretrain`` and ``curate``, global seed
fixed) are shared by every run; a seed ``s`` sets ``align.seed`` (the order of
the preference pairs) and ``evaluate.seed`` (the rollout keys of the
evaluation, the same for every model of that seed, so the comparison is
paired). Per seed the study runs the main job once per method (each aligns into
``DIR/seed_<s>/align*`` and evaluates only the models not evaluated yet: the
evaluate stage caches per model), and finally writes
``DIR/study.json`` and ``DIR/report.md``: per model the mean, the sample
standard deviation and the per-seed values of the realism columns, the
per-seed difference to the reference, and each aligned model's held-out
preference accuracy.

The shared stages come from ``--shared_from`` (e.g. the main job's workdir,
symlinked) or are built in ``DIR/seed_<first>`` and symlinked into the others.
Every job is a ``python -m dpa_omf.launch`` subprocess, so finished stages are
reused and an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

from dpa_omf import atomic
from dpa_omf.jobs import align, report

SHARED_STAGES = ("data", "pretrain", "curate")
DEFAULT_METHODS = ("dpa_omf", "sft_best_oa", "dpa_adef", "afd")


def _log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _launch(config: str, workdir: pathlib.Path, seed: int, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "dpa_omf.launch", f"--config={config}", f"--workdir={workdir}",
           f"--config.align.seed={seed}", f"--config.evaluate.seed={seed}", *extra]
    _log(" ".join(cmd[1:]))
    t0 = time.time()
    subprocess.run(cmd, check=True)
    _log(f"done in {time.time() - t0:.0f} s")


def _link_shared(src: pathlib.Path, dst: pathlib.Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for stage in SHARED_STAGES:
        target = dst / stage
        if not target.exists():
            if not (src / stage).exists():
                raise FileNotFoundError(f"study: {src / stage} is missing (run the main job there first)")
            target.symlink_to((src / stage).resolve(), target_is_directory=True)


def _summary(path: pathlib.Path) -> dict:
    with open(path) as f:
        return json.load(f)


def run_seed(seed: int, seed_dir: pathlib.Path, methods: list[str], config: str, extra: list[str]) -> dict:
    """Aligns and evaluates every method for one seed; returns the evaluate summary (every model)."""
    for m in methods:
        variant = "" if m == "dpa_omf" else f":{m}"
        _launch(config + variant, seed_dir, seed, extra)  # finished stages and cached evaluations are reused
    summary = _summary(seed_dir / "evaluate" / "summary.json")
    missing = [m for m in ["reference", *methods] if m not in summary["models"]]
    if missing:
        raise RuntimeError(f"study: {seed_dir / 'evaluate'} does not cover {missing}")
    return summary


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def aggregate(per_seed: dict[int, dict], accuracy: dict[int, dict], methods: list[str]) -> dict:
    names = ["reference", *[m for m in methods]]
    seeds = sorted(per_seed)
    out = {"seeds": seeds, "models": {}}
    for n in names:
        row = {c: _stats([per_seed[s]["models"][n][c] for s in seeds]) for c in report.COLUMNS}
        if n != "reference":
            row["composite_minus_reference"] = _stats(
                [per_seed[s]["models"][n]["composite"] - per_seed[s]["models"]["reference"]["composite"]
                 for s in seeds])
            accs = [accuracy[s][n] for s in seeds if accuracy[s].get(n) is not None]
            if accs:
                row["heldout_pref_accuracy"] = _stats(accs)
        out["models"][n] = row
    return out


def markdown(result: dict, setup: dict) -> str:
    seeds = result["seeds"]
    lines = [
        "# Study: alignment methods over seeds",
        "",
        f"Seeds {seeds} (align.seed = evaluate.seed = s; shared data, reference and curation). "
        f"WOSAC {setup['challenge']} realism on {setup['num_scenes']} held-out scenes x "
        f"{setup['num_rollouts']} rollouts; mean +- sample std over seeds.",
        "",
        "| model | " + " | ".join(report.COLUMNS) + " | composite - reference | held-out pref. accuracy |",
        "|---|" + "---:|" * (len(report.COLUMNS) + 2),
    ]
    for n, row in result["models"].items():
        cells = [f"{row[c]['mean']:.4f} +- {row[c]['std']:.4f}" for c in report.COLUMNS]
        d = row.get("composite_minus_reference")
        acc = row.get("heldout_pref_accuracy")
        cells.append(f"{d['mean']:+.4f} +- {d['std']:.4f}" if d else "")
        cells.append(f"{acc['mean']:.3f} +- {acc['std']:.3f}" if acc else "")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed composite:", ""]
    for n, row in result["models"].items():
        lines.append(f"- {n}: " + ", ".join(f"{v:.4f}" for v in row["composite"]["per_seed"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dpa_omf.tools.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--shared_from", default=None, help="workdir whose data / pretrain / curate stages are reused")
    p.add_argument("--config", default="configs/align.py")
    args, extra = p.parse_known_args(argv)
    extra = [e for e in extra if e != "--"]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    if "dpa_omf" not in methods:
        methods.insert(0, "dpa_omf")
    root = pathlib.Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    shared = pathlib.Path(args.shared_from) if args.shared_from else root / f"seed_{seeds[0]}"
    per_seed, accuracy = {}, {}
    for s in seeds:
        seed_dir = root / f"seed_{s}"
        if args.shared_from or s != seeds[0]:
            _link_shared(shared, seed_dir)
        per_seed[s] = run_seed(s, seed_dir, methods, args.config, extra)
        accuracy[s] = {}
        for m in methods:
            summ = _summary(seed_dir / align.folder_name(m) / "summary.json")
            accuracy[s][m] = summ.get("eval_pref_accuracy")
    first = per_seed[seeds[0]]
    setup = {k: first[k] for k in ("challenge", "num_scenes", "num_rollouts")}
    result = aggregate(per_seed, accuracy, methods) | {"setup": setup, "methods": methods}
    atomic.write_json(root / "study.json", result)
    text = markdown(result, setup)
    atomic.write_text(root / "report.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

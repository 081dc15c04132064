"""The research result: every alignment method over several seeds, with mean and spread.

    python -m dpa_omf.study --workdir=DIR [--seeds=0,1,2]
        [--methods=dpa_omf,sft_best_oa,dpa_adef,afd] [--shared_from=MAIN_WORKDIR]
        [--lrs=3e-4,1e-3,3e-3 --val_scenes=64 --test_scenes=256]
        [--config=configs/align.py] [-- --config.key=value ...]

Learning-rate sweep (``--lrs``): before the seeds, every method is aligned
once per learning rate (the first seed, ``DIR/sweep/lr_<lr>``) and evaluated
on a VALIDATION block of ``--val_scenes`` held-out scenes that follows the
test block (scenes ``test_scenes .. test_scenes + val_scenes - 1`` of the
valid split, ``evaluate.first_scene``); each method then runs every seed with
the learning rate of its best validation composite, and is reported on the
TEST block (scenes ``0 .. test_scenes - 1``), never used for the choice.
``DIR/sweep.json`` and the report's sweep table hold the validation values.

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
preference accuracy, KL to the reference (per token, teacher-forced on held-out
logs), rollouts sampled and updates (the cost an equal-cost comparison matches).
Confidence intervals (95%): the composite and its paired difference to the
reference are averaged over seeds per scene (the evaluation scenes are the same
in every seed), then bootstrapped over scenes (``metrics.stats``); the seeds'
spread is the std column. ``DIR/realism_vs_rollouts.png`` plots each model's
composite (with its interval) against the rollouts it sampled, and the
in-training realism of the scene-only methods (``eval_realism_composite`` on
``align.realism_scenes`` held-out scenes) against the rollouts sampled by then.

Suites (``--suite=quick|paper``, ``SUITES``) fix all of the above plus
*arms*: variants of DPA-OMF's preference data, each with its own curation
(``DIR/arms/<arm>/seed_<s>``: the shared data and reference linked, the arm's
curate overrides, DPA-OMF at its chosen learning rate, the test block; the
reference's evaluation is copied in, so it is scored once): the feature
ablation (the paper's Table 2: collision only, progress only, comfort only
against all five) and the preference-data scaling (Fig. 7: 0.5x, 2x and 4x
the rankings per training scene; realism and KL per size). The paper suite
also runs the post-selection analysis (Fig. 3, ``tools/post_selection.py``)
on the shared curation, and the report adds Table 3 (DPA-OMF vs AFD:
realism, held-out preference accuracy, minADE).

The shared stages come from ``--shared_from`` (e.g. the main job's workdir, symlinked) or are built in
``DIR/seed_<first>`` and symlinked into the others. Every job is a ``python -m dpa_omf.launch`` subprocess:
finished stages are reused, an interrupted study resumes where it stopped, and a preempted job stops the
study with exit code 75 (run the same command again)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import matplotlib
import numpy as np

from dpa_omf import atomic
from dpa_omf.jobs import align, report
from dpa_omf.metrics import stats
from dpa_omf.tools import post_selection
from dpa_omf.train import checkpointing

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SHARED_STAGES = ("data", "pretrain", "curate")
DEFAULT_METHODS = ("dpa_omf", "sft_best_oa", "dpa_adef", "afd")
ALL_METHODS = ("dpa_omf", "dpa_adef", "sft_best_oa", "sft_best_ade", "afd", "dpo", "catk", "ntp", "online")


@dataclasses.dataclass(frozen=True)
class Arm:
    """A variant of DPA-OMF's preference data: its own curation (``overrides``), the rest shared.

    ``table``: 'features' (the feature ablation) or 'data' (preference-data scaling).
    """

    name: str
    overrides: tuple[str, ...]
    table: str


@dataclasses.dataclass(frozen=True)
class Suite:
    """A study preset: what ``--suite`` runs (see the module docstring)."""

    config: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    lrs: tuple[float, ...] = ()
    val_scenes: int = 0
    test_scenes: int = 0
    extra: tuple[str, ...] = ()
    arms: tuple[Arm, ...] = ()
    post_selection: tuple[int, int] | None = None  # (scenes, group size)


def _weights(w: tuple[float, ...]) -> str:
    return "--config.curate.feature_weights=(" + ",".join(f"{float(x):.1f}" for x in w) + ")"


def _arms(base_rankings: float) -> tuple[Arm, ...]:
    """Table 2's feature subsets (weights of collision, road distance, clearance, effort, speed) and Fig. 7's
    data sizes (0.5x, 2x, 4x the main job's rankings per training scene)."""
    return (Arm("collision_only", (_weights((10, 0, 0, 0, 0)),), "features"),
            Arm("progress_only", (_weights((0, 0, 0, 0, 1)),), "features"),
            Arm("comfort_only", (_weights((0, 0, 0, 1, 0)),), "features"),
            *(Arm(f"data_{f:g}x", (f"--config.curate.rankings_per_example={base_rankings * f:g}",), "data")
              for f in (0.5, 2, 4)))


SUITES = {
    # Every method, a 3-rate sweep on 64 validation scenes, 256 test scenes x 32 rollouts, 3 seeds, every arm
    # and analysis, at the main job's sizes (BUILD_NOTES: its duration on the project's 2-core CPU).
    "paper": Suite("configs/align.py", ALL_METHODS, (0, 1, 2), lrs=(3e-4, 1e-3, 3e-3), val_scenes=64,
                   test_scenes=256, extra=("--config.data.synthetic.num_valid=320",), arms=_arms(0.08),
                   post_selection=(32, 8)),
    # The same structure at :smoke sizes, for CPU minutes (its test checks the report's structure).
    "quick": Suite("configs/align.py:smoke", ALL_METHODS, (0, 1), lrs=(1e-3, 3e-3), val_scenes=2, test_scenes=4,
                   arms=(Arm("collision_only", (_weights((10, 0, 0, 0, 0)),), "features"),
                         Arm("data_2x", ("--config.curate.rankings_per_example=0.16",), "data")),
                   post_selection=(1, 2)),
}


def _log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _launch(config: str, workdir: pathlib.Path, seed: int, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "dpa_omf.launch", f"--config={config}", f"--workdir={workdir}",
           f"--config.align.seed={seed}", f"--config.evaluate.seed={seed}", *extra]
    _log(" ".join(cmd[1:]))
    t0 = time.time()
    code = subprocess.run(cmd).returncode
    if code:
        _log("the job was preempted, its progress saved: run the same study command again to resume"
             if code == checkpointing.EXIT_PREEMPTED else f"the job failed with exit code {code} (output above)")
        raise SystemExit(code)
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


def with_variant(config: str, method: str) -> str:
    """``configs/align.py[:variants]`` with the method's variant added (DPA-OMF is the default: none)."""
    if method == "dpa_omf":
        return config
    return f"{config},{method}" if ":" in config else f"{config}:{method}"


def run_seed(seed: int, seed_dir: pathlib.Path, methods: list[str], config: str, extra: list[str],
             per_method: dict[str, list[str]] | None = None) -> dict:
    """Aligns and evaluates every method for one seed; returns the evaluate summary (every model).

    ``per_method[m]``: overrides for method m only (its chosen learning rate)."""
    for m in methods:
        own = (per_method or {}).get(m, [])
        # Finished stages and cached evaluations are reused.
        _launch(with_variant(config, m), seed_dir, seed, extra + own)
    summary = _summary(seed_dir / "evaluate" / "summary.json")
    missing = [m for m in ["reference", *methods] if m not in summary["models"]]
    if missing:
        raise RuntimeError(f"study: {seed_dir / 'evaluate'} does not cover {missing}")
    return summary


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


ALIGN_FIGURES = {"heldout_pref_accuracy": "eval_pref_accuracy", "kl_to_reference": "eval_kl_to_reference",
                 "rollouts_sampled": "rollouts_sampled", "updates": "updates"}


def aggregate(per_seed: dict[int, dict], aligned: dict[int, dict], methods: list[str],
              per_scene: dict[int, dict] | None = None) -> dict:
    """Per model: each realism column's mean / std / per-seed values, the difference to the reference, the
    alignment's figures (``ALIGN_FIGURES``, from each seed's align summary ``aligned[seed][method]``), and,
    with ``per_scene[seed][model]`` (per-scene composites), 95% intervals over scenes."""
    names = ["reference", *list(methods)]
    seeds = sorted(per_seed)
    out = {"seeds": seeds, "models": {}}
    for n in names:
        row = {c: _stats([per_seed[s]["models"][n][c] for s in seeds]) for c in report.COLUMNS}
        if per_scene:
            comp = np.mean([per_scene[s][n] for s in seeds], axis=0)  # [scenes], seed-averaged
            row["composite"]["ci95"] = stats.bootstrap_ci(comp)
        if n != "reference":
            row["composite_minus_reference"] = _stats(
                [per_seed[s]["models"][n]["composite"] - per_seed[s]["models"]["reference"]["composite"]
                 for s in seeds])
            if per_scene:
                ref = np.mean([per_scene[s]["reference"] for s in seeds], axis=0)
                d = stats.paired_difference(comp, ref)
                row["composite_minus_reference"]["ci95"] = (d["lo"], d["hi"])
            for name, key in ALIGN_FIGURES.items():
                vals = [aligned[s][n][key] for s in seeds if aligned[s].get(n, {}).get(key) is not None]
                if vals:
                    row[name] = _stats(vals)
        out["models"][n] = row
    return out


def _ci(stat: dict, signed: bool = True) -> str:
    """The stat's 95% interval as ``[lo, hi]`` ('' without one); ``signed`` for differences."""
    if "ci95" not in stat:
        return ""
    lo, hi = stat["ci95"]
    return f"[{lo:+.4f}, {hi:+.4f}]" if signed else f"[{lo:.4f}, {hi:.4f}]"


def _color(i: int):
    """Ten strong colours first (tab20's dark ones), then their light partners."""
    return plt.get_cmap("tab20")((2 * i) % 20 + (i // 10) % 2)


def markdown(result: dict, setup: dict) -> str:
    seeds = result["seeds"]
    lines = [
        "# Study: alignment methods over seeds",
        "",
        f"Seeds {seeds} (align.seed = evaluate.seed = s; shared data, reference and curation). "
        f"WOSAC {setup['challenge']} realism on {setup['num_scenes']} held-out scenes x "
        f"{setup['num_rollouts']} rollouts; mean +- sample std over seeds.",
        "",
        "| model | " + " | ".join(report.COLUMNS) + " | composite 95% CI | composite - reference | its 95% CI "
        "| held-out pref. accuracy | KL to reference | rollouts sampled | updates |",
        "|---|" + "---:|" * (len(report.COLUMNS) + 7),
    ]
    for n, row in result["models"].items():
        cells = [f"{row[c]['mean']:.4f} +- {row[c]['std']:.4f}" for c in report.COLUMNS]
        cells.append(_ci(row["composite"], signed=False))
        d = row.get("composite_minus_reference")
        cells += [f"{d['mean']:+.4f} +- {d['std']:.4f}", _ci(d)] if d else ["", ""]
        acc, kl = row.get("heldout_pref_accuracy"), row.get("kl_to_reference")
        cells.append(f"{acc['mean']:.3f} +- {acc['std']:.3f}" if acc else "")
        cells.append(f"{kl['mean']:.4f}" if kl else "")
        for k in ("rollouts_sampled", "updates"):
            cells.append(f"{row[k]['mean']:.0f}" if k in row else "")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Mean +- std over seeds; 95% CIs: seed-averaged per-scene values bootstrapped over scenes. "
              "KL: per token, policy || reference, teacher-forced on held-out logs. Rollouts sampled: the "
              "training data's (offline: the curated rollouts of the training scenes).", "",
              "![realism vs rollouts sampled](realism_vs_rollouts.png)", "",
              "Held-out NLL per token over alignment steps (the paper's Fig. 4 / 6) and realism against KL to the "
              "reference:", "", "![NLL curves and realism vs KL](nll_and_kl.png)", "", "Per seed composite:", ""]
    for n, row in result["models"].items():
        lines.append(f"- {n}: " + ", ".join(f"{v:.4f}" for v in row["composite"]["per_seed"]))
    return "\n".join(lines) + "\n"


def _lr_flag(lr: float) -> str:
    return f"--config.align.optim.learning_rate={lr!r}"


def _blocks(val_scenes: int, test_scenes: int) -> tuple[list[str], list[str]]:
    """The evaluation overrides of the validation block and of the test block (module docstring)."""
    val = [f"--config.evaluate.first_scene={test_scenes}", f"--config.evaluate.num_scenes={val_scenes}"]
    test = ["--config.evaluate.first_scene=0", f"--config.evaluate.num_scenes={test_scenes}"]
    return val, test


def choose_learning_rates(val_composite: dict[str, dict[float, float]]) -> dict[str, float]:
    """Per method, the learning rate of the best validation composite (ties: the smaller rate)."""
    return {m: max(sorted(by_lr), key=lambda lr: by_lr[lr]) for m, by_lr in val_composite.items()}


def sweep(root: pathlib.Path, shared: pathlib.Path, seed: int, methods: list[str], lrs: list[float], config: str,
          extra: list[str], val_flags: list[str]) -> dict:
    """Aligns every method at every learning rate and evaluates it on the validation block.

    Returns ``{"val_composite": {method: {lr: composite}}, "reference_val_composite", "chosen": {method: lr}}``.
    """
    val: dict[str, dict[float, float]] = {m: {} for m in methods}
    ref = None
    for lr in lrs:
        d = root / "sweep" / f"lr_{lr:g}"
        _link_shared(shared, d)
        summary = run_seed(seed, d, methods, config, extra + val_flags + [_lr_flag(lr)])
        for m in methods:
            val[m][lr] = summary["models"][m]["composite"]
        ref = summary["models"]["reference"]["composite"]
    return {"val_composite": val, "reference_val_composite": ref, "chosen": choose_learning_rates(val)}


def sweep_table(sw: dict) -> list[str]:
    lrs = sorted({lr for by_lr in sw["val_composite"].values() for lr in by_lr})
    lines = ["", "Learning-rate sweep: validation composite (the chosen rate in bold); reference "
             f"{sw['reference_val_composite']:.4f}.", "",
             "| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---:|" * len(lrs)]
    for m, by_lr in sw["val_composite"].items():
        cells = [(f"**{by_lr[lr]:.4f}**" if lr == sw["chosen"][m] else f"{by_lr[lr]:.4f}") if lr in by_lr else ""
                 for lr in lrs]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


NLL_CURVES = {"eval_nll_preferred": "preferred", "eval_nll_unpreferred": "unpreferred", "eval_nll_expert": "expert"}


def _eval_records(seed_dir: pathlib.Path, method: str) -> list[dict]:
    path = seed_dir / align.folder_name(method) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if any(k.startswith("eval_") for k in r)]


def nll_and_kl_figure(result: dict, seed_dirs: list[pathlib.Path], methods: list[str], path: pathlib.Path) -> None:
    """The paper's Fig. 4 / 6 (held-out NLL per token of the preferred, unpreferred and expert sequences over
    alignment steps, per method, seed mean) beside realism against KL to the reference (per seed and in
    training: a method that moves the policy more is compared at its KL)."""
    fig, axes = plt.subplots(1, len(NLL_CURVES) + 1, figsize=(4.2 * (len(NLL_CURVES) + 1), 3.8))
    for i, m in enumerate(methods):
        recs = [_eval_records(d, m) for d in seed_dirs]
        for ax, (key, label) in zip(axes, NLL_CURVES.items()):
            by_step: dict[int, list[float]] = {}
            for rs in recs:
                for r in rs:
                    if key in r:
                        by_step.setdefault(int(r["step"]), []).append(r[key])
            if by_step:
                steps = sorted(by_step)
                ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], "o-", color=_color(i), label=m, ms=3)
            ax.set_title(f"held-out NLL/token: {label}", fontsize=9)
            ax.set_xlabel("alignment step")
        ax = axes[-1]
        row = result["models"].get(m, {})
        kl = row.get("kl_to_reference", {}).get("per_seed", [])
        comp = row.get("composite", {}).get("per_seed", [])
        if kl and len(kl) == len(comp):
            ax.plot(kl, comp, "o", color=_color(i), label=m)
        pts = [(r["eval_kl_to_reference"], r["eval_realism_composite"]) for rs in recs for r in rs
               if "eval_kl_to_reference" in r and "eval_realism_composite" in r]
        if pts:
            ax.plot(*zip(*sorted(pts)), ".", color=_color(i), alpha=0.4)
    ref = result["models"]["reference"]["composite"]["mean"]
    axes[-1].axhline(ref, color="k", lw=0.8, ls="--", label="reference")
    axes[-1].set_xscale("symlog", linthresh=1e-3)
    axes[-1].set_xlim(left=0.0)  # KL >= 0
    axes[-1].set_title("composite vs KL to the reference", fontsize=9)
    axes[-1].set_xlabel("KL per token (policy || reference)")
    axes[0].set_ylabel("NLL per token")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def realism_vs_rollouts(result: dict, curves: dict[str, list[tuple[float, float]]], path: pathlib.Path) -> None:
    """Composite (mean over seeds, 95% CI over scenes) against rollouts sampled per model; in-training realism
    curves ``curves[model] = [(rollouts sampled, composite), ...]`` (seed means) as lines."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, (n, row) in enumerate(result["models"].items()):
        color = _color(i)
        x = row["rollouts_sampled"]["mean"] if "rollouts_sampled" in row else 0.0
        y = row["composite"]["mean"]
        lo, hi = row["composite"].get("ci95", (y, y))
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", color=color, capsize=4, label=n)
        if curves.get(n):
            xs, ys = zip(*curves[n])
            ax.plot(xs, ys, "--", color=color, alpha=0.6, lw=1)
    ax.set_xlabel("rollouts sampled for training")
    ax.set_ylabel("WOSAC composite")
    ax.set_title("Realism vs rollouts sampled (points: test scenes, 95% CI; dashed: in-training, few scenes)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _training_curve(seed_dirs: list[pathlib.Path], method: str, per_step: float) -> list[tuple[float, float]]:
    """Seed-mean in-training realism of a method against rollouts sampled (``per_step`` per step)."""
    by_step: dict[int, list[float]] = {}
    for d in seed_dirs:
        path = d / align.folder_name(method) / "metrics.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if "eval_realism_composite" in r:
                by_step.setdefault(int(r["step"]), []).append(r["eval_realism_composite"])
    return [(s * per_step, statistics.fmean(v)) for s, v in sorted(by_step.items()) if len(v) == len(seed_dirs)]


def _per_scene(seed_dir: pathlib.Path, names: list[str]) -> dict[str, list[float]]:
    out = {}
    for n in names:
        path = seed_dir / "evaluate" / "models" / f"{n}.json"
        out[n] = _summary(path)["composite_per_scene"] if path.exists() else None
    return out if all(v is not None for v in out.values()) else {}


def run_arm(arm: Arm, root: pathlib.Path, shared: pathlib.Path, seeds: list[int], config: str, extra: list[str],
            lr_flags: list[str]) -> dict[int, dict]:
    """DPA-OMF on an arm's own preference data, every seed; returns per seed ``{"summary", "align",
    "per_scene"}`` (the arm's evaluate and align summaries, its per-scene composites)."""
    out = {}
    first = root / "arms" / arm.name / f"seed_{seeds[0]}"
    for s in seeds:
        d = root / "arms" / arm.name / f"seed_{s}"
        d.mkdir(parents=True, exist_ok=True)
        for stage in ("data", "pretrain") + (("curate",) if s != seeds[0] else ()):
            src = shared / stage if stage != "curate" else first / "curate"
            if not (d / stage).exists():
                (d / stage).symlink_to(src.resolve(), target_is_directory=True)
        # The reference's evaluation (same checkpoint, scenes and keys) is taken from the seed's main folder;
        # the evaluate job checks its fingerprint and re-scores it only if anything differs.
        ref = root / f"seed_{s}" / "evaluate" / "models" / "reference.json"
        if ref.exists() and not (d / "evaluate" / "models" / "reference.json").exists():
            (d / "evaluate" / "models").mkdir(parents=True, exist_ok=True)
            shutil.copy(ref, d / "evaluate" / "models" / "reference.json")
        summary = run_seed(s, d, ["dpa_omf"], config, extra + list(arm.overrides) + lr_flags)
        out[s] = {"summary": summary, "align": _summary(d / "align" / "summary.json"),
                  "per_scene": _per_scene(d, ["dpa_omf"]).get("dpa_omf")}
    return out


def _arm_name(arm: Arm) -> str:
    return f"dpa_omf[{arm.name}]"


def merge_arms(per_seed: dict, aligned: dict, per_scene: dict, arms: dict[Arm, dict[int, dict]]) -> list[str]:
    """Adds each arm's DPA-OMF as a model named ``dpa_omf[<arm>]`` to the per-seed results; returns the names."""
    names = []
    for arm, by_seed in arms.items():
        n = _arm_name(arm)
        names.append(n)
        for s, r in by_seed.items():
            per_seed[s]["models"][n] = r["summary"]["models"]["dpa_omf"]
            aligned[s][n] = r["align"]
            if per_scene.get(s) and r["per_scene"] is not None:
                per_scene[s][n] = r["per_scene"]
    return names


def arms_table(result: dict, arms: list[Arm], table: str, title: str, base: str) -> list[str]:
    rows = [(base, "dpa_omf")] + [(a.name, _arm_name(a)) for a in arms if a.table == table]
    lines = ["", title, "", "| preference data | composite | 95% CI | vs reference [95% CI] | collision | off-road "
             "| held-out pref. accuracy | KL to reference |", "|---|" + "---:|" * 7]
    for label, n in rows:
        r = result["models"].get(n)
        if r is None:
            continue
        d = r.get("composite_minus_reference", {})
        acc, kl = r.get("heldout_pref_accuracy"), r.get("kl_to_reference")
        cells = [f"{r['composite']['mean']:.4f}", _ci(r["composite"], signed=False),
                 f"{d.get('mean', float('nan')):+.4f} {_ci(d)}",
                 f"{r['collision_rate']['mean']:.4f}", f"{r['offroad_rate']['mean']:.4f}",
                 f"{acc['mean']:.3f}" if acc else "", f"{kl['mean']:.4f}" if kl else ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def table3(result: dict) -> list[str]:
    """The paper's Table 3: DPA-OMF vs AFD (realism, held-out preference accuracy, minADE)."""
    lines = ["", "Table 3: DPA-OMF vs AFD (held-out preference accuracy on the OT pairs).", "",
             "| method | composite | 95% CI | held-out pref. accuracy | minADE |", "|---|---:|---:|---:|---:|"]
    for n in ("dpa_omf", "afd"):
        r = result["models"].get(n)
        if r is None:
            continue
        acc = r.get("heldout_pref_accuracy", {}).get("mean", float("nan"))
        lines.append(f"| {n} | {r['composite']['mean']:.4f} | {_ci(r['composite'], signed=False)} | {acc:.3f} | "
                     f"{r['min_ade']['mean']:.3f} |")
    return lines


def _post_selection(shared: pathlib.Path, out: pathlib.Path, scenes: int, group: int, variant: str) -> dict:
    """The post-selection analysis of the shared curation (a subprocess, once; its JSON after)."""
    if not (out / "post_selection.json").exists():
        cmd = [sys.executable, "-m", "dpa_omf.tools.post_selection", f"--workdir={shared}", f"--out={out}",
               f"--scenes={scenes}", f"--group={group}", f"--variant={variant}"]
        _log(" ".join(cmd[1:]))
        subprocess.run(cmd, check=True)
    return _summary(out / "post_selection.json")


def _apply_suite(suite: Suite | None, args: argparse.Namespace, extra: list[str], given: list[str]) -> list[str]:
    """A suite's settings into ``args`` (``--seeds`` still applies when given); returns the overrides."""
    if suite is None:
        return extra
    if not any(a.startswith("--seeds") for a in given):
        args.seeds = ",".join(map(str, suite.seeds))
    args.methods, args.config = ",".join(suite.methods), suite.config
    args.lrs = ",".join(f"{x:g}" for x in suite.lrs)
    args.val_scenes, args.test_scenes = suite.val_scenes, suite.test_scenes
    return list(suite.extra) + extra


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dpa_omf.tools.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--shared_from", default=None, help="workdir whose data / pretrain / curate stages are reused")
    p.add_argument("--config", default="configs/align.py")
    p.add_argument("--lrs", default="", help="learning rates swept per method on the validation block ('': none)")
    p.add_argument("--val_scenes", type=int, default=0, help="validation block size (needed with --lrs)")
    p.add_argument("--test_scenes", type=int, default=0, help="test block size (0: evaluate.num_scenes from scene 0)")
    p.add_argument("--suite", default="", choices=["", *SUITES], help="a preset (module docstring); --seeds still "
                   "applies when given")
    args, extra = p.parse_known_args(argv)
    suite = SUITES.get(args.suite)
    extra = _apply_suite(suite, args, [e for e in extra if e != "--"], argv if argv is not None else sys.argv[1:])
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    if "dpa_omf" not in methods and not args.shared_from:  # it builds the shared stages
        methods.insert(0, "dpa_omf")
    lrs = [float(x) for x in args.lrs.split(",") if x]
    if lrs and (args.val_scenes < 1 or args.test_scenes < 1):
        raise SystemExit("study: --lrs needs --val_scenes and --test_scenes (the validation and test blocks)")
    root = pathlib.Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    shared = pathlib.Path(args.shared_from) if args.shared_from else root / f"seed_{seeds[0]}"
    val_flags, test_flags = _blocks(args.val_scenes, args.test_scenes) if args.test_scenes else ([], [])
    per_method, sw = {}, None
    if lrs:
        if not args.shared_from:  # the shared stages (up to curate) are built once, in the first seed's folder
            _launch(args.config, shared, seeds[0], extra + test_flags + ["--config.job=curate"])
        sw = sweep(root, shared, seeds[0], methods, lrs, args.config, extra, val_flags)
        atomic.write_json(root / "sweep.json", sw)
        per_method = {m: [_lr_flag(lr)] for m, lr in sw["chosen"].items()}
    per_seed, aligned, per_scene = {}, {}, {}
    for s in seeds:
        seed_dir = root / f"seed_{s}"
        if args.shared_from or s != seeds[0]:
            _link_shared(shared, seed_dir)
        per_seed[s] = run_seed(s, seed_dir, methods, args.config, extra + test_flags, per_method)
        aligned[s] = {m: _summary(seed_dir / align.folder_name(m) / "summary.json") for m in methods}
        per_scene[s] = _per_scene(seed_dir, ["reference", *methods])
    first = per_seed[seeds[0]]
    setup = {k: first[k] for k in ("challenge", "num_scenes", "num_rollouts")}
    arms = list(suite.arms) if suite else []
    lr_dpa = per_method.get("dpa_omf", [])
    arm_results = {a: run_arm(a, root, shared, seeds, args.config, extra + test_flags, lr_dpa) for a in arms}
    arm_names = merge_arms(per_seed, aligned, per_scene, arm_results)
    post = None
    if suite and suite.post_selection:
        post = _post_selection(shared, root / "post_selection", *suite.post_selection, args.config.partition(":")[2])
    result = aggregate(per_seed, aligned, methods + arm_names, per_scene if all(per_scene.values()) else None)
    result |= {"setup": setup, "methods": methods, "arms": [dataclasses.asdict(a) for a in arms],
               "suite": args.suite or None}
    curves = {}
    for m in methods:
        a = aligned[seeds[0]][m]
        if m in ("online", "catk") and a.get("rollouts_sampled") and a.get("steps"):
            curves[m] = _training_curve([root / f"seed_{s}" for s in seeds], m, a["rollouts_sampled"] / a["steps"])
    result["training_curves"] = curves
    result["sweep"] = sw
    realism_vs_rollouts(result, curves, root / "realism_vs_rollouts.png")
    nll_and_kl_figure(result, [root / f"seed_{s}" for s in seeds], methods + arm_names, root / "nll_and_kl.png")
    atomic.write_json(root / "study.json", result)
    text = markdown(result, setup) + ("\n".join(sweep_table(sw)) + "\n" if sw else "")
    if suite:
        text += "\n".join(table3(result)) + "\n"
        text += "\n".join(arms_table(result, arms, "features", "Table 2: feature ablation (DPA-OMF on pairs "
                                      "ranked with a subset of the features).", "all five")) + "\n"
        text += "\n".join(arms_table(result, arms, "data", "Fig. 7: preference-data scaling (rankings per "
                                      "training scene relative to the main job's; realism and KL).", "1x")) + "\n"
    if post:
        text += "\n" + post_selection.markdown(post) + "\n![post-selection](post_selection/post_selection.png)\n"
    atomic.write_text(root / "report.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

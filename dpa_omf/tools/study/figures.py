"""The study's figures (PNG, matplotlib Agg): realism against rollouts sampled, the held-out NLL curves beside
realism against KL (the paper's Fig. 4 / 6), realism against KL to the reference per method, and DPA-OMF's gain
against preference-data scale (Fig. 7). Inputs: ``results.aggregate``'s result and the runs' ``metrics.jsonl``."""

from __future__ import annotations

import json
import pathlib
import statistics

import matplotlib

from dpa_omf.jobs import align

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def color(i: int):
    """Ten strong colours first (tab20's dark ones), then their light partners."""
    return plt.get_cmap("tab20")((2 * i) % 20 + (i // 10) % 2)


NLL_CURVES = {"eval_nll_preferred": "preferred", "eval_nll_unpreferred": "unpreferred", "eval_nll_expert": "expert"}


def eval_records(seed_dir: pathlib.Path, method: str) -> list[dict]:
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
        recs = [eval_records(d, m) for d in seed_dirs]
        for ax, (key, label) in zip(axes, NLL_CURVES.items()):
            by_step: dict[int, list[float]] = {}
            for rs in recs:
                for r in rs:
                    if key in r:
                        by_step.setdefault(int(r["step"]), []).append(r[key])
            if by_step:
                steps = sorted(by_step)
                ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], "o-", color=color(i), label=m, ms=3)
            ax.set_title(f"held-out NLL/token: {label}", fontsize=9)
            ax.set_xlabel("alignment step")
        ax = axes[-1]
        row = result["models"].get(m, {})
        kl = row.get("kl_to_reference", {}).get("per_seed", [])
        comp = row.get("composite", {}).get("per_seed", [])
        if kl and len(kl) == len(comp):
            ax.plot(kl, comp, "o", color=color(i), label=m)
        pts = [(r["eval_kl_to_reference"], r["eval_realism_composite"]) for rs in recs for r in rs
               if "eval_kl_to_reference" in r and "eval_realism_composite" in r]
        if pts:
            ax.plot(*zip(*sorted(pts)), ".", color=color(i), alpha=0.4)
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
        c = color(i)
        x = row["rollouts_sampled"]["mean"] if "rollouts_sampled" in row else 0.0
        y = row["composite"]["mean"]
        lo, hi = row["composite"].get("ci95", (y, y))
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", color=c, capsize=4, label=n)
        if curves.get(n):
            xs, ys = zip(*curves[n])
            ax.plot(xs, ys, "--", color=c, alpha=0.6, lw=1)
    ax.set_xlabel("rollouts sampled for training")
    ax.set_ylabel("WOSAC composite")
    ax.set_title("Realism vs rollouts sampled (points: test scenes, 95% CI; dashed: in-training, few scenes)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def training_curve(seed_dirs: list[pathlib.Path], method: str, per_step: float) -> list[tuple[float, float]]:
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


def _errorbar(ax, x: float, stat: dict, c, label: str) -> None:
    y = stat["mean"]
    lo, hi = stat.get("ci95", (y, y))
    ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", color=c, capsize=4, label=label)


def realism_vs_kl(result: dict, path: pathlib.Path) -> None:
    """Per model with a KL to the reference (aligned models; a sampled model shares its checkpoint's): the
    composite (seed mean, two-level 95% CI) against the KL per token; the reference at KL 0, its sharpened
    rows as dashed lines (sampling changes no parameter)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (n, row) in enumerate(result["models"].items()):
        if n == "reference":
            _errorbar(ax, 0.0, row["composite"], "k", n)
        elif "kl_to_reference" in row:
            _errorbar(ax, row["kl_to_reference"]["mean"], row["composite"], color(i), n)
        elif n.startswith("reference@"):
            ax.axhline(row["composite"]["mean"], color=color(i), ls="--", lw=1, label=n)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(left=0.0)
    ax.set_xlabel("KL per token (policy || reference), held-out logs")
    ax.set_ylabel("WOSAC composite (test block)")
    ax.set_title("Realism against KL to the reference (95% CI over seeds and scenes)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gain_vs_data_scale(result: dict, scales: dict[str, float], path: pathlib.Path) -> None:
    """DPA-OMF's paired gain over the reference (two-level 95% CI) against preference-data scale
    (``scales[model] = rankings per training scene relative to the main job's``; ``dpa_omf`` is 1)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = sorted((x, n) for n, x in {"dpa_omf": 1.0, **scales}.items() if n in result["models"])
    for x, n in pts:
        d = result["models"][n]["composite_minus_reference"]
        _errorbar(ax, x, d, color(0), None)
        ax.annotate(n, (x, d["mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if pts:
        ax.plot([x for x, _ in pts], [result["models"][n]["composite_minus_reference"]["mean"] for _, n in pts],
                "-", color=color(0), alpha=0.5)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("preference data (x the main job's rankings per training scene)")
    ax.set_ylabel("composite - reference")
    ax.set_title("Gain against preference-data scale", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

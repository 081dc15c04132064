"""The evaluation report: a markdown table and the figures.

* ``report.md``: realism (composite and buckets), minADE and rates per model.
* ``realism_buckets.png``: bar chart of composite / kinematic / interactive /
  map per model.
* ``alignment_nll.png``: NLL per token of the preferred, unpreferred and
  expert sequences over alignment steps, one panel per aligned model (the
  paper's Figures 4 and 6), read from ``WORKDIR/align*/metrics.jsonl``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib
import numpy as np

from dpa_omf import atomic
from dpa_omf.metrics import names
from dpa_omf.train import stage_log

matplotlib.use("Agg")
import matplotlib.pyplot as plt

NLL_KEYS = (("eval_nll_preferred", "preferred"), ("eval_nll_unpreferred", "unpreferred"),
            ("eval_nll_expert", "expert"))


def order_key(name: str) -> tuple:
    """Rows in the order reference, its sampled rows (``reference@t..,p..``), dpa_omf, its sampled rows, others."""
    model = name.partition("@")[0]
    return model != "reference", model != "dpa_omf", model, name


def versus(models: dict[str, dict]) -> str:
    """One line per paired difference of a model's row to a sampled row of the reference (``composite_vs``: the
    sharpening control), or '' when there is none."""
    lines = [f"- {n} minus {r}: {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
             for n in sorted(models, key=order_key) for r, d in models[n].get("composite_vs", {}).items()]
    if not lines:
        return ""
    return "\n".join(["Paired differences to the reference sampled sharper (same scenes and keys; 95% CI):", *lines])


def table(models: dict[str, dict]) -> str:
    """The markdown table: the metric columns, then (when the evaluation has them) the composite's 95%
    bootstrap interval over scenes and the paired difference to the reference with its interval; and when the
    models carry the log's own rates (``log``: collision and off-road rates of the data on the same scenes),
    a last row with them."""
    order = sorted(models, key=order_key)  # the reference's rows, then ours, then the others
    intervals = all("composite_ci" in models[n] for n in order)
    extra = ("composite 95% CI", "vs reference [95% CI]") if intervals else ()
    columns = names.report()
    head = "| model | " + " | ".join(columns + extra) + " |"
    sep = "|---|" + "---:|" * (len(columns) + len(extra))
    rows = []
    for n in order:
        cells = [f"{models[n][c]:.4f}" for c in columns]
        if intervals:
            lo, hi = models[n]["composite_ci"]
            d = models[n].get("composite_vs_reference")
            cells += [f"[{lo:.4f}, {hi:.4f}]", f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d else "-"]
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    log = next((models[n]["log"] for n in order if models[n].get("log")), None)  # rows cached earlier lack it
    if log:  # the logged data's own rates on the same scenes (WOSAC scores the log's likelihood, not low rates)
        cells = [f"{log[c]:.4f}" if c in log else "-" for c in columns] + ["-"] * len(extra)
        rows.append("| log (the data) | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *rows])


def sampled(summary: dict) -> str:
    """``, sampled at temperature T, top-p P`` for an evaluation sampled other than at the model's own
    distribution (summary ``sampling``), else ''."""
    s = summary.get("sampling", {"temperature": 1.0, "top_p": 1.0})
    if (s["temperature"], s["top_p"]) == (1.0, 1.0):
        return ""
    return f", sampled at temperature {s['temperature']:g}, top-p {s['top_p']:g}"


def write_report(out: pathlib.Path, align_dirs: Sequence[pathlib.Path], summary: dict) -> str:
    """Writes ``report.md`` and the figures into ``out``; returns the markdown table.

    ``align_dirs``: the alignment stages' folders (their ``metrics.jsonl`` give the NLL curves).
    """
    models = summary["models"]
    text = table(models)
    lines = [
        "# Evaluation",
        "",
        f"WOSAC {summary['challenge']} realism on {summary['num_scenes']} held-out scenes, "
        f"{summary['num_rollouts']} rollouts each{sampled(summary)} (higher is better for the likelihood columns, "
        "lower for minADE and rates).",
        "",
        text,
        "",
    ]
    against_sharpened = versus(models)
    if against_sharpened:
        lines += [against_sharpened, ""]
    lines += ["![buckets](realism_buckets.png)"]
    _bucket_plot(out / "realism_buckets.png", models)
    if _nll_plot(out / "alignment_nll.png", align_dirs):
        lines += ["", "![alignment NLL](alignment_nll.png)"]
    atomic.write_text(out / "report.md", "\n".join(lines) + "\n")
    return text


def _bucket_plot(path: pathlib.Path, models: dict[str, dict]) -> None:
    buckets = ("composite", "kinematic", "interactive", "map")
    labels = list(models)
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(buckets))
    for i, name in enumerate(labels):
        ax.bar(x + i * width, [models[name][b] for b in buckets], width, label=name)
    ax.set_xticks(x + width * (len(labels) - 1) / 2, buckets)
    lo = min(models[n][b] for n in labels for b in buckets)
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_ylabel("realism likelihood")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _nll_plot(path: pathlib.Path, align_dirs: Sequence[pathlib.Path]) -> bool:
    runs = []
    for d in align_dirs:
        recs = [r for r in stage_log.read_metrics(d / stage_log.METRICS_FILE) if NLL_KEYS[0][0] in r]
        if recs:
            runs.append((d.name, recs))
    if not runs:
        return False
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), squeeze=False)
    for ax, (name, recs) in zip(axes[0], runs):
        steps = [r["step"] for r in recs]
        for key, label in NLL_KEYS:
            ax.plot(steps, [r.get(key, np.nan) for r in recs], label=label)
        ax.set_title(name)
        ax.set_xlabel("alignment step")
        ax.set_ylabel("NLL per token")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True

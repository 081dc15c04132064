"""The study's markdown: the main table, the sweep, the levers and sampling choices (validation), Table 2 / 3,
Fig. 7, the protocol's power, and ``alignment.md`` (the results document)."""

from __future__ import annotations

from dpa_omf.metrics import names
from dpa_omf.tools.study import results


def ci(stat: dict, signed: bool = True) -> str:
    """The stat's 95% interval as ``[lo, hi]`` ('' without one); ``signed`` for differences."""
    if "ci95" not in stat:
        return ""
    lo, hi = stat["ci95"]
    return f"[{lo:+.4f}, {hi:+.4f}]" if signed else f"[{lo:.4f}, {hi:.4f}]"


def markdown(result: dict, setup: dict) -> str:
    seeds = result["seeds"]
    lines = [
        "# Study: alignment methods over seeds",
        "",
        f"Seeds {seeds} (align.seed = evaluate.seed = s; shared data, reference and curation). "
        f"WOSAC {setup['challenge']} realism on {setup['num_scenes']} held-out scenes x "
        f"{setup['num_rollouts']} rollouts; mean +- sample std over seeds.",
        "",
        "| model | " + " | ".join(names.report()) + " | composite 95% CI | composite - reference | its 95% CI "
        "| held-out pref. accuracy | KL to reference | rollouts sampled | updates |",
        "|---|" + "---:|" * (len(names.report()) + 7),
    ]
    for n, row in result["models"].items():
        cells = [f"{row[c]['mean']:.4f} +- {row[c]['std']:.4f}" for c in names.report()]
        cells.append(ci(row["composite"], signed=False))
        d = row.get("composite_minus_reference")
        cells += [f"{d['mean']:+.4f} +- {d['std']:.4f}", ci(d)] if d else ["", ""]
        acc, kl = row.get("heldout_pref_accuracy"), row.get("kl_to_reference")
        cells.append(f"{acc['mean']:.3f} +- {acc['std']:.3f}" if acc else "")
        cells.append(f"{kl['mean']:.4f}" if kl else "")
        for k in ("rollouts_sampled", "updates"):
            cells.append(f"{row[k]['mean']:.0f}" if k in row else "")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Mean +- std over seeds; 95% CIs: the [seeds, scenes] per-scene composites bootstrapped over seeds "
              "and scenes together (two levels). KL: per token, policy || reference, teacher-forced on held-out "
              "logs. Rollouts sampled: the training data's (offline: the curated rollouts of the training scenes).",
              *protocol_lines(result.get("protocol")), "",
              "![realism vs rollouts sampled](realism_vs_rollouts.png)", "",
              "Held-out NLL per token over alignment steps (the paper's Fig. 4 / 6) and realism against KL to the "
              "reference:", "", "![NLL curves and realism vs KL](nll_and_kl.png)", "", "Per seed composite:", ""]
    for n, row in result["models"].items():
        lines.append(f"- {n}: " + ", ".join(f"{v:.4f}" for v in row["composite"]["per_seed"]))
    return "\n".join(lines) + "\n"


def protocol_lines(protocol: dict | None) -> list[str]:
    """What the protocol resolves: the measured spread of DPA-OMF - reference and the detectable difference."""
    if not protocol:
        return []
    return ["", f"Power: DPA-OMF - reference varies with SD {protocol['between_scenes']:.4f} between scenes and "
            f"{protocol['between_seeds']:.4f} between seeds; on {protocol['test_scenes']} scenes x "
            f"{protocol['seeds']} seeds its standard error is {protocol['standard_error']:.4f}, so the smallest "
            f"difference this protocol detects (95% two-sided, 80% power) is {protocol['detectable_difference']:.4f}. "
            + _paper_gain(protocol)]


def _paper_gain(protocol: dict) -> str:
    if "scenes_for_paper_gain" not in protocol:
        return ""
    n = protocol["scenes_for_paper_gain"]
    if n is None:
        return (f"With {protocol['seeds']} seed(s) the spread between seeds alone keeps it above the paper's "
                f"+{results.PAPER_GAIN}: more seeds are needed, not more scenes.")
    caveat = " (one seed: the spread between seeds is not measured, so this is a lower bound)" if (
        protocol["seeds"] < 2) else ""
    return (f"Detecting the paper's +{results.PAPER_GAIN} with {protocol['seeds']} seed(s) needs {n} test "
            f"scenes{caveat}.")


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


def levers_table(lv: dict) -> list[str]:
    """The levers on the validation block (``cli``'s ``levers`` record): value, group, kept or not."""
    lines = ["", f"Levers on the validation block (first seed): DPA-OMF without them {lv['base']:.4f}; per group "
             "the best that beats it is kept, and the kept ones run together as `dpa_omf[combined]`.", "",
             "| lever | group | overrides | validation composite | vs DPA-OMF | kept |", "|---|---|---|---:|---:|---|"]
    for name, r in lv["arms"].items():
        lines.append(f"| {name} | {r['group']} | `{' '.join(r['overrides'])}` | {r['val_composite']:.4f} | "
                     f"{r['val_composite'] - lv['base']:+.4f} | {'yes' if name in lv['chosen'] else ''} |")
    if not lv["chosen"]:
        lines += ["", "No lever beat DPA-OMF on validation: no combined arm."]
    return lines


def sampling_table(sh: dict) -> list[str]:
    """The sharpening grid on the validation block (``cli``'s ``sharpening`` record), the chosen setting in bold;
    settings an earlier grid chose (no ``grid``) with where that grid is recorded."""
    if sh.get("grid") is None:
        return ["", "Sampling (temperature t, top-p p), as an earlier grid on this validation block chose it ("
                + sh["source"] + "): " + ", ".join(f"{m} t {t:g}, p {p:g}" for m, (t, p) in sh["chosen"].items())
                + "; each is its test row `<model>@t..,p..`."]
    grid = [tuple(s) for s in sh["grid"]]
    lines = ["", "Sampling (temperature t, top-p p) on the validation block: the best per model (bold) is its "
             "test row `<model>@t..,p..` (the sharpening control for the reference).", "",
             "| model | " + " | ".join(f"t {t:g}, p {p:g}" for t, p in grid) + " |", "|---|" + "---:|" * len(grid)]
    for model, vals in sh["val_composite"].items():
        chosen = tuple(sh["chosen"][model])
        cells = [f"**{v:.4f}**" if tuple(s) == chosen else f"{v:.4f}" for s, v in zip(grid, vals)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def arms_table(result: dict, arms: list, table: str, title: str, base: str) -> list[str]:
    rows = [(base, "dpa_omf")] + [(a.name, f"dpa_omf[{a.name}]") for a in arms if a.table == table]
    lines = ["", title, "", "| preference data | composite | 95% CI | vs reference [95% CI] | collision | off-road "
             "| held-out pref. accuracy | KL to reference |", "|---|" + "---:|" * 7]
    for label, n in rows:
        r = result["models"].get(n)
        if r is None:
            continue
        d = r.get("composite_minus_reference", {})
        acc, kl = r.get("heldout_pref_accuracy"), r.get("kl_to_reference")
        cells = [f"{r['composite']['mean']:.4f}", ci(r["composite"], signed=False),
                 f"{d.get('mean', float('nan')):+.4f} {ci(d)}",
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
        lines.append(f"| {n} | {r['composite']['mean']:.4f} | {ci(r['composite'], signed=False)} | {acc:.3f} | "
                     f"{r['min_ade']['mean']:.3f} |")
    return lines


def alignment_markdown(doc: dict, result: dict) -> str:
    """``alignment.md``: the headline table, DPA-OMF against each control and baseline, the power, the claims'
    verdicts, the choices made on validation and the figures (``doc``: ``results.alignment_json``)."""
    lines = ["# DPA-OMF: the powered, controlled result", "",
             f"WOSAC {doc['challenge']} composite on {doc['test_scenes']} held-out test scenes x {doc['num_rollouts']} "
             f"rollouts, alignment seeds {doc['seeds']}; every model of a seed scored with the same rollout keys. "
             "Intervals: 95%, two-level bootstrap over seeds and scenes. Choices (learning rates, levers, sampling) "
             "were made on a separate validation block, never on these scenes.", "",
             "| model | composite | 95% CI | vs reference [95% CI] | KL to reference | minADE | collision | off-road |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n, m in doc["models"].items():
        v = m.get("vs_reference")
        vs = f"{v['mean']:+.4f} [{v['lo']:+.4f}, {v['hi']:+.4f}]" if v and v["lo"] is not None else ""
        band = f"[{m['ci'][0]:.4f}, {m['ci'][1]:.4f}]" if m["ci"] else ""
        kl = f"{m['kl_to_reference']:.4f}" if "kl_to_reference" in m else ""
        lines.append(f"| {n} | {m['composite']:.4f} | {band} | {vs} | {kl} | {m['min_ade']:.3f} | "
                     f"{m['collision_rate']:.4f} | {m['offroad_rate']:.4f} |")
    heads = {n: m["vs"] for n, m in doc["models"].items() if results.headline(n) and m.get("vs")}
    if heads:
        others = list(next(iter(heads.values())))
        lines += ["", "Each DPA-OMF model minus each control and baseline (paired, 95% CI):", "",
                  "| other | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
        for o in others:
            cells = [f"{vs[o]['mean']:+.4f} [{vs[o]['lo']:+.4f}, {vs[o]['hi']:+.4f}]" if o in vs else ""
                     for vs in heads.values()]
            lines.append(f"| {o} | " + " | ".join(cells) + " |")
    for r in doc.get("rows_from") or []:
        lines += ["", f"Rows measured by an earlier study ({r['source']}): {', '.join(r['models']) or 'none new'}; "
                  "the same scenes and rollout keys (the reference's per-scene composites agree in every seed)."]
    lines += protocol_lines(doc.get("protocol"))
    claims = results.verdicts(doc)
    if claims:
        lines += ["", "## Claims", ""] + [f"- {c}: **{v}**" for c, v in claims]
    lines += ["", "## Choices on the validation block"]
    if result.get("rates"):
        r = result["rates"]
        lines += ["", "Learning rates, as an earlier sweep on this validation block chose them (" + r["source"] + "): "
                  + ", ".join(f"{m} {lr:g}" for m, lr in r["chosen"].items()) + "."]
    for key, fn in (("sweep", sweep_table), ("levers", levers_table), ("sharpening", sampling_table)):
        if result.get(key):
            lines += fn(result[key])
    if doc.get("time"):
        t = doc["time"]
        lines += ["", f"The whole protocol took {t['wall_hours']:.2f} h wall and {t['cpu_hours']:.2f} h CPU on this "
                  f"machine ({t['commands']} study command(s), {t.get('job_runs', 0)} job runs)."]
    lines += ["", "## Figures", "", "![realism vs KL to the reference](realism_vs_kl.png)", "",
              "![gain vs preference-data scale](gain_vs_data_scale.png)"]
    return "\n".join(lines) + "\n"

"""The study's numbers: per model the realism columns over seeds, intervals over seeds and scenes, the paired
differences, the protocol's detectable difference, and ``alignment.json``.

Inputs, per seed ``s``: ``per_seed[s]["models"][name]`` (the evaluate summary's row: ``names.report()``),
``aligned[s][name]`` (the alignment's summary, for ``ALIGN_FIGURES``) and ``per_scene[s][name]`` (the per-scene
composites ``[N]``, the same N scenes in every seed). Intervals (95%) come from ``metrics.stats``' two-level
bootstrap of the ``[seeds, scenes]`` composites: seeds and scenes resampled together, for levels and for paired
differences (same seed's rollout keys, same scenes).
"""

from __future__ import annotations

import statistics

import numpy as np

from dpa_omf.metrics import names, stats

ALIGN_FIGURES = {"heldout_pref_accuracy": "eval_pref_accuracy", "kl_to_reference": "eval_kl_to_reference",
                 "rollouts_sampled": "rollouts_sampled", "updates": "updates"}
# The paper's gain of DPA-OMF over the reference (composite, 2024 metric): the protocol's target.
PAPER_GAIN = 0.018


def seed_stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def matrix(per_scene: dict[int, dict] | None, name: str, seeds: list[int]) -> np.ndarray | None:
    """``[seeds, scenes]`` composites of a model (None unless every seed has them)."""
    if not per_scene or any(per_scene.get(s, {}).get(name) is None for s in seeds):
        return None
    return np.asarray([per_scene[s][name] for s in seeds], np.float64)


def is_dpa_omf(name: str) -> bool:
    """DPA-OMF and its variants (arms ``dpa_omf[...]``, sampled ``dpa_omf@...``)."""
    return name == "dpa_omf" or name.startswith(("dpa_omf[", "dpa_omf@"))


def aggregate(per_seed: dict[int, dict], aligned: dict[int, dict], methods: list[str],
              per_scene: dict[int, dict] | None = None) -> dict:
    """Per model: each realism column's mean / std / per-seed values, the difference to the reference, the
    alignment's figures (``ALIGN_FIGURES``), and, with per-scene composites, two-level 95% intervals of the
    composite and of its paired difference to the reference; every DPA-OMF model also gets ``vs``: its paired
    difference to every model that is not a DPA-OMF variant (the controls and baselines); ``protocol``: the spread
    of DPA-OMF's paired difference to the reference and the smallest difference the protocol detects."""
    rows = ["reference", *list(methods)]
    seeds = sorted(per_seed)
    out = {"seeds": seeds, "models": {}}
    ref = matrix(per_scene, "reference", seeds)
    for n in rows:
        row = {c: seed_stats([per_seed[s]["models"][n][c] for s in seeds]) for c in names.report()}
        comp = matrix(per_scene, n, seeds)
        if comp is not None:
            row["composite"]["ci95"] = stats.two_level_ci(comp)
        if n != "reference":
            row["composite_minus_reference"] = seed_stats(
                [per_seed[s]["models"][n]["composite"] - per_seed[s]["models"]["reference"]["composite"]
                 for s in seeds])
            if comp is not None and ref is not None:
                d = stats.two_level_paired_difference(comp, ref)
                row["composite_minus_reference"]["ci95"] = (d["lo"], d["hi"])
            for name, key in ALIGN_FIGURES.items():
                vals = [aligned[s][n][key] for s in seeds if aligned.get(s, {}).get(n, {}).get(key) is not None]
                if vals:
                    row[name] = seed_stats(vals)
        out["models"][n] = row
    for n in rows:
        comp = matrix(per_scene, n, seeds)
        if is_dpa_omf(n) and comp is not None:
            # the controls and baselines (other DPA-OMF variants are rows of their own, not controls)
            others = {o: matrix(per_scene, o, seeds) for o in rows if o != "reference" and not is_dpa_omf(o)}
            out["models"][n]["vs"] = {o: stats.two_level_paired_difference(comp, m)
                                      for o, m in others.items() if m is not None}
    dpa = matrix(per_scene, "dpa_omf", seeds)
    if dpa is not None and ref is not None:
        sp = stats.spread(dpa - ref)
        out["protocol"] = sp | {"test_scenes": int(dpa.shape[1]), "seeds": len(seeds),
                                "detectable_difference": stats.detectable_difference(sp["standard_error"]),
                                "scenes_for_paper_gain": None}  # None: the seeds' spread alone is too large
        n = stats.scenes_needed(sp["between_scenes"], sp["between_seeds"], len(seeds), PAPER_GAIN)
        if np.isfinite(n):
            out["protocol"]["scenes_for_paper_gain"] = max(1, int(np.ceil(n)))
    return out


def merge(per_seed: dict, aligned: dict, per_scene: dict, rows: dict[str, dict[int, dict]], model: str,
          align_of: str | None = None) -> list[str]:
    """Adds models run in other folders to the per-seed results: ``rows[name][seed] = {"summary", "per_scene",
    ["align"]}`` whose evaluate summary and per-scene composites (``{model: [N]}``) hold ``model``; ``align_of``:
    a model whose alignment figures the row shares (a sampled model: its checkpoint's). Returns the names added."""
    for name, by_seed in rows.items():
        for s, r in by_seed.items():
            per_seed[s]["models"][name] = r["summary"]["models"][model]
            if "align" in r:
                aligned[s][name] = r["align"]
            elif align_of and align_of in aligned.get(s, {}):
                aligned[s][name] = aligned[s][align_of]
            scenes = r["per_scene"].get(model)
            if per_scene.get(s) and scenes is not None:
                per_scene[s][name] = scenes
    return list(rows)


ROWS_FILE = "rows.json"  # a study's own rows, in its results folder (``saved_rows``)
ROWS_TOLERANCE = 1e-6  # the reference's per-scene composites of two studies must agree to this (same scenes, keys)


def saved_rows(per_seed: dict, aligned: dict, per_scene: dict, names_: list[str], setup: dict) -> dict:
    """What another study needs to report this one's models beside its own (``add_saved_rows``): per seed the
    evaluate rows, the alignment figures (``ALIGN_FIGURES``) and the per-scene composites of ``names_`` and of the
    reference, with the setup (challenge, scenes, rollouts). A few hundred kB: kept in the results folder (and
    committed with the results document), so a later study on another machine can merge them. ``per_scene``
    holds every seed's composites of the reference and of ``names_``."""
    keep = ["reference", *names_]
    return {"setup": setup, "seeds": sorted(per_seed), "names": list(names_),
            "per_seed": {str(s): {n: per_seed[s]["models"][n] for n in keep} for s in sorted(per_seed)},
            "aligned": {str(s): {n: {k: v for k, v in aligned.get(s, {}).get(n, {}).items()
                                     if k in ALIGN_FIGURES.values()}
                                 for n in names_ if n in aligned.get(s, {})} for s in sorted(per_seed)},
            "per_scene": {str(s): {n: list(per_scene[s][n]) for n in keep} for s in sorted(per_seed)}}


def add_saved_rows(per_seed: dict, aligned: dict, per_scene: dict, saved: dict, setup: dict,
                   source: str) -> list[str]:
    """Adds the models of another study's ``saved_rows`` that this one lacks (its own rows win) and returns their
    names. Raises ``ValueError`` unless the two were measured alike: the same challenge, scenes and rollouts, every
    seed of this study present there, and the reference's per-scene composites equal (``ROWS_TOLERANCE``) in every
    seed, which checks that both scored the same scenes with the same rollout keys and the same reference."""
    for k in ("challenge", "num_scenes", "num_rollouts"):
        if saved["setup"].get(k) != setup.get(k):
            raise ValueError(f"study: {source}: {k} {saved['setup'].get(k)!r} differs from this study's "
                             f"{setup.get(k)!r}: its rows cannot be compared with these")
    missing = [s for s in per_seed if str(s) not in saved["per_seed"]]
    if missing:
        raise ValueError(f"study: {source} has no rows for seeds {missing}")
    for s in per_seed:
        mine, theirs = per_scene[s]["reference"], saved["per_scene"][str(s)].get("reference")
        if not mine or not theirs or len(mine) != len(theirs):
            raise ValueError(f"study: {source}, seed {s}: no per-scene reference composites to check against")
        gap = float(np.max(np.abs(np.asarray(mine) - np.asarray(theirs))))
        if gap > ROWS_TOLERANCE:
            raise ValueError(f"study: {source}, seed {s}: the reference's per-scene composites differ by up to "
                             f"{gap:.3g} (> {ROWS_TOLERANCE:g}): not the same scenes, rollout keys or reference")
    added = [n for n in saved["names"] if n not in per_seed[next(iter(per_seed))]["models"]]
    for s in per_seed:
        for n in added:
            per_seed[s]["models"][n] = saved["per_seed"][str(s)][n]
            if n in saved["aligned"].get(str(s), {}):
                aligned.setdefault(s, {})[n] = saved["aligned"][str(s)][n]
            per_scene[s][n] = saved["per_scene"][str(s)][n]
    return added


def _interval(d: dict) -> dict:
    return {"mean": d["mean"], "lo": d["lo"], "hi": d["hi"]}


def alignment_json(result: dict) -> dict:
    """The machine-readable result (``docs/results/alignment.json``): ``test_scenes``, ``seeds``, ``models``
    (each: ``composite``, ``ci`` [lo, hi], ``vs_reference`` {mean, lo, hi}; DPA-OMF's models also ``vs``
    {other model: {mean, lo, hi}}), ``protocol`` (the spread and detectable difference) and ``setup``."""
    models = {}
    for n, row in result["models"].items():
        m = {"composite": row["composite"]["mean"], "ci": list(row["composite"].get("ci95", ()))}
        d = row.get("composite_minus_reference")
        if d is not None:
            lo, hi = d.get("ci95", (None, None))
            m["vs_reference"] = {"mean": d["mean"], "lo": lo, "hi": hi}
        if "kl_to_reference" in row:
            m["kl_to_reference"] = row["kl_to_reference"]["mean"]
        for c in ("min_ade", "collision_rate", "offroad_rate"):
            m[c] = row[c]["mean"]
        if "vs" in row:
            m["vs"] = {o: _interval(d) for o, d in row["vs"].items()}
        models[n] = m
    setup = result.get("setup", {})
    return {"test_scenes": setup.get("num_scenes"), "seeds": result["seeds"], "challenge": setup.get("challenge"),
            "num_rollouts": setup.get("num_rollouts"), "models": models, "protocol": result.get("protocol"),
            "choices": {k: result.get(k) for k in ("sweep", "rates", "levers", "sharpening")},
            "rows_from": result.get("rows_from") or [], "time": result.get("time")}


def headline(name: str) -> bool:
    """The DPA-OMF models whose claims the results document judges: the method, its combined levers, and its
    sampled rows (the feature and data arms are analyses, not candidates)."""
    return name in ("dpa_omf", "dpa_omf[combined]") or name.startswith(("dpa_omf@", "dpa_omf[combined]@"))


def verdicts(doc: dict) -> list[tuple[str, str]]:
    """Each claim the protocol tests, and whether the measured intervals support it (from ``alignment_json``):
    per headline DPA-OMF model, the paper's gain over the reference and a win over every control and baseline."""
    out = []
    for name, m in doc["models"].items():
        if not headline(name) or "vs" not in m:
            continue
        v = m["vs_reference"]
        holds = v["lo"] is not None and v["lo"] > 0 and v["mean"] >= PAPER_GAIN
        out.append((f"{name} - reference >= +{PAPER_GAIN} (the paper's gain), 95% interval above 0",
                    f"{'holds' if holds else 'not shown'}: {v['mean']:+.4f} [{v['lo']:+.4f}, {v['hi']:+.4f}]"))
        for other, d in m["vs"].items():
            out.append((f"{name} beats {other} (95% interval above 0)",
                        f"{'holds' if d['lo'] > 0 else 'not shown'}: {d['mean']:+.4f} [{d['lo']:+.4f}, "
                        f"{d['hi']:+.4f}]"))
    return out

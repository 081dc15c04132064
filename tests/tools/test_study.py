"""The study's aggregation: mean / spread over seeds, differences to the reference, the markdown table."""

import math

import pytest

from dpa_omf.jobs import report
from dpa_omf.tools import study


def _models(ref: float, ours: float) -> dict:
    base = dict.fromkeys(report.COLUMNS, 0.5)
    return {"reference": base | {"composite": ref}, "dpa_omf": base | {"composite": ours},
            "afd": base | {"composite": ref - 0.01}}


def test_aggregate_mean_std_and_paired_difference():
    per_seed = {0: {"models": _models(0.50, 0.52)}, 1: {"models": _models(0.60, 0.61)},
                2: {"models": _models(0.55, 0.58)}}
    acc = {0: {"dpa_omf": 0.7, "afd": 0.5}, 1: {"dpa_omf": 0.8, "afd": 0.5}, 2: {"dpa_omf": 0.9, "afd": None}}
    aligned = {s: {m: {"eval_pref_accuracy": a, "eval_kl_to_reference": 0.01 * (s + 1), "rollouts_sampled": 5120}
                   for m, a in v.items()} for s, v in acc.items()}
    r = study.aggregate(per_seed, aligned, ["dpa_omf", "afd"])
    assert r["seeds"] == [0, 1, 2]
    ref = r["models"]["reference"]["composite"]
    assert ref["mean"] == pytest.approx(0.55) and ref["std"] == pytest.approx(0.05)
    d = r["models"]["dpa_omf"]["composite_minus_reference"]
    assert d["per_seed"] == pytest.approx([0.02, 0.01, 0.03])
    assert d["mean"] == pytest.approx(0.02) and d["std"] == pytest.approx(0.01)
    assert r["models"]["dpa_omf"]["heldout_pref_accuracy"]["mean"] == pytest.approx(0.8)
    assert r["models"]["afd"]["heldout_pref_accuracy"]["per_seed"] == [0.5, 0.5]  # missing seed skipped
    assert "composite_minus_reference" not in r["models"]["reference"]
    assert r["models"]["dpa_omf"]["kl_to_reference"]["mean"] == pytest.approx(0.02)
    text = study.markdown(r, {"challenge": "2024", "num_scenes": 32, "num_rollouts": 32})
    assert "| dpa_omf | " in text and "+0.0200 +- 0.0100" in text and "0.800 +- 0.100" in text
    assert "| 5120 |" in text
    assert not any(math.isnan(v) for v in ref["per_seed"])


def test_intervals_over_scenes_and_the_figure(tmp_path):
    """Per-scene composites averaged over seeds, bootstrapped over scenes; the paired difference's interval
    excludes 0 when every scene improves; the figure is written."""
    per_seed = {s: {"models": _models(0.5, 0.52)} for s in (0, 1)}
    scenes = [0.4, 0.5, 0.6, 0.45, 0.55]
    per_scene = {s: {"reference": scenes, "dpa_omf": [v + 0.02 + 0.01 * s for v in scenes],
                     "afd": [v - 0.01 for v in scenes]} for s in (0, 1)}
    aligned = {s: {m: {"rollouts_sampled": 100, "eval_pref_accuracy": 0.6} for m in ("dpa_omf", "afd")}
               for s in (0, 1)}
    r = study.aggregate(per_seed, aligned, ["dpa_omf", "afd"], per_scene)
    lo, hi = r["models"]["dpa_omf"]["composite_minus_reference"]["ci95"]
    assert lo == pytest.approx(0.025) and hi == pytest.approx(0.025)  # every scene +0.025 (seed mean)
    lo, hi = r["models"]["reference"]["composite"]["ci95"]
    assert 0.4 <= lo < 0.5 < hi <= 0.6
    study.realism_vs_rollouts(r, {"dpa_omf": [(50, 0.5), (100, 0.51)]}, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000
    assert "[+0.0250, +0.0250]" in study.markdown(r, {"challenge": "2024", "num_scenes": 5, "num_rollouts": 32})


def test_link_shared_needs_the_main_job_stages(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the main job"):
        study._link_shared(tmp_path / "missing", tmp_path / "seed_1")
    src = tmp_path / "main"
    for s in study.SHARED_STAGES:
        (src / s).mkdir(parents=True)
    study._link_shared(src, tmp_path / "seed_1")
    assert all((tmp_path / "seed_1" / s).is_symlink() for s in study.SHARED_STAGES)

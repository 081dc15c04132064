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


def test_learning_rate_choice_blocks_and_sweep_table(tmp_path):
    val = {"dpa_omf": {3e-4: 0.70, 1e-3: 0.72, 3e-3: 0.71}, "afd": {3e-4: 0.69, 1e-3: 0.69, 3e-3: 0.68}}
    chosen = study.choose_learning_rates(val)
    assert chosen == {"dpa_omf": 1e-3, "afd": 3e-4}  # best; a tie goes to the smaller rate
    val_flags, test_flags = study._blocks(64, 256)
    assert val_flags == ["--config.evaluate.first_scene=256", "--config.evaluate.num_scenes=64"]
    assert test_flags == ["--config.evaluate.first_scene=0", "--config.evaluate.num_scenes=256"]
    lines = study.sweep_table({"val_composite": val, "reference_val_composite": 0.7, "chosen": chosen})
    assert "| dpa_omf | 0.7000 | **0.7200** | 0.7100 |" in lines
    with pytest.raises(SystemExit, match="--val_scenes"):
        study.main([f"--workdir={tmp_path / 'x'}", "--lrs=1e-3"])
    assert not (tmp_path / "x").exists()  # refused before anything is made


def test_nll_and_kl_figure_from_alignment_logs(tmp_path):
    import json

    seed_dir = tmp_path / "seed_0"
    for m in ("dpa_omf", "afd"):
        d = seed_dir / study.align.folder_name(m)
        d.mkdir(parents=True)
        rows = [{"step": s, "eval_nll_preferred": 1.0 + s / 100, "eval_nll_unpreferred": 1.2 + s / 50,
                 "eval_nll_expert": 1.1, "eval_kl_to_reference": s / 1000, "eval_realism_composite": 0.7}
                for s in (20, 40)]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [{"step": 1, "loss": 1.0}, *rows]))
    per_seed = {0: {"models": _models(0.5, 0.52)}}
    aligned = {0: {m: {"eval_kl_to_reference": 0.02} for m in ("dpa_omf", "afd")}}
    r = study.aggregate(per_seed, aligned, ["dpa_omf", "afd"])
    study.nll_and_kl_figure(r, [seed_dir], ["dpa_omf", "afd"], tmp_path / "nll.png")
    assert (tmp_path / "nll.png").stat().st_size > 1000
    assert [r["step"] for r in study._eval_records(seed_dir, "afd")] == [20, 40]


def test_method_variants_join_the_config_variants():
    assert study.with_variant("configs/align.py", "afd") == "configs/align.py:afd"
    assert study.with_variant("configs/align.py:smoke", "afd") == "configs/align.py:smoke,afd"
    assert study.with_variant("configs/align.py:smoke", "dpa_omf") == "configs/align.py:smoke"

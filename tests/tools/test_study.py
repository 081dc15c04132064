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
    r = study.aggregate(per_seed, acc, ["dpa_omf", "afd"])
    assert r["seeds"] == [0, 1, 2]
    ref = r["models"]["reference"]["composite"]
    assert ref["mean"] == pytest.approx(0.55) and ref["std"] == pytest.approx(0.05)
    d = r["models"]["dpa_omf"]["composite_minus_reference"]
    assert d["per_seed"] == pytest.approx([0.02, 0.01, 0.03])
    assert d["mean"] == pytest.approx(0.02) and d["std"] == pytest.approx(0.01)
    assert r["models"]["dpa_omf"]["heldout_pref_accuracy"]["mean"] == pytest.approx(0.8)
    assert r["models"]["afd"]["heldout_pref_accuracy"]["per_seed"] == [0.5, 0.5]  # missing seed skipped
    assert "composite_minus_reference" not in r["models"]["reference"]
    text = study.markdown(r, {"challenge": "2024", "num_scenes": 32, "num_rollouts": 32})
    assert "| dpa_omf | " in text and "+0.0200 +- 0.0100" in text and "0.800 +- 0.100" in text
    assert not any(math.isnan(v) for v in ref["per_seed"])


def test_link_shared_needs_the_main_job_stages(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the main job"):
        study._link_shared(tmp_path / "missing", tmp_path / "seed_1")
    src = tmp_path / "main"
    for s in study.SHARED_STAGES:
        (src / s).mkdir(parents=True)
    study._link_shared(src, tmp_path / "seed_1")
    assert all((tmp_path / "seed_1" / s).is_symlink() for s in study.SHARED_STAGES)

"""The realism name table (``dpa_omf/metrics/names.py``): one row per metric, and nothing else pairs the names."""

import ast
import pathlib

import numpy as np
import pytest

from dpa_omf.jobs import realism_eval, report
from dpa_omf.metrics import names
from dpa_omf.metrics import wosac as realism

PACKAGE = pathlib.Path(names.__file__).resolve().parents[1]
# The modules that compute the metric in the official format (and the table itself) may spell official names.
OFFICIAL_FORMAT = {"metrics/names.py", "metrics/wosac.py", "metrics/wosac_config.py"}


def test_names_are_unique_and_composite_is_the_official_metametric():
    assert len({m.name for m in names.TABLE}) == len({m.official for m in names.TABLE}) == len(names.TABLE)
    assert names.composite() == "metametric"
    assert names.report()[0] == "composite" and "composite" in names.summary() and "composite" in names.logged()
    with pytest.raises(KeyError, match="no realism metric named 'meta-metric'"):
        names.official("meta-metric")


def test_a_new_metric_is_one_row(monkeypatch):
    """One more row reaches the per-scene dict, the summary, the training logs and the report table."""
    new = names.Metric("swerve_rate", "simulated_swerve_rate", report=True, logged=True)
    monkeypatch.setattr(names, "TABLE", (*names.TABLE, new))
    row = dict.fromkeys(names.per_scene(), 0.5)
    assert realism.metrics_to_official_dict(row)["simulated_swerve_rate"] == 0.5  # the realism CLI prints this dict
    assert names.ours(row, names.summary())["swerve_rate"] == 0.5  # the evaluate summary and the reference
    assert "swerve_rate" not in names.likelihoods()

    class Fixed:  # an evaluator whose every scene scores `row`
        def scene_metrics(self, params, scenarios, indices):
            return [dict(row) for _ in indices]

    assert realism_eval.realism_logger(Fixed(), [None, None])(None)["realism_swerve_rate"] == 0.5
    table = report.table({"reference": dict.fromkeys(names.report(), 0.5)})
    assert "swerve_rate" in table.splitlines()[0] and table.count("0.5000") == len(names.report())


def _strings(path: pathlib.Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def test_no_module_outside_the_metric_pairs_names():
    """Only the table maps ours <-> official: no other module spells an official name that differs from ours."""
    official_only = {m.official for m in names.TABLE if m.official != m.name}
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        hits = official_only & _strings(path)
        if rel not in OFFICIAL_FORMAT and hits:
            found[rel] = sorted(hits)
    assert not found, f"official metric names outside dpa_omf/metrics/names.py: {found}"
    assert np.all([m.name.isidentifier() for m in names.TABLE])

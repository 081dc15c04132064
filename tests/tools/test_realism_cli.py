"""The realism command line (dpa_omf.tools.realism_cli)."""

import json
import subprocess
import sys

import pytest

from dpa_omf.tools import realism_cli


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "dpa_omf.tools.realism_cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--rollouts" in out and "--scenario" in out and "--compilation_cache" in out


@pytest.mark.shared
@pytest.mark.slow
def test_cli_on_scenario_proto(shared_dir, capsys):
    golden = shared_dir / "golden" / "wosac"
    realism_cli.main(["--scenario", str(shared_dir / "womd" / "motion_data_one_scenario.tfrecord"),
                      "--rollouts", str(golden / "submission" / "rollouts.npz"), "--config", "2025", "--json"])
    out = json.loads(capsys.readouterr().out)
    expected = json.loads((golden / "submission" / "metrics.json").read_text())["configs"]["2025"]["metrics"]
    for k, v in expected.items():
        assert abs(out[k] - v) <= 1e-4, (k, out[k], v)

"""Real WOMD Scenario protos through every stage at smoke sizes, with fewer agent slots (96) than the
257-track file has tracks and more than its 84 agents to simulate: every stage reads its scenes through the
one reader, fitted to the configured slots, so curated tokens, alignment batches and evaluation agree."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_scenario_protos_run_curate_align_evaluate_at_96_slots(tmp_path, shared_dir):
    womd = shared_dir / "womd"
    train = f"{womd}/*scenario*.tfrecord"  # the two Scenario-proto files (257 and 83 tracks)
    valid = f"{womd}/motion_data_one_scenario.tfrecord"
    wd = tmp_path / "wd"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-m", "dpa_omf.launch", "--config=configs/align.py:smoke", f"--workdir={wd}",
         "--config.data.source=womd", "--config.data.num_agents=96",
         f"--config.data.womd.train_pattern={train}", f"--config.data.womd.valid_pattern={valid}"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=1500)
    assert out.returncode == 0, out.stderr[-4000:]
    shards = sorted((wd / "curate").glob("shard-*.npz"))
    tokens = np.load(shards[0])["tokens"]
    assert tokens.shape[2] == 96, tokens.shape  # [N, R, A, S]: the configured slots, not the file's
    summary = json.loads((wd / "evaluate" / "summary.json").read_text())
    assert set(summary["models"]) == {"reference", "dpa_omf"}
    for name in ("reference", "dpa_omf"):
        assert np.isfinite(summary["models"][name]["composite"])
    assert "| dpa_omf |" in out.stdout

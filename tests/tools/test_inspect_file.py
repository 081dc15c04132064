"""`python -m dpa_omf.tools.inspect_file`: summaries of both formats, JSON output, PNG rendering."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.io import example_writer
from dpa_omf.testing.womd import random_scenario
from dpa_omf.tools import inspect_file as inspect_cli
from dpa_omf.viz import scene_plot as plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_json(capsys, *args) -> dict:
    assert inspect_cli.main([*map(str, args), "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object on stdout


@pytest.mark.shared
def test_scenario_file_json(shared_dir, capsys, tmp_path):
    facts = json.loads((shared_dir / "golden/wosac/facts.json").read_text())
    png = tmp_path / "scene.png"
    summary = run_json(capsys, shared_dir / "womd/motion_data_one_scenario.tfrecord", "--png", png)
    assert summary["format"] == "scenario" and summary["num_records"] == 1
    r, = summary["records"]
    assert r["scenario_id"] == facts["scenario_id"]
    assert r["num_agents"] == facts["n_tracks"] == 83
    assert r["num_sim_agents"] == facts["n_sim_agents"] == 50
    assert r["num_eval_agents"] == facts["n_evaluation_agents"] == 4
    assert r["eval_agent_ids"] == facts["evaluation_agent_ids"]
    assert r["num_roadgraph_points"] == 19_643
    assert r["num_polylines"] == facts["n_map_features"]
    assert r["num_traffic_lights_current"] == facts["n_lane_states_at_current_step"]
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000


@pytest.mark.shared
def test_big_scenario_file_keeps_every_track(shared_dir, capsys):
    r, = run_json(capsys, shared_dir / "womd/womd_scenario_input.tfrecord")["records"]
    assert (r["scenario_id"], r["num_agents"], r["num_sim_agents"]) == ("ee519cf571686d19", 257, 84)
    assert r["num_dropped_agents"] == 0 and r["num_traffic_lights_any"] == 0


@pytest.mark.shared
def test_example_file_cli_subprocess(shared_dir, tmp_path):
    """The module runs as a program and prints one JSON object."""
    png = tmp_path / "example.png"
    out = subprocess.run([sys.executable, "-m", "dpa_omf.tools.inspect_file", str(shared_dir /
                          "womd/motion_data_one_example.tfrecord"), "--json", "--png", str(png)],
                         capture_output=True, text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                                                           "TF_CPP_MIN_LOG_LEVEL": "3"})
    summary = json.loads(out.stdout)
    r, = summary["records"]
    assert r["format"] == "example" and r["scenario_id"] == "a3bb37c25ce56418"
    assert r["num_agent_slots"] == 128 and r["num_agents"] == 128
    assert (r["num_sim_agents"], r["num_eval_agents"], r["num_roadgraph_points"]) == (73, 9, 20_000)
    assert r["num_traffic_light_slots"] == 16
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_synthetic_file_counts_and_text(tmp_path, rng, capsys):
    scenes = [random_scenario(rng, 20, 300, f"scene-{i}", num_used_agents=5 + i) for i in range(3)]
    path = tmp_path / "s.tfrecord"
    example_writer.write_tfrecord(path, scenes)
    summary = run_json(capsys, path)
    assert summary["num_records"] == 3
    for r, s in zip(summary["records"], scenes, strict=True):
        assert r["scenario_id"] == dt.scenario_id_str(s.scenario_id)
        assert r["num_agents"] == int(s.agents.valid.any(-1).sum())
        assert r["num_sim_agents"] == int(s.agents.sim_mask.sum())
        assert r["num_eval_agents"] == int(s.agents.eval_mask.sum())
        assert r["num_roadgraph_points"] == int(s.roadgraph.valid.sum())
    assert inspect_cli.main([str(path), "--limit", "2"]) == 0
    text = capsys.readouterr().out
    assert "2 record(s), format example" in text and "scene-1" in text and "scene-2" not in text


def test_errors_are_reported(tmp_path, capsys):
    path = tmp_path / "t.tfrecord"
    example_writer.write_tfrecord(path, [random_scenario(np.random.default_rng(0), 8, 50)])
    path.write_bytes(path.read_bytes()[:-10])
    assert inspect_cli.main([str(path)]) == 1
    assert "record 0: truncated file" in capsys.readouterr().err


def test_plot_with_rollouts(tmp_path, rng):
    """plot_scenario draws a scene with rollouts overlaid (the curation stage's use)."""
    from matplotlib.figure import Figure

    s = random_scenario(rng, 10, 200)
    rollouts = s.agents.xy[None, :, dt.CURRENT_INDEX:] + rng.normal(0, 1, (4, 10, 81, 2))
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot(1, 1, 1)
    plot.plot_scenario(ax, s, rollout_xy=rollouts, rollout_valid=np.ones((4, 10, 81), bool), title="t")
    # Road polylines, trails, rollouts (one collection each), boxes and headings were drawn.
    assert len(ax.collections) >= 6
    x0, x1 = ax.get_xlim()
    now = s.agents.valid[:, dt.CURRENT_INDEX]
    assert x0 <= s.agents.x[now, dt.CURRENT_INDEX].min() and x1 >= s.agents.x[now, dt.CURRENT_INDEX].max()
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC

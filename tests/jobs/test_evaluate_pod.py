"""The evaluate job at pod scale: the same per-scene results whatever the processes, devices and preemptions.

The smoke data, pretrain, curate and align stages are made once (one device, a process of its own); every
evaluate run starts from a copy and scores both models (``reference`` and ``dpa_omf``) on 6 held-out scenes in
3 chunks of 2, one scene per device per step, so every run must write the same per-scene metrics. The
uninterrupted run: one process with 4 fake devices (a separate process); the others: two jax.distributed
processes of 2 devices each, and a run stopped by SIGTERM during its first chunk then restarted (in the test
process, on its 8 devices: the same per-device batch).
"""

import json
import os
import signal

import job_processes as jp
import numpy as np
import pytest

from dpa_omf.configs import evaluate as evaluate_config
from dpa_omf.jobs import evaluate, realism_eval, stages
from dpa_omf.metrics import names
from dpa_omf.train import checkpointing

STAGES = ("data", "pretrain", "curate", "align")
MODELS = ("reference", "dpa_omf")
NUM_CHUNKS = 3  # 6 scenes, 2 per chunk
# The smoke stages made cheaper (fewer training steps, no pictures, no realism during training), 6 scenes.
OVERRIDES = {"pretrain.num_steps": 3, "pretrain.realism_scenes": 0, "curate.pictures": False,
             "align.num_steps": 2, "align.realism_scenes": 0,
             "evaluate.num_scenes": 6, "evaluate.scenes_per_chunk": 2, "evaluate.scenes_per_device": 1}
FLAGS = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
EVALUATE = ["--config=configs/evaluate.py:smoke", *FLAGS]


def _config():
    c = evaluate_config.get_config("smoke")
    for key, v in OVERRIDES.items():
        section, leaf = key.split(".")
        c[section][leaf] = v
    return c


def _chunks(workdir) -> dict[tuple[str, int], dict]:
    """Every chunk file the run wrote, by (model, chunk index); fails on a file of another name."""
    out = {}
    for path in sorted((workdir / "evaluate" / "scenes").glob("*/*")):
        model = path.parent.name.rsplit("-", 1)[0]
        k = int(path.name.split("-")[1])
        assert path.name == evaluate.chunk_name(k, NUM_CHUNKS), path
        out[model, k] = json.loads(path.read_text())
    return out


def _summary(workdir) -> dict:
    return json.loads((workdir / "evaluate" / "summary.json").read_text())


def _assert_same_chunks(got: dict, want: dict) -> None:
    """The same scenes with the same per-scene metrics, bit for bit (JSON floats round-trip exactly)."""
    assert sorted(got) == sorted(want)
    for key, chunk in got.items():
        for field in ("scenes", "scenario_ids", "metrics"):
            assert chunk[field] == want[key][field], (key, field)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A workdir with the smoke data, pretrain, curate and align stages (made once; every run starts from a copy).

    Made by a one-device process: training on the test process's 8 fake devices can stall in a collective when
    the 2 CPU cores are shared (XLA's rendezvous times out and aborts).
    """
    wd = tmp_path_factory.mktemp("made") / "wd"
    (rc, err), = jp.wait([jp.launch(["--config=configs/align.py:smoke", "--config.job=align", *FLAGS], wd,
                                    num_devices=1, multihost="no")])
    assert rc == 0, err[-3000:]
    return wd


@pytest.fixture(scope="module")
def uninterrupted(made, tmp_path_factory):
    """The uninterrupted run every other is compared with: one process, 4 fake CPU devices."""
    wd = jp.copy_stages(made, tmp_path_factory.mktemp("uninterrupted") / "wd", *STAGES)
    (rc, err), = jp.wait([jp.launch(EVALUATE, wd, num_devices=4, multihost="no")])
    assert rc == 0, err[-3000:]
    chunks = _chunks(wd)
    assert sorted(chunks) == [(m, k) for m in sorted(MODELS) for k in range(NUM_CHUNKS)]
    assert {c["process"] for c in chunks.values()} == {0}
    assert _summary(wd)["processes"] == 1
    return wd


@pytest.mark.slow
def test_two_processes_score_their_chunks_as_one_process(made, uninterrupted, tmp_path):
    """2 processes x 2 devices: the per-scene metrics and the summary of 1 process x 4 devices; chunk k of
    every model scored by process k % 2 only."""
    wd = jp.copy_stages(made, tmp_path / "wd", *STAGES)
    for i, (rc, err) in enumerate(jp.wait(jp.two_processes(EVALUATE, wd, num_devices=2))):
        assert rc == 0, f"process {i}: {err[-3000:]}"
    got = _chunks(wd)
    _assert_same_chunks(got, _chunks(uninterrupted))
    assert {key: c["process"] for key, c in got.items()} == {(m, k): k % 2 for m, k in got}
    summary, want = _summary(wd), _summary(uninterrupted)
    assert summary["processes"] == 2
    assert summary["models"] == want["models"]
    assert summary["checkpoints"] == want["checkpoints"]


@pytest.mark.slow
def test_sigterm_then_restart_gives_the_uninterrupted_results(made, uninterrupted, tmp_path, monkeypatch):
    """SIGTERM while the first chunk is scored: that chunk is finished and saved, nothing else, exit 75, no
    summary; the restart scores only the 5 chunks left and ends with the uninterrupted run's results."""
    wd = jp.copy_stages(made, tmp_path / "wd", *STAGES)
    want = _chunks(uninterrupted)
    scored, stop = [], True
    scene_metrics = realism_eval.Evaluator.scene_metrics

    def signalling_scene_metrics(self, params, scenarios, indices, sampled=None):
        out = scene_metrics(self, params, scenarios, indices, sampled)
        scored.append(list(indices))
        if len(scored) == 1 and stop:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to the job's handler, before the chunk's write
        return out

    monkeypatch.setattr(realism_eval.Evaluator, "scene_metrics", signalling_scene_metrics)
    assert stages.ensure("evaluate", _config(), wd) == checkpointing.EXIT_PREEMPTED
    assert scored == [[0, 1]]
    _assert_same_chunks(_chunks(wd), {("reference", 0): want["reference", 0]})
    saved = {p: p.read_bytes() for p in (wd / "evaluate" / "scenes").glob("*/*")}
    assert not (wd / "evaluate" / "summary.json").exists()
    assert not (wd / "evaluate" / "models").exists()

    scored.clear()
    stop = False
    assert stages.ensure("evaluate", _config(), wd) == 0
    assert scored == [[2, 3], [4, 5], [0, 1], [2, 3], [4, 5]]  # reference's last two chunks, then dpa_omf's
    assert {p: p.read_bytes() for p in saved} == saved  # the finished chunk is not written again
    _assert_same_chunks(_chunks(wd), want)
    assert _summary(wd)["models"] == _summary(uninterrupted)["models"]


@pytest.mark.slow
def test_summary_intervals_and_paired_difference(uninterrupted):
    """Per model: the means of the chunks' per-scene metrics, the composite inside its 95% bootstrap interval,
    the per-model cache; the aligned model's paired difference to the reference inside its interval."""
    summary = _summary(uninterrupted)
    chunks = _chunks(uninterrupted)
    assert sorted(summary["models"]) == sorted(MODELS) and summary["num_scenes"] == 6
    per_scene = {}
    for name in MODELS:
        rows = [r for k in range(NUM_CHUNKS) for r in chunks[name, k]["metrics"]]
        per_scene[name] = np.asarray([r[names.composite()] for r in rows])
        m = summary["models"][name]
        assert summary[name] == m  # the contract: per model name at the top level too
        for ours, official in names.summary().items():
            assert m[ours] == pytest.approx(np.mean([r[official] for r in rows]), rel=1e-12), (name, ours)
        lo, hi = m["composite_ci"]
        assert lo <= m["composite"] <= hi and lo < hi, name
        cache = json.loads((uninterrupted / "evaluate" / "models" / f"{name}.json").read_text())
        assert cache["composite_per_scene"] == per_scene[name].tolist()
        assert cache["metrics"] == {k: v for k, v in m.items() if k != "composite_vs_reference"}  # not cached
    assert "composite_vs_reference" not in summary["models"]["reference"]
    diff = summary["models"]["dpa_omf"]["composite_vs_reference"]
    assert diff["mean"] == pytest.approx(np.mean(per_scene["dpa_omf"] - per_scene["reference"]), abs=1e-12)
    assert diff["lo"] <= diff["mean"] <= diff["hi"]


@pytest.mark.slow
def test_sampled_rows_score_only_themselves_with_the_same_keys(made, uninterrupted, tmp_path, monkeypatch):
    """``evaluate.sampled`` on a finished evaluation: only the new rows are scored (the others come from their
    cache, unchanged); a sampled row equals the model evaluated with that setting for every row (the same keys);
    a row of a model the workdir lacks is left out; the aligned model's rows get their paired difference to the
    sharpened reference."""
    wd = jp.copy_stages(uninterrupted, tmp_path / "wd", *STAGES, "evaluate")
    scored = []
    scene_metrics = realism_eval.Evaluator.scene_metrics

    def counting_scene_metrics(self, params, scenarios, indices, sampled=None):
        scored.append((list(indices), sampled))
        return scene_metrics(self, params, scenarios, indices, sampled)

    monkeypatch.setattr(realism_eval.Evaluator, "scene_metrics", counting_scene_metrics)
    c = _config()
    c.evaluate.sampled = "reference@t0.85,p0.9; dpa_omf@t0.7,p0.95; afd@t0.9,p1"
    assert stages.ensure("evaluate", c, wd) == 0
    assert sorted(scored) == sorted((i, s) for i in ([0, 1], [2, 3], [4, 5]) for s in ((0.85, 0.9), (0.7, 0.95)))
    summary, before = _summary(wd), _summary(uninterrupted)
    rows = ("reference@t0.85,p0.9", "dpa_omf@t0.7,p0.95")
    assert sorted(summary["models"]) == sorted(MODELS + rows)  # no afd: not aligned in this workdir
    for name in MODELS:
        got = {k: v for k, v in summary["models"][name].items() if k != "composite_vs"}
        assert got == before["models"][name], name

    # the sharpened reference row = the reference evaluated at that setting for every row (the same keys)
    whole = jp.copy_stages(made, tmp_path / "whole", *STAGES)
    c = _config()
    c.evaluate.temperature, c.evaluate.top_p = 0.85, 0.9
    assert stages.ensure("evaluate", c, whole) == 0
    sharp = _chunks(whole)
    for k in range(NUM_CHUNKS):
        assert _chunks(wd)["reference@t0.85,p0.9", k]["metrics"] == sharp["reference", k]["metrics"], k
    assert summary["models"][rows[0]]["composite"] == _summary(whole)["models"]["reference"]["composite"]

    per_scene = {n: np.asarray(json.loads((wd / "evaluate" / "models" / f"{n}.json").read_text())
                               ["composite_per_scene"]) for n in MODELS + rows}
    for name in ("dpa_omf", rows[1]):
        d = summary["models"][name]["composite_vs"][rows[0]]
        assert d["mean"] == pytest.approx(np.mean(per_scene[name] - per_scene[rows[0]]), abs=1e-12)
        assert d["lo"] <= d["mean"] <= d["hi"]
    assert "composite_vs" not in summary["models"]["reference"]
    assert "composite_vs" not in summary["models"][rows[0]]

"""The pretraining job end to end: launcher smoke run, overfitting, 8 vs 1 device, retracing, preemption."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from dpa_omf.configs import pretrain as pretrain_config
from dpa_omf.io import pipeline as pipe
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import data as data_job
from dpa_omf.jobs import pretrain, stages
from dpa_omf.jobs import workdir as wdir
from dpa_omf.model import motion_lm as mlm
from dpa_omf.train import checkpointing, loop, sharding

REPO = pathlib.Path(__file__).resolve().parents[2]


def _smoke(**overrides):
    c = pretrain_config.get_config("smoke")
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


@pytest.fixture(scope="module")
def data_workdir(tmp_path_factory):
    """A workdir with the smoke synthetic data stage (16 train / 8 valid scenes, 16 agents)."""
    wd = tmp_path_factory.mktemp("pretrain_data")
    assert stages.ensure("data", _smoke(), wd) == 0
    return wd


def _with_data(tmp_path, data_workdir, name="wd") -> pathlib.Path:
    wd = tmp_path / name
    shutil.copytree(data_workdir / "data", wd / "data")
    return wd


def _train_pipeline(c, workdir, process_count: int) -> pipe.PipelineConfig:
    return cfg_lib.pipeline(c, (data_job.split_pattern(c, str(workdir), "train"),), True, process_count)


def _one_device_mesh():
    return sharding.make_mesh(devices=jax.devices()[:1])


def _trainer(config, mesh):
    """The pretraining Trainer; its loss fails when traced twice (the compiled step must never be retraced)."""
    model = mlm.MotionLM(cfg_lib.model(config))
    tc = cfg_lib.pretrain_train(config)
    chex.clear_trace_counter()
    loss_fn = chex.assert_max_traces(pretrain.make_loss_fn(model), n=1)
    return loop.Trainer(loop.Objective(loss_fn, pretrain.make_init_fn(model, config)), tc, mesh=mesh)


def test_launcher_smoke_run_writes_the_stage(tmp_path):
    wd = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "dpa_omf.launch", "--config=configs/pretrain.py:smoke",
                          f"--workdir={wd}"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO),
                                  XLA_FLAGS="--xla_force_host_platform_device_count=1"))
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads((wd / "pretrain" / "summary.json").read_text())
    for key in ("first_loss", "final_loss", "eval_loss", "eval_accuracy", "eval_nll_per_token", "seconds",
                "param_count"):
        assert summary[key] is not None and np.isfinite(summary[key]), key
    assert summary["steps"] == 6 and summary["param_count"] > 10_000
    assert 0 < summary["eval_nll_per_token"] < np.log(169) + 0.5  # at most ~uniform over the 169 tokens
    assert 0 <= summary["eval_accuracy"] <= 1
    config = _smoke()
    assert summary["config_fingerprint"] == stages.fingerprint("pretrain", config, wd)
    for stage in ("data", "pretrain"):
        assert wdir.finished(wd, stage, stages.fingerprint(stage, config, wd))
    lines = [json.loads(x) for x in (wd / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert any("eval_loss" in r for r in lines)
    assert list((wd / "pretrain").glob("events.out.tfevents*"))
    assert (wd / "pretrain" / "checkpoints" / "6").is_dir()
    # The checkpoint holds the reference model a later stage loads.
    _model, params = pretrain.load_params(config, str(wd), mesh=_one_device_mesh())
    assert mlm.param_count(params) == summary["param_count"]


def test_process_shares_partition_the_global_batch(data_workdir):
    """Process i of n reads every n-th record: the n local batches are the one-process global batch."""
    c = _smoke()
    one = pipe.ScenarioPipeline(_train_pipeline(c, data_workdir, 1), 0, 1)
    shares = [pipe.ScenarioPipeline(_train_pipeline(c, data_workdir, 2), i, 2)
              for i in range(2)]
    assert shares[0].config.batch_size == c.pretrain.batch_size // 2
    for k in range(5):  # crosses epoch boundaries (16 records, 8 per global batch)
        mine = [set(s.batch_records(k).tolist()) for s in shares]
        assert not mine[0] & mine[1]
        assert mine[0] | mine[1] == set(one.batch_records(k).tolist())


def test_overfitting_a_few_scenes_drives_the_loss_down(data_workdir):
    """Two scenes, the smoke-sized MotionLM, 60 steps at a high learning rate (no warm-up, no decay)."""
    c = _smoke(pretrain__num_steps=60)
    c.pretrain.optim.learning_rate = 1e-2
    c.pretrain.optim.warmup_steps = 0
    c.pretrain.optim.weight_decay = 0.0
    c.pretrain.batch_size = 2
    trainer = _trainer(c, _one_device_mesh())
    batch = next(iter(pipe.ScenarioPipeline(_train_pipeline(c, data_workdir, 1), 0, 1)))
    state = trainer.init()
    losses = []
    for _ in range(60):
        state, m = trainer.step(state, batch)
        losses.append(float(m["loss"][0]))
    assert losses[0] > 4.0  # ~log(169) at init
    # Measured: 5.13 -> ~1.5 after 60 steps (ratio ~0.3); the token marginal alone gives ~2.3.
    assert losses[-1] < 0.4 * losses[0], losses[::10]  # 60 steps, one trace (_trainer)


@pytest.mark.slow
def test_eight_devices_match_one_device_without_retracing(data_workdir):
    c = _smoke()
    assert jax.device_count() == 8
    batches = pretrain.train_batches(c, str(data_workdir))(0)
    local = [next(batches) for _ in range(3)]
    batches.close()
    curves, finals = [], []
    for mesh in (_one_device_mesh(), sharding.make_mesh()):
        trainer = _trainer(c, mesh)
        state = trainer.init()
        losses = []
        for b in local:
            state, m = trainer.step(state, b)
            losses.append(float(m["loss"][0]))  # a retrace would fail in the step (_trainer)
        curves.append(losses)
        finals.append(jax.device_get(state.params))
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-5)
    # Adam divides by sqrt(v): where a gradient is ~0, reduction-order noise moves a weight by ~lr * eps.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *finals)


@pytest.mark.slow
def test_sigterm_and_restart_give_the_uninterrupted_params(tmp_path, data_workdir):
    c = _smoke(pretrain__num_steps=8)
    c.pretrain.checkpoint_every = 100  # only the preemption save and the final one
    whole = _with_data(tmp_path, data_workdir, "whole")
    assert stages.ensure("pretrain", c, whole) == 0

    def sigterm_at_3(step, state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    cut = _with_data(tmp_path, data_workdir, "cut")
    fp = stages.fingerprint("pretrain", c, cut)
    wdir.write_config(cut, "pretrain", stages.recorded_config("pretrain", c, cut))  # as the graph does first
    assert pretrain.run(c, str(cut), fp, hooks=[sigterm_at_3]) == checkpointing.EXIT_PREEMPTED
    assert not (cut / "pretrain" / "summary.json").exists()
    assert stages.ensure("pretrain", c, cut) == 0
    summary = json.loads((cut / "pretrain" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 3 and summary["steps"] == 8

    mesh = _one_device_mesh()
    _, p_whole = pretrain.load_params(c, str(whole), mesh=mesh)
    _, p_cut = pretrain.load_params(c, str(cut), mesh=mesh)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(p_whole), jax.device_get(p_cut))
    ref = json.loads((whole / "pretrain" / "summary.json").read_text())
    assert summary["final_loss"] == ref["final_loss"] and summary["eval_loss"] == ref["eval_loss"]
    mtime = (cut / "pretrain" / "summary.json").stat().st_mtime_ns
    assert stages.ensure("pretrain", c, cut) == 0  # a finished stage is reused, not retrained
    assert (cut / "pretrain" / "summary.json").stat().st_mtime_ns == mtime

"""Checkpoints, resume and preemption of the shared training loop.

The toy model and data come from test_trainer.py (same folder, imported by name).
"""

from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_trainer import batch_factory, eval_batches, init_params, loss_curve, mse_loss, params_leaves, toy_config

from dpa_omf.train import checkpointing, loop, sharding, stage_log

NUM_STEPS = 12


def _config(**kw):
    return toy_config(num_steps=NUM_STEPS, checkpoint_every=3, keep_checkpoints=2, **kw)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run: 12 steps without interruption (params, loss curve)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = loop.train(loop.Objective(mse_loss, init_params), batch_factory(), _config(), workdir, "toy")
    assert result.status == loop.COMPLETED
    return params_leaves(result.state), loss_curve(workdir / "toy")


def _assert_same_run(result, workdir, uninterrupted):
    params, curve = uninterrupted
    for a, b in zip(params_leaves(result.state), params):
        np.testing.assert_array_equal(a, b)  # exactly, not approximately
    assert loss_curve(workdir / "toy") == curve


def test_sigterm_saves_exits_and_resumes_to_identical_params(tmp_path, uninterrupted):
    def sigterm_at_7(step, state):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    first = loop.train(loop.Objective(mse_loss, init_params), batch_factory(), _config(), tmp_path, "toy",
                       reporting=loop.Reporting(hooks=[sigterm_at_7]))
    assert first.status == loop.PREEMPTED
    assert first.exit_code == checkpointing.EXIT_PREEMPTED == 75
    assert int(first.state.step) == 7
    assert signal.getsignal(signal.SIGTERM) == before, "handler not restored"
    ckpt_dir = tmp_path / "toy" / "checkpoints"
    assert checkpointing.Checkpointer(ckpt_dir).all_steps() == [6, 7]  # keep=2: 3 was dropped
    assert not (tmp_path / "toy" / "summary.json").exists(), "a preempted stage must not look finished"

    second = loop.train(loop.Objective(mse_loss, init_params), batch_factory(), _config(), tmp_path, "toy")
    assert second.status == loop.COMPLETED and second.summary["resumed_from_step"] == 7
    assert int(second.state.data_index) == NUM_STEPS
    _assert_same_run(second, tmp_path, uninterrupted)


def test_crash_resumes_from_last_checkpoint_keep_n(tmp_path, uninterrupted):
    """A hard failure at step 8 (no save) resumes from step 6; metrics past 6 are dropped."""

    class CrashError(Exception):
        pass

    def crash_at_8(step, state):
        if step == 8:
            raise CrashError

    with pytest.raises(CrashError):
        loop.train(loop.Objective(mse_loss, init_params), batch_factory(), _config(), tmp_path, "toy",
                   reporting=loop.Reporting(hooks=[crash_at_8]))
    ckpt_dir = tmp_path / "toy" / "checkpoints"
    assert checkpointing.Checkpointer(ckpt_dir).all_steps() == [3, 6]
    logged = [r["step"] for r in stage_log.read_metrics(tmp_path / "toy" / "metrics.jsonl")]
    assert logged == list(range(1, 9))

    seen = []
    result = loop.train(loop.Objective(mse_loss, init_params), batch_factory(), _config(), tmp_path, "toy",
                        reporting=loop.Reporting(hooks=[lambda step, state: seen.append(step)]))
    assert seen == list(range(7, NUM_STEPS + 1))
    assert result.summary["resumed_from_step"] == 6
    logged = [r["step"] for r in stage_log.read_metrics(tmp_path / "toy" / "metrics.jsonl")]
    assert logged == list(range(1, NUM_STEPS + 1))  # 7, 8 of the crashed run replaced, not duplicated
    assert checkpointing.Checkpointer(ckpt_dir).all_steps() == [9, 12]  # keep-N
    _assert_same_run(result, tmp_path, uninterrupted)

    # A third start finds the run finished: no step runs, the summary is rewritten with the eval.
    again = loop.train(loop.Objective(mse_loss, init_params), batch_factory(), _config(), tmp_path, "toy",
                       reporting=loop.Reporting(eval_batches_fn=eval_batches,
                                                hooks=[lambda step, state: seen.append(step)]))
    assert seen == list(range(7, NUM_STEPS + 1))
    assert again.summary["steps"] == NUM_STEPS and "eval_loss" in again.summary
    assert again.summary["first_loss"] == uninterrupted[1][0]


def test_checkpointer_roundtrip_sharded_and_skips_existing_step(tmp_path):
    mesh = sharding.make_mesh(data=8)
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
    x = jax.device_put(jnp.arange(32.0).reshape(8, 4), spec)
    items = {"params": {"w": x}, "train": {"step": jnp.int32(5)}}
    with checkpointing.Checkpointer(tmp_path / "ckpt", keep=2) as ckpt:
        assert ckpt.save(5, items)
        ckpt.wait()
        assert not ckpt.save(5, items)  # already there: no-op, no error
    target = {
        "params": {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=spec)},
        "train": {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh))},
    }
    restored = checkpointing.Checkpointer(tmp_path / "ckpt").restore(target)
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(x))
    assert restored["params"]["w"].sharding == spec
    assert int(restored["train"]["step"]) == 5
    # Leftover temporaries of an interrupted save are not taken for checkpoints.
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["5"]
    only = checkpointing.restore_params(tmp_path / "ckpt", target["params"])
    np.testing.assert_array_equal(np.asarray(only["w"]), np.asarray(x))


def test_missing_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpointing.Checkpointer(tmp_path / "empty").restore({"params": {}, "train": {}})
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        checkpointing.restore_params(tmp_path / "absent", {})


def test_preemption_flag_sets_on_signal_and_restores_handlers():
    before_term, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with checkpointing.PreemptionFlag() as flag:
        assert not flag.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.is_set() and flag.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C still stops a stuck run
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == before_term
    assert signal.getsignal(signal.SIGINT) == before_int


def test_logger_disabled_writes_nothing(tmp_path):
    logger = stage_log.StageLogger(tmp_path / "stage", total_steps=3, enabled=False)
    logger.log(1, {"loss": 1.0})
    logger.write_summary({"final_loss": 1.0})
    logger.close()
    assert not (tmp_path / "stage").exists()


def test_metrics_file_torn_last_line_dropped(tmp_path):
    path = tmp_path / "stage" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    logger = stage_log.StageLogger(tmp_path / "stage", total_steps=5, initial_step=2, progress_bar=False)
    logger.log(3, {"loss": float("nan"), "acc": 0.5})
    logger.close()
    records = stage_log.read_metrics(path)
    assert records == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": None, "acc": 0.5}]


_CHILD = """
import sys, time
import numpy as np
from dpa_omf.train import loop
from test_checkpointing import _config
from test_trainer import batch_factory, init_params, mse_loss, params_leaves

workdir, slow = sys.argv[1], sys.argv[2] == "slow"
hooks = [lambda step, state: time.sleep(0.3)] if slow else []
result = loop.train(loop.Objective(mse_loss, init_params), batch_factory(), _config(), workdir, "toy",
                    reporting=loop.Reporting(hooks=hooks))
np.savez(workdir + "/params.npz", *params_leaves(result.state))
sys.exit(result.exit_code)
"""


@pytest.mark.slow
def test_sigterm_from_outside_in_a_subprocess(tmp_path, uninterrupted):
    """The launcher's path: a separate process killed with SIGTERM exits 75, its rerun exits 0."""
    import subprocess
    import sys
    import time

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-c", _CHILD, str(tmp_path)]
    child = subprocess.Popen(cmd + ["slow"], env=env, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "toy" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not any(r.get("step", 0) >= 3 for r in stage_log.read_metrics(metrics)):
        assert child.poll() is None, child.stderr.read()
        assert time.monotonic() < deadline, "child made no progress"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=300)
    assert child.returncode == checkpointing.EXIT_PREEMPTED, err
    saved = checkpointing.Checkpointer(tmp_path / "toy" / "checkpoints").latest_step()
    assert 3 <= saved < NUM_STEPS

    rerun = subprocess.run(cmd + ["fast"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    with np.load(tmp_path / "params.npz") as z:
        got = [z[f"arr_{i}"] for i in range(len(z.files))]
    for a, b in zip(got, uninterrupted[0]):
        np.testing.assert_array_equal(a, b)
    assert loss_curve(tmp_path / "toy") == uninterrupted[1]

"""The shared sharded training loop (dpa_omf.train.loop) on a small real model.

The model is a 2-layer flax MLP regressing y = sin(sum x) with a per-row mask,
so the loss is a masked mean and the metrics are (sum, count) pairs, the way
the motion model's token losses are.
"""

from __future__ import annotations

import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpa_omf.train import loop, optim, sharding, stage_log, step

NUM_EXAMPLES = 64
BATCH = 16  # divisible by the 8 fake devices


class MLP(nn.Module):
    hidden: int = 64

    @nn.compact
    def __call__(self, x):  # x: [B, 4] -> [B]
        x = nn.tanh(nn.Dense(self.hidden)(x))
        return nn.Dense(1)(x)[..., 0]


MODEL = MLP()
_X = np.random.default_rng(0).normal(size=(NUM_EXAMPLES, 4)).astype(np.float32)
_Y = np.sin(_X.sum(-1)).astype(np.float32)


def init_params(rng):
    return MODEL.init(rng, jnp.zeros((1, 4)))["params"]


def mse_loss(params, batch, rng, frozen):
    """Masked mean squared error; a little dropout-like noise from ``rng``."""
    del frozen
    noise = 1e-3 * jax.random.normal(rng, batch["x"].shape)
    pred = MODEL.apply({"params": params}, batch["x"] + noise)
    se = jnp.sum(batch["mask"] * (pred - batch["y"]) ** 2)
    n = jnp.sum(batch["mask"])
    return se / n, {"mse": (se, n)}


def count_traces(loss_fn):
    """``loss_fn`` that fails when traced twice: the compiled step must be reused, never retraced."""
    chex.clear_trace_counter()
    return chex.assert_max_traces(loss_fn, n=1)


def make_batch(index: int, nan: bool = False) -> dict[str, np.ndarray]:
    """Batch number ``index``: a deterministic sample of the data set (numpy, process-local)."""
    r = np.random.default_rng(index)
    idx = r.choice(NUM_EXAMPLES, BATCH, replace=False)
    mask = (r.random(BATCH) > 0.2).astype(np.float32)
    mask[0] = 1.0
    x = _X[idx].copy()
    if nan:
        x[3, 1] = np.nan
    return {"x": x, "y": _Y[idx], "mask": mask}


def batch_factory(nan_at: int | None = None):
    def factory(start: int):
        i = start
        while True:
            yield make_batch(i, nan=(i == nan_at))
            i += 1

    return factory


def eval_batches():
    return [{"x": _X[i : i + BATCH], "y": _Y[i : i + BATCH], "mask": np.ones(BATCH, np.float32)} for i in (0, 32)]


def toy_config(**overrides) -> loop.TrainConfig:
    base = dict(
        num_steps=20,
        log_every=1,
        eval_every=0,
        checkpoint_every=100,
        keep_checkpoints=3,
        progress_bar=False,
        optim=optim.OptimConfig(learning_rate=1e-2, warmup_steps=2, weight_decay=0.0),
    )
    base.update(overrides)
    return loop.TrainConfig(**base)


def loss_curve(stage_dir) -> list[float]:
    return [r["loss"] for r in stage_log.read_metrics(stage_dir / "metrics.jsonl") if "loss" in r]


def params_leaves(state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


# ----------------------------------------------------------------------------- tests


def test_overfit_loss_falls_and_outputs_written(tmp_path):
    cfg = toy_config(num_steps=200, log_every=20, eval_every=100,
                     optim=optim.OptimConfig(learning_rate=3e-2, warmup_steps=5))
    result = loop.train(loop.Objective(mse_loss, init_params), batch_factory(), cfg, tmp_path, "toy",
                        reporting=loop.Reporting(eval_batches_fn=eval_batches))
    assert result.status == loop.COMPLETED and result.exit_code == 0
    s = result.summary
    # Measured: 0.42 -> 0.016 (train), 0.021 (held-out).
    assert s["final_loss"] < 0.15 * s["first_loss"], s
    assert s["eval_loss"] < 0.15 * s["first_loss"], s

    stage = tmp_path / "toy"
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["steps"] == 200 and summary["eval_loss"] == pytest.approx(s["eval_loss"])
    records = stage_log.read_metrics(stage / "metrics.jsonl")
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == [1] + list(range(20, 201, 20))
    assert all({"loss", "lr", "steps_per_s", "mse", "grad_norm"} <= set(r) for r in records if "loss" in r)
    assert [r["step"] for r in records if "eval_loss" in r] == [100, 200]
    # lr: 0 at the first update (warm-up from 0), peak after warm-up, decayed at the end.
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert lrs[1] == 0.0 and lrs[20] > lrs[200] > 0
    assert list(stage.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert not list(stage.glob(".*.tmp")), "temporary file left behind"


def test_masked_metrics_divided_once_on_host(tmp_path):
    """eval 'mse' is sum(se) / sum(count) over batches, not the mean of batch means."""
    cfg = toy_config(num_steps=1)
    trainer = loop.Trainer(loop.Objective(mse_loss, init_params), cfg)
    state = trainer.init()
    b1, b2 = make_batch(0), make_batch(1)
    b2["mask"][:] = 0.0
    b2["mask"][:2] = 1.0  # 2 valid rows vs ~13 ...
    b2["y"] = b2["y"] + 3.0  # ... with a much larger error, so the two weightings differ
    got = trainer.evaluate(state.params, [b1, b2])

    def sums(b):
        pred = MODEL.apply({"params": jax.device_get(state.params)}, b["x"])
        noise_free = np.asarray(pred)
        return float(np.sum(b["mask"] * (noise_free - b["y"]) ** 2)), float(b["mask"].sum())

    (s1, n1), (s2, n2) = sums(b1), sums(b2)
    # The eval rng adds 1e-3 input noise: the tolerance covers it; the weightings differ by ~3x.
    assert got["mse"] == pytest.approx((s1 + s2) / (n1 + n2), rel=1e-2)
    assert 0.5 * (s1 / n1 + s2 / n2) > 2 * got["mse"]


def test_eight_devices_match_one_device(tmp_path):
    assert jax.device_count() == 8, "conftest should fake 8 CPU devices"
    cfg = toy_config(num_steps=15)
    one = loop.train(loop.Objective(mse_loss, init_params), batch_factory(), cfg, tmp_path / "one", "toy",
                     mesh=sharding.make_mesh(devices=jax.devices()[:1]))
    eight = loop.train(loop.Objective(mse_loss, init_params), batch_factory(), cfg, tmp_path / "eight", "toy",
                       mesh=sharding.make_mesh(data=8))
    assert one.summary["num_devices"] == 1 and eight.summary["num_devices"] == 8
    c1, c8 = loss_curve(tmp_path / "one" / "toy"), loss_curve(tmp_path / "eight" / "toy")
    assert len(c1) == len(c8) == 15
    np.testing.assert_allclose(c8, c1, rtol=1e-5, atol=1e-6)
    for a, b in zip(params_leaves(one.state), params_leaves(eight.state)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The batch really is split over devices in the 8-device run.
    assert len(eight.state.params["Dense_0"]["kernel"].sharding.device_set) == 8


def test_no_retrace_after_first_step(tmp_path):
    traces = {"loss": 0, "eval": 0}

    def counted_loss(params, batch, rng, frozen):
        traces["loss"] += 1  # Python side effect: runs once per trace, not per step
        return mse_loss(params, batch, rng, frozen)

    def counted_eval(params, batch, rng, frozen):
        traces["eval"] += 1
        return {"mse": mse_loss(params, batch, rng, frozen)[1]["mse"]}

    # Checkpoints (async, donated state) and evaluations in between steps must not cause recompiles.
    cfg = toy_config(num_steps=12, log_every=3, eval_every=4, checkpoint_every=5)
    result = loop.train(loop.Objective(counted_loss, init_params, eval_fn=counted_eval), batch_factory(), cfg,
                        tmp_path, "toy", reporting=loop.Reporting(eval_batches_fn=eval_batches))
    assert result.status == loop.COMPLETED
    assert traces == {"loss": 1, "eval": 1}


def test_nan_loss_raises_naming_the_step(tmp_path):
    # Batch index 6 is consumed by step 7; the check runs every 5 steps but names step 7.
    cfg = toy_config(num_steps=20, log_every=5, checkpoint_every=5)
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 7\b") as err:
        loop.train(loop.Objective(mse_loss, init_params), batch_factory(nan_at=6), cfg, tmp_path, "toy")
    assert err.value.step == 7
    # Nothing at or after the bad step was checkpointed; no summary for a failed run.
    from dpa_omf.train import checkpointing

    assert checkpointing.Checkpointer(tmp_path / "toy" / "checkpoints").all_steps() == [5]
    assert not (tmp_path / "toy" / "summary.json").exists()


def test_frozen_pytree_reaches_loss_and_is_never_saved(tmp_path):
    """Alignment pattern: start from a reference model's params, keep a frozen copy."""
    pre = loop.train(loop.Objective(mse_loss, init_params), batch_factory(), toy_config(num_steps=5), tmp_path,
                     "pretrain")
    from dpa_omf.train import checkpointing

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pre.state.params)
    mesh = sharding.make_mesh()
    target = sharding.with_shardings(abstract, jax.tree.map(lambda _: sharding.replicated(mesh), abstract))
    reference = checkpointing.restore_params(tmp_path / "pretrain" / "checkpoints", target)
    for a, b in zip(jax.tree.leaves(reference), params_leaves(pre.state)):
        np.testing.assert_array_equal(np.asarray(a), b)

    def anchored_loss(params, batch, rng, frozen):
        loss, m = mse_loss(params, batch, rng, None)
        drift = sum(jnp.sum((p - q) ** 2) for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(frozen)))
        return loss + drift, {**m, "drift": drift}

    result = loop.train(loop.Objective(anchored_loss, init_params, frozen=reference, initial_params=reference),
                        batch_factory(5), toy_config(num_steps=3), tmp_path, "align")
    records = stage_log.read_metrics(tmp_path / "align" / "metrics.jsonl")
    assert records[0]["drift"] == 0.0  # started exactly at the reference
    assert records[-1]["drift"] > 0.0
    step_dir = tmp_path / "align" / "checkpoints" / "3"
    assert sorted(p.name for p in step_dir.iterdir() if p.is_dir()) == ["params", "train"]
    assert checkpointing.Checkpointer(tmp_path / "pretrain" / "checkpoints").all_steps() == [5]
    del result


def test_logical_axis_params_follow_the_rules_on_the_data_mesh(tmp_path):
    """Unnamed axes are replicated; a rule mapping a logical name to 'data' shards the parameter (FSDP-style)."""
    class Boxed(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
            x = nn.tanh(nn.Dense(32, kernel_init=init)(x))
            return nn.Dense(1)(x)[..., 0]

    model = Boxed()

    def loss(params, batch, rng, frozen):
        pred = model.apply({"params": params}, batch["x"])
        return jnp.mean((pred - batch["y"]) ** 2), {}

    def init(r):
        return model.init(r, jnp.zeros((1, 4)))["params"]

    default = loop.Trainer(loop.Objective(loss, init), toy_config(num_steps=3)).init()
    assert default.params["Dense_0"]["kernel"].sharding.is_fully_replicated

    rules = (("batch", "data"), ("mlp", "data"))
    cfg = toy_config(num_steps=3, mesh=sharding.MeshConfig(data=8, rules=rules))
    trainer = loop.Trainer(loop.Objective(count_traces(loss), init), cfg)
    state = trainer.init()
    kernel = state.params["Dense_0"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "data")
    assert kernel.addressable_shards[0].data.shape == (4, 4)
    mu = state.opt_state[1][0].mu["Dense_0"]["kernel"]  # clip, (adam, ...)
    assert mu.sharding.spec == kernel.sharding.spec
    for i in range(3):
        state, metrics = trainer.step(state, make_batch(i))
    assert np.isfinite(step.reduce_pairs(metrics)["loss"])
    assert state.params["Dense_0"]["kernel"].sharding.spec == kernel.sharding.spec  # compiled once (count_traces)
    with pytest.raises(AssertionError, match="traced > 1"):  # the retrace check bites
        trainer.step(state, {k: v[:8] for k, v in make_batch(3).items()})


def test_bad_batch_and_mesh_are_refused():
    with pytest.raises(ValueError, match="not divisible"):
        sharding.global_batch({"x": np.zeros((6, 2))}, sharding.make_mesh(data=8))
    with pytest.raises(ValueError, match="leading batch dimension"):
        sharding.global_batch({"x": np.float32(1.0)}, sharding.make_mesh(data=8))
    with pytest.raises(ValueError, match="data=3 != 8 devices"):
        sharding.make_mesh(data=3)
    with pytest.raises(ValueError, match="num_steps"):
        loop.TrainConfig(num_steps=0).validate()
    with pytest.raises(ValueError, match="end_lr_ratio"):
        optim.OptimConfig(end_lr_ratio=2.0).validate()


def test_schedule_warmup_then_cosine():
    sched = optim.make_schedule(optim.OptimConfig(learning_rate=1.0, warmup_steps=10, end_lr_ratio=0.1), 110)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0)
    assert float(sched(60)) == pytest.approx(0.55, rel=1e-4)  # half-way down the cosine
    assert float(sched(110)) == pytest.approx(0.1)
    assert float(sched(500)) == pytest.approx(0.1)


def test_clipping_bounds_the_update():
    tx, _ = optim.make_optimizer(optim.OptimConfig(learning_rate=1.0, warmup_steps=0, weight_decay=0.0,
                                                   clip_grad_norm=1.0, b1=0.0, b2=0.0, eps=0.0), 10)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    huge = {"w": jnp.array([3e6, -4e6, 0.0])}
    # Adam with b1 = b2 = 0 is sign-like; the clip shows in the first-moment state.
    _, state = tx.update(huge, state, params)
    np.testing.assert_allclose(np.asarray(state[1][0].mu["w"]), [0.6, -0.8, 0.0], rtol=1e-6)


def test_lower_step_for_ahead_of_time_memory_check():
    trainer = loop.Trainer(loop.Objective(mse_loss, init_params), toy_config(num_steps=1))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), make_batch(0))
    compiled = trainer.lower_step(shapes).compile()
    mem = compiled.memory_analysis()
    assert mem is not None and mem.argument_size_in_bytes > 0

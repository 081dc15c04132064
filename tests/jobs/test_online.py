"""Online DPA-OMF (align.method='online') and CAT-K's closest-among-top-K rollouts: the pieces in process.

The end-to-end `:smoke,online` run is in tests/jobs/test_align.py (the main job's test).
"""

import dataclasses
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.configs import align as align_config
from dpa_omf.jobs import align, align_losses, curate
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.model import decoder as dec
from dpa_omf.model import sampling
from dpa_omf.train import loop


def _one_device_mesh():
    return jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))


@pytest.fixture(scope="module")
def smoke(smoke_model):
    model, params, scenes = smoke_model
    return align_config.get_config("smoke,online"), model, params, scenes[:2]


def _scene_batch(c, scenes, scene_indices, round_index):
    base = jax.random.key(c.seed)
    keys = [jax.random.key_data(curate.rollout_key(base, si, round_index)) for si in scene_indices]
    return dict(scenario=dt.stack_scenarios(scenes), keys=np.stack(jax.device_get(keys)).astype(np.uint32))


@pytest.mark.slow
def test_round_zero_ranks_as_curation_and_its_loss_is_offline_dpa_omf_on_the_same_pairs(smoke):
    c, model, params, scenes = smoke
    cfg = cfg_lib.align(c)
    ccfg, _ = cfg_lib.online_curation(c, num_devices=1)
    assert ccfg == cfg_lib.curation_config(c)  # at :smoke the round ranks R rollouts into K pairs as curation
    batch = _scene_batch(c, scenes, [3, 5], 0)
    prepare = align.METHODS["online"].prepare(model, cfg, ccfg)
    prepared, metrics = jax.jit(prepare)(params, batch, jax.random.key(1), params)
    # The curate job's ranker, with its keys for scenes 3 and 5 (repeat 0): the same rollouts and pairs.
    ranker = curate.Ranker(model, params, ccfg, _one_device_mesh(), 1)
    base = jax.random.key(c.seed)
    offline = {k: np.concatenate(v) for k, v in zip(
        ("tokens", "preferred", "unpreferred"),
        zip(*[[ranker.rank([s], [curate.rollout_key(base, si, 0)])[k] for k in ("tokens", "preferred", "unpreferred")]
              for s, si in zip(scenes, [3, 5])]))}
    for name in ("tokens", "preferred", "unpreferred"):
        np.testing.assert_array_equal(np.asarray(prepared[name]), offline[name], err_msg=name)
    best, mean = (float(metrics[k][0]) / float(metrics[k][1]) for k in ("round_best_ot_distance", "round_ot_distance"))
    assert best <= mean
    # The online loss (its rng draws which pairs) equals offline DPA-OMF's loss on those pairs.
    rng = jax.random.key(2)
    online_loss, online_m = align.make_loss_fn(model, cfg)(params, prepared, rng, params)
    _, _, j = align_losses.online_pairs(prepared, rng, cfg.pairs_per_scene)
    j = np.asarray(j)
    tok = offline["tokens"].astype(np.int32)
    preferred = np.stack([tok[b][offline["preferred"][b][j[b]]] for b in range(2)])
    unpreferred = np.stack([tok[b][offline["unpreferred"][b][j[b]]] for b in range(2)])
    sim = np.broadcast_to(np.asarray(batch["scenario"].agents.sim_mask)[:, None, :, None], preferred.shape)
    offline_batch = dict(scenario=batch["scenario"], preferred=preferred, unpreferred=unpreferred,
                         preferred_valid=sim, unpreferred_valid=sim)
    offline_loss, offline_m = align.make_loss_fn(model, cfg_lib.align(align_config.get_config("smoke")))(
        params, offline_batch, rng, params)
    assert float(online_loss) == pytest.approx(float(offline_loss), rel=1e-6)
    for k in ("pref_accuracy", "nll_preferred", "nll_unpreferred"):
        np.testing.assert_allclose(np.asarray(online_m[k]), np.asarray(offline_m[k]), rtol=1e-6, err_msg=k)
    # Anchors at the reference: DPO-style ratio scores are all 0, so every comparison costs log 2 (pairs and the
    # ranked loss over every ordered pair alike), and the KL term is 0.
    for loss in ("pairs", "ranked"):
        anchored = dataclasses.replace(cfg, online=dataclasses.replace(cfg.online, loss=loss, reference_ratio=True,
                                                                        kl_weight=1.0))
        value, m = align.make_loss_fn(model, anchored)(params, prepared, rng, params)
        assert float(value) == pytest.approx(np.log(2.0), abs=1e-5), loss
        assert float(m["kl_anchor"][0]) == pytest.approx(0.0, abs=1e-6) and float(m["kl_anchor"][1]) > 0
        assert float(m["nll_preferred"][0]) > 0  # the sequences' own NLL, not the ratio's


@pytest.mark.slow
def test_sigterm_mid_round_then_restart_reaches_the_same_parameters(smoke, tmp_path):
    """Two updates per round; SIGTERM arrives while round 2's program runs: the round finishes, is saved, the
    job exits preempted, and the restart ends on the parameters of an uninterrupted run, bit for bit."""
    _, model, params, scenes = smoke
    c = align_config.get_config("smoke,online")
    c.align.online.steps_per_round = 2
    c.align.num_steps = 3
    cfg = cfg_lib.align(c)
    ccfg, _ = cfg_lib.online_curation(c, num_devices=1)
    prepare = align.METHODS["online"].prepare(model, cfg, ccfg)
    tcfg = align.train_config(c)
    assert tcfg.updates_per_step == 2 and tcfg.num_updates == 6
    tcfg = dataclasses.replace(tcfg, eval_every=0, checkpoint_every=100, async_checkpointing=False)
    batches = lambda start: (_scene_batch(c, scenes, [0, 1], k) for k in range(start, 100))
    armed = {"rounds": None}  # counts the rounds of the run to interrupt

    def kill_in_round_two(params, batch, rng, frozen):
        def note(_):
            if armed["rounds"] is not None:
                armed["rounds"] += 1
                if armed["rounds"] == 2:
                    os.kill(os.getpid(), signal.SIGTERM)

        jax.debug.callback(note, batch["keys"][0, 0])
        return prepare(params, batch, rng, frozen)

    objective = loop.Objective(align.make_loss_fn(model, cfg), lambda rng: params, prepare_fn=kill_in_round_two,
                               frozen=params, initial_params=params)
    run = lambda folder: loop.train(objective, batches, tcfg, tmp_path, folder, mesh=_one_device_mesh())
    straight = run("straight")
    assert straight.status == loop.COMPLETED
    armed["rounds"] = 0
    first = run("interrupted")
    armed["rounds"] = None
    assert first.status == loop.PREEMPTED and int(first.state.step) == 2  # round 2 finished, then saved
    again = run("interrupted")
    assert again.status == loop.COMPLETED and again.summary["resumed_from_step"] == 2
    for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(again.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = sum(float(jnp.abs(a - b).sum()) for a, b in zip(jax.tree.leaves(params),
                                                              jax.tree.leaves(again.state.params)))
    assert moved > 0


@pytest.mark.slow
def test_closest_among_top_k(smoke):
    """K = 1 is greedy decoding; K = 169 (every token) tracks the log to the tokenizer's precision, where
    sampling (this untrained model) drifts metres away. (K = 32 of an untrained model need not hold a good
    token: its top tokens are arbitrary.)"""
    _, model, params, scenes = smoke
    s = scenes[0]
    key = jax.random.key(3)
    roll = lambda **kw: sampling.sample(model, params, s, key, sampling.RolloutConfig(num_rollouts=4, rollout_chunk=4,
                                                                                      **kw))
    greedy = roll(closest_top_k=1)
    assert (np.asarray(greedy.tokens) == np.asarray(greedy.tokens[:1])).all()  # deterministic: every rollout alike
    # Teacher-forced on its own tokens, the model's most likely token is the one it took at every step.
    sim = np.asarray(s.agents.sim_mask)
    valid = jnp.broadcast_to(jnp.asarray(sim)[:, None], greedy.tokens[0].shape)
    logits = model.decode_full(params, model.encode_scene(params, s), dec.input_tokens(greedy.tokens[0], valid))
    np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1))[sim], np.asarray(greedy.tokens[0])[sim])
    fut = slice(dt.NUM_HISTORY, dt.NUM_STEPS)
    ok = np.asarray(s.agents.valid[:, fut] & s.agents.sim_mask[:, None])

    def ade(r):
        err = np.hypot(np.asarray(r.x) - np.asarray(s.agents.x[:, fut]),
                       np.asarray(r.y) - np.asarray(s.agents.y[:, fut]))
        return float((err * ok).sum() / (ok.sum() * err.shape[0]))

    catk, sampled = roll(closest_top_k=169), roll()
    assert ade(catk) < 0.1 < 1.0 < ade(sampled), (ade(catk), ade(sampled))
    with pytest.raises(ValueError, match="closest_top_k"):
        sampling.RolloutConfig(closest_top_k=170)


@pytest.mark.slow
def test_a_round_on_a_two_device_mesh(smoke):
    """On a multi-device CPU mesh the round cannot call the host OT solver (a host callback inside a
    multi-device CPU program can deadlock): the config picks the on-device exact solver, and a round with an
    on-device solver compiles without any host callback and runs split over 2 devices. (The on-device exact
    solver equals the host one: tests/preference/test_distance.py; its CPU compile takes minutes, so this
    runs the round with the on-device Sinkhorn solver.)"""
    c, model, params, scenes = smoke
    cfg = cfg_lib.align(c)
    one, _ = cfg_lib.online_curation(c, num_devices=1)
    two, why = cfg_lib.online_curation(c, num_devices=2)
    assert (one.ot.solver, two.ot.solver) == ("exact_host", "exact") and "deadlock" in why
    on_device = dataclasses.replace(two, ot=dataclasses.replace(two.ot, solver="sinkhorn"))
    batch = _scene_batch(c, scenes, [0, 1], 0)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("data",))
    tcfg = dataclasses.replace(align.train_config(c), eval_every=0, progress_bar=False)
    trainer = loop.Trainer(loop.Objective(align.make_loss_fn(model, cfg), lambda r: params,
                                          prepare_fn=align.METHODS["online"].prepare(model, cfg, on_device),
                                          frozen=params, initial_params=params), tcfg, mesh=mesh)
    shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype), batch)
    assert "callback" not in trainer.lower_step(shapes).as_text()  # no host round trip inside the round
    state, metrics = trainer.step(trainer.init(), batch)
    assert np.isfinite(float(metrics["loss"][0])) and float(metrics["round_ot_distance"][1]) == 2 * 8
    assert int(state.step) == 1

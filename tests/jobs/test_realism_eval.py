"""The batched evaluator: per-scene values independent of the batch and the devices, equal to the loop."""

import jax
import numpy as np
import pytest

from dpa_omf.configs import align as align_config
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import pretrain, realism_eval, report
from dpa_omf.metrics import model_realism, names
from dpa_omf.metrics import wosac as realism
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling
from dpa_omf.synthetic import dataset as synthetic
from dpa_omf.train import sharding


@pytest.fixture(scope="module")
def smoke():
    c = align_config.get_config("smoke")
    model = mlm.MotionLM(cfg_lib.model(c))
    params = pretrain.make_init_fn(model, c)(jax.random.key(0))
    scenes = [synthetic.generate_scenario(100 + i, cfg_lib.synthetic_world(c)) for i in range(3)]
    return c, model, params, scenes


def _evaluator(c, model, devices: int, per_device: int) -> realism_eval.Evaluator:
    mesh = sharding.make_mesh(devices=jax.local_devices()[:devices])
    return realism_eval.Evaluator(model, cfg_lib.evaluate(c), mesh, per_device)


@pytest.mark.slow
def test_batch_and_devices_do_not_change_a_scene(smoke):
    c, model, params, scenes = smoke
    idx = [5, 6, 7]
    one = _evaluator(c, model, 1, 1).scene_metrics(params, scenes, idx)
    # The same per-device batch on more devices (padded to 4): bit for bit.
    assert one == _evaluator(c, model, 2, 1).scene_metrics(params, scenes, idx)
    assert set(one[0]) == set(names.per_scene()) | set(realism.LOG_RATES)
    # Another per-device batch: XLA may reorder float reductions for the new shape (last bits only).
    three = _evaluator(c, model, 1, 3).scene_metrics(params, scenes, idx)
    for a, b in zip(one, three):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_matches_the_per_scene_loop(smoke):
    c, model, params, scenes = smoke
    cfg = cfg_lib.evaluate(c)
    rows = _evaluator(c, model, 1, 2).scene_metrics(params, scenes, [0, 1, 2])
    for i, s in enumerate(scenes):
        r = sampling.sample(model, params, s, jax.random.fold_in(jax.random.key(cfg.seed), i), cfg.rollout)
        want = realism.evaluate_scene(s, np.asarray(model_realism.sim_xyzh(s, r)), cfg.realism)
        for k, v in want.items():  # sizes fitted per scene vs per group: equal up to float rounding
            assert rows[i][k] == pytest.approx(v, abs=1e-5), k


def test_sizes_fitted_to_more_scenes_change_no_value(smoke):
    """The evaluate job's one program per job (``at_least``: the sizes of all its scenes) scores a scene as the
    group's own sizes do, up to float rounding; ``job_sizes`` is the maximum over the scenes."""
    c, model, params, scenes = smoke
    sizes = realism_eval.job_sizes(lambda i: scenes[i], range(len(scenes)))
    np.testing.assert_array_equal(sizes, np.max([realism.needed_sizes(s) for s in scenes], axis=0))
    assert sizes[1] > 0 and sizes[2] > 0  # the synthetic world has road edges and lanes
    bigger = sizes + np.array([2, 1024, 2048])
    mesh = sharding.make_mesh(devices=jax.local_devices()[:1])
    wide = realism_eval.Evaluator(model, cfg_lib.evaluate(c), mesh, 1, at_least=bigger)
    got = wide.scene_metrics(params, scenes[:1], [0])
    ((used, _),) = wide._programs  # (metric config, sampling)
    assert used.max_eval_agents == bigger[0] and used.max_road_edge_points >= bigger[1]
    assert used.max_lane_points >= bigger[2]
    want = _evaluator(c, model, 1, 1).scene_metrics(params, scenes[:1], [0])
    assert got[0] == pytest.approx(want[0], rel=1e-5, abs=1e-6)


def test_sampling_settings_share_one_program(smoke):
    """A row at another (temperature, top-p) runs the same program (the setting is traced, see
    sampling.sample) and differs from the row at the evaluate section's setting."""
    c, model, params, scenes = smoke
    # Perturbed: the initial head is zero (uniform tokens, which no temperature or nucleus changes).
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
    ev = _evaluator(c, model, 1, 1)
    plain = ev.scene_metrics(params, scenes[:1], [0])
    sharp = ev.scene_metrics(params, scenes[:1], [0], sampled=(0.5, 0.9))
    assert len(ev._programs) == 1
    assert plain != sharp


def test_training_log_and_report_table(smoke):
    c, model, params, scenes = smoke
    log = realism_eval.realism_logger(_evaluator(c, model, 1, 1), scenes[:2])
    m = log(params)
    assert set(m) == {f"realism_{k}" for k in names.logged()}
    assert 0 < m["realism_composite"] < 1
    models = {"reference": dict.fromkeys(names.report(), 0.5) | {"composite_ci": [0.45, 0.55]},
              "dpa_omf": dict.fromkeys(names.report(), 0.6) | {"composite_ci": [0.55, 0.65],
                                                             "composite_vs_reference": {"mean": 0.1, "lo": 0.05,
                                                                                        "hi": 0.15}}}
    text = report.table(models)
    assert "composite 95% CI" in text and "+0.1000 [+0.0500, +0.1500]" in text and "[0.4500, 0.5500]" in text
    assert "log" not in text  # no log rates: no row
    models["dpa_omf"]["log"] = {"collision_rate": 0.05, "offroad_rate": 0.15}  # the reference's row predates it
    last = report.table(models).splitlines()[-1].split(" | ")
    head = report.table(models).splitlines()[0].split(" | ")
    assert last[0] == "| log (the data)" and last[head.index("offroad_rate")] == "0.1500"
    assert last[head.index("collision_rate")] == "0.0500" and last[head.index("composite")] == "-"
    # The evaluator's rows carry the log's own rates; their mean is the log row (None for rows without them).
    rows = realism_eval.Evaluator.scene_metrics(_evaluator(c, model, 1, 1), params, scenes[:1], [0])
    assert set(rows[0]) == set(names.per_scene()) | set(realism.LOG_RATES)
    assert realism_eval.log_rates(rows) == {"collision_rate": rows[0]["log_collision_rate"],
                                            "offroad_rate": rows[0]["log_offroad_rate"]}
    assert realism_eval.log_rates([{k: v for k, v in rows[0].items() if k not in realism.LOG_RATES}]) is None

"""The benchmarks (dpa_omf.tools.bench) at tiny sizes: the JSON contract of each subcommand, the timing helper."""

import json
import os
import time

os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")  # POT would import TF otherwise

import jax
import pytest

from dpa_omf import allocator
from dpa_omf import datatypes as dt
from dpa_omf.model import encoder as enc
from dpa_omf.model import motion_lm as mlm
from dpa_omf.testing import bench_scenes
from dpa_omf.tools.bench import cli, rollout, timing


def test_timed_excludes_the_warmup_and_reports_the_median():
    calls = []

    def fn(i):
        calls.append(i)
        time.sleep(0.05 if len(calls) == 1 else 0.001 * (i + 1))  # a slow first call: the warm-up
        return i

    t = timing.timed(fn, 3)
    assert calls == [0, 0, 1, 2] and t.outputs == (0, 1, 2) and t.output == 2
    assert t.warmup_s >= 0.05 and len(t.seconds) == len(t.cpu_seconds) == 3
    assert t.median_s == sorted(t.seconds)[1] < 0.05
    cold = timing.timed(fn, 2, warmup=False)
    assert cold.warmup_s is None and calls[4:] == [0, 1]
    with pytest.raises(ValueError, match="runs must be >= 1"):
        timing.timed(fn, 0)


TINY_OT = ["--scenes", "2", "--loop_scenes", "1", "--steps", "8", "--rollouts", "32", "--agents", "6"]


def test_bench_ot_runs_and_reports_the_contract(tmp_path):
    """A tiny `python -m dpa_omf.bench ot` with two slow methods added: the JSON keys the issue
    names, and the exact methods agree with each other (the bench itself cross-checks
    exact_host against the scipy / POT loops and raises otherwise)."""
    pytest.importorskip("ot")
    out = tmp_path / "ot.json"
    cli.main(["ot", "--json", str(out), *TINY_OT, "--device_exact_scenes", "1",
                "--methods", "ours_exact", "ours_sinkhorn"])
    r = json.loads(out.read_text())
    for name in ("scipy_lsa", "pot_emd", "ours_exact_host", "ours_exact", "ours_sinkhorn"):
        assert r["seconds_per_scene"][name] > 0
        assert 0 <= r["topbottom_agreement"][name] <= 1
    for name in ("scipy_lsa", "pot_emd", "ours_exact"):
        assert r["topbottom_agreement"][name] == 1.0
    assert r["exact_host_vs_loops_scene_rel_max"] < 1e-4
    assert r["fastest_exact_equal"] in r["seconds_per_scene"]


def test_bench_ot_default_runs_only_the_fast_methods(tmp_path, restore_compilation_cache):
    pytest.importorskip("ot")
    out, cache = tmp_path / "ot.json", tmp_path / "cache"
    cli.main(["--compilation_cache", str(cache), "ot", "--json", str(out), *TINY_OT])
    r = json.loads(out.read_text())
    # The folder is made and named; whether programs land in it depends on what this process compiled before
    # (JAX's in-memory cache answers first): tests/train/test_compilation_cache.py checks the writes.
    assert r["compilation_cache"] == str(cache) and cache.is_dir()
    assert set(r["seconds_per_scene"]) == {"ours_exact_host", "scipy_lsa", "pot_emd"}
    assert r["agreement_scenes"] == {"ours_exact_host": 2, "scipy_lsa": 1, "pot_emd": 1}
    assert r["fastest_exact_equal"] == "ours_exact_host"
    with pytest.raises(ValueError, match="unknown methods"):
        cli.main(["ot", "--json", str(out), *TINY_OT, "--methods", "hungarian"])


@pytest.mark.slow  # two extra compiles (~20 s on an idle 2-core CPU)
def test_time_rollouts_reports_both_samplers():
    tiny = mlm.ModelConfig(d_model=16, num_heads=2, mlp_ratio=1, enc_layers=1, dec_layers=1,
                           encoder=enc.EncoderConfig(k_agents=4, k_roadgraph=8, roadgraph_stride=1))
    out = rollout.time_rollouts(tiny, num_rollouts=2, agent_counts=(3,), rollout_chunk=2, repeats=1)
    r = out["2x3"]
    assert set(r) >= {"cached_s", "uncached_s", "speedup"}
    assert r["cached_s"] > 0 and r["uncached_s"] > 0
    assert r["speedup"] == pytest.approx(r["uncached_s"] / r["cached_s"])


def test_rollout_chunks_are_timed_alternately_and_draw_the_same_tokens():
    tiny = mlm.ModelConfig(d_model=16, num_heads=2, mlp_ratio=1, enc_layers=1, dec_layers=1,
                           encoder=enc.EncoderConfig(k_agents=4, k_roadgraph=8, roadgraph_stride=1))
    model = mlm.MotionLM(tiny)
    scene = bench_scenes.lane_scene(3, num_points=64, seed=0)
    params = model.init(jax.random.key(0), dt.stack_scenarios([scene]))
    r = rollout.time_chunks(model, params, scene, jax.random.key(1), 4, (2, 4), repeats=2)
    assert set(r["seconds"]) == {"2", "4"} and all(v > 0 for v in r["seconds"].values())
    assert r["speed_vs_first"]["2"] == 1.0
    assert r["speed_vs_first"]["4"] == pytest.approx(r["seconds"]["2"] / r["seconds"]["4"])
    assert r["identical_tokens"]


@pytest.mark.slow  # one compile of the smoke-sized pretraining step
def test_bench_train_times_the_pretraining_step(tmp_path):
    out = tmp_path / "train.json"
    cli.main(["train", "--json", str(out), "--config", "smoke", "--agents", "8", "--batch", "8"])
    r = json.loads(out.read_text())
    (one,) = r["results"]
    assert one["num_agents"] == 8 and one["batch"] == 8 and len(one["step_s_all"]) == 3
    assert one["step_s_median"] > 0 and one["tokens_per_s"] > 0 and one["param_count"] > 10_000


def test_bench_compare_alternates_and_reports_the_ratio(tmp_path, monkeypatch):
    from dpa_omf.tools.bench import compare as bench_compare

    assert (bench_compare.REPO / "pyproject.toml").is_file()  # the repository root: the tree "current" runs
    calls = []

    def fake_run(tree, bench, out, metric):
        calls.append(("current" if tree == bench_compare.REPO else "baseline", bench, metric))
        return 2.0 if tree == bench_compare.REPO else 1.0 + 0.1 * len(calls)

    monkeypatch.setattr(bench_compare, "_run_once", fake_run)
    monkeypatch.setattr(bench_compare, "_extract", lambda commit, dest: None)
    out = tmp_path / "cmp.json"
    bench_compare.main(["--baseline=HEAD", "--rounds", "3", "--json", str(out), "--", "curate", "--scenes", "2"])
    res = json.loads(out.read_text())
    assert [c[0] for c in calls] == ["baseline", "current", "current", "baseline", "baseline", "current"]
    assert all(c[1] == ["curate", "--scenes", "2"] and c[2] == "scenes_per_second.batched" for c in calls)
    assert res["values"]["baseline"] == [1.1, 1.4, 1.5] and res["median"]["baseline"] == 1.4
    assert abs(res["ratio"] - 2.0 / 1.4) < 1e-12
    assert bench_compare.metric_value({"results": [{"scenes_per_s": 3}]}, "results.0.scenes_per_s") == 3.0
    env = bench_compare._child_env(tmp_path)
    assert all(env.get(k) != v for k, v in allocator.SETTINGS.items())
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)

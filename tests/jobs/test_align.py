"""The main job end to end at smoke scale, and the alignment pieces."""

import ast
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from dpa_omf.configs import align as align_config
from dpa_omf.configs import submit as submit_config
from dpa_omf.io import reader
from dpa_omf.jobs import align, stages
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.tools.study import suites

REPO = pathlib.Path(__file__).resolve().parents[2]


def _align_cfg(method: str, **overrides) -> cfg_lib.AlignConfig:
    c = align_config.get_config()
    c.align.method = method
    for k, v in overrides.items():
        c.align[k] = v
    return cfg_lib.align(c)


def test_side_indices_per_method():
    rng = np.random.default_rng(0)
    ot = rng.random((3, 8))
    ade = rng.random((3, 8))
    order = np.argsort(ot, 1)
    shards = {"ot_distance": ot, "ade_distance": ade, "preferred": order[:, :2], "unpreferred": order[:, ::-1][:, :2],
              "tokens": np.zeros((3, 8, 4, 16), np.int16)}
    preferred, unpreferred = align.side_indices(shards, _align_cfg("dpa_omf"))
    np.testing.assert_array_equal(preferred, order[:, :2])
    preferred, unpreferred = align.side_indices(shards, _align_cfg("dpa_adef"))
    np.testing.assert_array_equal(preferred, np.argsort(ade, 1)[:, :2])
    np.testing.assert_array_equal(unpreferred, np.argsort(ade, 1)[:, ::-1][:, :2])
    preferred, _ = align.side_indices(shards, _align_cfg("sft_best_oa", sft_top_k=3))
    np.testing.assert_array_equal(preferred, order[:, :3])
    _, unpreferred = align.side_indices(shards, _align_cfg("afd"))
    assert unpreferred.shape == (3, 8)


class _Store:
    """A stand-in scene reader: scene i of file f is synthetic scene i (only its identity matters here)."""

    def __init__(self, scenes):
        self.scenes, self.files = scenes, ["a", "b"]

    def sources(self):
        return [reader.Source(f, i) for f in self.files for i in range(len(self.scenes))]

    def read(self, source):
        return self.scenes[source.record]


def _shards(scenes, n: int = 6, k: int = 8, seed: int = 0) -> dict:
    """Curated shards of ``n`` rankings of ``k`` rollouts of the given scenes (random tokens and distances)."""
    rng = np.random.default_rng(seed)
    agents = np.shape(scenes[0].agents.sim_mask)[-1]
    ot = rng.random((n, k))
    order = np.argsort(ot, 1)
    return {"ot_distance": ot, "ade_distance": rng.random((n, k)), "preferred": order[:, :2],
            "unpreferred": order[:, ::-1][:, :2], "tokens": rng.integers(0, 169, (n, k, agents, 5)).astype(np.int16),
            "file_index": np.arange(n) % 2, "record_index": np.arange(n) % len(scenes),
            "ot_agent_distance": rng.random((n, k, agents)).astype(np.float32),
            "ot_agent_counted": rng.random((n, k, agents)) < 0.8}


# Offline levers as 'method:override=value,...'.
LEVERS = {"dpa_omf:offline_loss=ranked,ranked_rollouts=5": {"offline_loss": "ranked", "ranked_rollouts": 5},
          "dpa_omf:offline_loss=top_bottom,credit=agent": {"offline_loss": "top_bottom", "credit": "agent"},
          "dpa_omf:credit=agent": {"credit": "agent"}}


@pytest.mark.parametrize("method", ["dpa_omf", "afd", "online", *LEVERS])
def test_each_process_reads_its_share_of_the_global_batch(smoke_model, method):
    # 2 processes: the halves of every global batch, with the pair draws and rollout keys of one process.
    scenes = smoke_model[2]
    n = 6
    shards = _shards(scenes, n)
    cfg = _align_cfg(method.split(":")[0], pairs_per_scene=3, **LEVERS.get(method, {}))
    make = lambda p, count: align.PairBatches(shards, np.arange(n), _Store(scenes), cfg, 4, seed=5, key_seed=7,
                                              process_index=p, process_count=count)
    one, halves = make(0, 1), [make(0, 2), make(1, 2)]
    for step in range(3):  # crosses an epoch boundary: 12 picks of 6 rows
        want, got = one.batch(step), [h.batch(step) for h in halves]
        for key in want:
            if key == "scenario":
                for a, b, c in zip(jax.tree.leaves(want[key]), *(jax.tree.leaves(g[key]) for g in got)):
                    np.testing.assert_array_equal(a, np.concatenate([b, c]))
            else:
                np.testing.assert_array_equal(want[key], np.concatenate([g[key] for g in got]), err_msg=key)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        make(0, 3)


def test_offline_lever_batches_hold_the_drawn_rollouts_and_their_distances(smoke_model):
    scenes = smoke_model[2]
    shards = _shards(scenes)
    store, rows = _Store(scenes), np.arange(6)
    pb = align.PairBatches(shards, rows, store, _align_cfg("dpa_omf", offline_loss="ranked", credit="agent"), 2,
                           seed=3)
    ranked = pb.batch(0)
    top_bottom = align.PairBatches(shards, rows, store, _align_cfg("dpa_omf", offline_loss="top_bottom",
                                                                   pairs_per_scene=2), 2, seed=3).batch(0)
    # 'ranked' with ranked_rollouts 0: every one of the R rollouts, each with its stored distances.
    assert ranked["all"].shape[1] == 8 and ranked["distance"].shape == (2, 8)
    for b, row in enumerate(pb._order(0)[:2]):
        stored = shards["ot_distance"][row].astype(np.float32)
        idx = [int(np.flatnonzero(stored == d)[0]) for d in ranked["distance"][b]]
        assert sorted(idx) == list(range(8))
        np.testing.assert_array_equal(ranked["all"][b], shards["tokens"][row][idx])
        np.testing.assert_array_equal(ranked["agent_distance"][b], shards["ot_agent_distance"][row][idx])
        np.testing.assert_array_equal(ranked["agent_counted"][b], shards["ot_agent_counted"][row][idx])
    # 'top_bottom': pairs_per_scene of the preferred (level 0) then as many of the unpreferred (level 1).
    np.testing.assert_array_equal(top_bottom["distance"], [[0, 0, 1, 1]] * 2)
    assert "agent_distance" not in top_bottom  # scene credit needs no per-agent arrays
    old = {k: v for k, v in shards.items() if not k.startswith("ot_agent")}
    with pytest.raises(ValueError, match="re-run the curate stage"):
        align.PairBatches(old, rows, store, _align_cfg("dpa_omf", credit="agent"), 2, seed=3)


def test_offline_levers_at_the_reference(smoke_model):
    """Every offline lever runs through the loss; anchored at the reference (policy = reference) the DPO-style
    ratio scores are 0, so every comparison costs log 2 (pairs, rankings, per agent, weighted), and the KL is 0."""
    model, params, scenes = smoke_model
    shards = _shards(scenes[:2], n=2)
    store = _Store(scenes)
    for levers in ({}, {"offline_loss": "ranked", "ranked_rollouts": 4}, {"offline_loss": "top_bottom"},
                   {"credit": "agent"}, {"offline_loss": "ranked", "ranked_rollouts": 4, "credit": "agent"}):
        plain = _align_cfg("dpa_omf", pairs_per_scene=2, **levers)
        anchored = _align_cfg("dpa_omf", pairs_per_scene=2, reference_ratio=True, kl_weight=0.5,
                              eval_agent_weight=3.0, **levers)
        batch = align.PairBatches(shards, np.arange(2), store, plain, 2, seed=1).batch(0)
        loss, m = jax.jit(align.make_loss_fn(model, anchored))(params, batch, jax.random.key(0), params)
        assert float(loss) == pytest.approx(np.log(2.0), abs=1e-5), levers
        assert float(m["kl_anchor"][0]) == pytest.approx(0.0, abs=1e-6) and float(m["kl_anchor"][1]) > 0
        assert float(m["nll_preferred"][0]) > 0 and float(m["pref_accuracy"][1]) > 0  # the sequences' own NLL


def test_both_sides_of_a_pair_share_one_encoding_and_keep_their_values(smoke_model):
    """``joint_log_probs`` encodes each scene once for several sets of sequences (2 and 3 per scene here) and gives
    each set the log-probs and logits it has alone."""
    from dpa_omf import datatypes as dt
    from dpa_omf.jobs import align_losses
    from dpa_omf.model import tokenizer as tok

    model, params, scenes = smoke_model
    scen = dt.stack_scenarios(scenes[:2])
    a_shape = scen.agents.sim_mask.shape + (model.config.tokenizer.num_token_steps,)
    sets = []
    for i, p in enumerate((2, 3)):
        shape = (a_shape[0], p, *a_shape[1:])
        seqs = jax.random.randint(jax.random.key(i), shape, 0, tok.NUM_TOKENS)
        sets.append((seqs, np.broadcast_to(np.asarray(scen.agents.sim_mask)[:, None, :, None], shape)))
    joint = align_losses.joint_log_probs(model, params, scen, sets)
    for (seqs, valid), (lp, logits) in zip(sets, joint):
        alone_lp, alone_logits = align_losses.batched_log_probs(model, params, scen, seqs, valid)
        assert lp.shape == alone_lp.shape and logits.shape == alone_logits.shape
        np.testing.assert_allclose(lp, alone_lp, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(logits, alone_logits, rtol=1e-5, atol=1e-5)


def _method_errors(method: str, **overrides) -> str:
    c = align_config.get_config()
    c.align.method = method
    for k, v in overrides.items():
        c.align[k] = v
    with pytest.raises(cfg_lib.ConfigError) as e:
        stages.check(c)
    return str(e.value)


def test_offline_levers_are_refused_where_they_do_not_apply():
    assert "offline CPL methods ('dpa_omf', 'dpa_adef')" in _method_errors("sft_best_oa", offline_loss="ranked")
    assert "offline CPL methods" in _method_errors("online", kl_weight=1.0)
    assert "per-agent OT" in _method_errors("dpa_adef", credit="agent")
    assert "sft_top_k=99 exceeds" in _method_errors("sft_best_ade", sft_top_k=99)
    with pytest.raises(ValueError, match="offline_loss"):
        _align_cfg("dpa_omf", offline_loss="all")
    c = align_config.get_config("smoke")
    c.align.offline_loss, c.align.ranked_rollouts = "ranked", 9
    with pytest.raises(ValueError, match="ranked_rollouts=9 exceeds"):
        cfg_lib.check(c)


@pytest.mark.slow
def test_main_job_smoke_end_to_end(tmp_path):
    wd = tmp_path / "wd"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device, as a user's plain run
    out = subprocess.run([sys.executable, "-m", "dpa_omf.launch", "--config=configs/align.py:smoke",
                          f"--workdir={wd}"], cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((wd / "evaluate" / "summary.json").read_text())
    for name in ("reference", "dpa_omf"):
        for key in ("composite", "kinematic", "interactive", "map", "min_ade", "collision_rate", "offroad_rate"):
            assert 0.0 <= summary[name][key] < 1e3, (name, key)
    curate = json.loads((wd / "curate" / "summary.json").read_text())
    assert curate["num_examples"] > 0 and curate["num_pairs"] == 2 * curate["num_examples"]
    assert curate["preferred_mean_distance"] < curate["unpreferred_mean_distance"]
    for png in ("scene0_expert.png", "scene0_best.png", "scene0_worst.png", "scene0_coupling.png"):
        assert (wd / "curate" / png).stat().st_size > 0
    assert (wd / "evaluate" / "report.md").read_text().count("| reference |") == 1
    assert "| dpa_omf |" in out.stdout
    # A re-run reuses every finished stage and prints the table again.
    again = subprocess.run([sys.executable, "-m", "dpa_omf.launch", "--config=configs/align.py:smoke",
                            f"--workdir={wd}"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "| dpa_omf |" in again.stdout
    for stage in ("data", "prepare", "pretrain", "curate", "align", "evaluate"):
        assert f"[{stage}] reused" in again.stderr, again.stderr[-3000:]
    assert "INFO" not in again.stderr  # library chatter goes to the log file
    assert list((wd / "logs").iterdir())
    # Another method in the same workdir (online DPA-OMF: it ranks its own rollouts, no shards): only its
    # alignment runs, and only its model is evaluated.
    online = subprocess.run([sys.executable, "-m", "dpa_omf.launch", "--config=configs/align.py:smoke,online",
                             f"--workdir={wd}"], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert online.returncode == 0, online.stderr[-3000:]
    assert "[curate] reused" in online.stderr and "[align_online] running" in online.stderr
    both = json.loads((wd / "evaluate" / "summary.json").read_text())
    assert set(both["models"]) == {"reference", "dpa_omf", "online"}
    assert both["models"]["dpa_omf"] == summary["models"]["dpa_omf"]  # cached, not re-evaluated
    assert set(both["checkpoints"]) == {"reference", "dpa_omf", "online"}
    assert "| online |" in online.stdout
    done = json.loads((wd / "align_online" / "summary.json").read_text())
    assert done["rollouts_sampled"] == 4 * 8 * 8 and done["updates"] == 4  # rounds x scenes x rollouts
    rounds = [json.loads(line) for line in (wd / "align_online" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["round_best_ot_distance"] <= r["round_ot_distance"] for r in rounds if "round_ot_distance" in r)


def test_curate_shards_name_data_files_relative_to_the_workdir(tmp_path, monkeypatch):
    """A workdir can be moved or used from another current directory: shards
    store synthetic data paths relative to it (real WOMD paths stay absolute)."""

    from dpa_omf.jobs import curate
    from dpa_omf.jobs import workdir as workdir_lib

    wd = tmp_path / "wd"
    data = wd / "data" / "train"
    data.mkdir(parents=True)
    (data / "a.tfrecord").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert curate.portable_path("wd/data/train/a.tfrecord", "wd") == "data/train/a.tfrecord"
    assert curate.portable_path("/elsewhere/x.tfrecord", "wd") == "/elsewhere/x.tfrecord"
    (wd / "curate").mkdir()
    np.savez(wd / "curate" / "shard-00000-of-00001.npz", files=np.asarray(["data/train/a.tfrecord"]),
             tokens=np.zeros((1, 2), np.int16))
    (wd / "curate" / "summary.json").write_text('{"config_fingerprint": "x"}')
    workdir_lib.seal(wd, "curate", "x")  # the stage graph lists the shards; consumers read that list
    moved = tmp_path / "moved"
    wd.rename(moved)
    monkeypatch.chdir("/")
    out = curate.load_shards(str(moved))
    assert out["files"].tolist() == [str(moved / "data/train/a.tfrecord")]
    (moved / "data/train/a.tfrecord").unlink()
    with pytest.raises(FileNotFoundError, match="re-run the curate stage"):
        curate.load_shards(str(moved))


def test_a_method_is_a_variant_by_its_registry_entry_alone(monkeypatch):
    """align.METHODS is the one list of methods: a new entry is at once a variant of configs/align.py and of
    configs/submit.py, and a name that is no entry is refused at the boundary, naming the registry's methods."""
    monkeypatch.setitem(align.METHODS, "tenth", align.METHODS["dpa_omf"])
    for cfg_module in (align_config, submit_config):
        c = cfg_module.get_config("smoke,tenth")
        c.submit.account_name = "you@example.com"
        assert c.align.method == "tenth"
        stages.check(c)
    with pytest.raises(ValueError, match=r"align.method='tnth' is not an alignment method \('dpa_omf',"):
        stages.check(align_config.get_config("tnth"))
    c = submit_config.get_config("smoke,tnth")
    c.submit.account_name = "you@example.com"
    with pytest.raises(ValueError, match=r"submit\.model='tnth' is not 'reference' or an alignment method"):
        stages.check(c)
    with pytest.raises(ValueError, match="at most one alignment method"):
        align_config.get_config("ntp,afd")


def test_no_module_lists_the_methods_again():
    """No production module holds a second list of the methods: no tuple, list or set literal of three or more of
    align.METHODS' names outside the registry (the study's suites choose a subset: that is configuration)."""
    names, found = set(align.METHODS), []
    root = pathlib.Path(align.__file__).parents[1]
    allowed = {root / "jobs" / "align.py", root / "tools" / "study" / "suites.py"}
    for path in sorted(root.rglob("*.py")):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                spelled = {e.value for e in node.elts if isinstance(e, ast.Constant)} & names
                if len(spelled) >= 3:
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not found, f"a second list of alignment methods: {found}"


def test_what_a_method_needs_comes_from_its_entry(monkeypatch):
    """The config rules, the cost accounting and the study read a method's registry entry: changing the entry
    (here giving the control 'ntp' rankings, a top-k and a cost of its own) changes them, with no other edit."""
    assert "offline CPL methods" in _method_errors("ntp", kl_weight=0.5)
    entry = align.Method(None, align.METHODS["ntp"].loss, paired=False, ranked_by="ot_distance", top_k=True,
                         sampled=lambda c, n: 7 * n, study_default=True)
    monkeypatch.setitem(align.METHODS, "ntp", entry)
    c = align_config.get_config()
    c.align.method, c.align.kl_weight = "ntp", 0.5
    stages.check(c)  # the lever now applies
    assert "sft_top_k=99 exceeds" in _method_errors("ntp", sft_top_k=99)
    assert align.METHODS[c.align.method].sampled(c, 3) == 21
    assert align.train_config(c).updates_per_step == 1
    monkeypatch.setitem(align.METHODS, "ntp", dataclasses.replace(entry, rounds=True))
    assert align.train_config(c).updates_per_step == c.align.online.steps_per_round


def test_no_code_outside_the_registry_branches_on_a_method_name():
    """A method's traits are fields of its align.METHODS entry: no module compares a method to a name (DPA-OMF,
    the default method and the study's baseline, excepted) and the study's choices derive from the registry."""
    names = set(align.METHODS) - {"dpa_omf"}
    found = []
    for path in sorted((REPO / "dpa_omf").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in (node.left, *node.comparators):
                    consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                    found += [f"{path.relative_to(REPO)}:{node.lineno} {c.value}" for c in consts
                              if isinstance(c, ast.Constant) and c.value in names]
    assert not found, found
    assert tuple(n for n, m in align.METHODS.items() if m.study_default) == suites.DEFAULT_METHODS

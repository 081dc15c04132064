"""The study (dpa_omf/tools/study/): aggregation over seeds and scenes, the choices on validation (learning rates,
levers, sampling), the results document, and a whole suite with its launches faked."""

import hashlib
import json
import math
import subprocess
import time

import numpy as np
import pytest

from dpa_omf.jobs import align, evaluate
from dpa_omf.metrics import names
from dpa_omf.tools.study import cli, figures, results, runs, suites, tables


def _models(ref: float, ours: float) -> dict:
    base = dict.fromkeys(names.report(), 0.5)
    return {"reference": base | {"composite": ref}, "dpa_omf": base | {"composite": ours},
            "afd": base | {"composite": ref - 0.01}}


def test_aggregate_mean_std_and_paired_difference():
    per_seed = {0: {"models": _models(0.50, 0.52)}, 1: {"models": _models(0.60, 0.61)},
                2: {"models": _models(0.55, 0.58)}}
    acc = {0: {"dpa_omf": 0.7, "afd": 0.5}, 1: {"dpa_omf": 0.8, "afd": 0.5}, 2: {"dpa_omf": 0.9, "afd": None}}
    aligned = {s: {m: {"eval_pref_accuracy": a, "eval_kl_to_reference": 0.01 * (s + 1), "rollouts_sampled": 5120}
                   for m, a in v.items()} for s, v in acc.items()}
    r = results.aggregate(per_seed, aligned, ["dpa_omf", "afd"])
    assert r["seeds"] == [0, 1, 2]
    ref = r["models"]["reference"]["composite"]
    assert ref["mean"] == pytest.approx(0.55) and ref["std"] == pytest.approx(0.05)
    d = r["models"]["dpa_omf"]["composite_minus_reference"]
    assert d["per_seed"] == pytest.approx([0.02, 0.01, 0.03])
    assert d["mean"] == pytest.approx(0.02) and d["std"] == pytest.approx(0.01)
    assert r["models"]["dpa_omf"]["heldout_pref_accuracy"]["mean"] == pytest.approx(0.8)
    assert r["models"]["afd"]["heldout_pref_accuracy"]["per_seed"] == [0.5, 0.5]  # missing seed skipped
    assert "composite_minus_reference" not in r["models"]["reference"]
    assert r["models"]["dpa_omf"]["kl_to_reference"]["mean"] == pytest.approx(0.02)
    text = tables.markdown(r, {"challenge": "2024", "num_scenes": 32, "num_rollouts": 32})
    assert "| dpa_omf | " in text and "+0.0200 +- 0.0100" in text and "0.800 +- 0.100" in text
    assert "| 5120 |" in text
    assert not any(math.isnan(v) for v in ref["per_seed"])


def test_intervals_over_scenes_and_the_figure(tmp_path):
    """Per-scene composites bootstrapped over seeds and scenes together; the paired difference's interval
    excludes 0 when every scene improves, and spans the seeds' spread; the figure is written."""
    per_seed = {s: {"models": _models(0.5, 0.52)} for s in (0, 1)}
    scenes = [0.4, 0.5, 0.6, 0.45, 0.55]
    per_scene = {s: {"reference": scenes, "dpa_omf": [v + 0.02 + 0.01 * s for v in scenes],
                     "afd": [v - 0.01 for v in scenes]} for s in (0, 1)}
    aligned = {s: {m: {"rollouts_sampled": 100, "eval_pref_accuracy": 0.6} for m in ("dpa_omf", "afd")}
               for s in (0, 1)}
    r = results.aggregate(per_seed, aligned, ["dpa_omf", "afd"], per_scene)
    lo, hi = r["models"]["dpa_omf"]["composite_minus_reference"]["ci95"]
    assert lo == pytest.approx(0.02) and hi == pytest.approx(0.03)  # every scene +0.02 (seed 0), +0.03 (seed 1)
    lo, hi = r["models"]["reference"]["composite"]["ci95"]
    assert 0.4 <= lo < 0.5 < hi <= 0.6
    figures.realism_vs_rollouts(r, {"dpa_omf": [(50, 0.5), (100, 0.51)]}, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000
    text = tables.markdown(r, {"challenge": "2024", "num_scenes": 5, "num_rollouts": 32})
    assert "[+0.0200, +0.0300]" in text
    p = r["protocol"]  # DPA-OMF - reference: 0 between scenes, 0.0071 between seeds
    assert p["between_scenes"] == pytest.approx(0.0) and p["between_seeds"] == pytest.approx(0.01 / np.sqrt(2))
    assert p["detectable_difference"] == pytest.approx(2.8016 * 0.005, rel=1e-3) and "detects" in text
    assert p["scenes_for_paper_gain"] == 1 and "needs 1 test scenes" in text  # no scene spread: the seeds decide
    assert r["models"]["dpa_omf"]["vs"]["afd"]["mean"] == pytest.approx(0.035)


def test_link_shared_needs_the_main_job_stages(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the main job"):
        runs.link(tmp_path / "missing", tmp_path / "seed_1")
    src = tmp_path / "main"
    for s in runs.SHARED_STAGES:
        (src / s).mkdir(parents=True)
    runs.link(src, tmp_path / "seed_1")
    assert all((tmp_path / "seed_1" / s).is_symlink() for s in runs.SHARED_STAGES)


def test_learning_rate_choice_blocks_and_sweep_table(tmp_path):
    val = {"dpa_omf": {3e-4: 0.70, 1e-3: 0.72, 3e-3: 0.71}, "afd": {3e-4: 0.69, 1e-3: 0.69, 3e-3: 0.68}}
    chosen = runs.choose_learning_rates(val)
    assert chosen == {"dpa_omf": 1e-3, "afd": 3e-4}  # best; a tie goes to the smaller rate
    val_flags, test_flags = runs.blocks(64, 256)
    assert val_flags == ["--config.evaluate.first_scene=256", "--config.evaluate.num_scenes=64"]
    assert test_flags == ["--config.evaluate.first_scene=0", "--config.evaluate.num_scenes=256"]
    lines = tables.sweep_table({"val_composite": val, "reference_val_composite": 0.7, "chosen": chosen})
    assert "| dpa_omf | 0.7000 | **0.7200** | 0.7100 |" in lines
    with pytest.raises(SystemExit, match="--val_scenes"):
        cli.main([f"--workdir={tmp_path / 'x'}", "--lrs=1e-3"])
    assert not (tmp_path / "x").exists()  # refused before anything is made


def test_nll_and_kl_figure_from_alignment_logs(tmp_path):
    import json

    seed_dir = tmp_path / "seed_0"
    for m in ("dpa_omf", "afd"):
        d = seed_dir / align.folder_name(m)
        d.mkdir(parents=True)
        rows = [{"step": s, "eval_nll_preferred": 1.0 + s / 100, "eval_nll_unpreferred": 1.2 + s / 50,
                 "eval_nll_expert": 1.1, "eval_kl_to_reference": s / 1000, "eval_realism_composite": 0.7}
                for s in (20, 40)]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [{"step": 1, "loss": 1.0}, *rows]))
    per_seed = {0: {"models": _models(0.5, 0.52)}}
    aligned = {0: {m: {"eval_kl_to_reference": 0.02} for m in ("dpa_omf", "afd")}}
    r = results.aggregate(per_seed, aligned, ["dpa_omf", "afd"])
    figures.nll_and_kl_figure(r, [seed_dir], ["dpa_omf", "afd"], tmp_path / "nll.png")
    assert (tmp_path / "nll.png").stat().st_size > 1000
    assert [r["step"] for r in figures.eval_records(seed_dir, "afd")] == [20, 40]


def test_method_variants_join_the_config_variants():
    assert runs.with_variant("configs/align.py", "afd") == "configs/align.py:afd"
    assert runs.with_variant("configs/align.py:smoke", "afd") == "configs/align.py:smoke,afd"
    assert runs.with_variant("configs/align.py:smoke", "dpa_omf") == "configs/align.py:smoke"


def _fake_launch(calls, root):
    """A stand-in for ``runs.launch`` that writes what the stages would (numbers from a hash of the workdir, method,
    under the study's ``root``, seed and sampling setting: the same in every test run), recording calls. A finished
    (or linked) alignment is kept, as the stage graph does."""
    def value(*parts) -> float:
        return int(hashlib.md5(repr(parts).encode()).hexdigest()[:6], 16) / 0xFFFFFF

    def launch(config, workdir, seed, extra):
        calls.append((config, str(workdir), seed, list(extra)))
        variants = config.partition(":")[2].split(",")
        method = next((v for v in variants if v in suites.ALL_METHODS), "dpa_omf")
        for stage in runs.SHARED_STAGES:
            if not (workdir / stage).exists():
                (workdir / stage).mkdir(parents=True)
        if "--config.job=curate" in extra:
            return
        flags = dict(e.removeprefix("--config.").split("=", 1) for e in extra)
        n = int(flags.get("evaluate.num_scenes", 4))
        sampling = (flags.get("evaluate.temperature", "1.0"), flags.get("evaluate.top_p", "1.0"))
        folder = workdir / align.folder_name(method)
        folder.mkdir(exist_ok=True)
        key = (str(workdir.relative_to(root)), method, seed)
        if not (folder / "summary.json").exists():
            (folder / "summary.json").write_text(json.dumps(
                {"eval_pref_accuracy": value(*key, "acc"), "eval_kl_to_reference": value(*key, "kl"), "steps": 4,
                 "rollouts_sampled": 8, "updates": 4}))
            (folder / "metrics.jsonl").write_text("\n".join(json.dumps(
                {"step": s, "eval_nll_preferred": 1.0, "eval_nll_unpreferred": 1.1, "eval_nll_expert": 1.2,
                 "eval_kl_to_reference": 0.01 * s, "eval_realism_composite": 0.3}) for s in (2, 4)))
        ev = workdir / "evaluate"
        (ev / "models").mkdir(parents=True, exist_ok=True)
        summary = json.loads((ev / "summary.json").read_text()) if (ev / "summary.json").exists() else {
            "models": {}, "challenge": "2024", "num_scenes": n, "num_rollouts": 4}
        for name in ("reference", method):
            # the reference gains from sharper sampling (as measured in issue 20): the control has a row
            sharper = name == "reference" and float(sampling[0]) < 1
            per_scene = [(value(key, i) if name != "reference" else 0.5 * value(seed, sampling, i) + 0.5 * sharper)
                         for i in range(n)]
            summary["models"][name] = {c: float(np.mean(per_scene)) for c in names.report()}
            (ev / "models" / f"{name}.json").write_text(json.dumps({"composite_per_scene": per_scene}))
        (ev / "summary.json").write_text(json.dumps(summary))

    return launch


def _method(config: str) -> str:
    return next((v for v in config.split(":")[-1].split(",") if v in suites.ALL_METHODS), "dpa_omf")


def test_quick_suite_report_has_every_table_figure_and_method_row(tmp_path, monkeypatch):
    """The suite's orchestration and report (the launches faked: the jobs have their own tests): every method, arm
    and sampling row filled; the sweep, the levers and the sampling grid chose on the validation block only and every
    test run used the choices; every table and figure present; alignment.json has the documented structure."""
    calls = []
    monkeypatch.setattr(runs, "launch", _fake_launch(calls, tmp_path))
    fake_post = {"scenes": 1, "rollouts_per_scene": 4, "group": 2,
                 "rankings": {k: [{"group": g, "composite": 0.3, "composite_ci95": (0.2, 0.4), "mean_ade": 1.0}
                                  for g in (1, 2)] for k in ("ot", "ade")},
                 "closest_group_ot_minus_ade": {"mean": 0.01, "lo": -0.01, "hi": 0.03}}
    monkeypatch.setattr(runs, "post_selection", lambda *a: fake_post)
    out = tmp_path / "results"
    assert cli.main(["--suite=quick", f"--workdir={tmp_path}", f"--results_dir={out}"]) == 0
    text = (tmp_path / "report.md").read_text()
    suite = suites.SUITES["quick"]
    result = json.loads((tmp_path / "study.json").read_text())
    lv, sh = result["levers"], result["sharpening"]
    arms = [f"dpa_omf[{a.name}]" for a in suite.arms if a.table != "levers"]
    arms += ["dpa_omf[combined]"] if lv["chosen"] else []
    sampled = [evaluate.sampled_name(m, tuple(s)) for m, s in sh["chosen"].items() if tuple(s) != (1.0, 1.0)]
    for name in ["reference", *suite.methods, *arms, *sampled]:
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} | "))
        assert "nan" not in row and row.count("|") >= 9, row
    for section in ("Learning-rate sweep", "Levers on the validation block", "Sampling (temperature", "Table 3",
                    "Table 2", "Fig. 7", "Post-selection", "realism_vs_rollouts.png", "nll_and_kl.png",
                    "post_selection.png", "smallest difference this protocol detects"):
        assert section in text, section
    for fig in (tmp_path / "realism_vs_rollouts.png", tmp_path / "nll_and_kl.png", out / "realism_vs_kl.png",
                out / "gain_vs_data_scale.png"):
        assert fig.stat().st_size > 1000, fig
    chosen = result["sweep"]["chosen"]
    assert set(chosen) == set(suite.methods)
    val_block = f"--config.evaluate.first_scene={suite.test_scenes}"
    for config, workdir, _seed, extra in calls:
        if "/sweep/" in workdir or "/levers/" in workdir or "/sampling/val/" in workdir:
            assert val_block in extra and _seed == suite.seeds[0]  # choices: validation block, first seed
        elif "--config.job=curate" not in extra:
            assert "--config.evaluate.first_scene=0" in extra, (workdir, extra)
            if "/arms/" in workdir or "/sampling/" in workdir or _method(config) == "dpa_omf":
                assert runs.lr_flag(chosen["dpa_omf"]) in extra
            else:
                assert runs.lr_flag(chosen[_method(config)]) in extra
    assert {seed for _, w, seed, _ in calls if "/seed_" in w} == set(suite.seeds)
    # levers: the kept ones beat DPA-OMF on validation (the best of their group), and run together on the test block
    for name in lv["chosen"]:
        assert lv["arms"][name]["val_composite"] > lv["base"]
    assert lv["chosen"]  # (with these fake numbers) so the combined arm ran on every seed with their overrides
    combined = [e for _, w, _, e in calls if "/arms/combined/" in w]
    assert len(combined) == len(suite.seeds)
    assert all(o in combined[0] for n in lv["chosen"] for o in lv["arms"][n]["overrides"])
    # sampling: the grid on validation, each model's best setting on the test block with its flags; the combined
    # levers run on validation too and get their own setting (their reference row copied, not re-scored)
    assert lv["combined_val_composite"] is not None and len(sh["val_composite"][runs.COMBINED_ROW]) == len(sh["grid"])
    comb_val = [e for _, w, _, e in calls if "/sampling/val/combined/" in w]
    assert len(comb_val) == len(sh["grid"]) and all(o in comb_val[0] for n in lv["chosen"]
                                                     for o in lv["arms"][n]["overrides"])
    assert all((tmp_path / "sampling" / "val" / "combined" / f"t{t:g}_p{p:g}" / f"seed_{suite.seeds[0]}" / "evaluate"
                / "models" / "reference.json").exists() for t, p in sh["grid"])
    assert sh["chosen"]["reference"] == [0.85, 0.95] and "reference@t0.85,p0.95" in result["models"]
    for m, setting in sh["chosen"].items():
        assert sh["val_composite"][m][sh["grid"].index(setting)] == max(sh["val_composite"][m])
        if tuple(setting) != (1.0, 1.0):
            runs_at = [e for _, w, _, e in calls if "/sampling/test/" in w and runs.sampling_flags(setting)[0] in e]
            assert len(runs_at) >= len(suite.seeds)
    doc = json.loads((out / "alignment.json").read_text())
    assert doc["test_scenes"] == suite.test_scenes and doc["seeds"] == list(suite.seeds)
    for name, m in doc["models"].items():
        assert len(m["ci"]) == 2 and m["ci"][0] <= m["composite"] <= m["ci"][1], name
        if name != "reference":
            assert set(m["vs_reference"]) == {"mean", "lo", "hi"}
    vs = doc["models"]["dpa_omf"]["vs"]
    assert {"ntp", "afd", *(s for s in sampled if s.startswith("reference@"))} <= set(vs)
    assert all(set(d) == {"mean", "lo", "hi"} for d in vs.values())
    assert doc["protocol"]["detectable_difference"] > 0
    md = (out / "alignment.md").read_text()
    assert doc["time"]["commands"] == 1 and (tmp_path / "time.jsonl").exists()
    assert "## Claims" in md and "dpa_omf beats ntp" in md and "realism_vs_kl.png" in md


@pytest.mark.parametrize("code, message", [(75, "run the same study command again"), (3, "failed with exit code 3")])
def test_a_preempted_or_failed_job_stops_the_study_with_its_exit_code(monkeypatch, tmp_path, capsys, code, message):
    # 75 is the launcher's "preempted, saved" code: a batch system that restarts on it restarts the study.
    monkeypatch.setattr(runs.subprocess, "run", lambda cmd: subprocess.CompletedProcess(cmd, code))
    with pytest.raises(SystemExit) as stop:
        runs.launch("configs/align.py", tmp_path, 0, [])
    assert stop.value.code == code and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # the whole study stops with it, its time so far recorded
        cli.main([f"--workdir={tmp_path / 'study'}", "--methods=dpa_omf", "--seeds=0"])
    assert stop.value.code == code
    assert json.loads((tmp_path / "study" / "time.jsonl").read_text())["stopped"]
    # each run of a job left its time in its workdir, the stopped ones too
    rows = runs.job_times(tmp_path)
    assert [r["exit_code"] for r in rows] == [code, code] and all(r["cpu_s"] >= 0 for r in rows)


def test_the_protocol_time_adds_every_job_run_and_every_study_command(tmp_path, monkeypatch):
    """A study resumed several times: its total is the sum of its commands' own time and of every job run's."""
    monkeypatch.setattr(runs, "children_cpu_seconds", iter([10.0, 70.0, 70.0, 100.0]).__next__)
    monkeypatch.setattr(runs.subprocess, "run", lambda cmd: subprocess.CompletedProcess(cmd, 0))
    runs.launch("configs/align.py", tmp_path / "a", 0, [])
    runs.launch("configs/align.py", tmp_path / "b" / "c", 0, [])
    (tmp_path / "time.jsonl").write_text(json.dumps({"wall_s": 3600.0, "cpu_s": 1800.0}) + "\n")  # an older line
    t = cli.record_time(tmp_path, time.time() - 7200.0, cli.own_cpu_seconds() - 36.0)
    assert t["commands"] == 2 and t["job_runs"] == 2
    assert t["cpu_hours"] == pytest.approx((60.0 + 30.0 + 1800.0 + 36.0) / 3600, abs=1e-3)
    assert t["wall_hours"] == pytest.approx(3.0, abs=1e-3)


def test_arms_are_config_overrides_and_levers_combine_the_best_of_each_group():
    a = suites.parse_arm("optim/lr_1e-4:align.optim.learning_rate=1e-4;--config.align.num_steps=80")
    assert (a.name, a.group_name, a.table) == ("lr_1e-4", "optim", "levers")
    assert a.overrides == ("--config.align.optim.learning_rate=1e-4", "--config.align.num_steps=80")
    assert not a.curates and suites.parse_arm("data_2x:curate.rankings_per_example=0.16").curates
    assert suites.parse_arm("bc:align.bc_weight=1.0").group_name == "bc"
    with pytest.raises(ValueError, match="NAME:key=value"):
        suites.parse_arm("no_overrides")
    with pytest.raises(ValueError, match="table"):
        suites.Arm("x", ("--config.align.seed=1",), "other")
    with pytest.raises(ValueError, match=r"--config\.key=value"):
        suites.Arm("x", ("align.seed",), "levers")
    arms = [suites.Arm("w0", ("--config.align.optim.warmup_steps=0",), "levers", "warmup"),
            suites.Arm("w20", ("--config.align.optim.warmup_steps=20",), "levers", "warmup"),
            suites.Arm("bc", ("--config.align.bc_weight=1.0",), "levers"),
            suites.Arm("wd", ("--config.align.optim.weight_decay=0.01",), "levers")]
    val = {"w0": 0.72, "w20": 0.73, "bc": 0.69, "wd": 0.71}
    chosen = runs.choose_levers(0.70, val, arms)
    assert [a.name for a in chosen] == ["w20", "wd"]  # the best of its group, if it beats DPA-OMF; bc does not
    both = runs.combined(chosen)
    assert both.name == suites.COMBINED
    assert both.overrides == ("--config.align.optim.warmup_steps=20", "--config.align.optim.weight_decay=0.01")
    assert runs.combined(runs.choose_levers(0.8, val, arms)) is None
    with pytest.raises(SystemExit, match="--val_scenes"):  # a lever is chosen on the validation block
        cli.main(["--workdir=/nonexistent/x", "--arm=bc:align.bc_weight=1.0"])


def test_levers_from_the_command_line_without_a_sweep(tmp_path, monkeypatch):
    """``--arm`` levers without a learning-rate sweep: DPA-OMF's own validation run is their baseline, the reference
    is scored there once and copied into each lever's folder, and the kept levers run on every seed."""
    calls = []
    monkeypatch.setattr(runs, "launch", _fake_launch(calls, tmp_path))
    argv = [f"--workdir={tmp_path}", "--config=configs/align.py:smoke", "--methods=dpa_omf,ntp", "--seeds=0,1",
            "--val_scenes=3", "--test_scenes=5", "--arm=warmup/w0:align.optim.warmup_steps=0",
            "--arm=warmup/w2:align.optim.warmup_steps=2", "--arm=bc:align.bc_weight=1.0",
            "--arm=data_2x:curate.rankings_per_example=0.16"]
    assert cli.main(argv) == 0
    result = json.loads((tmp_path / "study.json").read_text())
    lv = result["levers"]
    base = json.loads((tmp_path / "levers" / "base" / "evaluate" / "summary.json").read_text())
    assert lv["base"] == base["models"]["dpa_omf"]["composite"]
    for name in ("w0", "w2", "bc", "data_2x"):
        ref = tmp_path / "levers" / name / "evaluate" / "models" / "reference.json"
        assert ref.exists()
        assert (tmp_path / "levers" / name / "curate").is_symlink() == (name != "data_2x")  # its own curation
    assert set(lv["arms"]) == {"w0", "w2", "bc", "data_2x"} and lv["chosen"]
    assert not {"w0", "w2"} <= set(lv["chosen"])  # alternatives: one at most
    assert all(lv["arms"][n]["val_composite"] > lv["base"] for n in lv["chosen"])
    assert "dpa_omf[combined]" in result["models"]
    assert {s for _, w, s, _ in calls if "/arms/combined/" in w} == {0, 1}
    assert (tmp_path / "alignment.json").exists() and "ntp" in result["models"]["dpa_omf"]["vs"]
    assert json.loads((tmp_path / "levers.json").read_text())["chosen"] == lv["chosen"]  # written as chosen


def test_a_suite_with_rates_fixed_by_an_earlier_sweep_uses_them_everywhere(tmp_path, monkeypatch):
    """A suite whose learning rates an earlier sweep chose (``Suite.rates``, as ``powered_test``): no sweep runs,
    every test-block launch of a method carries its rate (DPA-OMF's in its sampling rows too), and the report and
    alignment.json cite the rates and their source."""
    calls = []
    monkeypatch.setattr(runs, "launch", _fake_launch(calls, tmp_path))
    rates = (("dpa_omf", 1e-4), ("ntp", 3e-4))
    monkeypatch.setitem(suites.SUITES, "fixed", suites.Suite(
        "configs/align.py:smoke", ("dpa_omf", "ntp"), (0, 1), val_scenes=2, test_scenes=4,
        sampling=((0.85, 0.95), (1.0, 1.0)), rates=rates, rates_source="an earlier sweep"))
    out = tmp_path / "results"
    assert cli.main(["--suite=fixed", f"--workdir={tmp_path}", f"--results_dir={out}"]) == 0
    assert not any("/sweep/" in w for _, w, _, _ in calls)
    for config, workdir, _seed, extra in calls:
        if "--config.job=curate" not in extra:
            assert runs.lr_flag(dict(rates)[_method(config)]) in extra, (workdir, extra)
            assert sum(e.startswith("--config.align.optim.learning_rate=") for e in extra) == 1
    assert {s for _, w, s, _ in calls if "/sampling/test/" in w} == {0, 1}
    doc = json.loads((out / "alignment.json").read_text())
    assert doc["choices"]["rates"] == {"chosen": dict(rates), "source": "an earlier sweep"}
    assert doc["choices"]["sweep"] is None
    assert "an earlier sweep): dpa_omf 0.0001, ntp 0.0003." in (out / "alignment.md").read_text()


def test_a_suite_with_sampling_fixed_by_an_earlier_grid_runs_only_its_test_rows(tmp_path, monkeypatch):
    """A suite whose sampling settings an earlier grid chose (``Suite.sampling_chosen``, as
    ``powered_sharpening``): no validation evaluation runs, each model's setting is scored on the test block for
    every seed, its rows are reported beside the plain ones, and the report cites the choice's source."""
    calls = []
    monkeypatch.setattr(runs, "launch", _fake_launch(calls, tmp_path))
    chosen = (("reference", (0.85, 0.9)), ("dpa_omf", (0.7, 0.95)))
    monkeypatch.setitem(suites.SUITES, "fixed_sampling", suites.Suite(
        "configs/align.py:smoke", ("dpa_omf",), (0, 1), val_scenes=2, test_scenes=4,
        sampling_chosen=chosen, sampling_source="an earlier grid"))
    out = tmp_path / "results"
    assert cli.main(["--suite=fixed_sampling", f"--workdir={tmp_path}", f"--results_dir={out}"]) == 0
    assert not any("/val/" in w for _, w, _, _ in calls)
    sampled = {(w.split("/sampling/test/")[1].split("/")[0], s) for _, w, s, _ in calls if "/sampling/test/" in w}
    assert sampled == {(f"t{t:g}_p{p:g}", s) for _, (t, p) in chosen for s in (0, 1)}
    doc = json.loads((out / "alignment.json").read_text())
    assert {"reference@t0.85,p0.9", "dpa_omf@t0.7,p0.95", "reference", "dpa_omf"} <= set(doc["models"])
    assert doc["choices"]["sharpening"]["grid"] is None
    assert doc["choices"]["sharpening"]["source"] == "an earlier grid"
    assert "reference@t0.85,p0.9" in doc["models"]["dpa_omf@t0.7,p0.95"]["vs"]
    text = (out / "alignment.md").read_text()
    assert "as an earlier grid on this validation block chose it (an earlier grid)" in text


def test_rows_saved_by_one_study_are_reported_by_another_only_when_measured_alike(tmp_path, monkeypatch):
    """A study keeps its own rows (``rows.json`` in its results folder); another study on the same scenes and
    keys reports them beside its own (``--rows_from``), with DPA-OMF compared with them too. A file from other
    seeds, or whose reference scored other scenes or keys, is refused with the reason."""
    calls = []
    monkeypatch.setattr(runs, "launch", _fake_launch(calls, tmp_path))
    monkeypatch.setitem(suites.SUITES, "fixed_sampling", suites.Suite(
        "configs/align.py:smoke", ("dpa_omf",), (0, 1), val_scenes=2, test_scenes=4,
        sampling_chosen=(("reference", (0.85, 0.9)),), sampling_source="an earlier grid"))
    first = tmp_path / "a" / "results"
    assert cli.main(["--suite=fixed_sampling", f"--workdir={tmp_path / 'a'}", f"--results_dir={first}"]) == 0
    rows = json.loads((first / results.ROWS_FILE).read_text())
    assert rows["names"] == ["dpa_omf", "reference@t0.85,p0.9"] and rows["seeds"] == [0, 1]
    base = ["--config=configs/align.py:smoke", "--methods=dpa_omf,ntp", "--val_scenes=2", "--test_scenes=4"]
    out = tmp_path / "b" / "results"
    assert cli.main([*base, "--seeds=0,1", f"--workdir={tmp_path / 'b'}", f"--results_dir={out}",
                     f"--rows_from={first}"]) == 0
    doc = json.loads((out / "alignment.json").read_text())
    assert {"ntp", "reference@t0.85,p0.9"} <= set(doc["models"])
    assert doc["rows_from"] == [{"source": str(first / results.ROWS_FILE), "models": ["reference@t0.85,p0.9"]}]
    assert set(doc["models"]["dpa_omf"]["vs"]) == {"ntp", "reference@t0.85,p0.9"}
    a = json.loads((first / "alignment.json").read_text())["models"]["reference@t0.85,p0.9"]
    assert doc["models"]["reference@t0.85,p0.9"]["composite"] == a["composite"]
    with pytest.raises(ValueError, match="no rows for seeds"):
        cli.main([*base, "--seeds=0,2", f"--workdir={tmp_path / 'c'}", f"--rows_from={first}"])
    rows["per_scene"]["1"]["reference"][3] += 1e-3  # another reference, scenes or keys
    (tmp_path / "other.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"seed 1: the reference.s per-scene composites differ by up to 0\.001"):
        cli.main([*base, "--seeds=0,1", f"--workdir={tmp_path / 'b'}", f"--rows_from={tmp_path / 'other.json'}"])


def test_the_study_lists_no_methods_of_its_own():
    """A new alignment method is one entry in align.METHODS: the study's choices are
    exactly those, and every method a suite runs is one of them."""
    assert tuple(align.METHODS) == suites.ALL_METHODS
    for suite in suites.SUITES.values():
        assert set(suite.methods) <= set(suites.ALL_METHODS)
    assert set(suites.DEFAULT_METHODS) <= set(suites.ALL_METHODS)


def test_a_test_arm_reuses_the_curation_of_a_lever_with_the_same_curate_overrides(tmp_path, monkeypatch):
    """The data-scale lever (validation) and the data table's arm (test) share one preference dataset: the arm
    links the lever's finished curation instead of curating again; its later seeds link its first seed's."""
    calls = []
    monkeypatch.setattr(runs, "launch", _fake_launch(calls, tmp_path))
    shared, lever = tmp_path / "seed_0", tmp_path / "levers" / "data_4x"
    for d in (shared, lever):
        for stage in runs.SHARED_STAGES:
            (d / stage).mkdir(parents=True)
    (lever / "curate" / "summary.json").write_text("{}")
    a = suites.scale_arms(0.08, (4,))[0]
    b = next(x for x in suites.lever_arms(0.08) if x.group_name == "data_scale")
    assert a.curates and a.curate_overrides == b.curate_overrides and a.table != b.table
    rows = runs.run_arm(a, lambda s: tmp_path / "arms" / a.name / f"seed_{s}", shared, [0, 1], "configs/align.py",
                        [], lambda s: shared, curate_from=lever)
    assert set(rows) == {0, 1}
    first, second = (tmp_path / "arms" / a.name / f"seed_{s}" / "curate" for s in (0, 1))
    assert first.is_symlink() and first.resolve() == (lever / "curate").resolve()
    assert second.is_symlink() and second.resolve() == first.resolve()
    # without a finished curation to reuse, the arm curates its own (nothing linked)
    other = runs.run_arm(a, lambda s: tmp_path / "own" / f"seed_{s}", shared, [0], "configs/align.py", [],
                         lambda s: shared, curate_from=tmp_path / "missing")
    assert other and not (tmp_path / "own" / "seed_0" / "curate").is_symlink()

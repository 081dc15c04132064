"""``python -m dpa_omf.study``: the argument parsing and the order of the study's steps (the package docstring)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import resource
import sys
import time

from dpa_omf import atomic
from dpa_omf.jobs import align, evaluate
from dpa_omf.tools import post_selection, study
from dpa_omf.tools.study import figures, results, runs, suites, tables


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one study command runs (from the flags and the suite)."""

    root: pathlib.Path
    shared: pathlib.Path
    shared_given: bool
    config: str
    seeds: list[int]
    methods: list[str]
    lrs: list[float]
    extra: list[str]
    val_flags: list[str]
    test_flags: list[str]
    suite: suites.Suite | None
    results_dir: pathlib.Path
    name: str
    rows_from: tuple[pathlib.Path, ...] = ()

    def arms(self, *tables_: str) -> list[suites.Arm]:
        arms = list(self.suite.arms) if self.suite else []
        return [a for a in arms if a.table in tables_]

    @property
    def sampling(self) -> tuple[tuple[float, float], ...]:
        return self.suite.sampling if self.suite else ()


def parse(argv: list[str] | None) -> Plan:
    p = argparse.ArgumentParser(prog="python -m dpa_omf.study", description=study.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(suites.DEFAULT_METHODS))
    p.add_argument("--shared_from", default=None, help="workdir whose data / pretrain / curate stages are reused")
    p.add_argument("--config", default="configs/align.py")
    p.add_argument("--lrs", default="", help="learning rates swept per method on the validation block ('': none)")
    p.add_argument("--val_scenes", type=int, default=0, help="validation block size (needed with --lrs)")
    p.add_argument("--test_scenes", type=int, default=0, help="test block size (0: evaluate.num_scenes from scene 0)")
    p.add_argument("--suite", default="", choices=["", *suites.SUITES], help="a preset (package docstring); "
                   "--seeds still applies when given")
    p.add_argument("--arm", action="append", default=[], help="a lever arm, [GROUP/]NAME:key=value[;key=value] "
                   "(keys under config.), chosen on validation; repeat for several")
    p.add_argument("--results_dir", default="", help="where alignment.json / .md and their figures go "
                   "(default: the workdir; the published ones: docs/results)")
    p.add_argument("--rows_from", action="append", default=[], help="another study's rows.json (or the results "
                   "folder holding it): its models this study lacks are reported beside these, after checking that "
                   "both scored the same scenes with the same keys; repeat for several")
    args, extra = p.parse_known_args(argv)
    suite = suites.SUITES.get(args.suite)
    extra = suites.apply_suite(suite, args, [e for e in extra if e != "--"],
                               argv if argv is not None else sys.argv[1:])
    if args.arm:
        suite = dataclasses.replace(suite or suites.Suite(args.config, (), ()),
                                    arms=(*(suite.arms if suite else ()), *map(suites.parse_arm, args.arm)))
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    # DPA-OMF builds the shared stages, and the arms, levers and sampling rows are compared with it
    if "dpa_omf" not in methods and (not args.shared_from or (suite and (suite.arms or suite.sampling))):
        methods.insert(0, "dpa_omf")
    lrs = [float(x) for x in args.lrs.split(",") if x]
    chooses = lrs or (suite and (suite.sampling or any(a.table == "levers" for a in suite.arms)))
    if chooses and (args.val_scenes < 1 or args.test_scenes < 1):
        raise SystemExit("study: --lrs, levers and sampling choices need --val_scenes and --test_scenes "
                         "(the validation and test blocks)")
    root = pathlib.Path(args.workdir)
    val_flags, test_flags = runs.blocks(args.val_scenes, args.test_scenes) if args.test_scenes else ([], [])
    return Plan(root, pathlib.Path(args.shared_from) if args.shared_from else root / f"seed_{seeds[0]}",
                bool(args.shared_from), args.config, seeds, methods, lrs, extra, val_flags, test_flags, suite,
                pathlib.Path(args.results_dir) if args.results_dir else root, args.suite,
                tuple(pathlib.Path(r) for r in args.rows_from))


def lever_curation(plan: Plan) -> dict[tuple[str, ...], pathlib.Path]:
    """The lever folders that curate their own preference data, by their ``curate.*`` overrides: an arm with the
    same overrides links that curation instead of curating again."""
    return {a.curate_overrides: plan.root / "levers" / a.name for a in plan.arms("levers") if a.curates}


def levers(plan: Plan, sw: dict | None, lr_dpa: list[str]) -> dict | None:
    """Every lever arm on the validation block (first seed); returns the record (``tables.levers_table``) with
    ``combined``: the arm of the kept levers (None when none helped or there are no levers)."""
    arms = plan.arms("levers")
    if not arms:
        return None
    s0, flags = plan.seeds[0], plan.extra + plan.val_flags + lr_dpa
    if sw:
        ref_dir = plan.root / "sweep" / f"lr_{sw['chosen']['dpa_omf']:g}"
        base = sw["val_composite"]["dpa_omf"][sw["chosen"]["dpa_omf"]]
    else:
        ref_dir = plan.root / "levers" / "base"
        base = runs.run_arm(suites.Arm("base", (), "levers"), lambda s: ref_dir, plan.shared, [s0], plan.config,
                            flags, lambda s: ref_dir)[s0]["summary"]["models"]["dpa_omf"]["composite"]
    val = {}
    for a in arms:
        r = runs.run_arm(a, lambda s, a=a: plan.root / "levers" / a.name, plan.shared, [s0], plan.config, flags,
                         lambda s: ref_dir)
        val[a.name] = r[s0]["summary"]["models"]["dpa_omf"]["composite"]
    chosen = runs.choose_levers(base, val, arms)
    both = runs.combined(chosen)
    combined_val = None
    if both is not None:  # the combined arm on validation too: its own sampling setting is chosen there
        r = runs.run_arm(both, lambda s: plan.root / "levers" / both.name, plan.shared, [s0], plan.config, flags,
                         lambda s: ref_dir, lever_curation(plan).get(both.curate_overrides))
        combined_val = r[s0]["summary"]["models"]["dpa_omf"]["composite"]
    return {"base": base, "chosen": [a.name for a in chosen], "combined": both, "combined_val_composite": combined_val,
            "arms": {a.name: {"group": a.group_name, "overrides": list(a.overrides), "val_composite": val[a.name]}
                     for a in arms}}


def sharpening(plan: Plan, lr_dpa: list[str], combined: suites.Arm | None = None) -> tuple[dict | None, dict]:
    """The sampling grid on the validation block (the first seed's reference and DPA-OMF, and DPA-OMF with the
    ``combined`` levers when there is such an arm), the best setting per model, then each model at its best setting
    on the test block, every seed. Returns the record (``tables.sampling_table``) and the test rows
    ``{name: (model in the summaries, {row: {seed: {"summary", "per_scene"}}})}``."""
    grid = plan.sampling
    fixed = dict(plan.suite.sampling_chosen) if plan.suite and not grid else {}
    if not grid and not fixed:
        return None, {}
    s0, comb = plan.seeds[0], runs.COMBINED_ROW
    # per model: (its folder for a seed and block, its overrides, the sampling folders' sub-folder)
    models = {"reference": None, "dpa_omf": (lambda s, block: plan.root / f"seed_{s}", [], "")}
    if combined is not None:
        models[comb] = (lambda s, block: plan.root / ("levers/combined" if block == "val" else
                                                      f"arms/combined/seed_{s}"), list(combined.overrides), "combined")
    if fixed:  # chosen by an earlier grid on this validation block (the suite cites where it is recorded)
        unknown = set(fixed) - set(models)
        if unknown:
            raise SystemExit(f"study: sampling choices for {sorted(unknown)}: not models of this study {list(models)}")
    val: dict[str, list[float]] = {m: [] for m in models}
    for setting in grid:
        r = runs.run_sampling(plan.root, "val", setting, s0, plan.root / f"seed_{s0}", plan.config,
                              plan.extra + plan.val_flags + lr_dpa)
        for m in ("reference", "dpa_omf"):
            val[m].append(r["summary"]["models"][m]["composite"])
        if comb in models:
            folder, overrides, sub = models[comb]
            r = runs.run_sampling(plan.root, "val", setting, s0, folder(s0, "val"), plan.config,
                                  plan.extra + plan.val_flags + lr_dpa + overrides, sub)
            val[comb].append(r["summary"]["models"]["dpa_omf"]["composite"])
    chosen = {m: tuple(fixed[m]) for m in models if m in fixed} if fixed else \
        {m: grid[max(range(len(grid)), key=lambda i, v=v: v[i])] for m, v in val.items()}
    rows: dict[str, tuple[str, dict]] = {}
    done: dict[tuple, dict] = {}  # one evaluation per (folder, setting, seed) scores the reference and a model
    for m, setting in chosen.items():
        if tuple(setting) == (1.0, 1.0):
            continue  # the plain row already is this model at its best setting
        folder, overrides, sub = models[m] or models["dpa_omf"]
        for s in plan.seeds:
            if (sub, setting, s) not in done:
                done[sub, setting, s] = runs.run_sampling(plan.root, "test", setting, s, folder(s, "test"),
                                                          plan.config, plan.extra + plan.test_flags + lr_dpa
                                                          + overrides, sub)
        model = "reference" if m == "reference" else "dpa_omf"
        rows[m] = (model, {evaluate.sampled_name(m, setting): {s: done[sub, setting, s] for s in plan.seeds}})
    if fixed:
        return {"grid": None, "chosen": chosen, "source": plan.suite.sampling_source}, rows
    return {"grid": [list(s) for s in grid], "val_composite": val, "chosen": chosen}, rows


def own_cpu_seconds() -> float:
    """CPU time (user + system) of the study process itself; its jobs are counted per job (``runs.launch``)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def record_time(root: pathlib.Path, wall0: float, cpu0: float, stopped: bool = False) -> dict:
    """Appends this study command's wall time and its own CPU time to ``DIR/time.jsonl`` (one line per command, a
    stopped one too) and returns the protocol's totals: the commands' wall time, and the CPU time of every job
    run (``runs.job_times``) plus the commands' own. (A line without ``own_cpu_s``, from a study before per-job
    times, counted its jobs in its ``cpu_s``: it is added as it is.)"""
    line = {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": round(time.time() - wall0, 1),
            "own_cpu_s": round(own_cpu_seconds() - cpu0, 1), "stopped": stopped}
    with open(root / "time.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    rows = [json.loads(x) for x in (root / "time.jsonl").read_text().splitlines() if x.strip()]
    jobs = runs.job_times(root)
    cpu = sum(r["cpu_s"] for r in jobs) + sum(r.get("own_cpu_s", r.get("cpu_s", 0.0)) for r in rows)
    return {"commands": len(rows), "job_runs": len(jobs), "wall_hours": sum(r["wall_s"] for r in rows) / 3600,
            "cpu_hours": cpu / 3600}


def main(argv: list[str] | None = None) -> int:
    wall0, cpu0 = time.time(), own_cpu_seconds()
    plan = parse(argv)
    plan.root.mkdir(parents=True, exist_ok=True)
    try:
        return run(plan, wall0, cpu0)
    except SystemExit:  # a stopped job (preempted: 75) stops the study; its time so far still counts
        record_time(plan.root, wall0, cpu0, stopped=True)
        raise


def run(plan: Plan, wall0: float, cpu0: float) -> int:
    """The study's steps in order (the package docstring); every finished job is reused on a rerun."""
    per_method, sw = {}, None
    # learning rates an earlier sweep chose (the suite says where they are recorded), when this run sweeps none
    fixed = plan.suite.rates if plan.suite and not plan.lrs else ()
    if (plan.lrs or plan.sampling or plan.arms("levers")) and not plan.shared_given:
        # the shared stages (up to curate) are built once, in the first seed's folder
        runs.launch(plan.config, plan.shared, plan.seeds[0], plan.extra + plan.test_flags + ["--config.job=curate"])
    if plan.lrs:
        sw = runs.sweep(plan.root, plan.shared, plan.seeds[0], plan.methods, plan.lrs, plan.config, plan.extra,
                        plan.val_flags)
        atomic.write_json(plan.root / "sweep.json", sw)
        per_method = {m: [runs.lr_flag(lr)] for m, lr in sw["chosen"].items()}
    elif fixed:
        per_method = {m: [runs.lr_flag(lr)] for m, lr in fixed if m in plan.methods}
    lr_dpa = per_method.get("dpa_omf", [])
    lv = levers(plan, sw, lr_dpa)
    if lv:  # the choices are written as they are made (a long study's partial results)
        atomic.write_json(plan.root / "levers.json", lv | {"combined": lv["combined"] and
                                                            dataclasses.asdict(lv["combined"])})
    per_seed, aligned, per_scene = {}, {}, {}
    for s in plan.seeds:
        seed_dir = plan.root / f"seed_{s}"
        if plan.shared_given or s != plan.seeds[0]:
            runs.link(plan.shared, seed_dir)
        per_seed[s] = runs.run_seed(s, seed_dir, plan.methods, plan.config, plan.extra + plan.test_flags, per_method)
        aligned[s] = {m: runs.read_json(seed_dir / align.folder_name(m) / "summary.json") for m in plan.methods}
        per_scene[s] = runs.per_scene(seed_dir, ["reference", *plan.methods])
    setup = {k: per_seed[plan.seeds[0]][k] for k in ("challenge", "num_scenes", "num_rollouts")}
    combined = lv["combined"] if lv else None
    test_arms = plan.arms("features", "data") + ([combined] if combined else [])
    # the controls before the analyses: the sharpening grid and its test rows, then the test arms
    sh, sampled = sharpening(plan, lr_dpa, combined)
    if sh:
        atomic.write_json(plan.root / "sharpening.json", sh)
    curated = lever_curation(plan)
    arm_rows = {f"dpa_omf[{a.name}]": runs.run_arm(
        a, lambda s, a=a: plan.root / "arms" / a.name / f"seed_{s}", plan.shared, plan.seeds, plan.config,
        plan.extra + plan.test_flags + lr_dpa, lambda s: plan.root / f"seed_{s}", curated.get(a.curate_overrides))
        for a in test_arms}
    names = results.merge(per_seed, aligned, per_scene, arm_rows, "dpa_omf")
    for m, (model, rows) in sampled.items():
        names += results.merge(per_seed, aligned, per_scene, rows, model,
                               align_of=m if m != "reference" else None)
    scenes = per_scene if all(per_scene.values()) else None
    saved = results.saved_rows(per_seed, aligned, scenes, plan.methods + names, setup) if scenes else None
    if plan.rows_from and saved is None:
        raise SystemExit("study: --rows_from: this study has no per-scene composites to check other rows with")
    rows_from = []
    for path in plan.rows_from:
        path = path / results.ROWS_FILE if path.is_dir() else path
        added = results.add_saved_rows(per_seed, aligned, scenes, runs.read_json(path), setup, str(path))
        rows_from.append({"source": str(path), "models": added})
        names += added
    result = results.aggregate(per_seed, aligned, plan.methods + names, scenes)
    rates = {"chosen": dict(fixed), "source": plan.suite.rates_source} if fixed else None
    result |= {"setup": setup, "methods": plan.methods, "suite": plan.name or None, "sweep": sw, "rates": rates,
               "arms": [dataclasses.asdict(a) for a in test_arms], "sharpening": sh,
               "levers": lv and (lv | {"combined": lv["combined"] and dataclasses.asdict(lv["combined"])}),
               "rows_from": rows_from}
    if plan.suite and plan.suite.post_selection:
        result["post_selection"] = runs.post_selection(plan.shared, plan.root / "post_selection",
                                                       *plan.suite.post_selection, plan.config.partition(":")[2])
    result["time"] = record_time(plan.root, wall0, cpu0)
    write(plan, result, test_arms, saved)
    return 0


def write(plan: Plan, result: dict, test_arms: list[suites.Arm], saved: dict | None = None) -> None:
    """The study's outputs: ``DIR/study.json``, ``DIR/report.md`` and its figures; ``alignment.json`` / ``.md``
    and their figures in the results folder."""
    root, seeds, methods = plan.root, plan.seeds, plan.methods
    curves = {}
    for m in methods:
        a = runs.read_json(root / f"seed_{seeds[0]}" / align.folder_name(m) / "summary.json")
        if align.METHODS[m].prepare is not None and a.get("rollouts_sampled") and a.get("steps"):
            curves[m] = figures.training_curve([root / f"seed_{s}" for s in seeds], m,
                                               a["rollouts_sampled"] / a["steps"])
    result["training_curves"] = curves
    figures.realism_vs_rollouts(result, curves, root / "realism_vs_rollouts.png")
    figures.nll_and_kl_figure(result, [root / f"seed_{s}" for s in seeds],
                              [n for n in result["models"] if n != "reference" and "@" not in n],
                              root / "nll_and_kl.png")
    atomic.write_json(root / "study.json", result)
    text = tables.markdown(result, result["setup"])
    for key, fn in (("sweep", tables.sweep_table), ("levers", tables.levers_table),
                    ("sharpening", tables.sampling_table)):
        if result.get(key):
            text += "\n".join(fn(result[key])) + "\n"
    if plan.suite:
        text += "\n".join(tables.table3(result)) + "\n"
        text += "\n".join(tables.arms_table(result, test_arms, "features", "Table 2: feature ablation (DPA-OMF on "
                                            "pairs ranked with a subset of the features).", "all five")) + "\n"
        text += "\n".join(tables.arms_table(result, test_arms, "data", "Fig. 7: preference-data scaling (rankings "
                                            "per training scene relative to the main job's; realism and KL).",
                                            "1x")) + "\n"
    if result.get("post_selection"):
        text += ("\n" + post_selection.markdown(result["post_selection"])
                 + "\n![post-selection](post_selection/post_selection.png)\n")
    t = result["time"]
    text += (f"\nTime: {t['wall_hours']:.2f} h wall, {t['cpu_hours']:.2f} h CPU (the study and its jobs) over "
             f"{t['commands']} study command(s) and {t['job_runs']} job runs (DIR/time.jsonl, "
             f"DIR/**/{runs.JOB_TIMES}).\n")
    atomic.write_text(root / "report.md", text)
    out = plan.results_dir
    out.mkdir(parents=True, exist_ok=True)
    if saved is not None:  # this study's own rows, for a later study to report beside its own (--rows_from)
        atomic.write_json(out / results.ROWS_FILE, saved)
    doc = results.alignment_json(result)
    atomic.write_json(out / "alignment.json", doc)
    atomic.write_text(out / "alignment.md", tables.alignment_markdown(doc, result))
    figures.realism_vs_kl(result, out / "realism_vs_kl.png")
    scales = {f"dpa_omf[{a.name}]": float(a.name.removeprefix("data_").removesuffix("x"))
              for a in test_arms if a.table == "data" and a.name.startswith("data_")}
    figures.gain_vs_data_scale(result, scales, out / "gain_vs_data_scale.png")
    print(text)

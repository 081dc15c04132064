"""The study's jobs: each a ``python -m dpa_omf.launch`` subprocess in its own workdir (the package docstring).

Workdirs under the study's ``DIR``: ``seed_<s>`` (every method, test block), ``sweep/lr_<lr>`` (every method,
validation block, first seed), ``arms/<arm>/seed_<s>`` (an arm, test block), ``levers/<arm>`` (a lever, validation
block, first seed), ``sampling/<block>/t<T>_p<P>/seed_<s>`` (the reference and DPA-OMF sampled at temperature T,
top-p P). Shared stages are symlinked, never rebuilt: ``data``, ``prepare`` and ``pretrain`` everywhere;
``curate`` unless the arm curates its own; ``align`` in a sampling folder (the aligned model, re-scored at another
sampling setting).
Every launch passes ``align.seed = evaluate.seed = s``: every model of a seed, in every folder, is scored with the
same rollout keys on the same scenes. Finished stages and cached evaluations are reused, so a stopped study
resumes; a preempted job stops the study with its exit code (75: run the same command again).
"""

from __future__ import annotations

import json
import pathlib
import resource
import shutil
import subprocess
import sys
import time

from dpa_omf.jobs import align
from dpa_omf.tools.study import suites
from dpa_omf.train import checkpointing

SHARED_STAGES = ("data", "prepare", "pretrain", "curate")
BEFORE_CURATE = SHARED_STAGES[:-1]  # what an arm with its own preference data shares
COMBINED_ROW = f"dpa_omf[{suites.COMBINED}]"  # DPA-OMF with the levers kept on validation
JOB_TIMES = "study_job_times.jsonl"  # in each job's workdir: one line per run of a job (``launch``)


def log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def children_cpu_seconds() -> float:
    """CPU time (user + system) of this process's finished child processes."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def launch(config: str, workdir: pathlib.Path, seed: int, extra: list[str]) -> None:
    """One job of the launcher in ``workdir`` with ``align.seed = evaluate.seed = seed``; stops the study when the
    job does not finish (its exit code). Its wall and CPU time go to ``workdir/JOB_TIMES`` as it ends (one line
    per run of a job, a reused or stopped one too), so the protocol's cost adds up however often it was resumed."""
    cmd = [sys.executable, "-m", "dpa_omf.launch", f"--config={config}", f"--workdir={workdir}",
           f"--config.align.seed={seed}", f"--config.evaluate.seed={seed}",
           "--config.evaluate.sampled=",  # the study samples in folders of its own (``run_sampling``)
           *extra]
    log(" ".join(cmd[1:]))
    t0, cpu0, code = time.time(), children_cpu_seconds(), None
    try:
        code = subprocess.run(cmd).returncode
    finally:
        workdir.mkdir(parents=True, exist_ok=True)
        with open(workdir / JOB_TIMES, "a") as f:
            f.write(json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "args": cmd[3:], "exit_code": code, "wall_s": round(time.time() - t0, 1),
                                "cpu_s": round(children_cpu_seconds() - cpu0, 1)}) + "\n")
    if code:
        log("the job was preempted, its progress saved: run the same study command again to resume"
            if code == checkpointing.EXIT_PREEMPTED else f"the job failed with exit code {code} (output above)")
        raise SystemExit(code)
    log(f"done in {time.time() - t0:.0f} s")


def job_times(root: pathlib.Path) -> list[dict]:
    """Every job run's time line under the study's ``root`` (``launch``)."""
    rows = []
    for path in sorted(root.rglob(JOB_TIMES)):
        rows += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return rows


def link(src: pathlib.Path, dst: pathlib.Path, stages=SHARED_STAGES) -> None:
    """Symlinks ``src``'s finished ``stages`` into ``dst`` (those it lacks)."""
    dst.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        target = dst / stage
        if not target.exists():
            if not (src / stage).exists():
                raise FileNotFoundError(f"study: {src / stage} is missing (run the main job there first)")
            target.symlink_to((src / stage).resolve(), target_is_directory=True)


def read_json(path: pathlib.Path) -> dict:
    with open(path) as f:
        return json.load(f)


def with_variant(config: str, method: str) -> str:
    """``configs/align.py[:variants]`` with the method's variant added (DPA-OMF is the default: none)."""
    if method == "dpa_omf":
        return config
    return f"{config},{method}" if ":" in config else f"{config}:{method}"


def lr_flag(lr: float) -> str:
    return f"--config.align.optim.learning_rate={lr!r}"


def blocks(val_scenes: int, test_scenes: int) -> tuple[list[str], list[str]]:
    """The evaluation overrides of the validation block (scenes ``test_scenes ..``) and of the test block
    (scenes ``0 .. test_scenes - 1``)."""
    val = [f"--config.evaluate.first_scene={test_scenes}", f"--config.evaluate.num_scenes={val_scenes}"]
    test = ["--config.evaluate.first_scene=0", f"--config.evaluate.num_scenes={test_scenes}"]
    return val, test


def sampling_flags(setting: tuple[float, float]) -> list[str]:
    t, p = setting
    return [f"--config.evaluate.temperature={float(t)!r}", f"--config.evaluate.top_p={float(p)!r}"]


def per_scene(seed_dir: pathlib.Path, names: list[str]) -> dict[str, list[float]]:
    """The per-scene composites of ``names`` in a workdir's evaluation ({} when one is missing)."""
    out = {}
    for n in names:
        path = seed_dir / "evaluate" / "models" / f"{n}.json"
        out[n] = read_json(path)["composite_per_scene"] if path.exists() else None
    return out if all(v is not None for v in out.values()) else {}


def run_seed(seed: int, seed_dir: pathlib.Path, methods: list[str], config: str, extra: list[str],
             per_method: dict[str, list[str]] | None = None) -> dict:
    """Aligns and evaluates every method for one seed; returns the evaluate summary (every model).

    ``per_method[m]``: overrides for method m only (its chosen learning rate)."""
    for m in methods:
        launch(with_variant(config, m), seed_dir, seed, extra + (per_method or {}).get(m, []))
    summary = read_json(seed_dir / "evaluate" / "summary.json")
    missing = [m for m in ["reference", *methods] if m not in summary["models"]]
    if missing:
        raise RuntimeError(f"study: {seed_dir / 'evaluate'} does not cover {missing}")
    return summary


def choose_learning_rates(val_composite: dict[str, dict[float, float]]) -> dict[str, float]:
    """Per method, the learning rate of the best validation composite (ties: the smaller rate)."""
    return {m: max(sorted(by_lr), key=lambda lr: by_lr[lr]) for m, by_lr in val_composite.items()}


def sweep(root: pathlib.Path, shared: pathlib.Path, seed: int, methods: list[str], lrs: list[float], config: str,
          extra: list[str], val_flags: list[str]) -> dict:
    """Aligns every method at every learning rate and evaluates it on the validation block.

    Returns ``{"val_composite": {method: {lr: composite}}, "reference_val_composite", "chosen": {method: lr}}``.
    """
    val: dict[str, dict[float, float]] = {m: {} for m in methods}
    ref = None
    for lr in lrs:
        d = root / "sweep" / f"lr_{lr:g}"
        link(shared, d)
        summary = run_seed(seed, d, methods, config, extra + val_flags + [lr_flag(lr)])
        for m in methods:
            val[m][lr] = summary["models"][m]["composite"]
        ref = summary["models"]["reference"]["composite"]
    return {"val_composite": val, "reference_val_composite": ref, "chosen": choose_learning_rates(val)}


def run_arm(arm: suites.Arm, folder, shared: pathlib.Path, seeds: list[int], config: str, extra: list[str],
            reference_from, curate_from: pathlib.Path | None = None) -> dict[int, dict]:
    """DPA-OMF with an arm's overrides, every seed, in ``folder(seed)``; returns per seed ``{"summary", "align",
    "per_scene"}`` (the arm's evaluate and align summaries, ``{"dpa_omf": per-scene composites}``).

    An arm that curates builds its preference data in its first seed's folder (the others link it); the rest link
    the shared curation. ``reference_from(seed)``: a workdir whose reference evaluation (same checkpoint, scenes
    and keys) is copied in, so the reference is scored once (the evaluate job checks its fingerprint and re-scores
    it only if anything differs). ``curate_from``: a workdir whose finished curation has the arm's preference data
    (another arm with the same ``curate.*`` overrides), linked instead of curating again."""
    out = {}
    for s in seeds:
        d = folder(s)
        link(shared, d, BEFORE_CURATE if arm.curates else SHARED_STAGES)
        if arm.curates and s != seeds[0]:
            link(folder(seeds[0]), d, ("curate",))
        elif arm.curates and curate_from is not None and (curate_from / "curate" / "summary.json").exists():
            link(curate_from, d, ("curate",))
        ref = reference_from(s) / "evaluate" / "models" / "reference.json"
        if ref.exists() and not (d / "evaluate" / "models" / "reference.json").exists():
            (d / "evaluate" / "models").mkdir(parents=True, exist_ok=True)
            shutil.copy(ref, d / "evaluate" / "models" / "reference.json")
        summary = run_seed(s, d, ["dpa_omf"], config, extra + list(arm.overrides))
        out[s] = {"summary": summary, "align": read_json(d / "align" / "summary.json"),
                  "per_scene": per_scene(d, ["dpa_omf"])}
    return out


def choose_levers(base: float, val: dict[str, float], arms: list[suites.Arm]) -> list[suites.Arm]:
    """Per group, the arm with the best validation composite if it beats ``base`` (DPA-OMF without levers)."""
    best: dict[str, suites.Arm] = {}
    for a in arms:
        g = a.group_name
        if val[a.name] > base and (g not in best or val[a.name] > val[best[g].name]):
            best[g] = a
    return [a for a in arms if best.get(a.group_name) is a]


def combined(chosen: list[suites.Arm]) -> suites.Arm | None:
    """One arm with the overrides of every chosen lever (None when none helped)."""
    if not chosen:
        return None
    return suites.Arm(suites.COMBINED, tuple(o for a in chosen for o in a.overrides), "levers")


def run_sampling(root: pathlib.Path, block: str, setting: tuple[float, float], seed: int, seed_dir: pathlib.Path,
                 config: str, extra: list[str], sub: str = "") -> dict:
    """The reference and DPA-OMF of ``seed_dir`` (its finished alignment, linked) scored at a sampling ``setting``
    (temperature, top-p) with the seed's rollout keys; ``extra`` holds the block and DPA-OMF's own overrides (its
    alignment's fingerprint must match). ``sub``: a DPA-OMF variant's sub-folder (``combined``), whose reference
    row is copied from the plain folder of the same setting when that one is scored. Returns ``{"summary",
    "per_scene"}``."""
    plain = root / "sampling" / block / f"t{setting[0]:g}_p{setting[1]:g}" / f"seed_{seed}"
    d = root / "sampling" / block / sub / f"t{setting[0]:g}_p{setting[1]:g}" / f"seed_{seed}" if sub else plain
    link(seed_dir, d, (*SHARED_STAGES, align.folder_name("dpa_omf")))
    ref = plain / "evaluate" / "models" / "reference.json"
    if sub and ref.exists() and not (d / "evaluate" / "models" / "reference.json").exists():
        (d / "evaluate" / "models").mkdir(parents=True, exist_ok=True)
        shutil.copy(ref, d / "evaluate" / "models" / "reference.json")
    summary = run_seed(seed, d, ["dpa_omf"], config, extra + sampling_flags(setting))
    return {"summary": summary, "per_scene": per_scene(d, ["reference", "dpa_omf"])}


def post_selection(shared: pathlib.Path, out: pathlib.Path, scenes: int, group: int, variant: str) -> dict:
    """The post-selection analysis of the shared curation (a subprocess, once; its JSON after)."""
    if not (out / "post_selection.json").exists():
        cmd = [sys.executable, "-m", "dpa_omf.tools.post_selection", f"--workdir={shared}", f"--out={out}",
               f"--scenes={scenes}", f"--group={group}", f"--variant={variant}"]
        log(" ".join(cmd[1:]))
        subprocess.run(cmd, check=True)
    return read_json(out / "post_selection.json")

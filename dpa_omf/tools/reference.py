"""The reference model's learning curve and the packaged reference (dpa_omf/assets/reference).

  python -m dpa_omf.tools.reference curve --workdir=RUN [--steps=125,250,500,...] [--out=DIR]
  python -m dpa_omf.tools.reference package --workdir=RUN --step=N

RUN is a pretraining workdir made by ``configs/pretrain.py:long`` (every 125-step
checkpoint kept). ``curve`` evaluates each kept checkpoint with the main job's
default evaluation (the same held-out scenes and rollout keys as
``configs/align.py``: 32 scenes x 32 rollouts, WOSAC 2024), reads the held-out
NLL and token accuracy logged at that step, and writes ``curve.json``,
``curve.md`` and ``curve.png`` (evaluations are cached per step in
``RUN/curve/``, so it resumes). ``package`` copies the params of step N into
the package as a params-only orbax checkpoint and writes ``manifest.json``:
steps, held-out NLL, realism (composite, buckets, collision and off-road
rates), the config fingerprint it is compatible with, the data seeds and the
command that reproduces it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import shutil
import sys

import jax
import matplotlib
import ml_collections

from dpa_omf import atomic
from dpa_omf.configs import align as align_config
from dpa_omf.configs import pretrain as pretrain_config
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import data as data_job
from dpa_omf.jobs import evaluate, pretrain, realism_eval
from dpa_omf.jobs import workdir as wd
from dpa_omf.metrics import names
from dpa_omf.model import motion_lm as mlm
from dpa_omf.train import checkpointing, sharding, stage_log

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt

COMMAND = "python -m dpa_omf.launch --config=configs/pretrain.py:long --workdir=RUN"


def _eval_config() -> ml_collections.ConfigDict:
    """The main job's default evaluation (its held-out scenes, rollouts and keys)."""
    return align_config.get_config()


def _ckpt_dir(run: pathlib.Path) -> pathlib.Path:
    return wd.stage_dir(run, pretrain.STAGE) / "checkpoints"


def heldout_at(run: pathlib.Path) -> dict[int, dict]:
    """step -> the held-out figures the pretraining loop logged at that step."""
    out = {}
    for r in stage_log.read_metrics(wd.stage_dir(run, pretrain.STAGE) / stage_log.METRICS_FILE):
        if "eval_nll" in r:
            out.setdefault(int(r["step"]), {}).update(heldout_nll=r["eval_nll"],
                                                      heldout_accuracy=r.get("eval_accuracy"))
        if "nll" in r:
            out.setdefault(int(r["step"]), {})["train_nll"] = r["nll"]
    return out


def realism_at(run: pathlib.Path, step: int) -> dict:
    """The default evaluation of the checkpoint of ``step`` (cached in RUN/curve/step_<k>.json)."""
    cache = run / "curve" / f"step_{step}.json"
    cached = wd.read_json(cache)
    if cached is not None:
        return cached
    c = _eval_config()
    mesh = sharding.make_mesh(devices=jax.local_devices())
    params = checkpointing.restore_params(_ckpt_dir(run), pretrain.params_target(c, mesh), step)
    scenes, sources = evaluate.held_out_sources(c, str(run))
    evaluator = realism_eval.Evaluator(mlm.MotionLM(cfg_lib.model(c)), cfg_lib.evaluate(c), mesh)
    rows = []
    for group in evaluate.chunks(len(sources), c.evaluate.scenes_per_chunk):  # the evaluate job's chunks
        rows += evaluator.scene_metrics(params, [scenes.read(sources[i]) for i in group], group)
    m = realism_eval.mean_metrics(rows)
    out = names.ours(m, names.summary())
    out["num_scenes"] = len(sources)
    atomic.write_json(cache, out)
    return out


def curve(run: pathlib.Path, steps: list[int], out: pathlib.Path) -> list[dict]:
    kept = checkpointing.saved_steps(_ckpt_dir(run))
    held = heldout_at(run)
    rows = []
    for step in steps:
        if step not in kept:
            print(f"step {step}: no checkpoint kept, skipped", file=sys.stderr)
            continue
        row = {"step": step, **held.get(step, {}), **realism_at(run, step)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for prev, row in itertools.pairwise(rows):
        if prev.get("heldout_nll") and row.get("heldout_nll"):
            doublings = math.log2(row["step"] / prev["step"])
            row["nll_gain_per_doubling"] = (prev["heldout_nll"] - row["heldout_nll"]) / prev["heldout_nll"] / doublings
    atomic.write_json(out / "curve.json", rows)
    atomic.write_text(out / "curve.md", _table(rows))
    _plot(rows, out / "curve.png")
    return rows


def _table(rows: list[dict]) -> str:
    cols = ("heldout_nll", "heldout_accuracy", "train_nll", *names.report(), "nll_gain_per_doubling")
    lines = ["| step | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r.get(k), (int, float)) else "" for k in cols]
        lines.append(f"| {r['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: pathlib.Path) -> None:
    steps = [r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(steps, [r.get("heldout_nll") for r in rows], "o-", label="held-out NLL / token")
    a.plot(steps, [r.get("train_nll") for r in rows], "s--", label="train NLL / token (logged batch)")
    a.set_xscale("log", base=2)
    a.set_xlabel("pretraining step")
    a.legend()
    for key in ("composite", "collision_rate", "offroad_rate"):
        b.plot(steps, [r[key] for r in rows], "o-", label=key)
    b.set_xscale("log", base=2)
    b.set_xlabel("pretraining step")
    b.set_title("default evaluation (32 scenes x 32 rollouts, WOSAC 2024)")
    b.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def package(run: pathlib.Path, step: int) -> dict:
    """Ships the params of ``step`` in dpa_omf/assets/reference with their manifest."""
    default = _eval_config()
    long = pretrain_config.get_config("long")
    if pretrain.compatibility(long) != pretrain.compatibility(default):
        raise ValueError("the :long run's data slots / tokenizer / model differ from the default config's")
    params = checkpointing.restore_params(_ckpt_dir(run), pretrain.abstract_params(default), step)
    shutil.rmtree(pretrain.PACKAGED, ignore_errors=True)
    with checkpointing.Checkpointer(pretrain.PACKAGED / "checkpoints", ("params",), keep=1, async_save=False) as ck:
        ck.save(step, {"params": jax.device_get(params)})
    held = heldout_at(run).get(step, {})
    realism = realism_at(run, step)
    manifest = {
        "steps": step,
        "heldout_nll": held.get("heldout_nll"),
        "heldout_accuracy": held.get("heldout_accuracy"),
        "realism": {k: realism[k] for k in names.report()} | {"num_scenes": realism["num_scenes"]},
        "compatibility": pretrain.compatibility(default),
        "compatibility_fingerprint": wd.digest(pretrain.compatibility(default)),
        "command": COMMAND,
        "data": {"seed": long.seed, "train_dataset_seed": data_job.dataset_seed(long, "train"),
                 "valid_dataset_seed": data_job.dataset_seed(long, "valid"),
                 "num_train": long.data.synthetic.num_train, "num_valid": long.data.synthetic.num_valid},
        "pretrain": {k: long.pretrain[k] for k in ("batch_size", "num_steps")} | {
            "optim": long.pretrain.optim.to_dict()},
        "param_count": mlm.param_count(params),
        "made": datetime.date.today().isoformat(),
    }
    atomic.write_json(pretrain.PACKAGED / "manifest.json", manifest)
    print(json.dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dpa_omf.tools.reference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("curve", "package"))
    p.add_argument("--workdir", required=True, help="the :long pretraining workdir")
    p.add_argument("--steps", default="125,250,500,750,1000,1200")
    p.add_argument("--step", type=int, default=None, help="package: the step to ship (default: the latest)")
    p.add_argument("--out", default=None, help="curve: output folder (default: RUN/curve)")
    args = p.parse_args(argv)
    run = pathlib.Path(args.workdir)
    if args.what == "curve":
        curve(run, [int(s) for s in args.steps.split(",")], pathlib.Path(args.out or run / "curve"))
    else:
        package(run, args.step or checkpointing.saved_steps(_ckpt_dir(run))[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())

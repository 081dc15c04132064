"""Post-selection (the paper's Fig. 3): is the group of rollouts closest to the expert by OT more realistic
than the group closest by ADE?

    python -m dpa_omf.tools.post_selection --workdir=WORKDIR --out=DIR [--variant=V] [--scenes=32] [--group=8]

``--variant``: the ``configs/align.py`` variant the workdir was made with (its data, tokenizer and
realism settings).

From the curated rankings of ``WORKDIR/curate`` (the same R = 64 rollouts of
each scene, ranked by both distances), for the first ``--scenes`` curated
scenes: the rollouts' states are re-integrated from their tokens (the
sampler's own kinematics, so they are the rollouts that were ranked), sorted
by OT distance and, separately, by ADE, and cut into R / k groups of k
consecutive ranks (group 1: the k closest). Each group is scored with the
WOSAC metric (``metrics.wosac.evaluate_scene``, the configured challenge) as
if it were a model's k rollouts of that scene. Writes ``DIR/post_selection.json``
(per ranking and group: the mean composite, collision and off-road rates, the
group's mean OT and ADE distances, and 95% bootstrap intervals of the
composite over scenes; the paired difference OT - ADE of the closest group)
and ``DIR/post_selection.png`` (composite against the group's rank and
against its mean ADE, both rankings).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

from dpa_omf import atomic
from dpa_omf import datatypes as dt
from dpa_omf.configs import align as align_config
from dpa_omf.io import reader
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import curate
from dpa_omf.metrics import names, stats, wosac
from dpa_omf.model import tokenizer as tok

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RANKINGS = {"ot": "ot_distance", "ade": "ade_distance"}


def rollout_xyzh(scenario: dt.Scenario, tokens: np.ndarray, tcfg: tok.TokenizerConfig) -> np.ndarray:
    """``[R, A, 80, 4]`` (x, y, z held at the current step, heading) of rollouts ``tokens [R, A, S]``."""
    s0 = tok.state_at(scenario.agents, dt.CURRENT_INDEX)
    r = tokens.shape[0]
    s0 = jax.tree.map(lambda v: jnp.broadcast_to(v, (r,) + v.shape), s0)
    states = tok.integrate(s0, jnp.asarray(tokens, jnp.int32), tcfg)
    z = jnp.broadcast_to(jnp.asarray(scenario.agents.z)[None, :, dt.CURRENT_INDEX, None], states.x.shape)
    return np.asarray(jnp.stack([states.x, states.y, z, states.heading], -1))


def group_scores(scenario: dt.Scenario, xyzh: np.ndarray, distance: np.ndarray, group: int,
                 realism: wosac.RealismConfig) -> list[dict]:
    """Per group of ``group`` consecutive ranks by ``distance`` (closest first): the WOSAC metrics of its
    rollouts (official names) and the indices of its rollouts."""
    order = np.argsort(distance, kind="stable")
    out = []
    for g in range(len(order) // group):
        idx = order[g * group:(g + 1) * group]
        m = wosac.evaluate_scene(scenario, xyzh[idx], realism)
        out.append({"rollouts": idx.tolist(), **m})
    return out


def analyse(config: ml_collections.ConfigDict, workdir: str, num_scenes: int, group: int) -> dict:
    shards = curate.load_shards(workdir)
    n = min(num_scenes, shards["tokens"].shape[0])
    store = reader.SceneReader([str(f) for f in shards["files"]], cfg_lib.reader(config))
    tcfg = cfg_lib.tokenizer(config)
    realism = cfg_lib.evaluate(config).realism
    r = shards["tokens"].shape[1]
    if r % group or r // group < 2:
        raise ValueError(f"post_selection: {r} rollouts per scene do not split into >= 2 groups of {group}")
    per = {k: [] for k in RANKINGS}  # ranking -> per scene -> per group (composite, collision, offroad, ot, ade)
    for i in range(n):
        src = reader.Source(store.files[int(shards["file_index"][i])], int(shards["record_index"][i]))
        scenario = store.read(src)
        xyzh = rollout_xyzh(scenario, shards["tokens"][i], tcfg)
        for name, key in RANKINGS.items():
            rows = []
            for g in group_scores(scenario, xyzh, shards[key][i], group, realism):
                idx = g["rollouts"]
                rows.append([g[names.composite()], g[names.official("collision_rate")],
                             g[names.official("offroad_rate")], float(shards["ot_distance"][i][idx].mean()),
                             float(shards["ade_distance"][i][idx].mean())])
            per[name].append(rows)
        print(f"[post_selection] scene {i + 1}/{n}", file=sys.stderr, flush=True)
    store.close()
    out = {"scenes": n, "rollouts_per_scene": r, "group": group, "challenge": config.evaluate.challenge,
           "rankings": {}}
    for name in RANKINGS:
        a = np.asarray(per[name])  # [scenes, groups, 5]
        out["rankings"][name] = [
            {"group": g + 1, "composite": float(a[:, g, 0].mean()), "composite_ci95": stats.bootstrap_ci(a[:, g, 0]),
             "collision_rate": float(a[:, g, 1].mean()), "offroad_rate": float(a[:, g, 2].mean()),
             "mean_ot_distance": float(a[:, g, 3].mean()), "mean_ade": float(a[:, g, 4].mean())}
            for g in range(a.shape[1])]
        out["rankings"][name + "_per_scene_composite"] = a[:, :, 0].tolist()
    ot_best = np.asarray(per["ot"])[:, 0, 0]
    ade_best = np.asarray(per["ade"])[:, 0, 0]
    out["closest_group_ot_minus_ade"] = stats.paired_difference(ot_best, ade_best)
    return out


def plot(result: dict, path: pathlib.Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, color in (("ot", "C0"), ("ade", "C1")):
        rows = result["rankings"][name]
        g = [r["group"] for r in rows]
        y = [r["composite"] for r in rows]
        lo = [r["composite"] - r["composite_ci95"][0] for r in rows]
        hi = [r["composite_ci95"][1] - r["composite"] for r in rows]
        axes[0].errorbar(g, y, yerr=[lo, hi], fmt="o-", color=color, capsize=3, label=f"ranked by {name.upper()}")
        axes[1].plot([r["mean_ade"] for r in rows], y, "o-", color=color, label=f"ranked by {name.upper()}")
    axes[0].set_xlabel(f"group of {result['group']} rollouts (1 = closest to the expert)")
    axes[1].set_xlabel("group's mean ADE to the expert (m)")
    for ax in axes:
        ax.set_ylabel("WOSAC composite")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Post-selection: {result['scenes']} scenes x {result['rollouts_per_scene']} rollouts "
                 "(95% CI over scenes)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    lines = [f"Post-selection ({result['scenes']} scenes, {result['rollouts_per_scene']} rollouts, groups of "
             f"{result['group']}): WOSAC composite of each group of consecutive ranks.", "",
             "| group | OT: composite [95% CI] | OT: mean ADE | ADE: composite [95% CI] | ADE: mean ADE |",
             "|---:|---:|---:|---:|---:|"]
    for o, a in zip(result["rankings"]["ot"], result["rankings"]["ade"]):
        cells = [f"{r['composite']:.4f} [{r['composite_ci95'][0]:.4f}, {r['composite_ci95'][1]:.4f}] | "
                 f"{r['mean_ade']:.2f}" for r in (o, a)]
        lines.append(f"| {o['group']} | " + " | ".join(cells) + " |")
    d = result["closest_group_ot_minus_ade"]
    lines += ["", f"Closest group, OT minus ADE (paired over scenes): {d['mean']:+.4f} [{d['lo']:+.4f}, "
              f"{d['hi']:+.4f}]."]
    return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str, out: pathlib.Path, num_scenes: int, group: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    result = analyse(config, workdir, num_scenes, group)
    atomic.write_json(out / "post_selection.json", result)
    plot(result, out / "post_selection.png")
    atomic.write_text(out / "post_selection.md", markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dpa_omf.tools.post_selection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a workdir with a finished curate stage")
    p.add_argument("--out", required=True)
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--variant", default="", help="configs/align.py variant of the workdir, e.g. smoke")
    args = p.parse_args(argv)
    config = align_config.get_config(args.variant or None)
    result = run(config, args.workdir, pathlib.Path(args.out), args.scenes, args.group)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

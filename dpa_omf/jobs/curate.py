"""The curate job: preference pairs from implicit feedback (no human labels).

For every training scene (``curate.rankings_per_example`` times the training
set, for scaling studies): sample R rollouts from the frozen reference model
on device, compute the features phi of each rollout and of the expert (logged)
future, the per-agent optimal-transport distance between their occupancy
measures, the scene distance (mean over simulated agents), rank, and take the
``num_pairs`` closest as preferred and the ``num_pairs`` farthest as
unpreferred. The ADE distance of every rollout is stored too, so the DPA-ADEF
and SFT baselines reuse the same rollouts.

Output in ``WORKDIR/curate/``: ``shard-XXXXX-of-YYYYY.npz`` (written
atomically, skipped when present, so a restarted job resumes shard by shard),
``summary.json``, ``metrics.jsonl``, and for the first scene PNGs of the
expert, the best and the worst rollouts and one agent's coupling matrix.

Shard arrays (N rankings of one shard, R rollouts, A agent slots, S token steps):
  file_index, record_index: int32 ``[N]``: the scene (``files`` lists the data files).
  scenario_id: uint8 ``[N, 16]``.
  repeat: int32 ``[N]``: which ranking of that scene (0 unless rankings_per_example > 1).
  tokens: int16 ``[N, R, A, S]`` sampled tokens.
  ot_distance, ade_distance: float32 ``[N, R]``.
  preferred, unpreferred: int32 ``[N, K]`` rollout indices (pair k = k-th closest vs k-th farthest).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dpa_omf import datatypes as dt
from dpa_omf.model import sampling as ro
from dpa_omf.jobs import stages
from dpa_omf.jobs import data as data_job
from dpa_omf.io import womd_example as womd
from dpa_omf.model import motion_lm as mlm
from dpa_omf.preference import distance as dist
from dpa_omf.preference import features as feat
from dpa_omf.preference import ranking
from dpa_omf.train import logging as stage_logging

STAGE = "curate"


@dataclasses.dataclass(frozen=True)
class CurateConfig:
    """Curation knobs (from the config's ``curate`` section)."""

    rollout: ro.RolloutConfig = ro.RolloutConfig()
    ot: dist.OTConfig = dist.OTConfig()
    features: feat.FeatureConfig = feat.FeatureConfig()
    num_pairs: int = 16
    rankings_per_example: float = 1.0
    scenes_per_shard: int = 32
    pictures: bool = True

    def __post_init__(self):
        if self.rollout.num_rollouts < 2 * self.num_pairs:
            raise ValueError(f"curate: num_rollouts={self.rollout.num_rollouts} < 2 * num_pairs={self.num_pairs}")
        if not 0 < self.rankings_per_example <= 16:
            raise ValueError(f"curate.rankings_per_example={self.rankings_per_example} must be in (0, 16]")


def curate_config(c: ml_collections.ConfigDict) -> CurateConfig:
    cc = c.curate
    return CurateConfig(
        rollout=ro.RolloutConfig(num_rollouts=cc.num_rollouts, rollout_chunk=cc.rollout_chunk,
                                 temperature=cc.temperature, top_p=cc.top_p),
        ot=dist.OTConfig(solver=cc.solver, feature_weights=tuple(cc.feature_weights),
                         rescore_window=cc.rescore_window, num_pairs=cc.num_pairs),
        features=feat.FeatureConfig(clearance_cap=cc.clearance_cap, road_distance_clip=cc.road_distance_clip),
        num_pairs=cc.num_pairs, rankings_per_example=cc.rankings_per_example,
        scenes_per_shard=cc.scenes_per_shard, pictures=cc.pictures)


@functools.partial(jax.jit, static_argnames=("model", "cfg"))
def rank_scene(model: mlm.MotionLM, params, scenario: dt.Scenario, key: jax.Array, cfg: CurateConfig) -> dict:
    """Samples, scores and ranks the rollouts of ONE scene (on device; the
    default exact OT solver runs on the host CPU through a callback).

    Returns a dict of ``tokens [R, A, S]``, ``ot_distance [R]``,
    ``ade_distance [R]``, ``preferred [K]``, ``unpreferred [K]``,
    ``per_agent [R, A]`` (OT cost per agent) and the rollouts' states
    ``x, y, heading, vel_x, vel_y [R, A, 80]`` (for pictures).
    """
    r = ro.sample(model, params, scenario, key, cfg.rollout)
    phi_r, valid_r = feat.rollout_features(scenario, r.x, r.y, r.heading, r.vel_x, r.vel_y, cfg.features)
    phi_e, valid_e = feat.expert_features(scenario, cfg.features)
    agents = scenario.agents.sim_mask
    scene_d, per_agent = dist.ot_distance(phi_r, valid_r, phi_e, valid_e, agents, cfg.ot)
    fut = slice(dt.NUM_HISTORY, dt.NUM_STEPS)
    expert_xy = jnp.stack([scenario.agents.x[:, fut], scenario.agents.y[:, fut]], -1)
    ade_valid = valid_e & agents[:, None]
    ade, _ = ranking.ade_distance(jnp.stack([r.x, r.y], -1), expert_xy, ade_valid)
    pref, unpref = ranking.rank_and_pair(scene_d, cfg.num_pairs)
    return dict(tokens=r.tokens, ot_distance=scene_d, ade_distance=ade, preferred=pref, unpreferred=unpref,
                per_agent=per_agent, x=r.x, y=r.y, heading=r.heading, vel_x=r.vel_x, vel_y=r.vel_y)


def ranking_jobs(num_scenes: int, rankings_per_example: float) -> list[tuple[int, int]]:
    """(scene index, repeat) of every ranking: a prefix of the scenes for < 1, repeats for > 1."""
    total = max(1, int(round(num_scenes * rankings_per_example)))
    return [(i % num_scenes, i // num_scenes) for i in range(total)]


def shard_name(k: int, n: int) -> str:
    return f"shard-{k:05d}-of-{n:05d}.npz"


def shard_files(workdir: str) -> list[pathlib.Path]:
    files = sorted(stages.stage_dir(workdir, STAGE).glob("shard-*-of-*.npz"))
    if not files:
        raise FileNotFoundError(f"no preference shards in {stages.stage_dir(workdir, STAGE)}")
    return files


def _atomic_npz(path: pathlib.Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def _scene_index(files: list[str]) -> list[tuple[int, int]]:
    """(file index, record index) of every scene of the training split, in file order."""
    from dpa_omf.io import tfrecord

    out = []
    for fi, path in enumerate(files):
        out.extend((fi, ri) for ri in range(len(tfrecord.index_records(path))))
    return out


def _read_scene(files: list[str], fi: int, ri: int, cache: dict) -> dt.Scenario:
    if fi not in cache:
        cache.clear()
        cache[fi] = list(womd.read_tfrecord(files[fi]))
    return cache[fi][ri]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    from dpa_omf.jobs import pretrain

    stages.ensure("pretrain", config, workdir, pretrain.run)
    cfg = curate_config(config)
    out = stages.stage_dir(workdir, STAGE)
    out.mkdir(parents=True, exist_ok=True)
    model, params = pretrain.load_params(config, workdir)
    files = data_job.split_files(config, workdir, "train")
    scenes = _scene_index(files)
    jobs = ranking_jobs(len(scenes), cfg.rankings_per_example)
    num_shards = math.ceil(len(jobs) / cfg.scenes_per_shard)
    base_key = jax.random.key(config.seed)
    logger = stage_logging.StageLogger(out, total_steps=len(jobs), initial_step=0)
    start = time.time()
    cache: dict = {}
    done_rankings = 0
    for k in range(num_shards):
        path = out / shard_name(k, num_shards)
        chunk = jobs[k * cfg.scenes_per_shard:(k + 1) * cfg.scenes_per_shard]
        if path.exists():
            logger.advance(len(chunk))
            continue
        rows = []
        for j, (si, rep) in enumerate(chunk):
            fi, ri = scenes[si]
            scenario = _read_scene(files, fi, ri, cache)
            key = jax.random.fold_in(jax.random.fold_in(base_key, si), rep)
            res = jax.device_get(rank_scene(model, params, scenario, key, cfg))
            if not np.isfinite(res["ot_distance"]).all():
                raise FloatingPointError(f"curate: non-finite OT distance for scene {files[fi]} record {ri}")
            rows.append(dict(file_index=fi, record_index=ri, scenario_id=np.asarray(scenario.scenario_id),
                             repeat=rep, **{n: res[n] for n in ("tokens", "ot_distance", "ade_distance",
                                                                 "preferred", "unpreferred")}))
            if cfg.pictures and k == 0 and j == 0:
                draw_pictures(out, scenario, res, model, params, cfg)
            logger.advance(1)
            done_rankings += 1
        stack = {n: np.stack([r[n] for r in rows]) for n in rows[0]}
        stack["tokens"] = stack["tokens"].astype(np.int16)
        _atomic_npz(path, files=np.asarray([portable_path(f, workdir) for f in files]), **stack)
        d = stack["ot_distance"]
        pref = np.take_along_axis(d, stack["preferred"], 1).mean()
        unpref = np.take_along_axis(d, stack["unpreferred"], 1).mean()
        logger.log(k + 1, {"preferred_distance": float(pref), "unpreferred_distance": float(unpref),
                           "rankings": len(rows)}, prefix="shard")
    summary = summarize(workdir, cfg)
    summary.update(seconds=time.time() - start, rankings_this_run=done_rankings,
                   config_fingerprint=stages.fingerprint(config, stages.DEPENDS_ON[STAGE]))
    logger.write_summary(summary)
    logger.close()
    logging.info("curate: %s", summary)
    return summary


def portable_path(path: str | pathlib.Path, workdir: str | pathlib.Path) -> str:
    """How a shard names a data file: relative to the workdir when it lies under
    it (synthetic data: the workdir can then be moved or read from any current
    directory), else absolute (real WOMD files)."""
    p = pathlib.Path(os.path.abspath(path))
    try:
        return str(p.relative_to(os.path.abspath(workdir)))
    except ValueError:
        return str(p)


def load_shards(workdir: str) -> dict[str, np.ndarray]:
    """Every shard concatenated along the ranking axis (``files`` from the first
    shard, resolved against the workdir)."""
    parts = [dict(np.load(p)) for p in shard_files(workdir)]
    out = {n: np.concatenate([p[n] for p in parts]) for n in parts[0] if n != "files"}
    files = [pathlib.Path(workdir) / f for f in parts[0]["files"].tolist()]  # absolute paths stay absolute
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"curate shards in {stages.stage_dir(workdir, STAGE)} name data files that do not "
                                f"exist: {missing[:3]} ({len(missing)} in all); re-run the curate stage")
    out["files"] = np.asarray([str(f) for f in files])
    return out


def summarize(workdir: str, cfg: CurateConfig) -> dict:
    s = load_shards(workdir)
    d = s["ot_distance"]
    pref = np.take_along_axis(d, s["preferred"], 1)
    unpref = np.take_along_axis(d, s["unpreferred"], 1)
    return {
        "num_examples": int(d.shape[0]),
        "num_pairs": int(s["preferred"].size),
        "num_rollouts": int(d.shape[1]),
        "preferred_mean_distance": float(pref.mean()),
        "unpreferred_mean_distance": float(unpref.mean()),
        "all_mean_distance": float(d.mean()),
        "preferred_mean_ade": float(np.take_along_axis(s["ade_distance"], s["preferred"], 1).mean()),
        "unpreferred_mean_ade": float(np.take_along_axis(s["ade_distance"], s["unpreferred"], 1).mean()),
        "ot_ade_rank_correlation": float(np.mean([_spearman(a, b) for a, b in zip(d, s["ade_distance"])])),
        "solver": cfg.ot.solver,
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def draw_pictures(out: pathlib.Path, scenario: dt.Scenario, res: dict, model, params, cfg: CurateConfig) -> None:
    """The paper's Figure 2 for one scene: expert, best and worst rollouts, one agent's coupling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dpa_omf.viz import scene as plot

    order = np.argsort(res["ot_distance"], kind="stable")
    best, worst = int(order[0]), int(order[-1])
    sim = np.asarray(scenario.agents.sim_mask)
    for name, idx in (("expert", None), ("best", best), ("worst", worst)):
        fig, ax = plt.subplots(figsize=(8, 8))
        if idx is None:
            plot.plot_scenario(ax, scenario, title="expert (logged future)")
        else:
            xy = np.stack([res["x"][idx], res["y"][idx]], -1)
            valid = np.broadcast_to(sim[None, :, None], (1,) + xy.shape[:-1])
            plot.plot_scenario(ax, scenario, rollout_xy=xy[None], rollout_valid=valid, show_future=False,
                               title=f"{name} rollout #{idx}: OT distance {res['ot_distance'][idx]:.3f}")
        fig.savefig(out / f"scene0_{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    # Coupling of the agent whose cost differs most between the best and the worst rollout.
    agent = int(np.argmax(np.where(sim, res["per_agent"][worst] - res["per_agent"][best], -np.inf)))
    phi_e, valid_e = feat.expert_features(scenario, cfg.features)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (name, idx) in zip(axes, (("best", best), ("worst", worst))):
        phi_r, valid_r = feat.rollout_features(
            scenario, *(jnp.asarray(res[k][idx:idx + 1]) for k in ("x", "y", "heading", "vel_x", "vel_y")),
            cfg.features)
        cost, plan = dist.ot_coupling(phi_r[0, agent], valid_r[0, agent], phi_e[agent], valid_e[agent], cfg.ot)
        im = ax.imshow(np.asarray(plan), cmap="magma", aspect="auto")
        ax.set_title(f"{name} rollout, agent slot {agent}: cost {float(cost):.3f}")
        ax.set_xlabel("expert step")
        ax.set_ylabel("rollout step")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.savefig(out / "scene0_coupling.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


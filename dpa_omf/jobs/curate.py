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

import math
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
from absl import logging

from dpa_omf import atomic
from dpa_omf import datatypes as dt
from dpa_omf.io import reader
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import data as data_job
from dpa_omf.jobs import pretrain
from dpa_omf.jobs import workdir as wd
from dpa_omf.preference import curation
from dpa_omf.preference import distance as dist
from dpa_omf.preference import features as feat
from dpa_omf.train import logging as stage_logging
from dpa_omf.train import sharding
from dpa_omf.viz import scene as plot

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STAGE = "curate"


def ranking_jobs(num_scenes: int, rankings_per_example: float) -> list[tuple[int, int]]:
    """(scene index, repeat) of every ranking: a prefix of the scenes for < 1, repeats for > 1."""
    total = max(1, round(num_scenes * rankings_per_example))
    return [(i % num_scenes, i // num_scenes) for i in range(total)]


def shard_name(k: int, n: int) -> str:
    return f"shard-{k:05d}-of-{n:05d}.npz"


def shard_files(workdir: str) -> list[pathlib.Path]:
    files = sorted(wd.stage_dir(workdir, STAGE).glob("shard-*-of-*.npz"))
    if not files:
        raise FileNotFoundError(f"no preference shards in {wd.stage_dir(workdir, STAGE)}")
    return files


def local_reference(config: ml_collections.ConfigDict, workdir: str):
    """The reference model and its params on this process's devices (curation runs per process)."""
    return pretrain.load_params(config, workdir, mesh=sharding.make_mesh(devices=jax.local_devices()))


def run(config: ml_collections.ConfigDict, workdir: str, fingerprint: str) -> dict:
    """Ranks every job's scene into ``WORKDIR/curate`` shards (resumable shard by shard); writes the summary."""
    cfg = cfg_lib.curation_config(config)
    out = wd.stage_dir(workdir, STAGE)
    out.mkdir(parents=True, exist_ok=True)
    model, params = local_reference(config, workdir)
    files = data_job.split_files(config, workdir, "train")
    scenes = reader.SceneReader(files, cfg_lib.reader(config))  # every scene fitted to the configured slots
    ranker = _Ranker(model, params, cfg, scenes, jax.random.key(config.seed))
    jobs = ranking_jobs(len(ranker.sources), config.curate.rankings_per_example)
    per_shard = config.curate.scenes_per_shard
    num_shards = math.ceil(len(jobs) / per_shard)
    logger = stage_logging.StageLogger(out, total_steps=len(jobs), initial_step=0)
    start, done = time.time(), 0
    for k in range(num_shards):
        path = out / shard_name(k, num_shards)
        chunk = jobs[k * per_shard:(k + 1) * per_shard]
        if path.exists():
            logger.advance(len(chunk))
            continue
        pictures = out if config.curate.pictures and k == 0 else None
        stack = ranker.rank_shard(chunk, logger, pictures)
        atomic.write_npz(path, files=np.asarray([portable_path(f, workdir) for f in files]), **stack)
        d = stack["ot_distance"]
        logger.log(k + 1, {"preferred_distance": float(np.take_along_axis(d, stack["preferred"], 1).mean()),
                           "unpreferred_distance": float(np.take_along_axis(d, stack["unpreferred"], 1).mean()),
                           "rankings": len(chunk)}, prefix="shard")
        done += len(chunk)
    summary = summarize(workdir, cfg)
    summary.update(seconds=time.time() - start, rankings_this_run=done, config_fingerprint=fingerprint)
    logger.write_summary(summary)
    logger.close()
    scenes.close()
    logging.info("curate: %s", summary)
    return summary


class _Ranker:
    """Ranks the scenes of one shard: rollout keys from the global scene index and the repeat only."""

    def __init__(self, model, params, cfg: curation.CurationConfig, scenes: reader.SceneReader,
                 base_key: jax.Array):
        self.model, self.params, self.cfg, self.scenes, self.base_key = model, params, cfg, scenes, base_key
        self.sources = scenes.sources()
        self.file_index = {f: i for i, f in enumerate(scenes.files)}

    def rank_shard(self, chunk: list[tuple[int, int]], logger, pictures: pathlib.Path | None) -> dict:
        rows = []
        for j, (si, rep) in enumerate(chunk):
            source = self.sources[si]
            scenario = self.scenes.read(source)
            key = jax.random.fold_in(jax.random.fold_in(self.base_key, si), rep)
            res = jax.device_get(curation.rank_scene(self.model, self.params, scenario, key, self.cfg))
            if not np.isfinite(res["ot_distance"]).all():
                raise FloatingPointError(f"curate: non-finite OT distance for scene {source}")
            rows.append(dict(file_index=self.file_index[source.file], record_index=source.record,
                             scenario_id=np.asarray(scenario.scenario_id),
                             repeat=rep, **{n: res[n] for n in ("tokens", "ot_distance", "ade_distance",
                                                                 "preferred", "unpreferred")}))
            if pictures is not None and j == 0:
                draw_pictures(pictures, scenario, res, self.cfg)
            logger.advance(1)
        stack = {n: np.stack([r[n] for r in rows]) for n in rows[0]}
        stack["tokens"] = stack["tokens"].astype(np.int16)
        return stack


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
        raise FileNotFoundError(f"curate shards in {wd.stage_dir(workdir, STAGE)} name data files that do not "
                                f"exist: {missing[:3]} ({len(missing)} in all); re-run the curate stage")
    out["files"] = np.asarray([str(f) for f in files])
    return out


def summarize(workdir: str, cfg: curation.CurationConfig) -> dict:
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


def draw_pictures(out: pathlib.Path, scenario: dt.Scenario, res: dict, cfg: curation.CurationConfig) -> None:
    """The paper's Figure 2 for one scene: expert, best and worst rollouts, one agent's coupling."""
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


"""The curate job: preference pairs from implicit feedback (no human labels).

For every training scene (``curate.rankings_per_example`` times the training
set, for scaling studies): sample R rollouts from the frozen reference model
on device, compute the features phi of each rollout and of the expert (logged)
future, the per-agent optimal-transport distance between their occupancy
measures, the scene distance (mean over simulated agents), rank, and take the
``curate.top_k`` closest as preferred and the ``curate.top_k`` farthest as
unpreferred. The ADE distance of every rollout is stored too, so the DPA-ADEF
and SFT baselines reuse the same rollouts.

Output in ``WORKDIR/curate/``: ``shard-XXXXX-of-YYYYY.npz`` (written
atomically, skipped when present, so a restarted job resumes shard by shard),
``summary.json``, ``metrics.jsonl``, and for the first scene PNGs of the
expert, the best and the worst rollouts and one agent's coupling matrix.

Pod scale: every process runs this job. Process p of P takes the shards
k with ``k % P == p`` (``workdir.process_share``), reads only their scenes and
writes only those shards; it ranks ``curate.scenes_per_device`` scenes per
local device per step (one jitted program, the scenes split over a mesh of
the process's devices: ``preference.curation.rank_batch`` under
``train.sharding.map_over_scenes``). Rollout keys depend on the global scene
index and the repeat only, and a device always holds the same number of
scenes, so the shards are bit-identical whatever the number of devices and
processes. SIGTERM / SIGINT: the finished rankings of the current shard are
saved (``shard-....partial.npz``), every process stops, and the job exits 75;
the restart continues from there. The summary is written once, by process 0,
after every process is done (a barrier), from all shards; it lists the shards
each process ranked in this run (``shards_this_run_by_process``).

Shard arrays (N rankings of one shard, R rollouts, A agent slots, S token steps):
  file_index, record_index: int32 ``[N]``: the scene (``files`` lists the data files).
  scenario_id: uint8 ``[N, 16]``.
  repeat: int32 ``[N]``: which ranking of that scene (0 unless rankings_per_example > 1).
  tokens: int16 ``[N, R, A, S]`` sampled tokens.
  ot_distance, ade_distance: float32 ``[N, R]``.
  preferred, unpreferred: int32 ``[N, K]`` rollout indices (pair k = k-th closest vs k-th farthest).
  ot_agent_distance: float32 ``[N, R, A]`` each agent's OT distance (0 where not counted; ot_distance is
    its mean over the counted agents); ot_agent_counted: bool ``[N, R, A]``, the counted agents.
  eval_mask: bool ``[N, A]`` the simulated agents the realism metric evaluates (WOSAC's eval agents).
Shards written before per-agent credit lack the last three (``align.credit='agent'`` refuses them).
"""

from __future__ import annotations

import functools
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
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import data as data_job
from dpa_omf.jobs import prepare, pretrain
from dpa_omf.jobs import workdir as wd
from dpa_omf.preference import curation
from dpa_omf.preference import distance as dist
from dpa_omf.preference import features as feat
from dpa_omf.train import checkpointing, sharding, stage_log
from dpa_omf.viz import scene_plot as plot

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STAGE = "curate"
PARTIAL_SUFFIX = ".partial.npz"
STORED_AS = {"per_agent": "ot_agent_distance", "per_agent_counted": "ot_agent_counted"}  # ranking -> shard names


def ranking_jobs(num_scenes: int, rankings_per_example: float) -> list[tuple[int, int]]:
    """(scene index, repeat) of every ranking: a prefix of the scenes for < 1, repeats for > 1."""
    total = max(1, round(num_scenes * rankings_per_example))
    return [(i % num_scenes, i // num_scenes) for i in range(total)]


def rollout_key(base_key: jax.Array, scene_index: int, repeat: int) -> jax.Array:
    """The rollout key of a ranking: a function of the global scene index and the repeat only (online
    alignment's round r of a scene uses ``repeat = r``: its round 0 ranks as this job did)."""
    return jax.random.fold_in(jax.random.fold_in(base_key, scene_index), repeat)


def shard_name(k: int, n: int) -> str:
    return f"shard-{k:05d}-of-{n:05d}.npz"


def shard_files(workdir: str, num_shards: int | None = None) -> list[pathlib.Path]:
    """The shards of the finished curate stage: exactly those its sealed summary lists (never a glob, so a
    file deleted, added or left partial since is not silently read). ``num_shards``: the shards the running
    stage wrote, by name (its own summary, before the seal)."""
    if num_shards is not None:
        return [wd.stage_dir(workdir, STAGE) / shard_name(k, num_shards) for k in range(num_shards)]
    files = [p for p in wd.listed_outputs(workdir, STAGE, "shard-") if not is_partial(p)]
    if not files:
        raise wd.WorkdirError(f"the curate stage in {wd.stage_dir(workdir, STAGE)} lists no preference shards; "
                              f"{wd.restart_hint(STAGE)}")
    return files


def local_mesh() -> jax.sharding.Mesh:
    """The mesh of this process's devices: curation splits its work by process, so it needs no collective."""
    return sharding.make_mesh(devices=jax.local_devices())


def local_reference(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh):
    """The reference model and its params, replicated on this process's devices."""
    return pretrain.load_params(config, workdir, mesh=mesh)


def run(config: ml_collections.ConfigDict, workdir: str, fingerprint: str) -> int:
    """Ranks this process's shards into ``WORKDIR/curate`` (resumable); process 0 then writes the summary.

    Returns 0 when done, 75 (``checkpointing.EXIT_PREEMPTED``) when SIGTERM / SIGINT stopped it.
    """
    cfg = cfg_lib.curation_config(config)
    out = wd.stage_dir(workdir, STAGE)
    out.mkdir(parents=True, exist_ok=True)
    mesh = local_mesh()
    model, params = local_reference(config, workdir, mesh)
    files = data_job.split_files(config, workdir, "train")
    scenes = prepare.open_scenes(config, workdir, "train", files)  # every scene fitted to the configured slots
    ranker = _ShardRanker(Ranker(model, params, cfg, mesh, config.curate.scenes_per_device), scenes,
                          jax.random.key(config.seed))
    jobs = ranking_jobs(len(ranker.sources), config.curate.rankings_per_example)
    per_shard = config.curate.scenes_per_shard
    num_shards = math.ceil(len(jobs) / per_shard)
    mine = wd.process_share(num_shards)
    logger = stage_log.StageLogger(out, total_steps=sum(len(jobs[k * per_shard:(k + 1) * per_shard])
                                                            for k in mine), initial_step=0)
    start, done, preempted, ranked = time.time(), 0, False, []
    with checkpointing.PreemptionFlag() as flag:
        for k in mine:
            path = out / shard_name(k, num_shards)
            chunk = jobs[k * per_shard:(k + 1) * per_shard]
            if path.exists():
                partial_path(path).unlink(missing_ok=True)  # a kill between the write and unlink below leaves it
                logger.advance(len(chunk))
                continue
            pictures = out if config.curate.pictures and k == 0 else None
            stack = ranker.rank_shard(chunk, logger, pictures, partial_path(path), flag)
            if stack is None:
                preempted = True
                break
            atomic.write_npz(path, files=np.asarray([portable_path(f, workdir) for f in files]), **stack)
            partial_path(path).unlink(missing_ok=True)
            _log_shard(logger, k, stack)
            done += len(chunk)
            ranked.append(k)
    scenes.close()
    if wd.any_process(preempted):  # every process stops together (also a barrier)
        logger.close()
        wd.say(f"[{STAGE}] preempted: finished rankings saved; run again to continue")
        return checkpointing.EXIT_PREEMPTED
    by_process = shards_by_process(ranked, num_shards)  # a collective too
    summary = {}
    if wd.is_writer():
        summary = summarize(workdir, cfg, shard_files(workdir, num_shards))
        summary.update(seconds=time.time() - start, rankings_this_run_process0=done, config_fingerprint=fingerprint,
                       solver_choice=cfg_lib.curate_solver(config)[1], processes=jax.process_count(),
                       devices_per_process=jax.local_device_count(),
                       scenes_per_step=ranker.ranker.step_size, shards_this_run_by_process=by_process)
        logger.write_summary(summary)
        logging.info("curate: %s", summary)
    logger.close()
    return 0  # the stage graph holds every process at a barrier until this summary is written


def shards_by_process(ranked: list[int], num_shards: int) -> list[list[int]]:
    """The shards each process ranked in this run, by process index (a collective: every process calls it).

    The summary records it, since nothing else shows which process wrote which shard (the shards do not
    depend on it); shards present at the start (a restart) are not listed.
    """
    if jax.process_count() == 1:
        return [list(ranked)]
    from jax.experimental import multihost_utils  # only multi-process jobs need it

    mine = np.zeros(num_shards, np.int32)
    mine[ranked] = 1
    return [np.flatnonzero(m).tolist() for m in np.asarray(multihost_utils.process_allgather(mine))]


def _log_shard(logger: stage_log.StageLogger, k: int, stack: dict) -> None:
    d = stack["ot_distance"]
    logger.log(k + 1, {"preferred_distance": float(np.take_along_axis(d, stack["preferred"], 1).mean()),
                       "unpreferred_distance": float(np.take_along_axis(d, stack["unpreferred"], 1).mean()),
                       "rankings": len(d)}, prefix="shard")


def partial_path(path: pathlib.Path) -> pathlib.Path:
    """Where a shard's finished rankings wait when the job is stopped mid-shard."""
    return path.with_name(path.name.replace(".npz", PARTIAL_SUFFIX))


def is_partial(path: pathlib.Path) -> bool:
    return path.name.endswith(PARTIAL_SUFFIX)


class Ranker:
    """Ranks scenes in steps of ``scenes_per_device`` per device of ``mesh`` (a mesh of local devices).

    The device half (rollouts, features, ADE: ``curation.featurize_batch``)
    runs split over the mesh; the OT half (``curation.rank_features``) too,
    except with the exact host solver, which runs as a one-device program on
    the host's copy of the features (a host callback inside a multi-device CPU
    program can deadlock: the callback waits for a device thread that waits
    for it). A short step is padded with copies of its last scene (dropped).
    """

    ROW_KEYS = ("tokens", "ot_distance", "ade_distance", "preferred", "unpreferred", "per_agent",
                "per_agent_counted", "eval_mask")

    def __init__(self, model, params, cfg: curation.CurationConfig, mesh: jax.sharding.Mesh,
                 scenes_per_device: int):
        self.model, self.params, self.cfg, self.mesh = model, params, cfg, mesh
        self.step_size = scenes_per_device * mesh.devices.size
        self.featurize = sharding.map_over_scenes(
            lambda p, s, k: curation.featurize_batch(model, p, s, k, cfg), mesh)
        if dist.SOLVERS[cfg.ot.solver].host:
            score = jax.jit(lambda f: curation.rank_features(f, cfg))
            self.score = lambda f: score(jax.device_get(f))
        else:
            self.score = functools.partial(
                sharding.map_over_scenes(lambda _, f: curation.rank_features(f, cfg), mesh), {})

    def rank(self, scenarios: list[dt.Scenario], keys: list[jax.Array]) -> dict[str, np.ndarray]:
        """``ROW_KEYS`` arrays (numpy, leading axis: the scenes) of up to ``step_size`` scenes."""
        n = len(scenarios)
        if not 0 < n <= self.step_size:
            raise ValueError(f"Ranker.rank takes 1 to {self.step_size} scenes, got {n}")
        pad = self.step_size - n
        batch = sharding.put_local_batch(dt.stack_scenarios(scenarios + scenarios[-1:] * pad), self.mesh)
        keys = sharding.put_local_batch(jnp.stack(keys + keys[-1:] * pad), self.mesh)
        res = self.score(self.featurize(self.params, batch, keys))
        res = jax.device_get({k: v for k, v in res.items() if k in self.ROW_KEYS})
        return {k: np.asarray(v[:n]) for k, v in res.items()}


class _ShardRanker:
    """Ranks the scenes of one shard with a :class:`Ranker`; rollout keys from the global scene index and
    the repeat only."""

    def __init__(self, ranker: Ranker, scenes: prepare.Scenes, base_key: jax.Array):
        self.ranker, self.scenes, self.base_key = ranker, scenes, base_key
        self.sources = scenes.sources()
        self.file_index = {f: i for i, f in enumerate(scenes.files)}

    def key(self, si: int, rep: int) -> jax.Array:
        return rollout_key(self.base_key, si, rep)

    def rank_shard(self, chunk: list[tuple[int, int]], logger, pictures: pathlib.Path | None,
                   partial: pathlib.Path, flag: checkpointing.PreemptionFlag) -> dict | None:
        """The shard's stacked rankings, or None when stopped (the finished ones saved to ``partial``)."""
        rows = dict(np.load(partial)) if partial.exists() else {}
        done = len(rows["repeat"]) if rows else 0
        logger.advance(done)
        for i in range(done, len(chunk), self.ranker.step_size):
            if flag.is_set():
                atomic.write_npz(partial, **rows)
                return None
            step = chunk[i:i + self.ranker.step_size]
            rows = _concat(rows, self.rank_step(step))
            logger.advance(len(step))
        if pictures is not None:
            si, rep = chunk[0]
            scenario = self.scenes.read(self.sources[si])
            r = self.ranker
            # One scene on one device: the host's copy of the params (replicated ones would make this a
            # multi-device program with the host OT callback inside, which can deadlock: see Ranker).
            params = jax.device_get(r.params)
            draw_pictures(pictures, scenario, jax.device_get(curation.rank_scene(r.model, params, scenario,
                                                                                 self.key(si, rep), r.cfg)), r.cfg)
        rows["tokens"] = rows["tokens"].astype(np.int16)
        return rows

    def rank_step(self, step: list[tuple[int, int]]) -> dict:
        sources = [self.sources[si] for si, _ in step]
        scenarios = [self.scenes.read(src) for src in sources]
        res = self.ranker.rank(scenarios, [self.key(si, rep) for si, rep in step])
        res = {STORED_AS.get(k, k): v for k, v in res.items()}
        if not np.isfinite(res["ot_distance"]).all():
            bad = [str(sources[j]) for j in range(len(step)) if not np.isfinite(res["ot_distance"][j]).all()]
            raise FloatingPointError(f"curate: non-finite OT distance for scene(s) {bad}")
        return dict(file_index=np.asarray([self.file_index[s.file] for s in sources], np.int32),
                    record_index=np.asarray([s.record for s in sources], np.int32),
                    scenario_id=np.stack([np.asarray(s.scenario_id) for s in scenarios]),
                    repeat=np.asarray([rep for _, rep in step], np.int32), **res)


def _concat(rows: dict, more: dict) -> dict:
    return {k: np.concatenate([rows[k], v]) if rows else v for k, v in more.items()}


def portable_path(path: str | pathlib.Path, workdir: str | pathlib.Path) -> str:
    """How a shard names a data file: relative to the workdir when it lies under
    it (synthetic data: the workdir can then be moved or read from any current
    directory), else absolute (real WOMD files)."""
    p = pathlib.Path(os.path.abspath(path))
    try:
        return str(p.relative_to(os.path.abspath(workdir)))
    except ValueError:
        return str(p)


def load_shards(workdir: str, files: list[pathlib.Path] | None = None) -> dict[str, np.ndarray]:
    """Every shard (``files``, default :func:`shard_files`) concatenated along the ranking axis (``files``
    from the first shard, resolved against the workdir)."""
    parts = [dict(np.load(p)) for p in (shard_files(workdir) if files is None else files)]
    out = {n: np.concatenate([p[n] for p in parts]) for n in parts[0] if n != "files"}
    files = [pathlib.Path(workdir) / f for f in parts[0]["files"].tolist()]  # absolute paths stay absolute
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"curate shards in {wd.stage_dir(workdir, STAGE)} name data files that do not "
                                f"exist: {missing[:3]} ({len(missing)} in all); re-run the curate stage")
    out["files"] = np.asarray([str(f) for f in files])
    return out


def summarize(workdir: str, cfg: curation.CurationConfig, files: list[pathlib.Path]) -> dict:
    s = load_shards(workdir, files)
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
    spread = dist.expert_spread(phi_e, valid_e, jnp.asarray(sim), cfg.ot) if cfg.ot.feature_scaling != "none" \
        else None
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (name, idx) in zip(axes, (("best", best), ("worst", worst))):
        phi_r, valid_r = feat.rollout_features(
            scenario, *(jnp.asarray(res[k][idx:idx + 1]) for k in ("x", "y", "heading", "vel_x", "vel_y")),
            cfg.features)
        cost, plan = dist.ot_coupling(phi_r[0, agent], valid_r[0, agent], phi_e[agent], valid_e[agent], cfg.ot,
                                      spread)
        im = ax.imshow(np.asarray(plan), cmap="magma", aspect="auto")
        ax.set_title(f"{name} rollout, agent slot {agent}: cost {float(cost):.3f}")
        ax.set_xlabel("expert step")
        ax.set_ylabel("rollout step")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.savefig(out / "scene0_coupling.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


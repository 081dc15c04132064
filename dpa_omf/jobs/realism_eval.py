"""The batched, sharded realism evaluator shared by the evaluate job and the training jobs.

:class:`Evaluator` scores groups of held-out scenes with
``metrics.model_realism.sample_and_score``: ``scenes_per_device`` scenes per
device of a mesh of this process's devices per step (one jitted program per
realism configuration, the scenes split over the mesh; a short step is padded
with copies of its last scene, dropped). The metric's static sizes are
fitted to the group of scenes a call is given (the evaluate job's chunks are
fixed groups, whatever the number of devices or processes), or at least to
the sizes the Evaluator is given (the evaluate job's ``evaluate.sizes_per_job``:
those of all its scenes, :func:`job_sizes`, one program for every chunk), and a scene
whose pruned map search could not be certified is scored again with
exhaustive searches (``wosac.run_certified``, the rule of ``wosac.evaluate_scene``
too), so every scene gets the official values. Rollout keys: ``fold_in(key(seed), scene index)``.

The training jobs log realism of a fixed small held-out set with
:func:`realism_logger` (composite, buckets, collision and off-road rates
every ``eval_every`` steps, to ``metrics.jsonl`` and TensorBoard).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import prepare
from dpa_omf.jobs import workdir as wd
from dpa_omf.metrics import model_realism, names
from dpa_omf.metrics import wosac as realism
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling
from dpa_omf.train import sharding


class Evaluator:
    """Per-scene WOSAC metrics of a model's rollouts, batched over the devices of ``mesh``."""

    def __init__(self, model: mlm.MotionLM, cfg: cfg_lib.EvaluateConfig, mesh: jax.sharding.Mesh,
                 scenes_per_device: int | None = None, at_least: Sequence[int] = (0, 0, 0)):
        """``at_least``: the metric's sizes to fit at least (``wosac.RealismConfig.fitted``): those of every
        scene a job will score (:func:`job_sizes`) give each of its groups one program."""
        self.model, self.cfg, self.mesh = model, cfg, mesh
        self.at_least = tuple(int(n) for n in at_least)
        self.step_size = (scenes_per_device or cfg.scenes_per_device) * mesh.devices.size
        self.base_key = jax.random.key(cfg.seed)
        self._programs: dict[tuple, object] = {}

    def _program(self, rc: realism.RealismConfig, rollout: sampling.RolloutConfig):
        """The jitted sample-and-score program; its first argument is (params, setting), the setting
        (temperature, top_p) traced, so every sampling setting of a model shares one program."""
        structure = dataclasses.replace(rollout, temperature=1.0, top_p=1.0)  # what the program is compiled for
        if (rc, structure) not in self._programs:
            self._programs[rc, structure] = sharding.map_over_scenes(
                lambda ps, s, k: model_realism.sample_and_score(self.model, ps[0], s, k, structure, rc, ps[1]),
                self.mesh)
        return self._programs[rc, structure]

    def _run(self, params, scenarios: list[dt.Scenario], indices: Sequence[int], rc,
             rollout: sampling.RolloutConfig) -> dict[str, np.ndarray]:
        program = self._program(rc, rollout)
        setting = np.asarray([rollout.temperature, rollout.top_p], np.float32)
        outs = []
        for i in range(0, len(scenarios), self.step_size):
            group, idx = scenarios[i:i + self.step_size], list(indices[i:i + self.step_size])
            pad = self.step_size - len(group)
            batch = sharding.put_local_batch(dt.stack_scenarios(group + group[-1:] * pad), self.mesh)
            keys = jax.numpy.stack([jax.random.fold_in(self.base_key, j) for j in idx + idx[-1:] * pad])
            res = jax.device_get(program((params, setting), batch, sharding.put_local_batch(keys, self.mesh)))
            outs.append({k: np.asarray(v)[:len(group)] for k, v in res.items()})
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def scene_metrics(self, params, scenarios: list[dt.Scenario], indices: Sequence[int],
                      sampled: tuple[float, float] | None = None) -> list[dict[str, float]]:
        """The official-named metrics of each scene and the log's own rates (``wosac.LOG_RATES``)
        (``indices``: the scenes' global indices: their keys; ``sampled``: (temperature, top-p) instead of the
        evaluate section's, with the same keys)."""
        if len(scenarios) != len(indices) or not scenarios:
            raise ValueError(f"scene_metrics: {len(scenarios)} scenes for {len(indices)} indices")
        rollout = self.cfg.rollout if sampled is None else dataclasses.replace(
            self.cfg.rollout, temperature=float(sampled[0]), top_p=float(sampled[1]))

        def run(rc: realism.RealismConfig, rows) -> dict[str, np.ndarray]:
            rows = range(len(scenarios)) if rows is None else rows
            return self._run(params, [scenarios[j] for j in rows], [indices[j] for j in rows], rc, rollout)

        # Rare re-runs (agents far off the map): an exhaustive lane search for those scenes only.
        out, _ = realism.run_certified(run, dt.stack_scenarios(scenarios), self.cfg.realism, self.at_least)
        return [realism.metrics_to_official_dict({k: v[j] for k, v in out.items()})
                | {k: float(out[k][j]) for k in realism.LOG_RATES} for j in range(len(scenarios))]


def job_sizes(read: Callable[[int], dt.Scenario], mine: Sequence[int]) -> np.ndarray:
    """The metric's sizes (``wosac.needed_sizes``) of every scene of a job, the same on every process.

    Each process reads its share ``mine`` (scene indices; ``read(i)`` the scene) and the maxima are combined
    over processes, so the sizes do not depend on the number of processes, nor on which chunks a resumed run
    has left. A collective: every process calls it.
    """
    local = np.zeros(3, np.int64)
    for i in mine:
        local = np.maximum(local, realism.needed_sizes(read(i)))
    return wd.max_over_processes(local)


def log_rates(rows: list[dict[str, float]]) -> dict[str, float] | None:
    """The log's own collision and off-road rates over the scenes (our names, as the models' rates), or None
    when some row predates them."""
    if not all(k in r for r in rows for k in realism.LOG_RATES):
        return None
    return {k.removeprefix("log_"): float(np.mean([r[k] for r in rows])) for k in realism.LOG_RATES}


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean over scenes of every field (the challenge averages per-scene metrics)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def realism_logger(evaluator: Evaluator, scenarios: list[dt.Scenario]):
    """``f(params) -> {realism_<name>}`` for the logged metrics of ``names.TABLE`` (composite, buckets,
    collision and off-road rates) on ``scenarios`` (a fixed small held-out set; keys from their positions)."""
    indices = list(range(len(scenarios)))

    def log(params) -> dict[str, float]:
        m = mean_metrics(evaluator.scene_metrics(params, scenarios, indices))
        return {f"realism_{k}": v for k, v in names.ours(m, names.logged()).items()}

    return log


def training_realism(config: ml_collections.ConfigDict, workdir: str, section: str):
    """The ``extra_eval`` of a training job: realism of the first ``<section>.realism_scenes`` held-out scenes.

    Returns ``f(params) -> {realism_composite, ...}`` (the evaluate section's rollouts, challenge and seed),
    or None when ``realism_scenes`` is 0. Process 0 scores them (a few scenes: splitting them would cost more
    than it saves) on its own devices; the others return ``{}`` (only process 0 logs).
    """
    n = config[section].realism_scenes
    if n <= 0:
        return None
    if not wd.is_writer():
        return lambda params: {}
    scenes = prepare.open_scenes(config, workdir, "valid")
    fixed = [scenes.read(src) for src in scenes.sources()[:n]]
    scenes.close()
    evaluator = Evaluator(mlm.MotionLM(cfg_lib.model(config)), cfg_lib.evaluate(config),
                          sharding.make_mesh(devices=jax.local_devices()))
    log = realism_logger(evaluator, fixed)
    # The training state's params live on the job's (possibly multi-process) mesh: this process's replica.
    return lambda params: log(jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params))

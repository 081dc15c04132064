"""The one config boundary: ``ml_collections.ConfigDict`` in, frozen dataclasses out.

Every default lives in ``dpa_omf/configs/``: the builders below pass every field of every
dataclass explicitly (a test fails on a field left to its dataclass default, and on a
dataclass default that disagrees with the default config). A config value ``0`` becomes
``None`` ("off" / "exhaustive") for the fields that take ``None``. Below this module no code
sees a ConfigDict: jitted code gets the hashable dataclasses built here.

Each rule about a value lives once, next to the code that relies on it: in the
dataclass's ``__post_init__`` (``TokenizerConfig.token_hz`` divides 10,
``ModelConfig.d_model`` a multiple of ``num_heads``, ``OTConfig.solver``,
``AlignConfig.method``, ``CPLConfig.conservative_lambda``, ...). :func:`check`
builds every dataclass of the config, collects every refusal, adds the rules
that only make sense across sections or against the devices (mesh vs device
count, batch vs processes, ``align.sft_top_k`` vs ``curate.num_rollouts``),
and raises one :class:`ConfigError` (a ``ValueError``; a user error for the launcher: exit 2, no
traceback) listing them all, before any compute.

Sections -> dataclasses:

  data                        io.reader.ReaderConfig (``reader``), io.pipeline.PipelineConfig (``pipeline``),
                              synthetic.dataset.SyntheticConfig (``synthetic``)
  tokenizer, model            model.tokenizer.TokenizerConfig, model.motion_lm.ModelConfig (``model``)
  pretrain, mesh              train.loop.TrainConfig (``pretrain_train``), train.sharding.MeshConfig (``mesh``)
  curate                      preference.curation.CurationConfig (``curation``)
  align                       AlignConfig (here), train.loop.TrainConfig (``align_train``)
  evaluate                    EvaluateConfig (here)
  submit                      SubmitConfig (here; metrics.submission.SubmissionMetadata for its metadata)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from dpa_omf.configs import post_training
from dpa_omf.io import pipeline as pipe
from dpa_omf.io import reader as reader_lib
from dpa_omf.jobs import workdir as wd
from dpa_omf.metrics import submission as submission_lib
from dpa_omf.metrics import wosac
from dpa_omf.model import encoder as enc
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling
from dpa_omf.model import tokenizer as tok
from dpa_omf.preference import curation
from dpa_omf.preference import distance as dist
from dpa_omf.preference import features as feat
from dpa_omf.synthetic import dataset as synthetic
from dpa_omf.synthetic import maps as smap
from dpa_omf.train import loop, losses, optim, sharding

OFFLINE_LOSSES = ("pairs", "top_bottom", "ranked")


# ----------------------------------------------------------------------------- stage-level dataclasses


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """Online DPA-OMF (``align.method='online'``; the ``align.online`` section).

    Attributes:
      num_rollouts: R rollouts of the current policy ranked per scene per round.
      top_k: K: the K closest vs the K farthest are the round's pairs ('pairs' loss).
      rollout_chunk: rollouts sampled together (bounds memory).
      steps_per_round: optimizer updates on each round's data.
      loss: 'pairs' (``align.pairs_per_scene`` of the K pairs per update) or 'ranked' (CPL over every
        ordered pair of the R rollouts).
      kl_weight: weight of the per-token KL(policy || reference) on the trained sequences (0: off).
      reference_ratio: CPL scores of log pi - log pi_ref (a DPO-style anchor).
    """

    num_rollouts: int = 16
    top_k: int = 4
    rollout_chunk: int = 16
    steps_per_round: int = 1
    loss: str = "pairs"
    kl_weight: float = 1.0
    reference_ratio: bool = False

    def __post_init__(self):
        if self.loss not in ("pairs", "ranked"):
            raise ValueError(f"align.online.loss={self.loss!r} must be 'pairs' or 'ranked'")
        if self.top_k < 1 or self.num_rollouts < 2 * self.top_k:
            raise ValueError(f"align.online: num_rollouts={self.num_rollouts} must be >= 2 * top_k="
                             f"{self.top_k} >= 2")
        if self.steps_per_round < 1 or self.kl_weight < 0:
            raise ValueError("align.online: steps_per_round must be >= 1 and kl_weight >= 0")


@dataclasses.dataclass(frozen=True)
class AlignConfig:
    """What the align stage optimizes (the ``align`` section, less the loop's cadence).

    Attributes:
      method: a name in ``dpa_omf/jobs/align.py:METHODS`` (checked there: ``align.check``, a rule of the boundary).
      cpl: the contrastive preference loss (score alpha / gamma / normalization, lambda, BC weight).
      dpo_beta: DPO's inverse temperature.
      pairs_per_scene: pairs (or sequences) drawn per scene per step.
      sft_top_k: SFT baselines: the k closest rollouts are the targets.
      heldout_fraction: the last share of the curated scenes, never trained on (held-out accuracy).
      online: online DPA-OMF's rounds and anchors.
      catk_top_k: CAT-K: the closest to the log among this many most likely tokens.
      offline_loss: the offline CPL methods' comparisons per scene per step: 'pairs' (``pairs_per_scene``
        (k-th closest, k-th farthest) pairs), 'top_bottom' (``pairs_per_scene`` of the closest x as many of the
        farthest: every cross pair) or 'ranked' (``ranked_rollouts`` of the R rollouts: every ordered pair).
      ranked_rollouts: 'ranked': rollouts drawn per scene per step (0: all R).
      kl_weight: offline CPL methods: weight of the per-token KL(policy || reference) on the trained sequences.
      reference_ratio: offline CPL methods: scores of log pi - log pi_ref (a DPO-style anchor).
      eval_agent_weight: offline CPL methods: weight of the agents the realism metric evaluates (1: as any).
    """

    method: str
    cpl: losses.CPLConfig
    dpo_beta: float
    pairs_per_scene: int
    sft_top_k: int
    heldout_fraction: float
    online: OnlineConfig = OnlineConfig()
    catk_top_k: int = 32
    offline_loss: str = "pairs"
    ranked_rollouts: int = 0
    kl_weight: float = 0.0
    reference_ratio: bool = False
    eval_agent_weight: float = 1.0

    def __post_init__(self):
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"align.heldout_fraction={self.heldout_fraction} must be in [0, 1)")
        if self.pairs_per_scene < 1 or self.sft_top_k < 1:
            raise ValueError("align.pairs_per_scene and align.sft_top_k must be >= 1")
        if not 1 <= self.catk_top_k <= tok.NUM_TOKENS:
            raise ValueError(f"align.catk_top_k={self.catk_top_k} must be in [1, {tok.NUM_TOKENS}]")
        self._check_levers()

    def _check_levers(self):
        """The levers' own ranges (which methods they apply to: ``align.check``, from the method registry)."""
        if self.offline_loss not in OFFLINE_LOSSES:
            raise ValueError(f"align.offline_loss={self.offline_loss!r} must be one of {OFFLINE_LOSSES}")
        if self.ranked_rollouts < 0 or self.kl_weight < 0 or self.eval_agent_weight < 0:
            raise ValueError("align.ranked_rollouts, align.kl_weight and align.eval_agent_weight must be >= 0")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate stage: ``rollout.num_rollouts`` joint rollouts of ``num_scenes`` held-out scenes.

    Attributes:
      rollout: sampling (rollouts per scene, chunk, temperature, top-p).
      realism: the WOSAC metric configuration (``challenge`` '2024' or '2025').
      num_scenes: held-out scenes, the first of the valid split (0: every scene of the split).
      seed: the rollout keys' seed (the same for every model: a paired comparison).
      scenes_per_chunk: scenes per work item (a file of per-scene results; processes split the chunks).
      sizes_per_job: fit the realism metric's static sizes (evaluated-agent slots, road-edge and lane
        capacities) to every scene of the job, so every chunk runs one compiled program; False: to each
        chunk (less map-search work per scene when the scenes' maps differ a lot, one program per size).
      scenes_per_device: scenes each local device scores per step (speed only).
    """

    rollout: sampling.RolloutConfig
    realism: wosac.RealismConfig
    num_scenes: int
    seed: int
    scenes_per_chunk: int = 8
    scenes_per_device: int = 1
    sizes_per_job: bool = True

    def __post_init__(self):
        if self.num_scenes < 0:
            raise ValueError(f"evaluate.num_scenes={self.num_scenes} must be >= 0 (0: the whole split)")
        if self.scenes_per_chunk < 1 or self.scenes_per_device < 1:
            raise ValueError("evaluate.scenes_per_chunk and evaluate.scenes_per_device must be >= 1")


@dataclasses.dataclass(frozen=True)
class SubmitConfig:
    """The submit stage: the challenge's 32 joint rollouts of every sim agent of every scenario.

    Attributes:
      model: 'reference' or an alignment method (its stage folder: ``jobs.align.folder_name``).
      split: the data's split read when ``scenario_pattern`` is empty.
      scenario_pattern: a glob of TFRecord files (Scenario protos or tf.Examples), '' for the split.
      max_scenarios: the first scenarios only (0: all).
      reader: the scenes' slots (``max_agents`` must hold every sim agent of a scenario).
      rollout: sampling; ``num_rollouts`` is the challenge's 32.
      seed: the rollout keys' seed (scenario i samples with ``fold_in(key(seed), i)``).
      scenes_per_shard: scenes (WOSAC scenarios) per ``submission.binproto`` shard (bounds a file's size).
      metadata: the submission's metadata less ``num_model_parameters`` when that is '' (the job counts them).
    """

    model: str
    split: str
    scenario_pattern: str
    max_scenarios: int
    reader: reader_lib.ReaderConfig
    rollout: sampling.RolloutConfig
    seed: int
    scenes_per_shard: int
    metadata: tuple[tuple[str, Any], ...]

    def __post_init__(self):
        if self.split not in ("train", "valid"):
            raise ValueError(f"submit.split={self.split!r} must be 'train' or 'valid'")
        if self.rollout.num_rollouts != submission_lib.NUM_ROLLOUTS:
            raise ValueError(f"submit.num_rollouts={self.rollout.num_rollouts}: the challenge takes exactly "
                             f"{submission_lib.NUM_ROLLOUTS}")
        if self.max_scenarios < 0 or self.scenes_per_shard < 1:
            raise ValueError("submit.max_scenarios must be >= 0 and submit.scenes_per_shard >= 1")
        # SubmissionMetadata's own rules (the parameter count's format, ...); the account name is checked
        # only for the submit job (_check_stages), so other jobs run with its empty default.
        _metadata({**dict(self.metadata), "account_name": dict(self.metadata)["account_name"] or "unset"}, 1)

    def submission_metadata(self, num_params: int) -> submission_lib.SubmissionMetadata:
        """The metadata, with the model's ``num_params`` when the config leaves the count empty."""
        return _metadata(dict(self.metadata), num_params)


def _metadata(fields: dict[str, Any], num_params: int) -> submission_lib.SubmissionMetadata:
    count = fields.get("num_model_parameters") or submission_lib.parameter_count_label(num_params)
    return submission_lib.SubmissionMetadata(**{**fields, "num_model_parameters": count})


# ----------------------------------------------------------------------------- builders


def derived_seed(*parts: int) -> int:
    """A seed in [0, 2**31) derived from several integers (e.g. the global seed and a
    stage's repeat seed), independent for different tuples."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31))


def reader(c: ml_collections.ConfigDict) -> reader_lib.ReaderConfig:
    """Every scene of every stage is fitted to the configured slots; NaN / inf coordinates are always refused."""
    return reader_lib.ReaderConfig(max_agents=c.data.num_agents, max_roadgraph_points=c.data.max_roadgraph_points,
                                   check_finite=True)


def synthetic_world(c: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
    """The embedded world (``data.synthetic``) for ``data.num_agents`` x ``data.max_roadgraph_points`` slots.

    Up to ``pool_size`` slots the configured pool and initial counts hold; more slots (up to WOMD's 128) get a
    pool of that size and initial counts scaled by ``num_agents / initial_slots``, so the extra slots hold
    traffic, not padding.
    """
    s = c.data.synthetic
    a = c.data.num_agents
    scale = a / s.initial_slots if a > s.pool_size else 1.0

    def grow(lo_hi) -> tuple[int, int]:
        return tuple(int(v * scale) for v in lo_hi) if scale != 1.0 else tuple(lo_hi)

    floats = lambda xs: tuple(float(x) for x in xs)
    m = s.map
    world_map = smap.MapConfig(
        lane_width=floats(m.lane_width), arm_length=floats(m.arm_length), corridor_length=floats(m.corridor_length),
        median_prob=m.median_prob, median_width=floats(m.median_width), sidewalk_offset=m.sidewalk_offset,
        corner_radius=m.corner_radius, crosswalk_width=m.crosswalk_width, min_turn_radius=floats(m.min_turn_radius))
    return synthetic.SyntheticConfig(
        num_agents=a, max_roadgraph_points=c.data.max_roadgraph_points, template_weights=floats(s.template_weights),
        burn_in_steps=s.burn_in_steps, pool_size=max(s.pool_size, a), initial_vehicles=grow(s.initial_vehicles),
        initial_pedestrians=grow(s.initial_pedestrians), cyclist_prob=s.cyclist_prob,
        entering_share=s.entering_share, max_eval_agents=s.max_eval_agents, lane_change_prob=s.lane_change_prob,
        dropout_prob=s.dropout_prob, lookahead_points=s.lookahead_points,
        min_roadgraph_spacing=s.min_roadgraph_spacing, map=world_map)


def tokenizer(c: ml_collections.ConfigDict) -> tok.TokenizerConfig:
    return tok.TokenizerConfig(**c.tokenizer.to_dict())


def model(c: ml_collections.ConfigDict) -> mlm.ModelConfig:
    m = c.model.to_dict()
    encoder = enc.EncoderConfig(**m.pop("encoder"))
    return mlm.ModelConfig(**m, encoder=encoder, tokenizer=tokenizer(c))


def mesh(c: ml_collections.ConfigDict) -> sharding.MeshConfig:
    return sharding.MeshConfig(data=c.mesh.data, rules=tuple((str(k), v) for k, v in c.mesh.rules))


def _train(c: ml_collections.ConfigDict, section: ml_collections.ConfigDict, seed: int,
           async_checkpointing: bool, updates_per_step: int = 1) -> loop.TrainConfig:
    config = loop.TrainConfig(
        num_steps=section.num_steps, seed=seed, optim=optim.OptimConfig(**section.optim.to_dict()), mesh=mesh(c),
        log_every=section.log_every, eval_every=section.eval_every, checkpoint_every=section.checkpoint_every,
        keep_checkpoints=section.keep_checkpoints, async_checkpointing=async_checkpointing,
        progress_bar=section.progress_bar, preemption_sync_every=section.preemption_sync_every,
        updates_per_step=updates_per_step)
    config.validate()  # the loop's own rules (positive cadences, the optimizer's ranges)
    return config


def pretrain_train(c: ml_collections.ConfigDict) -> loop.TrainConfig:
    return _train(c, c.pretrain, c.seed, c.pretrain.async_checkpointing)


def align_seed(c: ml_collections.ConfigDict) -> int:
    """The alignment stage's seed: the global seed (which fixes the data, the
    reference and the curation) combined with ``align.seed`` (repeated runs)."""
    return derived_seed(c.seed, c.align.seed)


def align_train(c: ml_collections.ConfigDict) -> loop.TrainConfig:
    """The alignment loop's base config (``align.train_config`` adds what the method's registry entry asks)."""
    return _train(c, c.align, align_seed(c), True)


def pipeline(c: ml_collections.ConfigDict, patterns: tuple[str, ...], train: bool,
             process_count: int) -> pipe.PipelineConfig:
    """This process's pipeline of a split: ``batch_size`` = global batch / process count.

    Training: shuffled, repeating, prefetched, ``pretrain.num_workers`` grain workers. Held-out: the file
    order, no prefetch, no workers.
    """
    return pipe.PipelineConfig(
        file_patterns=tuple(patterns), batch_size=c.pretrain.batch_size // process_count,
        max_agents=c.data.num_agents, max_roadgraph_points=c.data.max_roadgraph_points,
        shuffle=train and c.pretrain.shuffle, seed=c.seed,
        num_epochs=None,  # repeat; evaluation takes a fixed number of batches
        drop_remainder=True, fmt="auto",  # every batch full; each file's format detected
        prefetch=c.pretrain.prefetch if train else 0, num_workers=c.pretrain.num_workers if train else 0)


def curate_solver(c: ml_collections.ConfigDict, backend: str | None = None) -> tuple[str, str]:
    """The OT solver curation uses on ``backend`` (default: JAX's) and why (``curate.solver='auto'``)."""
    if c.curate.solver not in dist.config_solvers():
        raise ValueError(f"curate.solver={c.curate.solver!r} must be one of {dist.config_solvers()}")
    return dist.solver_for_backend(c.curate.solver, backend or jax.default_backend())


def curation_config(c: ml_collections.ConfigDict, backend: str | None = None) -> curation.CurationConfig:
    cc = c.curate
    if cc.scenes_per_device < 1:
        raise ValueError(f"curate.scenes_per_device={cc.scenes_per_device} must be >= 1")
    ot = dist.OTConfig(
        solver=curate_solver(c, backend)[0], feature_weights=tuple(cc.feature_weights), weight_mode=cc.weight_mode,
        auction_levels=cc.auction_levels, auction_eps_factor=cc.auction_eps_factor, ragged_chunk=cc.ragged_chunk,
        sinkhorn_iterations=cc.sinkhorn_iterations, sinkhorn_eps_final=cc.sinkhorn_eps_final,
        sinkhorn_eps_init=cc.sinkhorn_eps_init, sinkhorn_anneal_fraction=cc.sinkhorn_anneal_fraction,
        rescore_window=cc.rescore_window, rescore_solver=cc.rescore_solver, top_k=cc.top_k,
        rollout_chunk=cc.ot_rollout_chunk, feature_scaling=cc.feature_scaling, spread_floor=tuple(cc.spread_floor))
    features = feat.FeatureConfig(
        clearance_cap=cc.clearance_cap, road_distance_clip=cc.road_distance_clip, effort_cap=cc.effort_cap,
        max_road_edge_points=cc.max_road_edge_points or None, road_edge_grid=cc.road_edge_grid or None,
        road_edge_candidates=cc.road_edge_candidates, rollout_chunk=cc.feature_rollout_chunk or None)
    return curation.CurationConfig(rollout=_rollout(cc), ot=ot, features=features, top_k=cc.top_k)


def _rollout(section: ml_collections.ConfigDict) -> sampling.RolloutConfig:
    """A stage's sampling (CAT-K's closest-among-top-K is the catk method's, in the align job; stages sample)."""
    return sampling.RolloutConfig(num_rollouts=section.num_rollouts,
                                  rollout_chunk=min(section.rollout_chunk, section.num_rollouts),
                                  temperature=section.temperature, top_p=section.top_p, closest_top_k=0)


def align(c: ml_collections.ConfigDict) -> AlignConfig:
    a = c.align
    score = losses.ScoreConfig(alpha=a.alpha, gamma=a.gamma, normalize=a.normalize)
    cpl = losses.CPLConfig(score=score, conservative_lambda=a.conservative_lambda, bc_weight=a.bc_weight,
                           credit=a.credit)
    return AlignConfig(method=a.method, cpl=cpl, dpo_beta=a.dpo_beta, pairs_per_scene=a.pairs_per_scene,
                       sft_top_k=a.sft_top_k, heldout_fraction=a.heldout_fraction,
                       online=OnlineConfig(**a.online.to_dict()), catk_top_k=a.catk_top_k,
                       offline_loss=a.offline_loss, ranked_rollouts=a.ranked_rollouts, kl_weight=a.kl_weight,
                       reference_ratio=a.reference_ratio, eval_agent_weight=a.eval_agent_weight)


def online_curation(c: ml_collections.ConfigDict, num_devices: int, backend: str | None = None
                    ) -> tuple[curation.CurationConfig, str]:
    """How online DPA-OMF ranks a round (the curate section's features, weights and solver, the
    ``align.online`` rollouts and pairs) and why that solver: the exact host solver is a host callback,
    which can deadlock inside a multi-device CPU program, so a multi-device mesh uses the on-device one."""
    o = align(c).online
    base = curation_config(c, backend)
    solver, why = curate_solver(c, backend)
    if num_devices > 1 and dist.device_solver(solver) != solver:
        solver, why = dist.device_solver(solver), f"{why}; the host callback inside a {num_devices}-device " \
                                                  "training step can deadlock: its on-device twin instead"
    cfg = dataclasses.replace(
        base, rollout=dataclasses.replace(base.rollout, num_rollouts=o.num_rollouts, rollout_chunk=o.rollout_chunk),
        ot=dataclasses.replace(base.ot, solver=solver, top_k=o.top_k), top_k=o.top_k)
    return cfg, why


def evaluate_seed(c: ml_collections.ConfigDict) -> int:
    """The evaluation rollouts' seed; ``evaluate.seed`` 0 is the global seed + 1 (every recorded
    evaluation used it), others are derived from (seed, evaluate.seed)."""
    return c.seed + 1 if c.evaluate.seed == 0 else derived_seed(c.seed, c.evaluate.seed)


def sampled_rows(text: str) -> tuple[tuple[str, float, float], ...]:
    """``evaluate.sampled`` (``'model@tT,pP'`` entries joined by ``;``, '' none) as ``(model, T, P)`` tuples."""
    out = []
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        model, _, setting = entry.partition("@")
        t, _, p = setting.partition(",")
        try:
            if not (model and t.startswith("t") and p.startswith("p")):
                raise ValueError
            row = (model, float(t[1:]), float(p[1:]))
        except ValueError:
            raise ValueError(f"evaluate.sampled: {entry!r} is not 'model@tT,pP' (e.g. 'reference@t0.85,p0.9')"
                             ) from None
        if row[1] <= 0 or not 0 < row[2] <= 1:
            raise ValueError(f"evaluate.sampled: {entry!r} needs temperature > 0 and 0 < top-p <= 1")
        if row in out:
            raise ValueError(f"evaluate.sampled: {entry!r} is given twice")
        out.append(row)
    return tuple(out)


def evaluate(c: ml_collections.ConfigDict) -> EvaluateConfig:
    e = c.evaluate
    realism = wosac.RealismConfig(
        challenge=e.challenge, max_eval_agents=e.max_eval_agents, rollout_batch=e.rollout_batch,
        max_road_edge_points=e.max_road_edge_points or None, max_lane_points=e.max_lane_points or None,
        road_edge_grid=e.road_edge_grid or None, road_edge_candidates=e.road_edge_candidates,
        lane_block=e.lane_block or None, lane_blocks_searched=e.lane_blocks_searched)
    return EvaluateConfig(rollout=_rollout(e), realism=realism,
                          num_scenes=e.num_scenes, seed=evaluate_seed(c), scenes_per_chunk=e.scenes_per_chunk,
                          scenes_per_device=e.scenes_per_device, sizes_per_job=e.sizes_per_job)


def submit_seed(c: ml_collections.ConfigDict) -> int:
    """The submission rollouts' seed, derived from (seed, submit.seed)."""
    return derived_seed(c.seed, c.submit.seed)


def submit(c: ml_collections.ConfigDict) -> SubmitConfig:
    s = c.submit
    rollout = _rollout(s)
    names = [f.name for f in dataclasses.fields(submission_lib.SubmissionMetadata)]
    meta = {k: tuple(s[k]) if isinstance(s[k], (tuple, list)) else s[k] for k in names}
    meta["unique_method_name"] = meta["unique_method_name"] or f"dpa_omf_{s.model}"
    kind = "reference" if s.model == "reference" else "aligned"
    meta["description"] = meta["description"] or post_training.DESCRIPTIONS[kind].format(method=s.model)
    reader_cfg = dataclasses.replace(reader(c), max_agents=s.num_agents or c.data.num_agents)
    return SubmitConfig(model=s.model, split=s.split, scenario_pattern=s.scenario_pattern,
                        max_scenarios=s.max_scenarios, reader=reader_cfg, rollout=rollout, seed=submit_seed(c),
                        scenes_per_shard=s.scenes_per_shard, metadata=tuple(meta.items()))


# ----------------------------------------------------------------------------- checks


class ConfigError(wd.UserError, ValueError):
    """A config refused by :func:`check`: every problem found, one per line."""


# section name -> builder: every dataclass the jobs build from the config (their rules run here first).
BUILDERS: dict[str, Callable[[ml_collections.ConfigDict], Any]] = {
    "data": reader,
    "data.synthetic": synthetic_world,
    "tokenizer": tokenizer,
    "model": model,
    "mesh": mesh,
    "pretrain": pretrain_train,
    "curate": curation_config,
    "align": align,
    "align.optim": align_train,
    "evaluate": evaluate,
    "submit": submit,
}


def check(c: ml_collections.ConfigDict, num_devices: int | None = None, process_count: int = 1,
          rules: Sequence[Callable[[ml_collections.ConfigDict], list[str]]] = ()) -> None:
    """Refuses impossible configs before any compute, listing every problem found.

    Unknown keys are refused earlier by the locked config. ``num_devices`` and
    ``process_count`` (inside a job, once JAX knows them) add the checks of the
    mesh against the devices and of the batches against the processes. ``rules``
    add the rules of registries above this module (``stages.check`` passes the
    alignment methods' ``align.check``).
    """
    errors = []
    for section, build in BUILDERS.items():
        try:
            build(c)
        except (ValueError, TypeError) as e:
            errors.append(f"{section}: {e}")
    errors += _check_data(c) + _check_model(c) + _check_stages(c)
    for rule in rules:
        errors += rule(c)
    if num_devices is not None:
        errors += _check_devices(c, num_devices, process_count)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _check_data(c) -> list[str]:
    errors = []
    if c.data.source not in ("synthetic", "womd"):
        errors.append(f"data.source={c.data.source!r} must be 'synthetic' or 'womd'")
    if c.data.source == "womd" and not c.data.womd.train_pattern:
        errors.append("data.source='womd' needs data.womd.train_pattern")
    if not 1 <= c.data.num_agents <= 128:
        errors.append(f"data.num_agents={c.data.num_agents} must be in [1, 128]")
    s = c.data.synthetic
    if min(s.num_train, s.num_valid, s.num_shards, s.num_workers) < 1:
        errors.append("data.synthetic.{num_train,num_valid,num_shards,num_workers} must be positive")
    if not 0 <= c.seed < 500_000:
        errors.append(f"seed={c.seed} must be in [0, 500000) (synthetic dataset seeds are 2 * seed + split)")
    return errors


def _check_model(c) -> list[str]:
    m = c.model
    if min(m.mlp_ratio, m.enc_layers, m.dec_layers, m.encoder.k_agents, m.encoder.k_roadgraph,
           m.encoder.roadgraph_stride) < 1:
        return ["model.{mlp_ratio,enc_layers,dec_layers} and model.encoder.{k_agents,k_roadgraph,"
                "roadgraph_stride} must be >= 1"]
    return []


def _check_stages(c) -> list[str]:
    errors = []
    p = c.pretrain
    for name in ("batch_size", "eval_batches"):
        if p[name] < 1:
            errors.append(f"pretrain.{name}={p[name]} must be >= 1")
    if c.align.offline_loss == "ranked" and c.align.ranked_rollouts > c.curate.num_rollouts:
        errors.append(f"align.ranked_rollouts={c.align.ranked_rollouts} exceeds curate.num_rollouts="
                      f"{c.curate.num_rollouts}")
    if c.evaluate.first_scene < 0:
        errors.append(f"evaluate.first_scene={c.evaluate.first_scene} must be >= 0")
    if not 0 < c.curate.rankings_per_example <= 16:
        errors.append(f"curate.rankings_per_example={c.curate.rankings_per_example} must be in (0, 16]")
    if c.curate.scenes_per_shard < 1:
        errors.append("curate.scenes_per_shard must be >= 1")
    if c.job == "submit" and c.submit.model not in ("reference", c.align.method):  # other jobs never submit
        errors.append(f"submit.model={c.submit.model!r} needs its alignment stage: set align.method to it "
                      f"(align.method={c.align.method!r}; configs/submit.py:<method> sets both)")
    if c.job == "submit" and not c.submit.account_name:
        errors.append("submit.account_name is empty: set it to the e-mail of your Waymo Open Dataset challenge "
                      "account (--config.submit.account_name=...)")
    if not 0 <= c.submit.num_agents <= 128:
        errors.append(f"submit.num_agents={c.submit.num_agents} must be in [0, 128] (0: data.num_agents)")
    if c.mesh.data < 1 and c.mesh.data != -1:
        errors.append(f"mesh.data={c.mesh.data} must be >= 1 or -1 (all devices)")
    if not 0 < c.aot.headroom <= 1 or c.aot.device_memory_gb < 0:
        errors.append("aot.headroom must be in (0, 1] and aot.device_memory_gb >= 0")
    for section in ("pretrain", "align"):
        if c.mesh.data > 0 and c[section].batch_size % c.mesh.data:
            errors.append(f"{section}.batch_size={c[section].batch_size} is not divisible by mesh.data={c.mesh.data}")
    return errors


def _check_devices(c, num_devices: int, process_count: int) -> list[str]:
    data = num_devices if c.mesh.data == -1 else c.mesh.data
    errors = []
    if data > num_devices:
        errors.append(f"mesh.data={data} needs {data} devices, only {num_devices} exist")
    elif data != num_devices:
        errors.append(f"mesh.data={data} does not use all {num_devices} devices (set mesh.data=-1)")
    for section in ("pretrain", "align"):
        b = c[section].batch_size
        if b % data:
            errors.append(f"{section}.batch_size={b} is not divisible by the mesh data axis ({data})")
        if b % process_count:
            errors.append(f"{section}.batch_size={b} is not divisible by the {process_count} processes")
    return errors

"""WOSAC realism metric in pure JAX (2024 / 2025 sim-agents challenge).

Reimplements the official Waymo Open Sim Agents Challenge metric
(``waymo_open_dataset/wdl_limited/sim_agents_metrics``, package version 1.6.7)
on fixed shapes so that it runs under ``jax.jit`` and ``jax.vmap`` over scenes.

Pipeline (per scene):

1. Trajectories ``[B, A, 91]``: the logged history (steps 0..10) followed by
   80 simulated steps (B = 32 rollouts), or by the logged future (B = 1, "log").
   Only agents to simulate (``sim_mask``, valid at the current step) take part.
   Box sizes of future steps are those of the current step, as officially.
2. Per-step features of the evaluated agents (``eval_mask``: the sdc and the
   tracks to predict), gathered into ``max_eval_agents`` slots: linear / angular
   speed and acceleration (central differences, NaN padded), distance to the
   nearest object (rounded boxes) and collisions, time to collision with the
   object in front, signed distance to road edges and off-road, red-light
   violations. See ``compute_features``.
3. Estimators: per-object histograms pooled over rollouts x steps, Bernoulli
   estimates of "ever collided / off-road / ran a red light", each scored by
   the log-likelihood of the logged value, averaged with the official validity
   masks and exponentiated; weighted sum = the composite (officially ``metametric``). See
   ``compute_metrics``.

Quirks of the official code reproduced on purpose (each matters for the
golden numbers in ``shared/golden/wosac``):
* simulated speeds are NaN at the last step and accelerations at the last two;
  these NaNs enter the simulated histograms (into the last bin, like
  ``tf.searchsorted``);
* ADE divides by the number of valid logged steps over all 91 steps;
* the sign rule at road-edge segment ends wraps around closed polylines only
  for polylines as long as the longest road edge (padding artefact);
* lane assignment for traffic lights measures |p - a + t (b - a)| (a sign
  slip in the official code) and links each lane's last point to the origin
  (zero padding) unless the lane is the longest one.

Where the parts live: this module holds the settings (``RealismConfig``), the
per-rollout assembly of the features, the estimators and the host entry points
(``evaluate_scene``, ``align_rollouts``); ``wosac_features`` the per-step
feature kernels (kinematics, time to collision, map and signals);
``dpa_omf.geometry.scene`` the distances to objects and road edges (shared with
the preference features); ``wosac_config`` the official challenge configs.
The command line is ``python -m dpa_omf.tools.realism_cli``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.geometry import scene
from dpa_omf.metrics import names
from dpa_omf.metrics import wosac_config as rc
from dpa_omf.metrics import wosac_features as wf

Array = Any

NUM_ROLLOUTS = 32  # rollouts per scene the challenge asks for


@dataclasses.dataclass(frozen=True)
class RealismConfig:
    """Realism-metric settings (hashable: a static argument of ``jax.jit``).

    Attributes:
      challenge: official configuration, '2024' or '2025'.
      max_eval_agents: evaluated-agent slots per scene (WOMD: the sdc plus at
        most 8 tracks to predict). Scenes with more are flagged
        (``eval_overflow``) and their extra agents ignored.
      rollout_batch: rollouts processed together (``lax.map`` batch size);
        trades memory for speed.
      max_road_edge_points, max_lane_points: compact the road-edge / lane
        samples into this many slots before the brute-force nearest-segment
        searches (None: keep all road-graph slots). Overflow is flagged.
      road_edge_grid, road_edge_candidates: the per-scene road-edge index
        (``geometry.segment_index``: cells per side, candidates per cell;
        grid None: exhaustive search). Exact either way: queries the index
        cannot certify are searched exhaustively and counted
        (``road_edge_fallbacks`` of ``road_edge_queries``).
      lane_block, lane_blocks_searched: the same for the lane assignment of
        the traffic-light feature (lanes are denser: more blocks searched).
    """

    challenge: str = "2024"  # the paper's table (configs: evaluate.challenge)
    max_eval_agents: int = 16
    rollout_batch: int = 8
    max_road_edge_points: int | None = None
    max_lane_points: int | None = None
    road_edge_grid: int | None = 64
    road_edge_candidates: int = 64
    lane_block: int | None = 32
    lane_blocks_searched: int = 32

    def __post_init__(self):
        rc.get_metrics_config(self.challenge)
        if self.max_eval_agents < 1 or self.rollout_batch < 1:
            raise ValueError(f"bad RealismConfig: {self}")

    @property
    def metrics_config(self) -> rc.MetricsConfig:
        return rc.get_metrics_config(self.challenge)

    def fitted(self, scenarios: dt.Scenario, quantum: int = 1024, at_least: Sequence[int] = (0, 0, 0)) -> RealismConfig:
        """A copy whose static sizes fit concrete scenes (one or a batch).

        Sets ``max_eval_agents`` to the largest number of evaluated agents and
        the road-edge / lane capacities to the largest counts rounded up to a
        multiple of ``quantum`` (few distinct shapes, so few compilations).
        ``at_least``: (evaluated agents, road-edge points, lane points) to fit
        at least, e.g. :func:`needed_sizes` of a larger set of scenes, so that
        every group of them gets the same sizes (one compilation). The work of
        the map searches scales with these capacities.
        """
        n_eval, n_edge, n_lane = np.maximum(needed_sizes(scenarios), np.asarray(at_least, np.int64))

        def up(n: int) -> int:
            return int(max(1, -(-int(n) // quantum)) * quantum)

        return dataclasses.replace(self, max_eval_agents=max(1, int(n_eval)),
                                   max_road_edge_points=up(n_edge), max_lane_points=up(n_lane))


def needed_sizes(scenarios: dt.Scenario) -> np.ndarray:
    """int64 ``[3]``: the most evaluated agents, road-edge points and lane points of a scene (one or a batch)."""
    a, rg = scenarios.agents, scenarios.roadgraph
    n_eval = np.sum(np.asarray(a.eval_mask) & np.asarray(a.sim_mask), axis=-1)
    rtype, rvalid = np.asarray(rg.type), np.asarray(rg.valid, bool)
    n_edge = np.sum(rvalid & np.isin(rtype, dt.RG_ROAD_EDGE_TYPES), axis=-1)
    n_lane = np.sum(rvalid & (rtype == dt.RG_LANE_SURFACE_STREET), axis=-1)
    return np.array([np.max(n_eval), np.max(n_edge), np.max(n_lane)], np.int64)


# ==================================================================== features
def _eval_slots(agents: dt.Agents, max_eval: int) -> tuple[Array, Array, Array]:
    """Slots of the evaluated agents (sorted by slot), padded to ``max_eval``."""
    mask = agents.eval_mask & agents.sim_mask
    (idx,) = jnp.nonzero(mask, size=max_eval, fill_value=0)
    ok = jnp.arange(max_eval) < jnp.sum(mask)
    return idx.astype(jnp.int32), ok, jnp.sum(mask) > max_eval


def _rollout_features(tr: dict, log_xyz: Array, log_valid: Array, eval_index: Array,
                      md: wf.MapData, sig: dict, config: RealismConfig) -> dict:
    """Features of one rollout.

    Args:
      tr: dict of ``[A, 91]`` trajectories (see ``wosac_features.trajectories``).
      log_xyz: ``[E, 91, 3]`` logged positions of the evaluated agents.
      log_valid: bool ``[E, 91]`` logged validity of the evaluated agents.
      eval_index: int32 ``[E]``.
    Returns:
      dict of ``[E, 80]`` features and ``[E]`` ADE.
    """
    h = dt.NUM_HISTORY
    fut = slice(h, None)
    ev = {k: v[eval_index] for k, v in tr.items()}
    speed, accel, ang_speed, ang_accel = wf.kinematic_features(ev["x"], ev["y"], ev["z"], ev["heading"])

    disp = jnp.sqrt((ev["x"] - log_xyz[..., 0]) ** 2 + (ev["y"] - log_xyz[..., 1]) ** 2
                    + (ev["z"] - log_xyz[..., 2]) ** 2)
    ade = jnp.sum(jnp.where(log_valid, disp, 0.0), -1) / jnp.sum(log_valid.astype(jnp.float32), -1)

    eval_boxes, all_boxes = wf.boxes(ev, fut), wf.boxes(tr, fut)
    ev_valid, all_valid = ev["valid"][:, fut], tr["valid"][:, fut]
    dist = scene.distance_to_nearest_object(eval_boxes, all_boxes, eval_index, ev_valid, all_valid)

    speed_2d = wf.kinematic_features(tr["x"], tr["y"], jnp.zeros_like(tr["x"]), tr["heading"])[0]
    ttc = wf.time_to_collision(eval_boxes, speed_2d[eval_index][:, fut], all_boxes, speed_2d[:, fut], all_valid)

    ev_fut = {k: v[:, fut] for k, v in ev.items()}
    road, road_fallbacks = scene.distance_to_road_edge(ev_fut, md.edges, md.edge_index)
    road = jnp.where(ev_valid, road, -wf.LARGE)

    c = dt.CURRENT_INDEX
    xy = jnp.stack([ev["x"][:, c:], ev["y"][:, c:]], axis=-1)
    tl, lane_exact = wf.red_light_violation(xy, ev["valid"][:, c:], md, sig, config.lane_block,
                                         config.lane_blocks_searched)
    return {
        "average_displacement_error": ade,
        "linear_speed": speed[:, fut], "linear_acceleration": accel[:, fut],
        "angular_speed": ang_speed[:, fut], "angular_acceleration": ang_accel[:, fut],
        "distance_to_nearest_object": dist, "collision_per_step": dist < scene.COLLISION_DISTANCE_THRESHOLD,
        "time_to_collision": ttc, "distance_to_road_edge": road,
        "offroad_per_step": road > scene.OFFROAD_DISTANCE_THRESHOLD, "traffic_light_violation_per_step": tl,
        "map_search_inexact": jnp.any(~lane_exact),
        "road_edge_queries": 4 * jnp.sum(ev_valid, dtype=jnp.int32), "road_edge_fallbacks": road_fallbacks,
    }


def _features_for(scenario: dt.Scenario, future_xyzh: Array, future_valid: Array,
                  eval_index: Array, eval_valid: Array, md: wf.MapData, sig: dict,
                  config: RealismConfig, batch_size: int) -> tuple[wf.Features, Array]:
    a = scenario.agents
    tr = wf.trajectories(scenario, future_xyzh, future_valid)
    log_xyz = jnp.stack([a.x, a.y, a.z], axis=-1)[eval_index]
    log_valid = a.valid[eval_index]
    f = functools.partial(_rollout_features, log_xyz=log_xyz, log_valid=log_valid,
                          eval_index=eval_index, md=md, sig=sig, config=config)
    out = jax.lax.map(f, tr, batch_size=min(batch_size, future_xyzh.shape[0]))
    inexact = jnp.any(out.pop("map_search_inexact"))
    counts = {k: jnp.sum(out.pop(k)) for k in ("road_edge_queries", "road_edge_fallbacks")}
    return wf.Features(
        eval_index=eval_index, eval_valid=eval_valid, object_id=a.id[eval_index],
        object_type=a.type[eval_index], valid=tr["valid"][:, eval_index, dt.NUM_HISTORY:],
        **out,
    ), inexact, counts


DEFAULT_CONFIG = RealismConfig()


def compute_features(scenario: dt.Scenario, sim_xyzh: Array, config: RealismConfig = DEFAULT_CONFIG,
                     sim_mask: Array | None = None) -> tuple[wf.Features, wf.Features, dict]:
    """Official per-step features of the log and of the rollouts.

    Args:
      scenario: one scene, agent arrays ``[A, 91]``.
      sim_xyzh: ``[R, A, 80, 4]`` simulated x, y, z (m) and heading (rad) for
        the 80 steps after the current one, in the scenario's agent slots
        (slots that are not simulated are ignored).
      config: ``RealismConfig``.
      sim_mask: optional bool ``[A]`` agents to simulate (default
        ``scenario.agents.sim_mask``, the official rule).
    Returns:
      (log features with B = 1, sim features with B = R, flags) where flags
      holds bool ``eval_overflow``, ``map_overflow`` and ``map_search_inexact``
      (the lane search), and the int32 counts ``road_edge_queries`` and
      ``road_edge_fallbacks`` (log and rollouts, see ``RealismConfig``).
    """
    if sim_mask is not None:
        scenario = scenario.replace(agents=scenario.agents.replace(sim_mask=sim_mask))
    a = scenario.agents
    eval_index, eval_valid, eval_over = _eval_slots(a, config.max_eval_agents)
    h = dt.NUM_HISTORY
    log_future = jnp.stack([a.x, a.y, a.z, a.heading], axis=-1)[None, :, h:]
    # The road-edge grid also covers where the evaluated boxes are, log and rollouts.
    cover_xy = jnp.concatenate([log_future[:, eval_index, :, :2], sim_xyzh[:, eval_index, :, :2]], axis=0)
    cover_valid = jnp.concatenate([(a.valid[:, h:][eval_index] & eval_valid[:, None])[None],
                                   jnp.broadcast_to(eval_valid[None, :, None], sim_xyzh.shape[:1] + eval_valid.shape
                                                    + sim_xyzh.shape[2:3])], axis=0)
    md = wf.prepare_map(scenario.roadgraph, config.max_road_edge_points, config.max_lane_points,
                        config.road_edge_grid, config.road_edge_candidates, cover_xy.astype(jnp.float32), cover_valid)
    sig = wf.prepare_signals(scenario.traffic_lights, md)
    log, log_inexact, log_counts = _features_for(scenario, log_future, a.valid[None, :, h:], eval_index, eval_valid,
                                     md, sig, config, 1)
    sim_valid = jnp.ones(sim_xyzh.shape[:3], bool)
    sim, sim_inexact, sim_counts = _features_for(scenario, sim_xyzh.astype(jnp.float32), sim_valid, eval_index,
                                     eval_valid, md, sig, config, config.rollout_batch)
    return log, sim, {"eval_overflow": eval_over, "map_overflow": md.overflow,
                      "map_search_inexact": log_inexact | sim_inexact,
                      **{k: log_counts[k] + sim_counts[k] for k in log_counts}}


# ==================================================================== estimators
def histogram_edges(fc: rc.FeatureConfig) -> np.ndarray:
    """float32 ``[num_bins + 1]`` bin edges formed like ``tf.linspace`` in float32."""
    lo, hi, n = np.float32(fc.min_val), np.float32(fc.max_val), fc.num_bins
    delta = np.float32((hi - lo) / np.float32(n))
    inner = lo + np.arange(1, n, dtype=np.float32) * delta
    return np.concatenate([[lo], inner, [hi]]).astype(np.float32)


def histogram_bins(x: Array, fc: rc.FeatureConfig) -> Array:
    """Bin index of each value, official clipping and edge rules.

    Values are clipped into [min_val, max_val]; ``edges[k] <= x < edges[k+1]``
    gives bin k (the top edge belongs to the last bin); NaN goes to the last
    bin, as ``tf.searchsorted(side='right')`` puts it.
    """
    edges = jnp.asarray(histogram_edges(fc))
    xc = jnp.clip(x, edges[0], edges[-1])
    k = jnp.sum(edges[1:-1] <= xc[..., None], axis=-1).astype(jnp.int32)
    return jnp.where(jnp.isnan(x), fc.num_bins - 1, k)


def histogram_log_likelihood(log_values: Array, sim_values: Array, fc: rc.FeatureConfig) -> Array:
    """Log-likelihood of logged values under the simulated histograms.

    Args:
      log_values: ``[E, T]``; sim_values: ``[R, E, T]`` (bool for Bernoulli).
      fc: the component's ``FeatureConfig``.
    Returns:
      ``[E, T]`` log-probabilities (natural log) of the logged bins, with the
      additive pseudocount in every bin.
    """
    log_bins = histogram_bins(log_values.astype(jnp.float32), fc)
    sim_bins = histogram_bins(sim_values.astype(jnp.float32), fc)
    onehot = jax.nn.one_hot(sim_bins, fc.num_bins, dtype=jnp.float32)  # [R, E, T, K]
    if fc.independent_timesteps:
        counts = jnp.sum(onehot, axis=(0, 2))[:, None, :]  # [E, 1, K]
    else:
        counts = jnp.sum(onehot, axis=0)  # [E, T, K]
    counts = counts + fc.pseudocount
    picked = jnp.take_along_axis(jnp.broadcast_to(counts, (*log_bins.shape, fc.num_bins)),
                                 log_bins[..., None], axis=-1)[..., 0]
    return jnp.log(picked) - jnp.log(jnp.sum(counts, axis=-1))


def _masked_mean(x: Array, mask: Array) -> Array:
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.sum(mask.astype(jnp.float32))


def _indication(feat: wf.Features, name: str, mask: Array) -> Array:
    """bool ``[B, E]``: the per-step event ``name`` happens at a ``mask``ed step of each agent's future."""
    return jnp.any(getattr(feat, name) & mask, axis=-1)


def metrics_from_features(log: wf.Features, sim: wf.Features, mc: rc.MetricsConfig) -> dict:
    """Scene metrics (official definitions) from log and sim features.

    Returns:
      dict of float32 scalars: the ten ``<component>_likelihood`` values,
      ``metametric`` (the composite), ``kinematic`` / ``interactive`` / ``map_based`` buckets,
      ``average_displacement_error``, ``min_average_displacement_error`` and
      the three ``simulated_*_rate`` values.
    """
    ev = log.eval_valid
    lv = log.valid[0] & ev[:, None]  # [E, T]
    speed_v, accel_v = wf.kinematic_validity(lv)
    is_vehicle = (log.object_type == dt.AGENT_TYPE_VEHICLE)[:, None]
    out = {}

    def lik(name: str, mask: Array) -> None:
        ll = histogram_log_likelihood(getattr(log, name)[0], getattr(sim, name), mc.component(name))
        out[f"{name}_likelihood"] = jnp.exp(_masked_mean(ll, mask))

    for name in ("linear_speed", "angular_speed"):
        lik(name, speed_v)
    for name in ("linear_acceleration", "angular_acceleration"):
        lik(name, accel_v)
    lik("distance_to_nearest_object", lv)
    lik("time_to_collision", lv & is_vehicle)
    lik("distance_to_road_edge", lv)

    def bernoulli(component: str, feature: str, mask: Array) -> Array:
        sim_ind = _indication(sim, feature, mask)
        log_ind = _indication(log, feature, mask)[0]
        ll = histogram_log_likelihood(log_ind[:, None], sim_ind[..., None], mc.component(component))[:, 0]
        out[f"{component}_likelihood"] = jnp.exp(_masked_mean(ll, ev))
        return sim_ind

    coll = bernoulli("collision_indication", "collision_per_step", lv)
    off = bernoulli("offroad_indication", "offroad_per_step", lv)
    bernoulli("traffic_light_violation", "traffic_light_violation_per_step", lv & is_vehicle)
    tl_any = _indication(sim, "traffic_light_violation_per_step", lv)

    evr = jnp.broadcast_to(ev, coll.shape)
    out["simulated_collision_rate"] = _masked_mean(coll.astype(jnp.float32), evr)
    out["simulated_offroad_rate"] = _masked_mean(off.astype(jnp.float32), evr)
    out["simulated_traffic_light_violation_rate"] = _masked_mean(tl_any.astype(jnp.float32), evr)
    ade = sim.average_displacement_error
    out["average_displacement_error"] = _masked_mean(ade, evr)
    per_rollout = jnp.sum(jnp.where(evr, ade, 0.0), -1) / jnp.sum(ev.astype(jnp.float32))
    out["min_average_displacement_error"] = jnp.min(per_rollout)

    out["metametric"] = sum(mc.component(c).weight * out[f"{c}_likelihood"] for c in rc.COMPONENTS)
    for bucket, parts in rc.BUCKETS.items():
        wsum = sum(mc.component(c).weight for c in parts)
        if wsum > 0:
            out[bucket] = sum(mc.component(c).weight * out[f"{c}_likelihood"] for c in parts) / wsum
        else:  # the official code refuses a zero-weight bucket; report NaN instead
            out[bucket] = jnp.float32(jnp.nan)
    return out


def compute_metrics(scenario: dt.Scenario, sim_xyzh: Array, config: RealismConfig = DEFAULT_CONFIG) -> dict:
    """WOSAC realism metrics of one scene (jit- and vmap-able; config static).

    Args:
      scenario: one scene (agent arrays ``[A, 91]``).
      sim_xyzh: float32 ``[R, A, 80, 4]`` rollouts in agent slots (x, y, z,
        heading); only slots with ``scenario.agents.sim_mask`` are read.
      config: ``RealismConfig`` (challenge name and compute settings).
    Returns:
      dict of scalars: the official metric fields (see
      ``metrics_from_features``), ``num_eval_agents``, the log's own rates
      (``LOG_RATES``) and the bool flags
      ``eval_overflow`` / ``map_overflow`` / ``map_search_inexact`` (results
      unreliable when set; ``evaluate_scene`` re-runs exhaustively).
    """
    log, sim, flags = compute_features(scenario, sim_xyzh, config)
    out = metrics_from_features(log, sim, config.metrics_config)
    out["num_eval_agents"] = jnp.sum(log.eval_valid)
    return {**out, **log_rates(log), **flags}


# The log's own rates (not official fields): the share of evaluated agents that collide / leave the road in the
# logged future, by the same indications as the simulated rates. Synthetic pedestrians walk on sidewalks, so the
# log is off-road too; WOSAC scores the log's likelihood, not low rates, so rates are read next to these.
LOG_RATES = ("log_collision_rate", "log_offroad_rate")


def log_rates(log: wf.Features) -> dict:
    """``LOG_RATES`` of one scene's log features (float32 scalars)."""
    ev = log.eval_valid
    lv = log.valid[0] & ev[:, None]  # [E, T]

    def rate(feature: str) -> Array:
        return _masked_mean(_indication(log, feature, lv)[0].astype(jnp.float32), ev)

    return {"log_collision_rate": rate("collision_per_step"), "log_offroad_rate": rate("offroad_per_step")}


@functools.cache
def jitted_metrics(config: RealismConfig, batched: bool = False):
    """``jax.jit`` of ``compute_metrics`` for one config (vmapped over scenes if batched)."""
    f = functools.partial(compute_metrics, config=config)
    return jax.jit(jax.vmap(f) if batched else f)


FLAGS = ("eval_overflow", "map_overflow", "map_search_inexact")


@functools.cache
def _jitted_features(config: RealismConfig):
    return jax.jit(functools.partial(compute_features, config=config))


def run_certified(run: Callable[[RealismConfig, np.ndarray | None], dict], scenarios: dt.Scenario,
                  config: RealismConfig, at_least: Sequence[int] = (0, 0, 0)) -> tuple[dict, RealismConfig]:
    """The host entry points' one rule: fit the static sizes, then re-run the inexact scenes exhaustively.

    Fits ``config`` to ``scenarios`` (one scene or a stack; at least ``at_least``), calls
    ``run(config, None)`` for every scene, and calls it again with an
    exhaustive lane search (``lane_block=None``) for the scenes whose pruned
    search could not certify every query (e.g. agents far off the map), whose
    results replace the first ones.

    Args:
      run: ``run(config, rows) -> dict`` of host results of the scenes ``rows``
        (int ``[n]`` positions in ``scenarios``; None: all) under ``config``:
        a pytree whose leaves have a leading scene axis, holding
        ``map_search_inexact`` bool ``[n]``.
      scenarios: the scenes (their sizes fit the config).
      config: ``RealismConfig`` before fitting.
      at_least: sizes to fit at least (``RealismConfig.fitted``).
    Returns:
      (the results of every scene, the config of the last pass: the fitted one,
      or its exhaustive copy when some scenes were re-run).
    """
    config = config.fitted(scenarios, at_least=at_least)
    out = run(config, None)
    redo = np.flatnonzero(out["map_search_inexact"])
    if redo.size and config.lane_block:
        config = dataclasses.replace(config, lane_block=None)
        again = run(config, redo)
        out = jax.tree.map(lambda first, second: _with_rows(first, redo, second), out, again)
    return out, config


def _with_rows(values: np.ndarray, rows: np.ndarray, new: np.ndarray) -> np.ndarray:
    out = np.array(values)  # a copy: host arrays from device_get may be read-only
    out[rows] = new
    return out


def features_checked(scenario: dt.Scenario, sim_xyzh: np.ndarray,
                     config: RealismConfig = DEFAULT_CONFIG) -> tuple[wf.Features, wf.Features, dict, RealismConfig]:
    """Host-side ``compute_features`` of one concrete scene with safe sizes (``run_certified``).

    Returns (log, sim, flags, config used).
    """
    def run(c: RealismConfig, rows) -> dict:
        # Features do not depend on the challenge: one compilation serves both.
        log, sim, flags = jax.device_get(_jitted_features(dataclasses.replace(c, challenge="2025"))(scenario,
                                                                                                   sim_xyzh))
        return jax.tree.map(lambda x: np.asarray(x)[None], {"log": log, "sim": sim, **flags})  # one scene

    out, config = run_certified(run, scenario, config)
    out = jax.tree.map(lambda x: x[0, ...], out)
    return out.pop("log"), out.pop("sim"), out, config


def evaluate_scene(scenario: dt.Scenario, sim_xyzh: np.ndarray, config: RealismConfig = DEFAULT_CONFIG) -> dict:
    """Official-named metrics (Python floats) of one concrete scene; see ``features_checked``."""
    log, sim, flags, config = features_checked(scenario, sim_xyzh, config)
    m = jax.device_get(_jitted_from_features(config.metrics_config)(log, sim))
    return metrics_to_official_dict({**m, **flags})


@functools.cache
def _jitted_from_features(mc: rc.MetricsConfig):
    return jax.jit(functools.partial(metrics_from_features, mc=mc))


def metrics_to_official_dict(metrics: dict) -> dict:
    """Python floats under the official field names plus the three buckets (``names.per_scene()``)."""
    for flag in FLAGS:
        if flag in metrics and bool(np.any(np.asarray(metrics[flag]))):
            raise ValueError(f"realism metric: {flag} is set; raise RealismConfig limits")
    return {k: float(np.asarray(metrics[k])) for k in names.per_scene()}


# ==================================================================== inputs
def align_rollouts(scenario: dt.Scenario, object_id: np.ndarray, x: np.ndarray, y: np.ndarray,
                   z: np.ndarray, heading: np.ndarray, source: str = "<rollouts>") -> np.ndarray:
    """Places rollouts given per object id into the scenario's agent slots.

    Args:
      scenario: one concrete (numpy) scene.
      object_id: int ``[N]`` ids of the simulated objects.
      x, y, z, heading: ``[R, N, 80]``.
      source: name used in error messages.
    Returns:
      float32 ``[R, A, 80, 4]``.
    Raises:
      ValueError when the ids are not exactly the agents to simulate, the
      horizon is not 80 steps, shapes disagree, or a value is not finite.
    """
    a = scenario.agents
    object_id = np.asarray(object_id).astype(np.int64)
    arrs = [np.asarray(v, np.float32) for v in (x, y, z, heading)]
    if arrs[0].ndim != 3 or any(v.shape != arrs[0].shape for v in arrs):
        raise ValueError(f"{source}: x, y, z, heading must share a [R, N, 80] shape, got "
                         f"{[v.shape for v in arrs]}")
    r, n, t = arrs[0].shape
    if t != dt.NUM_FUTURE:
        raise ValueError(f"{source}: horizon is {t} steps, the challenge needs {dt.NUM_FUTURE}")
    if object_id.shape != (n,):
        raise ValueError(f"{source}: object_id has shape {object_id.shape}, expected ({n},)")
    sim_ids = np.asarray(a.id)[np.asarray(a.sim_mask, bool)].astype(np.int64)
    missing = sorted(set(sim_ids.tolist()) - set(object_id.tolist()))
    extra = sorted(set(object_id.tolist()) - set(sim_ids.tolist()))
    if missing or extra or len(set(object_id.tolist())) != n:
        raise ValueError(f"{source}: rollouts must cover exactly the {len(sim_ids)} agents valid at the "
                         f"current step; missing {missing}, not sim agents {extra}, "
                         f"duplicates {n - len(set(object_id.tolist()))}")
    for name, v in zip(("x", "y", "z", "heading"), arrs, strict=False):
        if not np.isfinite(v).all():
            i = tuple(int(k) for k in np.argwhere(~np.isfinite(v))[0])
            raise ValueError(f"{source}: non-finite {name} at [rollout, object, step] = {i}")
    slot = {int(i): s for s, i in enumerate(np.asarray(a.id).tolist()) if i >= 0}
    out = np.zeros((r, a.id.shape[-1], t, 4), np.float32)
    out[:, [slot[int(i)] for i in object_id]] = np.stack(arrs, axis=-1)
    return out

"""The curation step: rank a scene's rollouts by their occupancy-measure distance to the expert.

One jitted function ranks a batch of scenes (:func:`rank_batch`; the curate job
splits the batch over devices with ``train.sharding.map_over_scenes``): sample R
rollouts of each scene from the frozen reference model, compute the features phi of each rollout and of the
expert (logged) future, the per-agent optimal-transport distance between their
occupancy measures, the scene distance (mean over simulated agents), and the
``top_k`` closest (preferred) and farthest (unpreferred) rollouts. The ADE
to the expert is computed too, so the ADE-ranked baselines reuse the same
rollouts. The exact host OT solver runs on the host CPU through a callback,
once per device for all of that device's scenes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from dpa_omf import datatypes as dt
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling
from dpa_omf.preference import distance as dist
from dpa_omf.preference import features as feat
from dpa_omf.preference import ranking


@dataclasses.dataclass(frozen=True)
class CurationConfig:
    """How one scene is ranked (hashable: a static jit argument).

    Attributes:
      rollout: sampling of the R rollouts (R = ``rollout.num_rollouts``).
      ot: the OT distance (solver, feature weights, boundary re-scoring).
      features: feature ranges of phi.
      top_k: K: the K closest rollouts are preferred, the K farthest unpreferred.
    """

    rollout: sampling.RolloutConfig
    ot: dist.OTConfig
    features: feat.FeatureConfig
    top_k: int

    def __post_init__(self):
        if self.top_k < 1 or self.rollout.num_rollouts < 2 * self.top_k:
            raise ValueError(f"curate: num_rollouts={self.rollout.num_rollouts} must be >= 2 * top_k="
                             f"{self.top_k} >= 2")


def featurize_batch(model: mlm.MotionLM, params, scenarios: dt.Scenario, keys: jax.Array, cfg: CurationConfig,
                    states: bool = False) -> dict:
    """The device half of :func:`rank_batch`: rollouts, features of rollouts and expert, ADE.

    Returns a dict of ``tokens [B, R, A, S]``, ``rollout_phi [B, R, A, 80, 5]``,
    ``rollout_valid [B, R, A, 80]``, ``expert_phi [B, A, 80, 5]``,
    ``expert_valid [B, A, 80]``, ``agents [B, A]`` (simulated), ``eval_mask [B, A]``
    (simulated and evaluated by the realism metric), ``ade_distance [B, R]``
    (and the rollouts' states with ``states``): the input of :func:`rank_features`.
    """
    r = jax.vmap(lambda s, k: sampling.sample(model, params, s, k, cfg.rollout))(scenarios, keys)
    phi_r, valid_r = feat.rollout_features_batch(scenarios, r.x, r.y, r.heading, r.vel_x, r.vel_y, cfg.features)
    phi_e, valid_e = feat.expert_features_batch(scenarios, cfg.features)
    agents = scenarios.agents.sim_mask

    def ade(scenario, r, valid_e, agents):
        fut = slice(dt.NUM_HISTORY, dt.NUM_STEPS)
        expert_xy = jnp.stack([scenario.agents.x[:, fut], scenario.agents.y[:, fut]], -1)
        return ranking.ade_distance(jnp.stack([r.x, r.y], -1), expert_xy, valid_e & agents[:, None])[0]

    out = dict(tokens=r.tokens, rollout_phi=phi_r, rollout_valid=valid_r, expert_phi=phi_e, expert_valid=valid_e,
               agents=agents, eval_mask=scenarios.agents.eval_mask & agents,
               ade_distance=jax.vmap(ade)(scenarios, r, valid_e, agents))
    if states:
        out.update(x=r.x, y=r.y, heading=r.heading, vel_x=r.vel_x, vel_y=r.vel_y)
    return out


def rank_features(feats: dict, cfg: CurationConfig) -> dict:
    """The OT half of :func:`rank_batch`: distances and pairs of B scenes from :func:`featurize_batch`.

    Returns ``tokens``, ``ot_distance [B, R]``, ``ade_distance [B, R]``,
    ``preferred [B, K]``, ``unpreferred [B, K]``, ``per_agent [B, R, A]`` (each
    agent's OT cost, 0 where not counted), ``per_agent_counted [B, R, A]`` (the
    agents the scene distance averages: ``distance.counted_agents``), ``eval_mask
    [B, A]`` (the agents the realism metric evaluates), and the states when
    ``feats`` has them. With the exact host solver the OT problems of all B
    scenes go to the host in one callback.
    """
    def score(phi_r, valid_r, phi_e, valid_e, agents):
        scene_d, per_agent = dist.ot_distance(phi_r, valid_r, phi_e, valid_e, agents, cfg.ot)
        pref, unpref = ranking.rank_and_pair(scene_d, cfg.top_k)
        counted = dist.counted_agents(jnp.broadcast_to(valid_r, phi_r.shape[:-1]), valid_e, agents)
        return dict(ot_distance=scene_d, preferred=pref, unpreferred=unpref, per_agent=per_agent,
                    per_agent_counted=counted)

    out = jax.vmap(score)(*(feats[k] for k in ("rollout_phi", "rollout_valid", "expert_phi", "expert_valid",
                                               "agents")))
    keep = ("tokens", "ade_distance", "eval_mask", "x", "y", "heading", "vel_x", "vel_y")
    return {**out, **{k: v for k, v in feats.items() if k in keep}}


@functools.partial(jax.jit, static_argnames=("model", "cfg", "states"))
def rank_batch(model: mlm.MotionLM, params, scenarios: dt.Scenario, keys: jax.Array, cfg: CurationConfig,
               states: bool = False) -> dict:
    """Samples, scores and ranks the rollouts of B scenes at once (the batch axis leads everywhere).

    One program: :func:`featurize_batch` then :func:`rank_features` (the
    curate job runs the two halves as two programs, the first split over the
    devices).

    Args:
      model, params: the frozen reference.
      scenarios: B scenes (``[B, A, 91]`` agents, ...), fitted to the same slots.
      keys: ``[B]`` rollout keys, one per scene (the scene's rollouts depend on its key only).
      cfg: static.
      states: also return the rollouts' states (pictures).
    Returns:
      dict of ``tokens [B, R, A, S]``, ``ot_distance [B, R]``,
      ``ade_distance [B, R]``, ``preferred [B, K]``, ``unpreferred [B, K]``,
      ``per_agent [B, R, A]`` (OT cost per agent), ``per_agent_counted [B, R, A]``,
      ``eval_mask [B, A]``; with ``states`` also
      ``x, y, heading, vel_x, vel_y [B, R, A, 80]``. Each scene's values are
      those it gets alone (a batch of one): the batch changes the speed only.
    """
    return rank_features(featurize_batch(model, params, scenarios, keys, cfg, states), cfg)


def rank_scene(model: mlm.MotionLM, params, scenario: dt.Scenario, key: jax.Array, cfg: CurationConfig) -> dict:
    """:func:`rank_batch` of ONE scene (no batch dim), states included (pictures, the per-scene baseline)."""
    batch = jax.tree.map(lambda v: jnp.asarray(v)[None], scenario)
    out = rank_batch(model, params, batch, jnp.asarray(key)[None], cfg, states=True)
    return jax.tree.map(lambda v: v[0], out)


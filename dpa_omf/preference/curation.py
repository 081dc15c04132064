"""The curation step: rank a scene's rollouts by their occupancy-measure distance to the expert.

One jitted function per scene (:func:`rank_scene`): sample R rollouts from the
frozen reference model, compute the features phi of each rollout and of the
expert (logged) future, the per-agent optimal-transport distance between their
occupancy measures, the scene distance (mean over simulated agents), and the
``num_pairs`` closest (preferred) and farthest (unpreferred) rollouts. The ADE
to the expert is computed too, so the ADE-ranked baselines reuse the same
rollouts. The default exact OT solver runs on the host CPU through a callback.
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
      num_pairs: K: the K closest rollouts are preferred, the K farthest unpreferred.
    """

    rollout: sampling.RolloutConfig
    ot: dist.OTConfig
    features: feat.FeatureConfig
    num_pairs: int

    def __post_init__(self):
        if self.num_pairs < 1 or self.rollout.num_rollouts < 2 * self.num_pairs:
            raise ValueError(f"curate: num_rollouts={self.rollout.num_rollouts} must be >= 2 * num_pairs="
                             f"{self.num_pairs} >= 2")


@functools.partial(jax.jit, static_argnames=("model", "cfg"))
def rank_scene(model: mlm.MotionLM, params, scenario: dt.Scenario, key: jax.Array, cfg: CurationConfig) -> dict:
    """Samples, scores and ranks the rollouts of ONE scene.

    Returns a dict of ``tokens [R, A, S]``, ``ot_distance [R]``,
    ``ade_distance [R]``, ``preferred [K]``, ``unpreferred [K]``,
    ``per_agent [R, A]`` (OT cost per agent) and the rollouts' states
    ``x, y, heading, vel_x, vel_y [R, A, 80]`` (for pictures).
    """
    r = sampling.sample(model, params, scenario, key, cfg.rollout)
    phi_r, valid_r = feat.rollout_features(scenario, r.x, r.y, r.heading, r.vel_x, r.vel_y, cfg.features)
    phi_e, valid_e = feat.expert_features(scenario, cfg.features)
    agents = scenario.agents.sim_mask
    scene_d, per_agent = dist.ot_distance(phi_r, valid_r, phi_e, valid_e, agents, cfg.ot)
    fut = slice(dt.NUM_HISTORY, dt.NUM_STEPS)
    expert_xy = jnp.stack([scenario.agents.x[:, fut], scenario.agents.y[:, fut]], -1)
    ade, _ = ranking.ade_distance(jnp.stack([r.x, r.y], -1), expert_xy, valid_e & agents[:, None])
    pref, unpref = ranking.rank_and_pair(scene_d, cfg.num_pairs)
    return dict(tokens=r.tokens, ot_distance=scene_d, ade_distance=ade, preferred=pref, unpreferred=unpref,
                per_agent=per_agent, x=r.x, y=r.y, heading=r.heading, vel_x=r.vel_x, vel_y=r.vel_y)

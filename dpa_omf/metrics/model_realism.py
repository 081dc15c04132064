"""Realism of a model: sample rollouts of B scenes and score them with the WOSAC metric, in one program.

:func:`sample_and_score` is what the evaluate job, the in-training realism
log and ``bench evaluate`` run (split over devices by the caller: the jobs
use ``train.sharding.map_over_scenes``): ``rollout.num_rollouts`` joint
rollouts per scene (the key of scene b is ``keys[b]``), z held at the
current step (the model is planar), and :func:`dpa_omf.metrics.wosac.compute_metrics`
per scene. A scene's values depend on its scenario, its key and the static
configs only: the batch changes the speed, not the numbers (the per-device
batch shape is fixed by the caller, and ``realism`` is fitted to a fixed
group of scenes, never to a device's share).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dpa_omf import datatypes as dt
from dpa_omf.metrics import wosac
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling


def sim_xyzh(scenario: dt.Scenario, r: sampling.Rollouts) -> jax.Array:
    """``[R, A, 80, 4]`` (x, y, z, heading) of one scene's rollouts; z is held at the current step."""
    z = jnp.broadcast_to(scenario.agents.z[None, :, dt.CURRENT_INDEX, None], r.x.shape)
    return jnp.stack([r.x, r.y, z, r.heading], -1)


@functools.partial(jax.jit, static_argnames=("model", "rollout", "realism"))
def sample_and_score(model: mlm.MotionLM, params, scenarios: dt.Scenario, keys: jax.Array,
                     rollout: sampling.RolloutConfig, realism: wosac.RealismConfig,
                     setting: jax.Array | None = None) -> dict[str, jax.Array]:
    """WOSAC metrics ``[B]`` of B scenes (``[B, ...]`` scenarios, ``[B]`` keys); ``setting``: a traced
    (temperature, top_p) instead of ``rollout``'s (``sampling.sample``).

    Returns ``wosac.compute_metrics``'s dict with a leading scene axis: the
    official fields, the buckets, ``num_eval_agents`` and the flags
    (``map_search_inexact`` etc.: re-run that scene with exhaustive searches).
    """
    def one(scenario, key):
        r = sampling.sample(model, params, scenario, key, rollout, setting)
        return wosac.compute_metrics(scenario, sim_xyzh(scenario, r), realism)

    return jax.vmap(one)(scenarios, keys)

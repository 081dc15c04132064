"""Preference pairs from distances: rank R rollouts, pair the closest with the farthest.

The distances come from :mod:`dpa_omf.preference.distance` (OT between
occupancy measures, DPA-OMF) or from :func:`ade_distance` (average
displacement error, the DPA-ADEF baseline); lower is closer to the expert.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dpa_omf.preference import distance


def rank_and_pair(scene_distances: jax.Array, top_k: int = 16) -> tuple[jax.Array, jax.Array]:
    """Preference pairs from a ranking of R rollouts.

    Args:
      scene_distances: float ``[R]`` (lower = closer to the expert); NaN
        ranks last. R >= 2 * top_k.
      top_k: K.
    Returns:
      ``(preferred [K], unpreferred [K])`` int32 rollout indices: preferred[k]
      is the k-th closest, unpreferred[k] the k-th farthest, so pair k matches
      the k-th best with the k-th worst. Ties break by rollout index (lower
      index counts as closer), so the result is deterministic.
    """
    r = scene_distances.shape[0]
    if r < 2 * top_k:
        raise ValueError(f"need >= {2 * top_k} rollouts for {top_k} pairs, got {r}")
    order = distance.stable_argsort(jnp.asarray(scene_distances))
    return order[:top_k].astype(jnp.int32), order[::-1][:top_k].astype(jnp.int32)


@jax.jit
def ade_distance(rollout_xy: jax.Array, expert_xy: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Average displacement error of rollouts to the expert (DPA-ADEF baseline).

    Args:
      rollout_xy: ``[R, A, T, 2]`` positions, metres.
      expert_xy: ``[A, T, 2]`` logged positions, metres.
      valid: bool ``[A, T]`` (or ``[R, A, T]``) steps where both are valid.
    Returns:
      ``(scene [R], per_agent [R, A])``: per-agent mean L2 error over valid
      steps (0 for agents with none), scene = mean over agents with >= 1
      valid step (NaN if none). Metres.
    """
    valid = jnp.broadcast_to(valid, rollout_xy.shape[:-1])
    err = jnp.linalg.norm(rollout_xy - expert_xy[None], axis=-1)
    n = jnp.sum(valid, -1)
    # Sums in index order: a scene's distances do not depend on the batch it is ranked in.
    per_agent = distance.ordered_sum(jnp.where(valid, err, 0.0), -1) / jnp.maximum(n, 1)
    counted = n > 0
    m = jnp.sum(counted, -1)
    scene = jnp.where(m > 0, distance.ordered_sum(jnp.where(counted, per_agent, 0.0), -1) / jnp.maximum(m, 1),
                      jnp.nan)
    return scene, per_agent

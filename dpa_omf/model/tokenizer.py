"""Acceleration tokens: a 13 x 13 vocabulary, a kinematic integrator and a greedy inverse.

Vocabulary. A token is a pair of bins (longitudinal, lateral) of acceleration in the
agent's own frame (x forward along its heading, y to its left), held constant for
``sub_steps`` 10 Hz steps. ``token = i_lon * num_lat + i_lat``; 13 x 13 = 169 tokens.
Both axes contain an exact 0 bin (index 6 on each axis), so ``ZERO_TOKEN`` = 84 means
"keep the velocity".

Bin ranges (defaults, shared by vehicles, cyclists and pedestrians):

* longitudinal: [-8, +4] m/s^2. Hard braking of passenger cars reaches about -8 m/s^2
  (tyre-limited, ~0.8 g); their strongest acceleration is about +4 m/s^2. Pedestrians and
  cyclists use a small part of the range.
* lateral: [-6, +6] m/s^2 (~0.6 g; ordinary turns are 1-4 m/s^2; a cyclist turning at
  5 m/s on a 5 m radius needs 5 m/s^2).
* spacing: ``a_max * (k / 6) ** bin_power`` for k = 1..6 on each side of 0. With the default
  power 1.5 the bins are dense near 0, where most of the logged mass is (cruising,
  gentle turns, walking): the smallest nonzero bins are +-0.27 / -0.54 m/s^2 (lon) and
  +-0.41 m/s^2 (lat), while the extremes still cover hard braking and sharp turns.

Kinematics (per 0.1 s sub-step, state = position, heading, velocity vector)::

    a_world = R(heading) @ (a_lon, a_lat)
    v'      = v + a_world * dt          (clamped to 0 if it reverses the velocity held at
                                         the start of the token: "brake to a stop")
    p'      = p + (v + v') / 2 * dt
    heading'= atan2(v') if |v'| > speed_threshold else heading

The stop clamp makes "stand still" exactly representable (a braking token ends at rest
instead of oscillating around zero speed), which matters for queues at red lights. Reversing
is still possible from rest (the velocity at the start of the token is then 0), but the heading
then follows the velocity direction, i.e. a reversing car turns around (rare in WOMD; a known
limit of the "heading follows velocity" rule).

Greedy inverse (``tokenize``): token steps are processed in order with ``lax.scan``; at each
step all 169 candidates are integrated from the RECONSTRUCTED state (not the logged one)
over the held sub-steps, and the one minimising the position error (plus small heading and
end-velocity terms, plus a tiny effort tie-break) over the valid logged sub-steps is kept.
Because the next step starts from the reconstruction, the quantisation error is corrected
rather than accumulated.

Validity rule for gaps: token step k spans 10 Hz indices ``b_k = CURRENT_INDEX + k * H`` to
``b_{k+1}``. It is valid iff the agent is simulated (valid at the current step) and is valid
at both ``b_k`` and ``b_{k+1}`` (sub-steps in between may be missing; they just do not enter
the cost). When token k-1 was invalid (a gap) and the agent is valid again at ``b_k``, the
reconstructed state is RE-ANCHORED to the logged state there. Why: integrating through a gap
drifts, and the greedy search would then pick extreme "catch-up" accelerations that are not
the agent's behaviour, teaching the model wrong tokens. Re-anchoring keeps every valid token
a faithful description of logged motion; the price is that the integral of the tokens of an
agent with a gap is not continuous (only invalid tokens sit across the jump, and those are
masked out of every loss). Tokens of invalid steps are the zero-effort best fit (ZERO_TOKEN
when no logged sample is available).

Everything is pure JAX and works on any leading batch shape ``[..., A]``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dpa_omf import datatypes as dt

NUM_LON_BINS = 13
NUM_LAT_BINS = 13
NUM_TOKENS = NUM_LON_BINS * NUM_LAT_BINS  # 169
ZERO_TOKEN = (NUM_LON_BINS // 2) * NUM_LAT_BINS + NUM_LAT_BINS // 2  # 84


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Knobs of the action vocabulary (hashable: usable as a jit static argument).

    Attributes:
      token_hz: token rate in Hz; must divide 10. 2 -> 16 tokens over 8 s, each held 5 sub-steps;
        10 -> 80 tokens, 1 sub-step.
      lon_min: strongest braking, m/s^2 (< 0).
      lon_max: strongest forward acceleration, m/s^2 (> 0).
      lat_max: strongest lateral acceleration, m/s^2 (symmetric).
      bin_power: spacing exponent of the bins on each side of 0 (1 = uniform, >1 = denser near 0).
      speed_threshold: m/s; above it the heading follows the velocity direction, below it is held.
      stop_clamp: a sub-step whose velocity would point against the velocity at the token start
        is set to rest.
      heading_weight: greedy cost weight of (1 - cos heading error), m^2 per unit.
      velocity_weight: greedy cost weight of the squared end-of-token velocity error, s^2.
      effort_weight: tie-break weight of the squared acceleration, (s^2)^2 (tiny).
    """

    token_hz: int = 2
    lon_min: float = -8.0
    lon_max: float = 4.0
    lat_max: float = 6.0
    bin_power: float = 1.5
    speed_threshold: float = 0.5
    stop_clamp: bool = True
    heading_weight: float = 1.0
    velocity_weight: float = 0.05
    effort_weight: float = 1e-6

    def __post_init__(self):
        if self.token_hz <= 0 or 10 % self.token_hz:
            raise ValueError(f"TokenizerConfig.token_hz={self.token_hz} must divide 10")
        if not (self.lon_min < 0 < self.lon_max and self.lat_max > 0):
            raise ValueError("TokenizerConfig needs lon_min < 0 < lon_max and lat_max > 0")
        if self.bin_power <= 0:
            raise ValueError("TokenizerConfig.bin_power must be > 0")

    @property
    def sub_steps(self) -> int:
        """10 Hz steps per token (H)."""
        return 10 // self.token_hz

    @property
    def num_token_steps(self) -> int:
        """Tokens per agent over the 8 s future (S)."""
        return dt.NUM_FUTURE // self.sub_steps

    @property
    def num_tokens(self) -> int:
        return NUM_TOKENS


def _side(a_max: float, power: float, n: int) -> np.ndarray:
    return a_max * (np.arange(1, n + 1) / n) ** power


def bin_centers(cfg: TokenizerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Returns (lon [13], lat [13]) acceleration bin values, m/s^2, increasing, with an exact 0."""
    half = NUM_LON_BINS // 2
    lon = np.concatenate([-_side(-cfg.lon_min, cfg.bin_power, half)[::-1], [0.0],
                          _side(cfg.lon_max, cfg.bin_power, half)])
    lat_side = _side(cfg.lat_max, cfg.bin_power, NUM_LAT_BINS // 2)
    lat = np.concatenate([-lat_side[::-1], [0.0], lat_side])
    return lon.astype(np.float32), lat.astype(np.float32)


def token_accelerations(cfg: TokenizerConfig) -> np.ndarray:
    """``[169, 2]`` (a_lon, a_lat) of every token, m/s^2."""
    lon, lat = bin_centers(cfg)
    grid = np.stack(np.meshgrid(lon, lat, indexing="ij"), -1)  # [13, 13, 2]
    return grid.reshape(NUM_TOKENS, 2)


def token_from_bins(i_lon, i_lat):
    return i_lon * NUM_LAT_BINS + i_lat


# ------------------------------------------------------------------ kinematics
@struct.dataclass
class KinematicState:
    """State of agents, any shape ``[...]``: position (m), heading (rad), velocity (m/s)."""

    x: jax.Array
    y: jax.Array
    heading: jax.Array
    vel_x: jax.Array
    vel_y: jax.Array

    @property
    def speed(self) -> jax.Array:
        return jnp.sqrt(self.vel_x**2 + self.vel_y**2)


def state_at(agents: dt.Agents, t: int | jax.Array) -> KinematicState:
    """The logged state at 10 Hz index ``t``: fields ``[..., A]``."""
    take = lambda v: jnp.take(jnp.asarray(v, jnp.float32), t, axis=-1)
    return KinematicState(take(agents.x), take(agents.y), take(agents.heading),
                          take(agents.vel_x), take(agents.vel_y))


def _sub_step(s: KinematicState, acc: jax.Array, v0: tuple[jax.Array, jax.Array],
              cfg: TokenizerConfig) -> KinematicState:
    """One 0.1 s step with acceleration ``acc [..., 2]`` (lon, lat) in the agent frame."""
    c, sn = jnp.cos(s.heading), jnp.sin(s.heading)
    a_lon, a_lat = acc[..., 0], acc[..., 1]
    vx = s.vel_x + (c * a_lon - sn * a_lat) * dt.DT
    vy = s.vel_y + (sn * a_lon + c * a_lat) * dt.DT
    if cfg.stop_clamp:
        reverses = vx * v0[0] + vy * v0[1] < 0.0
        vx = jnp.where(reverses, 0.0, vx)
        vy = jnp.where(reverses, 0.0, vy)
    x = s.x + 0.5 * (s.vel_x + vx) * dt.DT
    y = s.y + 0.5 * (s.vel_y + vy) * dt.DT
    fast = vx**2 + vy**2 > cfg.speed_threshold**2
    heading = jnp.where(fast, jnp.arctan2(vy, vx), s.heading)
    return KinematicState(x, y, heading, vx, vy)


def step_token(state: KinematicState, tokens: jax.Array, cfg: TokenizerConfig
               ) -> tuple[KinematicState, KinematicState]:
    """Holds ``tokens`` (int, shape of the state fields) for ``cfg.sub_steps`` sub-steps.

    Returns:
      (state at the end of the token, the states after every sub-step with fields
      ``[..., H]``).
    """
    acc = jnp.asarray(token_accelerations(cfg))[tokens]
    v0 = (state.vel_x, state.vel_y)
    subs = []
    s = state
    for _ in range(cfg.sub_steps):  # H <= 10, static: unrolled
        s = _sub_step(s, acc, v0, cfg)
        subs.append(s)
    return s, jax.tree.map(lambda *xs: jnp.stack(xs, -1), *subs)


def integrate(state0: KinematicState, tokens: jax.Array, cfg: TokenizerConfig) -> KinematicState:
    """Integrates tokens ``[..., S]`` from ``state0`` (fields ``[...]``).

    Returns the 10 Hz states after every sub-step, fields ``[..., S * H]`` (the future steps
    ``CURRENT_INDEX + 1 ...``).
    """
    def body(s, tok):
        s, subs = step_token(s, tok, cfg)
        return s, subs

    _, subs = jax.lax.scan(body, state0, jnp.moveaxis(tokens, -1, 0))  # fields [S, ..., H]
    return jax.tree.map(lambda v: jnp.moveaxis(v, 0, -2).reshape(v.shape[1:-1] + (-1,)), subs)


# ------------------------------------------------------------------ greedy inverse
def _interval(v: jax.Array, cfg: TokenizerConfig) -> jax.Array:
    """Future part ``[..., A, 80]`` of a ``[..., A, 91]`` field as ``[S, ..., A, H]``."""
    fut = v[..., dt.CURRENT_INDEX + 1:]
    fut = fut.reshape(fut.shape[:-1] + (cfg.num_token_steps, cfg.sub_steps))
    return jnp.moveaxis(fut, -2, 0)


def _boundaries(v: jax.Array, cfg: TokenizerConfig) -> jax.Array:
    """Field values at token boundaries ``b_0 .. b_S`` as ``[S + 1, ..., A]``."""
    idx = dt.CURRENT_INDEX + cfg.sub_steps * np.arange(cfg.num_token_steps + 1)
    return jnp.moveaxis(v[..., idx], -1, 0)


def _candidate_cost(state: KinematicState, target, cfg: TokenizerConfig) -> jax.Array:
    """Cost ``[..., A, 169]`` of every token from ``state`` (fields ``[..., A]``)."""
    px, py, ph, pvalid, vx_end, vy_end, valid_end = target
    cand = jax.tree.map(lambda v: v[..., None], state)  # [..., A, 1] broadcast over tokens
    toks = jnp.arange(NUM_TOKENS)
    cand = jax.tree.map(lambda v: jnp.broadcast_to(v, v.shape[:-1] + (NUM_TOKENS,)), cand)
    end, subs = step_token(cand, jnp.broadcast_to(toks, cand.x.shape), cfg)  # [..., A, 169, H]
    w = pvalid[..., None, :].astype(jnp.float32)
    pos = (subs.x - px[..., None, :]) ** 2 + (subs.y - py[..., None, :]) ** 2
    head = 1.0 - jnp.cos(subs.heading - ph[..., None, :])
    cost = jnp.sum(w * (pos + cfg.heading_weight * head), -1)
    vel = (end.vel_x - vx_end[..., None]) ** 2 + (end.vel_y - vy_end[..., None]) ** 2
    cost += cfg.velocity_weight * valid_end[..., None] * vel
    acc = jnp.asarray(token_accelerations(cfg))
    return cost + cfg.effort_weight * jnp.sum(acc**2, -1)


@functools.partial(jax.jit, static_argnames="cfg")
def tokenize(agents: dt.Agents, cfg: TokenizerConfig) -> tuple[jax.Array, jax.Array, KinematicState]:
    """Greedy tokenization of logged trajectories.

    Args:
      agents: ``Agents`` with fields ``[..., A, 91]``.
      cfg: the vocabulary.
    Returns:
      tokens: int32 ``[..., A, S]``.
      valid: bool ``[..., A, S]`` (see the module docstring for the rule).
      recon: the reconstructed 10 Hz future states, fields ``[..., A, 80]`` (re-anchored after
        gaps, so it equals ``integrate`` of the tokens for agents without gaps).
    """
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    valid = jnp.asarray(agents.valid, bool)
    sim = valid[..., dt.CURRENT_INDEX]
    targets = (_interval(f32(agents.x), cfg), _interval(f32(agents.y), cfg),
               _interval(f32(agents.heading), cfg), _interval(valid, cfg))
    bvalid = _boundaries(valid, cfg) & sim
    bx, by, bh, bvx, bvy = (_boundaries(f32(getattr(agents, n)), cfg)
                            for n in ("x", "y", "heading", "vel_x", "vel_y"))
    xs = dict(target=targets, vel_end=(bvx[1:], bvy[1:]), valid_start=bvalid[:-1],
              valid_end=bvalid[1:], anchor=KinematicState(bx[:-1], by[:-1], bh[:-1], bvx[:-1], bvy[:-1]))

    def body(carry, x):
        state, prev_valid = carry
        # Re-anchor after a gap (see module docstring).
        reanchor = x["valid_start"] & ~prev_valid
        state = jax.tree.map(lambda a, s: jnp.where(reanchor, a, s), x["anchor"], state)
        px, py, ph, pv = x["target"]
        target = (px, py, ph, pv, x["vel_end"][0], x["vel_end"][1], x["valid_end"].astype(jnp.float32))
        tok = jnp.argmin(_candidate_cost(state, target, cfg), -1).astype(jnp.int32)
        new_state, subs = step_token(state, tok, cfg)
        tok_valid = x["valid_start"] & x["valid_end"]
        return (new_state, tok_valid), (tok, tok_valid, subs)

    state0 = state_at(agents, dt.CURRENT_INDEX)
    init = (state0, jnp.ones_like(sim))  # the current step is the anchor itself
    _, (tokens, tvalid, subs) = jax.lax.scan(body, init, xs)
    tokens, tvalid = jnp.moveaxis(tokens, 0, -1), jnp.moveaxis(tvalid, 0, -1)
    recon = jax.tree.map(lambda v: jnp.moveaxis(v, 0, -2).reshape(v.shape[1:-1] + (-1,)), subs)
    return tokens, tvalid, recon


def future_ade(recon: KinematicState, agents: dt.Agents) -> jax.Array:
    """Mean position error ``[..., A]`` over the valid future steps (m); 0 where none."""
    fut = lambda v: jnp.asarray(v, jnp.float32)[..., dt.CURRENT_INDEX + 1:]
    m = jnp.asarray(agents.valid, bool)[..., dt.CURRENT_INDEX + 1:]
    err = jnp.hypot(recon.x - fut(agents.x), recon.y - fut(agents.y))
    return jnp.sum(jnp.where(m, err, 0.0), -1) / jnp.maximum(jnp.sum(m, -1), 1)

"""The preference distance of DPA-OMF: OT between occupancy measures.

For every rollout r and agent a, the rollout's occupancy measure is uniform over
the agent's valid 10 Hz steps in feature space (phi: [collision, distance to road
boundary, minimum clearance, control effort, speed]) and so is the expert's; the
per-agent distance is the exact (or entropic) optimal-transport cost between the
two, with ground cost

    c(u, v) = || w * (u - v) ||_2          (weight_mode="scale", default)
    c(u, v) = sqrt(sum_k w_k (u_k - v_k)^2) (weight_mode="quadratic")

Decision: the weights multiply the feature differences inside the norm
("scale"), so a weight is an exchange rate between units: with [10, 5, 2, 1, 1] a
collision-status mismatch (1) costs as much as 10 m/s of speed difference, 1 m of
road-boundary distance as 5 m/s. Both modes are the Euclidean distance between
rescaled features (by ``w`` or ``sqrt(w)``), so every solver sees point clouds.

Cost scaling (``feature_scaling="expert_std"``, the default; ``"none"``: raw units): before the
weights, each feature is divided by the scene's expert spread sigma_k (the
standard deviation of the logged feature over the valid steps of the scored
agents, at least ``spread_floor[k]``), so a weight trades standard deviations
rather than units: c(u, v) = || w * (u - v) / sigma ||_2 (``"quadratic"``:
sqrt(w)). :func:`expert_spread` is the one place sigma is computed.

The scene distance is the mean of the per-agent costs over the agents that are in
``agent_mask`` and have at least one valid step in both the rollout and the
expert (NaN when a scene has no such agent).

Solvers (``OTConfig.solver``, one ``Solver`` entry each in ``SOLVERS``: how it is
called, whether it is exact, a host callback, picked by ``auto``): ``exact_host`` (default: exact shortest
augmenting paths compiled for the host CPU, ``ot_host``, called through
``jax.pure_callback``; the fastest exact solver on a CPU and cheap beside
an accelerator too: features go to the host, one float per problem comes
back), ``exact`` (on-device JAX: auction for equal valid counts, exact
successive-shortest-path transport for ragged ones), ``sinkhorn`` (our fused
log-domain kernel), ``ott`` (ott-jax Sinkhorn configured like ours: fixed
iterations, annealed epsilon) and ``ott_default`` (ott-jax defaults, for the
benchmark). ``rescore_window > 0`` re-scores the rollouts ranked near the top /
bottom ``top_k`` boundaries with ``rescore_solver`` (near-ties swap under
approximate OT).

Ranking rollouts by these distances into preference pairs, and the ADE
distance of the DPA-ADEF baseline, live in :mod:`dpa_omf.preference.ranking`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dpa_omf.preference import features as feat
from dpa_omf.preference import ot_device, ot_host

FEATURE_SCALINGS = ("none", "expert_std")
FEATURE_NAMES = feat.FEATURE_NAMES


@dataclasses.dataclass(frozen=True)
class OTConfig:
    """Knobs of the preference distance (hashable: a static jit argument).

    Attributes:
      solver: a name in ``SOLVERS``.
      feature_weights: per-feature weights of the ground cost (order of
        ``FEATURE_NAMES``).
      weight_mode: ``"scale"`` (weights multiply differences inside the norm)
        or ``"quadratic"`` (weights multiply squared differences).
      auction_levels: integer resolution of the auction's costs (largest cost
        of a problem -> this integer); 2**16 keeps int32 prices safe.
      auction_eps_factor: epsilon-scaling factor between auction phases.
      ragged_chunk: problems per chunk of the exact ragged (unequal valid
        counts) solver; ragged problems are gathered into chunks of this size.
      sinkhorn_iterations: fixed number of Sinkhorn iterations.
      sinkhorn_eps_final: final epsilon as a fraction of the mean cost.
      sinkhorn_eps_init: initial epsilon as a fraction of the mean cost.
      sinkhorn_anneal_fraction: fraction of the iterations spent annealing.
      rescore_window: rollouts re-scored exactly on each side of each of the
        two ranking boundaries (0: off) with ``rescore_solver``. Needs ``top_k`` and R >= 2 *
        top_k.
      top_k: preferred / unpreferred set size used by the re-scoring.
      feature_scaling: ``"expert_std"`` (features divided by the scene's expert
        spread, :func:`expert_spread`, before the weights) or ``"none"`` (raw units).
      spread_floor: per-feature lower bound of that spread (feature units).
      rollout_chunk: rollouts per chunk of the Sinkhorn solvers (bounds
        memory and keeps a chunk's [chunk, A, T, T] float32 costs in cache);
        0 = all at once. The exact solver always takes all rollouts at once
        so its ragged problems share one SSP run.
    """

    solver: str = "exact_host"
    feature_weights: tuple[float, ...] = (10.0, 5.0, 2.0, 1.0, 1.0)
    weight_mode: str = "scale"
    auction_levels: int = 2**16
    auction_eps_factor: float = 8.0
    ragged_chunk: int = 1024
    sinkhorn_iterations: int = 100
    sinkhorn_eps_final: float = 0.005
    sinkhorn_eps_init: float = 0.5
    sinkhorn_anneal_fraction: float = 0.7
    rescore_window: int = 0
    rescore_solver: str = "exact_host"
    top_k: int = 16
    rollout_chunk: int = 8
    feature_scaling: str = "expert_std"
    spread_floor: tuple[float, ...] = (1.0, 0.1, 0.1, 0.1, 0.1)

    def __post_init__(self):
        if self.feature_scaling not in FEATURE_SCALINGS:
            raise ValueError(f"OTConfig.feature_scaling must be one of {FEATURE_SCALINGS}, "
                             f"got {self.feature_scaling!r}")
        if len(self.spread_floor) != len(self.feature_weights) or any(f <= 0 for f in self.spread_floor):
            raise ValueError(f"OTConfig.spread_floor needs {len(self.feature_weights)} values > 0, "
                             f"got {self.spread_floor}")
        if self.solver not in SOLVERS:
            raise ValueError(f"OTConfig.solver must be one of {tuple(SOLVERS)}, got {self.solver!r}")
        exact = tuple(n for n, s in SOLVERS.items() if s.exact)
        if self.rescore_solver not in exact:
            raise ValueError(f"OTConfig.rescore_solver must be one of {exact}, got {self.rescore_solver!r}")
        if self.weight_mode not in ("scale", "quadratic"):
            raise ValueError(f"OTConfig.weight_mode must be 'scale' or 'quadratic', got {self.weight_mode!r}")
        if any(w < 0 for w in self.feature_weights):
            raise ValueError(f"OTConfig.feature_weights must be >= 0, got {self.feature_weights}")
        if self.auction_levels > 2**16:
            raise ValueError("OTConfig.auction_levels > 2**16 risks int32 overflow of auction prices")
        if self.sinkhorn_eps_final <= 0 or self.sinkhorn_eps_init < self.sinkhorn_eps_final:
            raise ValueError("OTConfig needs 0 < sinkhorn_eps_final <= sinkhorn_eps_init")


# ----------------------------------------------------------------- ground cost
def scale_features(phi: jax.Array, config: OTConfig, spread: jax.Array | None = None) -> jax.Array:
    """``[..., F]`` features -> ``[..., F]`` rescaled so the cost is plain L2.

    ``spread``: ``[F]`` divisors of the features (``feature_scaling="expert_std"``:
    :func:`expert_spread` of the scene); required then, ignored otherwise.
    """
    w = jnp.asarray(config.feature_weights, jnp.float32)
    if phi.shape[-1] != w.shape[0]:
        raise ValueError(f"features have {phi.shape[-1]} channels, feature_weights {w.shape[0]}")
    factor = w if config.weight_mode == "scale" else jnp.sqrt(w)
    if config.feature_scaling == "expert_std":
        if spread is None:
            raise ValueError("feature_scaling='expert_std' needs the scene's expert spread")
        factor = factor / spread
    return phi * factor


def expert_spread(expert_phi: jax.Array, expert_valid: jax.Array, agent_mask: jax.Array,
                  config: OTConfig) -> jax.Array:
    """Per-feature spread ``[F]`` of a scene's expert: the standard deviation of
    ``expert_phi [A, T, F]`` over the valid steps (``expert_valid [A, T]``) of the
    agents in ``agent_mask [A]``, at least ``config.spread_floor`` (also when no
    step is valid). Sums in index order (:func:`ordered_sum`), so a scene's spread
    does not depend on the batch it is ranked in.
    """
    phi = expert_phi.astype(jnp.float32)
    v = (expert_valid & agent_mask[:, None]).astype(jnp.float32)[..., None]  # [A, T, 1]
    n = ordered_sum(ordered_sum(v, 1), 0)  # [1]
    mean = ordered_sum(ordered_sum(phi * v, 1), 0) / jnp.maximum(n, 1.0)
    var = ordered_sum(ordered_sum(jnp.square(phi - mean) * v, 1), 0) / jnp.maximum(n, 1.0)
    return jnp.maximum(jnp.sqrt(var), jnp.asarray(config.spread_floor, jnp.float32))


def pairwise_cost(x: jax.Array, y: jax.Array) -> jax.Array:
    """Euclidean cost ``[..., N, M]`` between ``x [..., N, F]`` and ``y [..., M, F]``.

    Sums squared differences feature by feature (not |x|^2 + |y|^2 - 2xy,
    whose float32 cancellation costs ~1e-2 near zero distance); XLA fuses the
    loop so no ``[N, M, F]`` array is built.
    """
    sq = 0.0
    for k in range(x.shape[-1]):
        d = x[..., :, None, k] - y[..., None, :, k]
        sq = sq + d * d
    return jnp.sqrt(sq)


# ----------------------------------------------------------------- per-problem solvers
def _plan_cost(plan: jax.Array, c: jax.Array) -> jax.Array:
    return jnp.sum(plan * c, axis=(-2, -1))


def _sinkhorn_plans(c, vx, vy, config: OTConfig):
    def one(c, vx, vy):
        return ot_device.sinkhorn_log(c, vx, vy, config.sinkhorn_iterations, config.sinkhorn_eps_final,
                                      config.sinkhorn_eps_init, config.sinkhorn_anneal_fraction)

    return jax.vmap(one)(c, vx, vy)


def _ott_plans(x, y, vx, vy, config: OTConfig, default: bool):
    # Lazy: ott-jax serves only the comparison solvers ("ott", "ott_default") and
    # takes ~3 s to import, which every curation run would otherwise pay.
    from ott.geometry import costs, epsilon_scheduler, pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    def one(x, y, vx, vy):
        a = vx / jnp.sum(vx)
        b = vy / jnp.sum(vy)
        if default:
            geom = pointcloud.PointCloud(x, y, cost_fn=costs.Euclidean())
            solver = sinkhorn.Sinkhorn()
        else:
            c = pairwise_cost(x, y)
            mask = vx[:, None] & vy[None, :]
            mean_c = jnp.maximum(jnp.sum(jnp.where(mask, c, 0.0)) / (jnp.sum(vx) * jnp.sum(vy)), 1e-6)
            n_anneal = max(int(config.sinkhorn_iterations * config.sinkhorn_anneal_fraction), 1)
            init = config.sinkhorn_eps_init / config.sinkhorn_eps_final
            eps = epsilon_scheduler.Epsilon(
                target=config.sinkhorn_eps_final * mean_c, init=init, decay=init ** (-1.0 / n_anneal))
            geom = pointcloud.PointCloud(x, y, cost_fn=costs.Euclidean(), epsilon=eps)
            # min == max iterations: ott runs a fixed-length scan, no convergence test.
            solver = sinkhorn.Sinkhorn(min_iterations=config.sinkhorn_iterations,
                                       max_iterations=config.sinkhorn_iterations, inner_iterations=1)
        out = solver(linear_problem.LinearProblem(geom, a=a.astype(jnp.float32), b=b.astype(jnp.float32)))
        plan = out.matrix
        return ot_device.round_to_marginals(jnp.where(vx[:, None] & vy[None, :], plan, 0.0), a, b)

    return jax.vmap(one)(x, y, vx, vy)


def _exact(c, vx, vy, config: OTConfig, with_plans: bool):
    """Exact costs ``[P]`` (and plans ``[P, T, T]``): auction where the valid
    counts match, successive shortest paths where they differ (ragged)."""
    _num, t, _ = c.shape
    nx, ny = jnp.sum(vx, -1), jnp.sum(vy, -1)
    ragged = nx != ny
    # Ragged problems get a trivial equal-count stand-in for the auction and
    # are overwritten below.
    vx_eq = jnp.where(ragged[:, None], vy, vx)
    mask = vx_eq[:, :, None] & vy[:, None, :]
    q, _ = jax.vmap(lambda c, m: ot_device.quantize_costs(c, m, config.auction_levels))(c, mask)
    q = jnp.where(ragged[:, None, None], 0, q)
    sched = ot_device.auction_eps_schedule(config.auction_levels, t, config.auction_eps_factor)
    cols = jax.vmap(lambda q, a, b: ot_device.auction_assignment(q, a, b, sched))(q, vx_eq, vy)
    n_eq = jnp.maximum(nx, 1).astype(jnp.float32)
    matched = jnp.take_along_axis(c, jnp.maximum(cols, 0)[..., None], axis=-1)[..., 0]
    cost = jnp.sum(jnp.where(cols >= 0, matched, 0.0), -1) / n_eq
    plans = None
    if with_plans:
        plans = jax.nn.one_hot(cols, t, dtype=jnp.float32) / n_eq[:, None, None]
    return _solve_ragged(cost, plans, c, vx, vy, ragged, config.ragged_chunk)


def _solve_ragged(cost, plans, c, vx, vy, ragged, chunk: int):
    """Overwrites the ragged problems' costs (and plans) with exact SSP ones.

    Ragged problems are gathered ``chunk`` at a time (static shapes), so the
    slower exact transport runs on those only; a while loop over chunks keeps
    it on device whatever their number.
    """
    num = ragged.shape[0]
    chunk = min(chunk, num)
    solve = jax.vmap(ot_device.ssp_transport)
    one = jnp.zeros_like(vx[0]).at[0].set(True)

    def body(state):
        cost, plans, todo = state
        (idx,) = jnp.nonzero(todo, size=chunk, fill_value=num)
        live = idx < num
        safe = jnp.where(live, idx, 0)
        # Dead slots solve a trivial 1 x 1 problem.
        cvx = jnp.where(live[:, None], vx[safe], one)
        cvy = jnp.where(live[:, None], vy[safe], one)
        cc = c[safe]
        p = solve(cc, cvx, cvy)
        dst = jnp.where(live, idx, num)  # out of range: dropped
        cost = cost.at[dst].set(_plan_cost(p, cc), mode="drop")
        if plans is not None:
            plans = plans.at[dst].set(p, mode="drop")
        todo = todo.at[dst].set(False, mode="drop")
        return cost, plans, todo

    cost, plans, _ = jax.lax.while_loop(lambda s: jnp.any(s[2]), body, (cost, plans, ragged))
    return cost, plans


def _host_costs(x, y, vx, vy):
    # Under vmap (batched curation: scenes x ...) the callback gets every problem of the batch in ONE call.
    shape = jax.ShapeDtypeStruct(vx.shape[:1], jnp.float32)
    return jax.pure_callback(_host_costs_any, shape, x, y, vx, vy, vmap_method="broadcast_all")


def _host_costs_any(x, y, vx, vy):
    """``ot_host.solve_costs`` over any leading batch dims (``[..., P, T, F]`` -> ``[..., P]``).

    The arguments arrive as (CPU) ``jax.Array`` s: they become numpy views
    first, since a jax operation here (``np.reshape`` calls the array's own
    ``reshape``) would wait for the device that is waiting for this callback.
    """
    x, y, vx, vy = (np.asarray(v) for v in (x, y, vx, vy))
    t, f = x.shape[-2:]
    cost = ot_host.solve_costs(x.reshape(-1, t, f), y.reshape(-1, t, f), vx.reshape(-1, t), vy.reshape(-1, t))
    return cost.reshape(vx.shape[:-1])


def _host_plans(x, y, vx, vy):
    p, t = vx.shape
    shapes = (jax.ShapeDtypeStruct((p,), jnp.float32), jax.ShapeDtypeStruct((p, t, t), jnp.float32))
    return jax.pure_callback(ot_host.solve_plans, shapes, x, y, vx, vy, vmap_method="sequential")


def _host_solver_costs(x, y, vx, vy, config: OTConfig):
    return _host_costs(x, y, vx, vy)


def _host_solver_plans(x, y, vx, vy, config: OTConfig):
    return _host_plans(x, y, vx, vy)


def _exact_costs(x, y, vx, vy, config: OTConfig):
    return _exact(pairwise_cost(x, y), vx, vy, config, with_plans=False)[0]


def _exact_plans(x, y, vx, vy, config: OTConfig):
    return _exact(pairwise_cost(x, y), vx, vy, config, with_plans=True)


def _sinkhorn(x, y, vx, vy, config: OTConfig):
    c = pairwise_cost(x, y)
    plans = _sinkhorn_plans(c, vx, vy, config)
    return _plan_cost(plans, c), plans


def _ott(x, y, vx, vy, config: OTConfig, default: bool):
    plans = _ott_plans(x, y, vx, vy, config, default=default)
    return _plan_cost(plans, pairwise_cost(x, y)), plans


@dataclasses.dataclass(frozen=True)
class Solver:
    """One OT solver: how it is called and what it needs.

    Attributes:
      plans: ``(x, y, vx, vy, config) -> (cost [P], plan [P, T, T])`` (see ``solve_plans``).
      costs: ``(x, y, vx, vy, config) -> cost [P]``; None: the costs of ``plans``.
      exact: exact costs: may be a ``rescore_solver``, needs no boundary re-scoring, and solves all rollouts
        of a scene in one batch (one ragged SSP run, one host call).
      host: a host callback (``jax.pure_callback``): curation runs it outside the sharded program, and a
        multi-device training step (online DPA-OMF) uses ``device_twin`` instead (the callback can deadlock).
      device_twin: the on-device solver with the same results (host solvers only).
      auto_on: the backends where ``solver='auto'`` picks it.
      why: what ``auto`` says when it picks it.
    """

    plans: object
    costs: object = None
    exact: bool = False
    host: bool = False
    device_twin: str | None = None
    auto_on: tuple[str, ...] = ()
    why: str = ""


SOLVERS: dict[str, Solver] = {
    # exact shortest augmenting paths compiled for the host CPU: the fastest exact solver on a CPU
    "exact_host": Solver(_host_solver_plans, _host_solver_costs, exact=True, host=True, device_twin="exact",
                         auto_on=("cpu",), why="exact host solver"),
    # auction (equal valid counts) + successive shortest paths (ragged), on device: no host round trip
    "exact": Solver(_exact_plans, _exact_costs, exact=True, auto_on=("gpu", "tpu"),
                    why="on-device exact solver (no host round trip)"),
    "sinkhorn": Solver(_sinkhorn),  # our fused log-domain kernel, fixed iterations, annealed epsilon
    "ott": Solver(functools.partial(_ott, default=False)),  # ott-jax Sinkhorn configured like ours
    "ott_default": Solver(functools.partial(_ott, default=True)),  # ott-jax defaults (for the benchmark)
}
EXACT_SOLVERS = tuple(n for n, s in SOLVERS.items() if s.exact)


def config_solvers() -> tuple[str, ...]:
    """What ``curate.solver`` may name: every solver, or ``auto`` (resolved by ``solver_for_backend``)."""
    return ("auto", *SOLVERS)


def solver_for_backend(solver: str, backend: str) -> tuple[str, str]:
    """The solver ``solver`` means on ``backend`` ('cpu', 'gpu', 'tpu') and why.

    ``auto``: the solver whose ``auto_on`` names the backend (the exact host solver on CPU backends, the
    fastest exact solver there: docs/benchmarks.md; on accelerators the on-device exact solver, so no host
    round trip stalls the devices and the preference sets stay exact). Other names are kept.
    """
    if solver != "auto":
        return solver, "named in the config"
    for name, s in SOLVERS.items():
        if backend in s.auto_on:
            return name, f"auto on a {backend} backend: {s.why}"
    raise ValueError(f"no OT solver is picked by 'auto' on a {backend!r} backend: name one of {tuple(SOLVERS)}")


def device_solver(solver: str) -> str:
    """The solver to run inside a multi-device program: ``solver``, or its on-device twin if it is a host
    callback."""
    return SOLVERS[solver].device_twin if SOLVERS[solver].host else solver


def solve_costs(x, y, vx, vy, config: OTConfig):
    """OT costs ``[P]`` for a flat batch of problems (see ``solve_plans``)."""
    s = SOLVERS[config.solver]
    return s.costs(x, y, vx, vy, config) if s.costs is not None else s.plans(x, y, vx, vy, config)[0]


def solve_plans(x, y, vx, vy, config: OTConfig):
    """OT plans for a flat batch of problems.

    Args:
      x: ``[P, T, F]`` scaled rollout features; y: ``[P, T, F]`` scaled expert
        features; vx, vy: bool ``[P, T]`` valid steps (each row >= 1 valid).
    Returns:
      ``(cost [P], plan [P, T, T])``; the plan sums to 1.
    """
    return SOLVERS[config.solver].plans(x, y, vx, vy, config)


# ----------------------------------------------------------------- entry point
def _broadcast_inputs(rollout_phi, rollout_valid, expert_phi, expert_valid, agent_mask):
    r, a, t, f = rollout_phi.shape
    rollout_valid = jnp.broadcast_to(jnp.asarray(rollout_valid, bool), (r, a, t))
    expert_valid = jnp.asarray(expert_valid, bool)
    if expert_phi.shape != (a, t, f) or expert_valid.shape != (a, t):
        raise ValueError(f"expert shapes {expert_phi.shape}, {expert_valid.shape} do not match "
                         f"rollouts {rollout_phi.shape}")
    if agent_mask.shape != (a,):
        raise ValueError(f"agent_mask shape {agent_mask.shape} != ({a},)")
    return rollout_valid, expert_valid


def counted_agents(rollout_valid: jax.Array, expert_valid: jax.Array, agent_mask: jax.Array) -> jax.Array:
    """``[R, A]`` bool: the agents whose per-agent distance counts (in ``agent_mask [A]``, with a valid step
    in the rollout ``rollout_valid [R, A, T]`` and in the expert ``expert_valid [A, T]``)."""
    return agent_mask[None, :] & rollout_valid.any(-1) & expert_valid.any(-1)[None, :]


def _per_agent(rollout_phi, rollout_valid, expert_phi, expert_valid, agent_mask, config):
    """Per-agent costs ``[R, A]`` and the mask of counted agents ``[R, A]``."""
    r, a, t, _ = rollout_phi.shape
    spread = None
    if config.feature_scaling == "expert_std":
        spread = expert_spread(expert_phi, expert_valid, agent_mask, config)
    x = scale_features(rollout_phi.astype(jnp.float32), config, spread)
    y = scale_features(expert_phi.astype(jnp.float32), config, spread)
    counted = counted_agents(rollout_valid, expert_valid, agent_mask)
    # Uncounted agents solve a 1-point problem (finite, then masked out).
    one = jnp.zeros([t], bool).at[0].set(True)
    vx = jnp.where(counted[..., None], rollout_valid, one)
    vy = jnp.where(counted[..., None], expert_valid[None], one)

    chunk = config.rollout_chunk if 0 < config.rollout_chunk < r else r
    if SOLVERS[config.solver].exact:
        # One batch: the ragged problems of all rollouts then share one
        # (slowest-problem-gated) SSP run instead of one run per chunk; the
        # host solver gets every problem in one call (it parallelises itself).
        chunk = r
    if r % chunk:
        chunk = r  # keep shapes uniform; callers pick divisors of R

    def run(args):
        xs, vxs, vys = args
        k = xs.shape[0]
        ys = jnp.broadcast_to(y, (k, a, t, y.shape[-1]))
        cost = solve_costs(xs.reshape(k * a, t, -1), ys.reshape(k * a, t, -1),
                           vxs.reshape(k * a, t), vys.reshape(k * a, t), config)
        return cost.reshape(k, a)

    def split(z):  # [R, ...] -> [R / chunk, chunk, ...]
        return z.reshape((r // chunk, chunk) + z.shape[1:])

    cost = jax.lax.map(run, (split(x), split(vx), split(vy))).reshape(r, a)
    return jnp.where(counted, cost, 0.0), counted


def ordered_sum(x: jax.Array, axis: int = -1) -> jax.Array:
    """``jnp.sum(x, axis)`` accumulated strictly in index order.

    XLA picks a float reduction's order from the array's shape, so a plain
    sum over agents of ``[R, A]`` and of ``[B, R, A]`` (batched curation) can
    differ in the last bit; a left-to-right scan of elementwise adds cannot,
    which keeps every scene's distances independent of the batch it is in.
    """
    x = jnp.moveaxis(x, axis, 0)
    return jax.lax.scan(lambda acc, v: (acc + v, None), jnp.zeros_like(x[0]), x)[0]


def _scene(per_agent, counted):
    n = jnp.sum(counted, -1)
    return jnp.where(n > 0, ordered_sum(per_agent, -1) / jnp.maximum(n, 1), jnp.nan)


@functools.partial(jax.jit, static_argnames=("config",))
def _ot_distance(rollout_phi, rollout_valid, expert_phi, expert_valid, agent_mask, config):
    per_agent, counted = _per_agent(rollout_phi, rollout_valid, expert_phi, expert_valid, agent_mask, config)
    scene = _scene(per_agent, counted)
    if config.rescore_window > 0 and not SOLVERS[config.solver].exact:
        scene, per_agent = _rescore_boundaries(scene, per_agent, rollout_phi, rollout_valid,
                                               expert_phi, expert_valid, agent_mask, config)
    return scene, per_agent


def ot_distance(rollout_phi, rollout_valid, expert_phi, expert_valid, agent_mask,
                config: OTConfig = OTConfig()):
    """Per-agent and scene OT distances of R rollouts to the expert.

    Args:
      rollout_phi: float ``[R, A, T, F]`` rollout features (F = 5).
      rollout_valid: bool ``[R, A, T]`` or ``[A, T]`` valid rollout steps.
      expert_phi: float ``[A, T, F]`` expert (logged) features.
      expert_valid: bool ``[A, T]`` valid expert steps.
      agent_mask: bool ``[A]`` agents to score (e.g. simulated agents).
      config: ``OTConfig``.
    Returns:
      ``(scene [R], per_agent [R, A])`` float32: scene = mean of per_agent
      over counted agents (in agent_mask, valid somewhere in both), NaN for a
      scene with none; per_agent is 0 for agents not counted. Units: the
      weighted feature units of the ground cost.
    """
    rollout_phi = jnp.asarray(rollout_phi)
    rv, ev = _broadcast_inputs(rollout_phi, rollout_valid, jnp.asarray(expert_phi), expert_valid,
                               jnp.asarray(agent_mask, bool))
    return _ot_distance(rollout_phi, rv, jnp.asarray(expert_phi), ev, jnp.asarray(agent_mask, bool),
                        config)


@functools.partial(jax.jit, static_argnames=("config",))
def _coupling(rollout_phi, rollout_valid, expert_phi, expert_valid, spread, config):
    x = scale_features(rollout_phi.astype(jnp.float32), config, spread)[None]
    y = scale_features(expert_phi.astype(jnp.float32), config, spread)[None]
    cost, plan = solve_plans(x, y, rollout_valid[None], expert_valid[None], config)
    return cost[0], plan[0]


def ot_coupling(rollout_phi, rollout_valid, expert_phi, expert_valid, config: OTConfig = OTConfig(),
                spread=None):
    """Coupling matrix of one agent (the paper's Figure-2 heatmap).

    Args:
      rollout_phi: ``[T, F]``; rollout_valid: bool ``[T]``;
      expert_phi: ``[T, F]``; expert_valid: bool ``[T]`` (each >= 1 valid).
      spread: ``[F]``, the scene's :func:`expert_spread` (``feature_scaling="expert_std"`` only).
    Returns:
      ``(cost, plan [T, T])``: plan[i, j] is the mass moved from rollout step
      i to expert step j (zero rows / columns at invalid steps; sums to 1).
    """
    rv, ev = jnp.asarray(rollout_valid, bool), jnp.asarray(expert_valid, bool)
    if not (bool(rv.any()) and bool(ev.any())):
        raise ValueError("ot_coupling needs at least one valid step on each side")
    return _coupling(jnp.asarray(rollout_phi), rv, jnp.asarray(expert_phi), ev,
                     None if spread is None else jnp.asarray(spread, jnp.float32), config)


# ----------------------------------------------------------------- boundary re-scoring
def boundary_ranks(num_rollouts: int, top_k: int, window: int) -> np.ndarray:
    """Static rank positions re-scored exactly: ``window`` each side of the
    top-``top_k`` and bottom-``top_k`` boundaries (deduplicated)."""
    if num_rollouts < 2 * top_k:
        raise ValueError(f"need >= {2 * top_k} rollouts for {top_k} pairs, got {num_rollouts}")
    lo = np.arange(top_k - window, top_k + window)
    hi = np.arange(num_rollouts - top_k - window, num_rollouts - top_k + window)
    ranks = np.unique(np.concatenate([lo, hi]))
    return ranks[(ranks >= 0) & (ranks < num_rollouts)]


def _rescore_boundaries(scene, per_agent, rollout_phi, rollout_valid, expert_phi, expert_valid,
                        agent_mask, config: OTConfig):
    """Replaces approximate distances of rollouts near the boundaries by exact ones."""
    r = scene.shape[0]
    ranks = boundary_ranks(r, config.top_k, config.rescore_window)
    order = stable_argsort(scene)
    sel = order[jnp.asarray(ranks)]
    exact_cfg = dataclasses.replace(config, solver=config.rescore_solver, rescore_window=0, rollout_chunk=0)
    pa, counted = _per_agent(rollout_phi[sel], rollout_valid[sel], expert_phi, expert_valid, agent_mask,
                             exact_cfg)
    per_agent = per_agent.at[sel].set(pa)
    scene = scene.at[sel].set(_scene(pa, counted))
    return scene, per_agent


# ----------------------------------------------------------------- order
def stable_argsort(d: jax.Array) -> jax.Array:
    """Ascending order of ``[R]`` distances; ties by index, NaN last."""
    key = jnp.where(jnp.isnan(d), jnp.inf, d)
    return jnp.argsort(key, stable=True)

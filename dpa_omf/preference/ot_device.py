"""Batched optimal-transport kernels between small uniform point sets (pure JAX).

Every kernel here solves ONE problem and is meant to be ``jax.vmap``-ed over
thousands of problems (rollouts x agents). A problem is

  c:          float32 ``[N, M]`` ground cost (padded; entries touching an
              invalid point are ignored),
  row_valid:  bool ``[N]``, the valid support points of the first measure,
  col_valid:  bool ``[M]``, the valid support points of the second measure,

and the measures are uniform over their valid points: ``a_i = 1/n`` on the n
valid rows, ``b_j = 1/m`` on the m valid columns. Padding with zero weight is
how ragged supports are handled (the ott-jax convention).

Kernels:

* ``auction_assignment``: exact when ``n == m`` (the OT problem between two
  uniform n-point measures is an assignment problem: Birkhoff). Gauss-Seidel
  forward auction with epsilon scaling on integerised costs; with the costs
  multiplied by ``N + 1`` and a final epsilon of 1 the assignment is optimal for
  the integer costs (Bertsekas: an assignment satisfying epsilon-complementary
  slackness is within ``n * eps`` of optimal, and ``n * eps < 1`` unit).
* ``ssp_transport``: exact for any ``n, m`` (the transportation problem with
  integer supplies ``m/g`` and demands ``n/g``, g = gcd(n, m)), by successive
  shortest augmenting paths with Dijkstra on reduced costs (dense, O((n+m)^2)
  per path). Slower than the auction; used for the ragged problems only.
* ``sinkhorn_log``: entropic OT, log-domain, a fixed number of iterations with
  epsilon annealed geometrically down to ``eps_final_rel * mean cost``; the
  returned plan is rounded onto the feasible set (Altschuler et al. 2017) so its
  cost is an upper bound of the exact cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_INT_BIG = np.int32(2**30)


# ----------------------------------------------------------------- helpers
def quantize_costs(c: jax.Array, mask: jax.Array, levels: int) -> tuple[jax.Array, jax.Array]:
    """Integerises one cost matrix for the auction.

    Args:
      c: float ``[N, M]`` costs.
      mask: bool ``[N, M]`` valid entries.
      levels: the largest valid cost is mapped to this integer.
    Returns:
      ``(q, scale)``: int32 ``[N, M]`` costs ``round(c * scale)`` (0 off the
      mask) and the float scale (so ``q / scale ~ c``).
    """
    cmax = jnp.max(jnp.where(mask, c, 0.0))
    scale = levels / jnp.maximum(cmax, 1e-12)
    q = jnp.where(mask, jnp.round(c * scale), 0.0).astype(jnp.int32)
    return q, scale


def auction_eps_schedule(levels: int, size: int, factor: float) -> np.ndarray:
    """Static epsilon schedule (integer units of the (N+1)-scaled costs).

    Starts at ``levels * (size + 1) / factor`` and divides by ``factor`` down
    to 1, the value at which the assignment is exactly optimal.
    """
    eps = []
    e = float(levels) * (size + 1) / factor
    while e > 1.0:
        eps.append(int(e))
        e /= factor
    eps.append(1)
    return np.asarray(eps, np.int32)


# ----------------------------------------------------------------- auction
def auction_assignment(
    q: jax.Array, row_valid: jax.Array, col_valid: jax.Array, eps_schedule: np.ndarray
) -> jax.Array:
    """Exact min-cost assignment between the valid rows and valid columns.

    Requires as many valid rows as valid columns.

    Args:
      q: int32 ``[N, N]`` integer costs (``quantize_costs``), at most
        ``2**16`` so that prices stay far from int32 overflow.
      row_valid, col_valid: bool ``[N]`` with equal counts.
      eps_schedule: int32 ``[P]`` decreasing epsilons ending at 1
        (``auction_eps_schedule``), in units of ``q * (N + 1)``.
    Returns:
      int32 ``[N]``: the column assigned to each valid row (-1 on invalid
      rows).
    """
    n = q.shape[0]
    cq = q * (n + 1)  # one unit of q is now > n * eps_final: exact optimality
    cap = jnp.max(cq) + 1  # bids never need to exceed the cost range
    idx = jnp.arange(n)

    def bid(state, eps):
        price, col_of_row, row_of_col = state
        i = jnp.argmax(row_valid & (col_of_row < 0))  # Gauss-Seidel: one bidder
        val = jnp.where(col_valid, cq[i] + price, _INT_BIG)
        j = jnp.argmin(val)
        best = val[j]
        second = jnp.min(jnp.where(idx == j, _INT_BIG, val))
        incr = jnp.minimum(second - best, cap) + eps
        prev = row_of_col[j]  # evicted owner (-1: none)
        col_of_row = jnp.where(idx == prev, -1, col_of_row).at[i].set(j)
        row_of_col = row_of_col.at[j].set(i)
        price = price.at[j].add(incr)
        return price, col_of_row, row_of_col

    def phase(price, eps):
        # Prices are shift invariant: renormalise so they stay small.
        price = price - jnp.min(jnp.where(col_valid, price, _INT_BIG))
        price = jnp.where(col_valid, price, 0)
        init = (price, jnp.full([n], -1, jnp.int32), jnp.full([n], -1, jnp.int32))
        price, col_of_row, _ = jax.lax.while_loop(
            lambda s: jnp.any(row_valid & (s[1] < 0)), lambda s: bid(s, eps), init
        )
        return price, col_of_row

    _, cols = jax.lax.scan(phase, jnp.zeros([n], jnp.int32), jnp.asarray(eps_schedule))
    return jnp.where(row_valid, cols[-1], -1)


# ----------------------------------------------------------------- transportation (SSP)
# Kept whole (~100 lines): one JAX kernel of nested while loops (augment ->
# Dijkstra -> path walk / push) whose bodies close over the same cost matrix,
# masks and index ranges; it already reads as named inner functions, one per phase.
def ssp_transport(c: jax.Array, row_valid: jax.Array, col_valid: jax.Array) -> jax.Array:
    """Exact uniform-to-uniform transport plan by successive shortest paths.

    Solves min sum_ij x_ij c_ij over integer flows with row sums ``m/g`` on
    the n valid rows and column sums ``n/g`` on the m valid columns
    (g = gcd(n, m)); the OT plan is ``x / (n * m / g)``.

    Args:
      c: float32 ``[N, M]`` costs.
      row_valid: bool ``[N]``; col_valid: bool ``[M]`` (each with >= 1 valid).
    Returns:
      float32 ``[N, M]`` optimal plan (sums to 1).
    """
    nr, nc = c.shape
    n = jnp.sum(row_valid).astype(jnp.int32)
    m = jnp.sum(col_valid).astype(jnp.int32)
    g = jnp.gcd(n, m)
    supply0 = jnp.where(row_valid, m // g, 0)
    demand0 = jnp.where(col_valid, n // g, 0)
    inf = jnp.float32(jnp.inf)
    c = jnp.where(row_valid[:, None] & col_valid[None, :], c, 0.0)
    # Potentials: forward arc reduced cost c_ij + pr_i - pc_j >= 0.
    pr = jnp.zeros([nr], jnp.float32)
    pc = jnp.where(col_valid, jnp.min(jnp.where(row_valid[:, None], c, inf), axis=0), 0.0)
    ridx, cidx = jnp.arange(nr), jnp.arange(nc)

    def dijkstra(x, supply, demand, pr, pc):
        """Multi-source shortest path from rows with supply to a column with demand.

        Stops at once when no supply is left: under vmap a finished problem
        still runs this body, and its loop must not spin forever.
        """
        dr = jnp.where(supply > 0, 0.0, inf)
        dc = jnp.full([nc], inf)
        init = dict(dr=dr, dc=dc, done_r=~row_valid, done_c=~col_valid,
                    pred_r=jnp.full([nr], -1), pred_c=jnp.full([nc], -1), sink=jnp.int32(-1))

        def step(s):
            cand_r = jnp.where(s["done_r"], inf, s["dr"])
            cand_c = jnp.where(s["done_c"], inf, s["dc"])
            i, j = jnp.argmin(cand_r), jnp.argmin(cand_c)
            take_row = cand_r[i] <= cand_c[j]
            is_sink = ~take_row & (demand[j] > 0)
            # Scan row i: forward arcs to every column.
            d_i = s["dr"][i]
            nd_c = jnp.maximum(d_i + c[i] + pr[i] - pc, d_i)
            upd_c = take_row & ~s["done_c"] & (nd_c < s["dc"])
            # Scan column j: backward arcs to rows that send it flow.
            d_j = s["dc"][j]
            nd_r = jnp.maximum(d_j - c[:, j] + pc[j] - pr, d_j)
            upd_r = ~take_row & ~is_sink & (x[:, j] > 0) & ~s["done_r"] & (nd_r < s["dr"])
            return dict(
                dr=jnp.where(upd_r, nd_r, s["dr"]),
                dc=jnp.where(upd_c, nd_c, s["dc"]),
                done_r=s["done_r"] | (take_row & (ridx == i)),
                done_c=s["done_c"] | (~take_row & ~is_sink & (cidx == j)),
                pred_r=jnp.where(upd_r, j, s["pred_r"]),
                pred_c=jnp.where(upd_c, i, s["pred_c"]),
                sink=jnp.where(is_sink, j, s["sink"]),
            )

        active = jnp.any(supply > 0)
        s = jax.lax.while_loop(lambda s: active & (s["sink"] < 0), step, init)
        return s

    def augment(state):
        x, supply, demand, pr, pc = state
        s = dijkstra(x, supply, demand, pr, pc)
        t = s["sink"]
        big_d = s["dc"][t]
        pr = pr + jnp.where(row_valid, jnp.minimum(s["dr"], big_d), 0.0)
        pc = pc + jnp.where(col_valid, jnp.minimum(s["dc"], big_d), 0.0)

        # Walk the path back from the sink: col <- row (forward) <- col (backward) ...
        def walk(carry):
            j, delta, _ = carry
            i = s["pred_c"][j]
            jb = s["pred_r"][i]
            delta = jnp.where(jb >= 0, jnp.minimum(delta, x[i, jb]), jnp.minimum(delta, supply[i]))
            return jb, delta, i

        _, delta, src = jax.lax.while_loop(lambda cr: cr[0] >= 0, walk, (t, demand[t], jnp.int32(-1)))

        def push(carry):
            j, x = carry
            i = s["pred_c"][j]
            jb = s["pred_r"][i]
            x = x.at[i, j].add(delta)
            x = jnp.where(jb >= 0, x.at[i, jnp.maximum(jb, 0)].add(-delta), x)
            return jb, x

        _, x = jax.lax.while_loop(lambda cr: cr[0] >= 0, push, (t, x))
        supply = supply.at[src].add(-delta)
        demand = demand.at[t].add(-delta)
        return x, supply, demand, pr, pc

    x0 = jnp.zeros([nr, nc], jnp.int32)
    x, *_ = jax.lax.while_loop(
        lambda st: jnp.any(st[1] > 0), augment, (x0, supply0, demand0, pr, pc)
    )
    total = (n // g) * m
    return x.astype(jnp.float32) / total.astype(jnp.float32)


# ----------------------------------------------------------------- Sinkhorn
def sinkhorn_log(
    c: jax.Array,
    row_valid: jax.Array,
    col_valid: jax.Array,
    num_iterations: int,
    eps_final_rel: float,
    eps_init_rel: float,
    anneal_fraction: float,
) -> jax.Array:
    """Entropic OT plan, log-domain, fixed iterations, annealed epsilon.

    Epsilon decays geometrically from ``eps_init_rel`` to ``eps_final_rel``
    times the mean valid cost over the first ``anneal_fraction`` of the
    iterations and stays there. A fixed count (no convergence test) keeps a
    vmapped batch from iterating until its slowest problem converges.

    Returns:
      float32 ``[N, M]`` plan, rounded onto the transport polytope (exact
      marginals), so ``sum(plan * c)`` >= the exact OT cost.
    """
    n = jnp.sum(row_valid)
    m = jnp.sum(col_valid)
    la = jnp.where(row_valid, -jnp.log(n), -jnp.inf)
    lb = jnp.where(col_valid, -jnp.log(m), -jnp.inf)
    mask = row_valid[:, None] & col_valid[None, :]
    c = jnp.where(mask, c, 0.0)
    mean_c = jnp.maximum(jnp.sum(c) / (n * m), 1e-6)
    eps_final = eps_final_rel * mean_c
    n_anneal = max(int(num_iterations * anneal_fraction), 1)
    decay = (eps_final_rel / eps_init_rel) ** (1.0 / n_anneal)

    def body(t, fg):
        f, g = fg
        eps = jnp.maximum(eps_init_rel * mean_c * decay**t, eps_final)
        f = -eps * jax.nn.logsumexp(lb[None, :] + (g[None, :] - c) / eps, axis=1)
        f = jnp.where(row_valid, f, 0.0)
        g = -eps * jax.nn.logsumexp(la[:, None] + (f[:, None] - c) / eps, axis=0)
        g = jnp.where(col_valid, g, 0.0)
        return f, g

    f, g = jax.lax.fori_loop(0, num_iterations, body, (jnp.zeros_like(la), jnp.zeros_like(lb)))
    logp = la[:, None] + lb[None, :] + (f[:, None] + g[None, :] - c) / eps_final
    plan = jnp.where(mask, jnp.exp(logp), 0.0)
    return round_to_marginals(plan, jnp.exp(la), jnp.exp(lb))


def round_to_marginals(plan: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Projects a nonnegative ``[N, M]`` plan onto {P >= 0: P1 = a, P^T 1 = b}.

    Altschuler, Weed, Rigollet (2017), Algorithm 2: scale rows down, scale
    columns down, then add the rank-one correction of the remaining mass.
    """
    x = jnp.minimum(a / jnp.maximum(plan.sum(1), 1e-30), 1.0)
    plan = plan * x[:, None]
    y = jnp.minimum(b / jnp.maximum(plan.sum(0), 1e-30), 1.0)
    plan = plan * y[None, :]
    err_a = a - plan.sum(1)
    err_b = b - plan.sum(0)
    return plan + err_a[:, None] * err_b[None, :] / jnp.maximum(jnp.sum(err_a), 1e-30)

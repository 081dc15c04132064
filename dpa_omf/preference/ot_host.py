"""Exact batched OT on the host CPU: compiled (numba) shortest-augmenting-path kernels.

The accelerator path of the preference distance is JAX (``ot_kernels``:
auction + SSP, Sinkhorn). On a CPU those vectorised kernels lose to a plain
loop of scipy's ``linear_sum_assignment``: a batch of 5,000 data-dependent
80 x 80 assignment problems does not vectorise well, because every problem
waits for the slowest one. This module solves the same problems one by one,
the way scipy does, but compiled, without per-problem Python overhead, with the
ground cost computed in place, and in parallel over problems (``numba.prange``).

Problem form (as ``ot_kernels``): rollout points ``x [P, T, F]`` and expert
points ``y [P, T, F]`` (already scaled so the cost is plain L2), valid masks
``vx, vy [P, T]`` (each row >= 1 valid), uniform measures on the valid points.

* ``n == m`` valid points: OT between two uniform n-point measures is an
  assignment problem (Birkhoff); solved exactly by the shortest augmenting
  path algorithm (Jonker-Volgenant / Crouse 2016, the algorithm behind
  ``scipy.optimize.linear_sum_assignment``), O(n^3), float64 costs.
* ``n != m`` (ragged: an expert track that starts late or ends early): the
  transportation problem with integer supplies ``m/g`` per rollout point and
  demands ``n/g`` per expert point (g = gcd(n, m)), solved exactly by
  successive shortest paths with Dijkstra on reduced costs (multi-source,
  stopped at the first sink reached, bottleneck augmentation).

Both return the exact optimum up to float64 round-off. ``solve_costs`` is
called from jitted code through ``jax.pure_callback`` (``distance.py``,
solver ``"exact_host"``); numba compiles on first use and caches the machine
code next to this file.
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np

_INF = np.inf
# numba's default (workqueue) threading layer must not be entered from two threads at once;
# JAX may run host callbacks of different computations concurrently.
_LOCK = threading.Lock()


@numba.njit(cache=True, nogil=True)
def _cost_matrix(x, y, ix, iy, out):
    n, m, f = ix.shape[0], iy.shape[0], x.shape[1]
    for a in range(n):
        for b in range(m):
            s = 0.0
            for k in range(f):
                d = np.float64(x[ix[a], k]) - np.float64(y[iy[b], k])
                s += d * d
            out[a, b] = math.sqrt(s)


@numba.njit(cache=True, nogil=True)
def _augmenting_row_reduction(c, n, flow, supply, demand, v, u):
    """Jonker-Volgenant augmenting row reduction (two passes) for the unit
    (assignment) case, after the column reduction: free rows take their best
    column at the price of the second best, possibly evicting its row. Keeps
    ``c_ij - v_j >= u_i = c_i,col(i) - v_col(i)`` for assigned rows; returns the
    number of rows it assigned."""
    col4row = np.full(n, -1, np.int64)
    row4col = np.full(n, -1, np.int64)
    free = np.empty(n, np.int64)
    num_free = 0
    for i in range(n):
        if supply[i] > 0:
            free[num_free] = i
            num_free += 1
        for j in range(n):
            if flow[j, i] > 0:
                col4row[i] = j
                row4col[j] = i
    start_free = num_free
    if n >= 2:
        for _ in range(2):
            k = 0
            prev = num_free
            num_free = 0
            rr = 0  # bounds the immediate re-processing (float near-ties can cycle)
            while k < prev:
                i = free[k]
                k += 1
                rr += 1
                u1 = c[i, 0] - v[0]
                j1 = 0
                u2 = _INF
                j2 = -1
                for j in range(1, n):
                    h = c[i, j] - v[j]
                    if h < u2:
                        if h >= u1:
                            u2 = h
                            j2 = j
                        else:
                            u2 = u1
                            u1 = h
                            j2 = j1
                            j1 = j
                i0 = row4col[j1]
                lowers = u1 < u2
                if lowers:
                    v[j1] -= u2 - u1
                elif i0 != -1:
                    j1 = j2
                    i0 = row4col[j2]
                row4col[j1] = i
                col4row[i] = j1
                if i0 != -1:
                    col4row[i0] = -1
                    if lowers and rr < k * n:
                        k -= 1
                        free[k] = i0
                    else:
                        free[num_free] = i0
                        num_free += 1
    assigned = 0
    for i in range(n):
        for j in range(n):
            flow[j, i] = 0
    for j in range(n):
        demand[j] = 1
    for i in range(n):
        j = col4row[i]
        supply[i] = 1
        if j != -1:
            flow[j, i] = 1
            supply[i] = 0
            demand[j] = 0
            u[i] = c[i, j] - v[j]
            assigned += 1
    return assigned - (n - start_free)


@numba.njit(cache=True, nogil=True)
def _transport_sap(c, n, m, flow):
    """Exact transportation between n rows with supply m/g and m columns with
    demand n/g (uniform measures, g = gcd) by shortest augmenting paths from
    one source row at a time (the assignment algorithm generalised to
    capacities: with n == m it is exactly the Crouse / scipy algorithm).

    Invariants: reduced costs ``c - u - v >= 0`` everywhere and ``== 0`` where
    flow > 0. Start: column reduction (``v_j = min_i c_ij``) and greedy flow on
    the tight edges. Fills the integer ``flow`` (indexed [column, row], so a column's rows are contiguous); returns sum(flow * c) / mass.
    """
    g = math.gcd(n, m)
    supply = np.full(n, m // g, np.int64)
    demand = np.full(m, n // g, np.int64)
    mass = n * (m // g)
    u = np.zeros(n)
    v = np.empty(m)
    for i in range(n):
        for j in range(m):
            flow[j, i] = 0
    left = mass
    for j in range(m):  # column reduction + greedy flow on the tight edges
        best = _INF
        bi = 0
        for i in range(n):
            if c[i, j] < best:
                best = c[i, j]
                bi = i
        v[j] = best
        amount = min(supply[bi], demand[j])
        flow[j, bi] += amount
        supply[bi] -= amount
        demand[j] -= amount
        left -= amount
    if n == m:  # unit supplies and demands: an assignment problem
        left -= _augmenting_row_reduction(c, n, flow, supply, demand, v, u)
    shortest = np.empty(m)
    path = np.empty(m, np.int64)  # row from which a column was reached
    via = np.empty(n, np.int64)  # column through which a row was reached (-1: the source)
    drow = np.empty(n)
    remaining = np.empty(m, np.int64)
    sr = np.empty(n, np.bool_)
    sc = np.empty(m, np.bool_)
    stack = np.empty(n, np.int64)
    cur = 0
    while left > 0:
        while supply[cur] == 0:
            cur += 1
        for j in range(m):
            shortest[j] = _INF
            path[j] = -1
            remaining[j] = m - 1 - j
            sc[j] = False
        for i in range(n):
            sr[i] = False
        best = _INF  # make the source's arcs non-negative
        for j in range(m):
            if c[cur, j] - v[j] < best:
                best = c[cur, j] - v[j]
        u[cur] = best
        num_rem = m
        min_val = 0.0
        sink = -1
        via[cur] = -1
        drow[cur] = 0.0
        sr[cur] = True
        top = 1
        stack[0] = cur
        while sink == -1:
            # relax from the rows reached at distance min_val
            while top > 0:
                top -= 1
                i = stack[top]
                base = drow[i] - u[i]
                for it in range(num_rem):
                    j = remaining[it]
                    r = base + c[i, j] - v[j]
                    if r < shortest[j]:
                        path[j] = i
                        shortest[j] = r
            index = -1
            lowest = _INF
            for it in range(num_rem):
                j = remaining[it]
                if shortest[j] < lowest or (shortest[j] == lowest and demand[j] > 0):
                    lowest = shortest[j]
                    index = it
            min_val = lowest
            j = remaining[index]
            sc[j] = True
            num_rem -= 1
            remaining[index] = remaining[num_rem]
            if demand[j] > 0:
                sink = j
            else:  # backward (tight) arcs to the rows shipping to j
                for i in range(n):
                    if flow[j, i] > 0 and not sr[i]:
                        sr[i] = True
                        via[i] = j
                        drow[i] = min_val
                        stack[top] = i
                        top += 1
        for i in range(n):
            if sr[i]:
                u[i] += min_val - drow[i]
        for j in range(m):
            if sc[j]:
                v[j] -= min_val - shortest[j]
        amount = min(supply[cur], demand[sink])
        j = sink
        while True:
            i = path[j]
            jb = via[i]
            if jb == -1:
                break
            amount = min(amount, flow[jb, i])
            j = jb
        j = sink
        while True:
            i = path[j]
            flow[j, i] += amount
            jb = via[i]
            if jb == -1:
                break
            flow[jb, i] -= amount
            j = jb
        supply[cur] -= amount
        demand[sink] -= amount
        left -= amount
    total = 0.0
    for i in range(n):
        for j in range(m):
            if flow[j, i] > 0:
                total += flow[j, i] * c[i, j]
    return total / mass


@numba.njit(cache=True, nogil=True)
def _solve_one(x, y, vx, vy, c, flow, plan):
    """Cost of one problem; fills ``plan [T, T]`` when it has rows (else skips)."""
    ix = np.flatnonzero(vx)
    iy = np.flatnonzero(vy)
    n, m = ix.shape[0], iy.shape[0]
    if n == 0 or m == 0:
        return np.nan
    _cost_matrix(x, y, ix, iy, c)
    total = _transport_sap(c, n, m, flow)
    if plan.shape[0] > 0:
        mass = n * (m // math.gcd(n, m))
        for a in range(n):
            for b in range(m):
                if flow[b, a] > 0:
                    plan[ix[a], iy[b]] = flow[b, a] / mass
    return total


@numba.njit(cache=True, parallel=True)
def _solve_batch(x, y, vx, vy, with_plans, nchunks):
    p, t = vx.shape
    out = np.empty(p)
    plans = np.zeros((p if with_plans else 0, t, t), np.float32)
    for ch in numba.prange(nchunks):
        c = np.empty((t, t))
        flow = np.empty((t, t), np.int64)
        empty = np.zeros((0, 0), np.float32)
        for q in range(ch, p, nchunks):
            pl = plans[q] if with_plans else empty
            out[q] = _solve_one(x[q], y[q], vx[q], vy[q], c, flow, pl)
    return out, plans


def _chunks(p: int) -> int:
    """Interleaved work chunks: a few per thread balances ragged (slower) problems."""
    return max(1, min(p, 8 * numba.get_num_threads()))


def _check(x, y, vx, vy):
    x, y = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32)
    vx, vy = np.ascontiguousarray(vx, np.bool_), np.ascontiguousarray(vy, np.bool_)
    if x.ndim != 3 or x.shape != y.shape or vx.shape != x.shape[:2] or vy.shape != vx.shape:
        raise ValueError(f"expected x, y [P, T, F] and vx, vy [P, T]; got {x.shape}, {y.shape}, "
                         f"{vx.shape}, {vy.shape}")
    return x, y, vx, vy


def solve_costs(x, y, vx, vy) -> np.ndarray:
    """Exact OT costs ``[P]`` float32 of a flat batch (NaN where a side has no valid point)."""
    x, y, vx, vy = _check(x, y, vx, vy)
    if x.shape[0] == 0:
        return np.zeros([0], np.float32)
    with _LOCK:
        cost, _ = _solve_batch(x, y, vx, vy, False, _chunks(x.shape[0]))
    return cost.astype(np.float32)


def solve_plans(x, y, vx, vy) -> tuple[np.ndarray, np.ndarray]:
    """Exact costs ``[P]`` and plans ``[P, T, T]`` (float32, each sums to 1)."""
    x, y, vx, vy = _check(x, y, vx, vy)
    with _LOCK:
        cost, plans = _solve_batch(x, y, vx, vy, True, _chunks(x.shape[0]))
    return cost.astype(np.float32), plans

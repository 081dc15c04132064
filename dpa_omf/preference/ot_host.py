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

One algorithm covers both cases: shortest augmenting paths (the algorithm of
``scipy.optimize.linear_sum_assignment``: Crouse 2016, after Jonker-Volgenant)
generalised to the transportation problem with integer supplies ``m/g`` per
rollout point and demands ``n/g`` per expert point (g = gcd(n, m)):

* ``n == m`` valid points: OT between two uniform n-point measures is an
  assignment problem (Birkhoff); supplies and demands are 1 and the solver is
  exactly the scipy algorithm, O(n^3), float64 costs.
* ``n != m`` (ragged: an expert track that starts late or ends early): the
  same search from one source row at a time, where a column reached with no
  demand left leads on to every row shipping to it (backward arcs), and each
  augmentation pushes the path's bottleneck.

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
    """``out[:n, :m]`` = float64 L2 distances between the valid rows of x and y
    (feature-major so the inner loop runs over contiguous columns: SIMD)."""
    n, m, f = ix.shape[0], iy.shape[0], x.shape[1]
    yt = np.empty((f, m))
    for b in range(m):
        for k in range(f):
            yt[k, b] = y[iy[b], k]
    for a in range(n):
        row = out[a]
        for b in range(m):
            row[b] = 0.0
        for k in range(f):
            xa = np.float64(x[ix[a], k])
            yk = yt[k]
            for b in range(m):
                d = xa - yk[b]
                row[b] += d * d
        for b in range(m):
            row[b] = math.sqrt(row[b])


@numba.njit(cache=True, nogil=True, inline="always")
def _push(flow, crow, ccnt, j, i, amount):
    """flow[j, i] += amount, keeping column j's list of shipping rows."""
    old = flow[j, i]
    new = old + amount
    flow[j, i] = new
    if old == 0 and new > 0:
        crow[j, ccnt[j]] = i
        ccnt[j] += 1
    elif old > 0 and new == 0:
        for k in range(ccnt[j]):
            if crow[j, k] == i:
                ccnt[j] -= 1
                crow[j, k] = crow[j, ccnt[j]]
                break


# Kept whole (~160 lines): a numba kernel whose phases (reduction, Dijkstra
# over the residual graph, augmentation, potential update) share a dozen
# scratch arrays and loop indices; split into functions, every call would pass
# them all and the inner loops would cross call boundaries numba may not inline.
@numba.njit(cache=True, nogil=True)
def _transport_sap(c, n, m, flow):
    """Exact transportation between n rows with supply m/g and m columns with
    demand n/g (uniform measures, g = gcd) by shortest augmenting paths from
    one source row at a time (the assignment algorithm generalised to
    capacities: with n == m it is exactly the Crouse / scipy algorithm).

    Invariants: reduced costs ``c - u - v >= 0`` everywhere and ``== 0`` where
    flow > 0. Start: column reduction (``v_j = min_i c_ij``) and greedy flow on
    the tight edges. (Jonker-Volgenant's augmenting row reduction was tried
    and removed: on these problems it made the solver ~1.8x slower.) Fills
    the integer ``flow`` (indexed [column, row], so a column's rows are
    contiguous); returns sum(flow * c) / mass.
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
    # crow[j, :ccnt[j]]: the rows shipping to column j (the backward arcs), kept with the flow
    crow = np.empty((m, n), np.int64)
    ccnt = np.zeros(m, np.int64)
    for j in range(m):
        for i in range(n):
            if flow[j, i] > 0:
                crow[j, ccnt[j]] = i
                ccnt[j] += 1
    shortest = np.empty(m)
    path = np.empty(m, np.int64)  # row from which a column was reached
    via = np.empty(n, np.int64)  # column through which a row was reached (-1: the source)
    drow = np.empty(n)
    remaining = np.empty(m, np.int64)  # [0, num_rem): unscanned columns; the rest: scanned
    sr = np.empty(n, np.bool_)
    rows = np.empty(n, np.int64)  # scanned rows, in order; rows[done:num_rows] still to relax
    cur = 0
    while left > 0:
        while supply[cur] == 0:
            cur += 1
        for j in range(m):
            shortest[j] = _INF
            remaining[j] = m - 1 - j
        for i in range(n):
            sr[i] = False
        best = _INF  # make the source's arcs non-negative
        for j in range(m):
            h = c[cur, j] - v[j]
            if h < best:
                best = h
        u[cur] = best
        num_rem = m
        min_val = 0.0
        sink = -1
        via[cur] = -1
        drow[cur] = 0.0
        sr[cur] = True
        rows[0] = cur
        num_rows = 1
        done = 0
        while sink == -1:
            # relax from the rows reached at distance min_val; the last one fused with the selection
            while done < num_rows - 1:
                i = rows[done]
                done += 1
                base = drow[i] - u[i]
                for it in range(num_rem):
                    j = remaining[it]
                    r = base + c[i, j] - v[j]
                    if r < shortest[j]:
                        path[j] = i
                        shortest[j] = r
            index = -1
            lowest = _INF
            if done < num_rows:
                i = rows[done]
                done += 1
                base = drow[i] - u[i]
                for it in range(num_rem):
                    j = remaining[it]
                    r = base + c[i, j] - v[j]
                    sj = shortest[j]
                    if r < sj:
                        path[j] = i
                        shortest[j] = r
                        sj = r
                    if sj < lowest or (sj == lowest and demand[j] > 0):
                        lowest = sj
                        index = it
            else:
                for it in range(num_rem):
                    j = remaining[it]
                    sj = shortest[j]
                    if sj < lowest or (sj == lowest and demand[j] > 0):
                        lowest = sj
                        index = it
            min_val = lowest
            j = remaining[index]
            num_rem -= 1
            remaining[index] = remaining[num_rem]
            remaining[num_rem] = j
            if demand[j] > 0:
                sink = j
            else:  # backward (tight) arcs to the rows shipping to j
                for k in range(ccnt[j]):
                    i = crow[j, k]
                    if not sr[i]:
                        sr[i] = True
                        via[i] = j
                        drow[i] = min_val
                        rows[num_rows] = i
                        num_rows += 1
        for k in range(num_rows):
            i = rows[k]
            u[i] += min_val - drow[i]
        for it in range(num_rem, m):
            j = remaining[it]
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
            _push(flow, crow, ccnt, j, i, amount)
            jb = via[i]
            if jb == -1:
                break
            _push(flow, crow, ccnt, jb, i, -amount)
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

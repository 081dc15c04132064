"""The stochastic expert of the synthetic world, vectorised over agents.

``Expert(pool, routes, map, signals, config).run()`` advances every agent of
the pool (``synthetic.traffic``) along its route with one numpy step for all of
them: IDM car following with the leader found by sampling the path ahead,
curvature speed limits, stopping at red and (when it can) yellow lights, left
turns yielding to oncoming traffic, vehicles yielding to pedestrians on
crosswalks, pedestrians crossing only with enough walk time, lane changes with
gap acceptance and a smooth lateral profile, agents entering when their entry
is clear. ``burn_in_steps`` are simulated before the 91 recorded steps (a
``Track``) so queues and spacing look settled.

numpy only, deterministic (the expert draws no random numbers).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.synthetic import maps as smap
from dpa_omf.synthetic.config import SyntheticConfig
from dpa_omf.synthetic.traffic import DS, KIND_PED, Pool, Routes, Signals

_FAR = 1.0e6  # where inactive agents are parked for the geometry (m)


# ============================================================== the expert
@dataclasses.dataclass
class Track:
    """What the simulation records over the 91 steps, ``[A, 91, ...]``."""

    xy: np.ndarray
    tan: np.ndarray
    speed: np.ndarray
    valid: np.ndarray


class Expert:
    """Vectorised stochastic expert. ``run()`` simulates burn-in + 91 steps."""

    def __init__(self, pool: Pool, routes: Routes, m: smap.SceneMap, sig: Signals | None,
                 cfg: SyntheticConfig):
        self.p, self.r, self.m, self.sig, self.cfg = pool, routes, m, sig, cfg
        a = len(pool.kind)
        self.n = a
        self.xy = routes.xy[pool.route]  # [A, R, 2]
        self.tan = routes.tan[pool.route]
        self.nrm = np.stack([-self.tan[..., 1], self.tan[..., 0]], -1)
        self.geo = np.concatenate([self.xy, self.tan, self.nrm], -1)  # one gather per query
        self.kappa = routes.kappa[pool.route]
        self.vlim = routes.vlim[pool.route]
        self.len = routes.length[pool.route]
        self.rows = np.arange(a)
        self.is_ped = pool.kind == KIND_PED
        self.is_veh = ~self.is_ped
        self.look = np.where(self.is_ped, 5.0, 12.0)
        # Pedestrians keep a wider berth: their sidewalk lines cross at the corners.
        self.margin = np.where(self.is_ped, 0.5, 0.3)
        self.lh, self.wh = pool.length / 2, pool.width / 2
        self.eye = np.eye(a, dtype=bool)
        self.not_eye = ~self.eye
        self.k = np.arange(cfg.lookahead_points)
        # Route sample indices of the first 60 m of each route (spawn checks).
        self.spawn_idx = (np.arange(0, 60, 5) / DS).astype(int)
        total = cfg.burn_in_steps + dt.NUM_STEPS
        self.total = total
        t = np.arange(total + 1) * dt.DT
        self.has_signals = sig is not None
        if sig is not None:
            self.states = sig.states(t)  # [T, 2]
            grp = np.maximum(m.arm_group, 0)
            self.arm_red = self.states[:, grp] == dt.TL_STOP  # [T, arms]
            self.arm_red_left = sig.red_remaining(t)[:, grp]  # [T, arms] s until green
            # Kerb-to-kerb crossing time of each pedestrian at its own pace, plus margin.
            width = 2 * m.arm_half_width[np.maximum(pool.ped_arm, 0)]
            self.ped_need = width / np.maximum(pool.v0, 0.5) + 1.0
        else:
            self.states = np.full([total + 1, 2], dt.TL_GO, np.int32)

    def _ped_walk(self, step: int) -> np.ndarray:
        """``[A]`` pedestrians allowed to start crossing now: their crossed arm is red
        and stays red long enough for them to reach the far kerb."""
        if not self.has_signals:
            return np.zeros(self.n, bool)
        arm = np.maximum(self.p.ped_arm, 0)
        return (self.is_ped & (self.p.ped_arm >= 0) & self.arm_red[step, arm]
                & (self.arm_red_left[step, arm] >= self.ped_need))

    # ---------------------------------------------------------- geometry
    def _interp(self, field: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Linear interpolation of a per-route ``[A, R, ...]`` field at ``s`` ``[A, ...]``."""
        f = np.clip(s / DS, 0.0, field.shape[1] - 1.001)
        i0 = f.astype(int)
        w = (f - i0)
        rows = self.rows.reshape((-1,) + (1,) * (s.ndim - 1))
        lo, hi = field[rows, i0], field[rows, i0 + 1]
        if field.ndim > 2:
            w = w[..., None]
        return lo * (1 - w) + hi * w

    def _pose(self, s, d):
        g = self._interp(self.geo, s)
        return g[:, :2] + d[:, None] * g[:, 4:], g[:, 2:4]

    # ---------------------------------------------------------- leaders
    def _leaders(self, pos, tan, s, d, v, active):
        """Bumper gap (m) to the closest agent on each agent's path ahead and its speed
        along that path (m/s), ``[A]`` each (inf / 0 when none).

        The path ahead (at the agent's current lateral offset) is sampled at K points
        from the front bumper; another agent is on it when its centre projects within
        half a sample spacing of a sample and its box reaches the path's swept width.
        Only pairs within reach are evaluated (sparse), so a step costs O(pairs x K).
        """
        look = np.maximum(self.look, np.where(self.is_ped, 0.0, 4.0 * v + 10.0))
        spacing = np.maximum(look / len(self.k), DS)
        q = np.where(active[:, None], pos, _FAR + 1000.0 * self.rows[:, None])
        rel0 = q[None] - pos[:, None]  # [i, j, 2]
        d2 = rel0[..., 0] ** 2 + rel0[..., 1] ** 2
        ahead = rel0[..., 0] * tan[:, None, 0] + rel0[..., 1] * tan[:, None, 1] > 0.0
        near = (d2 < (look + self.lh + 8.0)[:, None] ** 2) & ahead & self.not_eye & active[None, :]
        ii, jj = np.nonzero(near)
        gap = np.full(self.n, np.inf)
        vl = np.zeros(self.n)
        if len(ii) == 0:
            return gap, vl
        # Nearest route samples (no interpolation needed: ``lon`` below measures the
        # remaining distance from the sample exactly).
        idx = np.minimum(((s[ii, None] + self.lh[ii, None] + spacing[ii, None] * self.k) / DS).astype(int),
                         self.geo.shape[1] - 1)
        off = idx * DS - s[ii, None]  # [N, K] arc length of each sample ahead of the centre
        g = self.geo[ii[:, None], idx]  # [N, K, 6]
        tx, ty = g[..., 2], g[..., 3]
        rx = q[jj, 0, None] - (g[..., 0] + d[ii, None] * g[..., 4])
        ry = q[jj, 1, None] - (g[..., 1] + d[ii, None] * g[..., 5])
        hx, hy = tan[jj, 0, None], tan[jj, 1, None]
        lon = rx * tx + ry * ty
        lat = np.abs(tx * ry - ty * rx)
        c = np.abs(tx * hx + ty * hy)
        sn = np.abs(tx * hy - ty * hx)
        lh_j, wh_j = self.lh[jj, None], self.wh[jj, None]
        # Samples snap to the route's DS grid, so neighbours are up to spacing + DS apart.
        hit = (np.abs(lon) <= (spacing[ii, None] + DS) / 2 + 1e-6) & (
            lat < self.wh[ii, None] + lh_j * sn + wh_j * c + self.margin[ii, None])
        gk = np.where(hit, off - self.lh[ii, None] + lon - lh_j * c - wh_j * sn, np.inf)
        kmin = gk.argmin(1)
        n = np.arange(len(ii))
        gpair = gk[n, kmin]
        vpair = np.maximum(v[jj] * (tx[n, kmin] * hx[:, 0] + ty[n, kmin] * hy[:, 0]), 0.0)
        # Two pedestrians each on the other's path (their sidewalk lines cross at a
        # corner) would wait forever: the one nearer the crossing point (smaller gap)
        # ignores the other, which keeps waiting. Pairs are sorted by key = i * A + j.
        key, rkey = ii * self.n + jj, jj * self.n + ii
        at = np.minimum(np.searchsorted(key, rkey), len(key) - 1)
        g_rev = np.where(key[at] == rkey, gpair[at], np.inf)
        both = np.isfinite(gpair) & np.isfinite(g_rev) & self.is_ped[ii] & self.is_ped[jj]
        gpair = np.where(both & ((gpair < g_rev) | ((gpair == g_rev) & (ii < jj))), np.inf, gpair)
        # Closest pair per agent: ii is sorted, so sort by (ii, gap) and take segment heads.
        order = np.lexsort((gpair, ii))
        io = ii[order]
        first = np.ones(len(io), bool)
        first[1:] = io[1:] != io[:-1]
        heads = order[first]
        gap[ii[heads]] = gpair[heads]
        vl[ii[heads]] = vpair[heads]
        return gap, vl

    # ---------------------------------------------------------- rules
    def _light_stop(self, step, s, v, ydec):
        """Gap to the stop line when the light says stop (inf otherwise); updates ``ydec``
        (0 undecided, 1 stop, 2 go) of the yellow dilemma."""
        p = self.p
        has = p.light >= 0
        grp = np.where(has, self.m.arm_group[np.maximum(p.arm, 0)] if len(self.m.arm_group) else 0, 0)
        state = np.where(has, self.states[step, np.maximum(grp, 0)], dt.TL_GO)
        gap = p.s_stop - s - self.lh
        before = gap > -0.5
        ydec[state == dt.TL_GO] = 0
        undecided = (state == dt.TL_CAUTION) & (ydec == 0) & before
        can_stop = (gap > v**2 / (2 * 3.0) - 0.5) | (v < 2.0)
        ydec[undecided] = np.where(can_stop[undecided], 1, 2)
        # A "go" decision lapses for a vehicle that came to a stop before the line
        # (e.g. a left turn that had to yield): it waits for the next green.
        ydec[(ydec == 2) & before & (v < 1.0)] = 1
        stop = has & before & (((state == dt.TL_STOP) & (ydec != 2)) | ((state == dt.TL_CAUTION) & (ydec == 1)))
        return np.where(stop, gap, np.inf), state

    def _left_yield(self, s, v, active, state, ydec):
        """Gap to the stop line for left turns that must yield to oncoming traffic."""
        p = self.p
        opp = self.m.opposite_arm
        if not len(opp):
            return np.full(self.n, np.inf)
        front = s + self.lh
        gap = p.s_stop - front
        turning = active & self.is_veh & (p.maneuver == smap.LEFT) & (gap > -0.5) & (gap < 30.0)
        goes = (state == dt.TL_GO) | ((state == dt.TL_CAUTION) & (ydec == 2))
        inside = (s + self.lh > p.s_stop) & (s - self.lh < p.s_jout)
        eta = (p.s_stop - front) / np.maximum(v, 0.5)
        # Critical gap ~6 s: a left turn from standstill needs ~4-5 s to clear the oncoming lanes.
        coming = active & self.is_veh & (p.maneuver != smap.LEFT) & (inside | (goes & (eta < 6.0) & (eta >= -0.5)))
        oncoming_arm = np.where(p.arm >= 0, opp[np.maximum(p.arm, 0)], -2)
        conflict = (oncoming_arm[:, None] == p.arm[None, :]) & coming[None, :]
        must = turning & conflict.any(1)
        return np.where(must, gap, np.inf)

    def _crosswalk_yield(self, s, v, active, walk):
        """Vehicles: gap to a crosswalk with a pedestrian on it or about to step on it."""
        p = self.p
        ped_arm = p.ped_arm
        on = active & self.is_ped & (ped_arm >= 0) & (s > p.ped_wait - 0.5) & (s < p.ped_cross[:, 1])
        stepping = on & ((s > p.ped_cross[:, 0]) | walk)
        front = s + self.lh
        out = np.full(self.n, np.inf)
        for c in range(2 if stepping.any() else 0):
            c0, arm = p.cw[:, c, 0], p.cw[:, c, 2].astype(int)
            approaching = active & self.is_veh & (arm >= 0) & (front < c0) & (front > c0 - 40.0)
            busy = ((arm[:, None] == ped_arm[None, :]) & stepping[None, :]).any(1)
            out = np.minimum(out, np.where(approaching & busy, c0 - 1.0 - front, np.inf))
        return out

    def _ped_wait(self, s, v, active, walk):
        """Pedestrians: gap to the kerb when they may not (or should not) cross."""
        p = self.p
        if not self.has_signals:
            return np.full(self.n, np.inf)
        front = s + self.lh
        before = self.is_ped & (p.ped_arm >= 0) & (front < p.ped_wait + 0.3)
        # A vehicle on (or unable to stop before) this crosswalk blocks the start.
        blocked = np.zeros(self.n, bool)
        for c in range(2 if (before & walk & active).any() else 0):
            c0, c1, carm = p.cw[:, c, 0], p.cw[:, c, 1], p.cw[:, c, 2].astype(int)
            vf = s + self.lh
            committed = active & self.is_veh & (carm >= 0) & (vf > c0 - np.maximum(4.0, v**2 / 6.0)) & (
                s - self.lh < c1)
            blocked |= ((carm[None, :] == p.ped_arm[:, None]) & committed[None, :]).any(1)
        stop = before & (~walk | blocked)
        return np.where(stop, p.ped_wait - front, np.inf)

    def _lane_change(self, step, pos, tan, s, d, active, lc_p):
        """Starts planned lane changes when the target lane has room; advances them."""
        p = self.p
        pending = active & (lc_p < 0) & (p.lc_step >= 0) & (step >= p.lc_step) & (np.abs(d) > 0.1)
        pending &= (p.s_stop - s > 25.0) | ~np.isfinite(p.s_stop)
        pending &= (self.len - s > 40.0)
        if pending.any():
            rel = pos[None, :, :] - pos[:, None, :]  # [i, j, 2]
            lon = (rel * tan[:, None]).sum(-1)
            nrm = np.stack([-tan[:, 1], tan[:, 0]], -1)
            kap = self._interp(self.kappa, s)
            lat = (rel * nrm[:, None]).sum(-1) - kap[:, None] * lon**2 / 2
            in_target = (np.abs(lat + d[:, None]) < 2.2) & ((tan[:, None] * tan[None]).sum(-1) > 0.5)
            vj = self._v[None, :]
            rear = 6.0 + 1.0 * vj + 2.0 * np.maximum(vj - self._v[:, None], 0)
            front_need = 6.0 + 1.0 * self._v[:, None]
            block = in_target & (lon > -rear - self.lh[:, None]) & (lon < front_need + self.lh[:, None])
            block &= active[None, :] & ~self.eye
            start = pending & ~block.any(1)
            lc_p[start] = 0.0
        going = lc_p >= 0
        lc_p[going] = np.minimum(lc_p[going] + dt.DT / p.lc_time[going], 1.0)
        x = np.clip(lc_p, 0, 1)
        smooth = x**3 * (10 - 15 * x + 6 * x**2)
        return np.where(going, p.d0 * (1 - smooth), d)

    # ---------------------------------------------------------- spawning
    def _spawn(self, step, s, v, d, active, done, ever, recording) -> bool:
        """Lets the first waiting agent enter if its entry is clear; True if one did."""
        p = self.p
        cap_count = (ever | active).sum() if recording else active.sum()
        if cap_count >= self.cfg.num_agents:
            return False
        cand = np.nonzero(~active & ~done & (p.t_enter > 0) & (step >= p.t_enter))[0]
        if not len(cand):
            return False
        i = cand[0]
        pos_now = np.where(active[:, None], self._pos, _FAR)
        here = self.xy[i, min(int(s[i] / DS), self.xy.shape[1] - 1)]
        clear = 1.5 if self.is_ped[i] else 12.0
        if (np.linalg.norm(pos_now - here, axis=-1) < clear + self.lh).any():
            return False
        if not self.is_ped[i]:
            ahead = self.xy[i, np.minimum(int(s[i] / DS) + self.spawn_idx, self.xy.shape[1] - 1)]
            # Agents changing lanes occupy their target lane too (its centre is pos - d n).
            centre = np.where((active & (np.abs(d) > 0.1))[:, None], self._centre, _FAR)
            dist = np.minimum(np.linalg.norm(ahead[:, None] - pos_now[None], axis=-1),
                              np.linalg.norm(ahead[:, None] - centre[None], axis=-1))  # [12, A]
            blocked = (dist < 2.5).any(1)
            gap = (np.argmax(blocked) * 5.0) if blocked.any() else np.inf
            if gap < 15.0:
                return False
            v[i] = min(v[i], np.sqrt(2 * 1.5 * max(gap - 8.0, 0.0)))
        active[i] = True
        return True

    # ---------------------------------------------------------- main loop
    def run(self) -> Track:
        """Simulates ``burn_in_steps + 91`` steps; records the last 91."""
        p, cfg = self.p, self.cfg
        s, v = p.s.astype(float).copy(), p.v.astype(float).copy()
        d = p.d0.astype(float).copy()
        lc_p = np.full(self.n, -1.0)
        active = p.t_enter == 0
        done = np.zeros(self.n, bool)
        ever = np.zeros(self.n, bool)
        ydec = np.zeros(self.n, int)
        w = cfg.burn_in_steps
        tr = Track(xy=np.zeros([self.n, dt.NUM_STEPS, 2]), tan=np.zeros([self.n, dt.NUM_STEPS, 2]),
                    speed=np.zeros([self.n, dt.NUM_STEPS]), valid=np.zeros([self.n, dt.NUM_STEPS], bool))
        a_is = np.sqrt(p.a_max * p.b_comf)
        for step in range(self.total):
            pos, tan = self._pose(s, d)
            self._pos, self._v = pos, v
            self._centre = pos - d[:, None] * np.stack([-tan[:, 1], tan[:, 0]], -1)
            if step >= w:
                k = step - w
                ever |= active
                tr.xy[:, k], tr.tan[:, k], tr.speed[:, k], tr.valid[:, k] = pos, tan, v, active
            if self._spawn(step, s, v, d, active, done, ever, step >= w):
                pos, tan = self._pose(s, d)
            lead_gap, lead_v = self._leaders(pos, tan, s, d, v, active)
            stop_gap, state = self._light_stop(step, s, v, ydec)
            walk = self._ped_walk(step)
            gaps = np.stack([lead_gap, stop_gap, self._left_yield(s, v, active, state, ydec),
                             self._crosswalk_yield(s, v, active, walk), self._ped_wait(s, v, active, walk)], 1)
            vlead = np.zeros_like(gaps)
            vlead[:, 0] = lead_v
            v0 = np.minimum(p.v0, np.where(self.is_ped, np.inf, self._interp(self.vlim, s)))
            acc = _idm(p, v, np.maximum(v0, 0.5), gaps, vlead, a_is)
            v_new = np.maximum(v + acc * dt.DT, 0.0)
            s = np.where(active, s + 0.5 * (v + v_new) * dt.DT, s)
            v = np.where(active, v_new, v)
            d = self._lane_change(step, pos, tan, s, d, active, lc_p)
            finished = active & (s >= self.len - 0.25)
            done |= finished
            active &= ~finished
        return tr


def _idm(p: Pool, v, v0, gaps, vlead, a_is) -> np.ndarray:
    """Intelligent Driver Model acceleration ``[A]`` (m/s^2) against several obstacles.

    v, v0: ``[A]`` speed and desired speed (m/s); gaps, vlead: ``[A, C]`` bumper gaps (m,
    inf for none) and obstacle speeds along the path; a_is: ``[A]`` sqrt(a_max b_comf).
    The most constraining obstacle wins; the free-road term is floored at -b_comf so a
    lowered desired speed (a curve ahead) brakes comfortably.
    """
    dv = v[:, None] - vlead
    sstar = p.s0[:, None] + np.maximum(0.0, v[:, None] * p.headway[:, None] + v[:, None] * dv / (2 * a_is[:, None]))
    inter = np.where(np.isfinite(gaps), (sstar / np.maximum(gaps, 0.05)) ** 2, 0.0).max(1)
    free = np.maximum(1 - (v / v0) ** 4, -p.b_comf / p.a_max)
    return np.clip(p.a_max * (free - inter), -p.b_max, p.a_max)


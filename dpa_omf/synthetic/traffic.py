"""The traffic of a synthetic scene: signal plan, route tables and the agent pool.

* ``Signals``: a two-group fixed-time plan (green, 3 s yellow, 2 s all red per
  group) with a random cycle phase.
* ``route_tables``: every vehicle and pedestrian route resampled every ``DS``
  metres, with tangents, curvature and an anticipating curve speed limit.
* ``build_pool``: the agents the expert (``synthetic.expert``) simulates:
  vehicles and cyclists queued or in platoons on the lanes, pedestrians on the
  sidewalks (some on a crosswalk whose road is red long enough), and agents
  entering later at the map boundary (pedestrians anywhere on a sidewalk);
  driver parameters, box sizes, planned lane changes and route metadata.

numpy only; every random draw comes from the scene's generator, in a fixed order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.synthetic import maps as smap
from dpa_omf.synthetic.config import SyntheticConfig

DS = 0.5  # route sampling (m)
_YELLOW_S, _ALL_RED_S = 3.0, 2.0
KIND_VEH, KIND_PED, KIND_CYC = 0, 1, 2
TYPE_OF_KIND = np.array([dt.AGENT_TYPE_VEHICLE, dt.AGENT_TYPE_PEDESTRIAN, dt.AGENT_TYPE_CYCLIST])


# ============================================================== signals
@dataclasses.dataclass
class Signals:
    """A two-group fixed-time plan. Times in seconds from the start of burn-in."""

    green: np.ndarray  # [2] green durations
    offset: float

    @property
    def cycle(self) -> float:
        return float(self.green.sum() + 2 * (_YELLOW_S + _ALL_RED_S))

    def group_start(self, g: int) -> float:
        return 0.0 if g == 0 else float(self.green[0] + _YELLOW_S + _ALL_RED_S)

    def states(self, t: np.ndarray) -> np.ndarray:
        """``[..., 2]`` TL codes of both groups at times ``t``."""
        out = []
        for g in range(2):
            tau = np.mod(t + self.offset - self.group_start(g), self.cycle)
            st = np.where(tau < self.green[g], dt.TL_GO,
                          np.where(tau < self.green[g] + _YELLOW_S, dt.TL_CAUTION, dt.TL_STOP))
            out.append(st)
        return np.stack(out, -1).astype(np.int32)

    def red_remaining(self, t: np.ndarray) -> np.ndarray:
        """``[..., 2]`` seconds until each group's next green (meaningful when red)."""
        out = [np.mod(self.group_start(g) - (t + self.offset), self.cycle) for g in range(2)]
        return np.stack(out, -1)


# ============================================================== route tables
@dataclasses.dataclass
class Routes:
    """All routes (vehicle then pedestrian) resampled at DS, padded to ``[Nr, R]``."""

    xy: np.ndarray  # [Nr, R, 2]
    tan: np.ndarray  # [Nr, R, 2]
    kappa: np.ndarray  # [Nr, R] signed curvature (1/m)
    vlim: np.ndarray  # [Nr, R] anticipating curve speed limit (m/s)
    length: np.ndarray  # [Nr]


def route_tables(polylines: list, a_lat: float = 2.5, b_ant: float = 1.5) -> Routes:
    pts = [smap.resample_exact(p, DS) for p in polylines]
    r_max = max(len(p) for p in pts) + 8
    n = len(pts)
    xy = np.zeros([n, r_max, 2])
    length = np.zeros([n])
    for i, p in enumerate(pts):
        m = len(p)
        xy[i, :m] = p
        direction = p[-1] - p[-2]
        direction /= max(np.linalg.norm(direction), 1e-9)
        xy[i, m:] = p[-1] + DS * np.arange(1, r_max - m + 1)[:, None] * direction  # extrapolate
        length[i] = (m - 1) * DS
    tan = np.gradient(xy, axis=1)
    tan /= np.maximum(np.linalg.norm(tan, axis=-1, keepdims=True), 1e-9)
    heading = np.unwrap(np.arctan2(tan[..., 1], tan[..., 0]), axis=1)
    kappa = np.gradient(heading, DS, axis=1)
    # Smooth over ~3 m: Bezier connectors have curvature spikes at the joints.
    kernel = np.ones(7) / 7
    kappa = np.apply_along_axis(lambda k: np.convolve(k, kernel, mode="same"), 1, kappa)
    v2 = a_lat / np.maximum(np.abs(kappa), 1e-4)
    s = np.arange(r_max) * DS
    # v_lim(s)^2 = min_{s' >= s} v_curve(s')^2 + 2 b (s' - s): reverse cumulative min.
    q = np.minimum.accumulate((v2 + 2 * b_ant * s)[:, ::-1], axis=1)[:, ::-1]
    vlim = np.sqrt(np.maximum(q - 2 * b_ant * s, 0.0))
    return Routes(xy, tan, kappa, vlim, length)


# ============================================================== agent pool
@dataclasses.dataclass
class Pool:
    """Per-agent constants and initial state of the simulated pool, all ``[A]``."""

    kind: np.ndarray
    route: np.ndarray  # index into Routes
    s: np.ndarray
    v: np.ndarray
    d0: np.ndarray  # initial lateral offset from the route (m, left positive)
    lc_step: np.ndarray  # step from which a planned lane change may start (-1 none)
    lc_time: np.ndarray  # lane-change duration (s)
    t_enter: np.ndarray  # step at which the agent wants to enter (0: present at start)
    v0: np.ndarray
    headway: np.ndarray
    a_max: np.ndarray
    b_comf: np.ndarray
    b_max: np.ndarray
    s0: np.ndarray
    length: np.ndarray
    width: np.ndarray
    height: np.ndarray
    # route metadata, per agent
    arm: np.ndarray
    light: np.ndarray
    maneuver: np.ndarray
    s_stop: np.ndarray
    s_jout: np.ndarray
    cw: np.ndarray  # [A, 2, 3] crosswalk intervals (s0, s1, arm), arm -1 none
    ped_wait: np.ndarray
    ped_cross: np.ndarray  # [A, 2]
    ped_arm: np.ndarray


_MANEUVER_WEIGHT = {smap.STRAIGHT: 0.5, smap.LEFT: 0.25, smap.RIGHT: 0.25}


def _driver_params(rng, kind: int, speed_limit: float) -> dict:
    if kind == KIND_VEH:
        big = rng.random() < 0.07
        return {"v0": speed_limit * rng.uniform(0.85, 1.15), "headway": rng.uniform(1.0, 1.8),
                "a_max": rng.uniform(1.0, 2.0) * (0.7 if big else 1.0), "b_comf": rng.uniform(1.5, 2.5),
                "b_max": 8.0, "s0": rng.uniform(1.5, 3.0),
                "length": rng.uniform(6.5, 9.0) if big else np.clip(rng.normal(4.6, 0.35), 3.8, 5.6),
                "width": rng.uniform(2.3, 2.5) if big else rng.uniform(1.8, 2.1),
                "height": rng.uniform(2.8, 3.4) if big else rng.uniform(1.45, 1.9)}
    if kind == KIND_PED:
        size = rng.uniform(0.5, 0.8)
        return {"v0": rng.uniform(1.0, 1.6), "headway": 0.6, "a_max": 0.8, "b_comf": 1.5, "b_max": 3.0,
                "s0": 0.5, "length": size, "width": size * rng.uniform(0.9, 1.1),
                "height": rng.uniform(1.5, 1.9)}
    return {"v0": rng.uniform(3.5, 6.0), "headway": 1.0, "a_max": 0.8, "b_comf": 1.5, "b_max": 5.0, "s0": 1.0,
            "length": rng.uniform(1.6, 1.9), "width": rng.uniform(0.6, 0.8), "height": rng.uniform(1.6, 1.8)}


class _PoolBuilder:
    """Collects agents (dicts) and turns them into a ``_Pool``."""

    def __init__(self, m: smap.SceneMap, routes: Routes, n_veh_routes: int):
        self.m, self.routes, self.n_veh = m, routes, n_veh_routes
        self.agents: list[dict] = []

    def add(self, kind: int, route: int, s: float, v: float, params: dict, t_enter: int = 0,
            d0: float = 0.0, lc_step: int = -1, lc_time: float = 4.0) -> None:
        self.agents.append(dict(kind=kind, route=route, s=s, v=v, d0=d0, lc_step=lc_step,
                                lc_time=lc_time, t_enter=t_enter, **params))

    def build(self, bike_offset: float) -> Pool:
        cols = {k: np.array([a[k] for a in self.agents]) for k in self.agents[0]}
        n = len(self.agents)
        meta = {"arm": np.full(n, -1), "light": np.full(n, -1), "maneuver": np.zeros(n, int),
                "s_stop": np.full(n, np.inf), "s_jout": np.full(n, np.inf),
                "cw": np.tile(np.array([np.inf, np.inf, -1.0]), (n, 2, 1)),
                "ped_wait": np.full(n, np.inf), "ped_cross": np.full((n, 2), np.inf),
                "ped_arm": np.full(n, -1)}
        for i, a in enumerate(self.agents):
            if a["kind"] == KIND_PED:
                r = self.m.ped_routes[a["route"] - self.n_veh]
                meta["ped_wait"][i], meta["ped_cross"][i], meta["ped_arm"][i] = r.s_wait, r.s_cross, r.arm
                continue
            r = self.m.vehicle_routes[a["route"]]
            meta["arm"][i], meta["light"][i], meta["maneuver"][i] = r.arm, r.light, r.maneuver
            meta["s_stop"][i], meta["s_jout"][i] = r.s_stop, r.s_junction[1]
            for c, (c0, c1, arm) in enumerate(r.crosswalks[:2]):
                meta["cw"][i, c] = (c0, c1, arm)
        # Cyclists ride at the right edge of their lane (negative: right of travel).
        cols["d0"] = np.where(cols["kind"] == KIND_CYC, -bike_offset, cols["d0"])
        return Pool(**cols, **meta)


def build_pool(rng, m: smap.SceneMap, routes: Routes, cfg: SyntheticConfig, sig: Signals | None,
                total_steps: int, lane_width: float) -> Pool:
    n_veh_routes = len(m.vehicle_routes)
    speed_limit = rng.choice([11.1, 13.9]) if m.lights else rng.choice([13.9, 16.7])
    pb = _PoolBuilder(m, routes, n_veh_routes)
    n_init_veh = int(rng.integers(cfg.initial_vehicles[0], cfg.initial_vehicles[1] + 1))
    _place_vehicles(rng, m, pb, cfg, sig, n_init_veh, speed_limit)
    n_ped = int(rng.integers(cfg.initial_pedestrians[0], cfg.initial_pedestrians[1] + 1))
    _place_pedestrians(rng, m, routes, pb, n_ped, n_veh_routes, sig)
    budget = cfg.pool_size - len(pb.agents)
    n_enter = min(budget, max(round(cfg.pool_size * cfg.entering_share), 0))
    for _ in range(max(n_enter, 0)):
        _add_entrant(rng, m, routes, pb, cfg, total_steps, speed_limit, n_veh_routes)
    return pb.build(bike_offset=lane_width / 2 - 0.55)


def _route_choices(m: smap.SceneMap, lane_id: int, first: bool, bike: bool) -> tuple[list, np.ndarray]:
    cands = [i for i, r in enumerate(m.vehicle_routes)
             if (r.segments[0][2] if first else r.segments[-1][2]) == lane_id and (r.bike or not bike)]
    w = np.array([_MANEUVER_WEIGHT[m.vehicle_routes[i].maneuver] for i in cands])
    return cands, w / w.sum() if len(cands) else w


def _place_vehicles(rng, m, pb: _PoolBuilder, cfg, sig, n_target: int, speed_limit: float) -> None:
    """Queues / platoons on every lane outside the junction, thinned to ``n_target``."""
    lanes = {}
    for r in m.vehicle_routes:
        for j, (s0, s1, lane_id) in enumerate(r.segments):
            lanes.setdefault(lane_id, (s1 - s0, j == 0 and len(r.segments) > 1, r))
    total_len = sum(v[0] for v in lanes.values())
    mean_gap = max(total_len / max(n_target, 1) - 4.6, 3.0)
    slots = []  # (lane_id, pos from lane start, kind, params)
    for lane_id in sorted(lanes):
        seg_len, is_incoming, r = lanes[lane_id]
        red = False
        if is_incoming and sig is not None:
            red = sig.states(np.array(0.0))[m.arm_group[r.arm]] != dt.TL_GO
        pos = seg_len - rng.uniform(0.5, 3.0 if red else 20.0)
        bike_lane = any(vr.bike for vr in m.vehicle_routes if any(seg[2] == lane_id for seg in vr.segments))
        while True:
            kind = KIND_CYC if (bike_lane and rng.random() < cfg.cyclist_prob) else KIND_VEH
            params = _driver_params(rng, kind, speed_limit)
            pos -= params["length"] / 2
            if pos < params["length"] / 2 + 1.0:
                break
            slots.append((lane_id, pos, kind, params, red))
            gap = rng.uniform(1.5, 4.0) if red and rng.random() < 0.7 else 3.0 + rng.exponential(mean_gap)
            pos -= params["length"] / 2 + gap
    if len(slots) > n_target:
        keep = np.sort(rng.choice(len(slots), n_target, replace=False))
        slots = [slots[i] for i in keep]
    # Speeds: bounded so the agent can stop behind the one ahead (or the stop line).
    ahead = {}
    for lane_id, pos, kind, params, red in sorted(slots, key=lambda x: (x[0], -x[1])):
        seg_len, is_incoming, _ = lanes[lane_id]
        front = pos + params["length"] / 2
        if lane_id in ahead:
            room = ahead[lane_id] - front
        else:
            room = (seg_len - front) if (is_incoming and red) else np.inf
        ahead[lane_id] = pos - params["length"] / 2
        v = min(params["v0"] * rng.uniform(0.7, 1.0), np.sqrt(2 * 2.0 * max(room - params["s0"], 0.0)))
        cands, w = _route_choices(m, lane_id, first=is_incoming, bike=kind == KIND_CYC)
        if not cands:
            continue
        ri = int(rng.choice(cands, p=w))
        route = m.vehicle_routes[ri]
        if is_incoming and route.maneuver != smap.STRAIGHT:
            # Turning vehicles may have to yield (oncoming traffic, pedestrians on the
            # exit crosswalk): start them able to stop at the line.
            v = min(v, np.sqrt(2 * 2.0 * max(seg_len - front - 1.0, 0.0)))
        seg0 = route.segments[0] if is_incoming else route.segments[-1]
        s = seg0[0] + pos
        v = min(v, float(pb.routes.vlim[ri, int(s / DS)]))  # within the curve speed ahead
        d0, lc_step, lc_time = 0.0, -1, 4.0
        if kind == KIND_VEH and (is_incoming or len(route.segments) == 1) and rng.random() < cfg.lane_change_prob:
            side = [x for x in ((route.left, -1.0), (route.right, +1.0)) if x[0] >= 0]
            if side:
                target, sign = side[int(rng.integers(len(side)))]
                # The agent drives the target route with an offset back to its own lane.
                d0 = sign * route.lane_offset
                ri = target
                lc_step = int(rng.integers(0, 120))
                lc_time = rng.uniform(3.0, 5.0)
        pb.add(kind, ri, s, v, params, d0=d0, lc_step=lc_step, lc_time=lc_time)


def _place_pedestrians(rng, m, routes: Routes, pb: _PoolBuilder, n: int, n_veh_routes: int,
                       sig: Signals | None) -> None:
    """Pedestrians on sidewalks; on junction maps many near a kerb, and some already on
    a crosswalk whose road is red long enough for them to finish crossing."""
    placed = []
    for _ in range(n * 6):
        if len(placed) >= n or not m.ped_routes:
            break
        pi = int(rng.integers(len(m.ped_routes)))
        r, length = m.ped_routes[pi], routes.length[n_veh_routes + pi]
        params = _driver_params(rng, KIND_PED, 0.0)
        mode = rng.random() if r.arm >= 0 else 1.0
        if mode < 0.25 and sig is not None:  # mid-crossing, if the signal allows it
            s = rng.uniform(r.s_cross[0], r.s_cross[1] - 1.0)
            grp = m.arm_group[r.arm]
            red = sig.states(np.array(0.0))[grp] == dt.TL_STOP
            if not red or sig.red_remaining(np.array(0.0))[grp] < (r.s_cross[1] - s) / params["v0"] + 1.0:
                continue
        elif mode < 0.6:  # approaching the kerb
            s = rng.uniform(max(r.s_wait - 12.0, 1.0), r.s_wait - 0.3)
        else:
            s = rng.uniform(2.0, length - 2.0)
            if r.s_cross[0] - 1.5 < s < r.s_cross[1] + 0.5:
                continue
        xy = _point_at(routes, n_veh_routes + pi, s)
        if any(np.linalg.norm(xy - q) < 1.5 for q in placed):
            continue
        placed.append(xy)
        pb.add(KIND_PED, n_veh_routes + pi, s, params["v0"] * rng.uniform(0.8, 1.0), params)


def _add_entrant(rng, m, routes: Routes, pb: _PoolBuilder, cfg, total_steps: int, speed_limit: float,
                 n_veh_routes: int) -> None:
    t_enter = int(rng.integers(1, total_steps))
    u = rng.random()
    if u < 0.2 and m.ped_routes:
        pi = int(rng.integers(len(m.ped_routes)))
        r = m.ped_routes[pi]
        u2 = rng.random()
        if u2 < 0.4 and r.arm >= 0:  # out of a door near the kerb
            s = rng.uniform(max(r.s_wait - 15.0, 0.0), r.s_wait - 2.0)
        elif u2 < 0.7:  # out of a door anywhere on the sidewalk
            s = rng.uniform(0.0, routes.length[n_veh_routes + pi] - 3.0)
            if r.s_cross[0] - 1.5 < s < r.s_cross[1] + 0.5:
                s = 0.0
        else:  # from the map boundary
            s = 0.0
        params = _driver_params(rng, KIND_PED, 0.0)
        pb.add(KIND_PED, n_veh_routes + pi, s, params["v0"], params, t_enter=t_enter)
        return
    bike = u < 0.28 and any(r.bike for r in m.vehicle_routes)
    cands = [i for i, r in enumerate(m.vehicle_routes) if r.bike or not bike]
    w = np.array([_MANEUVER_WEIGHT[m.vehicle_routes[i].maneuver] for i in cands])
    ri = int(rng.choice(cands, p=w / w.sum()))
    kind = KIND_CYC if bike else KIND_VEH
    params = _driver_params(rng, kind, speed_limit)
    pb.add(kind, ri, params["length"] / 2, params["v0"] * 0.8, params, t_enter=t_enter)


def _point_at(routes: Routes, r: int, s: float) -> np.ndarray:
    i = int(np.clip(s / DS, 0, routes.xy.shape[1] - 2))
    return routes.xy[r, i]


"""The embedded synthetic world: procedural maps + a stochastic expert.

``generate_scenario(seed, config)`` builds one WOMD-like ``Scenario`` (numpy):

1. A map from ``synthetic_map`` (straight / curved corridor, signalled 4-way
   intersection or T-junction), rotated and translated at random.
2. A two-group signal plan (green, 3 s yellow, 2 s all red per group) with a
   random cycle phase, so lights often change within the 9.1 s window.
3. A pool of agents: vehicles and cyclists on lane routes, pedestrians on
   sidewalk lines, some present from the start, others entering later at the
   map boundary (or, for pedestrians, anywhere on a sidewalk).
4. The expert, vectorised over agents (one numpy step for all of them):
   IDM car following along the route with the leader found by sampling the
   path ahead, curvature speed limits, stopping at red and (when it can)
   yellow lights, left turns yielding to oncoming traffic, vehicles yielding to
   pedestrians on crosswalks, pedestrians crossing only with enough walk time,
   lane changes with gap acceptance and a smooth lateral profile.
   ``burn_in_steps`` are simulated before the 91 recorded steps so queues and
   spacing look settled; the first 11 recorded steps are the history.
5. The recorded agents (at most ``num_agents``, the spawning cap guarantees it),
   an SDC, agents to evaluate, road-graph samples fitted to ``num_points``,
   traffic-light slots, WOMD reader conventions (zeros at invalid entries).

``generate_dataset`` writes TFRecord shards through ``dpa_omf.io.example_writer``;
``scene_statistics`` measures interactivity, collisions and off-road steps.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os

import jax
import jax.numpy as jnp
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.geometry import shapes as geo
from dpa_omf.synthetic import maps as smap

DS = 0.5  # route sampling (m)
_FAR = 1.0e6  # where inactive agents are parked for the geometry (m)
_YELLOW_S, _ALL_RED_S = 3.0, 2.0
_KIND_VEH, _KIND_PED, _KIND_CYC = 0, 1, 2
_TYPE_OF_KIND = np.array([dt.AGENT_TYPE_VEHICLE, dt.AGENT_TYPE_PEDESTRIAN, dt.AGENT_TYPE_CYCLIST])


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic world (defaults: the project's default dataset).

    num_agents: agent slots per scene (padding slots: valid False, id -1, type 0).
    num_points: road-graph samples per scene (polylines resampled to fit, >= 0.5 m apart).
    template_weights: probabilities of (straight, curved, four_way, t_junction).
    burn_in_steps: steps simulated before the recorded 91 (0.1 s each).
    pool_size: agents simulated (recorded ones are capped at ``num_agents``).
    initial_vehicles / initial_pedestrians: ranges (inclusive) of agents at the start.
    cyclist_prob: chance that a vehicle slot on a bike-able lane is a cyclist.
    entering_share: share of the pool left to agents entering later.
    max_eval_agents: agents to evaluate besides the SDC.
    lane_change_prob: chance a vehicle on a multi-lane straight route plans a lane change.
    dropout_prob: chance an agent (not SDC / evaluated) loses a few steps of track.
    lookahead_points: path samples per agent for leader detection.
    min_roadgraph_spacing: finest road-graph sample spacing (m).
    map: geometry knobs of ``synthetic_map``.
    """

    num_agents: int = 32
    num_points: int = 4096
    template_weights: tuple[float, float, float, float] = (0.15, 0.2, 0.45, 0.2)
    burn_in_steps: int = 20
    pool_size: int = 48
    initial_vehicles: tuple[int, int] = (16, 24)
    initial_pedestrians: tuple[int, int] = (3, 7)
    cyclist_prob: float = 0.12
    entering_share: float = 0.5
    max_eval_agents: int = 4
    lane_change_prob: float = 0.3
    dropout_prob: float = 0.05
    lookahead_points: int = 16
    min_roadgraph_spacing: float = 0.5
    map: smap.MapConfig = smap.MapConfig()

    def __post_init__(self):
        if self.num_agents < 2:
            raise ValueError(f"SyntheticConfig.num_agents must be >= 2, got {self.num_agents}")
        if self.pool_size < self.num_agents:
            raise ValueError("SyntheticConfig.pool_size must be >= num_agents")
        if len(self.template_weights) != 4 or min(self.template_weights) < 0 or sum(self.template_weights) <= 0:
            raise ValueError(f"SyntheticConfig.template_weights must be 4 non-negative weights, "
                             f"got {self.template_weights}")
        if self.num_points < 512:
            raise ValueError(f"SyntheticConfig.num_points must be >= 512, got {self.num_points}")


# ============================================================== signals
@dataclasses.dataclass
class _Signals:
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
class _Routes:
    """All routes (vehicle then pedestrian) resampled at DS, padded to ``[Nr, R]``."""

    xy: np.ndarray  # [Nr, R, 2]
    tan: np.ndarray  # [Nr, R, 2]
    kappa: np.ndarray  # [Nr, R] signed curvature (1/m)
    vlim: np.ndarray  # [Nr, R] anticipating curve speed limit (m/s)
    length: np.ndarray  # [Nr]


def _route_tables(polylines: list, a_lat: float = 2.5, b_ant: float = 1.5) -> _Routes:
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
    return _Routes(xy, tan, kappa, vlim, length)


# ============================================================== agent pool
@dataclasses.dataclass
class _Pool:
    """Per-agent constants and initial state of the simulated pool, all ``[A]``."""

    kind: np.ndarray
    route: np.ndarray  # index into _Routes
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
    if kind == _KIND_VEH:
        big = rng.random() < 0.07
        return dict(v0=speed_limit * rng.uniform(0.85, 1.15), headway=rng.uniform(1.0, 1.8),
                    a_max=rng.uniform(1.0, 2.0) * (0.7 if big else 1.0), b_comf=rng.uniform(1.5, 2.5),
                    b_max=8.0, s0=rng.uniform(1.5, 3.0),
                    length=rng.uniform(6.5, 9.0) if big else np.clip(rng.normal(4.6, 0.35), 3.8, 5.6),
                    width=rng.uniform(2.3, 2.5) if big else rng.uniform(1.8, 2.1),
                    height=rng.uniform(2.8, 3.4) if big else rng.uniform(1.45, 1.9))
    if kind == _KIND_PED:
        size = rng.uniform(0.5, 0.8)
        return dict(v0=rng.uniform(1.0, 1.6), headway=0.6, a_max=0.8, b_comf=1.5, b_max=3.0,
                    s0=0.5, length=size, width=size * rng.uniform(0.9, 1.1),
                    height=rng.uniform(1.5, 1.9))
    return dict(v0=rng.uniform(3.5, 6.0), headway=1.0, a_max=0.8, b_comf=1.5, b_max=5.0, s0=1.0,
                length=rng.uniform(1.6, 1.9), width=rng.uniform(0.6, 0.8), height=rng.uniform(1.6, 1.8))


class _PoolBuilder:
    """Collects agents (dicts) and turns them into a ``_Pool``."""

    def __init__(self, m: smap.SceneMap, routes: _Routes, n_veh_routes: int):
        self.m, self.routes, self.n_veh = m, routes, n_veh_routes
        self.agents: list[dict] = []

    def add(self, kind: int, route: int, s: float, v: float, params: dict, t_enter: int = 0,
            d0: float = 0.0, lc_step: int = -1, lc_time: float = 4.0) -> None:
        self.agents.append(dict(kind=kind, route=route, s=s, v=v, d0=d0, lc_step=lc_step,
                                lc_time=lc_time, t_enter=t_enter, **params))

    def build(self, bike_offset: float) -> _Pool:
        cols = {k: np.array([a[k] for a in self.agents]) for k in self.agents[0]}
        n = len(self.agents)
        meta = dict(arm=np.full(n, -1), light=np.full(n, -1), maneuver=np.zeros(n, int),
                    s_stop=np.full(n, np.inf), s_jout=np.full(n, np.inf),
                    cw=np.tile(np.array([np.inf, np.inf, -1.0]), (n, 2, 1)),
                    ped_wait=np.full(n, np.inf), ped_cross=np.full((n, 2), np.inf),
                    ped_arm=np.full(n, -1))
        for i, a in enumerate(self.agents):
            if a["kind"] == _KIND_PED:
                r = self.m.ped_routes[a["route"] - self.n_veh]
                meta["ped_wait"][i], meta["ped_cross"][i], meta["ped_arm"][i] = r.s_wait, r.s_cross, r.arm
                continue
            r = self.m.vehicle_routes[a["route"]]
            meta["arm"][i], meta["light"][i], meta["maneuver"][i] = r.arm, r.light, r.maneuver
            meta["s_stop"][i], meta["s_jout"][i] = r.s_stop, r.s_junction[1]
            for c, (c0, c1, arm) in enumerate(r.crosswalks[:2]):
                meta["cw"][i, c] = (c0, c1, arm)
        # Cyclists ride at the right edge of their lane (negative: right of travel).
        cols["d0"] = np.where(cols["kind"] == _KIND_CYC, -bike_offset, cols["d0"])
        return _Pool(**cols, **meta)


def _build_pool(rng, m: smap.SceneMap, routes: _Routes, cfg: SyntheticConfig, sig: _Signals | None,
                total_steps: int, lane_width: float) -> _Pool:
    n_veh_routes = len(m.vehicle_routes)
    speed_limit = rng.choice([11.1, 13.9]) if m.lights else rng.choice([13.9, 16.7])
    pb = _PoolBuilder(m, routes, n_veh_routes)
    n_init_veh = int(rng.integers(cfg.initial_vehicles[0], cfg.initial_vehicles[1] + 1))
    _place_vehicles(rng, m, pb, cfg, sig, n_init_veh, speed_limit)
    n_ped = int(rng.integers(cfg.initial_pedestrians[0], cfg.initial_pedestrians[1] + 1))
    _place_pedestrians(rng, m, routes, pb, n_ped, n_veh_routes, sig)
    budget = cfg.pool_size - len(pb.agents)
    n_enter = min(budget, max(int(round(cfg.pool_size * cfg.entering_share)), 0))
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
            kind = _KIND_CYC if (bike_lane and rng.random() < cfg.cyclist_prob) else _KIND_VEH
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
        cands, w = _route_choices(m, lane_id, first=is_incoming, bike=kind == _KIND_CYC)
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
        if kind == _KIND_VEH and (is_incoming or len(route.segments) == 1) and rng.random() < cfg.lane_change_prob:
            side = [x for x in ((route.left, -1.0), (route.right, +1.0)) if x[0] >= 0]
            if side:
                target, sign = side[int(rng.integers(len(side)))]
                # The agent drives the target route with an offset back to its own lane.
                d0 = sign * route.lane_offset
                ri = target
                lc_step = int(rng.integers(0, 120))
                lc_time = rng.uniform(3.0, 5.0)
        pb.add(kind, ri, s, v, params, d0=d0, lc_step=lc_step, lc_time=lc_time)


def _place_pedestrians(rng, m, routes: _Routes, pb: _PoolBuilder, n: int, n_veh_routes: int,
                       sig: _Signals | None) -> None:
    """Pedestrians on sidewalks; on junction maps many near a kerb, and some already on
    a crosswalk whose road is red long enough for them to finish crossing."""
    placed = []
    for _ in range(n * 6):
        if len(placed) >= n or not m.ped_routes:
            break
        pi = int(rng.integers(len(m.ped_routes)))
        r, length = m.ped_routes[pi], routes.length[n_veh_routes + pi]
        params = _driver_params(rng, _KIND_PED, 0.0)
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
        pb.add(_KIND_PED, n_veh_routes + pi, s, params["v0"] * rng.uniform(0.8, 1.0), params)


def _add_entrant(rng, m, routes: _Routes, pb: _PoolBuilder, cfg, total_steps: int, speed_limit: float,
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
        params = _driver_params(rng, _KIND_PED, 0.0)
        pb.add(_KIND_PED, n_veh_routes + pi, s, params["v0"], params, t_enter=t_enter)
        return
    bike = u < 0.28 and any(r.bike for r in m.vehicle_routes)
    cands = [i for i, r in enumerate(m.vehicle_routes) if r.bike or not bike]
    w = np.array([_MANEUVER_WEIGHT[m.vehicle_routes[i].maneuver] for i in cands])
    ri = int(rng.choice(cands, p=w / w.sum()))
    kind = _KIND_CYC if bike else _KIND_VEH
    params = _driver_params(rng, kind, speed_limit)
    pb.add(kind, ri, params["length"] / 2, params["v0"] * 0.8, params, t_enter=t_enter)


def _point_at(routes: _Routes, r: int, s: float) -> np.ndarray:
    i = int(np.clip(s / DS, 0, routes.xy.shape[1] - 2))
    return routes.xy[r, i]


# ============================================================== the expert
@dataclasses.dataclass
class _Track:
    """What the simulation records over the 91 steps, ``[A, 91, ...]``."""

    xy: np.ndarray
    tan: np.ndarray
    speed: np.ndarray
    valid: np.ndarray


class _Expert:
    """Vectorised stochastic expert. ``run()`` simulates burn-in + 91 steps."""

    def __init__(self, pool: _Pool, routes: _Routes, m: smap.SceneMap, sig: _Signals | None,
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
        self.is_ped = pool.kind == _KIND_PED
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
    def run(self) -> _Track:
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
        tr = _Track(xy=np.zeros([self.n, dt.NUM_STEPS, 2]), tan=np.zeros([self.n, dt.NUM_STEPS, 2]),
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


def _idm(p: _Pool, v, v0, gaps, vlead, a_is) -> np.ndarray:
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


# ============================================================== scenario assembly
def _ground(rng) -> callable:
    z0, gx, gy = rng.uniform(-20, 60), rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)
    amp, kx, ky = rng.uniform(0, 0.5), rng.uniform(0.01, 0.04), rng.uniform(0.01, 0.04)
    return lambda x, y: z0 + gx * x + gy * y + amp * np.sin(kx * x) * np.cos(ky * y)


def _velocities(xy: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[A, T, 2]`` central differences of positions (one-sided at track ends, zero alone)."""
    prev_ok = np.zeros_like(valid)
    prev_ok[:, 1:] = valid[:, 1:] & valid[:, :-1]
    next_ok = np.zeros_like(valid)
    next_ok[:, :-1] = valid[:, :-1] & valid[:, 1:]
    prev = np.concatenate([xy[:, :1], xy[:, :-1]], 1)
    nxt = np.concatenate([xy[:, 1:], xy[:, -1:]], 1)
    lo = np.where(prev_ok[..., None], prev, xy)
    hi = np.where(next_ok[..., None], nxt, xy)
    steps = prev_ok.astype(float) + next_ok.astype(float)
    return np.where(steps[..., None] > 0, (hi - lo) / np.maximum(steps, 1)[..., None] / dt.DT, 0.0)


def _select_eval(rng, keep_valid: np.ndarray, kinds: np.ndarray, xy: np.ndarray, sdc: int, man: np.ndarray,
                 k_max: int) -> np.ndarray:
    cur = dt.CURRENT_INDEX
    cand = keep_valid[:, cur] & (keep_valid[:, cur:].mean(1) >= 0.5)
    cand[sdc] = False
    moved = np.linalg.norm(xy[:, -1] - xy[:, cur], axis=-1)
    dist = np.linalg.norm(xy[:, cur] - xy[sdc, cur], axis=-1)
    score = np.where(kinds == _KIND_VEH, 3.0, 1.5) * (1.0 + (moved > 5.0)) * (1.0 + (man != smap.STRAIGHT))
    score *= np.exp(-dist / 40.0)
    score = np.where(cand, score + 1e-6, 0.0)
    n = int(min(k_max, cand.sum()))
    ev = np.zeros(len(kinds), bool)
    if n:
        ev[rng.choice(len(kinds), n, replace=False, p=score / score.sum())] = True
    ev[sdc] = True
    return ev


def _choose_sdc(rng, valid: np.ndarray, kinds: np.ndarray, xy: np.ndarray, center: np.ndarray) -> int:
    cur = dt.CURRENT_INDEX
    full = valid.all(1) & (kinds == _KIND_VEH)
    pool = full if full.any() else (valid[:, cur] & (kinds == _KIND_VEH))
    if not pool.any():
        pool = valid[:, cur]
    dist = np.linalg.norm(xy[:, cur] - center, axis=-1)
    moved = np.linalg.norm(xy[:, -1] - xy[:, 0], axis=-1)
    score = np.where(pool, np.exp(-dist / 30.0) * (0.3 + (moved > 5.0)), 0.0) + pool * 1e-9
    return int(rng.choice(len(kinds), p=score / score.sum()))


def _agents(rng, pool: _Pool, tr: _Track, ground, cfg: SyntheticConfig, center: np.ndarray):
    a = cfg.num_agents
    keep = np.nonzero(tr.valid.any(1))[0]
    if len(keep) > a:  # cannot happen with the spawning cap; guard anyway
        keep = keep[np.argsort(-tr.valid[keep].sum(1), kind="stable")[:a]]
    valid = tr.valid[keep].copy()
    xy = tr.xy[keep]
    kinds = pool.kind[keep]
    if not valid[:, dt.CURRENT_INDEX].any():
        raise RuntimeError("synthetic scene without an agent at the current step")
    sdc = _choose_sdc(rng, valid, kinds, xy, center)
    ev = _select_eval(rng, valid, kinds, xy, sdc, pool.maneuver[keep], cfg.max_eval_agents)
    # Order: SDC, then agents valid now by distance to the SDC, then the rest.
    dist = np.linalg.norm(xy[:, dt.CURRENT_INDEX] - xy[sdc, dt.CURRENT_INDEX], axis=-1)
    order = np.lexsort((dist, ~valid[:, dt.CURRENT_INDEX], np.arange(len(keep)) != sdc))
    keep, valid, xy, kinds, ev = keep[order], valid[order], xy[order], kinds[order], ev[order]
    _dropouts(rng, valid, ev, cfg.dropout_prob)
    vel = _velocities(xy, valid)
    speed = np.linalg.norm(vel, axis=-1)
    tan = tr.tan[keep]
    thresh = np.where(kinds == _KIND_PED, 0.2, 0.5)[:, None]
    heading = np.where(speed > thresh, np.arctan2(vel[..., 1], vel[..., 0]), np.arctan2(tan[..., 1], tan[..., 0]))
    n = len(keep)
    out = dt.empty_scenario(a, 1).agents
    f = lambda x: np.where(valid, x, 0.0).astype(np.float32)  # noqa: E731
    size = lambda x: np.broadcast_to(x[keep][:, None], valid.shape)  # noqa: E731
    height = size(pool.height)
    fields = dict(x=f(xy[..., 0]), y=f(xy[..., 1]), z=f(ground(xy[..., 0], xy[..., 1]) + height / 2),
                  heading=f(heading), vel_x=f(vel[..., 0]), vel_y=f(vel[..., 1]),
                  length=f(size(pool.length)), width=f(size(pool.width)), height=f(height))
    for name, val in fields.items():
        getattr(out, name)[:n] = val
    out.valid[:n] = valid
    out.type[:n] = _TYPE_OF_KIND[kinds]
    out.id[:n] = rng.permutation(np.arange(1, 10 * a + 1))[:n]
    out.is_sdc[:n] = np.arange(n) == 0
    out.sim_mask[:n] = valid[:, dt.CURRENT_INDEX]
    out.eval_mask[:n] = ev & valid[:, dt.CURRENT_INDEX]
    return out


def _dropouts(rng, valid: np.ndarray, protect: np.ndarray, prob: float) -> None:
    """Short track losses (occlusions), never at the current step nor for evaluated agents."""
    for i in np.nonzero((rng.random(len(valid)) < prob) & ~protect)[0]:
        steps = np.nonzero(valid[i])[0]
        if len(steps) < 20:
            continue
        length = int(rng.integers(2, 9))
        start = int(rng.integers(steps[0] + 1, steps[-1] - length))
        if start <= dt.CURRENT_INDEX < start + length + 1:
            continue
        valid[i, start:start + length] = False


def _roadgraph(m: smap.SceneMap, ground, cfg: SyntheticConfig) -> dt.RoadGraph:
    """Resamples every polyline at one spacing chosen so the samples fit ``num_points``."""
    lengths = np.array([smap.arc_length(p.xy)[-1] for p in m.polylines])
    order = np.argsort([np.linalg.norm(p.xy.mean(0) - m.center) for p in m.polylines], kind="stable")
    spacing = max(cfg.min_roadgraph_spacing, lengths.sum() / max(cfg.num_points - 2 * len(lengths), 1))
    while True:
        # floor: samples are never closer than ``spacing`` (except 2-point stubs)
        counts = np.maximum(2, np.floor(lengths / spacing).astype(int) + 1)
        if counts.sum() <= cfg.num_points:
            break
        spacing *= 1.05
    rg = dt.empty_scenario(1, cfg.num_points).roadgraph
    at = 0
    for i in order:
        pl = m.polylines[i]
        xy = smap.resample_count(pl.xy, counts[i])
        nn = len(xy)
        z = ground(xy[:, 0], xy[:, 1])
        xyz = np.concatenate([xy, z[:, None]], 1)
        direc = np.zeros_like(xyz)
        step = np.diff(xyz, axis=0)
        direc[:-1] = step / np.maximum(np.linalg.norm(step, axis=-1, keepdims=True), 1e-9)
        rg.xyz[at:at + nn], rg.dir[at:at + nn] = xyz, direc
        rg.type[at:at + nn], rg.id[at:at + nn], rg.valid[at:at + nn] = pl.type, pl.id, True
        at += nn
    return rg


def _lights(m: smap.SceneMap, sig: _Signals | None, ground, cfg: SyntheticConfig) -> dt.TrafficLights:
    tl = dt.empty_scenario(1, 1).traffic_lights
    if sig is None:
        return tl
    t = (cfg.burn_in_steps + np.arange(dt.NUM_STEPS)) * dt.DT
    states = sig.states(t)  # [91, 2]
    for k, lt in enumerate(m.lights[: dt.NUM_TRAFFIC_LIGHTS]):
        tl.state[:, k] = states[:, m.arm_group[lt.arm]]
        tl.lane_id[:, k] = lt.lane_id
        tl.stop_point[:, k] = (lt.stop_xy[0], lt.stop_xy[1], ground(lt.stop_xy[0], lt.stop_xy[1]))
        tl.valid[:, k] = True
    return tl


def generate_scenario(seed: int, config: SyntheticConfig = SyntheticConfig()) -> dt.Scenario:
    """One synthetic scene, a pure function of ``(seed, config)``.

    Returns a numpy ``Scenario`` with ``[num_agents, 91]`` tracks, ``[num_points]``
    road-graph samples and ``[91, 16]`` traffic-light slots; id ``"syn" + seed``.
    """
    if not 0 <= seed < 10**13:
        raise ValueError(f"seed must be in [0, 1e13), got {seed}")
    rng = np.random.default_rng([seed, 0x5E17])
    w = np.asarray(config.template_weights, float)
    kind = smap.TEMPLATES[int(rng.choice(4, p=w / w.sum()))]
    m = smap.build_map(rng, kind, config.map)
    sig = None
    if m.lights:
        sig = _Signals(green=rng.uniform(12.0, 30.0, size=2), offset=0.0)
        sig.offset = rng.uniform(0, sig.cycle)
    routes = _route_tables([r.xy for r in m.vehicle_routes] + [r.xy for r in m.ped_routes])
    lane_width = min(r.lane_offset for r in m.vehicle_routes)
    total = config.burn_in_steps + dt.NUM_STEPS
    pool = _build_pool(rng, m, routes, config, sig, total, lane_width)
    track = _Expert(pool, routes, m, sig, config).run()
    ground = _ground(rng)
    scen = dt.Scenario(agents=_agents(rng, pool, track, ground, config, m.center),
                       roadgraph=_roadgraph(m, ground, config), traffic_lights=_lights(m, sig, ground, config),
                       scenario_id=dt.scenario_id_to_bytes(f"syn{seed:013d}"))
    return scen.validate(f"synthetic seed {seed}")


# ============================================================== dataset
_MAX_SCENES_PER_SEED = 10**7


def scene_seed(seed: int, index: int) -> int:
    """Seed of scene ``index`` of the dataset generated with ``seed`` (ids stay <= 16 chars)."""
    if not 0 <= seed < 10**6:
        raise ValueError(f"dataset seed must be in [0, 1e6), got {seed}")
    if not 0 <= index < _MAX_SCENES_PER_SEED:
        raise ValueError(f"scene index must be in [0, 1e7), got {index}")
    return seed * _MAX_SCENES_PER_SEED + index


def shard_path(out_dir: str, shard: int, num_shards: int) -> str:
    return os.path.join(out_dir, f"synthetic.tfrecord-{shard:05d}-of-{num_shards:05d}")


def _shard_ranges(num_scenes: int, num_shards: int) -> list[tuple[int, int]]:
    edges = [k * num_scenes // num_shards for k in range(num_shards + 1)]
    return [(edges[k], edges[k + 1]) for k in range(num_shards)]


def _write_shard(job: tuple) -> tuple[str, int]:
    """Worker: generates scenes ``[lo, hi)`` and writes one shard (spawn-safe, top level)."""
    path, seed, lo, hi, config = job
    from dpa_omf.io import example_writer  # noqa: PLC0415  (keeps TF-free imports light in workers)

    n = example_writer.write_tfrecord(path, (generate_scenario(scene_seed(seed, i), config) for i in range(lo, hi)))
    return path, n


def generate_dataset(out_dir: str, num_scenes: int, num_shards: int, seed: int = 0,
                     config: SyntheticConfig = SyntheticConfig(), num_workers: int | None = None) -> list[str]:
    """Generates ``num_scenes`` synthetic scenes into WOMD tf.Example TFRecord shards.

    Scene ``i`` is ``generate_scenario(scene_seed(seed, i), config)``; shard ``k``
    holds a contiguous range of scenes, so the files are identical whatever the
    number of workers. Each shard is written atomically; ``dataset_info.json``
    (written last) lists the shards, the seed and the config.

    Args:
      out_dir: output folder (created).
      num_scenes, num_shards: dataset size and number of files (1 <= shards <= scenes).
      seed: dataset seed in [0, 1e6).
      config: the world's ``SyntheticConfig``.
      num_workers: processes (spawned); default ``min(os.cpu_count(), num_shards)``.
    Returns:
      the shard paths, in order.
    """
    if num_scenes < 1 or not 1 <= num_shards <= num_scenes:
        raise ValueError(f"need 1 <= num_shards <= num_scenes, got {num_shards} shards, {num_scenes} scenes")
    scene_seed(seed, num_scenes - 1)  # range check before any work
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(shard_path(out_dir, k, num_shards), seed, lo, hi, config)
            for k, (lo, hi) in enumerate(_shard_ranges(num_scenes, num_shards))]
    workers = max(1, min(num_workers or os.cpu_count() or 1, num_shards))
    if workers == 1:
        done = [_write_shard(j) for j in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            done = pool.map(_write_shard, jobs, chunksize=1)
    info = dict(num_scenes=num_scenes, num_shards=num_shards, seed=seed,
                shards=[os.path.basename(p) for p, _ in done], records=[n for _, n in done],
                config=dataclasses.asdict(config))
    tmp = os.path.join(out_dir, "dataset_info.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "dataset_info.json"))
    return [p for p, _ in done]


# ============================================================== statistics
# The detectors below are thin wrappers over ``dpa_omf.geometry.shapes``, the
# geometry the realism metric and the preference features use, so that the
# dataset statistics, the metric and the features share one implementation of
# oriented boxes, box overlap and the road-edge sign rule.
_QUERY_BUCKET = 256  # signed-distance queries padded to 256 * 2^k (few jit shapes)
_QUERY_CHUNK = 256  # queries per vectorised nearest-segment search ([chunk, P] temporaries)


@jax.jit
def _collision_mask_jit(x, y, length, width, heading, valid):
    """``[A, T]`` tracks -> bool ``[A, T]`` overlap with another valid box at the same step."""
    corners = geo.box_corners(x, y, length, width, heading)  # [A, T, 4, 2]
    # Sharp rectangles (rounding 0, unlike the metric's 0.7): a negative distance
    # is a true box overlap; touching boxes (distance 0) do not count.
    d = geo.convex_polygon_signed_distance(corners[:, None], corners[None])  # [A, A, T]
    other = ~jnp.eye(x.shape[0], dtype=bool)[..., None]
    return jnp.any((d < 0.0) & valid[:, None] & valid[None] & other, axis=1)


def collision_mask(agents: dt.Agents) -> np.ndarray:
    """bool ``[A, T]``: valid agent-steps whose oriented box (sharp corners)
    overlaps the box of another agent valid at the same step."""
    a = agents
    boxes = (jnp.asarray(v, jnp.float32) for v in (a.x, a.y, a.length, a.width, a.heading))
    return np.asarray(_collision_mask_jit(*boxes, jnp.asarray(a.valid, bool)))


@jax.jit
def _road_edge_distance_jit(points, xyz, ids, valid, types):
    """``[Q, 2]`` points, one scene's ``[P]`` road graph -> ``[Q]`` signed distance (m)."""
    is_edge = valid & jnp.isin(types, jnp.asarray(dt.RG_ROAD_EDGE_TYPES, types.dtype))
    # Polylines are runs of consecutive points with one id (the WOMD layout, and
    # _roadgraph's); closed ones (ends within 1 m) wrap, as in the official sign rule.
    seg = geo.polyline_segments(xyz, ids, is_edge)
    pts = jnp.concatenate([points, jnp.zeros_like(points[:, :1])], axis=-1)
    # z_stretch 0: the closest edge is chosen in the plane (the statistic is 2D).
    d = jax.lax.map(lambda p: geo.signed_distance_to_polylines(p, seg, z_stretch=0.0), pts,
                    batch_size=_QUERY_CHUNK)
    return jnp.where(jnp.any(seg.valid), d, jnp.inf)


def signed_distance_to_road_edge(points: np.ndarray, rg: dt.RoadGraph) -> np.ndarray:
    """``[Q]`` signed distance (m) of ``[Q, 2]`` points to the road edges (types
    ``dt.RG_ROAD_EDGE_TYPES``) of a single scenario's ``[P]`` road graph:
    negative on the road, positive off it (WOSAC convention: edges have the road
    on their left; ``geometry.signed_distance_to_polylines``). +inf when the map
    has no road edge."""
    points = np.asarray(points, np.float32).reshape(-1, 2)
    q = len(points)
    size = _QUERY_BUCKET
    while size < q:
        size *= 2
    padded = np.zeros([size, 2], np.float32)
    padded[:q] = points
    d = _road_edge_distance_jit(jnp.asarray(padded), jnp.asarray(rg.xyz, jnp.float32), jnp.asarray(rg.id),
                                jnp.asarray(rg.valid, bool), jnp.asarray(rg.type))
    return np.asarray(d)[:q]


def offroad_mask(s: dt.Scenario) -> np.ndarray:
    """bool ``[A, T]``: valid vehicle steps whose box centre is off the road
    (signed distance to the road edges > 0)."""
    a = s.agents
    sel = np.asarray(a.valid, bool) & (np.asarray(a.type) == dt.AGENT_TYPE_VEHICLE)[:, None]
    out = np.zeros_like(sel)
    pts = np.stack([np.asarray(a.x)[sel], np.asarray(a.y)[sel]], -1)
    out[sel] = signed_distance_to_road_edge(pts, s.roadgraph) > 0
    return out


def stop_line_crossings(s: dt.Scenario) -> tuple[int, int]:
    """(crossings on red, all crossings) of signalled stop lines by vehicle / cyclist fronts.

    A crossing is a front bumper passing a light's stop point along its lane
    (within 1.6 m laterally) between two consecutive valid steps; it is "on red"
    when the light has been ``TL_STOP`` for the previous 0.5 s as well.
    """
    a, tl, rg = s.agents, s.traffic_lights, s.roadgraph
    drivers = np.isin(a.type, (dt.AGENT_TYPE_VEHICLE, dt.AGENT_TYPE_CYCLIST))
    fx = a.x + a.length / 2 * np.cos(a.heading)
    fy = a.y + a.length / 2 * np.sin(a.heading)
    ok = a.valid[:, 1:] & a.valid[:, :-1] & drivers[:, None]  # [A, T-1]
    red_total, total = 0, 0
    for k in np.nonzero(tl.valid.any(0))[0]:
        step = int(np.argmax(tl.valid[:, k]))
        lane = np.nonzero(rg.valid & (rg.id == tl.lane_id[step, k]))[0]
        if len(lane) < 2:
            continue
        u = rg.xyz[lane[-1], :2] - rg.xyz[lane[-2], :2]
        u = u / max(np.linalg.norm(u), 1e-9)
        sp = tl.stop_point[step, k, :2]
        lon = (fx - sp[0]) * u[0] + (fy - sp[1]) * u[1]
        lat = np.abs((fx - sp[0]) * u[1] - (fy - sp[1]) * u[0])
        cross = ok & (lon[:, :-1] < 0) & (lon[:, 1:] >= 0) & (lat[:, :-1] < 1.6) & (lat[:, 1:] < 1.6)
        st = np.where(tl.valid[:, k], tl.state[:, k], dt.TL_UNKNOWN)
        red_now = st[1:] == dt.TL_STOP
        red_before = np.concatenate([np.zeros(4, bool), st[:-5] == dt.TL_STOP])
        red_total += int((cross & (red_now & red_before)[None]).sum())
        total += int(cross.sum())
    return red_total, total


def scene_statistics(scenarios) -> dict:
    """Interactivity and expert quality of single (unbatched) numpy scenarios.

    Returns a dict with
      num_scenes; median_valid_agents / mean_valid_agents (valid at the current step);
      intersection_fraction (scenes with signalled lanes);
      light_change_fraction (scenes whose light states change within the 91 steps);
      collision_fraction (valid agent-steps overlapping another agent's box);
      offroad_fraction (valid vehicle steps with the box centre off the road);
      moving_fraction (agents valid now that move > 2 m over the future);
      entering_fraction (recorded agents first seen after step 0);
      stop_line_crossings / red_light_crossings (see ``stop_line_crossings``);
      type_counts (valid-now agents per type name).
    """
    valid_now, inter, change, coll, coll_n, off, off_n, moving, moving_n = [], 0, 0, 0, 0, 0, 0, 0, 0
    entering, recorded, red_cross, all_cross = 0, 0, 0, 0
    types = {name: 0 for name in dt.AGENT_TYPE_NAMES.values()}
    for s in scenarios:
        a = s.agents
        now = a.valid[:, dt.CURRENT_INDEX]
        valid_now.append(int(now.sum()))
        tl = s.traffic_lights
        signalled = tl.valid.any()
        inter += int(signalled)
        if signalled:
            st = np.where(tl.valid, tl.state, -1)
            change += int((st[1:] != st[:-1])[tl.valid[1:] & tl.valid[:-1]].any())
        cm = collision_mask(a)
        coll += int(cm.sum())
        coll_n += int(a.valid.sum())
        om = offroad_mask(s)
        off += int(om.sum())
        off_n += int((a.valid & (a.type == dt.AGENT_TYPE_VEHICLE)[:, None]).sum())
        both = a.valid[:, dt.CURRENT_INDEX] & a.valid[:, -1]
        disp = np.hypot(a.x[:, -1] - a.x[:, dt.CURRENT_INDEX], a.y[:, -1] - a.y[:, dt.CURRENT_INDEX])
        moving += int((both & (disp > 2.0)).sum())
        moving_n += int(both.sum())
        for code, name in dt.AGENT_TYPE_NAMES.items():
            types[name] += int((now & (a.type == code)).sum())
        seen = a.valid.any(1)
        recorded += int(seen.sum())
        entering += int((seen & ~a.valid[:, 0]).sum())
        r, c = stop_line_crossings(s)
        red_cross += r
        all_cross += c
    n = len(valid_now)
    return dict(num_scenes=n, median_valid_agents=float(np.median(valid_now)) if n else 0.0,
                mean_valid_agents=float(np.mean(valid_now)) if n else 0.0,
                intersection_fraction=inter / max(n, 1), light_change_fraction=change / max(inter, 1),
                collision_fraction=coll / max(coll_n, 1), offroad_fraction=off / max(off_n, 1),
                moving_fraction=moving / max(moving_n, 1), entering_fraction=entering / max(recorded, 1),
                stop_line_crossings=all_cross, red_light_crossings=red_cross, type_counts=types)

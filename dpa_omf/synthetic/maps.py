"""Procedural road maps for the synthetic world (``dpa_omf.synthetic.dataset``).

Four templates, all in right-hand traffic:

* ``straight`` / ``curved``: a corridor with 2-3 lanes per direction, a painted
  double yellow centre line or a raised median, sidewalks beyond the road edges.
* ``four_way`` / ``t_junction``: straight arms meeting at a signalled junction
  (two signal groups: main road and cross road), turn lanes through the junction
  (straight from every lane, left from the leftmost, right from the rightmost),
  crosswalks on every arm, pedestrian lines along the sidewalks that cross the
  roads on the crosswalks.

A map is built in a local frame, then rotated and translated as a whole. It gives

* ``polylines``: the road graph (lanes, road lines, road edges, medians,
  crosswalks) as dense ``[N, 2]`` point sequences with a WOMD type code and id.
  Road edges follow the WOSAC convention: the road is on the left ("port") side
  of the polyline, so medians are closed clockwise and outer edges run against
  the traffic next to them.
* ``vehicle_routes``: the paths the expert drives (a lane, or incoming lane +
  junction connector + outgoing lane), with the stop line, junction interval,
  crosswalk intervals and the parallel routes a lane change can move to.
* ``ped_routes``: sidewalk lines with an optional crosswalk interval.
* ``lights``: one signalled lane per incoming lane, with its stop point and the
  signal group of its arm.

All lengths are metres.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dpa_omf import datatypes as dt

# Maneuvers of a vehicle route.
STRAIGHT, LEFT, RIGHT = 0, 1, 2
_DENSE = 0.5  # sampling of geometry while building (m); routes are resampled later


@dataclasses.dataclass
class Polyline:
    """A road-graph polyline: ``xy`` ``[N, 2]`` (m), WOMD ``type`` code, ``id``."""

    id: int
    type: int
    xy: np.ndarray


@dataclasses.dataclass
class VehicleRoute:
    """A drivable path.

    xy: ``[N, 2]`` points along the path (m), ~0.5 m apart.
    arm: approach arm whose signal controls the route (-1: unsignalled).
    light: index into ``SceneMap.lights`` of the controlling light (-1: none).
    maneuver: STRAIGHT / LEFT / RIGHT through the junction (STRAIGHT on corridors).
    s_stop: arc length of the stop line (inf: none).
    s_junction: (entry, exit) arc lengths of the junction connector (inf: none).
    crosswalks: ``[(s0, s1, arm)]`` arc-length intervals crossing an arm's crosswalk.
    left, right: index of the parallel route one lane to the left / right (-1: none).
    lane_offset: lateral distance to those parallel routes (m).
    bike: a cyclist may ride it (rightmost lane, straight or right turn).
    segments: ``[(s0, s1, lane_id)]`` arc-length extent of each lane on the route
      outside the junction (for initial placement).
    """

    xy: np.ndarray
    arm: int = -1
    light: int = -1
    maneuver: int = STRAIGHT
    s_stop: float = np.inf
    s_junction: tuple[float, float] = (np.inf, np.inf)
    crosswalks: list = dataclasses.field(default_factory=list)
    left: int = -1
    right: int = -1
    lane_offset: float = 3.5
    bike: bool = False
    segments: list = dataclasses.field(default_factory=list)
    key: tuple = ()


@dataclasses.dataclass
class PedRoute:
    """A sidewalk line walked in one direction.

    xy: ``[N, 2]`` points (m); s_wait: where to wait before the crosswalk (inf: no
    crossing); s_cross: (s0, s1) of the road crossing; arm: the crossed arm (-1).
    """

    xy: np.ndarray
    s_wait: float = np.inf
    s_cross: tuple[float, float] = (np.inf, np.inf)
    arm: int = -1


@dataclasses.dataclass
class Light:
    """A signalled incoming lane: its polyline id, stop point ``[2]`` and arm."""

    lane_id: int
    stop_xy: np.ndarray
    arm: int


@dataclasses.dataclass
class SceneMap:
    """Everything the expert and the writer need about one map (see module doc)."""

    kind: str
    polylines: list
    vehicle_routes: list
    ped_routes: list
    lights: list
    arm_group: np.ndarray  # [num_arms] signal group (0 / 1) of each arm, -1 absent
    arm_half_width: np.ndarray  # [num_arms] half width of each arm's road (m)
    opposite_arm: np.ndarray  # [num_arms] the arm straight across (-1 none)
    center: np.ndarray  # [2] junction / corridor centre (m)


@dataclasses.dataclass(frozen=True)
class MapConfig:
    """Geometry knobs of the procedural maps (lengths in metres)."""

    lane_width: tuple[float, float] = (3.3, 3.8)
    arm_length: tuple[float, float] = (60.0, 80.0)
    corridor_length: tuple[float, float] = (140.0, 180.0)
    median_prob: float = 0.35
    median_width: tuple[float, float] = (1.5, 3.0)
    sidewalk_offset: float = 3.0  # pedestrian line beyond the road edge
    corner_radius: float = 2.5
    crosswalk_width: float = 3.0
    min_turn_radius: tuple[float, float] = (80.0, 250.0)  # curved corridors


# ---------------------------------------------------------------- geometry helpers
def arc_length(xy: np.ndarray) -> np.ndarray:
    """``[N]`` cumulative arc length of ``[N, 2]`` points."""
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=-1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def resample(xy: np.ndarray, spacing: float) -> np.ndarray:
    """Resamples a polyline at (nearly) uniform ``spacing``, keeping both ends."""
    return resample_count(xy, max(2, int(np.ceil(arc_length(xy)[-1] / spacing)) + 1))


def resample_count(xy: np.ndarray, n: int) -> np.ndarray:
    """Resamples a polyline to ``n`` points evenly spaced in arc length."""
    s = arc_length(xy)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, xy[:, 0]), np.interp(t, s, xy[:, 1])], -1)


def resample_exact(xy: np.ndarray, spacing: float) -> np.ndarray:
    """Resamples at exactly ``spacing`` (the last point may fall short of the end)."""
    s = arc_length(xy)
    t = np.arange(0.0, s[-1] + 1e-9, spacing)
    return np.stack([np.interp(t, s, xy[:, 0]), np.interp(t, s, xy[:, 1])], -1)


def tangents(xy: np.ndarray) -> np.ndarray:
    """``[N, 2]`` unit tangents (central differences)."""
    g = np.gradient(xy, axis=0)
    return g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-9)


def left_normals(xy: np.ndarray) -> np.ndarray:
    t = tangents(xy)
    return np.stack([-t[:, 1], t[:, 0]], -1)


def offset(xy: np.ndarray, d: float) -> np.ndarray:
    """Parallel curve at signed distance ``d`` (positive: left of travel)."""
    return xy + d * left_normals(xy)


def segment(p0, p1) -> np.ndarray:
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    n = max(2, int(np.ceil(np.linalg.norm(p1 - p0) / _DENSE)) + 1)
    return p0 + np.linspace(0, 1, n)[:, None] * (p1 - p0)


def turn_curve(p0, d0, p1, d1) -> np.ndarray:
    """Cubic Bezier from ``p0`` heading ``d0`` to ``p1`` heading ``d1``.

    Control points sit 0.55 of the way to the corner where the two rays meet,
    which approximates a circular arc for perpendicular turns.
    """
    p0, d0, p1, d1 = (np.asarray(v, float) for v in (p0, d0, p1, d1))
    cross = d0[0] * d1[1] - d0[1] * d1[0]
    if abs(cross) < 1e-6:  # parallel: straight connector
        return segment(p0, p1)
    # Solve p0 + a d0 = p1 - b d1.
    a, _ = np.linalg.solve(np.stack([d0, d1], -1), p1 - p0)
    corner = p0 + a * d0
    c0 = p0 + 0.55 * (corner - p0)
    c1 = p1 + 0.55 * (corner - p1)
    t = np.linspace(0, 1, 200)[:, None]
    pts = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * c0 + 3 * (1 - t) * t**2 * c1 + t**3 * p1
    return resample(pts, _DENSE)


def _arc(center, radius, a0, a1) -> np.ndarray:
    n = max(3, int(abs(a1 - a0) * radius / _DENSE) + 1)
    a = np.linspace(a0, a1, n)
    return np.asarray(center) + radius * np.stack([np.cos(a), np.sin(a)], -1)


def _concat(*parts: np.ndarray) -> np.ndarray:
    """Concatenates polylines, dropping a repeated joint point."""
    out = [parts[0]]
    for p in parts[1:]:
        out.append(p[1:] if np.linalg.norm(p[0] - out[-1][-1]) < 1e-6 else p)
    return np.concatenate(out, 0)


def _closed(*corners) -> np.ndarray:
    pts = [segment(corners[i], corners[(i + 1) % len(corners)]) for i in range(len(corners))]
    return _concat(*pts)


class _Ids:
    """Deterministic polyline id allocator (WOMD-like positive ids)."""

    def __init__(self, start: int):
        self.next = start

    def __call__(self) -> int:
        self.next += 1
        return self.next


# ---------------------------------------------------------------- corridor
def build_corridor(rng: np.random.Generator, cfg: MapConfig, curved: bool) -> SceneMap:
    """A straight or curved road with 2-3 lanes per direction."""
    ids = _Ids(int(rng.integers(100, 1000)))
    length = rng.uniform(*cfg.corridor_length)
    n_lanes = int(rng.integers(2, 4))
    w = rng.uniform(*cfg.lane_width)
    med = rng.uniform(*cfg.median_width) if rng.random() < cfg.median_prob else 0.0
    half = med / 2 + n_lanes * w

    s = np.arange(0.0, length + 1e-9, _DENSE)
    if curved:
        r = rng.uniform(*cfg.min_turn_radius) * rng.choice([-1.0, 1.0])
        if rng.random() < 0.5:  # constant-curvature bend
            kappa = np.full_like(s, 1.0 / r)
        else:  # S-bend
            kappa = np.sin(2 * np.pi * s / length) / r
        heading = np.concatenate([[0.0], np.cumsum(kappa[:-1] * _DENSE)])
    else:
        heading = np.zeros_like(s)
    ref = np.stack([np.cumsum(np.cos(heading)) * _DENSE, np.cumsum(np.sin(heading)) * _DENSE], -1)
    ref -= ref[len(ref) // 2]

    polys, routes = [], []
    lane_rows = []
    for direction in (+1, -1):  # +1: along the reference, right-hand side
        base = ref if direction > 0 else ref[::-1]
        row = []
        for k in range(n_lanes):
            xy = offset(base, -(med / 2 + (k + 0.5) * w))
            lane = Polyline(ids(), dt.RG_LANE_SURFACE_STREET, xy)
            polys.append(lane)
            total = arc_length(xy)[-1]
            routes.append(VehicleRoute(xy=xy, segments=[(0.0, total, lane.id)], lane_offset=w,
                                       bike=(k == n_lanes - 1), key=(direction, k)))
            row.append(len(routes) - 1)
        lane_rows.append(row)
        for k in range(1, n_lanes):
            polys.append(Polyline(ids(), dt.RG_ROAD_LINE_BROKEN_SINGLE_WHITE,
                                  offset(base, -(med / 2 + k * w))))
        # Outer edge on the right of this direction: road on its left.
        polys.append(Polyline(ids(), dt.RG_ROAD_EDGE_BOUNDARY, offset(base, -half)))
    for row in lane_rows:
        for k, r_idx in enumerate(row):
            routes[r_idx].left = row[k - 1] if k > 0 else -1
            routes[r_idx].right = row[k + 1] if k + 1 < len(row) else -1
    polys.extend(_centre_divider(ids, ref, med))

    peds = []
    for side in (+1, -1):
        line = offset(ref, side * (half + cfg.sidewalk_offset))
        for walk in (line, line[::-1]):
            peds.append(PedRoute(xy=offset(walk, -0.5)))  # keep right
    return SceneMap(kind="curved" if curved else "straight", polylines=polys,
                    vehicle_routes=routes, ped_routes=peds, lights=[],
                    arm_group=np.zeros([0], np.int32), arm_half_width=np.zeros([0]),
                    opposite_arm=np.zeros([0], np.int32), center=np.zeros(2))


def _centre_divider(ids: _Ids, ref: np.ndarray, med: float) -> list:
    """Double yellow line, or a raised median closed clockwise (road outside)."""
    if med <= 0:
        return [Polyline(ids(), dt.RG_ROAD_LINE_SOLID_DOUBLE_YELLOW, ref)]
    left, right = offset(ref, med / 2), offset(ref, -med / 2)
    # Clockwise in a right-handed frame: along the left side forwards, back along the right.
    ring = _concat(left, segment(left[-1], right[-1]), right[::-1], segment(right[0], left[0]))
    return [Polyline(ids(), dt.RG_ROAD_EDGE_MEDIAN, ring)]


# ---------------------------------------------------------------- junction
@dataclasses.dataclass
class _Arm:
    index: int
    u: np.ndarray  # outward unit vector
    n: np.ndarray  # left normal of u
    lanes: int
    median: float
    half: float  # road half width
    lane_width: float = 3.5
    stop: float = 0.0  # stop-line distance from the centre
    cross: float = 0.0  # crosswalk centre distance from the centre
    incoming: list = dataclasses.field(default_factory=list)  # polylines, k=0 leftmost
    outgoing: list = dataclasses.field(default_factory=list)

    def at(self, t, lat) -> np.ndarray:
        return t * self.u + lat * self.n


def build_junction(rng: np.random.Generator, cfg: MapConfig, num_arms: int) -> SceneMap:
    """A signalled 4-way intersection (``num_arms=4``) or T-junction (3)."""
    ids = _Ids(int(rng.integers(100, 1000)))
    w = rng.uniform(*cfg.lane_width)
    r_arm = rng.uniform(*cfg.arm_length)
    main_lanes = int(rng.integers(2, 4))
    cross_lanes = int(rng.choice([1, 2, 2, 3]))
    main_med = rng.uniform(*cfg.median_width) if rng.random() < cfg.median_prob else 0.0
    present = [0, 1, 2, 3] if num_arms == 4 else [0, 1, 2]
    arms = {}
    for a in present:
        ang = a * np.pi / 2
        u = np.array([np.cos(ang), np.sin(ang)])
        lanes, med = (main_lanes, main_med) if a % 2 == 0 else (cross_lanes, 0.0)
        arms[a] = _Arm(a, u, np.array([-u[1], u[0]]), lanes, med, med / 2 + lanes * w, w)
    e, cw = cfg.sidewalk_offset, cfg.crosswalk_width
    for a, arm in arms.items():
        perp = [arms[b].half for b in ((a + 1) % 4, (a + 3) % 4) if b in arms]
        arm.cross = max(perp) + e
        arm.stop = arm.cross + cw / 2 + 1.0

    polys, lights = [], []
    for arm in arms.values():
        _arm_polylines(arm, r_arm, w, ids, polys, lights)
    polys.extend(_junction_edges(arms, r_arm, cfg.corner_radius, ids))
    crosswalks = {}
    for b, arm in arms.items():
        t0, t1 = arm.cross - cw / 2, arm.cross + cw / 2
        ring = _closed(arm.at(t0, -arm.half), arm.at(t1, -arm.half), arm.at(t1, arm.half),
                       arm.at(t0, arm.half))
        polys.append(Polyline(ids(), dt.RG_CROSSWALK, ring))
        crosswalks[b] = (t0, t1)

    routes = _junction_routes(arms, ids, polys, lights, crosswalks)
    peds = _junction_ped_routes(arms, r_arm, e, num_arms)
    arm_group = np.array([a % 2 if a in arms else -1 for a in range(4)], np.int32)
    half = np.array([arms[a].half if a in arms else 0.0 for a in range(4)])
    opp = np.array([(a + 2) % 4 if (a in arms and (a + 2) % 4 in arms) else -1 for a in range(4)],
                   np.int32)
    return SceneMap(kind="four_way" if num_arms == 4 else "t_junction", polylines=polys,
                    vehicle_routes=routes, ped_routes=peds, lights=lights, arm_group=arm_group,
                    arm_half_width=half, opposite_arm=opp, center=np.zeros(2))


def _arm_polylines(arm: _Arm, r_arm: float, w: float, ids: _Ids, polys: list, lights: list) -> None:
    """Lanes, lane lines and the centre divider of one arm; one light per incoming lane."""
    med = arm.median
    for k in range(arm.lanes):
        lat = med / 2 + (k + 0.5) * w
        inc = Polyline(ids(), dt.RG_LANE_SURFACE_STREET, segment(arm.at(r_arm, lat), arm.at(arm.stop, lat)))
        out = Polyline(ids(), dt.RG_LANE_SURFACE_STREET, segment(arm.at(arm.stop, -lat), arm.at(r_arm, -lat)))
        arm.incoming.append(inc)
        arm.outgoing.append(out)
        polys.extend([inc, out])
        lights.append(Light(inc.id, inc.xy[-1].copy(), arm.index))
    for k in range(1, arm.lanes):
        lat = med / 2 + k * w
        polys.append(Polyline(ids(), dt.RG_ROAD_LINE_BROKEN_SINGLE_WHITE,
                              segment(arm.at(r_arm, lat), arm.at(arm.stop, lat))))
        polys.append(Polyline(ids(), dt.RG_ROAD_LINE_BROKEN_SINGLE_WHITE,
                              segment(arm.at(arm.stop, -lat), arm.at(r_arm, -lat))))
    ref = segment(arm.at(arm.stop, 0.0), arm.at(r_arm, 0.0))
    polys.extend(_centre_divider(ids, ref, med))


def _junction_edges(arms: dict, r_arm: float, radius: float, ids: _Ids) -> list:
    """Road edges (road on the left): corners between neighbouring arms, and the
    straight far side of a T-junction."""
    out = []
    for a, arm in arms.items():
        b = (a + 1) % 4  # the arm counter-clockwise from a: u_b = n_a
        if b in arms:
            hb = arms[b].half
            # In the (u_a, n_a) frame: arm a's left edge inwards, a quarter arc,
            # then arm b's right edge outwards.
            c = arm.at(hb + radius, arm.half + radius)
            inward = segment(arm.at(r_arm, arm.half), arm.at(hb + radius, arm.half))
            arc = _arc(c, radius, _angle(-arm.n), _angle(-arm.n) - np.pi / 2)
            outward = segment(arm.at(hb, arm.half + radius), arm.at(hb, r_arm))
            out.append(Polyline(ids(), dt.RG_ROAD_EDGE_BOUNDARY, _concat(inward, arc, outward)))
        elif (a + 2) % 4 in arms:
            # T-junction: the arm counter-clockwise from a is missing; the edge runs
            # straight along the far side, from this arm's end to the opposite arm's.
            opp = arms[(a + 2) % 4]
            out.append(Polyline(ids(), dt.RG_ROAD_EDGE_BOUNDARY,
                                segment(arm.at(r_arm, arm.half), opp.at(r_arm, -opp.half))))
    return out


def _angle(v: np.ndarray) -> float:
    return float(np.arctan2(v[1], v[0]))


def _junction_routes(arms: dict, ids: _Ids, polys: list, lights: list, crosswalks: dict) -> list:
    """Incoming lane + connector + outgoing lane for every allowed maneuver."""
    routes, index = [], {}
    light_of = {lt.lane_id: i for i, lt in enumerate(lights)}
    for a, arm in arms.items():
        moves = []
        for k in range(arm.lanes):
            if (a + 2) % 4 in arms:
                moves.append((k, (a + 2) % 4, min(k, arms[(a + 2) % 4].lanes - 1), STRAIGHT))
        if (a + 3) % 4 in arms:
            moves.append((0, (a + 3) % 4, 0, LEFT))
        if (a + 1) % 4 in arms:
            moves.append((arm.lanes - 1, (a + 1) % 4, arms[(a + 1) % 4].lanes - 1, RIGHT))
        for k, b, kb, man in moves:
            inc, out = arm.incoming[k], arms[b].outgoing[kb]
            conn = turn_curve(inc.xy[-1], -arm.u, out.xy[0], arms[b].u)
            polys.append(Polyline(ids(), dt.RG_LANE_SURFACE_STREET, conn))
            xy = _concat(inc.xy, conn, out.xy)
            s_in = arc_length(inc.xy)[-1]
            s_out = s_in + arc_length(conn)[-1]
            route = VehicleRoute(
                xy=xy, arm=a, light=light_of[inc.id], maneuver=man, s_stop=s_in,
                s_junction=(s_in, s_out), lane_offset=arm.lane_width,
                bike=(k == arm.lanes - 1 and man != LEFT),
                segments=[(0.0, s_in, inc.id), (s_out, arc_length(xy)[-1], out.id)], key=(a, k, man))
            route.crosswalks = _crosswalk_intervals(xy, arms, crosswalks)
            index[(a, k, man)] = len(routes)
            routes.append(route)
    for (a, k, man), i in index.items():
        if man == STRAIGHT:
            routes[i].left = index.get((a, k - 1, STRAIGHT), -1)
            routes[i].right = index.get((a, k + 1, STRAIGHT), -1)
    return routes


def _crosswalk_intervals(xy: np.ndarray, arms: dict, crosswalks: dict) -> list:
    """Arc-length intervals where a route runs over a crosswalk: ``[(s0, s1, arm)]``."""
    s = arc_length(xy)
    out = []
    for b, (t0, t1) in crosswalks.items():
        arm = arms[b]
        t, lat = xy @ arm.u, xy @ arm.n
        inside = (t >= t0) & (t <= t1) & (np.abs(lat) <= arm.half + 0.5)
        if inside.any():
            out.append((float(s[inside].min()), float(s[inside].max()), b))
    return out


def _junction_ped_routes(arms: dict, r_arm: float, e: float, num_arms: int) -> list:
    """Sidewalk lines along arms 0 and 1, each crossing at most one road.

    The line along arm ``a`` on side ``sigma`` (offset ``sigma * (half + e)``) crosses
    the road of the arm ``b`` with ``u_b = sigma * n_a`` on that arm's crosswalk.
    """
    peds = []
    for a in (0, 1):
        arm = arms[a]
        for sigma in (+1, -1):
            b = (a + 1) % 4 if sigma > 0 else (a + 3) % 4
            if num_arms == 3 and a == 1:
                t_end = -(arms[0].half + e)  # the stem's lines end on the far sidewalk
            else:
                t_end = -r_arm
            if b not in arms:
                b = -1
            lat = sigma * (arm.half + e)
            for inbound in (True, False):
                t0, t1 = (r_arm, t_end) if inbound else (t_end, r_arm)
                xy = offset(segment(arm.at(t0, lat), arm.at(t1, lat)), -0.5)  # keep right
                if b < 0:
                    peds.append(PedRoute(xy=xy))
                    continue
                # Road b spans t in [-half_b_perp, +half_b_perp] along arm a: its
                # perpendicular half width is arm a's crossing distance minus e.
                width = arm.cross - e
                s_c0 = abs(t0 - (width if inbound else -width))
                s_c1 = abs(t0 - (-width if inbound else width))
                peds.append(PedRoute(xy=xy, s_wait=s_c0 - 0.8, s_cross=(s_c0, s_c1), arm=b))
    return peds


# ---------------------------------------------------------------- top level
TEMPLATES = ("straight", "curved", "four_way", "t_junction")


def build_map(rng: np.random.Generator, kind: str, cfg: MapConfig = MapConfig()) -> SceneMap:
    """Builds a map of template ``kind``, then rotates and translates it at random."""
    if kind == "straight":
        m = build_corridor(rng, cfg, curved=False)
    elif kind == "curved":
        m = build_corridor(rng, cfg, curved=True)
    elif kind == "four_way":
        m = build_junction(rng, cfg, 4)
    elif kind == "t_junction":
        m = build_junction(rng, cfg, 3)
    else:
        raise ValueError(f"unknown map template {kind!r}; expected one of {TEMPLATES}")
    return _transform(m, rng.uniform(-np.pi, np.pi), rng.uniform(-300, 300, size=2))


def _transform(m: SceneMap, angle: float, shift: np.ndarray) -> SceneMap:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])

    def f(xy):
        return xy @ rot.T + shift

    for p in m.polylines:
        p.xy = f(p.xy)
    for r in m.vehicle_routes:
        r.xy = f(r.xy)
    for r in m.ped_routes:
        r.xy = f(r.xy)
    for lt in m.lights:
        lt.stop_xy = f(lt.stop_xy[None])[0]
    m.center = f(m.center[None])[0]
    return m

"""Fitting parsed scenes to fixed slot counts, and the checks both WOMD parsers share.

A parser (``womd_example`` for tf.Examples, ``womd_scenario`` for Scenario
protos) turns one record into a ``Scenario`` with as many agents and road-graph
samples as the record holds; ``fit_scenario`` then gives it the configured
shape (``ReaderConfig``): agent slots ``[max_agents]`` (the required agents
first, then the nearest others, see ``select_agents``) and road-graph samples
``[max_roadgraph_points]`` (valid samples packed first, polylines subsampled
when there are too many, see ``fit_roadgraph``). ``RecordInfo`` reports what
was dropped. Every error names the record's ``Source``.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.io.tfrecord import DataError, Source

log = logging.getLogger(__name__)

_NO_SOURCE = Source("<scenario>")  # for scenes that do not come from a file

# Per-step float fields of ``Agents`` (zeroed at invalid steps by the readers).
AGENT_FLOAT_FIELDS = ("x", "y", "z", "heading", "vel_x", "vel_y", "length", "width", "height")


@dataclasses.dataclass(frozen=True)
class ReaderConfig:
    """How records become fixed-size ``Scenario`` s.

    Attributes:
      max_agents: agent slots A of the output. None keeps the record's own
        size for tf.Examples (128 in WOMD) and means 128 for Scenario protos.
        When a scene has more agents than slots, every agent to simulate and to
        evaluate is kept, then the others nearest to the SDC (see
        ``select_agents``); too many required agents is an error.
      max_roadgraph_points: road-graph samples P of the output. None keeps the
        record's own size for tf.Examples and means 30,000 for Scenario protos.
        Scenes with more samples are subsampled along each polyline (warning).
      check_finite: raise on NaN / inf coordinates at valid entries.
    """

    max_agents: int | None = None
    max_roadgraph_points: int | None = None
    check_finite: bool = True

    def __post_init__(self):
        for name in ("max_agents", "max_roadgraph_points"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"ReaderConfig.{name} must be >= 1 or None, got {v}")


DEFAULT_CONFIG = ReaderConfig()  # keeps a tf.Example's own sizes; 128 agents, 30,000 samples for Scenario protos


@dataclasses.dataclass(frozen=True)
class RecordInfo:
    """What a reader did to one record (returned next to the Scenario).

    Attributes:
      source: the record (file, index).
      fmt: "example" or "scenario".
      num_agents: agents in the record (tracks of a Scenario proto, non-padding
        slots of a tf.Example: slots with at least one valid step).
      num_dropped_agents: agents left out because of ``max_agents``.
      dropped_agent_ids: their object ids.
      num_roadgraph_points: valid road-graph samples in the record (before fitting).
      num_dropped_points: valid samples removed by subsampling.
      num_dropped_lights: signalled lanes beyond the 16 slots (Scenario protos).
    """

    source: Source
    fmt: str
    num_agents: int
    num_dropped_agents: int = 0
    dropped_agent_ids: tuple[int, ...] = ()
    num_roadgraph_points: int = 0
    num_dropped_points: int = 0
    num_dropped_lights: int = 0



# ================================================================ checks shared by the parsers
def eval_mask(is_sdc: np.ndarray, ttp: np.ndarray, sim: np.ndarray, source: Source) -> np.ndarray:
    """Agents to evaluate: the SDC and the tracks to predict, among those valid now (``sim``), all ``[A]`` bool.

    Agents asked for but not valid at the current step are logged and left out.
    """
    want = is_sdc | ttp
    if (want & ~sim).any():
        log.warning("%s: %d agent(s) to evaluate are not valid at the current step; not evaluated",
                    source, int((want & ~sim).sum()))
    return want & sim


def check_scenario(s: dt.Scenario, source: Source, sim_field: str) -> None:
    """Raises ``DataError`` unless ``s`` has an agent valid now and passes ``Scenario.validate``.

    Args:
      sim_field: the record's field that holds validity at the current step (named in the error).
    """
    if not s.agents.sim_mask.any():
        raise DataError.at(source, sim_field, "scene has no agent valid at the current step")
    try:
        s.validate(str(source))
    except ValueError as e:
        raise DataError.at(source, None, str(e)) from None


# ================================================================ fitting to fixed sizes
def select_agents(s: dt.Scenario, max_agents: int,
                  source: Source = _NO_SOURCE) -> tuple[np.ndarray, np.ndarray]:
    """Chooses which agent slots to keep when a scene has more agents than slots.

    Kept first: every agent to simulate (valid at the current step) or to
    evaluate; then the others by increasing distance to the SDC's current
    position (their closest valid position over the scene; agents never valid
    are dropped first). Kept slots stay in their original order.

    Args:
      s: a single scenario, agents ``[A, T]``.
      max_agents: slots available.
    Returns:
      ``(keep, drop)``: int arrays of slot indices, ``keep`` sorted, ``len(keep) <= max_agents``.
    Raises:
      DataError when more than ``max_agents`` agents are required.
    """
    a = s.agents
    n = a.valid.shape[0]
    if n <= max_agents:
        return np.arange(n), np.zeros([0], np.int64)
    required = a.sim_mask | a.eval_mask | a.is_sdc
    if required.sum() > max_agents:
        raise DataError.at(source, "tracks",
                           f"{int(required.sum())} agents must be kept ({int(a.sim_mask.sum())} valid at the current "
                           f"step, plus those to evaluate) but only {max_agents} agent slots are configured "
                           f"(max_agents) for scenario {dt.scenario_id_str(s.scenario_id)!r}")
    centre = _sdc_position(s)
    d = np.hypot(a.x - centre[0], a.y - centre[1])
    dist = np.where(a.valid, d, np.inf).min(axis=1)
    dist = np.where(required, -1.0, dist)  # required first
    order = np.lexsort((np.arange(n), dist))  # stable: ties keep proto order
    keep = np.sort(order[:max_agents])
    drop = np.sort(order[max_agents:])
    return keep, drop


def _sdc_position(s: dt.Scenario) -> np.ndarray:
    a = s.agents
    c = dt.CURRENT_INDEX
    who = np.flatnonzero(a.is_sdc & a.valid[:, c])
    if who.size == 0:  # no SDC: the centroid of the agents valid now
        who = np.flatnonzero(a.valid[:, c])
    return np.array([a.x[who, c].mean(), a.y[who, c].mean()])


def fit_agents(agents: dt.Agents, keep: np.ndarray, num_slots: int) -> dt.Agents:
    """Gathers slots ``keep`` and pads with empty slots to ``num_slots``."""
    pad = dt.empty_scenario(num_slots, 1).agents
    out = {}
    for f in dataclasses.fields(dt.Agents):
        src, dst = getattr(agents, f.name), getattr(pad, f.name).copy()
        dst[: len(keep)] = src[keep]
        out[f.name] = dst
    return dt.Agents(**out)


def fit_roadgraph(rg: dt.RoadGraph, num_points: int,
                  source: Source = _NO_SOURCE) -> tuple[dt.RoadGraph, int]:
    """Packs the valid samples first and pads / subsamples to ``num_points``.

    When there are more valid samples than ``num_points``, every polyline is
    subsampled with the same stride (keeping its first and last sample) and
    the directions recomputed; a warning is logged.

    Returns:
      ``(roadgraph [num_points], num_dropped_valid_samples)``.
    """
    valid_idx = np.flatnonzero(rg.valid)
    n = valid_idx.size
    dropped = 0
    if n > num_points:
        stride = 2
        while True:
            keep = _strided_polyline_samples(rg.id[valid_idx], stride)
            if keep.size <= num_points:
                break
            stride += 1
        log.warning("%s: %d road-graph samples exceed max_roadgraph_points=%d; subsampled with stride %d "
                    "(%d kept)", source, n, num_points, stride, keep.size)
        dropped = n - keep.size
        idx = valid_idx[keep]
        xyz, ids = rg.xyz[idx], rg.id[idx]
        direction = polyline_directions(xyz, ids)
        rtype = rg.type[idx]
    else:
        idx = valid_idx
        xyz, ids, direction, rtype = rg.xyz[idx], rg.id[idx], rg.dir[idx], rg.type[idx]
    out = dt.empty_scenario(1, num_points).roadgraph
    m = len(idx)
    out.xyz[:m], out.dir[:m], out.type[:m], out.id[:m], out.valid[:m] = xyz, direction, rtype, ids, True
    return out, dropped


def _strided_polyline_samples(ids: np.ndarray, stride: int) -> np.ndarray:
    """Indices of every ``stride``-th sample of each run of equal ids, plus each run's last sample."""
    n = ids.size
    new_run = np.concatenate([[True], ids[1:] != ids[:-1]])
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
    last = np.concatenate([ids[1:] != ids[:-1], [True]])
    return np.flatnonzero(((np.arange(n) - run_start) % stride == 0) | last)


def polyline_directions(xyz: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Unit direction from each sample to the next sample of the same polyline.

    Args:
      xyz: float ``[P, 3]`` samples, polylines stored contiguously in order.
      ids: int ``[P]`` polyline id of each sample.
    Returns:
      float32 ``[P, 3]``; zero at a polyline's last sample and for repeated points.
    """
    d = np.zeros(xyz.shape, np.float64)
    if len(xyz) > 1:
        step = np.diff(xyz.astype(np.float64), axis=0)
        same = ids[1:] == ids[:-1]
        norm = np.linalg.norm(step, axis=-1, keepdims=True)
        ok = same[:, None] & (norm > 1e-9)
        d[:-1] = np.where(ok, step / np.where(norm > 1e-9, norm, 1.0), 0.0)
    return d.astype(np.float32)


def fit_scenario(s: dt.Scenario, max_agents: int | None, max_points: int | None,
                 info: RecordInfo) -> tuple[dt.Scenario, RecordInfo]:
    """Fits a single scenario to ``max_agents`` slots and ``max_points`` samples (None: unchanged).

    Args:
      s: agents ``[A, 91]``, road graph ``[P]``.
      info: what the parser saw; its ``source`` names the record in messages.
    Returns:
      ``(scenario with agents [max_agents, 91] and road graph [max_points], info with the drops)``.
    """
    source = info.source
    changes = {}
    agents = s.agents
    if max_agents is not None and max_agents != agents.valid.shape[0]:
        keep, drop = select_agents(s, max_agents, source)
        if drop.size:
            dropped_ids = tuple(int(i) for i in agents.id[drop])
            log.info("%s: kept %d of %d agents, %d dropped (max_agents=%d)", source, len(keep),
                     len(keep) + drop.size, drop.size, max_agents)
            changes.update(num_dropped_agents=int(drop.size), dropped_agent_ids=dropped_ids)
        s = s.replace(agents=fit_agents(agents, keep, max_agents))
    if max_points is not None and max_points != s.roadgraph.valid.shape[0]:
        rg, dropped = fit_roadgraph(s.roadgraph, max_points, source)
        s = s.replace(roadgraph=rg)
        changes["num_dropped_points"] = dropped
    return s, dataclasses.replace(info, **changes)


def canonicalize(s: dt.Scenario) -> dt.Scenario:
    """Zeroes every value at invalid entries (the form the readers produce).

    Use before comparing a generated scenario with what was read back.
    """
    a, r, t = s.agents, s.roadgraph, s.traffic_lights
    per_step = {f: np.where(a.valid, getattr(a, f), 0).astype(np.float32) for f in AGENT_FLOAT_FIELDS}
    return s.replace(
        agents=a.replace(**per_step),
        roadgraph=r.replace(xyz=np.where(r.valid[..., None], r.xyz, 0).astype(np.float32),
                            dir=np.where(r.valid[..., None], r.dir, 0).astype(np.float32),
                            type=np.where(r.valid, r.type, 0).astype(np.int32),
                            id=np.where(r.valid, r.id, -1).astype(np.int32)),
        traffic_lights=t.replace(state=np.where(t.valid, t.state, 0).astype(np.int32),
                                 lane_id=np.where(t.valid, t.lane_id, -1).astype(np.int32),
                                 stop_point=np.where(t.valid[..., None], t.stop_point, 0).astype(np.float32)))


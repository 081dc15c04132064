"""WOMD ``Scenario`` protos -> ``dpa_omf.datatypes.Scenario`` (numpy).

What becomes what:

* ``tracks`` -> agents, in proto order (so track index i is slot i when the
  scene fits in ``max_agents``); ``agents.id`` = ``Track.id``. A scene with more
  tracks than slots keeps every track valid at the current step and every
  track to evaluate, then the tracks nearest the SDC (``fit.select_agents``);
  the number dropped is logged and returned in ``RecordInfo``.
* ``sdc_track_index`` -> ``is_sdc``; ``tracks_to_predict`` -> ``eval_mask``
  (together with the SDC, as WOSAC evaluates them).
* ``map_features`` -> road-graph samples with the tf.Example type codes:
  lane centres (``LaneType`` 0-3), road lines (5 + ``RoadLineType``), road edges
  (14 + ``RoadEdgeType``: 15 boundary, 16 median, 14 unknown), stop signs (17,
  one sample at the sign), crosswalks (18), speed bumps (19) and driveways (20)
  as closed polygons (first point repeated at the end). Polyline id = map
  feature id; ``dir`` points to the next sample of the same feature.
* ``dynamic_map_states`` -> traffic lights ``[91, 16]``: each signalled lane
  gets one slot for the whole scene (lanes ordered by first appearance, those
  seen at the current step first), so a slot follows one lane through time.
"""

from __future__ import annotations

import logging

import numpy as np
from google.protobuf.message import DecodeError

from dpa_omf import datatypes as dt
from dpa_omf.io import fit, protos
from dpa_omf.io.fit import DEFAULT_CONFIG, ReaderConfig, RecordInfo
from dpa_omf.io.tfrecord import DataError, Source

log = logging.getLogger(__name__)

DEFAULT_MAX_AGENTS = 128
DEFAULT_MAX_ROADGRAPH_POINTS = 30_000
_NO_SOURCE = Source("<scenario>")  # for bytes that do not come from a file

# ObjectState field -> Agents field.
_STATE_FIELDS = {
    "center_x": "x", "center_y": "y", "center_z": "z", "heading": "heading", "velocity_x": "vel_x",
    "velocity_y": "vel_y", "length": "length", "width": "width", "height": "height",
}
_LANE_OFFSET, _ROAD_LINE_OFFSET, _ROAD_EDGE_OFFSET = 0, 5, 14
_POLYGON_TYPES = {"crosswalk": dt.RG_CROSSWALK, "speed_bump": dt.RG_SPEED_BUMP, "driveway": dt.RG_DRIVEWAY}


def parse_scenario(data: bytes, source: Source = _NO_SOURCE,
                   config: ReaderConfig = DEFAULT_CONFIG) -> dt.Scenario:
    """Parses one serialized WOMD ``Scenario`` proto.

    Args:
      data: the serialized proto.
      source: the record, named in error messages.
      config: ``max_agents`` (None: 128) and ``max_roadgraph_points`` (None: 30,000).
    Returns:
      a single ``Scenario``: agents ``[max_agents, 91]``, road graph
      ``[max_roadgraph_points]``, traffic lights ``[91, 16]``.
    Raises:
      DataError naming the source and the proto field.
    """
    return parse_scenario_with_info(data, source, config)[0]


def parse_scenario_with_info(data: bytes, source: Source = _NO_SOURCE,
                             config: ReaderConfig = DEFAULT_CONFIG) -> tuple[dt.Scenario, RecordInfo]:
    """``parse_scenario`` that also returns a ``RecordInfo`` (dropped agents, points, lights)."""
    try:
        msg = protos.Scenario.FromString(data)
    except DecodeError as e:
        raise DataError.at(source, None, f"not a valid Scenario proto ({e})") from None
    return scenario_from_proto(msg, source, config)


def scenario_from_proto(msg, source: Source = _NO_SOURCE,
                        config: ReaderConfig = DEFAULT_CONFIG) -> tuple[dt.Scenario, RecordInfo]:
    """Converts a parsed ``protos.Scenario`` message (see ``parse_scenario``)."""

    def fail(field: str, text: str) -> DataError:
        return DataError.at(source, field, text)

    if len(msg.timestamps_seconds) not in (0, dt.NUM_STEPS):
        raise fail("timestamps_seconds", f"has {len(msg.timestamps_seconds)} steps, expected {dt.NUM_STEPS}")
    if msg.HasField("current_time_index") and msg.current_time_index != dt.CURRENT_INDEX:
        raise fail("current_time_index", f"is {msg.current_time_index}, expected {dt.CURRENT_INDEX}")
    if not msg.tracks:
        raise fail("tracks", "scene has no track")
    agents = _agents(msg, fail, config.check_finite, source)
    if not agents.sim_mask.any():
        raise fail(f"tracks[*].states[{dt.CURRENT_INDEX}].valid", "scene has no agent valid at the current step")
    roadgraph = _roadgraph(msg, fail, config.check_finite)
    lights, dropped_lights = _traffic_lights(msg, fail, config.check_finite, source)
    scenario = dt.Scenario(agents=agents, roadgraph=roadgraph, traffic_lights=lights,
                           scenario_id=dt.scenario_id_to_bytes(msg.scenario_id))
    info = RecordInfo(source=source, fmt="scenario", num_agents=len(msg.tracks),
                      num_roadgraph_points=int(roadgraph.valid.sum()), num_dropped_lights=dropped_lights)
    max_agents = config.max_agents or DEFAULT_MAX_AGENTS
    max_points = config.max_roadgraph_points or DEFAULT_MAX_ROADGRAPH_POINTS
    scenario, info = fit.fit_scenario(scenario, max_agents, max_points, info)
    fit.check_scenario(scenario, source, f"tracks[*].states[{dt.CURRENT_INDEX}].valid")
    return scenario, info


def _agents(msg, fail, check_finite: bool, source: Source) -> dt.Agents:
    n = len(msg.tracks)
    for i, track in enumerate(msg.tracks):
        if len(track.states) != dt.NUM_STEPS:
            raise fail(f"tracks[{i}].states", f"has {len(track.states)} states, expected {dt.NUM_STEPS}")
    # One pass over the states (attribute access dominates: ~23k states in a 257-track scene).
    names = tuple(_STATE_FIELDS)
    rows = [(st.center_x, st.center_y, st.center_z, st.heading, st.velocity_x, st.velocity_y, st.length, st.width,
             st.height, st.valid) for t in msg.tracks for st in t.states]  # columns: names + valid
    table = np.array(rows, np.float64).reshape(n, dt.NUM_STEPS, len(names) + 1)
    valid = table[..., -1] > 0
    fields = {}
    for j, name in enumerate(names):
        v = np.where(valid, table[..., j], 0.0)
        if check_finite:
            bad = ~np.isfinite(v) & valid
            if bad.any():
                i, t = (int(k) for k in np.argwhere(bad)[0])
                raise fail(f"tracks[{i}].states[{t}].{name}", "non-finite value at a valid state")
        fields[_STATE_FIELDS[name]] = v.astype(np.float32)
    is_sdc = np.zeros([n], bool)
    if msg.HasField("sdc_track_index"):
        if not 0 <= msg.sdc_track_index < n:
            raise fail("sdc_track_index", f"{msg.sdc_track_index} is not a track index (0..{n - 1})")
        is_sdc[msg.sdc_track_index] = True
    ttp = np.zeros([n], bool)
    for k, req in enumerate(msg.tracks_to_predict):
        if not 0 <= req.track_index < n:
            raise fail(f"tracks_to_predict[{k}].track_index", f"{req.track_index} is not a track index (0..{n - 1})")
        ttp[req.track_index] = True
    sim = valid[:, dt.CURRENT_INDEX]
    eval_mask = fit.eval_mask(is_sdc, ttp, sim, source)
    return dt.Agents(**fields, valid=valid, type=np.array([t.object_type for t in msg.tracks], np.int32),
                     id=np.array([t.id for t in msg.tracks], np.int32), is_sdc=is_sdc, eval_mask=eval_mask,
                     sim_mask=sim)


def _feature_points(feature) -> tuple[int, list] | None:
    """``(type code, points)`` of one map feature, None for a feature without data."""
    kind = feature.WhichOneof("feature_data")
    if kind == "lane":
        return _LANE_OFFSET + feature.lane.type, list(feature.lane.polyline)
    if kind == "road_line":
        return _ROAD_LINE_OFFSET + feature.road_line.type, list(feature.road_line.polyline)
    if kind == "road_edge":
        return _ROAD_EDGE_OFFSET + feature.road_edge.type, list(feature.road_edge.polyline)
    if kind == "stop_sign":
        return dt.RG_STOP_SIGN, [feature.stop_sign.position]
    if kind in _POLYGON_TYPES:
        polygon = list(getattr(feature, kind).polygon)
        return _POLYGON_TYPES[kind], polygon + polygon[:1]  # closed: the last segment returns to the start
    return None


def _roadgraph(msg, fail, check_finite: bool) -> dt.RoadGraph:
    xyz, types, ids = [], [], []
    for k, feature in enumerate(msg.map_features):
        got = _feature_points(feature)
        if got is None or not got[1]:
            continue
        code, points = got
        if not -(2**31) <= feature.id < 2**31:
            raise fail(f"map_features[{k}].id", f"{feature.id} does not fit the int32 polyline id")
        pts = np.array([(p.x, p.y, p.z) for p in points], np.float64)
        if check_finite and not np.isfinite(pts).all():
            raise fail(f"map_features[{k}].{feature.WhichOneof('feature_data')}", "non-finite point coordinate")
        xyz.append(pts)
        types.append(np.full([len(pts)], code, np.int32))
        ids.append(np.full([len(pts)], feature.id, np.int32))
    if not xyz:
        return dt.empty_scenario(1, 0).roadgraph
    xyz_all, ids_all = np.concatenate(xyz), np.concatenate(ids)
    return dt.RoadGraph(xyz=xyz_all.astype(np.float32), dir=fit.polyline_directions(xyz_all, ids_all),
                        type=np.concatenate(types), id=ids_all, valid=np.ones([len(ids_all)], bool))


def _traffic_lights(msg, fail, check_finite: bool, source: Source) -> tuple[dt.TrafficLights, int]:
    out = dt.empty_scenario(1, 1).traffic_lights
    states = msg.dynamic_map_states
    if len(states) == 0:
        return out, 0
    if len(states) != dt.NUM_STEPS:
        raise fail("dynamic_map_states", f"has {len(states)} steps, expected {dt.NUM_STEPS}")
    order = [dt.CURRENT_INDEX] + [t for t in range(dt.NUM_STEPS) if t != dt.CURRENT_INDEX]
    slots: dict[int, int] = {}
    for t in order:
        for ls in states[t].lane_states:
            slots.setdefault(ls.lane, len(slots))
    dropped = max(0, len(slots) - dt.NUM_TRAFFIC_LIGHTS)
    if dropped:
        log.warning("%s: %d signalled lanes beyond the %d traffic-light slots are dropped", source, dropped,
                    dt.NUM_TRAFFIC_LIGHTS)
    for t, dms in enumerate(states):
        for k, ls in enumerate(dms.lane_states):
            slot = slots[ls.lane]
            if slot >= dt.NUM_TRAFFIC_LIGHTS:
                continue
            p = ls.stop_point
            if check_finite and not np.isfinite([p.x, p.y, p.z]).all():
                raise fail(f"dynamic_map_states[{t}].lane_states[{k}].stop_point", "non-finite coordinate")
            out.state[t, slot], out.lane_id[t, slot] = ls.state, ls.lane
            out.stop_point[t, slot] = (p.x, p.y, p.z)
            out.valid[t, slot] = True
    return out, dropped

"""WOMD tf.Example records <-> ``dpa_omf.datatypes.Scenario`` (numpy).

The WOMD tf.Example layout (one record = one scene):

* ``state/{past,current,future}/{x,y,z,bbox_yaw,velocity_x,velocity_y,length,
  width,height,valid}``: ``[A, n]`` agent-major with n = 10 / 1 / 80 steps;
  ``state/{id,type,is_sdc,tracks_to_predict}``: ``[A]`` (id and type are floats).
* ``roadgraph_samples/{xyz,dir}``: ``[P, 3]``; ``roadgraph_samples/{type,id,valid}``:
  ``[P]``. P is read from the data (20,000 in the shared sample, 30,000 in
  current releases).
* ``traffic_light_state/{past,current,future}/{state,id,x,y,z,valid}``: ``[n, L]``
  time-major, L = 16.
* ``scenario/id``: one bytes value.

Instead of ``tf.train.Example`` + Python lists, records are decoded straight
from the protobuf wire format with numpy (packed float lists become
``np.frombuffer`` views), which keeps reading well above 200 scenes/s on one
core, and lets every error name the WOMD feature that is wrong. The inverse,
``scenario_to_example``, writes the same layout (plus the WOMD fields this
project does not use: speed, vel_yaw, timestamps, objects_of_interest,
difficulty) so that files written here can be read by other WOMD tools.

Conventions of the reader (see ``datatypes``): values at invalid entries are
zero (WOMD stores -1 there), padding agent slots have type 0 and id -1,
invalid road-graph samples type 0 and id -1, invalid traffic-light slots state
0 and lane id -1. ``eval_mask = (is_sdc | tracks_to_predict) & sim_mask`` and
``sim_mask = valid[:, CURRENT_INDEX]``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator

import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.io import tfrecord
from dpa_omf.io.tfrecord import DataError

log = logging.getLogger(__name__)

# WOMD feature name -> Agents field, for the per-step float features.
STATE_FLOAT_FIELDS = {
    "x": "x", "y": "y", "z": "z", "bbox_yaw": "heading", "velocity_x": "vel_x", "velocity_y": "vel_y",
    "length": "length", "width": "width", "height": "height",
}
# Coordinates that must be finite at valid entries (the rest is checked by Scenario.validate).
PERIODS = (("past", dt.NUM_PAST), ("current", 1), ("future", dt.NUM_FUTURE))

_KIND_BYTES, _KIND_FLOAT, _KIND_INT64 = 1, 2, 3
_KIND_NAMES = {_KIND_BYTES: "bytes_list", _KIND_FLOAT: "float_list", _KIND_INT64: "int64_list"}


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


@dataclasses.dataclass(frozen=True)
class RecordInfo:
    """What a reader did to one record (returned next to the Scenario).

    Attributes:
      source: "file: record k".
      fmt: "example" or "scenario".
      num_agents: agents in the record (tracks of a Scenario proto, non-padding
        slots of a tf.Example: slots with at least one valid step).
      num_dropped_agents: agents left out because of ``max_agents``.
      dropped_agent_ids: their object ids.
      num_roadgraph_points: valid road-graph samples in the record (before fitting).
      num_dropped_points: valid samples removed by subsampling.
      num_dropped_lights: signalled lanes beyond the 16 slots (Scenario protos).
    """

    source: str
    fmt: str
    num_agents: int
    num_dropped_agents: int = 0
    dropped_agent_ids: tuple[int, ...] = ()
    num_roadgraph_points: int = 0
    num_dropped_points: int = 0
    num_dropped_lights: int = 0


# ================================================================ wire format
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _skip_field(buf: bytes, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(buf, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        n, pos = _varint(buf, pos)
        return pos + n
    if wire == 5:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire}")


def decode_varints(data: np.ndarray) -> np.ndarray:
    """Vectorized decoding of concatenated protobuf varints.

    Args:
      data: uint8 ``[n_bytes]``.
    Returns:
      int64 ``[n_values]`` (two's complement, as protobuf int64).
    """
    if data.size == 0:
        return np.zeros([0], np.int64)
    if data.max() < 0x80:  # every value < 128: the common case for valid/type/state
        return data.astype(np.int64)
    ends = data < 0x80
    if not ends[-1]:
        raise ValueError("packed varints end in the middle of a value")
    starts = np.concatenate([[0], np.flatnonzero(ends)[:-1] + 1])
    group = np.cumsum(np.concatenate([[0], ends[:-1].astype(np.int64)]))
    shift = (7 * (np.arange(data.size) - starts[group])).astype(np.uint64)
    # The 7-bit groups occupy disjoint bits, so the sum is their bitwise or.
    vals = (data & 0x7F).astype(np.uint64) << shift
    return np.add.reduceat(vals, starts).view(np.int64)


def encode_varints(values: np.ndarray) -> bytes:
    """Vectorized protobuf varint encoding of int64 values (inverse of ``decode_varints``)."""
    v = np.asarray(values, np.int64).view(np.uint64).ravel()
    if v.size == 0:
        return b""
    if (v < 0x80).all():
        return v.astype(np.uint8).tobytes()
    nbytes = np.ones(v.shape, np.int64)
    for k in range(1, 10):  # 7 bits per byte; a 64-bit value needs at most 10 bytes
        nbytes += v >= np.uint64(1 << (7 * k))
    out = np.zeros([int(nbytes.sum())], np.uint8)
    starts = np.concatenate([[0], np.cumsum(nbytes)[:-1]])
    for j in range(int(nbytes.max())):
        sel = nbytes > j
        byte = ((v[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        more = nbytes[sel] > j + 1
        out[starts[sel] + j] = byte | (more.astype(np.uint8) << 7)
    return out.tobytes()


def _varint_bytes(n: int) -> bytes:
    """Encodes one non-negative int (tags and lengths: a numpy call would cost more)."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint_bytes((field << 3) | 2) + _varint_bytes(len(payload)) + payload


class _Features:
    """The decoded ``Features`` map of one tf.Example: name -> (kind, list payload span)."""

    def __init__(self, buf: bytes, source: str):
        self.buf, self.source = buf, source
        self.spans: dict[str, tuple[int, int, int]] = {}
        try:
            self._decode()
        except (IndexError, ValueError) as e:
            raise DataError(*_split_source(source), None, f"not a valid tf.Example ({e})") from None

    def _decode(self) -> None:
        buf, pos, end = self.buf, 0, len(self.buf)
        while pos < end:
            key, pos = _varint(buf, pos)
            if key != 0x0A:  # Example.features
                pos = _skip_field(buf, pos, key & 7)
                continue
            n, pos = _varint(buf, pos)
            self._decode_features(pos, pos + n)
            pos += n
        if pos != end:
            raise ValueError("message ends inside a field")

    def _decode_features(self, pos: int, end: int) -> None:
        buf = self.buf
        while pos < end:
            key, pos = _varint(buf, pos)
            if key != 0x0A:  # Features.feature map entry
                pos = _skip_field(buf, pos, key & 7)
                continue
            n, pos = _varint(buf, pos)
            self._decode_entry(pos, pos + n)
            pos += n

    def _decode_entry(self, pos: int, end: int) -> None:
        buf, name, span = self.buf, None, (0, pos, pos)
        while pos < end:
            key, pos = _varint(buf, pos)
            if key & 7 != 2:
                pos = _skip_field(buf, pos, key & 7)
                continue
            n, pos = _varint(buf, pos)
            if key >> 3 == 1:
                name = bytes(buf[pos:pos + n]).decode("utf-8")
            elif key >> 3 == 2:
                span = self._feature_kind(pos, pos + n)
            pos += n
        if name is not None:
            self.spans[name] = span

    def _feature_kind(self, pos: int, end: int) -> tuple[int, int, int]:
        buf, kind, span = self.buf, 0, (pos, pos)
        while pos < end:  # Feature oneof: last one wins, as in protobuf
            key, pos = _varint(buf, pos)
            n, pos = _varint(buf, pos)
            if key & 7 == 2 and (key >> 3) in _KIND_NAMES:
                kind, span = key >> 3, (pos, pos + n)
            pos += n
        return (kind, *span)

    # ------------------------------------------------------------ accessors
    def has(self, name: str) -> bool:
        return name in self.spans

    def get(self, name: str, kind: int, count: int | None) -> np.ndarray:
        """The values of feature ``name``: float32 / int64 array, or list of bytes."""
        if name not in self.spans:
            raise DataError(*_split_source(self.source), name, "missing feature")
        k, start, end = self.spans[name]
        if k != kind and not (k == 0 and start == end):  # an empty Feature has no kind
            raise DataError(*_split_source(self.source), name,
                            f"expected a {_KIND_NAMES[kind]}, found a {_KIND_NAMES.get(k, 'feature without values')}")
        values = self._values(kind, start, end)
        if count is not None and len(values) != count:
            raise DataError(*_split_source(self.source), name, f"has {len(values)} values, expected {count}")
        return values

    def _values(self, kind: int, pos: int, end: int):
        buf = self.buf
        chunks, singles = [], []
        while pos < end:
            key, pos = _varint(buf, pos)
            wire = key & 7
            if key >> 3 != 1:
                pos = _skip_field(buf, pos, wire)
            elif wire == 2:
                n, pos = _varint(buf, pos)
                chunks.append((pos, pos + n))
                pos += n
            elif kind == _KIND_FLOAT and wire == 5:  # unpacked float
                singles.append(np.frombuffer(buf, "<f4", 1, pos))
                pos += 4
            elif kind == _KIND_INT64 and wire == 0:  # unpacked int64
                v, pos = _varint(buf, pos)
                singles.append(np.array([v], np.uint64).view(np.int64))
            else:
                raise ValueError(f"unexpected wire type {wire} in a {_KIND_NAMES[kind]}")
        if kind == _KIND_BYTES:
            return [bytes(buf[a:b]) for a, b in chunks]
        if kind == _KIND_FLOAT:
            parts = [np.frombuffer(buf, "<f4", (b - a) // 4, a) for a, b in chunks] + singles
            return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros([0], np.float32)
        raw = np.frombuffer(buf, np.uint8)
        parts = [decode_varints(raw[a:b]) for a, b in chunks] + singles
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros([0], np.int64)


def _split_source(source: str) -> tuple[str, int | None]:
    """'file: record k' -> ('file', k); any other string -> (string, None)."""
    head, sep, tail = source.rpartition(": record ")
    if sep and tail.isdigit():
        return head, int(tail)
    return source, None


def _source(path: str, record: int) -> str:
    return f"{path}: record {record}"


# ================================================================ reading
def parse_example(data: bytes, source: str = "<example>", config: ReaderConfig = ReaderConfig()) -> dt.Scenario:
    """Parses one serialized WOMD tf.Example into a numpy ``Scenario``.

    Args:
      data: the serialized ``tf.train.Example``.
      source: "file: record k", used in error messages.
      config: output sizes (None keeps the record's own: A = 128 in WOMD, P from the data).
    Returns:
      a single (unbatched) ``Scenario`` with agents ``[A, 91]``, road graph
      ``[P]``, traffic lights ``[91, 16]``.
    Raises:
      DataError naming the source and the feature (missing feature, wrong
      length, NaN coordinate at a valid entry, no agent valid at the current step).
    """
    return parse_example_with_info(data, source, config)[0]


def parse_example_with_info(data: bytes, source: str = "<example>",
                            config: ReaderConfig = ReaderConfig()) -> tuple[dt.Scenario, RecordInfo]:
    """``parse_example`` that also returns a ``RecordInfo``."""
    feats = _Features(data, source)
    num_agents = len(feats.get("state/id", _KIND_FLOAT, None))
    agents = _read_agents(feats, num_agents, config.check_finite)
    roadgraph = _read_roadgraph(feats, config.check_finite)
    lights = _read_lights(feats, config.check_finite)
    sid = feats.get("scenario/id", _KIND_BYTES, 1)[0]
    scenario = dt.Scenario(agents=agents, roadgraph=roadgraph, traffic_lights=lights,
                           scenario_id=dt.scenario_id_to_bytes(sid.decode("ascii", errors="replace")))
    nonpad = int(agents.valid.any(-1).sum())
    scenario, info = fit_scenario(scenario, source, config.max_agents, config.max_roadgraph_points,
                                  RecordInfo(source=source, fmt="example", num_agents=nonpad,
                                             num_roadgraph_points=int(roadgraph.valid.sum())))
    _check_scenario(scenario, source)
    return scenario, info


def _read_agents(feats: _Features, a: int, check_finite: bool) -> dt.Agents:
    valid = np.concatenate([feats.get(f"state/{p}/valid", _KIND_INT64, a * n).reshape(a, n)
                            for p, n in PERIODS], axis=1) > 0
    fields = {}
    for name, field in STATE_FLOAT_FIELDS.items():
        parts = [feats.get(f"state/{p}/{name}", _KIND_FLOAT, a * n).reshape(a, n) for p, n in PERIODS]
        v = np.where(valid, np.concatenate(parts, axis=1), np.float32(0))
        if check_finite:
            _check_agent_finite(v, valid, feats.source, name)
        fields[field] = v.astype(np.float32)
    ids = feats.get("state/id", _KIND_FLOAT, a)
    types = feats.get("state/type", _KIND_FLOAT, a)
    is_sdc = feats.get("state/is_sdc", _KIND_INT64, a) > 0
    ttp = feats.get("state/tracks_to_predict", _KIND_INT64, a) > 0
    for name, v in (("state/id", ids), ("state/type", types)):
        if not np.isfinite(v).all():
            raise DataError(*_split_source(feats.source), name, "non-finite value")
    sim = valid[:, dt.CURRENT_INDEX]
    return dt.Agents(**fields, valid=valid, type=np.maximum(types, 0).astype(np.int32),
                     id=ids.astype(np.int32), is_sdc=is_sdc, eval_mask=_eval_mask(is_sdc, ttp, sim, feats.source),
                     sim_mask=sim)


def _eval_mask(is_sdc: np.ndarray, ttp: np.ndarray, sim: np.ndarray, source: str) -> np.ndarray:
    want = is_sdc | ttp
    if (want & ~sim).any():
        log.warning("%s: %d agent(s) to evaluate are not valid at the current step; not evaluated",
                    source, int((want & ~sim).sum()))
    return want & sim


def _check_finite_at_valid(v: np.ndarray, valid: np.ndarray, source: str, field: str) -> None:
    bad = ~np.isfinite(v) & valid
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(*_split_source(source), field, f"non-finite value at valid entry {idx}")


def _check_agent_finite(v: np.ndarray, valid: np.ndarray, source: str, name: str) -> None:
    """Raises naming the WOMD feature (``state/<period>/<name>``), agent slot and step."""
    bad = ~np.isfinite(v) & valid
    if bad.any():
        slot, t = (int(i) for i in np.argwhere(bad)[0])
        for p, n in PERIODS:
            if t < n:
                break
            t -= n
        raise DataError(*_split_source(source), f"state/{p}/{name}",
                        f"non-finite value at a valid entry (agent slot {slot}, step {t} of {p})")


def _read_roadgraph(feats: _Features, check_finite: bool) -> dt.RoadGraph:
    p = len(feats.get("roadgraph_samples/valid", _KIND_INT64, None))
    valid = feats.get("roadgraph_samples/valid", _KIND_INT64, p) > 0
    xyz = np.where(valid[:, None], feats.get("roadgraph_samples/xyz", _KIND_FLOAT, 3 * p).reshape(p, 3), 0)
    direction = np.where(valid[:, None], feats.get("roadgraph_samples/dir", _KIND_FLOAT, 3 * p).reshape(p, 3), 0)
    if check_finite:
        _check_finite_at_valid(xyz, valid[:, None], feats.source, "roadgraph_samples/xyz")
        _check_finite_at_valid(direction, valid[:, None], feats.source, "roadgraph_samples/dir")
    rtype = feats.get("roadgraph_samples/type", _KIND_INT64, p)
    rid = feats.get("roadgraph_samples/id", _KIND_INT64, p)
    return dt.RoadGraph(xyz=xyz.astype(np.float32), dir=direction.astype(np.float32),
                        type=np.where(valid, rtype, 0).astype(np.int32),
                        id=np.where(valid, rid, -1).astype(np.int32), valid=valid)


def _read_lights(feats: _Features, check_finite: bool) -> dt.TrafficLights:
    num = len(feats.get("traffic_light_state/current/state", _KIND_INT64, None))

    def get(name: str, kind: int) -> np.ndarray:
        return np.concatenate([feats.get(f"traffic_light_state/{p}/{name}", kind, n * num).reshape(n, num)
                               for p, n in PERIODS], axis=0)

    valid = get("valid", _KIND_INT64) > 0
    stop = np.stack([get(c, _KIND_FLOAT) for c in "xyz"], axis=-1)
    stop = np.where(valid[..., None], stop, 0).astype(np.float32)
    if check_finite:
        _check_finite_at_valid(stop, valid[..., None], feats.source, "traffic_light_state/*/{x,y,z}")
    return dt.TrafficLights(state=np.where(valid, get("state", _KIND_INT64), 0).astype(np.int32),
                            lane_id=np.where(valid, get("id", _KIND_INT64), -1).astype(np.int32),
                            stop_point=stop, valid=valid)


def _check_scenario(s: dt.Scenario, source: str) -> None:
    if not s.agents.sim_mask.any():
        raise DataError(*_split_source(source), "state/current/valid",
                        "scene has no agent valid at the current step")
    try:
        s.validate(source)
    except ValueError as e:
        raise DataError(*_split_source(source), None, str(e)) from None


# ================================================================ fitting to fixed sizes
def select_agents(s: dt.Scenario, max_agents: int, source: str = "<scenario>") -> tuple[np.ndarray, np.ndarray]:
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
        raise DataError(*_split_source(source), "tracks",
                        f"{int(required.sum())} agents must be kept (valid at the current step or to "
                        f"evaluate) but only {max_agents} agent slots are configured (max_agents)")
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


def fit_roadgraph(rg: dt.RoadGraph, num_points: int, source: str = "<scenario>") -> tuple[dt.RoadGraph, int]:
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


def fit_scenario(s: dt.Scenario, source: str, max_agents: int | None, max_points: int | None,
                 info: RecordInfo) -> tuple[dt.Scenario, RecordInfo]:
    """Fits a scenario to ``max_agents`` slots and ``max_points`` samples (None: unchanged)."""
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
    per_step = {f: np.where(a.valid, getattr(a, f), 0).astype(np.float32) for f in STATE_FLOAT_FIELDS.values()}
    return s.replace(
        agents=a.replace(**per_step),
        roadgraph=r.replace(xyz=np.where(r.valid[..., None], r.xyz, 0).astype(np.float32),
                            dir=np.where(r.valid[..., None], r.dir, 0).astype(np.float32),
                            type=np.where(r.valid, r.type, 0).astype(np.int32),
                            id=np.where(r.valid, r.id, -1).astype(np.int32)),
        traffic_lights=t.replace(state=np.where(t.valid, t.state, 0).astype(np.int32),
                                 lane_id=np.where(t.valid, t.lane_id, -1).astype(np.int32),
                                 stop_point=np.where(t.valid[..., None], t.stop_point, 0).astype(np.float32)))


# ================================================================ writing
def _feature(kind: int, payload: bytes) -> bytes:
    inner = _len_field(1, payload) if payload else b""
    return _len_field(kind, inner)


def _floats(v) -> bytes:
    return _feature(_KIND_FLOAT, np.ascontiguousarray(v, "<f4").tobytes())


def _ints(v) -> bytes:
    return _feature(_KIND_INT64, encode_varints(np.asarray(v, np.int64)))


def _bytes_list(values: list[bytes]) -> bytes:
    return _len_field(_KIND_BYTES, b"".join(_len_field(1, b) for b in values))


def scenario_to_example(s: dt.Scenario) -> bytes:
    """Serializes a single numpy ``Scenario`` as a WOMD tf.Example (inverse of ``parse_example``).

    Invalid entries are written as WOMD does (-1 for floats and codes), so the
    file looks like a WOMD file; ``parse_example(scenario_to_example(s))``
    equals ``canonicalize(s)`` exactly.

    Args:
      s: a single scenario (agents ``[A, 91]``, road graph ``[P]``, lights ``[91, L]``).
    Returns:
      the serialized ``tf.train.Example``.
    """
    a, r, t = s.agents, s.roadgraph, s.traffic_lights
    if a.valid.ndim != 2:
        raise ValueError(f"scenario_to_example takes a single scenario, got agents.valid {a.valid.shape}")
    feats: dict[str, bytes] = {}
    valid = np.asarray(a.valid, bool)
    bounds = np.cumsum([0] + [n for _, n in PERIODS])
    speed = np.hypot(a.vel_x, a.vel_y)
    vel_yaw = np.arctan2(a.vel_y, a.vel_x)
    timestamps = (np.arange(dt.NUM_STEPS) * dt.DT * 1e6).round().astype(np.int64)
    for k, (p, _) in enumerate(PERIODS):
        sl = slice(bounds[k], bounds[k + 1])
        v = valid[:, sl]
        for name, field in STATE_FLOAT_FIELDS.items():
            feats[f"state/{p}/{name}"] = _floats(np.where(v, getattr(a, field)[:, sl], -1.0))
        feats[f"state/{p}/speed"] = _floats(np.where(v, speed[:, sl], -1.0))
        feats[f"state/{p}/vel_yaw"] = _floats(np.where(v, vel_yaw[:, sl], -1.0))
        feats[f"state/{p}/valid"] = _ints(v)
        feats[f"state/{p}/timestamp_micros"] = _ints(np.where(v, timestamps[sl], -1))
        tv = np.asarray(t.valid[sl], bool)
        feats[f"traffic_light_state/{p}/state"] = _ints(np.where(tv, t.state[sl], -1))
        feats[f"traffic_light_state/{p}/id"] = _ints(np.where(tv, t.lane_id[sl], -1))
        feats[f"traffic_light_state/{p}/valid"] = _ints(tv)
        for c in range(3):
            feats[f"traffic_light_state/{p}/{'xyz'[c]}"] = _floats(np.where(tv, t.stop_point[sl, :, c], -1.0))
        feats[f"traffic_light_state/{p}/timestamp_micros"] = _ints(timestamps[sl])
    feats["state/id"] = _floats(a.id)
    feats["state/type"] = _floats(a.type)
    feats["state/is_sdc"] = _ints(a.is_sdc)
    feats["state/tracks_to_predict"] = _ints(a.eval_mask & ~a.is_sdc)
    feats["state/objects_of_interest"] = _ints(np.zeros_like(a.id))
    feats["state/difficulty_level"] = _ints(np.zeros_like(a.id))
    rv = np.asarray(r.valid, bool)
    feats["roadgraph_samples/xyz"] = _floats(np.where(rv[:, None], r.xyz, -1.0))
    feats["roadgraph_samples/dir"] = _floats(np.where(rv[:, None], r.dir, -1.0))
    feats["roadgraph_samples/type"] = _ints(np.where(rv, r.type, -1))
    feats["roadgraph_samples/id"] = _ints(np.where(rv, r.id, -1))
    feats["roadgraph_samples/valid"] = _ints(rv)
    feats["scenario/id"] = _bytes_list([dt.scenario_id_str(s.scenario_id).encode("ascii")])
    entries = b"".join(_len_field(1, _len_field(1, k.encode()) + _len_field(2, v)) for k, v in sorted(feats.items()))
    return _len_field(1, entries)


def write_tfrecord(path: str, scenarios: Iterable[dt.Scenario]) -> int:
    """Writes scenarios as WOMD tf.Example records, atomically.

    Args:
      path: output file.
      scenarios: single numpy scenarios (a batched one is split along axis 0).
    Returns:
      the number of records written.
    """
    def records() -> Iterator[bytes]:
        for s in scenarios:
            if np.ndim(s.agents.valid) == 3:
                for i in range(s.agents.valid.shape[0]):
                    import jax
                    yield scenario_to_example(jax.tree.map(lambda x, i=i: np.asarray(x[i]), s))
            else:
                yield scenario_to_example(s)

    return tfrecord.write_records(path, records())


# ================================================================ format detection + public reader
def detect_format(data: bytes) -> str:
    """'example' or 'scenario' for one serialized record.

    A tf.Example is a single ``features`` field (tag 0x0A) spanning the whole
    record and holding WOMD ``state/`` features; a Scenario proto has several
    top-level fields.
    """
    try:
        if data[:1] == b"\x0a":
            n, pos = _varint(data, 1)
            if pos + n == len(data):
                feats = _Features(data, "<detect>")
                if feats.has("state/id") or feats.has("state/current/x"):
                    return "example"
    except (DataError, IndexError, ValueError):
        pass
    return "scenario"


def parse_record(data: bytes, source: str, fmt: str = "auto",
                 config: ReaderConfig = ReaderConfig()) -> tuple[dt.Scenario, RecordInfo]:
    """Parses one record of either format into ``(Scenario, RecordInfo)``."""
    if fmt == "auto":
        fmt = detect_format(data)
    if fmt == "example":
        return parse_example_with_info(data, source, config)
    if fmt == "scenario":
        from dpa_omf.io import womd_scenario as scenario_proto

        return scenario_proto.parse_scenario_with_info(data, source, config)
    raise ValueError(f"unknown record format {fmt!r} (expected 'auto', 'example' or 'scenario')")


def file_format(path: str, fmt: str = "auto") -> str:
    """The format of a file, from its first record ('example' if the file is empty)."""
    if fmt != "auto":
        return fmt
    first = tfrecord.read_first_record(path)
    return "example" if first is None else detect_format(first)


def read_tfrecord_with_info(path: str, fmt: str = "auto", config: ReaderConfig | None = None,
                            **opts) -> Iterator[tuple[dt.Scenario, RecordInfo]]:
    """Like ``read_tfrecord`` but yields ``(Scenario, RecordInfo)`` pairs."""
    config = dataclasses.replace(config or ReaderConfig(), **opts)
    path = os.fspath(path)
    fmt = file_format(path, fmt)
    for k, data in tfrecord.iter_records(path):
        yield parse_record(data, _source(path, k), fmt, config)


def read_tfrecord(path: str, fmt: str = "auto", config: ReaderConfig | None = None,
                  **opts) -> Iterator[dt.Scenario]:
    """Reads every record of a TFRecord file as numpy ``Scenario`` s.

    Args:
      path: a TFRecord file of WOMD tf.Examples or WOMD Scenario protos.
      fmt: 'auto' (detected from the file's first record), 'example' or 'scenario'.
      config: a ``ReaderConfig``; ``**opts`` override its fields
        (``max_agents``, ``max_roadgraph_points``, ``check_finite``).
    Yields:
      single scenarios, in file order.
    Raises:
      DataError naming file, record index and field for corrupt / truncated
      files and bad records.
    """
    for s, _ in read_tfrecord_with_info(path, fmt, config, **opts):
        yield s


# ================================================================ test / benchmark scenes
def random_scenario(rng: np.random.Generator, num_agents: int = 32, num_points: int = 1000,
                    scenario_id: str = "random", num_used_agents: int | None = None) -> dt.Scenario:
    """A canonical random scene (not traffic: smooth random walks), for tests and benchmarks.

    Args:
      rng: numpy generator.
      num_agents: agent slots A; the first ``num_used_agents`` (default 3/4 of A) are used.
      num_points: road-graph samples P; about 80% hold random polylines.
      scenario_id: up to 16 ASCII characters.
    Returns:
      a single numpy ``Scenario`` that passes ``validate()``, with zeros at invalid entries.
    """
    s = dt.empty_scenario(num_agents, num_points)
    a, r, t = s.agents, s.roadgraph, s.traffic_lights
    n = num_used_agents if num_used_agents is not None else max(1, 3 * num_agents // 4)
    steps = np.arange(dt.NUM_STEPS)
    speed = rng.uniform(0, 15, [n, 1])
    heading = rng.uniform(-np.pi, np.pi, [n, 1]) + np.cumsum(rng.normal(0, 0.01, [n, dt.NUM_STEPS]), axis=1)
    a.heading[:n] = heading
    a.vel_x[:n], a.vel_y[:n] = speed * np.cos(heading), speed * np.sin(heading)
    a.x[:n] = rng.uniform(-50, 50, [n, 1]) + np.cumsum(a.vel_x[:n] * dt.DT, axis=1)
    a.y[:n] = rng.uniform(-50, 50, [n, 1]) + np.cumsum(a.vel_y[:n] * dt.DT, axis=1)
    a.z[:n] = rng.normal(0, 0.1, [n, 1])
    a.length[:n], a.width[:n], a.height[:n] = 4.5, 2.0, 1.6
    start = rng.integers(0, dt.CURRENT_INDEX + 1, [n, 1])
    stop = rng.integers(dt.CURRENT_INDEX + 1, dt.NUM_STEPS + 1, [n, 1])
    a.valid[:n] = (steps >= start) & (steps < stop)
    a.valid[n - 1, dt.CURRENT_INDEX] = n == 1 or bool(rng.integers(2))  # some agents not valid now
    a.valid[0, dt.CURRENT_INDEX] = True  # the SDC always is
    a.type[:n] = rng.integers(1, 4, [n])
    a.id[:n] = rng.permutation(10 * num_agents)[:n]
    a.is_sdc[0] = True
    a.sim_mask[:] = a.valid[:, dt.CURRENT_INDEX]
    a.eval_mask[:] = a.sim_mask & (rng.random(num_agents) < 0.2)
    a.eval_mask[0] = True
    # Road graph: random polylines filling ~80% of the samples.
    used = int(0.8 * num_points)
    lengths = rng.integers(5, 50, [max(1, used // 5)])
    ids = np.repeat(np.arange(len(lengths)), lengths)[:used]
    xy = np.cumsum(rng.normal(0, 0.5, [used, 2]), axis=0)
    r.xyz[:used, :2], r.xyz[:used, 2] = xy, rng.normal(0, 0.1, [used])
    r.id[:used] = ids + 100
    r.type[:used] = rng.choice([1, 2, 6, 7, 15, 16, 18], len(lengths))[ids]
    r.dir[:used] = polyline_directions(r.xyz[:used], r.id[:used])
    r.valid[:used] = True
    # Traffic lights: 4 slots, with a stop point and state changing over time.
    t.valid[:, :4] = True
    t.lane_id[:, :4] = np.arange(4) + 100
    t.state[:, :4] = rng.integers(1, dt.TL_NUM_STATES, [dt.NUM_STEPS, 4])
    t.stop_point[:, :4] = rng.uniform(-50, 50, [1, 4, 3])
    return canonicalize(s.replace(scenario_id=dt.scenario_id_to_bytes(scenario_id)))

"""WOMD tf.Example records -> ``dpa_omf.datatypes.Scenario`` (numpy).

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

Records are parsed by the protobuf library (``protos.Example``, no TensorFlow
import); its value lists convert to numpy without a Python loop. Measured on
the shared WOMD record and on synthetic 128-agent / 30,000-sample records, this
is as fast as or faster than the hand-written wire decoder it replaced (see
BUILD_NOTES.md). Every error names the record and the WOMD feature that is wrong.
``example_writer`` writes the same layout.

Conventions of the reader (see ``datatypes``): values at invalid entries are
zero (WOMD stores -1 there), padding agent slots have type 0 and id -1,
invalid road-graph samples type 0 and id -1, invalid traffic-light slots state
0 and lane id -1. ``eval_mask = (is_sdc | tracks_to_predict) & sim_mask`` and
``sim_mask = valid[:, CURRENT_INDEX]``.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

from dpa_omf import datatypes as dt
from dpa_omf.io import fit, protos
from dpa_omf.io.fit import DEFAULT_CONFIG, ReaderConfig, RecordInfo
from dpa_omf.io.tfrecord import DataError, Source

# WOMD feature name -> Agents field, for the per-step float features.
STATE_FLOAT_FIELDS = {
    "x": "x", "y": "y", "z": "z", "bbox_yaw": "heading", "velocity_x": "vel_x", "velocity_y": "vel_y",
    "length": "length", "width": "width", "height": "height",
}
# The three periods of a WOMD tf.Example and their number of steps.
PERIODS = (("past", dt.NUM_PAST), ("current", 1), ("future", dt.NUM_FUTURE))

BYTES, FLOAT, INT64 = "bytes_list", "float_list", "int64_list"
_NO_SOURCE = Source("<example>")  # for bytes that do not come from a file
_DTYPES = {FLOAT: np.float32, INT64: np.int64}


class Features:
    """The ``features`` map of one parsed tf.Example, with typed, checked access.

    Args:
      data: the serialized ``tf.train.Example``.
      source: the record, for error messages.
    Raises:
      DataError when ``data`` is not a tf.Example.
    """

    def __init__(self, data: bytes, source: Source):
        self.source = source
        try:
            self.feature = protos.Example.FromString(data).features.feature
        except DecodeError as e:
            raise DataError.at(source, None, f"not a valid tf.Example ({e})") from None

    def has(self, name: str) -> bool:
        return name in self.feature

    def get(self, name: str, kind: str, count: int | None) -> np.ndarray | list[bytes]:
        """The values of feature ``name``: float32 / int64 ``[count]`` array, or a list of bytes.

        Args:
          kind: ``BYTES``, ``FLOAT`` or ``INT64``.
          count: the number of values expected (None: any).
        """
        if name not in self.feature:
            raise DataError.at(self.source, name, "missing feature")
        feature = self.feature[name]
        found = feature.WhichOneof("kind")
        if found is not None and found != kind:  # an empty Feature has no kind
            raise DataError.at(self.source, name, f"expected a {kind}, found a {found}")
        values = getattr(feature, kind).value
        values = list(values) if kind == BYTES else np.array(values, _DTYPES[kind])
        if count is not None and len(values) != count:
            raise DataError.at(self.source, name, f"has {len(values)} values, expected {count}")
        return values


def is_example(data: bytes) -> bool:
    """Whether one serialized record is a WOMD tf.Example (else: a Scenario proto).

    A tf.Example is a single ``features`` field (tag 0x0A) spanning the whole
    record and holding WOMD ``state/`` features; a Scenario proto has several
    top-level fields.
    """
    if data[:1] != b"\x0a":
        return False
    n, pos, shift = 0, 1, 0
    while pos < min(len(data), 11):  # the length varint (at most 10 bytes)
        b = data[pos]
        n, pos, shift = n | (b & 0x7F) << shift, pos + 1, shift + 7
        if b < 0x80:
            break
    if pos + n != len(data):
        return False
    try:
        feats = Features(data, Source("<detect>"))
    except DataError:
        return False
    return feats.has("state/id") or feats.has("state/current/x")


# ================================================================ reading
def parse_example(data: bytes, source: Source = _NO_SOURCE,
                  config: ReaderConfig = DEFAULT_CONFIG) -> dt.Scenario:
    """Parses one serialized WOMD tf.Example into a numpy ``Scenario``.

    Args:
      data: the serialized ``tf.train.Example``.
      source: the record, named in error messages.
      config: output sizes (None keeps the record's own: A = 128 in WOMD, P from the data).
    Returns:
      a single (unbatched) ``Scenario`` with agents ``[A, 91]``, road graph
      ``[P]``, traffic lights ``[91, 16]``.
    Raises:
      DataError naming the source and the feature (missing feature, wrong
      length, NaN coordinate at a valid entry, no agent valid at the current step).
    """
    return parse_example_with_info(data, source, config)[0]


def parse_example_with_info(data: bytes, source: Source = _NO_SOURCE,
                            config: ReaderConfig = DEFAULT_CONFIG) -> tuple[dt.Scenario, RecordInfo]:
    """``parse_example`` that also returns a ``RecordInfo``."""
    feats = Features(data, source)
    num_agents = len(feats.get("state/id", FLOAT, None))
    agents = _read_agents(feats, num_agents, config.check_finite)
    roadgraph = _read_roadgraph(feats, config.check_finite)
    lights = _read_lights(feats, config.check_finite)
    sid = feats.get("scenario/id", BYTES, 1)[0]
    scenario = dt.Scenario(agents=agents, roadgraph=roadgraph, traffic_lights=lights,
                           scenario_id=dt.scenario_id_to_bytes(sid.decode("ascii", errors="replace")))
    nonpad = int(agents.valid.any(-1).sum())
    scenario, info = fit.fit_scenario(scenario, config.max_agents, config.max_roadgraph_points,
                                      RecordInfo(source=source, fmt="example", num_agents=nonpad,
                                                 num_roadgraph_points=int(roadgraph.valid.sum())))
    fit.check_scenario(scenario, source, "state/current/valid")
    return scenario, info


def _read_agents(feats: Features, a: int, check_finite: bool) -> dt.Agents:
    valid = np.concatenate([feats.get(f"state/{p}/valid", INT64, a * n).reshape(a, n)
                            for p, n in PERIODS], axis=1) > 0
    fields = {}
    for name, field in STATE_FLOAT_FIELDS.items():
        parts = [feats.get(f"state/{p}/{name}", FLOAT, a * n).reshape(a, n) for p, n in PERIODS]
        v = np.where(valid, np.concatenate(parts, axis=1), np.float32(0))
        if check_finite:
            _check_agent_finite(v, valid, feats.source, name)
        fields[field] = v.astype(np.float32)
    ids = feats.get("state/id", FLOAT, a)
    types = feats.get("state/type", FLOAT, a)
    is_sdc = feats.get("state/is_sdc", INT64, a) > 0
    ttp = feats.get("state/tracks_to_predict", INT64, a) > 0
    for name, v in (("state/id", ids), ("state/type", types)):
        if not np.isfinite(v).all():
            raise DataError.at(feats.source, name, "non-finite value")
    sim = valid[:, dt.CURRENT_INDEX]
    return dt.Agents(**fields, valid=valid, type=np.maximum(types, 0).astype(np.int32),
                     id=ids.astype(np.int32), is_sdc=is_sdc, eval_mask=fit.eval_mask(is_sdc, ttp, sim, feats.source),
                     sim_mask=sim)


def _check_finite_at_valid(v: np.ndarray, valid: np.ndarray, source: Source, field: str) -> None:
    bad = ~np.isfinite(v) & valid
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError.at(source, field, f"non-finite value at valid entry {idx}")


def _check_agent_finite(v: np.ndarray, valid: np.ndarray, source: Source, name: str) -> None:
    """Raises naming the WOMD feature (``state/<period>/<name>``), agent slot and step."""
    bad = ~np.isfinite(v) & valid
    if bad.any():
        slot, t = (int(i) for i in np.argwhere(bad)[0])
        starts = np.cumsum([0] + [n for _, n in PERIODS])
        k = int(np.searchsorted(starts, t, side="right")) - 1
        period, t = PERIODS[k][0], t - int(starts[k])
        raise DataError.at(source, f"state/{period}/{name}",
                           f"non-finite value at a valid entry (agent slot {slot}, step {t} of {period})")


def _read_roadgraph(feats: Features, check_finite: bool) -> dt.RoadGraph:
    p = len(feats.get("roadgraph_samples/valid", INT64, None))
    valid = feats.get("roadgraph_samples/valid", INT64, p) > 0
    xyz = np.where(valid[:, None], feats.get("roadgraph_samples/xyz", FLOAT, 3 * p).reshape(p, 3), 0)
    direction = np.where(valid[:, None], feats.get("roadgraph_samples/dir", FLOAT, 3 * p).reshape(p, 3), 0)
    if check_finite:
        _check_finite_at_valid(xyz, valid[:, None], feats.source, "roadgraph_samples/xyz")
        _check_finite_at_valid(direction, valid[:, None], feats.source, "roadgraph_samples/dir")
    rtype = feats.get("roadgraph_samples/type", INT64, p)
    rid = feats.get("roadgraph_samples/id", INT64, p)
    return dt.RoadGraph(xyz=xyz.astype(np.float32), dir=direction.astype(np.float32),
                        type=np.where(valid, rtype, 0).astype(np.int32),
                        id=np.where(valid, rid, -1).astype(np.int32), valid=valid)


def _read_lights(feats: Features, check_finite: bool) -> dt.TrafficLights:
    num = len(feats.get("traffic_light_state/current/state", INT64, None))

    def get(name: str, kind: str) -> np.ndarray:
        return np.concatenate([feats.get(f"traffic_light_state/{p}/{name}", kind, n * num).reshape(n, num)
                               for p, n in PERIODS], axis=0)

    valid = get("valid", INT64) > 0
    stop = np.stack([get(c, FLOAT) for c in "xyz"], axis=-1)
    stop = np.where(valid[..., None], stop, 0).astype(np.float32)
    if check_finite:
        _check_finite_at_valid(stop, valid[..., None], feats.source, "traffic_light_state/*/{x,y,z}")
    return dt.TrafficLights(state=np.where(valid, get("state", INT64), 0).astype(np.int32),
                            lane_id=np.where(valid, get("id", INT64), -1).astype(np.int32),
                            stop_point=stop, valid=valid)

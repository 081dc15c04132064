"""Pytree dataclasses that flow through every stage of dpa_omf.

Conventions (shared by every module):

* Time axis: 91 steps at 10 Hz = 10 past steps + the current step (index
  ``CURRENT_INDEX = 10``) + 80 future steps. Simulation starts after the
  current step.
* Units: metres, radians (heading, counter-clockwise from +x), metres/second.
  Coordinates are in the scenario's global frame as stored in WOMD.
* Leading batch dimensions are allowed everywhere (``...``): a single scenario
  has agent arrays of shape ``[A, T]``, a batch ``[B, A, T]``. Every
  time-varying field has a ``valid`` mask; values at invalid entries are
  arbitrary (the readers write zeros there, never NaN).
* Integer codes follow the WOMD tf.Example conventions (see the ``*_TYPE_*``
  and ``TL_*`` constants below).

All classes are ``flax.struct`` dataclasses: they are pytrees, so a scenario
or a batch of scenarios passes through ``jax.jit`` / ``jax.vmap`` /
``jax.tree.map`` unchanged. Construction does no checking (it must work on
tracers); ``validate()`` checks a concrete (numpy) instance and raises
``ValueError`` naming the field.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = Any  # np.ndarray or jax.Array

# ---------------------------------------------------------------- time axis
NUM_PAST = 10
CURRENT_INDEX = 10
NUM_HISTORY = NUM_PAST + 1  # past + current
NUM_FUTURE = 80
NUM_STEPS = NUM_HISTORY + NUM_FUTURE  # 91
DT = 0.1  # seconds per step

# ---------------------------------------------------------------- agents
AGENT_TYPE_UNSET = 0
AGENT_TYPE_VEHICLE = 1
AGENT_TYPE_PEDESTRIAN = 2
AGENT_TYPE_CYCLIST = 3
AGENT_TYPE_OTHER = 4
AGENT_TYPE_NAMES = {0: "unset", 1: "vehicle", 2: "pedestrian", 3: "cyclist", 4: "other"}

# ---------------------------------------------------------------- road graph
# WOMD tf.Example `roadgraph_samples/type` codes.
RG_LANE_FREEWAY = 1
RG_LANE_SURFACE_STREET = 2
RG_LANE_BIKE = 3
RG_ROAD_LINE_BROKEN_SINGLE_WHITE = 6
RG_ROAD_LINE_SOLID_SINGLE_WHITE = 7
RG_ROAD_LINE_SOLID_DOUBLE_WHITE = 8
RG_ROAD_LINE_BROKEN_SINGLE_YELLOW = 9
RG_ROAD_LINE_BROKEN_DOUBLE_YELLOW = 10
RG_ROAD_LINE_SOLID_SINGLE_YELLOW = 11
RG_ROAD_LINE_SOLID_DOUBLE_YELLOW = 12
RG_ROAD_LINE_PASSING_DOUBLE_YELLOW = 13
RG_ROAD_EDGE_UNKNOWN = 14  # Scenario-proto road edges of unknown type (as Waymax)
RG_ROAD_EDGE_BOUNDARY = 15
RG_ROAD_EDGE_MEDIAN = 16
RG_STOP_SIGN = 17
RG_CROSSWALK = 18
RG_SPEED_BUMP = 19
RG_DRIVEWAY = 20
RG_LANE_TYPES = (RG_LANE_FREEWAY, RG_LANE_SURFACE_STREET, RG_LANE_BIKE)
RG_ROAD_EDGE_TYPES = (RG_ROAD_EDGE_UNKNOWN, RG_ROAD_EDGE_BOUNDARY, RG_ROAD_EDGE_MEDIAN)
RG_NUM_TYPES = 21  # codes are < 21

# ---------------------------------------------------------------- traffic lights
# WOMD `traffic_light_state/*/state` codes (same as Scenario proto
# TrafficSignalLaneState.State).
TL_UNKNOWN = 0
TL_ARROW_STOP = 1
TL_ARROW_CAUTION = 2
TL_ARROW_GO = 3
TL_STOP = 4
TL_CAUTION = 5
TL_GO = 6
TL_FLASHING_STOP = 7
TL_FLASHING_CAUTION = 8
TL_NUM_STATES = 9
NUM_TRAFFIC_LIGHTS = 16  # tf.Example slots

SCENARIO_ID_BYTES = 16  # WOMD ids are 16 hex characters


@struct.dataclass
class Agents:
    """Agent tracks.

    Per-step fields have shape ``[..., A, T]`` (T = 91 in a ``Scenario``):
      x, y, z: float32 position of the box centre, metres.
      heading: float32 yaw, radians.
      vel_x, vel_y: float32 velocity, m/s.
      length, width, height: float32 box size, metres.
      valid: bool, the agent was observed at that step.
    Per-agent fields have shape ``[..., A]``:
      type: int32 ``AGENT_TYPE_*`` code (0 for padding slots).
      id: int32 WOMD object id (-1 for padding slots).
      is_sdc: bool, the autonomous (self-driving) car.
      eval_mask: bool, agents to evaluate (sdc + tracks_to_predict).
      sim_mask: bool, agents to simulate (valid at ``CURRENT_INDEX``).
    """

    x: Array
    y: Array
    z: Array
    heading: Array
    vel_x: Array
    vel_y: Array
    length: Array
    width: Array
    height: Array
    valid: Array
    type: Array
    id: Array
    is_sdc: Array
    eval_mask: Array
    sim_mask: Array

    @property
    def xy(self) -> Array:
        """``[..., A, T, 2]`` positions."""
        return _stack(self.x, self.y)

    @property
    def speed(self) -> Array:
        """``[..., A, T]`` speed from the logged velocity, m/s."""
        xp = _np_or_jnp(self.vel_x)
        return xp.sqrt(self.vel_x**2 + self.vel_y**2)

    @property
    def num_agents(self) -> int:
        return self.x.shape[-2]

    @property
    def num_steps(self) -> int:
        return self.x.shape[-1]


@struct.dataclass
class RoadGraph:
    """Road-graph samples (polylines sampled as points), shape ``[..., P]``.

      xyz: float32 ``[..., P, 3]`` sample position, metres.
      dir: float32 ``[..., P, 3]`` unit direction to the next sample of the
        same polyline (zero at a polyline's last sample).
      type: int32 ``[..., P]`` ``RG_*`` code.
      id: int32 ``[..., P]`` polyline id (the WOMD map-feature id).
      valid: bool ``[..., P]``.

    Consecutive valid samples with the same ``id`` form one polyline's
    segments, in order.
    """

    xyz: Array
    dir: Array
    type: Array
    id: Array
    valid: Array

    @property
    def num_points(self) -> int:
        return self.type.shape[-1]


@struct.dataclass
class TrafficLights:
    """Traffic-light (signalled lane) states, shape ``[..., T, L]`` (L = 16).

      state: int32 ``TL_*`` code.
      lane_id: int32 id of the controlled lane (a road-graph polyline id).
      stop_point: float32 ``[..., T, L, 3]`` stop point of the lane, metres.
      valid: bool.
    """

    state: Array
    lane_id: Array
    stop_point: Array
    valid: Array


@struct.dataclass
class Scenario:
    """One WOMD scene (or a batch of them) with fixed shapes.

      agents: ``Agents`` with ``[..., A, 91]`` tracks (A = agent slots, 128
        in WOMD tf.Examples; smaller in the synthetic world's default).
      roadgraph: ``RoadGraph`` with ``[..., P]`` samples (P read from the data:
        20,000 in older WOMD tf.Examples, 30,000 in current releases).
      traffic_lights: ``TrafficLights`` with ``[..., 91, 16]`` slots.
      scenario_id: uint8 ``[..., 16]`` ASCII bytes of the WOMD scenario id,
        zero padded; ``scenario_id_str`` decodes it.
    """

    agents: Agents
    roadgraph: RoadGraph
    traffic_lights: TrafficLights
    scenario_id: Array

    @property
    def num_agents(self) -> int:
        return self.agents.num_agents

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.agents.type.shape[:-1])

    def validate(self, source: str = "<scenario>") -> Scenario:
        """Checks shapes, dtypes, finiteness and masks of a concrete instance.

        Args:
          source: a description of where the data came from (file and record),
            used in the error message.
        Returns:
          self, so that ``Scenario(...).validate()`` chains.
        Raises:
          ValueError naming ``source`` and the offending field.
        """
        validate_scenario(self, source)
        return self


def scenario_id_to_bytes(scenario_id: str) -> np.ndarray:
    raw = scenario_id.encode("ascii")[:SCENARIO_ID_BYTES]
    out = np.zeros([SCENARIO_ID_BYTES], np.uint8)
    out[: len(raw)] = np.frombuffer(raw, np.uint8)
    return out


def scenario_id_str(scenario_id: Array) -> str:
    """Decodes a single ``[16]`` uint8 scenario id."""
    raw = bytes(np.asarray(scenario_id, np.uint8).tolist())
    return raw.rstrip(b"\x00").decode("ascii", errors="replace")


# ---------------------------------------------------------------- validation
_AGENT_STEP_FIELDS = ("x", "y", "z", "heading", "vel_x", "vel_y", "length", "width", "height")
_AGENT_SLOT_FIELDS = ("type", "id", "is_sdc", "eval_mask", "sim_mask")


def validate_scenario(s: Scenario, source: str = "<scenario>") -> None:
    """See ``Scenario.validate``."""

    def fail(field: str, msg: str) -> None:
        raise ValueError(f"{source}: field '{field}': {msg}")

    a = s.agents
    base = np.shape(a.valid)
    if len(base) < 2:
        fail("agents.valid", f"expected shape [..., A, T], got {base}")
    if base[-1] != NUM_STEPS:
        fail("agents.valid", f"expected {NUM_STEPS} steps, got {base[-1]}")
    for name in _AGENT_STEP_FIELDS:
        v = np.asarray(getattr(a, name))
        if v.shape != base:
            fail(f"agents.{name}", f"shape {v.shape} != agents.valid shape {base}")
        bad = ~np.isfinite(v) & np.asarray(a.valid, bool)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            fail(f"agents.{name}", f"non-finite value at valid entry (index {idx})")
    for name in _AGENT_SLOT_FIELDS:
        v = np.asarray(getattr(a, name))
        if v.shape != base[:-1]:
            fail(f"agents.{name}", f"shape {v.shape} != {base[:-1]}")
    valid = np.asarray(a.valid, bool)
    sim = np.asarray(a.sim_mask, bool)
    if (sim != valid[..., CURRENT_INDEX]).any():
        fail("agents.sim_mask", "must equal agents.valid at the current step")
    if not sim.any(axis=-1).all():
        fail("agents.sim_mask", "scene has no agent valid at the current step")
    if (np.asarray(a.eval_mask, bool) & ~sim).any():
        fail("agents.eval_mask", "an agent to evaluate is not valid at the current step")

    r = s.roadgraph
    pshape = np.shape(r.valid)
    if np.shape(r.xyz) != pshape + (3,):
        fail("roadgraph.xyz", f"shape {np.shape(r.xyz)} != {pshape + (3,)}")
    if np.shape(r.dir) != pshape + (3,):
        fail("roadgraph.dir", f"shape {np.shape(r.dir)} != {pshape + (3,)}")
    for name in ("type", "id"):
        if np.shape(getattr(r, name)) != pshape:
            fail(f"roadgraph.{name}", f"shape {np.shape(getattr(r, name))} != {pshape}")
    rv = np.asarray(r.valid, bool)
    if (~np.isfinite(np.asarray(r.xyz)) & rv[..., None]).any():
        fail("roadgraph.xyz", "non-finite value at a valid sample")

    t = s.traffic_lights
    tshape = np.shape(t.valid)
    if len(tshape) < 2 or tshape[-2] != NUM_STEPS:
        fail("traffic_lights.valid", f"expected shape [..., {NUM_STEPS}, L], got {tshape}")
    for name in ("state", "lane_id"):
        if np.shape(getattr(t, name)) != tshape:
            fail(f"traffic_lights.{name}", f"shape {np.shape(getattr(t, name))} != {tshape}")
    if np.shape(t.stop_point) != tshape + (3,):
        fail("traffic_lights.stop_point", f"shape {np.shape(t.stop_point)} != {tshape + (3,)}")
    tv = np.asarray(t.valid, bool)
    if (~np.isfinite(np.asarray(t.stop_point)) & tv[..., None]).any():
        fail("traffic_lights.stop_point", "non-finite value at a valid slot")
    if np.shape(s.scenario_id)[-1:] != (SCENARIO_ID_BYTES,):
        fail("scenario_id", f"expected [..., {SCENARIO_ID_BYTES}] uint8, got {np.shape(s.scenario_id)}")


# ---------------------------------------------------------------- helpers
def _np_or_jnp(x: Array):
    return np if isinstance(x, np.ndarray) else jnp


def _stack(*xs: Array) -> Array:
    return _np_or_jnp(xs[0]).stack(xs, axis=-1)


def stack_scenarios(scenarios: list[Scenario]) -> Scenario:
    """Stacks single scenarios (numpy) into a batch along a new axis 0."""
    return jax.tree.map(lambda *xs: np.stack(xs), *scenarios)


def empty_scenario(num_agents: int, num_points: int, num_lights: int = NUM_TRAFFIC_LIGHTS) -> Scenario:
    """An all-invalid numpy scenario of the given sizes (padding template)."""
    a, t, p, nl = num_agents, NUM_STEPS, num_points, num_lights
    f = lambda *s: np.zeros(s, np.float32)
    agents = Agents(
        x=f(a, t), y=f(a, t), z=f(a, t), heading=f(a, t), vel_x=f(a, t), vel_y=f(a, t),
        length=f(a, t), width=f(a, t), height=f(a, t), valid=np.zeros([a, t], bool),
        type=np.zeros([a], np.int32), id=np.full([a], -1, np.int32), is_sdc=np.zeros([a], bool),
        eval_mask=np.zeros([a], bool), sim_mask=np.zeros([a], bool),
    )
    roadgraph = RoadGraph(
        xyz=f(p, 3), dir=f(p, 3), type=np.zeros([p], np.int32), id=np.full([p], -1, np.int32),
        valid=np.zeros([p], bool),
    )
    lights = TrafficLights(
        state=np.zeros([t, nl], np.int32), lane_id=np.full([t, nl], -1, np.int32),
        stop_point=f(t, nl, 3), valid=np.zeros([t, nl], bool),
    )
    return Scenario(agents=agents, roadgraph=roadgraph, traffic_lights=lights,
                    scenario_id=np.zeros([SCENARIO_ID_BYTES], np.uint8))

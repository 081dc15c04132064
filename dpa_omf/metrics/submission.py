"""WOSAC submission export: ``SimAgentsChallengeSubmission`` protos, sharded.

The messages are the public schema of the Waymo Open Dataset
(``waymo_open_dataset/protos/sim_agents_submission.proto``, package
``waymo.open_dataset``), transcribed field by field into a
``FileDescriptorProto`` and turned into classes with ``message_factory`` (no
protoc, no waymo package). The wire format is therefore identical: files we
write parse with the official classes and vice versa.

The challenge takes a ``.tar.gz`` of binary ``SimAgentsChallengeSubmission``
shards named ``submission.binproto-00000-of-0000N``; each shard carries the
metadata and a subset of the ``ScenarioRollouts`` (32 ``JointScene`` s of every
agent valid at the current step, 80 steps each).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import tarfile
from collections.abc import Iterable, Sequence

import numpy as np

from dpa_omf import atomic
from dpa_omf import datatypes as dt
from dpa_omf.io import protos

PACKAGE = "waymo.open_dataset"
SHARD_PATTERN = "submission.binproto-{index:05d}-of-{count:05d}"
NUM_ROLLOUTS = 32

# name -> [(field, number, label, type)]; label: opt | rep | packed.
_MESSAGES = {
    "SimulatedTrajectory": [("center_x", 2, "packed", "float"), ("center_y", 3, "packed", "float"),
                            ("center_z", 4, "packed", "float"), ("heading", 5, "packed", "float"),
                            ("object_id", 6, "opt", "int32")],
    "JointScene": [("simulated_trajectories", 1, "rep", "SimulatedTrajectory")],
    "ScenarioRollouts": [("scenario_id", 1, "opt", "string"), ("joint_scenes", 2, "rep", "JointScene")],
    "SimAgentsChallengeSubmission": [
        ("scenario_rollouts", 1, "rep", "ScenarioRollouts"),
        ("submission_type", 2, "opt", "SimAgentsChallengeSubmission.SubmissionType"),
        ("account_name", 3, "opt", "string"), ("unique_method_name", 4, "opt", "string"),
        ("authors", 5, "rep", "string"), ("affiliation", 6, "opt", "string"),
        ("description", 7, "opt", "string"), ("method_link", 8, "opt", "string"),
        ("uses_lidar_data", 9, "opt", "bool"), ("uses_camera_data", 10, "opt", "bool"),
        ("uses_public_model_pretraining", 11, "opt", "bool"), ("num_model_parameters", 12, "opt", "string"),
        ("public_model_names", 13, "rep", "string"),
        ("acknowledge_complies_with_closed_loop_requirement", 14, "opt", "bool"),
    ],
}
_ENUMS = {"SimAgentsChallengeSubmission.SubmissionType": [("UNKNOWN", 0), ("SIM_AGENTS_SUBMISSION", 1)]}
SUBMISSION_TYPE_SIM_AGENTS = 1


_cls = protos.message_class_factory("dpa_omf/sim_agents_submission.proto", _MESSAGES, _ENUMS)


SimulatedTrajectory = _cls("SimulatedTrajectory")
JointScene = _cls("JointScene")
ScenarioRollouts = _cls("ScenarioRollouts")
SimAgentsChallengeSubmission = _cls("SimAgentsChallengeSubmission")


@dataclasses.dataclass(frozen=True)
class SubmissionMetadata:
    """Submission-level fields the challenge server requires (see the proto).

    ``num_model_parameters`` is an integer with a K/M/B/T suffix, e.g. '1M'.
    """

    account_name: str
    unique_method_name: str
    authors: tuple[str, ...] = ()
    affiliation: str = ""
    description: str = ""
    method_link: str = ""
    uses_lidar_data: bool = False
    uses_camera_data: bool = False
    uses_public_model_pretraining: bool = False
    public_model_names: tuple[str, ...] = ()
    num_model_parameters: str = "1M"
    acknowledge_complies_with_closed_loop_requirement: bool = True

    def __post_init__(self):
        if not self.account_name or not self.unique_method_name:
            raise ValueError("SubmissionMetadata needs account_name and unique_method_name")
        n = self.num_model_parameters
        if not (n[:-1].replace(".", "", 1).isdigit() and n[-1] in "KMBT"):
            raise ValueError(f"num_model_parameters must look like '200K' or '1M', got {n!r}")


def parameter_count_label(n: int) -> str:
    """``num_model_parameters`` for ``n`` parameters: three significant digits and a K/M/B/T suffix
    ('1.05M', '35K', '0.5K')."""
    if n < 0:
        raise ValueError(f"parameter count must be >= 0, got {n}")
    value, suffix = n / 1e3, "K"
    for s in "MBT":
        if value < 1e3:
            break
        value, suffix = value / 1e3, s
    text = f"{value:.3g}"
    if "e" in text:  # 3 significant digits of >= 1000 T: write it out
        text = f"{value:.0f}"
    return text + suffix


# ================================================================ build / convert
def scenario_rollouts(scenario_id: str, object_id: np.ndarray, x: np.ndarray, y: np.ndarray,
                      z: np.ndarray, heading: np.ndarray):
    """A ``ScenarioRollouts`` message from arrays.

    Args:
      scenario_id: the WOMD scenario id.
      object_id: int ``[N]`` simulated object ids.
      x, y, z, heading: float ``[R, N, 80]`` (metres, radians).
    Returns:
      ``ScenarioRollouts`` with R joint scenes of N trajectories.
    """
    object_id = np.asarray(object_id)
    arrs = [np.asarray(v, np.float32) for v in (x, y, z, heading)]
    r, n, t = arrs[0].shape
    if object_id.shape != (n,) or any(v.shape != (r, n, t) for v in arrs):
        raise ValueError(f"scenario {scenario_id}: inconsistent shapes {object_id.shape}, "
                         f"{[v.shape for v in arrs]}")
    if not all(np.isfinite(v).all() for v in arrs):
        raise ValueError(f"scenario {scenario_id}: non-finite rollout values")
    msg = ScenarioRollouts(scenario_id=scenario_id)
    for k in range(r):
        scene = msg.joint_scenes.add()
        for i in range(n):
            scene.simulated_trajectories.add(
                center_x=arrs[0][k, i].tolist(), center_y=arrs[1][k, i].tolist(),
                center_z=arrs[2][k, i].tolist(), heading=arrs[3][k, i].tolist(),
                object_id=int(object_id[i]))
    return msg


def rollouts_from_slots(scenario: dt.Scenario, sim_xyzh: np.ndarray):
    """``ScenarioRollouts`` of the agents to simulate from slot-aligned rollouts.

    Args:
      scenario: one concrete scene.
      sim_xyzh: ``[R, A, 80, 4]`` rollouts in the scene's agent slots.
    """
    a = scenario.agents
    sim = np.asarray(a.sim_mask, bool)
    xyzh = np.asarray(sim_xyzh)[:, sim]
    return scenario_rollouts(dt.scenario_id_str(scenario.scenario_id), np.asarray(a.id)[sim],
                             *(xyzh[..., k] for k in range(4)))


def rollouts_to_arrays(msg) -> dict:
    """Arrays of one ``ScenarioRollouts`` in the golden ``rollouts.npz`` layout.

    Returns:
      dict with ``object_id`` int64 ``[N]`` (order of the first joint scene)
      and ``x, y, z, heading`` float32 ``[R, N, T]``.
    Raises:
      ValueError when joint scenes disagree on the objects or lengths differ.
    """
    scenes = list(msg.joint_scenes)
    if not scenes:
        raise ValueError(f"scenario {msg.scenario_id}: no joint scenes")
    ids = [t.object_id for t in scenes[0].simulated_trajectories]
    out = {k: [] for k in ("x", "y", "z", "heading")}
    for k, scene in enumerate(scenes):
        by_id = {t.object_id: t for t in scene.simulated_trajectories}
        if sorted(by_id) != sorted(ids) or len(by_id) != len(ids):
            raise ValueError(f"scenario {msg.scenario_id}: joint scene {k} has different objects")
        for key, field in (("x", "center_x"), ("y", "center_y"), ("z", "center_z"), ("heading", "heading")):
            rows = [list(getattr(by_id[i], field)) for i in ids]
            if len({len(r) for r in rows}) != 1:
                raise ValueError(f"scenario {msg.scenario_id}: joint scene {k}: ragged {field}")
            out[key].append(rows)
    arrays = {k: np.asarray(v, np.float32) for k, v in out.items()}
    if len({v.shape for v in arrays.values()}) != 1:
        raise ValueError(f"scenario {msg.scenario_id}: fields of different lengths")
    return {"object_id": np.asarray(ids, np.int64), **arrays}


def validate_scenario_rollouts(msg, scenario: dt.Scenario) -> None:
    """The official checks (``submission_specs.validate_scenario_rollouts``).

    Raises ValueError unless: the scenario id is set and matches, there are 32
    joint scenes, each holds exactly the agents valid at the current step, and
    every field has 80 finite values.
    """
    sid = dt.scenario_id_str(scenario.scenario_id)
    if not msg.HasField("scenario_id") or msg.scenario_id != sid:
        raise ValueError(f"ScenarioRollouts.scenario_id {msg.scenario_id!r} != scenario {sid!r}")
    if len(msg.joint_scenes) != NUM_ROLLOUTS:
        raise ValueError(f"scenario {sid}: {len(msg.joint_scenes)} joint scenes, expected {NUM_ROLLOUTS}")
    a = scenario.agents
    want = set(np.asarray(a.id)[np.asarray(a.sim_mask, bool)].tolist())
    for k, scene in enumerate(msg.joint_scenes):
        got = [t.object_id for t in scene.simulated_trajectories]
        if set(got) != want or len(got) != len(want):
            raise ValueError(f"scenario {sid}, joint scene {k}: objects missing {sorted(want - set(got))}, "
                             f"not sim agents {sorted(set(got) - want)}")
        for t in scene.simulated_trajectories:
            for field in ("center_x", "center_y", "center_z", "heading"):
                v = np.asarray(getattr(t, field), np.float32)
                if v.shape != (dt.NUM_FUTURE,) or not np.isfinite(v).all():
                    raise ValueError(f"scenario {sid}, joint scene {k}, object {t.object_id}: {field} "
                                     f"must hold {dt.NUM_FUTURE} finite values (got {v.shape[0]})")


# ================================================================ files
def _header(meta: SubmissionMetadata):
    sub = SimAgentsChallengeSubmission(submission_type=SUBMISSION_TYPE_SIM_AGENTS)
    for f in dataclasses.fields(meta):
        v = getattr(meta, f.name)
        if isinstance(v, tuple):
            getattr(sub, f.name).extend(v)
        else:
            setattr(sub, f.name, v)
    return sub


def shard_ranges(num_scenes: int, scenes_per_shard: int) -> list[range]:
    """Positions of each shard's scenarios: ``ceil(n / per_shard)`` contiguous blocks of balanced sizes.

    The one sharding of a submission (the submit job's and ``write_submission``'s).
    """
    if num_scenes < 1:
        raise ValueError("submission: no scenario to submit")
    if scenes_per_shard < 1:
        raise ValueError(f"submission: scenes_per_shard must be >= 1, got {scenes_per_shard}")
    count = math.ceil(num_scenes / scenes_per_shard)
    bounds = [num_scenes * k // count for k in range(count + 1)]
    return [range(bounds[k], bounds[k + 1]) for k in range(count)]


def write_submission(out_dir: str | os.PathLike, rollouts: Sequence, meta: SubmissionMetadata,
                     scenes_per_shard: int) -> list[pathlib.Path]:
    """Writes ``submission.binproto-XXXXX-of-NNNNN`` shards (atomically), sharded by ``shard_ranges``.

    Args:
      out_dir: folder (created if needed).
      rollouts: ``ScenarioRollouts`` messages (one per test-set scenario).
      meta: submission metadata, repeated in every shard.
      scenes_per_shard: at most this many scenarios per shard, in contiguous blocks.
    Returns:
      the shard paths.
    """
    seen = set()
    for msg in rollouts:
        if msg.scenario_id in seen:
            raise ValueError(f"scenario {msg.scenario_id} given twice")
        seen.add(msg.scenario_id)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = shard_ranges(len(rollouts), scenes_per_shard)
    return [write_shard(out / shard_name(k, len(plan)), [rollouts[i] for i in r], meta) for k, r in enumerate(plan)]


def shard_name(index: int, count: int) -> str:
    """``submission.binproto-XXXXX-of-NNNNN`` for shard ``index`` of ``count``."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    return SHARD_PATTERN.format(index=index, count=count)


def write_shard(path: str | os.PathLike, rollouts: Iterable, meta: SubmissionMetadata) -> pathlib.Path:
    """Writes one shard (the metadata and ``rollouts``, ``ScenarioRollouts`` messages) atomically."""
    sub = _header(meta)
    sub.scenario_rollouts.extend(rollouts)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, sub.SerializeToString())
    return path


def package_submission(paths: Sequence[os.PathLike], tar_path: str | os.PathLike) -> pathlib.Path:
    """Packs shards into the ``.tar.gz`` the challenge server takes (atomically)."""
    tar_path = pathlib.Path(tar_path)
    with atomic.writing(tar_path) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for p in paths:
            tar.add(p, arcname=pathlib.Path(p).name)
    return tar_path


def read_submission(paths: str | os.PathLike | Sequence[str | os.PathLike]):
    """Reads one shard or several (their ``scenario_rollouts`` merged).

    Raises ValueError naming the file when it does not parse.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    merged = None
    for p in paths:
        data = pathlib.Path(p).read_bytes()
        try:
            sub = SimAgentsChallengeSubmission.FromString(data)
        except Exception as e:  # protobuf raises DecodeError; name the file
            raise ValueError(f"{p}: not a SimAgentsChallengeSubmission ({e})") from e
        if merged is None:
            merged = sub
        else:
            merged.scenario_rollouts.extend(sub.scenario_rollouts)
    return merged

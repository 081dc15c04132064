"""Validate and score rollouts with the OFFICIAL WOSAC code (separate venv).

Runs only inside the environment made by ``scripts/official_wosac_env.sh``
(``waymo-open-dataset-tf-2-12-0==1.6.7``); it imports nothing from dpa_omf, so
it checks our outputs independently:

  ENV/bin/python scripts/official_check.py validate \
      --scenario motion_data_one_scenario.tfrecord --submission out/submission.binproto-00000-of-00001
  ENV/bin/python scripts/official_check.py validate \
      --scenario a.tfrecord b.tfrecord --submission WORKDIR/submit_dpa_omf/submission.tar.gz [--complete]
  ENV/bin/python scripts/official_check.py score \
      --scenario motion_data_one_scenario.tfrecord --rollouts rollouts.npz --config 2025 \
      [--compare ours.json] [--repeats 3]

``validate`` parses the shards (files, or the shards inside a ``.tar.gz``) with
the official protos, reports metadata fields left empty, and runs
``submission_specs.validate_scenario_rollouts`` on every scenario found in the
scenario files; ``--complete`` also requires every scenario of the files to be
in the submission, exactly once. ``score`` prints one JSON object with the official metric fields,
the buckets and the wall time of ``compute_scenario_metrics_for_bundle``
(median over ``--repeats``); with ``--compare`` it exits 1 when any field of
our JSON (``python -m dpa_omf.tools.realism_cli ... --json``) differs by more
than ``--tol`` (default 1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tarfile
import time

import numpy as np

try:
    import tensorflow as tf
    from google.protobuf import text_format
    from waymo_open_dataset.protos import scenario_pb2, sim_agents_metrics_pb2, sim_agents_submission_pb2
    from waymo_open_dataset.utils.sim_agents import submission_specs
    from waymo_open_dataset.wdl_limited.sim_agents_metrics import metrics as wosac_metrics
except ImportError as e:  # pragma: no cover - depends on the separate env
    sys.exit(f"official_check.py needs the official WOSAC env (scripts/official_wosac_env.sh): {e}")

CONFIG_FILES = {
    "2024": "challenge_2024_config.textproto",
    "2025": "challenge_2025_sim_agents_config.textproto",
}
FIELDS = (
    "metametric", "linear_speed_likelihood", "linear_acceleration_likelihood", "angular_speed_likelihood",
    "angular_acceleration_likelihood", "distance_to_nearest_object_likelihood",
    "collision_indication_likelihood", "time_to_collision_likelihood", "distance_to_road_edge_likelihood",
    "offroad_indication_likelihood", "traffic_light_violation_likelihood", "average_displacement_error",
    "min_average_displacement_error", "simulated_collision_rate", "simulated_offroad_rate",
    "simulated_traffic_light_violation_rate",
)


def load_config(name: str):
    path = os.path.join(os.path.dirname(wosac_metrics.__file__), CONFIG_FILES[name])
    config = sim_agents_metrics_pb2.SimAgentMetricsConfig()
    with open(path) as f:
        text_format.Parse(f.read(), config)
    if config.traffic_light_violation.WhichOneof("estimator") is None:
        # The 2024 textproto predates the traffic-light component; the 1.6.7
        # code needs an estimator for it. Weight 0 keeps the 2024 meta-metric.
        config.traffic_light_violation.bernoulli.SetInParent()
        config.traffic_light_violation.metametric_weight = 0.0
    return config


def load_scenarios(paths) -> dict:
    out = {}
    for path in [paths] if isinstance(paths, str) else paths:
        for data in tf.data.TFRecordDataset([path]):
            s = scenario_pb2.Scenario.FromString(data.numpy())
            out[s.scenario_id] = s
    return out


def read_shards(paths):
    """(name, SimAgentsChallengeSubmission) of every shard: files, or the members of .tar.gz files."""
    parse = sim_agents_submission_pb2.SimAgentsChallengeSubmission.FromString
    for path in paths:
        if str(path).endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(path) as tar:
                for member in sorted(tar.getmembers(), key=lambda m: m.name):
                    if member.isfile():
                        data = tar.extractfile(member).read()
                        yield f"{path}:{member.name}", parse(data)
        else:
            yield str(path), parse(pathlib.Path(path).read_bytes())


def rollouts_from_npz(path: str, scenario_id: str):
    f = np.load(path)
    msg = sim_agents_submission_pb2.ScenarioRollouts(scenario_id=scenario_id)
    for r in range(f["x"].shape[0]):
        scene = msg.joint_scenes.add()
        for i, oid in enumerate(f["object_id"]):
            scene.simulated_trajectories.add(
                center_x=f["x"][r, i], center_y=f["y"][r, i], center_z=f["z"][r, i],
                heading=f["heading"][r, i], object_id=int(oid))
    return msg


def cmd_validate(args) -> int:
    scenarios = load_scenarios(args.scenario)
    seen, shards, empty = {}, 0, {}
    for name, sub in read_shards(args.submission):
        shards += 1
        if sub.submission_type != sub.SIM_AGENTS_SUBMISSION:
            raise ValueError(f"{name}: submission_type is not SIM_AGENTS_SUBMISSION")
        # Not checked by submission_specs; the server needs them: reported, not fatal.
        unset = [f for f in ("account_name", "unique_method_name", "num_model_parameters") if not getattr(sub, f)]
        if unset:
            empty[name] = unset
        for ro in sub.scenario_rollouts:
            if ro.scenario_id in seen:
                raise ValueError(f"{name}: scenario {ro.scenario_id} also in {seen[ro.scenario_id]}")
            seen[ro.scenario_id] = name
            if ro.scenario_id in scenarios:
                submission_specs.validate_scenario_rollouts(ro, scenarios[ro.scenario_id])
    validated = sorted(set(seen) & set(scenarios))
    missing = sorted(set(scenarios) - set(seen))
    print(json.dumps({"validated_scenarios": len(validated), "scenario_ids": validated, "shards": shards,
                      "scenarios_in_submission": len(seen), "missing_from_submission": missing,
                      "empty_metadata": empty}))
    if args.complete and missing:
        return 1
    return 0 if validated else 1


def cmd_score(args) -> int:
    scenarios = load_scenarios(args.scenario)
    sid = args.scenario_id or next(iter(scenarios))
    scenario = scenarios[sid]
    if args.rollouts.endswith(".npz"):
        ro = rollouts_from_npz(args.rollouts, sid)
    else:
        data = pathlib.Path(args.rollouts).read_bytes()
        sub = sim_agents_submission_pb2.SimAgentsChallengeSubmission.FromString(data)
        ro = next(r for r in sub.scenario_rollouts if r.scenario_id == sid)
    submission_specs.validate_scenario_rollouts(ro, scenario)
    config = load_config(args.config)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        m = wosac_metrics.compute_scenario_metrics_for_bundle(config, scenario, ro)
        times.append(time.perf_counter() - t0)
    b = wosac_metrics.aggregate_metrics_to_buckets(config, m)
    out = {k: float(getattr(m, k)) for k in FIELDS}
    out.update(kinematic=float(b.kinematic_metrics), interactive=float(b.interactive_metrics),
               map_based=float(b.map_based_metrics), seconds_median=float(np.median(times)),
               seconds_all=times)
    print(json.dumps(out))
    if args.compare:
        ours = json.loads(pathlib.Path(args.compare).read_text())
        bad = {k: (ours.get(k), out[k]) for k in FIELDS + ("kinematic", "interactive", "map_based")
               if k not in ours or abs(ours[k] - out[k]) > args.tol}
        if bad:
            print(json.dumps({"mismatch": bad}), file=sys.stderr)
            return 1
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--scenario", nargs="+", required=True, help="Scenario-proto TFRecord files")
    v.add_argument("--submission", nargs="+", required=True, help="shards and / or .tar.gz files")
    v.add_argument("--complete", action="store_true", help="fail unless every scenario of the files is submitted")
    s = sub.add_parser("score")
    s.add_argument("--scenario", required=True)
    s.add_argument("--scenario_id", default=None)
    s.add_argument("--rollouts", required=True, help="rollouts .npz or a submission shard")
    s.add_argument("--config", default="2025", choices=sorted(CONFIG_FILES))
    s.add_argument("--compare", default=None, help="our JSON to compare with")
    s.add_argument("--tol", type=float, default=1e-4)
    s.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    return cmd_validate(args) if args.cmd == "validate" else cmd_score(args)


if __name__ == "__main__":
    sys.exit(main())

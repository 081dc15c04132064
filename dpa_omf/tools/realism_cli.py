"""WOSAC realism metric of rollouts on one scenario, from the command line.

    python -m dpa_omf.tools.realism_cli --scenario FILE.tfrecord --rollouts R.npz --config 2024 --json \
        [--compilation_cache=DIR|off]

``FILE.tfrecord`` holds Scenario protos (the first one, or ``--scenario_id``,
is evaluated); ``R.npz`` holds ``x, y, z, heading`` ``[R, n_objects, 80]`` and
``object_id`` ``[n_objects]`` for exactly the agents valid at the current step.
Prints the official metric fields (``dpa_omf.metrics.wosac.evaluate_scene``),
one per line or as one JSON object. The metric's programs go through JAX's
persistent compilation cache (``dpa_omf/train/compilation_cache.py``), so a
second call on scenes of the same sizes loads them instead of compiling.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.io import reader
from dpa_omf.metrics import wosac as realism
from dpa_omf.metrics import wosac_config as rc
from dpa_omf.train import compilation_cache


def read_scenario(path: str, scenario_id: str | None) -> dt.Scenario:
    """The scenario ``scenario_id`` (None: the first) of a Scenario-proto TFRecord file."""
    found = []
    for s in reader.read_scenes(path, fmt="scenario"):
        sid = dt.scenario_id_str(s.scenario_id)
        found.append(sid)
        if scenario_id is None or sid == scenario_id:
            return s
    raise ValueError(f"{path}: scenario {scenario_id!r} not found (file holds {found})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="WOSAC realism metric of rollouts on one scenario.")
    p.add_argument("--scenario", required=True, help="Scenario-proto TFRecord file")
    p.add_argument("--scenario_id", default=None)
    p.add_argument("--rollouts", required=True,
                   help="npz with x, y, z, heading [R, n_objects, 80] and object_id [n_objects]")
    # The project's default challenge: configs' evaluate.challenge, which RealismConfig's default mirrors (tested).
    p.add_argument("--config", default=realism.RealismConfig().challenge, choices=sorted(rc.CONFIGS),
                   help="WOSAC challenge config (default: %(default)s, as the evaluate stage)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--compilation_cache", default=None, help=compilation_cache.FLAG_HELP)
    args = p.parse_args(argv)
    compilation_cache.enable(args.compilation_cache)

    scenario = read_scenario(args.scenario, args.scenario_id)
    with np.load(args.rollouts) as f:
        missing = [k for k in ("x", "y", "z", "heading", "object_id") if k not in f.files]
        if missing:
            raise ValueError(f"{args.rollouts}: missing arrays {missing}")
        sim = realism.align_rollouts(scenario, f["object_id"], f["x"], f["y"], f["z"], f["heading"],
                                     args.rollouts)
    out = realism.evaluate_scene(scenario, sim, realism.RealismConfig(challenge=args.config))
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:45s} {v:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""WOSAC realism metric of rollouts on one scenario, from the command line.

    python -m dpa_omf.tools.realism_cli --scenario FILE.tfrecord --rollouts R.npz --config 2024 --json \
        [--compilation_cache=DIR|off]

``FILE.tfrecord`` holds Scenario protos (the first one, or ``--scenario_id``,
is evaluated); ``R.npz`` holds ``x, y, z, heading`` ``[R, n_objects, 80]`` and
``object_id`` ``[n_objects]`` for exactly the agents valid at the current step.
Prints the official metric fields (``dpa_omf.metrics.wosac.evaluate_scene``,
in the order of ``dpa_omf.metrics.names.TABLE``), one per line or as one JSON
object. The metric's programs go through JAX's
persistent compilation cache (``dpa_omf/train/compilation_cache.py``), so a
second call on scenes of the same sizes loads them instead of compiling.

Bad inputs (a missing, corrupt or truncated file, rollouts of the wrong shape,
agents or values, an unknown scenario id) end in one line,
``realism_cli: error: <what, where>``, and exit code 2; ``--verbosity=1``
shows the traceback. Any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import zipfile

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


def read_inputs(scenario_path: str, scenario_id: str | None, rollouts_path: str) -> tuple[dt.Scenario, np.ndarray]:
    """The scenario and its rollouts aligned to it (``realism.align_rollouts``); raises naming the file."""
    scenario = read_scenario(scenario_path, scenario_id)
    try:
        f = np.load(rollouts_path)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{rollouts_path}: not a readable npz file ({type(e).__name__}: {e})") from e
    with f:
        if not hasattr(f, "files"):
            raise ValueError(f"{rollouts_path}: an .npy array, not an npz file of named arrays")
        missing = [k for k in ("x", "y", "z", "heading", "object_id") if k not in f.files]
        if missing:
            raise ValueError(f"{rollouts_path}: missing arrays {missing}")
        return scenario, realism.align_rollouts(scenario, f["object_id"], f["x"], f["y"], f["z"], f["heading"],
                                                rollouts_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="realism_cli", description="WOSAC realism metric of rollouts on one scenario.")
    p.add_argument("--scenario", required=True, help="Scenario-proto TFRecord file")
    p.add_argument("--scenario_id", default=None)
    p.add_argument("--rollouts", required=True,
                   help="npz with x, y, z, heading [R, n_objects, 80] and object_id [n_objects]")
    # The project's default challenge: configs' evaluate.challenge, which RealismConfig's default mirrors (tested).
    p.add_argument("--config", default=realism.RealismConfig().challenge, choices=sorted(rc.CONFIGS),
                   help="WOSAC challenge config (default: %(default)s, as the evaluate stage)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--compilation_cache", default=None, help=compilation_cache.FLAG_HELP)
    p.add_argument("--verbosity", type=int, default=0, help="1: show the traceback of an input error")
    args = p.parse_args(argv)
    compilation_cache.enable(args.compilation_cache)
    try:
        scenario, sim = read_inputs(args.scenario, args.scenario_id, args.rollouts)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # bad inputs (DataError is a ValueError)
        if args.verbosity >= 1:
            traceback.print_exc()
        missing = isinstance(e, FileNotFoundError) and not e.strerror
        p.exit(2, f"{p.prog}: error: {e}{': no such file' if missing else ''}\n")
    out = realism.evaluate_scene(scenario, sim, realism.RealismConfig(challenge=args.config))
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:45s} {v:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

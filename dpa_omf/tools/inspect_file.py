"""Summarize (and render) a TFRecord of WOMD tf.Examples or Scenario protos.

    python -m dpa_omf.tools.inspect_file FILE [--json] [--png OUT.png] [--record K] [--limit N]

Per record: scenario id, agents (tracks of a Scenario proto; non-padding slots,
i.e. slots with a valid step, of a tf.Example), agents valid at the current
step (to simulate), agents to evaluate (SDC + tracks_to_predict), valid
road-graph samples and traffic-light slots. ``--json`` prints one JSON object
``{"file", "format", "num_records", "records": [...]}``; ``--png`` renders
record K (default 0) with ``viz.scene_plot.plot_scenario``.

Records are parsed by the project's reader (``io.reader.parse_record``), with
one difference: every agent of a Scenario proto is kept here (as many agent
slots as the record has tracks, no ``max_agents`` limit), so the counts and the
picture cover the whole record.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.io import protos, reader, tfrecord, womd_scenario
from dpa_omf.viz import scene_plot as viz_scene


def summarize_record(s: dt.Scenario, info: reader.RecordInfo) -> dict:
    """The JSON summary of one parsed record (single scenario)."""
    a, tl = s.agents, s.traffic_lights
    sim, ev = a.sim_mask.astype(bool), a.eval_mask.astype(bool)
    types = collections.Counter(dt.AGENT_TYPE_NAMES.get(int(t), str(int(t))) for t in a.type[sim])
    return {
        "scenario_id": dt.scenario_id_str(s.scenario_id),
        "format": info.fmt,
        "num_agents": int(info.num_agents),
        "num_agent_slots": int(a.valid.shape[0]),
        "num_sim_agents": int(sim.sum()),
        "num_eval_agents": int(ev.sum()),
        "sdc_id": int(a.id[a.is_sdc][0]) if a.is_sdc.any() else None,
        "eval_agent_ids": sorted(int(i) for i in a.id[ev]),
        "sim_agents_by_type": dict(sorted(types.items())),
        "num_roadgraph_points": int(info.num_roadgraph_points),
        "num_roadgraph_slots": int(s.roadgraph.valid.shape[0]),
        "num_polylines": len(np.unique(s.roadgraph.id[s.roadgraph.valid])),
        "num_traffic_light_slots": int(tl.valid.shape[-1]),
        "num_traffic_lights_current": int(tl.valid[dt.CURRENT_INDEX].sum()),
        "num_traffic_lights_any": int(tl.valid.any(0).sum()),
        "num_dropped_agents": int(info.num_dropped_agents),
        "num_dropped_roadgraph_points": int(info.num_dropped_points),
    }


def _parse_all_agents(data: bytes, source: reader.Source, fmt: str) -> tuple[dt.Scenario, reader.RecordInfo]:
    if fmt == "scenario":  # keep every track: as many slots as the record has tracks
        msg = protos.Scenario.FromString(data)
        cfg = reader.ReaderConfig(max_agents=max(1, len(msg.tracks)),
                                  max_roadgraph_points=womd_scenario.DEFAULT_MAX_ROADGRAPH_POINTS)
        return womd_scenario.scenario_from_proto(msg, source, cfg)
    return reader.parse_record(data, source, fmt)


def inspect_file(path: str, limit: int | None = None, render: int | None = None):
    """Summaries of the records of ``path`` (up to ``limit``), and the scene ``render`` if asked.

    Returns:
      ``(summary dict, Scenario or None)``.
    """
    fmt = reader.file_format(path)
    records, scene = [], None
    for k, data in tfrecord.iter_records(path):
        if limit is not None and k >= limit and (render is None or k > render):
            break
        s, info = _parse_all_agents(data, reader.Source(path, k), fmt)
        if limit is None or k < limit:
            records.append({"record": k, **summarize_record(s, info)})
        if render == k:
            scene = s
    if render is not None and scene is None:
        raise SystemExit(f"{path}: no record {render} to render ({len(records)} records)")
    return {"file": os.path.abspath(path), "format": fmt, "num_records": len(records), "records": records}, scene


def _print_text(summary: dict) -> None:
    print(f"{summary['file']}: {summary['num_records']} record(s), format {summary['format']}")
    cols = ("record", "scenario_id", "num_agents", "num_sim_agents", "num_eval_agents", "num_roadgraph_points",
            "num_traffic_lights_current", "num_dropped_agents")
    heads = ("rec", "scenario", "agents", "sim(t=10)", "eval", "rg points", "lights(t=10)", "dropped")
    print("  ".join(f"{h:>12}" for h in heads))
    for r in summary["records"]:
        print("  ".join(f"{r[c]!s:>12}" for c in cols))
    for r in summary["records"][:1]:
        print(f"  record {r['record']}: sdc id {r['sdc_id']}, eval ids {r['eval_agent_ids']}, "
              f"sim agents by type {r['sim_agents_by_type']}, {r['num_polylines']} polylines, "
              f"{r['num_traffic_light_slots']} traffic-light slots ({r['num_traffic_lights_any']} used)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpa_omf.tools.inspect_file", description=__doc__.split("\n")[0])
    parser.add_argument("file", help="a TFRecord of WOMD tf.Examples or Scenario protos")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--png", metavar="OUT.png", help="render a record to this PNG")
    parser.add_argument("--record", type=int, default=0, help="the record to render (default 0)")
    parser.add_argument("--limit", type=int, default=None, help="summarize at most this many records")
    args = parser.parse_args(argv)
    try:
        summary, scene = inspect_file(args.file, args.limit, args.record if args.png else None)
    except (tfrecord.DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.png:
        viz_scene.render_png(scene, args.png)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_text(summary)
        if args.png:
            print(f"rendered record {args.record} to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one table of realism metric names: the official WOSAC field names and ours.

Per scene, the metric (``wosac.compute_metrics``, ``wosac.evaluate_scene``, the
evaluator's rows) speaks the official format: the fields of the official
``SimAgentMetrics`` proto plus the three official buckets, as the golden values
and the official code name them. Everything the project writes or prints for
people (the evaluate summary, the realism table, the training logs, the packaged
reference's manifest) uses our names. ``TABLE`` is the only place that pairs the
two; the per-scene field order (what the realism CLI prints), the summary keys,
the report columns and the logged keys all derive from it at call time, so adding
a metric is one row here plus its computation in ``wosac.metrics_from_features``.

The composite is called ``composite`` everywhere except in the official format,
where it is the ``metametric`` field.
"""

from __future__ import annotations

import dataclasses

from dpa_omf.metrics import wosac_config as rc


@dataclasses.dataclass(frozen=True)
class Metric:
    """One realism figure.

    Attributes:
      name: ours (evaluate summary, report, ``realism_<name>`` in the training logs).
      official: the official per-scene field (or bucket) name.
      summary: a figure of each model's evaluate summary row (False: under its ``likelihoods``).
      report: a column of the realism table (``jobs/report.py``) and of the packaged reference's manifest.
      logged: logged by the training jobs on their held-out scenes (``realism_<name>``).
    """

    name: str
    official: str
    summary: bool = True
    report: bool = False
    logged: bool = False


# In the order of the report's columns, then the per-scene fields that are not columns.
TABLE: tuple[Metric, ...] = (
    Metric("composite", "metametric", report=True, logged=True),
    Metric("kinematic", "kinematic", report=True, logged=True),
    Metric("interactive", "interactive", report=True, logged=True),
    Metric("map", "map_based", report=True, logged=True),
    Metric("min_ade", "min_average_displacement_error", report=True),
    Metric("collision_rate", "simulated_collision_rate", report=True, logged=True),
    Metric("offroad_rate", "simulated_offroad_rate", report=True, logged=True),
    Metric("ade", "average_displacement_error"),
    Metric("traffic_light_violation_rate", "simulated_traffic_light_violation_rate"),
    *(Metric(f"{c}_likelihood", f"{c}_likelihood", summary=False) for c in rc.COMPONENTS),
)


def per_scene() -> tuple[str, ...]:
    """The official per-scene fields (what ``wosac.evaluate_scene`` returns), in the table's order."""
    return tuple(m.official for m in TABLE)


def summary() -> dict[str, str]:
    """Ours -> official, for the figures of a model's summary row."""
    return {m.name: m.official for m in TABLE if m.summary}


def likelihoods() -> dict[str, str]:
    """Ours -> official, for the per-component likelihoods (a summary row's ``likelihoods``)."""
    return {m.name: m.official for m in TABLE if not m.summary}


def logged() -> dict[str, str]:
    """Ours -> official, for the realism the training jobs log."""
    return {m.name: m.official for m in TABLE if m.logged}


def report() -> tuple[str, ...]:
    """Our names of the realism table's columns, in order."""
    return tuple(m.name for m in TABLE if m.report)


def composite() -> str:
    """The composite's official per-scene field."""
    return official("composite")


def official(name: str) -> str:
    """The official per-scene field of our metric ``name``."""
    for m in TABLE:
        if m.name == name:
            return m.official
    raise KeyError(f"no realism metric named {name!r} (names: {[m.name for m in TABLE]})")


def ours(row: dict, names: dict[str, str]) -> dict:
    """The figures of ``names`` (ours -> official) from an official-named ``row``, under our names."""
    return {n: row[o] for n, o in names.items()}

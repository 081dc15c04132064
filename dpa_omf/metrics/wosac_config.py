"""WOSAC realism-metric configurations (2024 and 2025 sim-agents challenges).

Transcribed from the official ``challenge_2024_config.textproto`` and
``challenge_2025_sim_agents_config.textproto`` of
``waymo_open_dataset/wdl_limited/sim_agents_metrics`` (package
``waymo-open-dataset-tf-2-12-0==1.6.7``). The two differ only in the weights
of ``distance_to_road_edge`` (0.10 -> 0.05) and ``traffic_light_violation``
(0 -> 0.05). The 2024 textproto has no ``traffic_light_violation`` entry; the
official code still reports its likelihood (a Bernoulli estimate) with weight
0, which is what ``CHALLENGE_2024`` encodes.

Numbers are stored as the float32 values the proto fields hold (e.g. weight
0.05 is 0.0500000007...), so that bin edges are formed from the same floats.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Default of ``BernoulliEstimate.additive_smoothing_pseudocount`` in
# sim_agents_metrics.proto (the textprotos leave ``bernoulli: {}`` empty).
BERNOULLI_PSEUDOCOUNT = 0.001


def _f32(v: float) -> float:
    return float(np.float32(v))


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """One metric component.

    Attributes:
      estimator: 'histogram' or 'bernoulli'.
      min_val, max_val: histogram range (values are clipped into it).
      num_bins: number of equal-width bins.
      pseudocount: additive smoothing added to every bin count.
      independent_timesteps: pool all rollouts x steps of an object into one
        histogram (True, every official config) or one histogram per step.
      weight: the component's weight in the composite (the official ``metametric_weight``).
    """

    estimator: str
    weight: float
    min_val: float = -0.5
    max_val: float = 1.5
    num_bins: int = 2
    pseudocount: float = BERNOULLI_PSEUDOCOUNT
    independent_timesteps: bool = True

    def __post_init__(self):
        if self.estimator not in ("histogram", "bernoulli"):
            raise ValueError(f"unknown estimator {self.estimator!r}")
        if self.num_bins < 1 or not self.max_val > self.min_val:
            raise ValueError(f"bad histogram range/bins: {self}")


def _hist(min_val: float, max_val: float, num_bins: int, weight: float) -> FeatureConfig:
    return FeatureConfig(
        estimator="histogram", weight=_f32(weight), min_val=_f32(min_val), max_val=_f32(max_val),
        num_bins=num_bins, pseudocount=_f32(0.1), independent_timesteps=True,
    )


def _bern(weight: float) -> FeatureConfig:
    return FeatureConfig(estimator="bernoulli", weight=_f32(weight), pseudocount=_f32(BERNOULLI_PSEUDOCOUNT))


# Component names in the official order (kinematic, interactive, map-based).
KINEMATIC = ("linear_speed", "linear_acceleration", "angular_speed", "angular_acceleration")
INTERACTIVE = ("distance_to_nearest_object", "collision_indication", "time_to_collision")
MAP_BASED = ("distance_to_road_edge", "offroad_indication", "traffic_light_violation")
COMPONENTS = KINEMATIC + INTERACTIVE + MAP_BASED
BUCKETS = {"kinematic": KINEMATIC, "interactive": INTERACTIVE, "map_based": MAP_BASED}


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """A full challenge configuration: one ``FeatureConfig`` per component."""

    name: str
    linear_speed: FeatureConfig
    linear_acceleration: FeatureConfig
    angular_speed: FeatureConfig
    angular_acceleration: FeatureConfig
    distance_to_nearest_object: FeatureConfig
    collision_indication: FeatureConfig
    time_to_collision: FeatureConfig
    distance_to_road_edge: FeatureConfig
    offroad_indication: FeatureConfig
    traffic_light_violation: FeatureConfig

    def component(self, name: str) -> FeatureConfig:
        return getattr(self, name)

    @property
    def weights(self) -> dict[str, float]:
        return {c: self.component(c).weight for c in COMPONENTS}


def _challenge(name: str, road_edge_weight: float, tl_weight: float) -> MetricsConfig:
    return MetricsConfig(
        name=name,
        linear_speed=_hist(0.0, 25.0, 10, 0.05),
        linear_acceleration=_hist(-12.0, 12.0, 11, 0.05),
        angular_speed=_hist(-0.628, 0.628, 11, 0.05),
        angular_acceleration=_hist(-3.14, 3.14, 11, 0.05),
        distance_to_nearest_object=_hist(-5.0, 40.0, 10, 0.1),
        collision_indication=_bern(0.25),
        time_to_collision=_hist(0.0, 5.0, 10, 0.1),
        distance_to_road_edge=_hist(-20.0, 40.0, 10, road_edge_weight),
        offroad_indication=_bern(0.25),
        traffic_light_violation=_bern(tl_weight),
    )


CHALLENGE_2024 = _challenge("2024", road_edge_weight=0.1, tl_weight=0.0)
CHALLENGE_2025 = _challenge("2025", road_edge_weight=0.05, tl_weight=0.05)
CONFIGS = {"2024": CHALLENGE_2024, "2025": CHALLENGE_2025}


def get_metrics_config(name: str) -> MetricsConfig:
    """The challenge configuration called ``name`` ('2024' or '2025')."""
    try:
        return CONFIGS[str(name)]
    except KeyError:
        raise ValueError(f"unknown WOSAC config {name!r}; choose one of {sorted(CONFIGS)}") from None

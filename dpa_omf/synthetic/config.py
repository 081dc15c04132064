"""Knobs of the embedded synthetic world (``dpa_omf.synthetic``)."""

from __future__ import annotations

import dataclasses

from dpa_omf.synthetic import maps as smap


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic world (defaults: the project's default dataset).

    num_agents: agent slots per scene (padding slots: valid False, id -1, type 0).
    max_roadgraph_points: road-graph samples per scene, P (polylines resampled to fit, >= 0.5 m apart).
    template_weights: probabilities of (straight, curved, four_way, t_junction).
    burn_in_steps: steps simulated before the recorded 91 (0.1 s each).
    pool_size: agents simulated (recorded ones are capped at ``num_agents``).
    initial_vehicles / initial_pedestrians: ranges (inclusive) of agents at the start.
    cyclist_prob: chance that a vehicle slot on a bike-able lane is a cyclist.
    entering_share: share of the pool left to agents entering later.
    max_eval_agents: agents to evaluate besides the SDC.
    lane_change_prob: chance a vehicle on a multi-lane straight route plans a lane change.
    dropout_prob: chance an agent (not SDC / evaluated) loses a few steps of track.
    lookahead_points: path samples per agent for leader detection.
    min_roadgraph_spacing: finest road-graph sample spacing (m).
    map: geometry knobs of ``synthetic_map``.
    """

    num_agents: int = 32
    max_roadgraph_points: int = 4096
    template_weights: tuple[float, float, float, float] = (0.15, 0.2, 0.45, 0.2)
    burn_in_steps: int = 20
    pool_size: int = 48
    initial_vehicles: tuple[int, int] = (16, 24)
    initial_pedestrians: tuple[int, int] = (3, 7)
    cyclist_prob: float = 0.12
    entering_share: float = 0.5
    max_eval_agents: int = 4
    lane_change_prob: float = 0.3
    dropout_prob: float = 0.05
    lookahead_points: int = 16
    min_roadgraph_spacing: float = 0.5
    map: smap.MapConfig = dataclasses.field(default_factory=smap.MapConfig)

    def __post_init__(self):
        if self.num_agents < 2:
            raise ValueError(f"SyntheticConfig.num_agents must be >= 2, got {self.num_agents}")
        if self.pool_size < self.num_agents:
            raise ValueError("SyntheticConfig.pool_size must be >= num_agents")
        if len(self.template_weights) != 4 or min(self.template_weights) < 0 or sum(self.template_weights) <= 0:
            raise ValueError(f"SyntheticConfig.template_weights must be 4 non-negative weights, "
                             f"got {self.template_weights}")
        if self.max_roadgraph_points < 512:
            raise ValueError(f"SyntheticConfig.max_roadgraph_points must be >= 512, got {self.max_roadgraph_points}")


DEFAULT_CONFIG = SyntheticConfig()  # the project's default world (a hashable, frozen value)

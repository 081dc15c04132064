"""Procedural maps (dpa_omf.synthetic.maps) against the road-edge sign rule."""

import numpy as np
import pytest

from dpa_omf.synthetic import dataset as syn
from dpa_omf.synthetic import maps as smap
from dpa_omf.synthetic import scene_stats as stats
from dpa_omf.synthetic.config import SyntheticConfig


@pytest.mark.parametrize("template", smap.TEMPLATES)
def test_map_lanes_on_road_and_sidewalks_off_road(template):
    """Road edges follow the WOSAC orientation: lanes are inside, sidewalks outside."""
    rng = np.random.default_rng(5)
    m = smap.build_map(rng, template)
    cfg = SyntheticConfig(max_roadgraph_points=20000)
    rg = syn.sample_roadgraph(m, lambda x, y: 0.0 * x, cfg)
    for r in m.vehicle_routes:
        d = stats.signed_distance_to_road_edge(smap.resample(r.xy, 2.0), rg)
        assert (d < -0.5).all(), (template, r.key, d.max())
    for r in m.ped_routes:
        pts = smap.resample(r.xy, 1.0)
        s = smap.arc_length(pts)
        side = (s < r.s_cross[0] - 0.5) | (s > r.s_cross[1] + 0.5)
        d = stats.signed_distance_to_road_edge(pts[side], rg)
        assert (d > 0.25).all(), (template, d.min())  # kerb corners come within ~0.5 m

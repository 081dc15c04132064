"""The fake scenes of dpa_omf.testing.scenes."""

import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.testing import scenes


def test_synthetic_scene_shapes_and_masks():
    s, sim = scenes.synthetic_scene(num_agents=16, num_sim=6, num_eval=2, num_points=400, seed=3, num_rollouts=4)
    s.validate("fake scene")
    assert sim.shape == (4, 16, dt.NUM_FUTURE, 4) and sim.dtype == np.float32
    a = s.agents
    assert a.sim_mask.sum() == 6 and a.eval_mask.sum() == 2 and a.is_sdc[0]
    assert not sim[:, 6:].any()  # only the simulated agents move
    rg = s.roadgraph
    assert (rg.type[rg.valid] == dt.RG_ROAD_EDGE_BOUNDARY).sum() == 100
    # Same seed, same scene.
    s2, sim2 = scenes.synthetic_scene(num_agents=16, num_sim=6, num_eval=2, num_points=400, seed=3, num_rollouts=4)
    np.testing.assert_array_equal(sim, sim2)
    np.testing.assert_array_equal(s.agents.x, s2.agents.x)

"""Post-selection (Fig. 3): rollouts re-integrated from their tokens are the sampled ones; groups by rank."""

import jax
import numpy as np
import pytest

from dpa_omf.configs import align as align_config
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.metrics import model_realism
from dpa_omf.model import sampling
from dpa_omf.tools import post_selection


@pytest.fixture(scope="module")
def sampled(smoke_model):
    c = align_config.get_config("smoke")
    model, params, scenes = smoke_model
    scene = scenes[0]
    cfg = sampling.RolloutConfig(num_rollouts=4, rollout_chunk=4)
    r = sampling.sample(model, params, scene, jax.random.key(1), cfg)
    return c, scene, r


def test_tokens_reintegrate_to_the_sampled_states(sampled):
    c, scene, r = sampled
    xyzh = post_selection.rollout_xyzh(scene, np.asarray(r.tokens), cfg_lib.tokenizer(c))
    np.testing.assert_allclose(xyzh, np.asarray(model_realism.sim_xyzh(scene, r)), atol=1e-4)


def test_groups_follow_the_ranking(sampled):
    c, scene, r = sampled
    xyzh = np.asarray(model_realism.sim_xyzh(scene, r))
    groups = post_selection.group_scores(scene, xyzh, np.asarray([0.3, 0.1, 0.4, 0.2]), 2,
                                         cfg_lib.evaluate(c).realism)
    assert [g["rollouts"] for g in groups] == [[1, 3], [0, 2]]
    assert all(0.0 < g["metametric"] < 1.0 for g in groups)

"""The diagnostics' split of the OT cost by feature is exact: the terms add up to the OT distance."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from dpa_omf.preference import distance as dist
from dpa_omf.tools import preference_diagnostics as diag


@pytest.mark.parametrize("scaling", list(diag.SCALINGS))
def test_feature_terms_add_up_to_the_ot_cost(rng, scaling):
    r, a, t = 3, 4, 10
    phi_r = rng.normal(size=(r, a, t, 5)).astype(np.float32)
    phi_e = rng.normal(size=(a, t, 5)).astype(np.float32)
    valid_r = np.ones((r, a, t), bool)
    valid_e = np.ones((a, t), bool)
    valid_e[1, 6:] = False
    agents = np.array([True, True, True, False])
    cfg = dataclasses.replace(dist.OTConfig(), **diag.SCALINGS[scaling])
    terms = diag.feature_costs(jnp.asarray(phi_r), jnp.asarray(valid_r), jnp.asarray(phi_e), jnp.asarray(valid_e),
                               jnp.asarray(agents), cfg)
    _, per_agent = dist.ot_distance(phi_r, valid_r, phi_e, valid_e, agents, cfg)
    assert terms.shape == (5,) and (terms >= 0).all()
    np.testing.assert_allclose(terms.sum(), float(np.asarray(per_agent).sum()), rtol=1e-4)

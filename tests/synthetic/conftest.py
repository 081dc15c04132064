"""Shared fixtures of the synthetic-world tests."""

import pytest

from dpa_omf.synthetic import dataset as syn

NUM_STAT_SCENES = 50


@pytest.fixture(scope="session")
def stat_scenes():
    """The default world's first 50 scenes of dataset seed 1 (generated once per session)."""
    return [syn.generate_scenario(syn.scene_seed(1, i), syn.SyntheticConfig()) for i in range(NUM_STAT_SCENES)]

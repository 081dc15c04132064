"""Shared fixtures of the io tests."""

import pytest

from dpa_omf.io import example_writer
from dpa_omf.testing.womd import random_scenario


@pytest.fixture
def three_records(rng):
    """Three serialized tf.Examples of 8 agents and 100 road-graph samples."""
    return [example_writer.scenario_to_example(random_scenario(rng, 8, 100, f"r{i}")) for i in range(3)]

"""Shared, session-cached data for the Hough indexer tests (test_hough_*.py).

Import the fixtures into a test module (``from tests.operators.hough_fixtures
import *``); nothing here is a conftest so other test packages are unaffected.
All data are small, simulated offline and seeded.
"""

from __future__ import annotations

import numpy as np
import pytest

__all__ = [
    "ni_phase",
    "fe_phase",
    "ni_dynamical_mp",
    "kinematical_mps",
    "ni_detector",
    "random_rotations",
    "make_detector",
]


def make_detector(shape=(60, 60), pc=(0.42, 0.22, 0.50), tilt=0.0, sample_tilt=70.0):
    from kikuchipy.detectors import EBSDDetector

    return EBSDDetector(shape=shape, pc=pc, sample_tilt=sample_tilt, tilt=tilt, convention="bruker")


def random_rotations(n: int, seed: int):
    """Uniformly random rotations (normalised Gaussian quaternions), seeded."""
    from orix.quaternion import Rotation

    return Rotation(np.random.default_rng(seed).normal(size=(n, 4)))


@pytest.fixture(scope="session")
def ni_phase():
    from diffraflow.operators.crystallography import get_phase

    return get_phase("ni")


@pytest.fixture(scope="session")
def fe_phase():
    from diffraflow.operators.crystallography import get_phase

    return get_phase("fe")


@pytest.fixture(scope="session")
def ni_dynamical_mp():
    from diffraflow.operators.indexing.testing import ni_master_pattern

    return ni_master_pattern()


@pytest.fixture(scope="session")
def kinematical_mps(ni_phase, fe_phase):
    """Kinematical Lambert master patterns of FCC Ni and BCC Fe (a few seconds)."""
    from diffraflow.operators.indexing.testing import kinematical_master_pattern

    return {
        "ni": kinematical_master_pattern(ni_phase, half_size=200),
        "fe": kinematical_master_pattern(fe_phase, half_size=200),
    }


@pytest.fixture(scope="session")
def ni_detector():
    return make_detector()

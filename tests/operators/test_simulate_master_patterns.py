"""Master patterns: the shipped dynamical Ni one, kinematical ones for every library phase, the disk cache."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.operators.crystallography.phases import PHASE_LIBRARY
from diffraflow.operators.simulate import master_patterns as mpmod
from diffraflow.operators.simulate.master_patterns import (
    cache_path,
    get_master_pattern,
    project_patterns,
    resolve_kind,
)
from diffraflow.schemas.errors import SchemaError

HALF = 30  # small master patterns keep the whole module to a few seconds


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFRAFLOW_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def test_dynamical_ni_is_the_shipped_pattern():
    mp = get_master_pattern("ni")
    assert mp.data.shape == (2, 401, 401)
    assert mp.data.dtype == np.float32
    assert float(mp.data.min()) == 0.0 and float(mp.data.max()) == 1.0
    assert (mp.projection, mp.hemisphere) == ("lambert", "both")
    assert mp.phase.name == "ni" and mp.phase.space_group.number == 225
    assert get_master_pattern("Nickel") is not None  # aliases resolve


@pytest.mark.parametrize(("phase", "kv", "kind", "expected"), [
    ("ni", 20, "auto", "dynamical"), ("ni", 15, "auto", "kinematical"), ("ni", 20, "kinematical", "kinematical"),
    ("fe", 20, "auto", "kinematical"), ("nickel", 20, "dynamical", "dynamical"),
])
def test_resolve_kind(phase, kv, kind, expected):
    assert resolve_kind(phase, kv, kind) == expected


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"phase_name": "fe", "kind": "dynamical"}, "master_pattern"),
    ({"phase_name": "ni", "kind": "exact"}, "master_pattern"),
    ({"phase_name": "unobtainium"}, "phase"),
    ({"phase_name": "fe", "energy_kv": -5}, "energy_kv"),
    ({"phase_name": "fe", "half_size": 2}, "half_size"),
])
def test_bad_requests_are_one_line_schema_errors(kwargs, field):
    with pytest.raises(SchemaError) as info:
        get_master_pattern(**kwargs)
    assert info.value.where == field
    assert "\n" not in str(info.value) and "fix:" in str(info.value)


@pytest.mark.parametrize("name", sorted(PHASE_LIBRARY))
def test_kinematical_pattern_has_cubic_m3m_symmetry(name):
    mp = get_master_pattern(name, kind="kinematical", half_size=HALF)
    data = mp.data
    assert data.shape == (2, 2 * HALF + 1, 2 * HALF + 1) and data.dtype == np.float32
    assert float(data.min()) == 0.0 and float(data.max()) == 1.0
    assert mp.phase.point_group.name == "m-3m"
    upper, lower = data
    # Every library phase has point group m-3m: the Lambert square of the [001]
    # hemisphere is invariant under the 4-fold axis, the {100} and {110} mirrors,
    # and the (001) mirror maps it onto the lower hemisphere.
    for image in (np.rot90(upper), upper.T, upper[:, ::-1], upper[::-1], lower):
        diff = np.abs(image - upper)
        assert diff.mean() < 1e-3 and diff.max() < 0.05
    # A band pattern, not a constant: some contrast across the sphere.
    assert upper.std() > 0.05


def test_structures_give_different_kinematical_patterns():
    from diffraflow.operators.crystallography.phases import (
        get_phase,
        phase_from_record,
        phase_to_record,
    )
    from diffraflow.operators.simulate.master_patterns import kinematical_master_pattern_arrays

    ni = get_master_pattern("ni", kind="kinematical", half_size=HALF).data
    fe = get_master_pattern("fe", kind="kinematical", half_size=HALF).data
    assert np.abs(ni - fe).mean() > 0.02
    # Ni3Al against disordered FCC Ni on the same lattice: only the L1_2 order differs.
    record = {**phase_to_record(get_phase("ni3al")), "name": "a1", "space_group": 225,
              "atoms": [{"element": "Ni", "xyz": [0.0, 0.0, 0.0]}]}
    ordered = kinematical_master_pattern_arrays(get_phase("ni3al"), 20, HALF)
    disordered = kinematical_master_pattern_arrays(phase_from_record(record), 20, HALF)
    diff = np.abs(ordered - disordered)
    assert diff.max() > 0.01  # the superlattice bands show...
    # ...but faintly, as they should: |F_100|^2 / |F_111|^2 = ((f_Ni - f_Al) / (3 f_Ni + f_Al))^2, ~2 %.
    assert diff.mean() < 0.01


def test_cache_is_written_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFRAFLOW_CACHE", str(tmp_path))
    first = get_master_pattern("al", kind="kinematical", half_size=12)
    path = cache_path("al", 20, 12)
    assert path.is_file() and path.name == f"al_20kv_12_v{mpmod.MASTER_PATTERN_VERSION}.npz"
    assert path.parent == tmp_path / "master_patterns"
    mpmod._memo.clear()

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(mpmod, "kinematical_master_pattern_arrays", refuse)
    second = get_master_pattern("al", kind="kinematical", half_size=12)
    np.testing.assert_array_equal(first.data, second.data)


def test_corrupt_cache_file_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFRAFLOW_CACHE", str(tmp_path))
    path = cache_path("cu", 20, 10)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a npz file")
    mp = get_master_pattern("cu", kind="kinematical", half_size=10)
    assert mp.data.shape == (2, 21, 21)
    with np.load(path) as stored:
        assert stored["data"].shape == (2, 21, 21)


def test_projection_onto_a_non_square_detector():
    from kikuchipy.detectors import EBSDDetector

    det = EBSDDetector(shape=(24, 40), pc=(0.45, 0.25, 0.55), convention="bruker", sample_tilt=70)
    q = np.array([[1.0, 0, 0, 0], [np.cos(0.3), 0, np.sin(0.3), 0]])
    patterns = project_patterns(get_master_pattern("ni"), q, det)
    assert patterns.shape == (2, 24, 40) and patterns.dtype == np.float32
    assert 0.0 <= patterns.min() and patterns.max() <= 1.0
    assert not np.allclose(patterns[0], patterns[1])
    assert project_patterns(get_master_pattern("ni"), np.empty((0, 4)), det).shape == (0, 24, 40)


def test_kinematical_computation_is_reproducible():
    # kikuchipy's band kernel races when run on several numba threads; ours runs it on one.
    from diffraflow.operators.crystallography.phases import get_phase
    from diffraflow.operators.simulate.master_patterns import kinematical_master_pattern_arrays

    phase = get_phase("nial")
    first = kinematical_master_pattern_arrays(phase, 20, 15)
    for _ in range(3):
        np.testing.assert_array_equal(kinematical_master_pattern_arrays(phase, 20, 15), first)

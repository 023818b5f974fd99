"""EBSD simulator: determinism, grains, truth consistency, dose statistics, detector shapes, errors."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.operators.simulate.ebsd import simulate_ebsd
from diffraflow.operators.simulate.grains import misorientation_angle_deg
from diffraflow.operators.simulate.master_patterns import get_master_pattern, project_patterns
from diffraflow.operators.simulate.noise import expected_counts
from diffraflow.schemas.errors import SchemaError

SMALL = dict(det_shape=(20, 24), n_grains=3)


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFRAFLOW_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def test_same_seed_same_scan_other_seed_other_scan():
    a, ca = simulate_ebsd((3, 4), seed=11, **SMALL).all_patterns(clean=True)
    b, cb = simulate_ebsd((3, 4), seed=11, **SMALL).all_patterns(clean=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ca, cb)
    c, _ = simulate_ebsd((3, 4), seed=12, **SMALL).all_patterns()
    assert not np.array_equal(a, c)


def test_frames_do_not_depend_on_batch_size():
    sim = simulate_ebsd((5, 3), seed=2, **SMALL)
    small = np.concatenate([b.patterns for b in sim.batches(batch_frames=1)])
    large = np.concatenate([b.patterns for b in sim.batches(batch_frames=10_000)])
    np.testing.assert_array_equal(small, large)
    starts = [(b.start, b.rows) for b in sim.batches(batch_frames=7)]
    assert starts == [(0, (0, 2)), (6, (2, 4)), (12, (4, 5))]


def test_grains_are_voronoi_cells_with_one_orientation_and_phase_each():
    sim = simulate_ebsd((16, 20), seed=4, n_grains=6, orientation_spread_deg=1.0, phases=("ni", "fe"),
                        det_shape=(8, 8), half_size=20)
    gid = sim.grain_id
    assert gid.shape == (16, 20) and len(np.unique(gid)) >= 4
    yy, xx = np.mgrid[:16, :20]
    d2 = (yy[..., None] - sim.grain_seeds[:, 0]) ** 2 + (xx[..., None] - sim.grain_seeds[:, 1]) ** 2
    np.testing.assert_array_equal(gid, d2.argmin(axis=-1))  # each point belongs to its nearest seed
    angle = misorientation_angle_deg(sim.true_rotation, sim.grain_rotation[gid])
    assert abs(np.sqrt(np.mean(angle**2)) - 1.0) < 0.25
    assert angle.max() <= 3.0 + 1e-9
    np.testing.assert_array_equal(sim.true_phase_id, sim.grain_phase[gid])
    assert set(np.unique(sim.true_phase_id)) == {0, 1}
    np.testing.assert_allclose(np.linalg.norm(sim.true_rotation, axis=-1), 1.0, atol=1e-12)


def test_clean_patterns_are_the_projection_of_the_true_orientation():
    sim = simulate_ebsd((2, 3), seed=5, phases=("ni", "fe"), n_grains=4, det_shape=(18, 26), half_size=20)
    _, clean = sim.all_patterns(clean=True)
    det = sim.detector()
    for (y, x), pid in np.ndenumerate(sim.true_phase_id):
        mp = get_master_pattern(sim.phases[pid], 20, half_size=20)
        expected = project_patterns(mp, sim.true_rotation[y, x][None], det)[0]
        np.testing.assert_allclose(clean[y, x], expected, atol=1e-6)
    # The orix Rotation of the stored quaternion gives the same pattern through kikuchipy directly.
    from orix.quaternion import Rotation

    pid = sim.true_phase_id[0, 0]
    mp = get_master_pattern(sim.phases[pid], 20, half_size=20)
    direct = mp.get_patterns(Rotation(sim.true_rotation[0, 0]), det, energy=20, compute=True,
                             show_progressbar=False, dtype_out="float32").data
    np.testing.assert_allclose(clean[0, 0], np.squeeze(direct), atol=1e-6)


def test_noise_free_frames_are_clean_pattern_plus_background():
    sim = simulate_ebsd((2, 2), seed=1, dose=None, background_strength=0.7, **SMALL)
    frames, clean = sim.all_patterns(clean=True)
    assert frames.dtype == np.float32
    np.testing.assert_allclose(frames, clean + 0.7 * sim.background, atol=1e-6)
    no_bg, clean2 = simulate_ebsd((2, 2), seed=1, dose=None, background_strength=0.0, **SMALL).all_patterns(True)
    np.testing.assert_array_equal(no_bg, clean2)


def test_counts_have_the_dose_mean_and_poisson_variance():
    dose, strength = 40.0, 0.5
    sim = simulate_ebsd((4, 5), seed=3, dose=dose, background_strength=strength, read_noise=0.0,
                        det_shape=(40, 40), n_grains=2)
    counts, clean = sim.all_patterns(clean=True)
    assert counts.dtype in (np.uint8, np.uint16)
    lam = expected_counts((clean + strength * sim.background).reshape(-1, 40, 40), dose).reshape(counts.shape)
    assert abs(counts.mean() / dose - 1) < 0.01
    assert abs(lam.mean() / dose - 1) < 1e-6
    residual = counts.astype(np.float64) - lam
    assert abs(residual.mean()) < 0.1
    assert abs(residual.var() / lam.mean() - 1) < 0.05  # Poisson: variance = mean
    # Brighter pixels are noisier, as shot noise should be.
    bright = lam > np.quantile(lam, 0.8)
    dark = lam < np.quantile(lam, 0.2)
    assert residual[bright].var() > 1.5 * residual[dark].var()


def test_read_noise_adds_variance():
    kw = dict(seed=3, dose=30.0, background_strength=0.5, det_shape=(30, 30), n_grains=1)
    a = simulate_ebsd((2, 3), read_noise=0.0, **kw).all_patterns()[0].astype(float)
    b = simulate_ebsd((2, 3), read_noise=4.0, **kw).all_patterns()[0].astype(float)
    lam_var = 30.0
    assert (b.var() - a.var()) == pytest.approx(16.0, rel=0.3, abs=lam_var * 0.2)


@pytest.mark.parametrize("det_shape", [(20, 33), (41, 17)])
def test_non_square_detectors(det_shape):
    sim = simulate_ebsd((2, 2), seed=0, det_shape=det_shape, n_grains=1, orientation_spread_deg=0.0)
    frames, clean = sim.all_patterns(clean=True)
    assert frames.shape == (2, 2, *det_shape) and clean.shape == (2, 2, *det_shape)
    assert sim.detector().shape == det_shape
    assert sim.background.shape == det_shape
    # One grain, no spread: all four frames share one clean pattern.
    np.testing.assert_array_equal(clean[0, 0], clean[1, 1])


def test_dtype_follows_the_dose():
    assert simulate_ebsd((2, 2), dose=20, **SMALL).dtype == np.uint8
    assert simulate_ebsd((2, 2), dose=2000, **SMALL).dtype == np.uint16
    assert simulate_ebsd((2, 2), dose=None, **SMALL).dtype == np.float32


def test_geometry_and_parameters_are_recorded():
    sim = simulate_ebsd((2, 3), pc=(0.5, 0.3, 0.6), sample_tilt=65, camera_tilt=5, energy_kv=15, seed=9,
                        half_size=20, **SMALL)
    assert sim.master_pattern_kinds == ("kinematical",)  # the shipped Ni pattern is 20 kV only
    det = sim.detector()
    np.testing.assert_allclose(det.pc.ravel(), [0.5, 0.3, 0.6])
    assert (det.sample_tilt, det.tilt) == (65, 5)
    assert sim.parameters["seed"] == 9 and sim.parameters["pc_convention"] == "bruker"
    # Scans made by the pre-version-3 kinematical code (wrong band widths) carry no version.
    assert sim.parameters["master_pattern_version"] >= 3


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"scan_shape": (0, 3)}, "scan_shape"),
    ({"scan_shape": (2, 2.5)}, "scan_shape"),
    ({"det_shape": (1, 60)}, "det_shape"),
    ({"phases": ()}, "phases"),
    ({"phases": ("ni", "Ni")}, "phases"),
    ({"phases": ("mithril",)}, "phase"),
    ({"n_grains": 0}, "n_grains"),
    ({"orientation_spread_deg": -1}, "orientation_spread_deg"),
    ({"pc": (1.5, 0.2, 0.5)}, "pc"),
    ({"sample_tilt": 120}, "sample_tilt"),
    ({"energy_kv": 0}, "energy_kv"),
    ({"dose": 0}, "dose"),
    ({"background_strength": -0.1}, "background_strength"),
    ({"read_noise": float("nan")}, "read_noise"),
    ({"seed": -1}, "seed"),
    ({"phase_fractions": [1.0, 2.0]}, "phase_fractions"),
    ({"master_pattern": "dynamical", "phases": ("fe",)}, "master_pattern"),
])
def test_bad_parameters_raise_one_line_schema_errors(kwargs, field):
    params = {"scan_shape": (2, 2), **SMALL, **kwargs}
    with pytest.raises(SchemaError) as info:
        simulate_ebsd(**params)
    assert info.value.where == field
    assert "\n" not in str(info.value) and "fix:" in str(info.value)

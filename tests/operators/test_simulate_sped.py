"""SPED bicrystal simulator: mixing = loadings x factors, boundary ramp, shared spots, dose statistics."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.operators.simulate.sped import (
    bicrystal_loadings,
    lattice_spots,
    render_spots,
    simulate_sped,
)
from diffraflow.schemas.errors import SchemaError


def test_noise_free_frames_are_loadings_times_factors():
    sim = simulate_sped((3, 12), det_shape=(32, 40), dose=None, seed=2)
    frames = sim.all_patterns()
    assert frames.dtype == np.float32 and frames.shape == (3, 12, 32, 40)
    expected = np.einsum("yxk,kij->yxij", sim.loadings.astype(np.float64), sim.factors.astype(np.float64))
    np.testing.assert_allclose(frames, expected, rtol=1e-6, atol=1e-6)


def test_loadings_ramp_linearly_across_the_inclined_boundary():
    loadings = bicrystal_loadings((4, 21), (0.25, 0.75))
    frac_a = loadings[..., 0]
    np.testing.assert_allclose(loadings.sum(axis=-1), 1.0)
    assert (frac_a == frac_a[:1]).all()  # the boundary runs along scan_y
    assert (frac_a[0, :6] == 1).all() and (frac_a[0, 15:] == 0).all()
    assert (np.diff(frac_a[0]) <= 0).all()
    np.testing.assert_allclose(np.diff(frac_a[0, 5:16]), -0.1, atol=1e-6)  # linear inside the band
    sharp = bicrystal_loadings((1, 5), (0.5, 0.5))[0, :, 0]
    assert sharp.tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]


def test_factors_share_only_the_direct_beam_by_default():
    sim = simulate_sped((1, 4), det_shape=(64, 64), seed=0)
    fa, fb = sim.factors.astype(np.float64)
    np.testing.assert_allclose([fa.mean(), fb.mean()], 1.0, rtol=1e-6)
    cy, cx = (int(c) for c in sim.calibration["center"])  # a pixel next to the centre
    assert fa[cy, cx] == pytest.approx(fb[cy, cx])  # same direct beam
    assert np.unravel_index(fa.argmax(), fa.shape) == (cy, cx)
    yy, xx = np.mgrid[:64, :64]
    away = np.hypot(yy - 31.5, xx - 31.5) > 5  # outside the direct beam
    overlap = (fa * fb)[away].sum() / np.sqrt((fa**2)[away].sum() * (fb**2)[away].sum())
    assert overlap < 0.01
    assert sim.parameters["n_spots"][0] >= 20 and sim.parameters["n_spots"][1] >= 12


def test_shared_spots_put_a_systematic_row_of_a_into_b():
    plain = simulate_sped((1, 4), seed=0)
    shared = simulate_sped((1, 4), seed=0, shared_spots=True)
    np.testing.assert_array_equal(plain.factors[0], shared.factors[0])
    fa, fb = shared.factors
    cy, cx = (int(c) for c in shared.calibration["center"])
    row = fa[cy, :].copy()
    row[cx - 4:cx + 5] = 0
    spots = np.flatnonzero(row > 0.5 * row.max())
    assert len(spots) >= 2
    assert (fb[cy, spots] > 0.2 * fa[cy, spots]).all()  # B lights up where A's row spots are
    assert (plain.factors[1][cy, spots] < 0.05 * fa[cy, spots]).all()


def test_counts_have_the_dose_mean_and_poisson_variance():
    dose = 3.0
    sim = simulate_sped((4, 16), det_shape=(48, 48), dose=dose, seed=1)
    counts = sim.all_patterns().astype(np.float64)
    lam = dose * np.einsum("yxk,kij->yxij", sim.loadings.astype(np.float64), sim.factors.astype(np.float64))
    assert abs(counts.mean() / dose - 1) < 0.01
    np.testing.assert_allclose(lam.mean(axis=(2, 3)), dose, rtol=1e-5)  # every frame has mean dose
    residual = counts - lam
    assert abs(residual.var() / lam.mean() - 1) < 0.05
    assert sim.dtype in (np.uint8, np.uint16)


def test_determinism_and_seed():
    a = simulate_sped((2, 6), det_shape=(24, 24), seed=4).all_patterns()
    b = simulate_sped((2, 6), det_shape=(24, 24), seed=4).all_patterns()
    c = simulate_sped((2, 6), det_shape=(24, 24), seed=5).all_patterns()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    sim = simulate_sped((5, 3), det_shape=(16, 16), seed=4)
    np.testing.assert_array_equal(np.concatenate([x.patterns for x in sim.batches(batch_frames=1)]),
                                  np.concatenate([x.patterns for x in sim.batches(batch_frames=100)]))


def test_non_square_detector_keeps_the_direct_beam_centred():
    sim = simulate_sped((2, 5), det_shape=(40, 56), seed=0)
    assert sim.factors.shape == (2, 40, 56)
    assert sim.calibration == {"scale": 0.025, "units": "1/A", "center": [19.5, 27.5]}
    frames = sim.all_patterns()
    assert frames.shape == (2, 5, 40, 56)


def test_spot_kernels():
    img = render_spots((9, 11), (4.0, 5.0), np.array([[0.0, 0.0], [0.0, 3.0]]), np.array([2.0, 1.0]), 0.8)
    assert img[4, 5] == pytest.approx(2.0, rel=1e-3) and img[4, 8] == pytest.approx(1.0, rel=2e-2)
    square = lattice_spots(10.0, 0.0, 25.0)
    assert len(square) == 20  # 5 x 5 points within 25 px, less the origin and 4 corners
    hexagonal = lattice_spots(10.0, 0.0, 10.5, angle_deg=60)
    np.testing.assert_allclose(np.hypot(*hexagonal.T), 10.0)
    np.testing.assert_allclose(np.sort(-square, axis=0), np.sort(square, axis=0))  # centrosymmetric


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"scan_shape": (0, 4)}, "scan_shape"),
    ({"det_shape": (4, 64)}, "det_shape"),
    ({"dose": -1.0}, "dose"),
    ({"seed": -3}, "seed"),
    ({"boundary": (0.8, 0.2)}, "boundary"),
    ({"spot_sigma_px": 0.0}, "spot_sigma_px"),
])
def test_bad_parameters_raise_one_line_schema_errors(kwargs, field):
    with pytest.raises(SchemaError) as info:
        simulate_sped(**kwargs)
    assert info.value.where == field and "\n" not in str(info.value)

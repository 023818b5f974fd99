"""Pure NumPy kernels of the simulators: Voronoi grains, orientations, phases, dose and noise."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.operators.simulate.grains import (
    assign_phases,
    misorientation_angle_deg,
    perturb_quaternions,
    quaternion_multiply,
    random_quaternions,
    voronoi_grain_map,
)
from diffraflow.operators.simulate.noise import (
    STREAM_NOISE,
    add_counting_noise,
    choose_count_dtype,
    expected_counts,
    smooth_background,
    stream_rng,
)
from diffraflow.schemas.errors import SchemaError


def test_voronoi_assigns_each_point_to_its_nearest_seed():
    gid, seeds = voronoi_grain_map((13, 17), 6, np.random.default_rng(3), block_rows=4)
    yy, xx = np.mgrid[:13, :17]
    d2 = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    np.testing.assert_array_equal(gid, d2.argmin(axis=-1))
    assert gid.dtype == np.int32 and set(np.unique(gid)) <= set(range(6))
    assert (seeds[:, 0] >= -0.5).all() and (seeds[:, 0] <= 12.5).all()
    again, _ = voronoi_grain_map((13, 17), 6, np.random.default_rng(3))
    np.testing.assert_array_equal(gid, again)


def test_voronoi_needs_a_grain():
    with pytest.raises(SchemaError):
        voronoi_grain_map((2, 2), 0, np.random.default_rng(0))


def test_random_quaternions_are_unit_and_uniform():
    q = random_quaternions(20000, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    assert (q[:, 0] >= 0).all()
    # Haar measure: the rotation angle has density (1 - cos w) / pi, mean pi/2 + 2/pi.
    angle = 2 * np.arccos(q[:, 0])
    assert abs(angle.mean() - (np.pi / 2 + 2 / np.pi)) < 0.02
    assert np.abs(q[:, 1:].mean(axis=0)).max() < 0.02


def test_quaternion_product_matches_orix():
    from orix.quaternion import Quaternion

    rng = np.random.default_rng(1)
    a, b = random_quaternions(5, rng), random_quaternions(5, rng)
    np.testing.assert_allclose(quaternion_multiply(a, b), (Quaternion(a) * Quaternion(b)).data, atol=1e-12)


@pytest.mark.parametrize("spread", [0.3, 2.0])
def test_perturbation_spread_is_the_rms_misorientation(spread):
    rng = np.random.default_rng(5)
    q = random_quaternions(4000, rng)
    p = perturb_quaternions(q, spread, rng)
    angle = misorientation_angle_deg(q, p)
    assert abs(np.sqrt(np.mean(angle**2)) - spread) < 0.05 * spread
    assert angle.max() <= 3 * spread + 1e-9
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(perturb_quaternions(q, 0.0, rng), q)


def test_assign_phases_respects_fractions_and_keeps_every_phase():
    rng = np.random.default_rng(0)
    phases = assign_phases(4000, 3, rng, [0.6, 0.3, 0.1])
    np.testing.assert_allclose(np.bincount(phases) / 4000, [0.6, 0.3, 0.1], atol=0.03)
    tiny = assign_phases(2, 2, np.random.default_rng(1), [0.999, 0.001])
    assert sorted(tiny.tolist()) == [0, 1]
    assert set(assign_phases(50, 2, rng, [1.0, 0.0]).tolist()) == {0}
    with pytest.raises(SchemaError):
        assign_phases(3, 2, rng, [1.0])
    with pytest.raises(SchemaError):
        assign_phases(3, 2, rng, [1.0, -1.0])


def test_stream_rng_is_keyed_by_seed_stream_and_index():
    a = stream_rng(1, STREAM_NOISE, 2).random(3)
    np.testing.assert_array_equal(a, stream_rng(1, STREAM_NOISE, 2).random(3))
    assert not np.array_equal(a, stream_rng(2, STREAM_NOISE, 2).random(3))
    assert not np.array_equal(a, stream_rng(1, STREAM_NOISE, 3).random(3))


def test_background_is_smooth_and_peaks_at_the_centre():
    b = smooth_background((30, 44), centre=(10.0, 20.0))
    assert b.shape == (30, 44) and b.dtype == np.float32
    assert np.unravel_index(b.argmax(), b.shape) == (10, 20) and b.max() == 1.0
    assert np.abs(np.diff(b, axis=1)).max() < 0.1  # smooth: no pixel-scale structure
    assert b.min() > 0.3


def test_expected_counts_give_each_frame_mean_dose():
    rng = np.random.default_rng(0)
    ideal = rng.uniform(0.1, 2.0, (7, 9, 11))
    lam = expected_counts(ideal, 12.5)
    np.testing.assert_allclose(lam.reshape(7, -1).mean(axis=1), 12.5)
    np.testing.assert_allclose(lam / ideal, (lam / ideal)[:, :1, :1] * np.ones_like(ideal))  # a scale per frame
    assert np.isfinite(expected_counts(np.zeros((1, 2, 2)), 5.0)).all()


def test_counting_noise_is_poisson_plus_read_noise():
    lam = np.full((4, 100, 100), 20.0)
    shot = add_counting_noise(lam, stream_rng(0, STREAM_NOISE), 0.0, "uint16")
    assert shot.dtype == np.uint16
    assert abs(shot.mean() - 20) < 0.1 and abs(shot.var() / 20 - 1) < 0.05
    read = add_counting_noise(lam, stream_rng(0, STREAM_NOISE), 3.0, "uint16")
    assert abs(read.var() - (20 + 9)) / 29 < 0.05  # variances add (rounding adds 1/12)
    saturated = add_counting_noise(np.full((1, 10, 10), 1000.0), stream_rng(0, STREAM_NOISE), 0.0, "uint8")
    assert saturated.max() == 255


def test_count_dtype_choice():
    assert choose_count_dtype(50.0) == np.uint8
    assert choose_count_dtype(250.0) == np.uint16
    assert choose_count_dtype(200.0, read_noise=10.0) == np.uint16
    assert choose_count_dtype(float("inf")) == np.uint16

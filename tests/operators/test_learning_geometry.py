"""Rotations, the torch master-pattern projector and orientation refinement (issue 11, items 1-2 and 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffraflow.operators.learning.projector import (
    MasterPatternProjector,
    detector_directions,
    lambert_coordinates,
)
from diffraflow.operators.learning.refine import pattern_ncc, refine_orientations
from diffraflow.operators.learning.rotations import (
    axis_angle_to_matrix,
    disorientation_deg,
    matrix_to_quaternion,
    matrix_to_rotation_6d,
    proper_point_group_matrices,
    quaternion_to_matrix,
    reduce_to_fundamental,
    rotation_6d_to_matrix,
    symmetry_aware_loss,
)
from diffraflow.operators.simulate.master_patterns import get_master_pattern, project_patterns

CUBIC = proper_point_group_matrices("m-3m", dtype=torch.float64)


def random_quaternions(n: int, seed: int) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(axis=1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


# -- rotations ------------------------------------------------------------------------------------

def test_quaternions_and_matrices_round_trip():
    q = torch.as_tensor(random_quaternions(500, 0))
    R = quaternion_to_matrix(q)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand_as(R), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(500, dtype=R.dtype))
    back = matrix_to_quaternion(R)
    assert torch.allclose(back, torch.where(q[:, :1] < 0, -q, q), atol=1e-10)
    assert torch.allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(R)), R, atol=1e-10)


def test_any_6d_vector_becomes_a_rotation_smoothly():
    x = torch.randn(200, 6, dtype=torch.float64, requires_grad=True)
    R = rotation_6d_to_matrix(x)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand_as(R), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(200, dtype=R.dtype))
    R.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_disorientation_matches_orix():
    from orix.quaternion import Orientation, symmetry

    q1, q2 = random_quaternions(1000, 1), random_quaternions(1000, 2)
    ours = disorientation_deg(quaternion_to_matrix(torch.as_tensor(q1)), quaternion_to_matrix(torch.as_tensor(q2)),
                              CUBIC).numpy()
    reference = np.rad2deg(Orientation(q1, symmetry.Oh).angle_with(Orientation(q2, symmetry.Oh)))
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    assert ours.max() <= 62.8  # the largest cubic disorientation


def test_the_loss_is_blind_to_crystal_symmetry_and_follows_the_angle():
    R = quaternion_to_matrix(torch.as_tensor(random_quaternions(50, 3)))
    truth = quaternion_to_matrix(torch.as_tensor(random_quaternions(50, 4)))
    base = symmetry_aware_loss(R, truth, CUBIC)
    for S in CUBIC:
        torch.testing.assert_close(symmetry_aware_loss(S @ R, truth, CUBIC), base)
    angle = torch.deg2rad(disorientation_deg(R, truth, CUBIC))
    torch.testing.assert_close(base, 2 * math.sqrt(2) * torch.sin(angle / 2))
    R6 = matrix_to_rotation_6d(R).clone().requires_grad_(True)
    symmetry_aware_loss(rotation_6d_to_matrix(R6), truth, CUBIC).sum().backward()
    assert torch.isfinite(R6.grad).all() and R6.grad.abs().sum() > 0


def test_reduction_to_the_fundamental_zone_keeps_the_orientation():
    R = quaternion_to_matrix(torch.as_tensor(random_quaternions(200, 5)))
    reduced = reduce_to_fundamental(R, CUBIC)
    assert disorientation_deg(reduced, R, CUBIC).max() < 1e-5
    angles = torch.rad2deg(torch.arccos(((torch.diagonal(reduced, dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)))
    assert angles.max() <= 62.8 + 1e-6


def test_axis_angle_is_rodrigues_and_smooth_at_zero():
    omega = torch.zeros(1, 3, requires_grad=True)
    R = axis_angle_to_matrix(omega)
    assert torch.allclose(R, torch.eye(3)[None])
    R.sum().backward()
    assert torch.isfinite(omega.grad).all()
    q = matrix_to_quaternion(axis_angle_to_matrix(torch.tensor([[0.0, math.radians(30), 0.0]], dtype=torch.float64)))
    torch.testing.assert_close(q, torch.tensor([[math.cos(math.radians(15)), 0, math.sin(math.radians(15)), 0]],
                                               dtype=torch.float64))


def test_an_unknown_point_group_is_a_one_line_error():
    from diffraflow.schemas.errors import SchemaError

    with pytest.raises(SchemaError) as info:
        proper_point_group_matrices("m-3n")
    assert info.value.where == "point_group" and "\n" not in str(info.value)


# -- the projector against kikuchipy ----------------------------------------------------------------

GEOMETRIES = [
    ("ni", (60, 60), (0.421, 0.221, 0.505), 70.0, 0.0),        # the shipped dynamical pattern
    ("fe", (48, 64), (0.45, 0.30, 0.60), 70.0, 5.0),           # kinematical, non-square, tilted camera
    ("cr3si", (40, 30), (0.55, 0.15, 0.70), 65.0, -3.0),
]


@pytest.mark.parametrize("name, shape, pc, sample_tilt, camera_tilt", GEOMETRIES)
def test_projection_matches_kikuchipy(name, shape, pc, sample_tilt, camera_tilt):
    from kikuchipy.detectors import EBSDDetector

    mp = get_master_pattern(name, half_size=60 if name != "ni" else None)
    q = random_quaternions(16, 6)
    detector = EBSDDetector(shape=shape, pc=pc, convention="bruker", tilt=camera_tilt, sample_tilt=sample_tilt)
    reference = project_patterns(mp, q, detector)
    ours = MasterPatternProjector(mp.data).project_quaternions(
        q, detector_directions(shape, pc, sample_tilt, camera_tilt), shape).numpy()
    assert ncc(ours, reference).min() > 0.9999
    assert np.abs(ours - reference).mean() < 1e-3


def test_one_projection_centre_per_pattern_matches_kikuchipy():
    from kikuchipy.detectors import EBSDDetector

    mp = get_master_pattern("ni")
    q = random_quaternions(6, 7)
    pcs = np.column_stack([np.linspace(0.4, 0.6, 6), np.linspace(0.2, 0.3, 6), np.linspace(0.5, 0.7, 6)])
    ours = MasterPatternProjector(mp.data).project_quaternions(q, detector_directions((30, 40), pcs), (30, 40))
    for i in range(6):
        detector = EBSDDetector(shape=(30, 40), pc=pcs[i], sample_tilt=70.0)
        assert ncc(ours[i:i + 1].numpy(), project_patterns(mp, q[i:i + 1], detector))[0] > 0.9999


def test_lambert_coordinates_cover_the_square_and_the_hemispheres():
    v = torch.nn.functional.normalize(torch.randn(10_000, 3, dtype=torch.float64), dim=1)
    xy = lambert_coordinates(v)
    assert xy.abs().max() <= 1 + 1e-9
    # Equal-area: the fraction of directions within a cone is the fraction of the square inside its image.
    inside = (v[:, 2].abs() > math.cos(math.radians(60))).double().mean()
    assert abs(float(inside) - 0.5) < 0.02
    np.testing.assert_allclose(lambert_coordinates(torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])).numpy(),
                               [[0.0, 1.0], [-1.0, 0.0]], atol=1e-7)


def test_patterns_are_differentiable_in_the_orientation():
    projector = MasterPatternProjector(get_master_pattern("ni").data)
    omega = torch.tensor([[0.1, 0.2, -0.3]], requires_grad=True)
    pattern = projector.project(axis_angle_to_matrix(omega), detector_directions((20, 20), [0.5, 0.3, 0.6]))
    pattern.square().sum().backward()
    assert torch.isfinite(omega.grad).all() and omega.grad.abs().sum() > 0


# -- refinement -------------------------------------------------------------------------------------

@pytest.mark.slow  # 60 Gauss-Newton projections of 12 patterns: 10-40 s on a shared 2-CPU machine
def test_refinement_recovers_noisy_orientations_from_a_few_degrees():
    projector = MasterPatternProjector(get_master_pattern("ni").data)
    dirs = detector_directions((60, 60), [0.421, 0.221, 0.505])
    rng = np.random.default_rng(8)
    truth = quaternion_to_matrix(torch.as_tensor(random_quaternions(12, 8), dtype=torch.float32))
    clean = projector.project(truth, dirs)
    generator = torch.Generator().manual_seed(0)
    noisy = torch.poisson(clean / clean.mean(dim=(1, 2), keepdim=True) * 15 + 5, generator=generator)
    axes = rng.normal(size=(12, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    start = axis_angle_to_matrix(torch.as_tensor(axes * math.radians(3.0), dtype=torch.float32)) @ truth
    refined, score = refine_orientations(projector, noisy, start, dirs)
    error = disorientation_deg(refined, truth, CUBIC.float())
    assert float(error.max()) < 0.5 and float(error.mean()) < 0.2
    before = pattern_ncc(noisy, projector.project(start, dirs), lowpass_px=0.7)
    assert bool((score >= before - 1e-6).all()) and float(score.mean()) > 0.3

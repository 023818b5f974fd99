"""Training data for learned operators: seeded, varied, written as cubes with their truth (issue 11, item 1)."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.store import open_cube
from diffraflow.flow.training.datasets import scan_shape_for, write_pattern_set
from diffraflow.operators.learning.training_data import (
    NI_ORIENTATION_VARIETY,
    Variety,
    plan_patterns,
    random_quaternions,
)
from diffraflow.schemas.errors import SchemaError

SMALL = Variety(detector_shapes=((24, 24), (20, 30)))


def render(plan, **kwargs) -> np.ndarray:
    return np.concatenate([b.frames for b in plan.blocks(**kwargs)])


def test_the_same_seed_gives_the_same_patterns():
    plan = plan_patterns(["ni", "fe"], 32, out_shape=(16, 16), variety=SMALL, seed=3, block_size=16)
    again = plan_patterns(["ni", "fe"], 32, out_shape=(16, 16), variety=SMALL, seed=3, block_size=16)
    first = render(plan)
    np.testing.assert_array_equal(first, render(again))
    other = render(plan_patterns(["ni", "fe"], 32, out_shape=(16, 16), variety=SMALL, seed=4, block_size=16))
    assert not np.array_equal(first, other)


def test_rendering_resumes_at_any_block():
    plan = plan_patterns(["al"], 24, out_shape=(12, 12), variety=SMALL, seed=1, block_size=8)
    whole = render(plan)
    np.testing.assert_array_equal(render(plan, start=16), whole[16:])
    with pytest.raises(SchemaError, match="multiple"):
        next(plan.blocks(start=3))


def test_draws_stay_in_their_ranges_and_vary():
    v = Variety()
    plan = plan_patterns(["ni", "si", "w"], 4000, seed=0)
    for name, (low, high) in (("dose", v.dose), ("background", v.background), ("gamma", v.gamma),
                              ("blur_px", v.blur_px), ("read_noise", v.read_noise)):
        values = getattr(plan, name)
        assert low <= values.min() and values.max() <= high and values.std() > 0, name
    assert (plan.pc[:, 0] >= v.pc_x[0]).all() and (plan.pc[:, 2] <= v.pc_z[1]).all()
    # Doses are log-uniform: as many patterns below the geometric mean as above it.
    assert abs(float(np.mean(plan.dose < np.sqrt(v.dose[0] * v.dose[1]))) - 0.5) < 0.03
    shapes = {plan.detector_shape_of_block(i) for i in range(40)}
    assert len(shapes) >= 4 and shapes <= set(v.detector_shapes)
    # One session geometry (tilts) per block.
    assert len(np.unique(plan.sample_tilt[:256])) == 1 and len(np.unique(plan.sample_tilt)) > 1


def test_material_weights_balance_classes():
    plan = plan_patterns(["ni", "al", "fe"], 6000, seed=2, weights=[0.25, 0.25, 0.5])
    counts = np.bincount(plan.material, minlength=3) / 6000
    np.testing.assert_allclose(counts, [0.25, 0.25, 0.5], atol=0.02)


def test_orientations_are_uniform_over_so3():
    q = random_quaternions(20000, np.random.default_rng(0))
    # Uniform rotations: |w| = cos(angle / 2) has density (2/pi)(1 - ...) ~ E[w^2] = 1/4 for each component.
    np.testing.assert_allclose((q ** 2).mean(axis=0), 0.25, atol=0.01)


def test_patterns_follow_the_image_model():
    quiet = Variety(detector_shapes=((32, 32),), dose=(1e5, 1e5), background=(0.0, 0.0), read_noise=(0.0, 0.0),
                    blur_px=(0.0, 0.0), gamma=(1.0, 1.0), gain=(0.0, 0.0))
    plan = plan_patterns(["ni"], 4, out_shape=(32, 32), variety=quiet, seed=0, master_pattern="auto")
    block = next(plan.blocks())
    # No noise, blur or background to speak of: the frame is the projected pattern, rescaled to 0..255.
    from diffraflow.operators.learning.projector import MasterPatternProjector, detector_directions

    projector = MasterPatternProjector(plan.master_arrays()[0])
    clean = projector.project_quaternions(plan.rotation[:4], detector_directions((32, 32), plan.pc[:4],
                                          float(plan.sample_tilt[0]), float(plan.camera_tilt[0])), (32, 32)).numpy()
    for frame, reference in zip(block.frames, clean, strict=True):
        assert np.corrcoef(frame.ravel(), reference.ravel())[0, 1] > 0.99
    assert block.frames.dtype == np.uint8 and block.frames.max() == 255 and block.frames.min() == 0


def test_bad_plans_are_one_line_errors():
    with pytest.raises(SchemaError, match="unknown phase"):
        plan_patterns(["unobtainium"], 4)
    with pytest.raises(SchemaError) as info:
        plan_patterns(["ni"], 4, variety=Variety(dose=(0.0, 5.0)))
    assert info.value.where == "variety.dose" and "\n" not in str(info.value)
    with pytest.raises(SchemaError, match="weight"):
        plan_patterns(["ni", "fe"], 4, weights=[1.0])


def test_a_training_set_is_a_cube_with_its_truth(tmp_path):
    plan = plan_patterns(["ni", "fe", "yag"], 24, out_shape=(16, 16), variety=SMALL, seed=0, block_size=8)
    path = write_pattern_set(plan, tmp_path / "set.zarr", progress=False, description="test set")
    ds = open_cube(path)
    assert ds["patterns"].shape == (1, 24, 16, 16) and str(ds["patterns"].dtype) == "uint8"
    np.testing.assert_array_equal(ds["patterns"].values.reshape(24, 16, 16), render(plan))
    np.testing.assert_array_equal(ds["true_phase_id"].values.ravel(), plan.material)
    assert set(ds["space_group"].values.ravel().tolist()) <= {225, 229, 230}
    np.testing.assert_allclose(ds["true_rotation"].values.reshape(-1, 4), plan.rotation)
    # Resized frames keep their projection centres out of indexers' way.
    assert "source_pc" in ds and "pc" not in ds
    scan = ds.attrs["scan"]
    assert [p["name"] for p in scan["phases"]] == ["ni", "fe", "yag"]
    assert scan["original_metadata"]["training_set"]["seed"] == 0
    assert set(scan["ground_truth"]) >= {"true_phase_id", "space_group", "true_rotation", "dose"}


def test_an_orientation_set_at_the_frame_size_stores_pc_for_indexers(tmp_path):
    plan = plan_patterns(["ni"], 8, variety=NI_ORIENTATION_VARIETY, seed=0, master_pattern="auto", block_size=8)
    ds = open_cube(write_pattern_set(plan, tmp_path / "ni.zarr", progress=False))
    assert "pc" in ds and ds["pc"].attrs["convention"] == "bruker"
    assert ds.attrs["scan"]["original_metadata"]["training_set"]["master_pattern_kinds"] == ["dynamical"]


def test_scan_shapes_hold_every_pattern():
    for n in (1, 7, 256, 1000, 60000, 9973):
        rows, cols = scan_shape_for(n)
        assert rows * cols == n and cols <= 256

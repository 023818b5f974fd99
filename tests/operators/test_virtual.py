"""Virtual-image operators through the engine against naive per-frame NumPy sums, over awkward chunkings."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.testing import input_spec, run_operator, spot_frames
from diffraflow.operators.base import build_operator
from diffraflow.operators.virtual._masks import make_plan, virtual_images
from diffraflow.operators.virtual.annular_dark_field import AnnularDarkField
from diffraflow.operators.virtual.bright_field import BrightField
from diffraflow.operators.virtual.virtual_image import VirtualImage
from diffraflow.schemas.errors import PipelineError

# Single frames, runs splitting the 5-frame rows, uneven runs, one chunk.
CHUNKINGS = (1, 3, (2, 5, 3), None)

MASKS = [
    {"type": "disk", "radius": 3},
    {"type": "annulus", "center": [4, 6], "inner": 2, "outer": 4.5, "name": "ring"},
    {"type": "rectangle", "bounds": [1, 5, 2, 9]},
]


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    return spot_frames((3, 5), (12, 10), "uint16", seed=5) * np.uint16(200)


def _naive_masks(det=(12, 10)) -> np.ndarray:
    yy, xx = np.mgrid[: det[0], : det[1]]
    cy, cx = (det[0] - 1) / 2, (det[1] - 1) / 2
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 9
    r2 = (yy - 4) ** 2 + (xx - 6) ** 2
    ring = (r2 > 4) & (r2 <= 4.5**2)
    rect = np.zeros(det, bool)
    rect[1:5, 2:9] = True
    return np.stack([disk, ring, rect])


def _naive_images(cube: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = np.zeros((*cube.shape[:2], len(masks)))
    for iy in range(cube.shape[0]):
        for ix in range(cube.shape[1]):
            for m, mask in enumerate(masks):
                out[iy, ix, m] = float(np.sum(cube[iy, ix].astype(np.float64) * mask))
    return out


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_virtual_image_many_masks(cube, chunk):
    op = VirtualImage(masks=MASKS)
    spec = op.resolve(input_spec(cube))["images"]
    assert spec.kind == "nav" and spec.extra_dims == ("mask",) and spec.extra_shape == (3,)
    out = run_operator(op, cube, chunk_frames=chunk)["images"]
    np.testing.assert_allclose(out, _naive_images(cube, _naive_masks()), rtol=1e-12)
    assert op.mask_labels(input_spec(cube)) == ["disk r=3 px", "ring", "rectangle [1, 5, 2, 9]"]


def test_virtual_image_chunking_is_exact(cube):
    ref = run_operator(VirtualImage(masks=MASKS), cube)["images"]
    for chunk in (1, 3, (2, 5, 3)):
        got = run_operator(VirtualImage(masks=MASKS), cube, chunk_frames=chunk, order="reverse")["images"]
        np.testing.assert_array_equal(got, ref)


def test_virtual_image_array_masks_and_mean(cube, tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.random((2, 12, 10))
    np.save(tmp_path / "w.npy", weights)
    op = VirtualImage(masks=MASKS[:1], mask=str(tmp_path / "w.npy"))
    out = run_operator(op, cube, chunk_frames=7)["images"]
    want = _naive_images(cube, np.concatenate([_naive_masks()[:1], weights]))
    np.testing.assert_allclose(out, want, rtol=1e-12)
    assert op.mask_labels(input_spec(cube))[1:] == ["mask 0", "mask 1"]
    mean = run_operator(VirtualImage(mask=weights[0], reduce="mean"), cube, chunk_frames=4)["images"]
    np.testing.assert_allclose(mean[..., 0], want[..., 1] / weights[0].sum(), rtol=1e-12)


def test_presets_match_virtual_image(cube):
    vi = run_operator(VirtualImage(masks=[{"type": "disk", "radius": 1.5},
                                          {"type": "annulus", "inner": 3, "outer": 5}]), cube, chunk_frames=7)["images"]
    bf = run_operator(BrightField(), cube, chunk_frames=7)["image"]  # default radius: min(12, 10) / 8 = 1.25
    bf15 = run_operator(BrightField(radius=1.5), cube, chunk_frames=1)["image"]
    adf = run_operator(AnnularDarkField(), cube, chunk_frames=(2, 5))["image"]  # defaults: inner 2.5, outer 5
    adf35 = run_operator(AnnularDarkField(inner=3, outer=5), cube)["image"]
    assert bf.shape == cube.shape[:2] and adf.shape == cube.shape[:2]
    np.testing.assert_allclose(bf15, vi[..., 0])
    np.testing.assert_allclose(adf35, vi[..., 1])
    yy, xx = np.mgrid[:12, :10]
    r2 = (yy - 5.5) ** 2 + (xx - 4.5) ** 2
    np.testing.assert_allclose(bf, _naive_images(cube, (r2 <= 1.25**2)[None])[..., 0])
    np.testing.assert_allclose(adf, _naive_images(cube, ((r2 > 2.5**2) & (r2 <= 25))[None])[..., 0])
    mean = run_operator(BrightField(radius=1.5, reduce="mean"), cube, chunk_frames=3)["image"]
    np.testing.assert_allclose(mean, vi[..., 0] / (r2 <= 2.25).sum())


def test_full_support_and_block_kernel():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (5, 4, 4)).astype("uint8")
    masks = rng.random((3, 4, 4))
    plan = make_plan(masks)
    assert plan.support is None
    np.testing.assert_allclose(virtual_images(frames, plan), frames.reshape(5, -1) @ masks.reshape(3, -1).T)


def test_registry_builds_virtual_operators():
    op = build_operator("virtual_image", {"masks": MASKS})
    assert op.masks == MASKS
    assert build_operator("bright_field", {"radius": 2}).radius == 2
    assert build_operator("annular_dark_field", {"inner": 2, "outer": 3}).outer == 3


@pytest.mark.parametrize("masks, match", [
    ([{"type": "disc", "radius": 2}], "unknown mask type 'disc' (fix: did you mean 'disk'?"),
    ([{"type": "disk", "radius": 2, "centre": [1, 1]}], "unknown key 'centre' for a disk (fix: did you mean 'center'?)"),
    ([{"type": "disk"}], "a disk needs a radius"),
    ([{"type": "annulus", "inner": 5, "outer": 2}], "need 0 <= inner < outer"),
    ([{"type": "rectangle", "bounds": [0, 20, 0, 5]}], "leaves the 12x10 detector"),
    ([{"type": "rectangle", "bounds": [0, 2]}], "expected [y0, y1, x0, x1]"),
    ([{"type": "disk", "radius": 1, "center": [50, 50]}], "covers no pixel"),
    ([{"type": "disk", "radius": "big"}], "radius must be a finite number"),
    (["disk"], "a mask spec must be a mapping"),
    ([], "no masks given"),
])
def test_virtual_image_errors(cube, masks, match):
    with pytest.raises(PipelineError) as info:
        VirtualImage(masks=masks).resolve(input_spec(cube))
    assert match in str(info.value)
    assert "\n" not in str(info.value) and "(fix: " in str(info.value)


def test_virtual_image_error_names_the_mask(cube):
    with pytest.raises(PipelineError, match=r"^virtual_image.masks\[1\]"):
        VirtualImage(masks=[MASKS[0], {"type": "disk"}]).resolve(input_spec(cube))
    with pytest.raises(PipelineError, match="mask shape"):
        VirtualImage(mask=np.ones((3, 3))).resolve(input_spec(cube))
    with pytest.raises(PipelineError, match="not finite"):
        VirtualImage(mask=np.full((12, 10), np.inf)).resolve(input_spec(cube))
    with pytest.raises(PipelineError, match="^bright_field: the disk covers no pixel"):
        BrightField(radius=1, center=[40, 40]).resolve(input_spec(cube))

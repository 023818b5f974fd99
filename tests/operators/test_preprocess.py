"""Preprocessing operators through the engine against naive NumPy references, over awkward chunkings."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from diffraflow.flow.testing import input_spec, run_operator, spot_frames
from diffraflow.operators.base import build_operator
from diffraflow.operators.preprocess.binning import BinFrames
from diffraflow.operators.preprocess.detector_mask import DetectorMask
from diffraflow.operators.preprocess.dynamic_background import RemoveDynamicBackground
from diffraflow.operators.preprocess.normalize import Normalize
from diffraflow.operators.preprocess.static_background import RemoveStaticBackground
from diffraflow.schemas.errors import PipelineError
from scipy import ndimage

# Single frames, runs splitting the 5-frame rows, uneven runs, one chunk.
CHUNKINGS = (1, 3, (2, 5, 3), None)
# The engine merges partials in the order it gets the regions.
ORDERS = ("scan", "reverse", "shuffled")


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    return spot_frames(seed=1)


def _frames(cube: np.ndarray) -> np.ndarray:
    return cube.reshape(-1, *cube.shape[2:])


def _rescale(f: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Naive per-frame stretch to [lo, hi]."""
    out = np.empty(f.shape)
    for i, fr in enumerate(f):
        span = fr.max() - fr.min()
        out[i] = (fr - fr.min()) / (span if span else 1) * (hi - lo) + lo
    return out


# -- remove_static_background -----------------------------------------------------
@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize("operation", ["subtract", "divide"])
def test_static_background_given(cube, chunk, operation):
    rng = np.random.default_rng(2)
    bg = rng.uniform(20, 60, cube.shape[2:])
    out = run_operator(RemoveStaticBackground(background=bg, operation=operation), cube, chunk_frames=chunk)["patterns"]
    f = cube.astype(np.float64)
    want = f - bg if operation == "subtract" else f / bg
    assert out.dtype == np.float32 and out.shape == cube.shape
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize("order", ORDERS)
def test_static_background_scan_mean_two_passes(cube, chunk, order):
    op = RemoveStaticBackground(background="scan_mean")
    assert op.passes == 2
    out = run_operator(op, cube, chunk_frames=chunk, order=order)["patterns"]
    mean = _frames(cube).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(out, cube - mean, rtol=1e-5, atol=1e-4)


def test_static_background_scan_mean_independent_of_chunking(cube):
    ref = run_operator(RemoveStaticBackground(), cube)["patterns"]
    for chunk in (1, 3, (2, 5, 3)):
        for order in ORDERS:
            got = run_operator(RemoveStaticBackground(), cube, chunk_frames=chunk, order=order)["patterns"]
            np.testing.assert_array_equal(got, ref)  # integer data: float64 sums are exact


def test_static_background_scale_to_dtype(cube):
    bg = _frames(cube).mean(axis=0)
    out = run_operator(RemoveStaticBackground(background=bg, scale_to_dtype="uint8"), cube, chunk_frames=7)["patterns"]
    assert out.dtype == np.uint8
    diff = (_frames(cube).astype(np.float32) - bg.astype(np.float32)).astype(np.float64)
    want = np.clip(np.rint(_rescale(diff, 0, 255)), 0, 255).reshape(cube.shape)
    assert np.abs(out.astype(int) - want).max() <= 1
    assert out.reshape(-1, *cube.shape[2:]).max(axis=(1, 2)).tolist() == [255] * 15


def test_static_background_divide_by_zero_gives_zero(cube):
    bg = np.ones(cube.shape[2:])
    bg[0, 0] = 0
    out = run_operator(RemoveStaticBackground(background=bg, operation="divide"), cube)["patterns"]
    assert np.all(out[..., 0, 0] == 0) and np.isfinite(out).all()


def test_static_background_from_npy_and_zarr(cube, tmp_path):
    import zarr

    bg = np.full(cube.shape[2:], 3.0)
    path = tmp_path / "bg.npy"
    np.save(path, bg)
    out = run_operator(RemoveStaticBackground(background=str(path)), cube, chunk_frames=7)["patterns"]
    np.testing.assert_allclose(out, cube - 3.0)
    store = tmp_path / "scan.zarr"
    group = zarr.open_group(str(store), mode="w")
    group.create_array("static_background", shape=bg.shape, dtype="float64")[...] = bg * 2
    out = run_operator(RemoveStaticBackground(background=str(store)), cube, chunk_frames=7)["patterns"]
    np.testing.assert_allclose(out, cube - 6.0)


def test_static_background_bind(cube):
    bg = np.full(cube.shape[2:], 5, dtype="uint8")
    op = RemoveStaticBackground().bind({"static_background": bg, "other": None})
    assert op.passes == 1
    np.testing.assert_allclose(run_operator(op, cube, chunk_frames=4)["patterns"], cube - 5.0)
    given = RemoveStaticBackground(background=np.zeros(cube.shape[2:]))
    assert given.bind({"static_background": bg}) is given  # an explicit background wins
    assert RemoveStaticBackground(background="scan_mean").bind({"static_background": bg}).passes == 2


def test_static_background_params_are_json_and_rebuildable(cube):
    op = RemoveStaticBackground(background=np.eye(2), operation="divide")
    rebuilt = build_operator("remove_static_background", op.params())
    assert rebuilt == op and hash(rebuilt) == hash(op)
    assert pickle.loads(pickle.dumps(op)) == op
    assert op.params()["background"] == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize("params, match", [
    ({"background": np.zeros((3, 3))}, "background shape (3, 3) differs from the frames (12, 10)"),
    ({"background": "/no/such/bg.npy"}, "does not exist"),
    ({"background": [[np.nan] * 10] * 12}, "not finite"),
    ({"scale_to_dtype": "notadtype"}, "is not a dtype"),
    ({"scale_to_dtype": "complex64"}, "is not numeric"),
])
def test_static_background_errors(cube, params, match):
    with pytest.raises(PipelineError, match=match.replace("(", r"\(").replace(")", r"\)")) as info:
        RemoveStaticBackground(**params).resolve(input_spec(cube))
    assert "\n" not in str(info.value) and "fix:" in str(info.value)


def test_static_background_bad_operation_is_refused_by_registry():
    with pytest.raises(PipelineError, match="use one of subtract, divide"):
        build_operator("remove_static_background", {"operation": "multiply"})


# -- remove_dynamic_background ----------------------------------------------------
@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize("operation", ["subtract", "divide"])
def test_dynamic_background(cube, chunk, operation):
    out = run_operator(RemoveDynamicBackground(sigma=2.0, operation=operation), cube, chunk_frames=chunk)["patterns"]
    want = []
    for fr in _frames(cube).astype(np.float64):
        blur = ndimage.gaussian_filter(fr, 2.0, mode="reflect")
        want.append(fr - blur if operation == "subtract" else fr / blur)
    np.testing.assert_allclose(out, np.reshape(want, cube.shape), rtol=1e-5, atol=1e-4)


def test_dynamic_background_default_sigma_and_scaling(cube):
    op = RemoveDynamicBackground(scale_to_dtype="uint16")
    out = run_operator(op, cube, chunk_frames=7)["patterns"]
    assert out.dtype == np.uint16
    fr = _frames(cube)[3].astype(np.float64)
    diff = fr - ndimage.gaussian_filter(fr, cube.shape[3] / 8, mode="reflect")
    want = np.rint(_rescale(diff[None], 0, 65535))[0]
    assert np.abs(out.reshape(-1, *cube.shape[2:])[3].astype(float) - want).max() <= 1


@pytest.mark.parametrize("operation", ["subtract", "divide"])
def test_dynamic_background_matches_kikuchipy_spatial(operation):
    kp = pytest.importorskip("kikuchipy.pattern._pattern")
    cube = spot_frames((2, 2), (30, 40), seed=0)
    ours = run_operator(RemoveDynamicBackground(operation=operation, scale_to_dtype="uint8"), cube, chunk_frames=3)["patterns"]
    theirs = np.stack([kp.remove_dynamic_background(f.astype(np.float32), operation=operation,
                                                    filter_domain="spatial", dtype_out=np.uint8)
                       for f in _frames(cube)]).reshape(cube.shape)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1  # we round, kikuchipy truncates


def test_dynamic_background_removes_smooth_gradient():
    yy, xx = np.mgrid[:48, :48]
    frame = (100 + 2 * xx + yy).astype(np.float32)
    out = run_operator(RemoveDynamicBackground(sigma=4.0), frame[None, None])["patterns"]
    assert np.abs(out[0, 0, 17:-17, 17:-17]).max() < 1e-3  # a linear ramp is its own blur away from edges


@pytest.mark.parametrize("params, match", [({"sigma": -1}, "sigma must be a positive"),
                                           ({"truncate": 0}, "truncate must be positive"),
                                           ({"scale_to_dtype": "bool"}, "is not numeric")])
def test_dynamic_background_errors(cube, params, match):
    with pytest.raises(PipelineError, match=match):
        RemoveDynamicBackground(**params).resolve(input_spec(cube))


# -- normalize -------------------------------------------------------------------
@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_normalize_zscore(cube, chunk):
    out = run_operator(Normalize(), cube, chunk_frames=chunk)["patterns"]
    f = _frames(cube).astype(np.float64)
    want = (f - f.mean(axis=(1, 2), keepdims=True)) / f.std(axis=(1, 2), keepdims=True)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(f.shape), want, rtol=1e-5, atol=1e-5)


def test_normalize_minmax_with_mask(cube):
    out = run_operator(Normalize(method="minmax", mask_radius=4, mask_center=[5, 4]), cube, chunk_frames=7)["patterns"]
    f = _frames(cube).astype(np.float64)
    yy, xx = np.mgrid[:12, :10]
    mask = (yy - 5) ** 2 + (xx - 4) ** 2 <= 16
    sel = f[:, mask]
    lo, hi = sel.min(axis=1)[:, None, None], sel.max(axis=1)[:, None, None]
    want = (f - lo) / (hi - lo) * mask
    np.testing.assert_allclose(out.reshape(f.shape), want, rtol=1e-5, atol=1e-6)
    inside = out.reshape(f.shape)[:, mask]
    assert inside.min() == 0 and inside.max() == 1
    assert np.all(out.reshape(f.shape)[:, ~mask] == 0)


def test_normalize_constant_frame_is_zero():
    cube = np.full((1, 2, 4, 4), 9, "uint8")
    for method in ("zscore", "minmax"):
        assert np.all(run_operator(Normalize(method=method), cube)["patterns"] == 0)


@pytest.mark.parametrize("params, match", [({"mask_radius": 0}, "radius must be positive"),
                                           ({"mask_radius": 1, "mask_center": [100, 100]}, "holds no pixel"),
                                           ({"mask_radius": 1, "mask_center": [1]}, "expected \\[cy, cx\\]")])
def test_normalize_errors(cube, params, match):
    with pytest.raises(PipelineError, match=match):
        Normalize(**params).resolve(input_spec(cube))


# -- detector_mask ---------------------------------------------------------------
@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_detector_mask_circle(cube, chunk):
    out = run_operator(DetectorMask(radius=4.5, center=[6, 4]), cube, chunk_frames=chunk)["patterns"]
    yy, xx = np.mgrid[:12, :10]
    keep = (yy - 6) ** 2 + (xx - 4) ** 2 <= 4.5**2
    assert out.dtype == cube.dtype
    np.testing.assert_array_equal(out, cube * keep)


def test_detector_mask_default_is_inscribed_circle(cube):
    out = run_operator(DetectorMask(), cube)["patterns"]
    yy, xx = np.mgrid[:12, :10]
    keep = (yy - 5.5) ** 2 + (xx - 4.5) ** 2 <= 25
    np.testing.assert_array_equal(out, cube * keep)


def test_detector_mask_given_and_inverted(cube, tmp_path):
    rng = np.random.default_rng(3)
    keep = rng.random(cube.shape[2:]) > 0.5
    np.testing.assert_array_equal(run_operator(DetectorMask(mask=keep), cube, chunk_frames=7)["patterns"], cube * keep)
    np.save(tmp_path / "m.npy", keep.astype("uint8"))
    out = run_operator(DetectorMask(mask=str(tmp_path / "m.npy"), invert=True), cube, chunk_frames=7)["patterns"]
    np.testing.assert_array_equal(out, cube * ~keep)


@pytest.mark.parametrize("params, match", [
    ({"mask": np.ones((3, 3), bool)}, "mask shape"),
    ({"mask": np.full((12, 10), 0.5)}, "is not boolean"),
    ({"mask": np.zeros((12, 10), bool)}, "keeps no pixel"),
    ({"mask": np.ones((12, 10), bool), "radius": 3}, "either mask or radius"),
    ({"radius": -2}, "radius must be positive"),
])
def test_detector_mask_errors(cube, params, match):
    with pytest.raises(PipelineError, match=match):
        DetectorMask(**params).resolve(input_spec(cube))


# -- bin_frames ------------------------------------------------------------------
@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_bin_frames(cube, chunk, reduce):
    out = run_operator(BinFrames(factor=[3, 2], reduce=reduce), cube, chunk_frames=chunk)["patterns"]
    f = _frames(cube).astype(np.float64).reshape(-1, 4, 3, 5, 2)
    want = f.sum(axis=(2, 4)) if reduce == "sum" else f.mean(axis=(2, 4))
    assert out.shape == (3, 5, 4, 5)
    assert out.dtype == (np.uint32 if reduce == "sum" else np.float32)
    np.testing.assert_allclose(out.reshape(want.shape), want, rtol=1e-6)


def test_bin_frames_sum_does_not_overflow():
    cube = np.full((1, 1, 4, 4), 255, "uint8")
    assert run_operator(BinFrames(factor=4), cube)["patterns"].ravel().tolist() == [255 * 16]
    cube16 = np.full((1, 1, 2, 2), 65535, "uint16")
    assert run_operator(BinFrames(factor=2), cube16)["patterns"].ravel().tolist() == [65535 * 4]


def test_bin_frames_names_closest_factor(cube):
    with pytest.raises(PipelineError) as info:
        BinFrames(factor=5).resolve(input_spec(cube))  # 12 is not divisible by 5
    assert str(info.value) == ("bin_frames.factor: binning factor 5 does not divide det_y = 12 "
                               "(fix: use 6, the closest factor that divides 12)")
    with pytest.raises(PipelineError, match="positive integers"):
        BinFrames(factor=[2, 0]).resolve(input_spec(cube))
    with pytest.raises(PipelineError, match="one integer or"):
        BinFrames(factor=[2, 2, 2]).resolve(input_spec(cube))


def test_preprocess_operators_are_registered():
    from diffraflow.operators.base import list_operators

    names = set(list_operators())
    assert {"remove_static_background", "remove_dynamic_background", "normalize", "detector_mask",
            "bin_frames"} <= names

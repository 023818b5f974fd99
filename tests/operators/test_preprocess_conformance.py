"""Preprocessing operators through the engine's conformance suite (chunking, executors, schema, pickle)."""

from __future__ import annotations

import numpy as np
from diffraflow.flow.testing import OperatorConformance, synthetic_frames
from diffraflow.operators.preprocess.binning import BinFrames
from diffraflow.operators.preprocess.detector_mask import DetectorMask
from diffraflow.operators.preprocess.dynamic_background import RemoveDynamicBackground
from diffraflow.operators.preprocess.normalize import Normalize
from diffraflow.operators.preprocess.static_background import RemoveStaticBackground
from scipy import ndimage

FRAMES = synthetic_frames((5, 7), (8, 10), "uint16", seed=3)
BG = np.random.default_rng(0).uniform(1000, 3000, (8, 10))


class TestStaticBackgroundGiven(OperatorConformance):
    operator = RemoveStaticBackground(background=BG, operation="divide")
    frames = FRAMES
    rtol = 1e-6

    def reference(self, frames):
        return {"patterns": (frames / BG).astype(np.float32)}


class TestStaticBackgroundScanMean(OperatorConformance):
    """The two-pass path: pass 0 reduces the mean, pass 1 subtracts it."""

    operator = RemoveStaticBackground()
    frames = FRAMES
    rtol, atol = 1e-6, 1e-3

    def reference(self, frames):
        return {"patterns": (frames - frames.astype(np.float64).mean(axis=(0, 1))).astype(np.float32)}


class TestStaticBackgroundScaled(OperatorConformance):
    operator = RemoveStaticBackground(background=BG, scale_to_dtype="uint8")
    frames = FRAMES

    def reference(self, frames):
        diff = (frames.astype(np.float32) - BG.astype(np.float32)).astype(np.float64)
        lo, hi = diff.min(axis=(2, 3), keepdims=True), diff.max(axis=(2, 3), keepdims=True)
        return {"patterns": np.rint((diff - lo) / (hi - lo) * 255).astype(np.uint8)}


class TestDynamicBackground(OperatorConformance):
    operator = RemoveDynamicBackground(sigma=1.5)
    frames = FRAMES
    rtol, atol = 1e-5, 1e-2

    def reference(self, frames):
        f = frames.astype(np.float64)
        blur = ndimage.gaussian_filter(f, (0, 0, 1.5, 1.5), mode="reflect")
        return {"patterns": (f - blur).astype(np.float32)}


class TestNormalize(OperatorConformance):
    operator = Normalize(method="zscore", mask_radius=3.5)
    frames = FRAMES
    atol = 1e-6

    def reference(self, frames):
        yy, xx = np.mgrid[:8, :10]
        disk = (yy - 3.5) ** 2 + (xx - 4.5) ** 2 <= 3.5**2
        f = frames.astype(np.float64)
        inside = f[..., disk]
        z = (f - inside.mean(axis=-1)[..., None, None]) / inside.std(axis=-1)[..., None, None]
        return {"patterns": (z * disk).astype(np.float32)}


class TestDetectorMask(OperatorConformance):
    operator = DetectorMask(radius=3)
    frames = FRAMES

    def reference(self, frames):
        yy, xx = np.mgrid[:8, :10]
        return {"patterns": frames * ((yy - 3.5) ** 2 + (xx - 4.5) ** 2 <= 9)}


class TestBinFrames(OperatorConformance):
    operator = BinFrames(factor=[2, 5], reduce="sum")
    frames = FRAMES

    def reference(self, frames):
        return {"patterns": frames.reshape(5, 7, 4, 2, 2, 5).sum(axis=(3, 5), dtype="uint32")}


def test_static_background_reads_cube_variable_through_engine(tmp_path):
    """The engine binds the cube's ``static_background`` variable (one pass, no scan mean)."""
    from diffraflow.flow.store import create_cube
    from diffraflow.flow.testing import run_operator

    path = tmp_path / "scan.zarr"
    attrs = {"modality": "ebsd", "detector": {"shape": [8, 10]}}
    with create_cube(path, scan_shape=(5, 7), det_shape=(8, 10), dtype="uint16", attrs=attrs) as writer:
        writer.patterns.append(FRAMES.reshape(35, 8, 10))
        writer.write_variable("static_background", BG.astype("float32"), ("det_y", "det_x"))
        writer.finalize()
    out = run_operator(RemoveStaticBackground(), path, chunk_frames=4)["patterns"]
    np.testing.assert_allclose(out, FRAMES - BG.astype(np.float32), rtol=1e-6)
    scan_mean = run_operator(RemoveStaticBackground(background="scan_mean"), path, chunk_frames=4)["patterns"]
    np.testing.assert_allclose(scan_mean, FRAMES - FRAMES.astype(np.float64).mean(axis=(0, 1)), atol=1e-3)


def test_multi_pass_pipeline_chains_through_engine():
    """scan-mean background (2 passes) -> binning -> PCA (3 passes) + virtual image, on every chunking."""
    from diffraflow.flow.pipeline import Pipeline
    from diffraflow.flow.testing import check_chunking, check_executors
    from diffraflow.operators.decomposition.incremental_pca import IncrementalPCA
    from diffraflow.operators.virtual.virtual_image import VirtualImage

    pipe = Pipeline([RemoveStaticBackground(), BinFrames(factor=2, reduce="mean"),
                     VirtualImage(masks=[{"type": "disk", "radius": 1.5}]), IncrementalPCA(n_components=2)])
    results = check_chunking(pipe, FRAMES, rtol=1e-5, atol=1e-3)
    check_executors(pipe, FRAMES)
    corrected = FRAMES - FRAMES.astype(np.float64).mean(axis=(0, 1))
    binned = corrected.astype(np.float32).reshape(5, 7, 4, 2, 5, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(results["bin_frames/patterns"], binned, rtol=1e-5, atol=1e-3)
    yy, xx = np.mgrid[:4, :5]
    disk = (yy - 1.5) ** 2 + (xx - 2) ** 2 <= 2.25
    np.testing.assert_allclose(results["virtual_image/images"][..., 0], (binned * disk).sum(axis=(2, 3)),
                               rtol=1e-4, atol=1e-2)
    from sklearn.decomposition import PCA

    pca = PCA(2, svd_solver="full").fit(binned.reshape(35, -1).astype(np.float64))
    np.testing.assert_allclose(results["incremental_pca/explained_variance"], pca.explained_variance_, rtol=1e-4)

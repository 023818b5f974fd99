"""PNG pictures: files are written, are valid PNGs of the expected size, and refuse bad input."""

from __future__ import annotations

import numpy as np
import pytest
from diffraflow.flow.plots import (
    detector_scale,
    plot_decomposition,
    plot_pattern,
    plot_scan_image,
    plot_virtual_images,
    scan_scale,
)
from diffraflow.schemas.errors import OutputExistsError, SchemaError
from PIL import Image

ATTRS = {"step_size": {"y": 1.5, "x": 2.0, "unit": "um"},
         "detector": {"shape": [16, 16], "calibration": {"scale": 0.0126, "units": "1/A"}}}
RNG = np.random.default_rng(0)


def _png(path, size_px):
    with Image.open(path) as im:
        im.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == size_px
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5, "the picture is blank"


def test_scan_image(tmp_path):
    out = plot_scan_image(RNG.random((6, 9)), tmp_path / "bf.png", title="bright field", attrs=ATTRS,
                          size=(5, 4), dpi=60)
    assert out == tmp_path / "bf.png"
    _png(out, (300, 240))


def test_scan_image_default_size_and_nan(tmp_path):
    image = RNG.random((4, 8))
    image[0, 0] = np.nan
    out = plot_scan_image(image, tmp_path / "m.png", step=0.5, unit="nm")
    with Image.open(out) as im:
        assert im.size[0] == 600  # 6 in at 100 dpi
        assert 100 <= im.size[1] <= 900


def test_virtual_images_panels(tmp_path):
    out = plot_virtual_images(RNG.random((5, 7, 4)), tmp_path / "vi.png", labels=["a", "b", "c", "d"],
                              attrs=ATTRS, size=(9, 6), dpi=50)
    _png(out, (450, 300))
    single = plot_virtual_images(RNG.random((5, 7)), tmp_path / "one.png", size=(4, 4), dpi=50)
    _png(single, (200, 200))


def test_pattern_with_overlays_and_log(tmp_path):
    pattern = RNG.random((16, 16)) * 1000
    overlays = [{"type": "disk", "radius": 3}, {"type": "annulus", "inner": 4, "outer": 7},
                {"type": "rectangle", "bounds": [0, 4, 0, 16]}]
    out = plot_pattern(pattern, tmp_path / "mean.png", attrs=ATTRS, log=True, overlays=overlays,
                       size=(5, 5), dpi=40)
    _png(out, (200, 200))
    _png(plot_pattern(np.full((8, 8), 3.0), tmp_path / "const.png", size=(3, 3), dpi=40), (120, 120))


def test_decomposition(tmp_path):
    out = plot_decomposition(RNG.normal(size=(5, 8, 8)), RNG.normal(size=(4, 6, 5)), tmp_path / "pca.png",
                             explained_variance=[5, 3, 2, 1, 0.5], attrs=ATTRS, n_show=3, size=(12, 6), dpi=40)
    _png(out, (480, 240))


def test_plots_from_operator_results(tmp_path):
    """The arrays operators produce plot directly (shapes and dtypes as resolved)."""
    from diffraflow.flow.testing import input_spec, run_operator, spot_frames
    from diffraflow.operators.stats.mean_pattern import MeanPattern
    from diffraflow.operators.virtual.virtual_image import VirtualImage

    cube = spot_frames((4, 5), (12, 10), seed=3)
    op = VirtualImage(masks=[{"type": "disk", "radius": 2}, {"type": "annulus", "inner": 2, "outer": 5}])
    images = run_operator(op, cube, chunk_frames=7)["images"]
    mean = run_operator(MeanPattern(), cube, chunk_frames=7)["mean"]
    _png(plot_virtual_images(images, tmp_path / "vi.png", labels=op.mask_labels(input_spec(cube)), size=(6, 3),
                             dpi=50), (300, 150))
    _png(plot_pattern(mean, tmp_path / "mean.png", overlays=op.masks, size=(4, 4), dpi=50), (200, 200))


def test_refuses_existing_file_unless_overwrite(tmp_path):
    path = tmp_path / "x.png"
    plot_scan_image(RNG.random((3, 3)), path)
    with pytest.raises(OutputExistsError):
        plot_scan_image(RNG.random((3, 3)), path)
    plot_scan_image(RNG.random((3, 3)), path, overwrite=True, size=(2, 2), dpi=50)
    with Image.open(path) as im:
        assert im.size == (100, 100)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary files left


@pytest.mark.parametrize("call, match", [
    (lambda p: plot_scan_image(np.zeros(5), p), "expected a non-empty 2-d array"),
    (lambda p: plot_scan_image(np.array([["a"]]), p), "is not numeric"),
    (lambda p: plot_virtual_images(np.zeros((2, 2, 3)), p, labels=["a"]), "1 labels for 3 images"),
    (lambda p: plot_decomposition(np.zeros((2, 4, 4)), np.zeros((3, 3, 3)), p), "2 factors but 3 loadings"),
    (lambda p: plot_scan_image(np.zeros((2, 2)), p, step=-1), "step sizes must be positive"),
])
def test_errors(tmp_path, call, match):
    with pytest.raises(SchemaError, match=match):
        call(tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_scales():
    assert scan_scale(ATTRS).label == "µm" and scan_scale(ATTRS).x == 2.0
    s = detector_scale(ATTRS, (16, 16))
    assert s.unit == "1/A" and s.origin == (7.5, 7.5)
    left, right, bottom, top = s.extent((16, 16))
    assert np.isclose(left, -8 * 0.0126) and np.isclose(right, 8 * 0.0126)

"""PNG pictures of scan maps and detector patterns: virtual images, mean patterns, decompositions.

Every function takes bare arrays plus metadata (the cube's scan attributes
as a dict, ``ScanAttrs.model_dump()``, or explicit step sizes and units) and
an output path, draws with matplotlib's object API (``Figure`` on the Agg
canvas: no pyplot state, no display needed), and writes the PNG under a
temporary name renamed on success (:func:`diffraflow.flow.exporters._common.atomic_write`:
an existing file is refused unless ``overwrite=True``).

Each picture has a title, a colorbar with its label, and its scale: scan maps
are drawn in physical units of the scan step (``x (µm)``) with the step in
the subtitle; detector patterns in the detector calibration (e.g. ``Å⁻¹``)
when the metadata has one, else in pixels. Contrast is robust (1st to 99th
percentile) unless ``vmin``/``vmax`` are given. The PNG is exactly
``size`` inches times ``dpi`` pixels.

Examples
--------
>>> import tempfile, pathlib
>>> import numpy as np
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> attrs = {"step_size": {"y": 1.5, "x": 1.5, "unit": "um"}}
>>> plot_scan_image(np.arange(12.0).reshape(3, 4), out / "bf.png", title="bright field", attrs=attrs).name
'bf.png'
>>> plot_pattern(np.ones((8, 8)), out / "mean.png", size=(4, 3), dpi=50).name
'mean.png'
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.flow.exporters._common import atomic_write
from diffraflow.schemas.errors import SchemaError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "Scale",
    "scan_scale",
    "detector_scale",
    "plot_scan_image",
    "plot_virtual_images",
    "plot_pattern",
    "plot_decomposition",
    "DEFAULT_DPI",
]

DEFAULT_DPI = 100
_UNITS = {"um": "µm", "nm": "nm", "px": "px", "1/A": "Å⁻¹", "1/nm": "nm⁻¹", "mrad": "mrad"}


@dataclass(frozen=True)
class Scale:
    """Pixel size along y and x in ``unit``, and the origin offset (pixels) of the axes.

    Examples
    --------
    >>> Scale(1.5, 1.5, "um").label
    'µm'
    """

    y: float = 1.0
    x: float = 1.0
    unit: str = "px"
    origin: tuple[float, float] = (0.0, 0.0)

    @property
    def label(self) -> str:
        return _UNITS.get(self.unit, self.unit)

    def extent(self, shape: Sequence[int]) -> tuple[float, float, float, float]:
        """``imshow`` extent (left, right, bottom, top) with pixel centres at ``(index - origin) * size``."""
        ny, nx = int(shape[0]), int(shape[1])
        oy, ox = self.origin
        return ((-0.5 - ox) * self.x, (nx - 0.5 - ox) * self.x, (ny - 0.5 - oy) * self.y, (-0.5 - oy) * self.y)


def scan_scale(attrs: Mapping[str, Any] | None = None, step: float | Sequence[float] | None = None,
               unit: str | None = None) -> Scale:
    """The scan step from explicit ``step``/``unit`` or the attributes' ``step_size``; pixels otherwise.

    Examples
    --------
    >>> scan_scale({"step_size": {"y": 2.0, "x": 1.0, "unit": "nm"}})
    Scale(y=2.0, x=1.0, unit='nm', origin=(0.0, 0.0))
    >>> scan_scale(step=0.5).unit
    'um'
    >>> scan_scale().unit
    'px'
    """
    if step is not None:
        if isinstance(step, int | float | np.integer | np.floating):
            sy = sx = float(step)
        else:
            sy, sx = float(step[0]), float(step[1])
        if not (sy > 0 and sx > 0 and math.isfinite(sy) and math.isfinite(sx)):
            raise SchemaError("plot: step", f"step sizes must be positive, got {step!r}", "give e.g. step=1.5")
        return Scale(sy, sx, unit or "um")
    ss = (attrs or {}).get("step_size") or {}
    if ss:
        return Scale(float(ss.get("y", 1.0)), float(ss.get("x", 1.0)), str(unit or ss.get("unit", "um")))
    return Scale(1.0, 1.0, "px")


def detector_scale(attrs: Mapping[str, Any] | None, shape: Sequence[int]) -> Scale:
    """Detector calibration (``detector.calibration = {scale, units}``), centred; pixels otherwise.

    A calibrated pattern (4D-STEM/SPED) is drawn in reciprocal units with the
    origin at the detector centre; an uncalibrated one in pixels from the corner.

    Examples
    --------
    >>> s = detector_scale({"detector": {"calibration": {"scale": 0.0126, "units": "1/A"}}}, (256, 256))
    >>> s.label, s.origin
    ('Å⁻¹', (127.5, 127.5))
    >>> detector_scale(None, (60, 60)).unit
    'px'
    """
    calib = ((attrs or {}).get("detector") or {}).get("calibration") or {}
    scale = calib.get("scale")
    if scale is not None and float(scale) > 0:
        centre = ((shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0)
        return Scale(float(scale), float(scale), str(calib.get("units", "px")), centre)
    return Scale(1.0, 1.0, "px")


# -- drawing helpers ----------------------------------------------------------------
def _figure(size: tuple[float, float], dpi: int) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=dpi, layout="constrained")


def _default_size(shape: Sequence[int], panels: int = 1, cols: int = 1, extra_h: float = 0.0) -> tuple[float, float]:
    """Figure size in inches: 6 in wide per row of at most 3 panels, height following the map aspect."""
    ny, nx = max(1, int(shape[0])), max(1, int(shape[1]))
    rows = -(-panels // cols)
    width = 6.0 if cols == 1 else 3.6 * cols
    panel_w = width / cols
    panel_h = float(np.clip(panel_w * ny / nx, 1.2, 8.0))
    return (width, round(rows * panel_h + 0.8 + extra_h, 2))


def _limits(image: np.ndarray, vmin: float | None, vmax: float | None, robust: bool) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = (np.percentile(finite, [1, 99]) if robust else (finite.min(), finite.max()))
    lo = float(lo) if vmin is None else float(vmin)
    hi = float(hi) if vmax is None else float(vmax)
    if not hi > lo:  # constant image: a symmetric window around the value
        pad = abs(lo) * 0.5 or 1.0
        lo, hi = lo - pad, hi + pad
    return lo, hi


def _as_image(array: Any, what: str, ndim: int = 2) -> np.ndarray:
    image = np.asarray(array)
    if image.ndim != ndim or 0 in image.shape:
        raise SchemaError(f"plot: {what}", f"expected a non-empty {ndim}-d array, got shape {image.shape}",
                          f"pass a {'(rows, cols)' if ndim == 2 else str(ndim) + '-d'} array")
    if image.dtype.kind not in "biuf":
        raise SchemaError(f"plot: {what}", f"dtype {image.dtype} is not numeric", "pass a numeric array")
    return image.astype(np.float64)


def _draw_map(fig: Figure, ax: Axes, image: np.ndarray, scale: Scale, title: str, label: str, cmap: str,
              vmin: float | None, vmax: float | None, robust: bool, axis_names: tuple[str, str]) -> None:
    import matplotlib

    lo, hi = _limits(image, vmin, vmax, robust)
    cm = matplotlib.colormaps[cmap].with_extremes(bad="magenta")
    im = ax.imshow(image, cmap=cm, vmin=lo, vmax=hi, extent=scale.extent(image.shape), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{axis_names[1]} ({scale.label})")
    ax.set_ylabel(f"{axis_names[0]} ({scale.label})")
    bar = fig.colorbar(im, ax=ax, shrink=0.9)
    bar.set_label(label)


def _scan_subtitle(shape: Sequence[int], scale: Scale) -> str:
    if scale.unit == "px":
        return f"{shape[0]} x {shape[1]} points"
    return f"{shape[0]} x {shape[1]} points, step {scale.y:g} x {scale.x:g} {scale.label}"


def _det_axes(scale: Scale) -> tuple[str, str]:
    return ("k_y", "k_x") if scale.unit != "px" else ("det_y", "det_x")


def _save(fig: Figure, path: str | os.PathLike[str], overwrite: bool) -> Path:
    return atomic_write(path, overwrite, lambda temp: fig.savefig(temp, format="png"))


# -- public plots ---------------------------------------------------------------------
def plot_scan_image(image: Any, path: str | os.PathLike[str], *, title: str = "", label: str = "intensity",
                    attrs: Mapping[str, Any] | None = None, step: float | Sequence[float] | None = None,
                    unit: str | None = None, cmap: str = "gray", vmin: float | None = None,
                    vmax: float | None = None, robust: bool = True, size: tuple[float, float] | None = None,
                    dpi: int = DEFAULT_DPI, overwrite: bool = False) -> Path:
    """One map over the scan ``(scan_y, scan_x)`` (a virtual image, a loading map) as a PNG.

    Parameters
    ----------
    image
        ``(scan_y, scan_x)`` values; NaN shows magenta.
    path
        Output ``.png``.
    title, label
        Figure title and colorbar label.
    attrs, step, unit
        Scale: explicit ``step`` (one number or ``(y, x)``) and ``unit``, or the
        scan attributes' ``step_size``; pixels (scan points) when neither.
    cmap, vmin, vmax, robust
        Colour map and limits (default: 1st-99th percentile when ``robust``).
    size, dpi
        Figure size in inches (default 6 wide, height from the aspect) and
        resolution; the PNG is ``size * dpi`` pixels.
    overwrite
        Replace an existing file.

    Returns
    -------
    Path
        The written PNG.
    """
    data = _as_image(image, "image")
    scale = scan_scale(attrs, step, unit)
    fig = _figure(size or _default_size(data.shape), dpi)
    ax = fig.add_subplot()
    full = f"{title}\n{_scan_subtitle(data.shape, scale)}" if title else _scan_subtitle(data.shape, scale)
    _draw_map(fig, ax, data, scale, full, label, cmap, vmin, vmax, robust, ("y", "x"))
    return _save(fig, path, overwrite)


def plot_virtual_images(images: Any, path: str | os.PathLike[str], *, labels: Sequence[str] | None = None,
                        title: str = "virtual images", label: str = "integrated intensity",
                        attrs: Mapping[str, Any] | None = None, step: float | Sequence[float] | None = None,
                        unit: str | None = None, cmap: str = "gray", robust: bool = True,
                        size: tuple[float, float] | None = None, dpi: int = DEFAULT_DPI,
                        overwrite: bool = False) -> Path:
    """All virtual images of a ``virtual_image`` result in one PNG: a panel and colorbar per mask.

    Parameters
    ----------
    images
        ``(scan_y, scan_x)`` or ``(scan_y, scan_x, mask)`` (the ``images`` output).
    labels
        One title per mask (``VirtualImage.mask_labels(spec)``); default ``mask 0``...
    title, label, attrs, step, unit, cmap, robust, size, dpi, overwrite
        As :func:`plot_scan_image`; each panel has its own contrast.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "vi.png"
    >>> plot_virtual_images(np.random.default_rng(0).random((4, 5, 3)), p, labels=["BF", "ADF", "box"]).exists()
    True
    """
    data = np.asarray(images)
    if data.ndim == 2:
        data = data[..., None]
    data = _as_image(data, "images", ndim=3)
    m = data.shape[2]
    labels = list(labels) if labels is not None else [f"mask {i}" for i in range(m)]
    if len(labels) != m:
        raise SchemaError("plot: labels", f"{len(labels)} labels for {m} images", "give one label per mask")
    scale = scan_scale(attrs, step, unit)
    cols = min(m, 3)
    fig = _figure(size or _default_size(data.shape[:2], m, cols, extra_h=0.3), dpi)
    fig.suptitle(f"{title}\n{_scan_subtitle(data.shape[:2], scale)}", fontsize=11)
    rows = -(-m // cols)
    for i in range(m):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_map(fig, ax, data[..., i], scale, labels[i], label, cmap, None, None, robust, ("y", "x"))
    return _save(fig, path, overwrite)


def plot_pattern(pattern: Any, path: str | os.PathLike[str], *, title: str = "mean pattern",
                 label: str = "mean intensity", attrs: Mapping[str, Any] | None = None, log: bool = False,
                 overlays: Sequence[Mapping[str, Any]] | None = None, cmap: str = "viridis",
                 vmin: float | None = None, vmax: float | None = None, robust: bool = True,
                 size: tuple[float, float] | None = None, dpi: int = DEFAULT_DPI, overwrite: bool = False) -> Path:
    """A detector-shaped image (mean or max pattern, a factor) as a PNG.

    Parameters
    ----------
    pattern
        ``(det_y, det_x)`` values.
    path
        Output ``.png``.
    title, label
        Figure title and colorbar label.
    attrs
        Scan attributes: ``detector.calibration = {scale, units}`` draws the axes
        in reciprocal units centred on the detector; pixels otherwise.
    log
        Colour by :math:`\\log_{10}(1 + I - \\min I)` (diffraction spots span decades).
    overlays
        Virtual-detector mask specs (``virtual_image.masks`` form) drawn as
        outlines, so a mean pattern shows where the virtual detectors sit.
    cmap, vmin, vmax, robust, size, dpi, overwrite
        As :func:`plot_scan_image`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "mean.png"
    >>> plot_pattern(np.ones((16, 16)), p, log=True, overlays=[{"type": "disk", "radius": 3}]).exists()
    True
    """
    data = _as_image(pattern, "pattern")
    scale = detector_scale(attrs, data.shape)
    shown = np.log10(1.0 + data - np.nanmin(data)) if log else data
    fig = _figure(size or _default_size(data.shape), dpi)
    ax = fig.add_subplot()
    full = f"{title}\n{data.shape[0]} x {data.shape[1]} px" + (
        f", {scale.y:g} {scale.label}/px" if scale.unit != "px" else "")
    _draw_map(fig, ax, shown, scale, full, f"log10(1 + {label})" if log else label, cmap, vmin, vmax, robust,
              _det_axes(scale))
    for spec in overlays or ():
        _draw_overlay(ax, spec, data.shape, scale)
    return _save(fig, path, overwrite)


def _draw_overlay(ax: Axes, spec: Mapping[str, Any], shape: Sequence[int], scale: Scale) -> None:
    from diffraflow.operators.virtual._masks import validate_mask_spec
    from matplotlib.patches import Circle, Rectangle

    mask = validate_mask_spec(spec, shape, "plot: overlays")
    style: dict[str, Any] = {"fill": False, "edgecolor": "white", "linewidth": 1.0, "linestyle": "--"}
    oy, ox = scale.origin
    if mask["type"] == "rectangle":
        y0, y1, x0, x1 = mask["bounds"]
        ax.add_patch(Rectangle(((x0 - 0.5 - ox) * scale.x, (y0 - 0.5 - oy) * scale.y), (x1 - x0) * scale.x,
                               (y1 - y0) * scale.y, **style))
        return
    cy, cx = mask["center"]
    xy = ((cx - ox) * scale.x, (cy - oy) * scale.y)
    radii = [mask["radius"]] if mask["type"] == "disk" else [mask["inner"], mask["outer"]]
    for r in radii:
        ax.add_patch(Circle(xy, r * scale.x, **style))


def plot_decomposition(factors: Any, loadings: Any, path: str | os.PathLike[str], *,
                       explained_variance: Any = None, title: str = "decomposition",
                       attrs: Mapping[str, Any] | None = None, n_show: int = 4, cmap: str = "RdBu_r",
                       size: tuple[float, float] | None = None, dpi: int = DEFAULT_DPI,
                       overwrite: bool = False) -> Path:
    """Scree plot, factors and loading maps of a ``decomposition`` product in one PNG.

    Parameters
    ----------
    factors
        ``(component, det_y, det_x)``.
    loadings
        ``(scan_y, scan_x, component)``.
    explained_variance
        ``(component,)``; draws a scree plot (log scale) when given.
    n_show
        Components drawn (the first ``n_show``).
    attrs, cmap, size, dpi, overwrite
        As :func:`plot_scan_image`; factors and loadings use a diverging map
        centred on 0.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> rng = np.random.default_rng(0)
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "pca.png"
    >>> plot_decomposition(rng.normal(size=(3, 8, 8)), rng.normal(size=(4, 5, 3)), p,
    ...                    explained_variance=[3.0, 2.0, 1.0]).exists()
    True
    """
    fac = _as_image(factors, "factors", ndim=3)
    load = _as_image(loadings, "loadings", ndim=3)
    if fac.shape[0] != load.shape[2]:
        raise SchemaError("plot: decomposition", f"{fac.shape[0]} factors but {load.shape[2]} loadings",
                          "pass factors (component, det_y, det_x) and loadings (scan_y, scan_x, component)")
    k = min(int(n_show), fac.shape[0])
    scree = explained_variance is not None
    cols = k + (1 if scree else 0)
    fig = _figure(size or (max(6.0, 3.0 * cols), 6.4), dpi)
    fig.suptitle(title, fontsize=11)
    grid = fig.add_gridspec(2, cols)
    offset = 0
    if scree:
        ev = np.asarray(explained_variance, dtype=np.float64).ravel()
        ax = fig.add_subplot(grid[:, 0])
        ax.semilogy(np.arange(ev.size), np.clip(ev, np.finfo(float).tiny, None), "o-")
        ax.set_xlabel("component")
        ax.set_ylabel("explained variance")
        ax.set_title("scree", fontsize=10)
        offset = 1
    sscale, dscale = scan_scale(attrs), detector_scale(attrs, fac.shape[1:])
    for j in range(k):
        ax = fig.add_subplot(grid[0, offset + j])
        lim = float(np.nanmax(np.abs(fac[j]))) or 1.0
        _draw_map(fig, ax, fac[j], dscale, f"factor {j}", "weight", cmap, -lim, lim, False, _det_axes(dscale))
        ax = fig.add_subplot(grid[1, offset + j])
        lim = float(np.nanmax(np.abs(load[..., j]))) or 1.0
        _draw_map(fig, ax, load[..., j], sscale, f"loading {j}", "score", cmap, -lim, lim, False, ("y", "x"))
    return _save(fig, path, overwrite)

"""Pure per-frame kernels shared by the preprocessing operators.

Every function here takes and returns bare arrays (a stack of frames
``(n, det_y, det_x)`` or one detector-shaped image) and knows nothing about
chunks, passes or the engine, in the manner of ``dask/array/chunk.py``. Each
frame is treated on its own, so the results never depend on how the scan was
cut into chunks.

Functions take an ``xp`` array module (``numpy`` by default; ``cupy`` works
for the element-wise ones) so the operators can hand over ``ctx.xp``.

Examples
--------
>>> import numpy as np
>>> circular_mask((5, 5), radius=1).astype(int)
array([[0, 0, 0, 0, 0],
       [0, 0, 1, 0, 0],
       [0, 1, 1, 1, 0],
       [0, 0, 1, 0, 0],
       [0, 0, 0, 0, 0]])
>>> rescale_frames(np.array([[[0.0, 2.0], [1.0, 4.0]]]), "uint8").tolist()
[[[0, 128], [64, 255]]]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.schemas.errors import PipelineError

__all__ = [
    "detector_centre",
    "circular_mask",
    "apply_background",
    "rescale_frames",
    "normalize_frames",
    "gaussian_blur_frames",
    "bin_frames",
    "binned_dtype",
    "closest_divisor",
    "load_image_param",
    "freeze_array",
]


def detector_centre(shape: Sequence[int]) -> tuple[float, float]:
    """Centre ``(cy, cx)`` of a detector in pixel coordinates (pixel centres at integers).

    Examples
    --------
    >>> detector_centre((4, 5))
    (1.5, 2.0)
    """
    return ((shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0)


def circular_mask(shape: Sequence[int], center: Sequence[float] | None = None,
                  radius: float | None = None, inner: float = -1.0) -> np.ndarray:
    """Boolean ``(det_y, det_x)`` mask of the pixels with ``inner < r <= radius``.

    Parameters
    ----------
    shape
        Detector ``(det_y, det_x)``.
    center
        ``(cy, cx)`` in pixels; default: the detector centre.
    radius
        Outer radius in pixels (inclusive); default: half the smaller side.
    inner
        Inner radius in pixels (exclusive); default: none, a full disk.

    Examples
    --------
    >>> int(circular_mask((7, 7), radius=3, inner=2).sum())
    16
    """
    cy, cx = detector_centre(shape) if center is None else (float(center[0]), float(center[1]))
    if radius is None:
        radius = min(shape[0], shape[1]) / 2.0
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    # a tiny tolerance so that integer radii include the pixels exactly on the circle
    eps = 1e-9
    return (r2 <= radius * radius + eps) & (r2 > inner * inner + eps if inner >= 0 else True)


def apply_background(frames: Any, background: Any, operation: str, xp: Any = np) -> Any:
    """Subtract or divide ``frames`` by ``background`` (float32 result).

    Division leaves 0 where the background is 0 (those pixels carry no signal).

    Examples
    --------
    >>> f = np.full((1, 2, 2), 4, "uint8")
    >>> apply_background(f, np.array([[1.0, 2.0], [0.0, 4.0]]), "divide").tolist()
    [[[4.0, 2.0], [0.0, 1.0]]]
    """
    frames = frames.astype(xp.float32, copy=False)
    background = xp.asarray(background, dtype=xp.float32)
    if operation == "subtract":
        return frames - background
    zero = background == 0
    return xp.where(zero, xp.float32(0), frames / xp.where(zero, xp.float32(1), background))


def rescale_frames(frames: Any, dtype: Any, xp: Any = np) -> Any:
    """Stretch each frame linearly to the full range of ``dtype`` and cast.

    Integer dtypes use ``[iinfo.min, iinfo.max]`` (rounded); float dtypes use
    ``[-1, 1]``, as kikuchipy's ``rescale_intensity`` does. A constant frame
    maps to the bottom of the range.

    Examples
    --------
    >>> rescale_frames(np.array([[[1.0, 3.0]]]), "float32").tolist()
    [[[-1.0, 1.0]]]
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        lo, hi = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
    else:
        lo, hi = -1.0, 1.0
    f = frames.astype(xp.float64, copy=False)
    n = f.shape[0]
    flat = f.reshape(n, -1)
    fmin = flat.min(axis=1).reshape(n, 1, 1) if flat.shape[1] else xp.zeros((n, 1, 1))
    fmax = flat.max(axis=1).reshape(n, 1, 1) if flat.shape[1] else xp.zeros((n, 1, 1))
    span = fmax - fmin
    scaled = (f - fmin) / xp.where(span == 0, 1.0, span) * (hi - lo) + lo
    if dtype.kind in "iu":
        scaled = xp.clip(xp.rint(scaled), lo, hi)
    return scaled.astype(dtype)


def normalize_frames(frames: Any, method: str, mask: Any = None, xp: Any = np) -> Any:
    """Per-frame ``zscore`` (zero mean, unit std) or ``minmax`` (to [0, 1]) as float32.

    Statistics are taken over the pixels where ``mask`` is True (all pixels
    when ``mask`` is None); pixels outside the mask are set to 0. A constant
    frame becomes all zeros.

    Examples
    --------
    >>> normalize_frames(np.array([[[1, 3]]]), "zscore").tolist()
    [[[-1.0, 1.0]]]
    >>> normalize_frames(np.array([[[1, 3, 2]]]), "minmax").tolist()
    [[[0.0, 1.0, 0.5]]]
    """
    f = frames.astype(xp.float64, copy=False)
    n = f.shape[0]
    flat = f.reshape(n, -1)
    sel = flat if mask is None else flat[:, xp.asarray(mask).ravel()]
    if sel.shape[1] == 0:
        return xp.zeros(f.shape, dtype=xp.float32)
    if method == "zscore":
        centre = sel.mean(axis=1)
        scale = sel.std(axis=1)
    else:
        centre = sel.min(axis=1)
        scale = sel.max(axis=1) - centre
    out = (f - centre.reshape(n, 1, 1)) / xp.where(scale == 0, 1.0, scale).reshape(n, 1, 1)
    out = xp.where((scale == 0).reshape(n, 1, 1), 0.0, out)
    if mask is not None:
        out = out * xp.asarray(mask)
    return out.astype(xp.float32)


def gaussian_blur_frames(frames: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Gaussian-blur each frame (``sigma`` in pixels, ``reflect`` edges, as kikuchipy), float64.

    Examples
    --------
    >>> f = np.zeros((1, 11, 11)); f[0, 5, 5] = 1
    >>> round(float(gaussian_blur_frames(f, 1.0).sum()), 6)
    1.0
    """
    from scipy import ndimage

    f = np.asarray(frames, dtype=np.float64)
    return ndimage.gaussian_filter(f, sigma=(0.0, float(sigma), float(sigma)), mode="reflect",
                                   truncate=float(truncate))


def binned_dtype(dtype: Any, reduce: str) -> np.dtype:
    """Output dtype of :func:`bin_frames`: sums of integers widen, means are float.

    Examples
    --------
    >>> binned_dtype("uint8", "sum"), binned_dtype("uint8", "mean"), binned_dtype("float64", "sum")
    (dtype('uint32'), dtype('float32'), dtype('float64'))
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        dtype = np.dtype("uint8")
    if dtype.kind == "f":
        return np.dtype("float64") if dtype.itemsize > 4 else np.dtype("float32")
    if reduce == "mean":
        return np.dtype("float32")
    if dtype.kind == "u":
        return np.dtype("uint64") if dtype.itemsize > 2 else np.dtype("uint32")
    return np.dtype("int64") if dtype.itemsize > 2 else np.dtype("int32")


def bin_frames(frames: Any, factors: tuple[int, int], reduce: str, xp: Any = np) -> Any:
    """Sum or average ``by x bx`` blocks of pixels; factors must divide the frame shape.

    Examples
    --------
    >>> bin_frames(np.arange(16, dtype="uint8").reshape(1, 4, 4), (2, 2), "sum").tolist()
    [[[10, 18], [42, 50]]]
    """
    by, bx = factors
    n, dy, dx = frames.shape
    out_dtype = binned_dtype(frames.dtype, reduce)
    acc = xp.float64 if out_dtype.kind == "f" else out_dtype
    blocks = frames.reshape(n, dy // by, by, dx // bx, bx)
    summed = blocks.sum(axis=(2, 4), dtype=acc)
    if reduce == "mean":
        summed = summed / (by * bx)
    return summed.astype(out_dtype, copy=False)


def closest_divisor(size: int, factor: int) -> int:
    """The divisor of ``size`` closest to ``factor`` (the larger one on ties).

    Examples
    --------
    >>> closest_divisor(60, 7), closest_divisor(60, 8), closest_divisor(7, 3)
    (6, 10, 1)
    """
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    return min(divisors, key=lambda d: (abs(d - factor), -d))


def load_image_param(value: Any, where: str, what: str, variable: str | None = None) -> np.ndarray:
    """An array given as a parameter: nested lists/array, a ``.npy`` file, or a Zarr store.

    Parameters
    ----------
    value
        Array-like, or a path: ``*.npy`` is loaded with :func:`numpy.load`;
        a directory is opened as a Zarr group and its ``variable`` array is read
        (so ``background: scan.zarr`` reads that cube's ``static_background``).
    where, what
        For error messages: the operator parameter and what it should hold.

    Examples
    --------
    >>> load_image_param([[1, 2]], "op.p", "a background").shape
    (1, 2)
    >>> load_image_param("missing.npy", "op.p", "a background")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: op.p: file 'missing.npy' does not exist (fix: give the path of a .npy file or a Zarr store holding a background)
    """
    if not isinstance(value, str | Path):
        return np.asarray(value)
    path = Path(value)
    fix = f"give the path of a .npy file or a Zarr store holding {what}"
    if not path.exists():
        raise PipelineError(where, f"file {str(value)!r} does not exist", fix)
    if path.is_dir():
        import zarr

        try:
            group = zarr.open_group(str(path), mode="r")
        except Exception as exc:
            raise PipelineError(where, f"{str(value)!r} is not a Zarr store ({exc})", fix) from None
        if variable is None or variable not in set(group.array_keys()):
            raise PipelineError(where, f"Zarr store {str(value)!r} has no variable {variable!r}",
                                f"write {variable!r} to the store or give a .npy file")
        array = group[variable]
        assert isinstance(array, zarr.Array)
        return np.asarray(array[...])
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except Exception as exc:
        raise PipelineError(where, f"cannot read {str(value)!r} as .npy ({exc})", fix) from None


def freeze_array(value: Any) -> Any:
    """Nested tuples for an array parameter, so frozen operators stay hashable and comparable.

    Strings (paths) and ``None`` pass through.

    Examples
    --------
    >>> freeze_array(np.eye(2, dtype=int))
    ((1, 0), (0, 1))
    >>> freeze_array("bg.npy")
    'bg.npy'
    """
    if value is None or isinstance(value, str | Path):
        return value if not isinstance(value, Path) else str(value)
    if isinstance(value, np.ndarray | list | tuple):
        arr = np.asarray(value)
        if arr.dtype == object:
            return value
        return _to_tuples(arr.tolist())
    return value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value

"""Virtual-detector masks and the one-matrix-product kernel behind every virtual image.

A virtual image integrates each frame against a mask. With ``m`` masks
stacked as the columns of a ``(p, m)`` matrix ``W`` (``p`` detector pixels),
all ``m`` images of a chunk of ``n`` frames ``F`` (``(n, p)``) come out of one
matrix product ``F @ W``. Only the pixels where some mask is non-zero are read
(the mask *support*), so small disks cost little on large detectors.

Mask specs are small dicts, as written in a pipeline file::

    {type: disk, center: [cy, cx], radius: r}
    {type: annulus, center: [cy, cx], inner: r0, outer: r1}
    {type: rectangle, bounds: [y0, y1, x0, x1]}

Coordinates are pixels with pixel centres at integers; ``center`` defaults to
the detector centre ``((det_y - 1) / 2, (det_x - 1) / 2)``. A disk holds the
pixels with ``r <= radius``, an annulus those with ``inner < r <= outer``, a
rectangle rows ``y0 <= y < y1`` and columns ``x0 <= x < x1``. Each spec may
carry a ``name`` for labels.

Examples
--------
>>> import numpy as np
>>> w = mask_images([{"type": "disk", "radius": 1}, {"type": "rectangle", "bounds": [0, 1, 0, 3]}], (3, 3))
>>> w.astype(int).tolist()
[[[0, 1, 0], [1, 1, 1], [0, 1, 0]], [[1, 1, 1], [0, 0, 0], [0, 0, 0]]]
>>> plan = make_plan(w)
>>> virtual_images(np.ones((2, 3, 3), "uint8"), plan).tolist()
[[5.0, 3.0], [5.0, 3.0]]
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.preprocess._kernels import circular_mask, detector_centre
from diffraflow.schemas.errors import PipelineError

__all__ = ["MASK_KEYS", "validate_mask_spec", "mask_image", "mask_images", "mask_label", "MaskPlan",
           "make_plan", "virtual_images"]

#: Keys accepted by each mask type (``name`` is accepted by all).
MASK_KEYS: dict[str, tuple[str, ...]] = {
    "disk": ("center", "radius"),
    "annulus": ("center", "inner", "outer"),
    "rectangle": ("bounds",),
}

#: Bytes of float64 frames converted at once (bounds the kernel's memory).
_BLOCK_BYTES = 32 * 2**20


def _number(value: Any, where: str, what: str, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
            or not np.isfinite(value):
        raise PipelineError(where, f"{what} must be a finite number, got {value!r}", fix)
    return float(value)


def validate_mask_spec(spec: Mapping[str, Any], det_shape: Sequence[int], where: str) -> dict[str, Any]:
    """Check one mask spec against the detector shape; return it with defaults filled in.

    Examples
    --------
    >>> validate_mask_spec({"type": "disk", "radius": 2}, (8, 8), "op.masks[0]")["center"]
    (3.5, 3.5)
    >>> validate_mask_spec({"type": "disc", "radius": 2}, (8, 8), "op.masks[0]")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: op.masks[0]: unknown mask type 'disc' (fix: did you mean 'disk'? types: disk, annulus, rectangle)
    """
    if not isinstance(spec, Mapping):
        raise PipelineError(where, f"a mask spec must be a mapping, got {spec!r}",
                            "write e.g. {type: disk, radius: 10}")
    kind = spec.get("type")
    if kind not in MASK_KEYS:
        close = difflib.get_close_matches(str(kind), list(MASK_KEYS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise PipelineError(where, f"unknown mask type {kind!r}", f"{hint}types: {', '.join(MASK_KEYS)}")
    allowed = ("type", "name", *MASK_KEYS[kind])
    for key in spec:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"a {kind} takes {', '.join(MASK_KEYS[kind])}"
            raise PipelineError(where, f"unknown key {key!r} for a {kind}", hint)
    out: dict[str, Any] = {"type": kind}
    if "name" in spec:
        out["name"] = str(spec["name"])
    dy, dx = int(det_shape[0]), int(det_shape[1])
    if kind == "rectangle":
        bounds = spec.get("bounds")
        if not isinstance(bounds, Sequence) or isinstance(bounds, str) or len(bounds) != 4:
            raise PipelineError(f"{where}.bounds", f"expected [y0, y1, x0, x1], got {bounds!r}",
                                f"give pixel bounds, e.g. [0, {dy}, 0, {dx}]")
        y0, y1, x0, x1 = (_number(b, f"{where}.bounds", "each bound", "give integers") for b in bounds)
        if not (0 <= y0 < y1 <= dy and 0 <= x0 < x1 <= dx):
            raise PipelineError(f"{where}.bounds", f"[{y0:g}, {y1:g}, {x0:g}, {x1:g}] is empty or leaves the "
                                f"{dy}x{dx} detector", f"use 0 <= y0 < y1 <= {dy} and 0 <= x0 < x1 <= {dx}")
        out["bounds"] = (int(np.ceil(y0)), int(np.ceil(y1)), int(np.ceil(x0)), int(np.ceil(x1)))
        return out
    center = spec.get("center")
    if center is None:
        out["center"] = detector_centre((dy, dx))
    else:
        if not isinstance(center, Sequence) or isinstance(center, str) or len(center) != 2:
            raise PipelineError(f"{where}.center", f"expected [cy, cx], got {center!r}",
                                "give the centre as two numbers [cy, cx] in pixels")
        out["center"] = tuple(_number(c, f"{where}.center", "each coordinate", "give [cy, cx] in pixels")
                              for c in center)
    radius_fix = f"give radii in pixels, e.g. up to {min(dy, dx) / 2:g}"
    if kind == "disk":
        if "radius" not in spec:
            raise PipelineError(where, "a disk needs a radius", radius_fix)
        out["radius"] = _number(spec["radius"], f"{where}.radius", "radius", radius_fix)
        if out["radius"] < 0:
            raise PipelineError(f"{where}.radius", f"radius must be >= 0, got {out['radius']:g}", radius_fix)
    else:
        for key in ("inner", "outer"):
            if key not in spec:
                raise PipelineError(where, f"an annulus needs {key!r}", radius_fix)
            out[key] = _number(spec[key], f"{where}.{key}", key, radius_fix)
        if not 0 <= out["inner"] < out["outer"]:
            raise PipelineError(where, f"need 0 <= inner < outer, got inner={out['inner']:g}, "
                                f"outer={out['outer']:g}", "make the outer radius larger than the inner one")
    if not mask_image(out, (dy, dx)).any():
        raise PipelineError(where, f"the {kind} covers no pixel of the {dy}x{dx} detector",
                            "move the centre onto the detector or enlarge the radius")
    return out


def mask_image(spec: Mapping[str, Any], det_shape: Sequence[int]) -> np.ndarray:
    """Boolean ``(det_y, det_x)`` image of one *validated* mask spec.

    Examples
    --------
    >>> int(mask_image({"type": "annulus", "center": (3, 3), "inner": 1, "outer": 2}, (7, 7)).sum())
    8
    """
    kind = spec["type"]
    if kind == "rectangle":
        y0, y1, x0, x1 = spec["bounds"]
        out = np.zeros(tuple(det_shape), dtype=bool)
        out[y0:y1, x0:x1] = True
        return out
    center = spec.get("center")
    if kind == "disk":
        return circular_mask(det_shape, center, spec["radius"])
    return circular_mask(det_shape, center, spec["outer"], inner=spec["inner"])


def mask_images(specs: Sequence[Mapping[str, Any]], det_shape: Sequence[int], where: str = "masks") -> np.ndarray:
    """``(m, det_y, det_x)`` float64 stack of the masks of ``specs`` (validated here)."""
    out = np.zeros((len(specs), *det_shape), dtype=np.float64)
    for i, spec in enumerate(specs):
        out[i] = mask_image(validate_mask_spec(spec, det_shape, f"{where}[{i}]"), det_shape)
    return out


def mask_label(spec: Mapping[str, Any]) -> str:
    """A short label for a mask spec (its ``name`` if given).

    Examples
    --------
    >>> mask_label({"type": "annulus", "inner": 10, "outer": 20})
    'annulus 10-20 px'
    """
    if "name" in spec:
        return str(spec["name"])
    kind = spec.get("type")
    if kind == "disk":
        return f"disk r={spec.get('radius'):g} px"
    if kind == "annulus":
        return f"annulus {spec.get('inner'):g}-{spec.get('outer'):g} px"
    return f"rectangle {list(spec.get('bounds', []))}"


@dataclass(frozen=True)
class MaskPlan:
    """The masks as a matrix over their support: built once per worker.

    Attributes
    ----------
    support
        ``(q,)`` flat indices of the pixels where some mask is non-zero, or
        ``None`` when that is every pixel.
    matrix
        ``(q, m)`` float64 mask weights on the support.
    n_pixels
        Detector pixels ``p``.
    """

    support: np.ndarray | None
    matrix: np.ndarray
    n_pixels: int

    @property
    def n_masks(self) -> int:
        return int(self.matrix.shape[1])


def make_plan(masks: np.ndarray) -> MaskPlan:
    """Plan for ``(m, det_y, det_x)`` masks (boolean or weights)."""
    flat = np.asarray(masks, dtype=np.float64).reshape(len(masks), -1)
    support = np.flatnonzero((flat != 0).any(axis=0))
    full = support.size == flat.shape[1]
    return MaskPlan(support=None if full else support, matrix=np.ascontiguousarray(flat[:, support].T),
                    n_pixels=flat.shape[1])


def virtual_images(frames: Any, plan: MaskPlan, xp: Any = np) -> Any:
    """``(n, m)`` float64 virtual images of ``(n, det_y, det_x)`` frames: one matrix product.

    Frames are converted to float64 in blocks of about 32 MiB (bounded
    memory); each image is a float64 dot product of one frame with one mask,
    so it does not depend on the other frames of the chunk beyond BLAS
    rounding.
    """
    n = frames.shape[0]
    flat = frames.reshape(n, -1)
    matrix = xp.asarray(plan.matrix)
    if plan.support is not None:
        flat = flat[:, xp.asarray(plan.support)]
    out = xp.empty((n, plan.n_masks), dtype=xp.float64)
    block = max(1, _BLOCK_BYTES // (8 * max(1, flat.shape[1])))
    for start in range(0, n, block):
        out[start:start + block] = flat[start:start + block].astype(xp.float64) @ matrix
    return out


class MaskOperatorMixin:
    """Shared ``resolve``/``setup``/``process`` of the virtual-detector operators.

    A subclass (a frozen :class:`~diffraflow.operators.base.Operator` dataclass) defines
    :meth:`mask_stack` (the ``(m, det_y, det_x)`` weights and one label per
    mask, validated against the spec), ``output`` (the output name) and
    ``squeeze`` (True for a single scalar map per frame).
    """

    output: str = "images"
    squeeze: bool = False
    reduce: str = "sum"

    def mask_stack(self, spec: Any) -> tuple[np.ndarray, list[str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def mask_labels(self, spec: Any) -> list[str]:
        """One label per mask (for the ``mask`` coordinate of the result)."""
        return self.mask_stack(spec)[1]

    def _resolve_images(self, spec: Any, description: str):
        from diffraflow.operators.base import OutputSpec

        if self.reduce not in ("sum", "mean"):
            raise PipelineError(f"{self.name}.reduce", f"{self.reduce!r} is not sum or mean",  # type: ignore[attr-defined]
                                "use reduce: sum or reduce: mean")
        masks, _ = self.mask_stack(spec)
        if self.squeeze:
            return {self.output: OutputSpec("nav", "float64", (), (), description)}
        return {self.output: OutputSpec("nav", "float64", (len(masks),), ("mask",), description)}

    def setup(self, spec: Any, backend: str = "numpy") -> MaskPlan:
        masks, _ = self.mask_stack(spec)
        if self.reduce == "mean":
            weight = np.abs(masks).reshape(len(masks), -1).sum(axis=1)
            masks = masks / np.where(weight == 0, 1.0, weight)[:, None, None]
        return make_plan(masks)

    def process(self, frames: Any, ctx: Any) -> dict[str, Any]:
        plan = ctx.constants if isinstance(ctx.constants, MaskPlan) else self.setup(ctx.spec)
        xp = ctx.xp
        images = virtual_images(xp.asarray(frames), plan, xp)
        return {self.output: images[:, 0] if self.squeeze else images}

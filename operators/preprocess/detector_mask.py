"""Detector mask: zero the pixels outside a circle or a given boolean mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import (
    ChunkContext,
    InputSpec,
    Operator,
    OutputSpec,
    param,
    register_operator,
)
from diffraflow.operators.preprocess._kernels import circular_mask, freeze_array, load_image_param
from diffraflow.schemas.errors import PipelineError

__all__ = ["DetectorMask"]


@register_operator
@dataclass(frozen=True)
class DetectorMask(Operator):
    """Set the pixels outside a mask to 0, keeping the frame dtype.

    Parameters
    ----------
    mask
        ``None`` (default): a circle of ``radius`` around ``center``. Otherwise
        a boolean ``(det_y, det_x)`` array (True = keep), or the path of a
        ``.npy`` file holding one.
    radius
        Circle radius in pixels (inclusive); default: half the smaller
        detector side (the inscribed circle).
    center
        ``[cy, cx]`` of the circle in pixels; default: the detector centre.
    invert
        Keep the outside instead (e.g. to blank a beam stop).

    Outputs
    -------
    patterns : frames
        Masked frames, same dtype as the input.

    Notes
    -----
    Masked pixels become 0, never NaN: integer frames have no NaN, and 0 keeps
    sums, virtual images and decompositions well defined. Downstream statistics
    that must ignore the masked pixels take their own mask (see
    ``normalize.mask_radius``).

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.base import ChunkContext, InputSpec
    >>> spec = InputSpec((1, 1), (3, 3), np.dtype("uint8"))
    >>> op = DetectorMask(radius=1)
    >>> ctx = ChunkContext(spec, constants=op.setup(spec))
    >>> op.process(np.ones((1, 3, 3), "uint8"), ctx)["patterns"][0].tolist()
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    """

    name = "detector_mask"
    backends = ("numpy", "cupy")

    mask: Any = param(None, doc="boolean (det_y, det_x) keep-mask or .npy path (None: a circle)")
    radius: float | None = param(None, doc="circle radius in pixels (default: half the smaller side)")
    center: list[float] | None = param(None, doc="[cy, cx] of the circle in pixels (default: detector centre)")
    invert: bool = param(False, doc="keep the pixels outside the mask instead")

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask", freeze_array(self.mask))
        if self.center is not None:
            object.__setattr__(self, "center", tuple(float(c) for c in self.center))

    def _mask(self, spec: InputSpec) -> np.ndarray:
        where = f"{self.name}.mask"
        if self.mask is not None:
            mask = load_image_param(self.mask, where, "a boolean mask")
            if mask.shape != tuple(spec.det_shape):
                raise PipelineError(where, f"mask shape {mask.shape} differs from the frames {tuple(spec.det_shape)}",
                                    "give a mask of the frame shape, or place this step before bin_frames")
            if mask.dtype != bool:
                if not np.issubdtype(mask.dtype, np.number) or not np.isin(mask, (0, 1)).all():
                    raise PipelineError(where, f"mask of dtype {mask.dtype} is not boolean",
                                        "give a boolean mask (or 0/1 values)")
                mask = mask.astype(bool)
        else:
            mask = circular_mask(spec.det_shape, self.center, self.radius)
        return ~mask if self.invert else mask

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        if self.mask is not None and (self.radius is not None or self.center is not None):
            raise PipelineError(f"{self.name}", "both a mask and a circle (radius/center) were given",
                                "give either mask or radius/center")
        if self.center is not None and len(self.center) != 2:
            raise PipelineError(f"{self.name}.center", f"expected [cy, cx], got {list(self.center)}",
                                "give the centre as two numbers [cy, cx] in pixels")
        if self.radius is not None and not (np.isfinite(self.radius) and self.radius > 0):
            raise PipelineError(f"{self.name}.radius", f"radius must be positive, got {self.radius!r}",
                                f"use e.g. radius: {min(spec.det_shape) / 2:g}")
        if not self._mask(spec).any():
            raise PipelineError(f"{self.name}", "the mask keeps no pixel", "check radius, center, mask and invert")
        return {"patterns": OutputSpec("frames", spec.dtype, tuple(spec.det_shape), ("det_y", "det_x"),
                                       "frames with the pixels outside the detector mask set to 0")}

    def setup(self, spec: InputSpec, backend: str = "numpy") -> Any:
        return self._mask(spec)

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        xp = ctx.xp
        mask = ctx.constants if ctx.constants is not None else self.setup(ctx.spec)
        frames = xp.asarray(frames)
        return {"patterns": xp.where(xp.asarray(mask), frames, xp.zeros((), dtype=frames.dtype))}

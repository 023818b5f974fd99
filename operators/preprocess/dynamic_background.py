"""Dynamic background correction: remove each frame's own Gaussian-blurred version."""

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
from diffraflow.operators.preprocess._kernels import (
    apply_background,
    gaussian_blur_frames,
    rescale_frames,
)
from diffraflow.schemas.errors import PipelineError

__all__ = ["RemoveDynamicBackground"]


@register_operator
@dataclass(frozen=True)
class RemoveDynamicBackground(Operator):
    """Subtract or divide each frame by its Gaussian-blurred self.

    Parameters
    ----------
    sigma
        Standard deviation of the Gaussian in pixels; default ``det_x / 8``
        (kikuchipy's default).
    operation
        ``subtract`` or ``divide`` (pixels where the blurred frame is 0 become 0).
    truncate
        Truncate the Gaussian kernel at this many standard deviations.
    scale_to_dtype
        ``None``: float32 output as computed; a dtype name: stretch each frame
        to that dtype's full range (``[-1, 1]`` for floats) and cast.

    Outputs
    -------
    patterns : frames
        The corrected frames.

    Notes
    -----
    The background of frame :math:`f` is :math:`G_\\sigma * f`, a spatial
    Gaussian blur with reflected edges (``scipy.ndimage.gaussian_filter``,
    float64); the corrected frame is :math:`f - G_\\sigma * f` or
    :math:`f / (G_\\sigma * f)`. It removes the smooth intensity gradient of
    EBSD patterns while keeping the sharp Kikuchi bands, as in kikuchipy's
    ``EBSD.remove_dynamic_background`` (Jackson et al., 2019): with
    ``scale_to_dtype`` set to the input dtype the result equals kikuchipy's
    ``filter_domain="spatial"`` within one grey level (we round, it truncates).

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.base import ChunkContext, InputSpec
    >>> spec = InputSpec((1, 1), (8, 8), np.dtype("uint8"))
    >>> op = RemoveDynamicBackground(sigma=2.0)
    >>> out = op.process(np.full((1, 8, 8), 7, "uint8"), ChunkContext(spec))["patterns"]
    >>> float(abs(out).max())
    0.0
    """

    name = "remove_dynamic_background"
    backends = ("numpy",)

    sigma: float | None = param(None, doc="Gaussian standard deviation in pixels (default det_x / 8)")
    operation: str = param("subtract", doc="subtract or divide by the blurred frame",
                           choices=("subtract", "divide"))
    truncate: float = param(4.0, doc="truncate the Gaussian kernel at this many standard deviations")
    scale_to_dtype: str | None = param(None, doc="stretch each corrected frame to this dtype's full range "
                                                 "and cast (None: float32, unscaled)")

    def _sigma(self, spec: InputSpec) -> float:
        return float(self.sigma) if self.sigma is not None else spec.det_shape[1] / 8.0

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        where = f"{self.name}"
        if self.operation not in ("subtract", "divide"):
            raise PipelineError(f"{where}.operation", f"{self.operation!r} is not subtract or divide",
                                "use operation: subtract or operation: divide")
        if self.sigma is not None and not (np.isfinite(self.sigma) and self.sigma > 0):
            raise PipelineError(f"{where}.sigma", f"sigma must be a positive number of pixels, got {self.sigma!r}",
                                f"use e.g. sigma: {spec.det_shape[1] / 8:g} (det_x / 8)")
        if not (np.isfinite(self.truncate) and self.truncate > 0):
            raise PipelineError(f"{where}.truncate", f"truncate must be positive, got {self.truncate!r}",
                                "use truncate: 4.0")
        dtype = np.dtype("float32")
        if self.scale_to_dtype is not None:
            try:
                dtype = np.dtype(self.scale_to_dtype)
            except TypeError:
                raise PipelineError(f"{where}.scale_to_dtype", f"{self.scale_to_dtype!r} is not a dtype",
                                    "use a numpy dtype name such as uint8 or float32") from None
            if dtype.kind not in "iuf":
                raise PipelineError(f"{where}.scale_to_dtype", f"{dtype} is not numeric",
                                    "use an integer or float dtype such as uint8 or float32")
        return {"patterns": OutputSpec("frames", dtype, tuple(spec.det_shape), ("det_y", "det_x"),
                                       "frames corrected by their Gaussian-blurred background")}

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        frames = np.asarray(frames)
        blurred = gaussian_blur_frames(frames, self._sigma(ctx.spec), self.truncate)
        out = apply_background(frames.astype(np.float64), blurred, self.operation)
        if self.scale_to_dtype is not None:
            out = rescale_frames(out, self.scale_to_dtype)
        return {"patterns": out}

"""Per-frame intensity normalisation: zero mean and unit standard deviation, or min-max."""

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
from diffraflow.operators.preprocess._kernels import circular_mask, normalize_frames
from diffraflow.schemas.errors import PipelineError

__all__ = ["Normalize"]


@register_operator
@dataclass(frozen=True)
class Normalize(Operator):
    """Normalise each frame on its own to zero mean / unit std, or to ``[0, 1]``.

    Parameters
    ----------
    method
        ``zscore``: :math:`(f - \\mu) / \\sigma`; ``minmax``:
        :math:`(f - \\min f) / (\\max f - \\min f)`.
    mask_radius
        ``None``: statistics over the whole frame. A radius in pixels:
        statistics over the disk of that radius around ``mask_center`` only,
        and pixels outside it are set to 0 (the usual circular EBSD screen).
    mask_center
        ``[cy, cx]`` of the disk in pixels; default: the detector centre.

    Outputs
    -------
    patterns : frames
        float32 normalised frames. A constant frame becomes all zeros.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.base import ChunkContext, InputSpec
    >>> spec = InputSpec((1, 1), (1, 2), np.dtype("uint8"))
    >>> op = Normalize(method="minmax")
    >>> ctx = ChunkContext(spec, constants=op.setup(spec))
    >>> op.process(np.array([[[10, 30]]], "uint8"), ctx)["patterns"].tolist()
    [[[0.0, 1.0]]]
    """

    name = "normalize"
    backends = ("numpy", "cupy")

    method: str = param("zscore", doc="zscore (zero mean, unit std) or minmax (to [0, 1])",
                        choices=("zscore", "minmax"))
    mask_radius: float | None = param(None, doc="only pixels within this radius (pixels) of mask_center "
                                                "count; others are set to 0 (None: whole frame)")
    mask_center: list[float] | None = param(None, doc="[cy, cx] of the mask disk in pixels "
                                                      "(default: detector centre)")

    def __post_init__(self) -> None:
        if self.mask_center is not None:
            object.__setattr__(self, "mask_center", tuple(float(c) for c in self.mask_center))

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        if self.method not in ("zscore", "minmax"):
            raise PipelineError(f"{self.name}.method", f"{self.method!r} is not zscore or minmax",
                                "use method: zscore or method: minmax")
        if self.mask_center is not None and len(self.mask_center) != 2:
            raise PipelineError(f"{self.name}.mask_center", f"expected [cy, cx], got {list(self.mask_center)}",
                                "give the centre as two numbers [cy, cx] in pixels")
        if self.mask_radius is not None:
            if not (np.isfinite(self.mask_radius) and self.mask_radius > 0):
                raise PipelineError(f"{self.name}.mask_radius", f"radius must be positive, got {self.mask_radius!r}",
                                    f"use e.g. mask_radius: {min(spec.det_shape) / 2:g}")
            if not circular_mask(spec.det_shape, self.mask_center, self.mask_radius).any():
                raise PipelineError(f"{self.name}.mask_radius", "the mask holds no pixel of the frame",
                                    "increase mask_radius or move mask_center onto the detector")
        return {"patterns": OutputSpec("frames", "float32", tuple(spec.det_shape), ("det_y", "det_x"),
                                       f"frames normalised per frame ({self.method})")}

    def setup(self, spec: InputSpec, backend: str = "numpy") -> Any:
        if self.mask_radius is None:
            return None
        return circular_mask(spec.det_shape, self.mask_center, self.mask_radius)

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        xp = ctx.xp
        mask = ctx.constants if ctx.constants is not None else self.setup(ctx.spec)
        return {"patterns": normalize_frames(xp.asarray(frames), self.method, mask, xp)}

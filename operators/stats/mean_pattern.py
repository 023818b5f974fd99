"""Mean pattern: the average frame of the scan, reduced as ``(sum, count)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import (
    ChunkContext,
    InputSpec,
    Operator,
    OutputSpec,
    register_operator,
)
from diffraflow.schemas.errors import PipelineError

__all__ = ["MeanPattern"]


@register_operator
@dataclass(frozen=True)
class MeanPattern(Operator):
    """The mean of all frames of the scan.

    Takes no parameters.

    Outputs
    -------
    mean : sig
        float64 ``(det_y, det_x)`` mean frame.

    Notes
    -----
    Each chunk returns the partials ``sum`` (float64 pixel sums) and ``count``
    (frames); :meth:`merge` adds them and :meth:`finalize` divides. Sums of
    integer frames are exact in float64 (below :math:`2^{53}`), so the mean
    does not depend on chunking or merge order.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.base import ChunkContext, InputSpec
    >>> spec = InputSpec((1, 3), (1, 2), np.dtype("uint8"))
    >>> op, ctx = MeanPattern(), ChunkContext(spec)
    >>> a = op.process(np.array([[[0, 1]], [[2, 3]]], "uint8"), ctx)
    >>> b = op.process(np.array([[[4, 5]]], "uint8"), ctx)
    >>> merged = {k: op.merge(k, a[k], b[k]) for k in a}
    >>> op.finalize(merged, ctx)["mean"].tolist()
    [[2.0, 3.0]]
    """

    name = "mean_pattern"
    backends = ("numpy", "cupy")

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"mean": OutputSpec("sig", "float64", tuple(spec.det_shape), ("det_y", "det_x"),
                                   "mean frame of the scan")}

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        xp = ctx.xp
        return {"sum": xp.asarray(frames).sum(axis=0, dtype=xp.float64), "count": np.int64(frames.shape[0])}

    def merge(self, name: str, left: Any, right: Any) -> Any:
        return left + right

    def finalize(self, partials: dict[str, Any], ctx: ChunkContext) -> dict[str, Any]:
        count = int(partials["count"])
        if count == 0:
            raise PipelineError(self.name, "no frames were processed", "run on a non-empty scan")
        return {"mean": np.asarray(partials["sum"], dtype=np.float64) / count}

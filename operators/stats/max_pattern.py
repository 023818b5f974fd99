"""Max pattern: the pixel-wise maximum over all frames of the scan."""

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

__all__ = ["MaxPattern"]


def _lowest(dtype: np.dtype) -> Any:
    if dtype.kind in "iu":
        return np.iinfo(dtype).min
    if dtype.kind == "b":
        return False
    return -np.inf


@register_operator
@dataclass(frozen=True)
class MaxPattern(Operator):
    """The pixel-wise maximum of all frames of the scan.

    Takes no parameters.

    Outputs
    -------
    max : sig
        ``(det_y, det_x)`` maximum frame, in the frames' dtype. Bright spots of
        any frame show up here: a quick look at all reflections of a 4D-STEM scan.

    Notes
    -----
    Maximum is associative, commutative and exact, so the result never depends
    on chunking or merge order. An empty chunk returns the lowest value of the
    dtype (the identity of the merge). NaN pixels are ignored unless every
    frame is NaN there.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.base import ChunkContext, InputSpec
    >>> spec = InputSpec((1, 2), (1, 2), np.dtype("uint8"))
    >>> op, ctx = MaxPattern(), ChunkContext(spec)
    >>> a = op.process(np.array([[[0, 9]]], "uint8"), ctx)["max"]
    >>> b = op.process(np.array([[[4, 5]]], "uint8"), ctx)["max"]
    >>> op.finalize({"max": op.merge("max", a, b)}, ctx)["max"].tolist()
    [[4, 9]]
    """

    name = "max_pattern"
    backends = ("numpy", "cupy")

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return {"max": OutputSpec("sig", spec.dtype, tuple(spec.det_shape), ("det_y", "det_x"),
                                  "pixel-wise maximum frame of the scan")}

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        xp = ctx.xp
        frames = xp.asarray(frames)
        dtype = np.dtype(ctx.spec.dtype)
        if frames.shape[0] == 0:
            return {"max": xp.full(tuple(ctx.spec.det_shape), _lowest(dtype), dtype=dtype)}
        if dtype.kind == "f":
            return {"max": xp.fmax.reduce(frames, axis=0)}
        return {"max": frames.max(axis=0)}

    def merge(self, name: str, left: Any, right: Any) -> Any:
        return np.fmax(left, right) if np.asarray(left).dtype.kind == "f" else np.maximum(left, right)

    def finalize(self, partials: dict[str, Any], ctx: ChunkContext) -> dict[str, Any]:
        return {"max": np.asarray(partials["max"])}

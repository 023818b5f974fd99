"""Detector binning: sum or average blocks of ``by x bx`` pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffraflow.operators.base import (
    ChunkContext,
    InputSpec,
    Operator,
    OutputSpec,
    param,
    register_operator,
)
from diffraflow.operators.preprocess._kernels import bin_frames, binned_dtype, closest_divisor
from diffraflow.schemas.errors import PipelineError

__all__ = ["BinFrames"]


@register_operator
@dataclass(frozen=True)
class BinFrames(Operator):
    """Bin each frame by integer factors ``(by, bx)``.

    Parameters
    ----------
    factor
        One integer for both axes, or ``[by, bx]``. Each must divide the
        corresponding detector size.
    reduce
        ``sum`` (integers widen: uint8/uint16 to uint32, other ints to int32/int64)
        or ``mean`` (float32; float64 input stays float64).

    Outputs
    -------
    patterns : frames
        ``(det_y // by, det_x // bx)`` frames.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.base import ChunkContext, InputSpec
    >>> spec = InputSpec((1, 1), (4, 6), np.dtype("uint8"))
    >>> op = BinFrames(factor=2, reduce="mean")
    >>> op.resolve(spec)["patterns"].extra_shape
    (2, 3)
    >>> op.process(np.ones((1, 4, 6), "uint8"), ChunkContext(spec))["patterns"].shape
    (1, 2, 3)
    >>> BinFrames(factor=[2, 4]).resolve(spec)
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: bin_frames.factor: binning factor 4 does not divide det_x = 6 (fix: use 3, the closest factor that divides 6)
    """

    name = "bin_frames"
    backends = ("numpy", "cupy")

    factor: Any = param(2, doc="binning factor: one integer or [by, bx]; must divide the detector shape")
    reduce: str = param("sum", doc="sum (integers widen) or mean (float32)", choices=("sum", "mean"))

    def __post_init__(self) -> None:
        if isinstance(self.factor, list | tuple):
            object.__setattr__(self, "factor", tuple(self.factor))

    def factors(self) -> tuple[int, int]:
        """``(by, bx)``; raises PipelineError when malformed.

        Examples
        --------
        >>> BinFrames(factor=3).factors(), BinFrames(factor=[1, 2]).factors()
        ((3, 3), (1, 2))
        """
        where = f"{self.name}.factor"
        values = self.factor if isinstance(self.factor, tuple) else (self.factor, self.factor)
        if len(values) != 2:
            raise PipelineError(where, f"expected one integer or [by, bx], got {list(values)}",
                                "give e.g. factor: 2 or factor: [2, 4]")
        out = []
        for v in values:
            if isinstance(v, bool) or not float(v).is_integer() or int(v) < 1:
                raise PipelineError(where, f"binning factors must be positive integers, got {v!r}",
                                    "give e.g. factor: 2 or factor: [2, 4]")
            out.append(int(v))
        return out[0], out[1]

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        if self.reduce not in ("sum", "mean"):
            raise PipelineError(f"{self.name}.reduce", f"{self.reduce!r} is not sum or mean",
                                "use reduce: sum or reduce: mean")
        factors = self.factors()
        for axis, size, f in zip(("det_y", "det_x"), spec.det_shape, factors, strict=True):
            if size % f:
                best = closest_divisor(size, f)
                raise PipelineError(f"{self.name}.factor", f"binning factor {f} does not divide {axis} = {size}",
                                    f"use {best}, the closest factor that divides {size}")
        shape = (spec.det_shape[0] // factors[0], spec.det_shape[1] // factors[1])
        return {"patterns": OutputSpec("frames", binned_dtype(spec.dtype, self.reduce), shape, ("det_y", "det_x"),
                                       f"frames binned by {factors[0]}x{factors[1]} ({self.reduce})")}

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        xp = ctx.xp
        return {"patterns": bin_frames(xp.asarray(frames), self.factors(), self.reduce, xp)}

"""Static background correction: subtract or divide every frame by one background image.

The background comes, in order of preference, from

1. the ``background`` parameter: an array (nested lists), a ``.npy`` file, or
   a Zarr cube store whose ``static_background`` variable is read;
2. the scan cube's own ``static_background`` variable, handed over by the
   engine through :meth:`RemoveStaticBackground.bind`;
3. the scan's mean pattern, computed in a first pass over the data
   (``background: scan_mean``, or the fallback when neither of the above is
   available). The operator then makes two passes: pass 0 reduces the mean
   pattern as ``(sum, count)`` partials, pass 1 corrects the frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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
    freeze_array,
    load_image_param,
    rescale_frames,
)
from diffraflow.schemas.errors import PipelineError

__all__ = ["RemoveStaticBackground"]

#: Name of the cube variable holding a static background (written by converters).
STORE_VARIABLE = "static_background"


@register_operator
@dataclass(frozen=True)
class RemoveStaticBackground(Operator):
    """Subtract or divide each frame by a static background image.

    Parameters
    ----------
    background
        ``None`` (default): the cube's ``static_background`` variable when the
        engine binds it, else the scan mean pattern. ``"scan_mean"``: always the
        scan mean (two passes). Otherwise a ``(det_y, det_x)`` array, a path to a
        ``.npy`` file, or a path to a Zarr cube store with a ``static_background``
        variable.
    operation
        ``subtract`` or ``divide`` (pixels where the background is 0 become 0).
    scale_to_dtype
        ``None``: float32 output as computed. A dtype name (``uint8``,
        ``uint16``, ``float32``...): each corrected frame is stretched to the
        full range of that dtype (``[-1, 1]`` for floats) and cast, as
        kikuchipy does.

    Outputs
    -------
    patterns : frames
        The corrected frames.

    Notes
    -----
    With the scan mean as background, the corrected frames are
    :math:`f_i - \\bar f` with :math:`\\bar f = \\frac{1}{N}\\sum_i f_i`,
    accumulated in float64, so the result does not depend on chunking.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.base import ChunkContext, InputSpec
    >>> op = RemoveStaticBackground(background=[[1, 1], [1, 2]])
    >>> spec = InputSpec((1, 1), (2, 2), np.dtype("uint8"))
    >>> op.resolve(spec)["patterns"].dtype
    dtype('float32')
    >>> ctx = ChunkContext(spec, constants=op.setup(spec))
    >>> op.process(np.full((1, 2, 2), 3, "uint8"), ctx)["patterns"].tolist()
    [[[2.0, 2.0], [2.0, 1.0]]]
    """

    name = "remove_static_background"
    backends = ("numpy", "cupy")
    #: Cube variables this operator can use (see :meth:`bind`).
    store_variables = (STORE_VARIABLE,)

    background: Any = param(None, doc="None (cube's static_background, else the scan mean), 'scan_mean', "
                                      "a (det_y, det_x) array, a .npy path, or a Zarr store path")
    operation: str = param("subtract", doc="subtract or divide by the background",
                           choices=("subtract", "divide"))
    scale_to_dtype: str | None = param(None, doc="stretch each corrected frame to this dtype's full range "
                                                 "and cast (None: float32, unscaled)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "background", freeze_array(self.background))

    # -- configuration ----------------------------------------------------------
    @property
    def uses_scan_mean(self) -> bool:
        """True when the background is the scan mean, computed in a first pass."""
        return self.background is None or (isinstance(self.background, str) and self.background == "scan_mean")

    @property
    def passes(self) -> int:  # type: ignore[override]  # an instance property over the class default
        """2 when the background is the scan mean, else 1."""
        return 2 if self.uses_scan_mean else 1

    def bind(self, variables: Mapping[str, Any]) -> RemoveStaticBackground:
        """Use the cube's ``static_background`` variable when no background was given.

        The engine calls this before :meth:`resolve` with the cube's variables
        (a mapping of name to array-like; only ``static_background`` is read).

        Examples
        --------
        >>> op = RemoveStaticBackground().bind({"static_background": [[5]]})
        >>> op.background, op.passes
        (((5,),), 1)
        >>> RemoveStaticBackground().bind({}).passes
        2
        """
        if self.background is None and STORE_VARIABLE in variables:
            return dataclasses.replace(self, background=np.asarray(variables[STORE_VARIABLE]))
        return self

    def _where(self, field: str) -> str:
        return f"{self.name}.{field}"

    def _load_background(self) -> np.ndarray:
        bg = load_image_param(self.background, self._where("background"), "a background", STORE_VARIABLE)
        return bg

    # -- contract -----------------------------------------------------------------
    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        if self.operation not in ("subtract", "divide"):
            raise PipelineError(self._where("operation"), f"{self.operation!r} is not subtract or divide",
                                "use operation: subtract or operation: divide")
        if self.scale_to_dtype is not None:
            try:
                target = np.dtype(self.scale_to_dtype)
            except TypeError:
                raise PipelineError(self._where("scale_to_dtype"), f"{self.scale_to_dtype!r} is not a dtype",
                                    "use a numpy dtype name such as uint8, uint16 or float32") from None
            if target.kind not in "iuf":
                raise PipelineError(self._where("scale_to_dtype"), f"{target} is not numeric",
                                    "use an integer or float dtype such as uint8 or float32")
        if isinstance(self.background, str) and self.background != "scan_mean" and not self.background.strip():
            raise PipelineError(self._where("background"), "empty path", "give a path or 'scan_mean'")
        if not self.uses_scan_mean:
            bg = self._load_background()
            if bg.shape != tuple(spec.det_shape):
                raise PipelineError(self._where("background"),
                                    f"background shape {bg.shape} differs from the frames {tuple(spec.det_shape)}",
                                    "give a background of the frame shape, or place this step before bin_frames")
            if not np.issubdtype(bg.dtype, np.number) or not np.all(np.isfinite(bg)):
                raise PipelineError(self._where("background"), "background is not finite and numeric",
                                    "give a finite numeric background image")
        dtype = np.dtype(self.scale_to_dtype) if self.scale_to_dtype is not None else np.dtype("float32")
        return {"patterns": OutputSpec("frames", dtype, tuple(spec.det_shape), ("det_y", "det_x"),
                                       "frames corrected by a static background")}

    def setup(self, spec: InputSpec, backend: str = "numpy") -> Any:
        if self.uses_scan_mean:
            return None
        return self._load_background().astype(np.float32)

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        xp = ctx.xp
        if self.uses_scan_mean and ctx.pass_index == 0:
            # pass 0: partial sums of the mean pattern, float64 so merges are exact for integer data
            return {"sum": xp.asarray(frames).sum(axis=0, dtype=xp.float64),
                    "count": np.int64(frames.shape[0])}
        if self.uses_scan_mean:
            background = ctx.state["background"]
        else:
            background = ctx.constants if ctx.constants is not None else self.setup(ctx.spec)
        out = apply_background(xp.asarray(frames), background, self.operation, xp)
        if self.scale_to_dtype is not None:
            out = rescale_frames(out, self.scale_to_dtype, xp)
        return {"patterns": out}

    def merge(self, name: str, left: Any, right: Any) -> Any:
        return left + right

    def finalize(self, partials: dict[str, Any], ctx: ChunkContext) -> dict[str, Any]:
        if self.uses_scan_mean and ctx.pass_index == 0:
            count = int(partials["count"])
            if count == 0:
                raise PipelineError(self.name, "no frames to average for the scan-mean background",
                                    "run on a non-empty scan or give a background")
            return {"background": (np.asarray(partials["sum"]) / count).astype(np.float32)}
        return {}

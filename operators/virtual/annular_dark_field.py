"""Annular dark-field virtual image: the intensity inside an annulus around the direct beam."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from diffraflow.operators.base import InputSpec, Operator, OutputSpec, param, register_operator
from diffraflow.operators.virtual._masks import (
    MaskOperatorMixin,
    mask_image,
    mask_label,
    validate_mask_spec,
)

__all__ = ["AnnularDarkField"]


@register_operator
@dataclass(frozen=True)
class AnnularDarkField(MaskOperatorMixin, Operator):
    """Virtual annular dark field: sum (or mean) of each frame inside an annulus.

    A preset of :class:`~diffraflow.operators.virtual.virtual_image.VirtualImage` with one
    annulus mask and a scalar map as output.

    Parameters
    ----------
    inner
        Inner radius in pixels (exclusive); default: a quarter of the smaller
        detector side.
    outer
        Outer radius in pixels (inclusive); default: half the smaller side.
    center
        ``[cy, cx]`` in pixels; default: the detector centre.
    reduce
        ``sum`` or ``mean`` over the annulus.

    Outputs
    -------
    image : nav
        float64 annular dark-field image ``(scan_y, scan_x)``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.base import ChunkContext, InputSpec
    >>> spec = InputSpec((1, 1), (7, 7), np.dtype("uint8"))
    >>> op = AnnularDarkField(inner=1, outer=2)
    >>> op.process(np.ones((1, 7, 7), "uint8"), ChunkContext(spec, constants=op.setup(spec)))["image"].tolist()
    [8.0]
    """

    name = "annular_dark_field"
    backends = ("numpy", "cupy")
    output = "image"
    squeeze = True

    inner: float | None = param(None, doc="inner radius in pixels (default: smaller detector side / 4)")
    outer: float | None = param(None, doc="outer radius in pixels (default: smaller detector side / 2)")
    center: list[float] | None = param(None, doc="[cy, cx] in pixels (default: detector centre)")
    reduce: str = param("sum", doc="sum or mean over the annulus", choices=("sum", "mean"))

    def __post_init__(self) -> None:
        if self.center is not None:
            object.__setattr__(self, "center", tuple(self.center))

    def mask_spec(self, spec: InputSpec) -> dict:
        """The validated annulus spec for ``spec``."""
        side = min(spec.det_shape)
        raw = {"type": "annulus",
               "inner": self.inner if self.inner is not None else side / 4.0,
               "outer": self.outer if self.outer is not None else side / 2.0}
        if self.center is not None:
            raw["center"] = list(self.center)
        return validate_mask_spec(raw, spec.det_shape, self.name)

    def mask_stack(self, spec: InputSpec) -> tuple[np.ndarray, list[str]]:
        ring = self.mask_spec(spec)
        return mask_image(ring, spec.det_shape)[None].astype(np.float64), [mask_label(ring)]

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return self._resolve_images(spec, f"virtual annular dark field ({self.mask_labels(spec)[0]})")

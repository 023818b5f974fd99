"""Bright-field virtual image: the intensity inside a disk around the direct beam."""

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

__all__ = ["BrightField"]


@register_operator
@dataclass(frozen=True)
class BrightField(MaskOperatorMixin, Operator):
    """Virtual bright field: sum (or mean) of each frame inside a disk.

    A preset of :class:`~diffraflow.operators.virtual.virtual_image.VirtualImage` with one
    disk mask and a scalar map as output.

    Parameters
    ----------
    radius
        Disk radius in pixels; default: one eighth of the smaller detector side.
    center
        ``[cy, cx]`` in pixels; default: the detector centre.
    reduce
        ``sum`` or ``mean`` over the disk.

    Outputs
    -------
    image : nav
        float64 bright-field image ``(scan_y, scan_x)``.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.base import ChunkContext, InputSpec
    >>> spec = InputSpec((1, 1), (5, 5), np.dtype("uint8"))
    >>> op = BrightField(radius=1)
    >>> op.process(np.ones((1, 5, 5), "uint8"), ChunkContext(spec, constants=op.setup(spec)))["image"].tolist()
    [5.0]
    """

    name = "bright_field"
    backends = ("numpy", "cupy")
    output = "image"
    squeeze = True

    radius: float | None = param(None, doc="disk radius in pixels (default: smaller detector side / 8)")
    center: list[float] | None = param(None, doc="[cy, cx] in pixels (default: detector centre)")
    reduce: str = param("sum", doc="sum or mean over the disk", choices=("sum", "mean"))

    def __post_init__(self) -> None:
        if self.center is not None:
            object.__setattr__(self, "center", tuple(self.center))

    def mask_spec(self, spec: InputSpec) -> dict:
        """The validated disk spec for ``spec``."""
        radius = self.radius if self.radius is not None else min(spec.det_shape) / 8.0
        raw = {"type": "disk", "radius": radius}
        if self.center is not None:
            raw["center"] = list(self.center)
        return validate_mask_spec(raw, spec.det_shape, self.name)

    def mask_stack(self, spec: InputSpec) -> tuple[np.ndarray, list[str]]:
        disk = self.mask_spec(spec)
        return mask_image(disk, spec.det_shape)[None].astype(np.float64), [mask_label(disk)]

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return self._resolve_images(spec, f"virtual bright field ({self.mask_labels(spec)[0]})")

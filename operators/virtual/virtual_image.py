"""Virtual images: integrate every frame against many masks in one matrix product."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import InputSpec, Operator, OutputSpec, param, register_operator
from diffraflow.operators.preprocess._kernels import freeze_array, load_image_param
from diffraflow.operators.virtual._masks import (
    MaskOperatorMixin,
    mask_images,
    mask_label,
    validate_mask_spec,
)
from diffraflow.schemas.errors import PipelineError

__all__ = ["VirtualImage"]


@register_operator
@dataclass(frozen=True)
class VirtualImage(MaskOperatorMixin, Operator):
    """Virtual detector images for any number of masks at once.

    Parameters
    ----------
    masks
        List of mask specs: ``{type: disk, center: [cy, cx], radius: r}``,
        ``{type: annulus, center: [cy, cx], inner: r0, outer: r1}``,
        ``{type: rectangle, bounds: [y0, y1, x0, x1]}``; ``center`` defaults to
        the detector centre, an optional ``name`` labels the image.
    mask
        Extra masks as an array: ``(det_y, det_x)`` or ``(m, det_y, det_x)``
        boolean or float weights, or the path of a ``.npy`` file. They come
        after the ``masks`` specs.
    reduce
        ``sum`` of the masked intensities, or their weighted ``mean`` (divided
        by the sum of the mask weights).

    Outputs
    -------
    images : nav, extra dims ``("mask",)``
        float64, one image per mask.

    Notes
    -----
    With the frames of a chunk as the rows of :math:`F` (``n x p``) and the
    masks as the columns of :math:`W` (``p x m``), the chunk's images are
    :math:`F W`, one BLAS product restricted to the pixels where some mask is
    non-zero, accumulated in float64. Each image depends only on its own frame,
    so chunking never changes the result.

    Examples
    --------
    >>> import numpy as np
    >>> from diffraflow.operators.base import ChunkContext, InputSpec
    >>> spec = InputSpec((1, 2), (5, 5), np.dtype("uint8"))
    >>> op = VirtualImage(masks=[{"type": "disk", "radius": 1}, {"type": "annulus", "inner": 1, "outer": 2}])
    >>> op.resolve(spec)["images"].result_shape(spec.scan_shape)
    (1, 2, 2)
    >>> ctx = ChunkContext(spec, constants=op.setup(spec))
    >>> op.process(np.ones((2, 5, 5), "uint8"), ctx)["images"].tolist()
    [[5.0, 8.0], [5.0, 8.0]]
    """

    name = "virtual_image"
    backends = ("numpy", "cupy")
    output = "images"
    squeeze = False

    masks: list = param([], doc="mask specs: {type: disk|annulus|rectangle, center: [cy, cx], radius | "
                                "inner, outer | bounds: [y0, y1, x0, x1], name}")
    mask: Any = param(None, doc="extra masks: (det_y, det_x) or (m, det_y, det_x) weights, or a .npy path")
    reduce: str = param("sum", doc="sum of masked intensities, or weighted mean", choices=("sum", "mean"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask", freeze_array(self.mask))
        if isinstance(self.masks, dict):  # a single spec given without a list
            object.__setattr__(self, "masks", [self.masks])

    def mask_stack(self, spec: InputSpec) -> tuple[np.ndarray, list[str]]:
        where = f"{self.name}.masks"
        if not isinstance(self.masks, list | tuple):
            raise PipelineError(where, f"expected a list of mask specs, got {self.masks!r}",
                                "write masks: [{type: disk, radius: 10}]")
        det = tuple(spec.det_shape)
        stacks = [mask_images(self.masks, det, where)]
        labels = [mask_label(validate_mask_spec(m, det, f"{where}[{i}]")) for i, m in enumerate(self.masks)]
        if self.mask is not None:
            arr = load_image_param(self.mask, f"{self.name}.mask", "masks")
            if arr.ndim == 2:
                arr = arr[None]
            if arr.ndim != 3 or arr.shape[1:] != det:
                raise PipelineError(f"{self.name}.mask", f"mask shape {arr.shape} does not match the frames {det}",
                                    f"give (det_y, det_x) or (m, det_y, det_x) masks with det shape {det}")
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or not np.isfinite(arr).all():
                raise PipelineError(f"{self.name}.mask", f"masks of dtype {arr.dtype} are not finite numbers",
                                    "give boolean or finite float masks")
            stacks.append(arr.astype(np.float64))
            labels += [f"mask {i}" for i in range(len(arr))]
        masks = np.concatenate(stacks, axis=0)
        if len(masks) == 0:
            raise PipelineError(self.name, "no masks given", "give masks: [{type: disk, radius: 10}] or mask: ...")
        return masks, labels

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        return self._resolve_images(spec, f"virtual images ({self.reduce} over {len(self.mask_labels(spec))} masks)")

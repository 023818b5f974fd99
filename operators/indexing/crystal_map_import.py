"""``crystal_map_import``: a crystal map held in memory, written out as a ``crystal_map`` product.

Orientation maps made elsewhere (an orix ``CrystalMap`` read from an
``.ang``/``.ctf`` file, or built in a notebook) enter result stores through
the same engine and writer as maps that ``hough_index`` computes: this
operator is bound to the map's arrays and hands each chunk of scan points
its rows of them. It is not registered for pipeline files (its data comes
from memory); :func:`diffraflow.flow.crystal_map.write_crystal_map_store`
uses it.

Examples
--------
>>> import numpy as np
>>> from diffraflow.operators.base import ChunkContext, InputSpec
>>> grid = {"rotation": np.tile([1.0, 0, 0, 0], (1, 2, 1)), "phase_id": np.zeros((1, 2), "int32")}
>>> op = CrystalMapImport(phases=({"id": 0, "name": "ni", "point_group": "m-3m"},), arrays=grid)
>>> spec = InputSpec((1, 2), (1, 1), np.dtype("u1"))
>>> out = op.process(np.zeros((2, 1, 1), "u1"), ChunkContext(spec, scan_index=np.array([[0, 0], [0, 1]])))
>>> out["phase_id"].tolist(), out["n_bands"].tolist()
([0, 0], [0, 0])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffraflow.operators.base import (
    ChunkContext,
    InputSpec,
    Operator,
    OutputSpec,
    internal_field,
    param,
)
from diffraflow.schemas.errors import PipelineError

__all__ = ["CrystalMapImport", "CRYSTAL_MAP_OUTPUTS"]

#: The crystal_map product's variables: dtype, extra shape and dims, fill for points the map lacks.
CRYSTAL_MAP_OUTPUTS: dict[str, tuple[str, tuple[int, ...], tuple[str, ...], float]] = {
    "rotation": ("float64", (4,), ("quat",), 0.0),
    "phase_id": ("int32", (), (), -1),
    "fit": ("float32", (), (), np.nan),
    "confidence": ("float32", (), (), np.nan),
    "pattern_quality": ("float32", (), (), np.nan),
    "n_bands": ("int32", (), (), 0),
}


@dataclass(frozen=True)
class CrystalMapImport(Operator):
    """Hand out the rows of a crystal map held in memory (see the module docs).

    Parameters
    ----------
    phases
        Phase records with ids ``0..n-1``.
    step_size
        ``{"y": dy, "x": dx, "unit": "um"}`` of the map.
    scan
        Scan metadata of the source cube, or None.
    properties
        Extra per-point maps: ``{property name: output name}``.
    made_by
        What produced the map (``"import"`` for files, ``"hough_index"``...).
    extra
        More entries for the product record.
    """

    name = "crystal_map_import"

    phases: tuple = param((), doc="phase records, ids 0..n-1")
    step_size: dict = param({"y": 1.0, "x": 1.0, "unit": "um"}, doc="step of the map")
    scan: dict | None = param(None, doc="scan metadata of the source cube")
    properties: dict = param({}, doc="extra per-point maps: property name -> output name")
    made_by: str = param("import", doc="what produced the map")
    extra: dict = param({}, doc="more entries of the product record")
    arrays: Any = internal_field()

    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        if self.arrays is None:
            raise PipelineError(self.name, "no crystal map bound", "use write_crystal_map_store(xmap, path)")
        outputs = {name: OutputSpec("nav", dtype, shape, dims, product="crystal_map")
                   for name, (dtype, shape, dims, _fill) in CRYSTAL_MAP_OUTPUTS.items()}
        for output in self.properties.values():
            outputs[output] = OutputSpec("nav", "float32", description="crystal-map property")
        return outputs

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """The product record: phases, step size, scan metadata, properties, provenance."""
        return {"phases": [dict(p) for p in self.phases], "step_size": dict(self.step_size), "scan": self.scan,
                "properties": dict(self.properties), "made_by": self.made_by, **dict(self.extra)}

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        assert ctx.scan_index is not None  # the engine always gives chunk positions
        rows, cols = ctx.scan_index[:, 0], ctx.scan_index[:, 1]
        out: dict[str, Any] = {}
        for name, (dtype, shape, _dims, fill) in CRYSTAL_MAP_OUTPUTS.items():
            values = self.arrays.get(name)
            if values is None:
                out[name] = np.full((len(rows), *shape), fill, dtype=dtype)
            else:
                out[name] = np.asarray(values)[rows, cols].astype(dtype, copy=False)
        for prop, output in self.properties.items():
            out[output] = np.asarray(self.arrays[prop])[rows, cols].astype(np.float32, copy=False)
        return out

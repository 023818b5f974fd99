"""Training sets for learned operators written as scan cubes: many materials, random geometries, with truth.

The maths is :mod:`diffraflow.operators.learning.training_data`; this module
streams a :class:`~diffraflow.operators.learning.training_data.PatternPlan`
into a new cube with :func:`diffraflow.flow.store.create_cube` (bounded
memory, written under a temporary name and renamed when complete), so that
``diffraflow train`` reads it like any simulated scan: frames by region,
labels from its ground-truth variables, its identity in every artefact.

The patterns fill the scan row by row in plan order (materials are mixed in
every row, so a shuffle buffer of a few thousand frames sees every class).
Ground truth:

``true_phase_id``
    index of ``scan.phases`` (one phase record per material, with its space group);
``space_group``
    the material's space-group number;
``true_rotation``
    unit quaternion (w, x, y, z), orix convention, as ``diffraflow simulate``;
``pc`` or ``source_pc``
    the projection centre (Bruker) of each pattern: ``pc`` when every pattern
    was simulated at the stored frame size (indexers then use it),
    ``source_pc`` when frames were resized from other detector sizes;
``dose``
    mean counts per pixel.

Examples
--------
>>> import tempfile, pathlib
>>> from diffraflow.operators.learning.training_data import Variety, plan_patterns
>>> plan = plan_patterns(["ni", "fe"], 12, out_shape=(16, 16), variety=Variety(detector_shapes=((20, 20),)))
>>> path = write_pattern_set(plan, pathlib.Path(tempfile.mkdtemp()) / "set.zarr", progress=False)
>>> from diffraflow.flow.store import open_cube
>>> ds = open_cube(path)
>>> ds["patterns"].shape, int(ds["space_group"].values.max())
((1, 12, 16, 16), 229)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.schemas.errors import SchemaError

__all__ = ["write_pattern_set", "scan_shape_for"]


def scan_shape_for(n: int, max_row: int = 256) -> tuple[int, int]:
    """A ``(rows, columns)`` scan holding exactly ``n`` patterns, rows as long as possible up to ``max_row``.

    Examples
    --------
    >>> scan_shape_for(60000), scan_shape_for(7)
    ((240, 250), (1, 7))
    """
    n = int(n)
    for cols in range(min(n, int(max_row)), 0, -1):
        if n % cols == 0:
            return n // cols, cols
    return 1, n


def write_pattern_set(plan: Any, out: str | Path, *, overwrite: bool = False, progress: bool = True,
                      device: str = "cpu", description: str = "") -> Path:
    """Render a pattern plan into a new scan cube with its ground truth; returns the store path.

    Parameters
    ----------
    plan
        A :class:`~diffraflow.operators.learning.training_data.PatternPlan`.
    out
        The ``.zarr`` store to write.
    overwrite
        Replace an earlier diffraflow scan cube at ``out`` (never anything else).
    progress
        A progress bar on a terminal.
    device
        Torch device the patterns are rendered on.
    description
        A line stored in the cube's provenance (what the set is for).
    """
    from diffraflow.flow.store import create_cube
    from diffraflow.operators.crystallography.phases import get_phase, phase_to_record

    if plan.n < 1:
        raise SchemaError("plan", "holds no pattern", "plan at least one pattern")
    rows, cols = scan_shape_for(plan.n)
    phases = [{**phase_to_record(get_phase(name)), "id": i} for i, name in enumerate(plan.materials)]
    resized = any(tuple(s) != tuple(plan.out_shape) for s in plan.variety.detector_shapes)
    tilts_fixed = np.ptp(plan.sample_tilt) == 0 and np.ptp(plan.camera_tilt) == 0
    attrs: dict[str, Any] = {
        "modality": "ebsd",
        "detector": {"shape": list(plan.out_shape), "pc": [float(v) for v in plan.pc.mean(axis=0)],
                     "pc_convention": "bruker", "sample_tilt": float(np.mean(plan.sample_tilt)),
                     "camera_tilt": float(np.mean(plan.camera_tilt))},
        "beam_energy_kv": float(plan.variety.energy_kv),
        "phases": phases,
        "provenance": {"source_format": "simulated", "reader": "diffraflow.operators.learning.training_data",
                       "command": description or None},
        "original_metadata": {"training_set": {**plan.parameters, "resized": bool(resized),
                                               "tilts_fixed": bool(tilts_fixed)}},
    }
    from tqdm import tqdm

    bar = tqdm(total=plan.n, desc="simulate training set", unit="frame", file=sys.stderr, leave=False,
               disable=not (progress and sys.stderr.isatty()))
    shape = (rows, cols)
    with create_cube(out, scan_shape=shape, det_shape=plan.out_shape, dtype="uint8", attrs=attrs,
                     overwrite=overwrite) as writer:
        try:
            for block in plan.blocks(device=device):
                writer.patterns.append(block.frames)
                bar.update(len(block.frames))
        finally:
            bar.close()
        space_groups = np.array([p["space_group"] for p in phases], dtype=np.int32)
        writer.write_variable("true_phase_id", plan.material.reshape(shape), ("scan_y", "scan_x"), ground_truth=True,
                              attributes={"description": "id of scan.phases (the material) of each pattern"})
        writer.write_variable("space_group", space_groups[plan.material].reshape(shape), ("scan_y", "scan_x"),
                              ground_truth=True, attributes={"description": "space-group number of each pattern"})
        writer.write_variable("true_rotation", plan.rotation.reshape(*shape, 4), ("scan_y", "scan_x", "quat"),
                              ground_truth=True,
                              attributes={"description": "unit quaternion (w, x, y, z), orix convention: crystal "
                                                         "to sample, Bunge (as diffraflow simulate)"})
        pc_name = "source_pc" if resized or not tilts_fixed else "pc"
        writer.write_variable(pc_name, plan.pc.reshape(*shape, 3), ("scan_y", "scan_x", "pc"), ground_truth=True,
                              attributes={"convention": "bruker", "description": "projection centre of each pattern"
                                          + (" on its own detector, before resizing" if resized else "")})
        writer.write_variable("dose", plan.dose.astype(np.float32).reshape(shape), ("scan_y", "scan_x"),
                              ground_truth=True, attributes={"description": "mean counts per pixel before resizing"})
        return writer.finalize()

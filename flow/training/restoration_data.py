"""Training sets for restoration: clean patterns across orientations and geometries, with paired short exposures.

:func:`write_restoration_set` renders ``n`` patterns of one phase into a new
scan cube that ``diffraflow train`` reads like any simulated scan:

``clean_patterns``
    float32 noise-free Kikuchi patterns (no background), the targets;
``patterns``
    short exposures of the same points, one dose of the ladder ``doses`` per
    scan row (the scan simulator's image model: smooth background, Poisson
    noise, read noise), so the set also serves ``input: frames`` training;
``true_rotation``, ``pc``, ``dose``
    the orientation (uniform over SO(3)), the projection centre (Bruker)
    and the dose of every point.

Each scan row is one detector geometry: its projection centre and sample
and camera tilts are drawn from the given ranges, so a model trained on the
set does not learn one geometry. Orientations are independent per point
(no grains: a restorer sees one pattern at a time).

Everything is drawn from named random streams of one seed, row by row, so
the same arguments give the same cube whatever the memory available.

Examples
--------
>>> import tempfile, pathlib
>>> path = write_restoration_set(pathlib.Path(tempfile.mkdtemp()) / "set.zarr", 8, det_shape=(20, 20),
...                              row=4, progress=False)
>>> from diffraflow.flow.store import open_cube
>>> ds = open_cube(path)
>>> ds["patterns"].shape, ds["clean_patterns"].dtype.name, ds["dose"].values[:, 0].tolist()
((2, 4, 20, 20), 'float32', [1.0, 2.0])
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.schemas.errors import SchemaError

__all__ = ["write_restoration_set", "GEOMETRY_RANGES"]

#: Default ranges of the detector geometry, one draw per scan row (Bruker PC; degrees).
GEOMETRY_RANGES: dict[str, tuple[float, float]] = {
    "pc_x": (0.35, 0.65), "pc_y": (0.10, 0.40), "pc_z": (0.45, 0.80),
    "sample_tilt": (65.0, 75.0), "camera_tilt": (-5.0, 10.0), "background": (0.2, 2.0),
}
_STREAM_GEOMETRY, _STREAM_ORIENTATION, _STREAM_NOISE = 201, 202, 203


def _check(n: int, det_shape: Sequence[int], row: int, doses: Sequence[float],
           ranges: dict[str, tuple[float, float]]) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SchemaError("n", f"must be a whole number of 1 or more, got {n!r}", "e.g. 20000")
    if isinstance(row, bool) or not isinstance(row, int) or row < 1 or n % row:
        raise SchemaError("row", f"patterns per row ({row!r}) must divide n ({n})", "e.g. n: 20000, row: 100")
    if len(det_shape) != 2 or min(int(v) for v in det_shape) < 8:
        raise SchemaError("det_shape", f"need (det_y, det_x) of 8 px or more, got {tuple(det_shape)}",
                          "e.g. (60, 60)")
    if not doses or any(not np.isfinite(d) or d <= 0 for d in doses):
        raise SchemaError("doses", f"need positive doses, got {list(doses)}", "e.g. (1, 2, 4, 10)")
    for key, (low, high) in ranges.items():
        if key not in GEOMETRY_RANGES:
            raise SchemaError(f"ranges.{key}", "unknown range", f"use {', '.join(GEOMETRY_RANGES)}")
        if not low <= high:
            raise SchemaError(f"ranges.{key}", f"range ({low}, {high}) is reversed", "give (low, high)")


def write_restoration_set(out: str | Path, n: int, *, det_shape: Sequence[int] = (60, 60), phase: str = "ni",
                          row: int = 100, doses: Sequence[float] = (1.0, 2.0, 4.0, 10.0),
                          ranges: dict[str, tuple[float, float]] | None = None, read_noise: float = 1.0,
                          energy_kv: float = 20.0, seed: int = 0, overwrite: bool = False,
                          progress: bool = True) -> Path:
    """Render a restoration training set into a new scan cube; returns its path.

    Parameters
    ----------
    out
        The ``.zarr`` store to write.
    n
        Patterns in all (``row`` per scan row).
    det_shape
        Detector ``(det_y, det_x)``.
    phase
        Library phase name (or CIF path) of the master pattern.
    row
        Patterns per scan row: one geometry and one dose per row.
    doses
        Dose ladder of the stored short exposures, cycled over the rows.
    ranges
        Overrides of :data:`GEOMETRY_RANGES` (``pc_x``, ``pc_y``, ``pc_z``,
        ``sample_tilt``, ``camera_tilt``, ``background``).
    read_noise
        Read noise of the stored short exposures (counts).
    energy_kv
        Beam energy of the master pattern.
    seed
        Seed of every draw.
    overwrite
        Replace an earlier diffraflow scan cube at ``out`` (never anything else).
    progress
        A progress bar on a terminal.
    """
    from diffraflow.flow.store import create_cube
    from diffraflow.operators.crystallography.phases import get_phase, phase_to_record
    from diffraflow.operators.simulate.grains import random_quaternions
    from diffraflow.operators.simulate.master_patterns import get_master_pattern, project_patterns
    from diffraflow.operators.simulate.noise import (
        add_counting_noise,
        expected_counts,
        smooth_background,
        stream_rng,
    )
    from kikuchipy.detectors import EBSDDetector

    geometry = {**GEOMETRY_RANGES, **(ranges or {})}
    _check(n, det_shape, row, doses, geometry)
    det = (int(det_shape[0]), int(det_shape[1]))
    rows = n // row
    master = get_master_pattern(phase, energy_kv)
    draws = stream_rng(seed, _STREAM_GEOMETRY).uniform(size=(rows, len(GEOMETRY_RANGES)))
    keys = list(GEOMETRY_RANGES)
    per_row = {k: geometry[k][0] + draws[:, i] * (geometry[k][1] - geometry[k][0]) for i, k in enumerate(keys)}
    pcs = np.stack([per_row["pc_x"], per_row["pc_y"], per_row["pc_z"]], axis=1)
    dose_of_row = np.array([float(doses[r % len(doses)]) for r in range(rows)])
    attrs: dict[str, Any] = {
        "modality": "ebsd",
        "detector": {"shape": list(det), "pc": [round(float(v), 6) for v in pcs.mean(axis=0)],
                     "pc_convention": "bruker", "sample_tilt": float(np.mean(per_row["sample_tilt"])),
                     "camera_tilt": float(np.mean(per_row["camera_tilt"]))},
        "beam_energy_kv": float(energy_kv),
        "phases": [{**phase_to_record(get_phase(phase)), "id": 0}],
        "provenance": {"source_format": "simulated", "reader": "diffraflow.flow.training.restoration_data"},
        "original_metadata": {"restoration_set": {
            "n": n, "row": row, "doses": [float(d) for d in doses], "ranges": {k: list(v) for k, v in
                                                                                 geometry.items()},
            "read_noise": float(read_noise), "seed": int(seed), "phase": phase}},
    }
    quats = np.empty((rows, row, 4))
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=n, unit="pattern", desc="restoration set", file=sys.stderr, leave=False)
    # 8-bit counts up to a dose of about 40 counts/px (the pattern peaks near four times its mean).
    dtype = "uint8" if max(doses) <= 40 else "uint16"
    with create_cube(out, scan_shape=(rows, row), det_shape=det, dtype=dtype, attrs=attrs,
                     overwrite=overwrite, chunk_frames=row) as writer:
        clean_writer = writer.add_frame_variable("clean_patterns", "float32")
        for r in range(rows):
            q = random_quaternions(row, stream_rng(seed, _STREAM_ORIENTATION, r))
            quats[r] = q
            detector = EBSDDetector(shape=det, pc=tuple(pcs[r]), convention="bruker",
                                    sample_tilt=float(per_row["sample_tilt"][r]),
                                    tilt=float(per_row["camera_tilt"][r]))
            clean = project_patterns(master, q, detector, energy_kv)
            background = smooth_background(det, centre=((pcs[r, 1] + 0.5) / 2 * det[0], pcs[r, 0] * det[1]))
            ideal = clean + float(per_row["background"][r]) * background
            lam = expected_counts(ideal, dose_of_row[r])
            noisy = add_counting_noise(lam, stream_rng(seed, _STREAM_NOISE, r), float(read_noise), dtype)
            writer.patterns.append(noisy)
            clean_writer.append(clean)
            if bar is not None:
                bar.update(row)
        writer.write_variable("true_rotation", quats, ("scan_y", "scan_x", "quat"), ground_truth=True,
                              attributes={"description": "unit quaternion (w, x, y, z), orix convention"})
        writer.write_variable("pc", np.repeat(pcs[:, None, :], row, axis=1), ("scan_y", "scan_x", "pc_component"),
                              attributes={"description": "projection centre of each point", "convention": "bruker"})
        writer.write_variable("dose", np.repeat(dose_of_row[:, None], row, axis=1).astype(np.float32),
                              ("scan_y", "scan_x"), ground_truth=True,
                              attributes={"description": "mean counts per pixel of the stored short exposure"})
        writer.attrs.ground_truth.append("clean_patterns")
        path = writer.finalize()
    if bar is not None:
        bar.close()
    return path

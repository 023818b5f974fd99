"""Write a crystal map as an EDAX/TSL OIM ``.ang`` file.

Layout (OIM Analysis 7/8, square grid)::

    # TEM_PIXperUM / x-star / y-star / z-star / WorkingDistance
    # Phase N ... Phase 1 blocks: MaterialName, Formula, Info, Symmetry (OIM
    #   point-group code, 43 for m-3m), LatticeConstants (Angstrom, degrees), NumberFamilies
    # GRID: SqrGrid, XSTEP, YSTEP (micrometres), NCOLS_ODD, NCOLS_EVEN, NROWS
    # OPERATOR, SAMPLEID, SCANID, COLUMN_COUNT/HEADERS/UNITS
    phi1 PHI phi2 x y IQ CI phase SEM fit      (one row per point, row-major)

Euler angles are Bunge ``(phi1, Phi, phi2)`` in radians of the orix rotation
(sample to crystal), written with 7 decimals so orientations survive a round
trip to better than 1e-4 degrees. Phase ids in the data are 1-based positions
in the phase list; the phase blocks are listed last-to-first as OIM expects
(each block still names its id). Not-indexed points get OIM's values: Euler
angles 4 pi, CI -1, phase 0, fit 180; their IQ is kept. Columns map
IQ = ``pattern_quality``, CI = ``confidence``, fit = ``fit`` (degrees), SEM =
a ``detector_signal``/``sem_signal`` property or 0; NaN is written as 0.

Examples
--------
>>> import tempfile, pathlib
>>> from orix.crystal_map import CrystalMap
>>> from orix.quaternion import Rotation
>>> out = write_ang(CrystalMap(Rotation.identity(2)), pathlib.Path(tempfile.mkdtemp()) / "m.ang")
>>> out.read_text().splitlines()[-1].split()[:3]
['0.0000000', '0.0000000', '0.0000000']
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.flow.exporters._common import (
    MapTable,
    atomic_write,
    lattice_angstrom,
    map_table,
    pc_in_convention,
)

if TYPE_CHECKING:
    from orix.crystal_map import CrystalMap, Phase

__all__ = ["write_ang", "oim_symmetry_code"]

#: OIM "Symmetry" codes by the proper (rotational) point group.
_OIM_SYMMETRY = {
    "1": "1", "2": "2", "112": "2", "121": "20", "211": "21", "222": "22", "4": "4", "422": "42",
    "3": "3", "32": "32", "321": "32", "312": "32", "6": "6", "622": "62", "23": "23", "432": "43",
}


def oim_symmetry_code(phase: Phase) -> str:
    """The OIM ``Symmetry`` code of an orix phase (its proper point group).

    Examples
    --------
    >>> from diffraflow.operators.crystallography import get_phase
    >>> oim_symmetry_code(get_phase("ni"))
    '43'
    """
    if phase.point_group is None:
        return "1"
    return _OIM_SYMMETRY.get(phase.point_group.proper_subgroup.name, "1")


def _header(table: MapTable, metadata: Mapping[str, Any] | None, to_um: float) -> str:
    pc = pc_in_convention(metadata, "tsl") or (0.0, 0.0, 0.0)
    lines = [
        "TEM_PIXperUM          1.000000",
        f"x-star                {pc[0]:.6f}",
        f"y-star                {pc[1]:.6f}",
        f"z-star                {pc[2]:.6f}",
        "WorkingDistance       0.000000",
        "",
    ]
    for position in reversed(range(len(table.phases))):  # OIM lists the phases last to first
        phase = table.phases[position]
        name = (phase.name or f"phase{position + 1}").strip().replace("\n", " ")
        lattice = lattice_angstrom(phase)
        lines += [
            f"Phase {position + 1}",
            f"MaterialName  \t{name}",
            f"Formula     \t{name}",
            "Info \t\t",
            f"Symmetry              {oim_symmetry_code(phase)}",
            "LatticeConstants      " + " ".join(f"{v:.4f}" for v in lattice[:3]) + "  "
            + " ".join(f"{v:.3f}" for v in lattice[3:]),
            "NumberFamilies        0",
        ]
    ny, nx = table.shape
    dy, dx = table.step
    lines += [
        "",
        "GRID: SqrGrid",
        f"XSTEP: {dx * to_um:.6f}",
        f"YSTEP: {dy * to_um:.6f}",
        f"NCOLS_ODD: {nx}",
        f"NCOLS_EVEN: {nx}",
        f"NROWS: {ny}",
        "",
        "OPERATOR: \tdiffraflow",
        "",
        "SAMPLEID: \t",
        "",
        "SCANID: \t",
        "",
        "COLUMN_COUNT: 10",
        "COLUMN_HEADERS: phi1, PHI, phi2, x, y, IQ, CI, Phase index, SEM, Fit",
        "COLUMN_UNITS: radians, radians, radians, microns, microns, , , , , degrees",
        "",
    ]
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def write_ang(xmap: CrystalMap, path: str | os.PathLike[str], overwrite: bool = False,
              metadata: Mapping[str, Any] | None = None) -> Path:
    """Write an orix ``CrystalMap`` to an EDAX/TSL ``.ang`` file.

    Parameters
    ----------
    xmap
        1-D or 2-D crystal map (e.g. from :func:`diffraflow.flow.crystal_map.read_crystal_map`).
    path
        Output file; written under a temporary name and renamed.
    overwrite
        Replace an existing file.
    metadata
        The scan's :class:`~diffraflow.schemas.cube.ScanAttrs` as a dict; its projection
        centre goes into ``x-star``/``y-star``/``z-star`` (EDAX convention).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    table = map_table(xmap)
    to_um = 1e-3 if table.unit == "nm" else 1.0
    n = table.indexed.size
    euler = np.where(table.indexed[:, None], table.euler, 4 * np.pi)
    iq = np.nan_to_num(table.props["pattern_quality"].astype(np.float64))
    ci = np.where(table.indexed, np.nan_to_num(table.props["confidence"].astype(np.float64)), -1.0)
    fit = np.where(table.indexed, np.nan_to_num(table.props["fit"].astype(np.float64)), 180.0)
    sem = next((table.props[k] for k in table.props if k.lower().replace("_", "") in
                ("detectorsignal", "semsignal", "sem", "ss")), np.zeros(n))
    sem = np.nan_to_num(np.asarray(sem, dtype=np.float64))
    columns = np.column_stack([euler, table.x * to_um, table.y * to_um, iq, ci, table.phase_index, sem, fit])
    fmt = "%10.7f %10.7f %10.7f %12.5f %12.5f %10.4f %7.4f %2d %8.3f %8.4f"
    header = _header(table, metadata, to_um)

    def write(temp: Path) -> None:
        with open(temp, "w", newline="\n") as fh:
            fh.write(header)
            np.savetxt(fh, columns, fmt=fmt)

    return atomic_write(path, overwrite, write)

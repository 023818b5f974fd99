"""Write a crystal map as an Oxford Instruments Channel 5 / AZtec ``.ctf`` file.

Layout (tab-separated)::

    Channel Text File
    Prj / Author / JobMode Grid / XCells / YCells / XStep / YStep / AcqE1-3
    Euler angles refer to Sample Coordinate system (CS0)!  Mag  KV  TiltAngle ...
    Phases  n
    a;b;c  alpha;beta;gamma  name  laue-group  space-group   (one line per phase, Angstrom)
    Phase X Y Bands Error Euler1 Euler2 Euler3 MAD BC BS

Euler angles are Bunge, in degrees (5 decimals), of the orix rotation as is
(orix's ``.ctf`` reader applies no frame change either). ``Phase`` is the
1-based position in the phase list, 0 = not indexed (``Error`` 3, "no
solution", Euler 0). ``Bands`` = ``n_bands``, ``MAD`` = ``fit`` (degrees),
``BC`` = ``pattern_quality`` rescaled linearly to 0-255, ``BS`` =
``round(255 * confidence)``: Channel 5 stores both as bytes.

Hexagonal phases: Oxford software takes the crystal x axis along a, EDAX along
a*; the angles are written unchanged (orix convention), as orix reads them.

Examples
--------
>>> import tempfile, pathlib
>>> from orix.crystal_map import CrystalMap
>>> from orix.quaternion import Rotation
>>> out = write_ctf(CrystalMap(Rotation.identity(2)), pathlib.Path(tempfile.mkdtemp()) / "m.ctf")
>>> out.read_text().splitlines()[0]
'Channel Text File'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.flow.exporters._common import MapTable, atomic_write, lattice_angstrom, map_table

if TYPE_CHECKING:
    from orix.crystal_map import CrystalMap, Phase

__all__ = ["write_ctf", "laue_group_code"]

#: Channel 5 Laue-group codes.
_LAUE_CODES = {"-1": 1, "2/m": 2, "mmm": 3, "4/m": 4, "4/mmm": 5, "-3": 6, "-3m": 7, "6/m": 8, "6/mmm": 9,
               "m-3": 10, "m-3m": 11}


def laue_group_code(phase: Phase) -> int:
    """Channel 5 Laue-group code (1-11) of an orix phase.

    Examples
    --------
    >>> from diffraflow.operators.crystallography import get_phase
    >>> laue_group_code(get_phase("si"))
    11
    """
    if phase.point_group is None:
        return 1
    return _LAUE_CODES.get(phase.point_group.laue.name, 1)


def _fmt(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _header(table: MapTable, path: Path, metadata: Mapping[str, Any] | None, to_um: float) -> str:
    meta = dict(metadata or {})
    det = meta.get("detector") or {}
    kv = meta.get("beam_energy_kv") or 0
    tilt = 70.0 if det.get("sample_tilt") is None else det["sample_tilt"]  # not known (None): the usual EBSD tilt
    ny, nx = table.shape
    dy, dx = table.step
    lines = [
        "Channel Text File",
        f"Prj\t{path.stem}",
        "Author\tdiffraflow",
        "JobMode\tGrid",
        f"XCells\t{nx}",
        f"YCells\t{ny}",
        f"XStep\t{_fmt(dx * to_um)}",
        f"YStep\t{_fmt(dy * to_um)}",
        "AcqE1\t0",
        "AcqE2\t0",
        "AcqE3\t0",
        "Euler angles refer to Sample Coordinate system (CS0)!\tMag\t0\tCoverage\t100\tDevice\t0"
        f"\tKV\t{_fmt(float(kv))}\tTiltAngle\t{_fmt(float(tilt))}\tTiltAxis\t0",
        f"Phases\t{len(table.phases)}",
    ]
    for position, phase in enumerate(table.phases):
        lattice = lattice_angstrom(phase)
        sg = phase.space_group.number if phase.space_group is not None else 0
        name = (phase.name or f"phase{position + 1}").replace("\t", " ")
        lines.append(";".join(f"{v:.4f}" for v in lattice[:3]) + "\t" + ";".join(_fmt(v) for v in lattice[3:])
                     + f"\t{name}\t{laue_group_code(phase)}\t{sg}\t\t\tdiffraflow")
    lines.append("Phase\tX\tY\tBands\tError\tEuler1\tEuler2\tEuler3\tMAD\tBC\tBS")
    return "\n".join(lines) + "\n"


def _to_byte(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    out = np.zeros(values.shape, dtype=np.int64)
    if finite.any():
        lo, hi = float(values[finite].min()), float(values[finite].max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        out[finite] = np.rint((values[finite] - lo) * scale + (255 if hi == lo and hi > 0 else 0))
    return np.clip(out, 0, 255)


def write_ctf(xmap: CrystalMap, path: str | os.PathLike[str], overwrite: bool = False,
              metadata: Mapping[str, Any] | None = None) -> Path:
    """Write an orix ``CrystalMap`` to an Oxford ``.ctf`` file.

    Parameters
    ----------
    xmap
        1-D or 2-D crystal map.
    path
        Output file; written under a temporary name and renamed.
    overwrite
        Replace an existing file.
    metadata
        The scan's :class:`~diffraflow.schemas.cube.ScanAttrs` as a dict (beam energy and
        sample tilt go into the header).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    final = Path(path)
    table = map_table(xmap)
    to_um = 1e-3 if table.unit == "nm" else 1.0
    indexed = table.indexed
    euler = np.where(indexed[:, None], np.degrees(table.euler), 0.0)
    bands = np.where(indexed, table.props["n_bands"], 0).astype(np.int64)
    error = np.where(indexed, 0, 3)
    mad = np.nan_to_num(table.props["fit"].astype(np.float64))
    bc = _to_byte(table.props["pattern_quality"])
    bs = np.clip(np.rint(255 * np.nan_to_num(table.props["confidence"].astype(np.float64))), 0, 255)
    columns = np.column_stack([table.phase_index, table.x * to_um, table.y * to_um, bands, error, euler, mad, bc, bs])
    fmt = "%d\t%.4f\t%.4f\t%d\t%d\t%.5f\t%.5f\t%.5f\t%.4f\t%d\t%d"
    header = _header(table, final, metadata, to_um)

    def write(temp: Path) -> None:
        with open(temp, "w", newline="\n") as fh:
            fh.write(header)
            np.savetxt(fh, columns, fmt=fmt)

    return atomic_write(path, overwrite, write)

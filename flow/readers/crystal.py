"""Crystal maps and phases found in input files, as store variables and records.

A crystal map is stored next to the patterns as the variables ``rotation``
``(scan_y, scan_x, quat)`` (orix scalar-first unit quaternion, sample to
crystal), ``phase_id`` ``(scan_y, scan_x)`` and one variable per score
(``scores``, ``ci``, ``iq``, ``mad``...); their names are listed in
``original_metadata["crystal_map_variables"]``. Phases become
:class:`~diffraflow.schemas.cube.PhaseRecord` dicts whose ``id`` matches ``phase_id``.

Examples
--------
>>> import numpy as np
>>> v = euler_map_variables(np.zeros((4, 3)), np.ones(4, int), {"CI": np.ones(4)}, (2, 2))
>>> sorted(v), np.abs(v["rotation"].data[0, 0]).tolist()
(['ci', 'phase_id', 'rotation'], [1.0, 0.0, 0.0, 0.0])
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.flow.readers.base import Variable

if TYPE_CHECKING:
    from orix.crystal_map import CrystalMap, Phase, PhaseList

__all__ = [
    "CRYSTAL_MAP_DIMS",
    "euler_map_variables",
    "xmap_to_variables",
    "phase_record",
    "phase_list_records",
    "find_sidecar_crystal_map",
    "load_crystal_map_file",
    "score_name",
]

CRYSTAL_MAP_DIMS = ("scan_y", "scan_x")


def score_name(name: str) -> str:
    """A store-friendly lower-case variable name for a vendor score column.

    Examples
    --------
    >>> score_name("Mean Angular Deviation"), score_name("RadonQuality")
    ('mean_angular_deviation', 'radonquality')
    """
    text = re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower()
    return text or "score"


def _scores_to_variables(scores: dict[str, np.ndarray], scan_shape: tuple[int, int]) -> dict[str, Variable]:
    out: dict[str, Variable] = {}
    n = scan_shape[0] * scan_shape[1]
    for name, values in scores.items():
        values = np.asarray(values)
        if values.shape[:1] != (n,) or values.dtype.kind not in "biuf":
            continue
        key = score_name(name)
        if key in ("rotation", "phase_id", "pc", "patterns", "static_background"):
            key = f"{key}_score"
        out[key] = Variable(values.reshape(*scan_shape, *values.shape[1:]),
                            CRYSTAL_MAP_DIMS + tuple(f"{key}_dim{i}" for i in range(values.ndim - 1)),
                            {"source_name": str(name)})
    return out


def euler_map_variables(euler_rad: np.ndarray, phase_id: np.ndarray, scores: dict[str, np.ndarray],
                        scan_shape: tuple[int, int]) -> dict[str, Variable]:
    """Crystal-map variables from Bunge Euler angles (radians) in scan order.

    Parameters
    ----------
    euler_rad
        ``(n, 3)`` Bunge angles in radians.
    phase_id
        ``(n,)`` phase ids.
    scores
        Per-point scores by vendor name.
    scan_shape
        ``(scan_y, scan_x)`` with ``scan_y * scan_x == n``.

    Examples
    --------
    >>> v = euler_map_variables(np.zeros((1, 3)), np.zeros(1, int), {}, (1, 1))
    >>> v["rotation"].dims
    ('scan_y', 'scan_x', 'quat')
    """
    from orix.quaternion import Rotation

    euler = np.asarray(euler_rad, dtype="float64").reshape(-1, 3)
    quat = Rotation.from_euler(euler).data
    out = {
        "rotation": Variable(quat.reshape(*scan_shape, 4), (*CRYSTAL_MAP_DIMS, "quat"),
                             {"convention": "orix (w, x, y, z), sample to crystal (Bunge passive)"}),
        "phase_id": Variable(np.asarray(phase_id).astype("int32").reshape(scan_shape), CRYSTAL_MAP_DIMS),
    }
    out.update(_scores_to_variables(scores, scan_shape))
    return out


def _grid_order(xmap: CrystalMap, scan_shape: tuple[int, int]) -> np.ndarray | None:
    """Flat scan index of each crystal-map point, from its x/y coordinates."""
    ny, nx = scan_shape
    try:
        x = np.asarray(xmap._x if getattr(xmap, "_x", None) is not None else np.zeros(xmap.size), float)
        y = np.asarray(xmap._y if getattr(xmap, "_y", None) is not None else np.zeros(xmap.size), float)
        dx = float(xmap.dx) if xmap.dx else 1.0
        dy = float(xmap.dy) if xmap.dy else 1.0
    except Exception:  # orix internals differ between versions: fall back to file order
        return None
    col = np.rint((x - x.min()) / dx).astype(int) if nx > 1 else np.zeros(len(x), int)
    row = np.rint((y - y.min()) / dy).astype(int) if ny > 1 else np.zeros(len(y), int)
    if col.max(initial=0) >= nx or row.max(initial=0) >= ny:
        return None
    flat: np.ndarray = row * nx + col
    if len(np.unique(flat)) != len(flat):
        return None
    return flat


def xmap_to_variables(xmap: CrystalMap, scan_shape: tuple[int, int]) -> tuple[dict[str, Variable], list[dict[str, Any]]]:
    """Crystal-map variables and phase records from an orix ``CrystalMap``.

    Points not in the data get a NaN rotation and ``phase_id = -1``.

    Parameters
    ----------
    xmap
        orix ``CrystalMap`` with ``scan_shape[0] * scan_shape[1]`` points.
    scan_shape
        ``(scan_y, scan_x)``.

    Returns
    -------
    variables, phases

    Raises
    ------
    ValueError
        The map does not have one point per scan position.

    Examples
    --------
    >>> from orix.crystal_map import CrystalMap
    >>> v, p = xmap_to_variables(CrystalMap.empty((2, 3)), (2, 3))
    >>> v["rotation"].data.shape, v["phase_id"].data.dtype.name
    ((2, 3, 4), 'int32')
    """
    n = scan_shape[0] * scan_shape[1]
    rot = np.asarray(xmap._rotations.data, dtype="float64")
    if rot.ndim == 3:  # several rotations per point: keep the best (first) match
        rot = rot[:, 0]
    rot = rot.reshape(-1, 4)
    if len(rot) != n:
        raise ValueError(f"crystal map has {len(rot)} points, scan has {n}")
    in_data = np.asarray(xmap.is_in_data, bool)
    phase_id = np.asarray(xmap._phase_id).astype("int32").copy()
    rot = rot.copy()
    rot[~in_data] = np.nan
    phase_id[~in_data] = -1
    order = _grid_order(xmap, scan_shape)
    scores: dict[str, np.ndarray] = {}
    for name, values in dict(xmap._prop).items():
        if name in ("x", "y", "z", "id", "is_in_data", "phase_id"):
            continue
        values = np.asarray(values)
        if values.ndim == 2:  # several matches per point: keep the best
            values = values[:, 0]
        scores[name] = values
    if order is not None:
        def place(a: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full((n, *a.shape[1:]), fill, dtype=a.dtype if a.dtype.kind != "b" else bool)
            out[order] = a
            return out

        rot = place(rot, np.nan)
        phase_id = place(phase_id, -1)
        scores = {k: place(v, np.nan if v.dtype.kind == "f" else 0) for k, v in scores.items()}
    variables = {
        "rotation": Variable(rot.reshape(*scan_shape, 4), (*CRYSTAL_MAP_DIMS, "quat"),
                             {"convention": "orix (w, x, y, z), sample to crystal (Bunge passive)"}),
        "phase_id": Variable(phase_id.reshape(scan_shape), CRYSTAL_MAP_DIMS),
    }
    variables.update(_scores_to_variables(scores, scan_shape))
    return variables, phase_list_records(xmap.phases)


def phase_record(phase: Phase, phase_id: int) -> dict[str, Any] | None:
    """A ``PhaseRecord`` dict from an orix ``Phase``, with invalid parts dropped.

    Examples
    --------
    >>> from orix.crystal_map import Phase
    >>> phase_record(Phase("ni", space_group=225), 1)["space_group"]
    225
    """
    from diffraflow.operators.crystallography.phases import phase_to_record

    try:
        record = phase_to_record(phase)
    except Exception:  # phases without a structure or lattice
        record = {"name": phase.name or f"phase_{phase_id}"}
    record["id"] = int(phase_id)
    record["name"] = record.get("name") or f"phase_{phase_id}"
    lattice = record.get("lattice")
    if lattice is not None and (len(lattice) != 6 or min(lattice[:3]) <= 0
                                or not all(math.isfinite(v) for v in lattice)):
        record["lattice"] = None
    if record.get("space_group") is not None and not 1 <= int(record["space_group"]) <= 230:
        record["space_group"] = None
    return record


def phase_list_records(phase_list: PhaseList) -> list[dict[str, Any]]:
    """Phase records for every indexed phase of an orix ``PhaseList``.

    Examples
    --------
    >>> from orix.crystal_map import PhaseList
    >>> [r["name"] for r in phase_list_records(PhaseList(names=["a", "b"], space_groups=[225, 229]))]
    ['a', 'b']
    """
    records = []
    for pid, phase in phase_list:
        if int(pid) < 0:  # orix's "not_indexed" pseudo-phase
            continue
        record = phase_record(phase, int(pid))
        if record is not None:
            records.append(record)
    return records


def find_sidecar_crystal_map(source: Path) -> Path | None:
    """An ``.ang``/``.ctf`` next to the input whose stem begins the input's stem.

    ``cu_hkl_2x2.ctf`` is the sidecar of ``cu_hkl_2x2_patterns.npy`` and of
    the stack ``cu_hkl_2x2_p*.jpg``; only a unique match is returned.

    Examples
    --------
    >>> find_sidecar_crystal_map(Path("/nonexistent/scan.npy")) is None
    True
    """
    folder = source if source.is_dir() else source.parent
    if source.is_dir():
        stem = ""
    elif any(c in source.name for c in "*?["):  # a glob: its literal prefix
        stem = re.split(r"[*?\[]", source.name)[0]
    else:
        stem = source.stem
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.iterdir()
                  if p.suffix.lower() in (".ang", ".ctf") and p.is_file()
                  and (source.is_dir() or (p.stem and stem.startswith(p.stem)))]
    return candidates[0] if len(candidates) == 1 else None


def load_crystal_map_file(path: Path) -> CrystalMap:
    """Read an ``.ang``/``.ctf`` (or orix/Bruker HDF5) crystal map with orix.

    Examples
    --------
    >>> # xmap = load_crystal_map_file(Path("cu_hkl_2x2.ctf"))
    """
    from orix import io as orix_io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return orix_io.load(str(path))

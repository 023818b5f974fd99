"""Helpers shared by the crystal-map exporters: safe output paths and map tables."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.schemas.errors import DestinationNotWritableError, OutputExistsError

if TYPE_CHECKING:
    from orix.crystal_map import CrystalMap, Phase

__all__ = ["MapTable", "map_table", "check_output", "atomic_write", "lattice_angstrom", "pc_in_convention"]


@dataclass
class MapTable:
    """A crystal map flattened in row-major scan order, ready for a text writer.

    ``phase_index`` is 1-based position in ``phases`` (0 = not indexed), the
    numbering EDAX and Oxford files use.
    """

    shape: tuple[int, int]
    step: tuple[float, float]
    unit: str
    euler: np.ndarray  # (n, 3) Bunge radians
    indexed: np.ndarray  # (n,) bool
    phase_index: np.ndarray  # (n,) int, 1-based, 0 = not indexed
    phases: list[Any]  # orix Phase objects, in file order
    props: dict[str, np.ndarray]  # fit, confidence, pattern_quality, n_bands (NaN/0 when absent) + extras
    x: np.ndarray
    y: np.ndarray


def map_table(xmap: CrystalMap) -> MapTable:
    """Flatten an orix ``CrystalMap`` into a :class:`MapTable`.

    Examples
    --------
    >>> from orix.crystal_map import CrystalMap
    >>> from orix.quaternion import Rotation
    >>> t = map_table(CrystalMap(Rotation.identity(3)))
    >>> t.shape, t.phase_index.tolist()
    ((1, 3), [1, 1, 1])
    """
    from diffraflow.flow.crystal_map import crystal_map_grid
    from orix.quaternion import Rotation

    grid = crystal_map_grid(xmap)
    ny, nx = grid["phase_id"].shape
    n = ny * nx
    pl = [(int(i), phase) for i, phase in xmap.phases if int(i) >= 0]
    orix_ids = grid["phase_id"].ravel()
    phase_index = np.zeros(n, dtype=np.int32)
    for position, (orix_id, _) in enumerate(pl):
        phase_index[orix_ids == orix_id] = position + 1
    indexed = phase_index > 0
    euler = Rotation(grid["rotation"].reshape(n, 4)).to_euler()
    props: dict[str, np.ndarray] = {}
    for name in ("fit", "confidence", "pattern_quality"):
        props[name] = grid[name].ravel() if name in grid else np.full(n, np.nan, dtype=np.float32)
    props["n_bands"] = grid["n_bands"].ravel() if "n_bands" in grid else np.zeros(n, dtype=np.int32)
    for name, values in grid["properties"].items():
        props[name] = values.ravel()
    dy, dx = grid["step"]
    rows, cols = np.divmod(np.arange(n), nx)
    return MapTable((ny, nx), (dy, dx), grid["unit"], euler, indexed, phase_index,
                    [phase for _, phase in pl], props, cols * dx, rows * dy)


def check_output(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check an output file path; return it absolute.

    Raises
    ------
    OutputExistsError
        It exists and ``overwrite`` is false.
    DestinationNotWritableError
        Its directory is missing or not writable.

    Examples
    --------
    >>> check_output("/nonexistent-dir/x.ang", False)
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.DestinationNotWritableError: /nonexistent-dir/x.ang: directory /nonexistent-dir does not exist (fix: create the directory first or choose another output path)
    """
    final = Path(path).expanduser().absolute()
    if final.exists() and not overwrite:
        raise OutputExistsError(str(final), "output already exists",
                                "choose another name, or pass --overwrite to replace it")
    if not final.parent.is_dir():
        raise DestinationNotWritableError(str(final), f"directory {final.parent} does not exist",
                                          "create the directory first or choose another output path")
    if not os.access(final.parent, os.W_OK | os.X_OK):
        raise DestinationNotWritableError(str(final), f"directory {final.parent} is not writable",
                                          "choose an output path in a directory you can write to")
    return final


def atomic_write(path: str | os.PathLike[str], overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)`` and rename the result to ``path`` once it succeeded.

    The temporary file keeps the extension (``.NAME.partial-PID.EXT``) so
    extension-dispatching writers such as ``orix.io.save`` accept it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write(out, False, lambda p: p.write_text("hi")).read_text()
    'hi'
    """
    final = check_output(path, overwrite)
    temp = final.parent / f".{final.stem}.partial-{os.getpid()}{final.suffix}"
    try:
        write(temp)
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    return final


def lattice_angstrom(phase: Phase) -> tuple[float, float, float, float, float, float]:
    """Lattice ``(a, b, c, alpha, beta, gamma)`` of an orix phase in Angstrom and degrees.

    diffraflow phases carry nm; phases read from vendor files carry Angstrom.
    Edges below 1.5 are taken as nm (no crystal has a 1.5 Angstrom cell edge).

    Examples
    --------
    >>> from diffraflow.operators.crystallography import get_phase
    >>> lattice_angstrom(get_phase("ni"))[0]
    3.5236
    """
    lat = phase.structure.lattice
    abc = [float(lat.a), float(lat.b), float(lat.c)]
    if max(abc) < 1.5:
        abc = [v * 10 for v in abc]
    return (abc[0], abc[1], abc[2], float(lat.alpha), float(lat.beta), float(lat.gamma))


def pc_in_convention(metadata: Mapping[str, Any] | None, convention: str) -> tuple[float, float, float] | None:
    """The scan's mean projection centre converted to ``convention`` (via kikuchipy), or None.

    Examples
    --------
    >>> pc_in_convention({"detector": {"shape": [60, 60], "pc": [0.4, 0.3, 0.5]}}, "tsl")
    (0.4, 0.7, 0.5)
    """
    det = (metadata or {}).get("detector") or {}
    if det.get("pc") is None or det.get("shape") is None:
        return None
    from kikuchipy.detectors import EBSDDetector

    # Tilts do not enter the conversion, but EBSDDetector wants numbers where the scan knows none (None).
    detector = EBSDDetector(tuple(det["shape"]), pc=tuple(det["pc"]), convention=det.get("pc_convention", "bruker"),
                            sample_tilt=70.0 if det.get("sample_tilt") is None else det["sample_tilt"],
                            tilt=det.get("camera_tilt") or 0.0)
    converted = {"tsl": detector.pc_tsl, "edax": detector.pc_tsl, "oxford": detector.pc_oxford,
                 "bruker": lambda: detector.pc, "emsoft": detector.pc_emsoft}[convention]()
    pc = np.asarray(converted, dtype=float).reshape(-1, 3).mean(axis=0)
    return (round(float(pc[0]), 6), round(float(pc[1]), 6), round(float(pc[2]), 6))

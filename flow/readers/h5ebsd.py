"""h5ebsd files (HDF5) in the kikuchipy, EDAX, Bruker and Oxford (H5OINA) flavours.

All four share a layout ``/<scan>/EBSD/{Data,Header}`` and a top-level
``Manufacturer`` dataset naming the flavour; field names, units and the
projection-centre convention differ:

============== ================== ============================ =====================
flavour        patterns           projection centre            convention
============== ================== ============================ =====================
kikuchipy      ``patterns``       Header ``pcx, pcy, pcz``     ``bruker``
EDAX (OIM)     ``Pattern``        Header ``Pattern Center      ``edax``
                                  Calibration/{x,y,z}-star``
Bruker Esprit  ``RawPatterns``    Data ``PCX, PCY, DD``        ``bruker``
Oxford H5OINA  ``Unprocessed      Data ``Pattern Center X/Y,   ``oxford``
               Patterns``         Detector Distance``
============== ================== ============================ =====================

Patterns are read as HDF5 slabs, one batch of whole chunks at a time.

Examples
--------
>>> H5EBSDReader.sniff(b"\\x89HDF\\r\\n\\x1a\\n", Path("x.h5"))
True
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from diffraflow.flow.readers.base import Probe, Reader, Variable, jsonable
from diffraflow.flow.readers.crystal import euler_map_variables, xmap_to_variables
from diffraflow.flow.readers.hdf5 import (
    group_to_dict,
    is_hdf5,
    iter_dataset_frames,
    open_h5,
    scalar,
)
from diffraflow.schemas.cube import check_projection_centre
from diffraflow.schemas.errors import SchemaError

if TYPE_CHECKING:
    import h5py
    from numpy.typing import ArrayLike

__all__ = ["H5EBSDReader", "h5ebsd_flavour"]

_PATTERN_NAMES = {
    "kikuchipy": ("patterns",),
    "edax": ("Pattern",),
    "bruker nano": ("RawPatterns",),
    "oxford instruments": ("Unprocessed Patterns", "Processed Patterns"),
}
# EDAX/TSL symmetry codes -> Laue class.
_TSL_SYMMETRY = {1: "-1", 2: "2/m", 20: "2/m", 21: "2/m", 22: "mmm", 3: "-3", 32: "-3m", 4: "4/m",
                 42: "4/mmm", 6: "6/m", 62: "6/mmm", 23: "m-3", 43: "m-3m"}


def _get(d: dict[str, Any], *names: str, default: Any = None) -> Any:
    """First present key of ``names``, matched case- and blank-insensitively."""
    norm = {re.sub(r"\s+", " ", str(k)).strip().lower(): v for k, v in d.items()}
    for name in names:
        key = name.strip().lower()
        if key in norm and norm[key] is not None:
            return norm[key]
    return default


def h5ebsd_flavour(h5file: h5py.File) -> tuple[str | None, str | None]:
    """``(manufacturer, version)`` from the top group, lower-case, or ``(None, None)``.

    Examples
    --------
    >>> import h5py, io
    >>> f = h5py.File(io.BytesIO(), "w"); f[" Manufacturer"] = [b"EDAX"]; f["Version"] = [b"OIM 7"]
    >>> h5ebsd_flavour(f)
    ('edax', 'oim 7')
    """
    import h5py

    man = ver = None
    for key, item in h5file.items():
        if not isinstance(item, h5py.Dataset):
            continue
        name = key.strip().lower()
        if name == "manufacturer":
            man = str(scalar(item[()])).strip().lower()
        elif name in ("version", "format version"):
            ver = str(scalar(item[()])).strip().lower()
    return man, ver


def _float(value: Any) -> float | None:
    try:
        out = float(np.asarray(value).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None
    return out if math.isfinite(out) else None


def _pc_arrays(x: ArrayLike | None, y: ArrayLike | None, z: ArrayLike | None, n: int, scan_shape: tuple[int, int]) -> np.ndarray | None:
    """Per-point PC ``(scan_y, scan_x, 3)`` or ``(3,)``, or None when unknown/invalid."""
    if x is None or y is None or z is None:
        return None
    arrs = [np.asarray(v, dtype="float64").reshape(-1) for v in (x, y, z)]
    sizes = {a.size for a in arrs}
    if sizes == {1}:
        pc = np.array([a[0] for a in arrs])
        if not np.all(np.isfinite(pc)) or pc[2] <= 0 or np.any(pc < -1e-9):
            return None  # e.g. NORDIF's -1 placeholders, or EDAX's all-zero "not calibrated"
        return pc
    if sizes != {n}:
        return None
    pc = np.stack(arrs, axis=-1).reshape(*scan_shape, 3)
    if not np.all(np.isfinite(pc)) or np.any(pc[..., 2] <= 0):
        return None
    return pc


class H5EBSDReader(Reader):
    """Reader of h5ebsd files (kikuchipy, EDAX OIM, Bruker Esprit, Oxford H5OINA).

    Parameters
    ----------
    path
        The ``.h5`` file.
    scan_group
        Top-level group to read (default: the first with ``EBSD/Data``).
    processed
        Oxford only: read ``Processed Patterns`` instead of the raw ones.

    Examples
    --------
    >>> # H5EBSDReader("ni.h5").probe().attrs["detector"]["pc_convention"]  -> 'bruker'
    """

    format_name = "h5ebsd"
    extensions = ("h5", "hdf5", "h5ebsd", "h5oina")
    modality = "ebsd"

    def __init__(self, path: str | os.PathLike[str], *, scan_group: str | None = None, processed: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.scan_group = scan_group
        self.processed = processed
        self._file: Any = None
        self._dset: Any = None
        self._order: np.ndarray | None = None

    @classmethod
    def sniff(cls, head: bytes, path: Path) -> bool:
        return is_hdf5(head)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- probing -----------------------------------------------------------
    def _open(self) -> h5py.File:
        if self._file is None:
            self._file = open_h5(self.path)
        return self._file

    def _scan(self, f: h5py.File) -> tuple[str, h5py.Group]:
        import h5py

        names = [k for k, v in f.items() if isinstance(v, h5py.Group) and "EBSD/Data" in v and "EBSD/Header" in v]
        if not names:
            raise self.error("no scan group with EBSD/Data and EBSD/Header",
                             "pass an h5ebsd file (kikuchipy, EDAX, Bruker or Oxford)")
        if self.scan_group is not None:
            if self.scan_group not in names:
                raise self.error(f"no scan group {self.scan_group!r}; the file has {names}",
                                 f"use one of {names}")
            return self.scan_group, f[self.scan_group]
        return names[0], f[names[0]]

    def _probe(self) -> Probe:
        f = self._open()
        man, version = h5ebsd_flavour(f)
        if man is None or man not in _PATTERN_NAMES:
            raise self.error(f"HDF5 file without a known h5ebsd 'Manufacturer' (got {man!r})",
                             "pass an h5ebsd file from kikuchipy, EDAX, Bruker or Oxford, or an .hspy file")
        name, group = self._scan(f)
        data = group["EBSD/Data"]
        candidates = _PATTERN_NAMES[man]
        if man == "oxford instruments" and self.processed:
            candidates = candidates[::-1]
        dset_name = next((c for c in candidates if c in data), None)
        if dset_name is None:
            raise self.error(f"scan {name!r} has no pattern dataset (looked for {list(candidates)})",
                             "this h5ebsd file holds no patterns; convert a file with patterns")
        self._dset = data[dset_name]
        header = group_to_dict(group["EBSD/Header"], max_size=4_000_000)
        data_small = group_to_dict(data, skip=tuple(_PATTERN_NAMES[man]), max_size=50_000_000)
        flavour = {"kikuchipy": self._kikuchipy, "edax": self._edax, "bruker nano": self._bruker,
                   "oxford instruments": self._oxford}[man]
        probe = flavour(group, header, data_small)
        probe.attrs.setdefault("provenance", {})["source_format"] = f"h5ebsd:{man.split()[0]}"
        om = probe.attrs.setdefault("original_metadata", {})
        om.update({"manufacturer": man, "version": version, "scan_group": name, "patterns_dataset": dset_name})
        om["header"] = jsonable({k: v for k, v in header.items()
                                 if not (isinstance(v, np.ndarray) and v.size > 64)})
        self._check_dataset(probe)
        return probe

    def _check_dataset(self, probe: Probe) -> None:
        dset = self._dset
        n = probe.n_frames
        shape = tuple(dset.shape)
        if len(shape) == 2:
            shape = (1, *shape)
        scan = probe.scan_shape or (1, n)
        if len(shape) != 3 or tuple(shape[1:]) != tuple(probe.det_shape):
            raise self.error(f"pattern dataset {dset.name} has shape {list(dset.shape)}, header says "
                             f"{n} frames of {list(probe.det_shape)}", "the header and the data disagree; "
                             "re-export the file")
        if shape[0] < n:
            raise self.truncated(f"pattern dataset {dset.name} holds {shape[0]} frames but the header says "
                                 f"{scan[0]} x {scan[1]} = {n}")
        probe.dtype = np.dtype(dset.dtype)

    def _base_attrs(self, header: dict[str, Any], sem: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"modality": "ebsd", "detector": {}, "original_metadata": {"sem": jsonable(sem or {})}}

    def _finish(self, attrs: dict[str, Any], ny: int, nx: int, sy: int, sx: int, pc: np.ndarray | None,
                convention: str, variables: dict[str, Variable], notes: list[str]) -> Probe:
        det = attrs["detector"]
        det["shape"] = [sy, sx]
        det["pc_convention"] = convention
        if pc is not None:
            if pc.ndim == 3:
                flat = pc.reshape(-1, 3)
                if np.allclose(flat, flat[0]):
                    det["pc"] = [float(v) for v in flat[0]]
                else:
                    det["pc"] = [float(v) for v in flat.mean(axis=0)]
                    variables["pc"] = Variable(pc, ("scan_y", "scan_x", "pc_component"),
                                               {"convention": convention, "components": ["x", "y", "z"]})
            else:
                det["pc"] = [float(v) for v in pc]
        if det.get("pc") is not None:
            try:
                check_projection_centre(det["pc"], convention, "pc", det_shape=(sy, sx), binning=det.get("binning"))
            except SchemaError as exc:
                # A vendor's placeholder or a botched calibration must not stop the patterns: drop it, say so.
                notes.append(f"projection centre {det.pop('pc')} in the file ignored ({exc.problem})")
                variables.pop("pc", None)
        return Probe(n_frames=ny * nx, scan_shape=(ny, nx), det_shape=(sy, sx), dtype=np.dtype("uint8"),
                     attrs=attrs, variables=variables, notes=notes)

    @staticmethod
    def _background(bg: Any, shape: tuple[int, int], variables: dict[str, Variable]) -> None:
        if isinstance(bg, np.ndarray) and bg.shape == tuple(shape):
            variables["static_background"] = Variable(bg, ("det_y", "det_x"))

    @staticmethod
    def _set(d: dict[str, Any], key: str, value: Any) -> None:
        if value is not None:
            d[key] = value

    # -- flavours ------------------------------------------------------------
    def _kikuchipy(self, group: h5py.Group, header: dict[str, Any], data: dict[str, Any]) -> Probe:
        sem = group_to_dict(group["SEM/Header"]) if "SEM/Header" in group else {}
        ny, nx = int(_get(header, "n_rows", default=1)), int(_get(header, "n_columns", default=1))
        sy, sx = int(_get(header, "pattern_height")), int(_get(header, "pattern_width"))
        attrs = self._base_attrs(header, sem)
        det = attrs["detector"]
        binning = _float(_get(header, "binning"))
        if binning is not None and binning >= 1 and binning.is_integer():  # absent or garbled: not known
            det["binning"] = int(binning)
        self._set(det, "sample_tilt", _float(_get(header, "sample_tilt")))
        self._set(det, "camera_tilt", _float(_get(header, "elevation_angle")))
        self._set(det, "azimuthal", _float(_get(header, "azimuth_angle")))
        px = _float(_get(header, "detector_pixel_size"))
        if px and px > 0:
            det["px_size_um"] = px
        energy = _float(_get(sem, "beam_energy"))
        if energy and energy > 0:
            attrs["beam_energy_kv"] = energy
        steps = _float(_get(header, "step_y")), _float(_get(header, "step_x"))
        if all(s and s > 0 for s in steps):
            attrs["step_size"] = {"y": steps[0], "x": steps[1], "unit": "um"}
        exposure = _float(_get(header, "exposure_time"))
        if exposure is not None and exposure >= 0:
            attrs["exposure_s"] = exposure
        variables: dict[str, Variable] = {}
        notes: list[str] = []
        pc = _pc_arrays(_get(header, "pcx", "xpc"), _get(header, "pcy", "ypc"), _get(header, "pcz", "zpc"),
                        ny * nx, (ny, nx))
        self._background(_get(header, "static_background"), (sy, sx), variables)
        phases: list[dict[str, Any]] = []
        if "EBSD/CrystalMap/crystal_map" in group:
            try:
                from kikuchipy.io.plugins._h5ebsd import _hdf5group2dict
                from orix.io.plugins.orix_hdf5 import dict2crystalmap

                xmap = dict2crystalmap(_hdf5group2dict(group["EBSD/CrystalMap/crystal_map"], recursive=True))
                xmap_vars, phases = xmap_to_variables(xmap, (ny, nx))
                variables.update(xmap_vars)
                attrs["original_metadata"]["crystal_map_variables"] = sorted(xmap_vars)
            except Exception as exc:  # a damaged map must not stop the patterns
                notes.append(f"crystal map not read ({type(exc).__name__}: {exc})")
        if not phases and isinstance(_get(header, "Phases"), dict):
            phases = self._kikuchipy_header_phases(_get(header, "Phases"))
        attrs["phases"] = phases
        return self._finish(attrs, ny, nx, sy, sx, pc, "bruker", variables, notes)

    @staticmethod
    def _kikuchipy_header_phases(groups: dict[str, Any]) -> list[dict[str, Any]]:
        records = []
        for key, ph in groups.items():
            if not isinstance(ph, dict) or not str(key).isdigit():
                continue
            rec: dict[str, Any] = {"id": int(key), "name": str(_get(ph, "material_name", "name", default="") or
                                                             f"phase_{key}")}
            sg = _get(ph, "space_group")
            if isinstance(sg, (int, np.integer)) and 1 <= int(sg) <= 230:
                rec["space_group"] = int(sg)
            lat = np.asarray(_get(ph, "lattice_constants", default=[0] * 6), float).reshape(-1)
            if lat.size == 6 and np.all(lat[:3] > 0):
                rec["lattice"] = [float(v) for v in lat]
            records.append(rec)
        return records

    def _edax(self, group: h5py.Group, header: dict[str, Any], data: dict[str, Any]) -> Probe:
        ny, nx = int(_get(header, "nRows")), int(_get(header, "nColumns"))
        sy, sx = int(_get(header, "Pattern Height")), int(_get(header, "Pattern Width"))
        grid = _get(header, "Grid Type")
        if grid not in (None, "SqrGrid"):
            raise self.error(f"grid type {grid!r} is not supported", "convert scans on a square grid (SqrGrid)")
        attrs = self._base_attrs(header)
        det = attrs["detector"]
        self._set(det, "sample_tilt", _float(_get(header, "Sample Tilt")))
        self._set(det, "camera_tilt", _float(_get(header, "Camera Elevation Angle")))
        self._set(det, "azimuthal", _float(_get(header, "Camera Azimuthal Angle")))
        steps = _float(_get(header, "Step Y")), _float(_get(header, "Step X"))
        if all(s and s > 0 for s in steps):
            attrs["step_size"] = {"y": steps[0], "x": steps[1], "unit": "um"}
        energy = _float(_get(header, "Beam Energy", "KV", "Accelerating Voltage"))
        if energy and energy > 0:
            attrs["beam_energy_kv"] = energy
        cal = _get(header, "Pattern Center Calibration", default={}) or {}
        pc = _pc_arrays(_get(cal, "x-star"), _get(cal, "y-star"), _get(cal, "z-star"), ny * nx, (ny, nx))
        variables: dict[str, Variable] = {}
        notes: list[str] = []
        phases = []
        for key, ph in (_get(header, "Phase", default={}) or {}).items():
            if not isinstance(ph, dict) or not str(key).isdigit():
                continue
            rec: dict[str, Any] = {"id": int(key), "name": str(_get(ph, "MaterialName", "Formula") or f"phase_{key}")}
            lat = [_float(_get(ph, f"Lattice Constant {p}")) for p in ("a", "b", "c", "alpha", "beta", "gamma")]
            if all(v is not None for v in lat):
                lat_f = cast("list[float]", lat)  # every entry checked above
                if min(lat_f[:3]) > 0:
                    rec["lattice"] = [v / 10 for v in lat_f[:3]] + lat_f[3:]  # EDAX writes Angstrom; we store nm
            sym = _get(ph, "Symmetry")
            if isinstance(sym, (int, np.integer)) and int(sym) in _TSL_SYMMETRY:
                rec["point_group"] = _TSL_SYMMETRY[int(sym)]
            phases.append(rec)
        attrs["phases"] = phases
        n = ny * nx
        euler = [np.asarray(_get(data, k), float).reshape(-1) if _get(data, k) is not None else None
                 for k in ("Phi1", "Phi", "Phi2")]
        if all(e is not None and e.size == n for e in euler):
            phase = np.asarray(_get(data, "Phase", default=np.zeros(n)), int).reshape(-1)
            ids = [p["id"] for p in phases]
            if len(ids) == 1 and np.all(phase == 0):  # OIM writes 0 for the only phase
                phase = np.full(n, ids[0])
            scores = {k: np.asarray(v).reshape(-1) for k, v in data.items()
                      if k in ("CI", "IQ", "Fit", "SEM Signal", "Valid") and np.size(v) == n}
            cmap = euler_map_variables(np.stack(cast("list[np.ndarray]", euler), axis=-1), phase, scores, (ny, nx))
            variables.update(cmap)
            attrs["original_metadata"]["crystal_map_variables"] = sorted(cmap)
        return self._finish(attrs, ny, nx, sy, sx, pc, "edax", variables, notes)

    def _bruker(self, group: h5py.Group, header: dict[str, Any], data: dict[str, Any]) -> Probe:
        grid = _get(header, "Grid Type")
        if grid not in (None, "isometric"):
            raise self.error(f"grid type {grid!r} is not supported", "convert scans on a square (isometric) grid")
        sy, sx = int(_get(header, "PatternHeight")), int(_get(header, "PatternWidth"))
        ny, nx = int(_get(header, "NROWS")), int(_get(header, "NCOLS"))
        notes: list[str] = []
        sem_group = group.get("EBSD/SEM")
        if sem_group is not None and "IY" in sem_group and "IX" in sem_group:
            iy, ix = np.asarray(sem_group["IY"][()]).reshape(-1), np.asarray(sem_group["IX"][()]).reshape(-1)
            ny, nx = int(iy.max() - iy.min() + 1), int(ix.max() - ix.min() + 1)
            if ny * nx != iy.size or len(np.unique(iy * nx + ix)) != iy.size:
                raise self.error("the region of interest is not rectangular",
                                 "export a rectangular region of interest from Esprit")
            flat = (iy - iy.min()) * nx + (ix - ix.min())
            self._order = np.argsort(flat)  # file frame for each scan position
            if np.array_equal(self._order, np.arange(flat.size)):
                self._order = None
        attrs = self._base_attrs(header)
        det = attrs["detector"]
        self._set(det, "sample_tilt", _float(_get(header, "SampleTilt", "Sample Tilt")))
        self._set(det, "camera_tilt", _float(_get(header, "CameraTilt")))
        full_h, unclipped = _float(_get(header, "DetectorFullHeightMicrons")), _float(_get(header, "UnClippedPatternHeight"))
        if full_h is not None and unclipped:
            det["px_size_um"] = full_h / unclipped
        energy = _float(_get(header, "KV"))
        if energy and energy > 0:
            attrs["beam_energy_kv"] = energy
        steps = _float(_get(header, "YSTEP")), _float(_get(header, "XSTEP"))
        if all(s and s > 0 for s in steps):
            attrs["step_size"] = {"y": steps[0], "x": steps[1], "unit": "um"}
        n = ny * nx
        variables: dict[str, Variable] = {}

        def in_scan_order(a: ArrayLike) -> np.ndarray:
            a = np.asarray(a).reshape(-1)
            return a[self._order] if self._order is not None and a.size == n else a

        pcs = [_get(data, k) for k in ("PCX", "PCY", "DD")]
        pc = None
        if all(p is not None for p in pcs):
            pc_x, pc_y, pc_z = (in_scan_order(p) for p in pcs)
            pc = _pc_arrays(pc_x, pc_y, pc_z, n, (ny, nx))
        self._background(_get(header, "StaticBackground"), (sy, sx), variables)
        phases = []
        for key, ph in (_get(header, "Phases", default={}) or {}).items():
            if not isinstance(ph, dict) or not str(key).isdigit():
                continue
            rec: dict[str, Any] = {"id": int(key), "name": str(_get(ph, "Name", "Formula") or f"phase_{key}")}
            sg = _get(ph, "IT")
            if isinstance(sg, (int, np.integer)) and 1 <= int(sg) <= 230:
                rec["space_group"] = int(sg)
            lat = np.asarray(_get(ph, "LatticeConstants", default=[0] * 6), float).reshape(-1)
            if lat.size == 6 and np.all(lat[:3] > 0):
                rec["lattice"] = [float(v) / 10 for v in lat[:3]] + [float(v) for v in lat[3:]]  # Angstrom -> nm
            atoms = []
            for text in (_get(ph, "AtomPositions", default={}) or {}).values():
                parts = str(text).split(",")
                try:
                    atoms.append({"element": parts[0], "xyz": [float(v) for v in parts[1:4]],
                                  "occupancy": float(parts[4]) if len(parts) > 4 else 1.0})
                except (ValueError, IndexError):
                    continue
            rec["atoms"] = atoms
            phases.append(rec)
        attrs["phases"] = phases
        euler = [_get(data, k) for k in ("phi1", "PHI", "phi2")]
        if all(e is not None and np.size(e) == n for e in euler):
            phase = in_scan_order(_get(data, "Phase", default=np.zeros(n))).astype(int)
            phase = np.where(phase == 0, -1, phase)  # Esprit: 0 = not indexed
            scores = {k: in_scan_order(v) for k, v in data.items()
                      if k in ("MAD", "MADPhase", "NIndexedBands", "RadonBandCount", "RadonQuality")
                      and np.size(v) == n}
            cmap = euler_map_variables(np.deg2rad(np.stack([in_scan_order(e) for e in euler], -1)), phase,
                                       scores, (ny, nx))
            variables.update(cmap)
            attrs["original_metadata"]["crystal_map_variables"] = sorted(cmap)
        return self._finish(attrs, ny, nx, sy, sx, pc, "bruker", variables, notes)

    def _oxford(self, group: h5py.Group, header: dict[str, Any], data: dict[str, Any]) -> Probe:
        ny, nx = int(_get(header, "Y Cells")), int(_get(header, "X Cells"))
        sy, sx = int(_get(header, "Pattern Height")), int(_get(header, "Pattern Width"))
        attrs = self._base_attrs(header)
        det = attrs["detector"]
        tilt = _float(_get(header, "Tilt Angle"))
        if tilt is not None:
            det["sample_tilt"] = math.degrees(tilt)  # H5OINA stores radians
        euler = _get(header, "Detector Orientation Euler")
        if euler is not None and np.size(euler) == 3:
            det["camera_tilt"] = math.degrees(float(np.asarray(euler).reshape(-1)[1])) - 90
        mode = _get(header, "Camera Mode", "Camera Binning Mode")
        match = re.findall(r"\((\d+)x(\d+) px\)", str(mode or ""))
        if len(match) == 1:
            height = int(match[0][1])
            det["binning"] = 8 if height == 88 else max(1, round(1024 / height))
        energy = _float(_get(header, "Beam Voltage"))
        if energy and energy > 0:
            attrs["beam_energy_kv"] = energy
        steps = _float(_get(header, "Y Step")), _float(_get(header, "X Step"))
        if all(s and s > 0 for s in steps):
            attrs["step_size"] = {"y": steps[0], "x": steps[1], "unit": "um"}
        n = ny * nx
        variables: dict[str, Variable] = {}
        pc = _pc_arrays(_get(data, "Pattern Center X"), _get(data, "Pattern Center Y"),
                        _get(data, "Detector Distance"), n, (ny, nx))
        self._background(_get(header, "Processed Static Background"), (sy, sx), variables)
        phases = []
        for key, ph in (_get(header, "Phase", default={}) or {}).items():
            if not isinstance(ph, dict) or not str(key).isdigit():
                continue
            rec: dict[str, Any] = {"id": int(key), "name": str(_get(ph, "Phase Name", "Reference") or f"phase_{key}")}
            sg = _get(ph, "Space Group")
            if isinstance(sg, (int, np.integer)) and 1 <= int(sg) <= 230:
                rec["space_group"] = int(sg)
            dims, angles = _get(ph, "Lattice Dimensions"), _get(ph, "Lattice Angles")
            if dims is not None and angles is not None and np.size(dims) == 3 and np.size(angles) == 3:
                dims = np.asarray(dims, float).reshape(-1)
                angles = np.asarray(angles, float).reshape(-1)
                if np.all(angles < 3.2):  # radians in H5OINA
                    angles = np.degrees(angles)
                if np.all(dims > 0):
                    scale = 0.1 if dims.max() > 1.5 else 1.0  # Angstrom -> nm
                    rec["lattice"] = [float(v) * scale for v in dims] + [float(v) for v in angles]
            phases.append(rec)
        attrs["phases"] = phases
        eul = _get(data, "Euler")
        if eul is not None and np.size(eul) == 3 * n:
            phase = np.asarray(_get(data, "Phase", default=np.zeros(n)), int).reshape(-1)
            phase = np.where(phase == 0, -1, phase)  # H5OINA: 0 = not indexed
            scores = {k: np.asarray(v).reshape(-1) for k, v in data.items()
                      if k in ("Band Contrast", "Band Slope", "Bands", "Error", "Mean Angular Deviation",
                               "Pattern Quality") and np.size(v) == n}
            cmap = euler_map_variables(np.asarray(eul, float).reshape(n, 3), phase, scores, (ny, nx))
            variables.update(cmap)
            attrs["original_metadata"]["crystal_map_variables"] = sorted(cmap)
        return self._finish(attrs, ny, nx, sy, sx, pc, "oxford", variables, [])

    # -- streaming -----------------------------------------------------------
    def _iter_frames(self, batch: int) -> Iterator[np.ndarray]:
        probe = self.probe()
        dset = self._dset
        if dset.ndim == 2:  # a single pattern stored without a frame axis
            yield np.asarray(dset[()])[None]
            return
        yield from iter_dataset_frames(dset, 0, probe.n_frames, batch, self._order)


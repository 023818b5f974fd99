"""HyperSpy ``.hspy`` files (HDF5) holding a 2-D signal per scan point.

The layout is ``/Experiments/<title>/data`` with one ``axis-i`` group per
array axis (``name, size, scale, offset, units, navigate``) and the
metadata tree as group attributes. Navigation axes come first in array
order, so the last two axes must be the signal (detector) axes.

Modality is taken from ``metadata.Signal.signal_type`` (``EBSD`` -> ebsd,
``TKD`` -> tkd) and a non-zero precession angle (-> sped); any other 2-D
diffraction signal is 4D-STEM. The signal-axis scale becomes
``detector.calibration``.

Examples
--------
>>> modality_from_metadata({"Signal": {"signal_type": "EBSD"}})
'ebsd'
>>> modality_from_metadata({"Signal": {"signal_type": "electron_diffraction"}})
'4dstem'
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.flow.readers.base import Probe, Reader, jsonable
from diffraflow.flow.readers.hdf5 import group_to_dict, is_hdf5, iter_dataset_frames, open_h5
from diffraflow.schemas.cube import normalise_length_unit

if TYPE_CHECKING:
    import h5py

__all__ = ["HspyReader", "modality_from_metadata", "is_hspy_file"]

_UNITS = {"$A^{-1}$": "1/A", "$\\AA^{-1}$": "1/A", "$nm^{-1}$": "1/nm", "Å⁻¹": "1/A", "nm⁻¹": "1/nm"}


def is_hspy_file(h5file: h5py.File) -> bool:
    """Whether an open HDF5 file is a HyperSpy file.

    Examples
    --------
    >>> import h5py, io
    >>> is_hspy_file(h5py.File(io.BytesIO(), "w"))
    False
    """
    fmt = h5file.attrs.get("file_format", b"")
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    return fmt.lower() == "hyperspy" or "Experiments" in h5file


def modality_from_metadata(md: dict[str, Any]) -> str:
    """Modality from a HyperSpy metadata tree (default ``4dstem``).

    Examples
    --------
    >>> modality_from_metadata({"Acquisition_instrument": {"TEM": {"precession_angle": 1.0}}})
    'sped'
    """
    signal_type = str((md.get("Signal") or {}).get("signal_type", "")).lower()
    if signal_type in ("ebsd", "ebsdmasterpattern"):
        return "ebsd"
    if signal_type == "tkd":
        return "tkd"
    tem = (md.get("Acquisition_instrument") or {}).get("TEM") or {}
    for key in ("precession_angle", "rocking_angle"):
        try:
            if float(tem.get(key, 0) or 0) > 0:
                return "sped"
        except (TypeError, ValueError):
            pass
    return "4dstem"


class HspyReader(Reader):
    """Reader of HyperSpy ``.hspy`` files with 2-D signals.

    Examples
    --------
    >>> # HspyReader("ped.hspy").probe().attrs["detector"]["calibration"]
    """

    format_name = "hspy"
    extensions = ("hspy",)
    modality = None

    def __init__(self, path: str | os.PathLike[str], *, experiment: str | None = None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.experiment = experiment
        self._file: Any = None

    @classmethod
    def sniff(cls, head: bytes, path: Path) -> bool:
        return is_hdf5(head)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _probe(self) -> Probe:
        f = self._file = open_h5(self.path)
        if "Experiments" not in f or not len(f["Experiments"]):
            raise self.error("no /Experiments group", "pass a file written by HyperSpy (.hspy)")
        names = list(f["Experiments"])
        name = self.experiment or names[0]
        if name not in f["Experiments"]:
            raise self.error(f"no experiment {name!r}; the file has {names}", f"use one of {names}")
        group = f["Experiments"][name]
        if "data" not in group:
            raise self.error(f"experiment {name!r} has no data", "pass a HyperSpy file with data")
        dset = group["data"]
        axes = []
        for i in range(dset.ndim):
            ax = group.get(f"axis-{i}")
            record = {k: jsonable(v) for k, v in (ax.attrs.items() if ax is not None else [])}
            axes.append(record)
        navigate = [bool(ax.get("navigate", i < dset.ndim - 2)) for i, ax in enumerate(axes)]
        if dset.ndim < 2 or any(navigate[-2:]) or not all(navigate[:-2]):
            raise self.error(f"data of shape {list(dset.shape)} is not a stack of 2-D signals "
                             f"(navigate flags {navigate})", "convert a HyperSpy Signal2D (diffraction patterns)")
        nav = tuple(int(s) for s in dset.shape[:-2])
        det = (int(dset.shape[-2]), int(dset.shape[-1]))
        n = int(np.prod(nav)) if nav else 1
        notes: list[str] = []
        if len(nav) == 0:
            scan: tuple[int, int] | None = (1, 1)
        elif len(nav) == 1:
            scan = (1, nav[0])
        elif len(nav) == 2:
            scan = nav
        else:
            scan = None
            notes.append(f"{len(nav)} navigation axes {list(nav)}: give --scan-shape to flatten them")
        md = group_to_dict(group["metadata"], attrs=True) if "metadata" in group else {}
        omd = group_to_dict(group["original_metadata"], attrs=True, max_size=10_000) if "original_metadata" in group else {}
        attrs: dict[str, Any] = {"modality": modality_from_metadata(md), "detector": {"shape": list(det)},
                                 "original_metadata": {"metadata": jsonable(md), "original_metadata": jsonable(omd),
                                                       "axes": axes, "experiment": name,
                                                       "package": jsonable(group.attrs.get("package", ""))}}
        sig_y, sig_x = axes[-2], axes[-1]
        if sig_y.get("scale") is not None:
            units = str(sig_x.get("units", "") or "")
            cal: dict[str, Any] = {"units": _UNITS.get(units, units), "offset": [sig_y.get("offset", 0.0),
                                                                                  sig_x.get("offset", 0.0)]}
            if sig_y.get("scale") == sig_x.get("scale"):
                cal["scale"] = sig_x.get("scale")
            else:
                cal["scale_y"], cal["scale_x"] = sig_y.get("scale"), sig_x.get("scale")
            attrs["detector"]["calibration"] = cal
        nav_axes = [ax for ax, nv in zip(axes, navigate, strict=True) if nv]
        if len(nav_axes) == 2:
            unit_set = {str(ax.get("units", "")) for ax in nav_axes}
            scales: list[Any] = [ax.get("scale") for ax in nav_axes]
            unit = unit_set.pop() if len(unit_set) == 1 else ""
            length = normalise_length_unit(unit)
            if length is not None and all(isinstance(s, (int, float)) and 0 < s < float("inf") for s in scales):
                attrs["step_size"] = {"y": float(scales[0]), "x": float(scales[1]), "unit": length}
        tem = (md.get("Acquisition_instrument") or {}).get("TEM") or (md.get("Acquisition_instrument") or {}).get("SEM") or {}
        try:
            energy = float(tem.get("beam_energy", 0) or 0)
            if energy > 0:
                attrs["beam_energy_kv"] = energy
        except (TypeError, ValueError):
            pass
        self._dset, self._nav = dset, nav
        return Probe(n_frames=n, scan_shape=scan, det_shape=det, dtype=np.dtype(dset.dtype).newbyteorder("="),
                     attrs=attrs, notes=notes)

    def _iter_frames(self, batch: int) -> Iterator[np.ndarray]:
        probe = self.probe()
        dset, nav = self._dset, self._nav
        if len(nav) == 0:
            yield np.asarray(dset[()])[None].astype(probe.dtype, copy=False)
        elif len(nav) == 1:
            for block in iter_dataset_frames(dset, 0, nav[0], batch):
                yield block.astype(probe.dtype, copy=False)
        elif len(nav) == 2:
            yield from self._iter_2d(batch)
        else:  # flatten extra navigation axes by reading along the first one
            inner = int(np.prod(nav[1:]))
            for i in range(nav[0]):
                block = np.asarray(dset[i]).reshape(inner, *probe.det_shape)
                for lo in range(0, inner, batch):
                    yield block[lo:lo + batch].astype(probe.dtype, copy=False)

    def _iter_2d(self, batch: int) -> Iterator[np.ndarray]:
        probe = self.probe()
        dset = self._dset
        ny, nx = self._nav
        cy, cx = (dset.chunks[0], dset.chunks[1]) if dset.chunks else (1, nx)
        if nx <= batch:
            # Whole rows, rounded to whole chunk rows so no chunk is decompressed twice.
            rows = max(cy, (max(1, batch // nx) // cy) * cy)
            for y0 in range(0, ny, rows):
                block = np.asarray(dset[y0:y0 + rows])
                yield block.reshape(-1, *probe.det_shape).astype(probe.dtype, copy=False)
        else:
            cols = max(cx, (batch // cx) * cx)
            for y in range(ny):
                for x0 in range(0, nx, cols):
                    yield np.asarray(dset[y, x0:x0 + cols]).astype(probe.dtype, copy=False)

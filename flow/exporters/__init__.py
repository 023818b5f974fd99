"""Exporters of crystal maps to files other programs read, chosen by extension.

=========  ==============================================  ============================
extension  format                                          writer
=========  ==============================================  ============================
``.ang``   EDAX/TSL OIM text                               :func:`~diffraflow.flow.exporters.ang.write_ang`
``.ctf``   Oxford Channel 5 / AZtec text                   :func:`~diffraflow.flow.exporters.ctf.write_ctf`
``.h5``    orix HDF5 (``orix.io.save``), also ``.hdf5``    :func:`~diffraflow.flow.exporters.orix_h5.write_orix_h5`
``.png``   IPF, confidence, fit and phase pictures         :func:`diffraflow.flow.plots_crystal.write_crystal_map_pngs`
=========  ==============================================  ============================

Every writer takes ``(xmap, path, overwrite=False, metadata=None)``: an orix
``CrystalMap``, the output path, and the scan metadata (``ScanAttrs`` dict) for
vendor headers. Output is written under a temporary name and renamed.

Decompositions (``decomposition`` product) have their own writers,
:data:`DECOMPOSITION_EXPORTERS`: ``.hspy`` (HyperSpy, with the results as
the signal's ``learning_results``;
:func:`~diffraflow.flow.exporters.hspy.write_decomposition_hspy`), through
:func:`export_decomposition`.

Examples
--------
>>> sorted(EXPORTERS)
['.ang', '.ctf', '.h5', '.hdf5', '.png']
>>> exporter_for("map.txt")
Traceback (most recent call last):
...
diffraflow.schemas.errors.UnknownFormatError: map.txt: unknown export format '.txt' (fix: use an output ending in .ang, .ctf, .h5, .hdf5 or .png)
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from diffraflow.schemas.errors import UnknownFormatError

__all__ = ["EXPORTERS", "exporter_for", "export_crystal_map", "DECOMPOSITION_EXPORTERS", "export_decomposition"]

#: Extension -> "module:function" of the writer (imported on use).
EXPORTERS: dict[str, str] = {
    ".ang": "diffraflow.flow.exporters.ang:write_ang",
    ".ctf": "diffraflow.flow.exporters.ctf:write_ctf",
    ".h5": "diffraflow.flow.exporters.orix_h5:write_orix_h5",
    ".hdf5": "diffraflow.flow.exporters.orix_h5:write_orix_h5",
    ".png": "diffraflow.flow.plots_crystal:write_crystal_map_pngs",
}

#: Extension -> "module:function" of the decomposition writers (imported on use).
DECOMPOSITION_EXPORTERS: dict[str, str] = {
    ".hspy": "diffraflow.flow.exporters.hspy:write_decomposition_hspy",
}


def exporter_for(path: str | os.PathLike[str]) -> Callable[..., Any]:
    """The writer for ``path``'s extension.

    Raises
    ------
    UnknownFormatError
        No exporter for that extension.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in EXPORTERS:
        raise UnknownFormatError(str(path), f"unknown export format {suffix or '(no extension)'!r}",
                                 "use an output ending in " + ", ".join(sorted(EXPORTERS)[:-1])
                                 + f" or {sorted(EXPORTERS)[-1]}")
    module, function = EXPORTERS[suffix].split(":")
    writer: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return writer


def export_crystal_map(xmap: Any, path: str | os.PathLike[str], overwrite: bool = False,
                       metadata: Mapping[str, Any] | None = None, ipf_direction: str = "z",
                       min_confidence: float | None = None) -> list[Path]:
    """Export an orix ``CrystalMap`` to ``path`` by its extension; return the files written.

    Points whose confidence is below ``min_confidence`` are written as not
    indexed, in each format's own way: ``.ang`` phase 0, CI -1, fit 180 and
    Euler angles 4 pi; ``.ctf`` phase 0 with error code 3 (no solution); orix
    ``.h5`` phase id -1; pictures draw them black, as not indexed.

    Parameters
    ----------
    xmap
        Crystal map, e.g. from :func:`diffraflow.flow.crystal_map.read_crystal_map`.
    path
        ``.ang``, ``.ctf``, ``.h5``/``.hdf5`` or ``.png`` (which writes
        ``OUT_ipf.png``, ``OUT_confidence.png``, ``OUT_fit.png``, ``OUT_phase.png``).
    overwrite
        Replace existing output.
    metadata
        Scan metadata for vendor headers.
    ipf_direction
        Sample direction of the IPF picture (``.png`` only).
    min_confidence
        Confidence threshold (``None``: every solution counts; the command line
        uses :data:`diffraflow.flow.crystal_map.MIN_CONFIDENCE`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from orix.crystal_map import CrystalMap, Phase, PhaseList
    >>> from orix.quaternion import Rotation
    >>> xmap = CrystalMap(Rotation.identity(2), phase_list=PhaseList(Phase("ni", point_group="m-3m")),
    ...                   prop={"confidence": np.array([0.5, 0.02])})
    >>> out = export_crystal_map(xmap, pathlib.Path(tempfile.mkdtemp()) / "m.ang", min_confidence=0.1)[0]
    >>> [line.split()[6:8] for line in out.read_text().splitlines() if not line.startswith("#")]
    [['0.5000', '1'], ['-1.0000', '0']]
    """
    from diffraflow.flow.crystal_map import apply_min_confidence

    writer = exporter_for(path)
    if Path(path).suffix.lower() == ".png":
        return list(writer(xmap, path, ipf_direction=ipf_direction, overwrite=overwrite,
                           min_confidence=min_confidence))
    return [writer(apply_min_confidence(xmap, min_confidence), path, overwrite=overwrite, metadata=metadata)]


def export_decomposition(results: str | os.PathLike[str], path: str | os.PathLike[str], *, step: str | None = None,
                         overwrite: bool = False, with_data: bool = False) -> list[Path]:
    """Export a decomposition step of a result store by ``path``'s extension (``.hspy``); return the files written.

    Raises
    ------
    UnknownFormatError
        No decomposition writer for that extension.

    Examples
    --------
    >>> export_decomposition("run.zarr", "nmf.txt")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.UnknownFormatError: nmf.txt: unknown decomposition export format '.txt' (fix: use an output ending in .hspy)
    """
    suffix = Path(path).suffix.lower()
    if suffix not in DECOMPOSITION_EXPORTERS:
        raise UnknownFormatError(str(path), f"unknown decomposition export format {suffix or '(no extension)'!r}",
                                 "use an output ending in " + ", ".join(sorted(DECOMPOSITION_EXPORTERS)))
    module, function = DECOMPOSITION_EXPORTERS[suffix].split(":")
    writer = getattr(importlib.import_module(module), function)
    return [writer(results, path, step=step, overwrite=overwrite, with_data=with_data)]

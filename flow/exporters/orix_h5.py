"""Write a crystal map as an orix HDF5 file (``orix.io.save``), readable by ``orix.io.load``.

Examples
--------
>>> import tempfile, pathlib
>>> from orix.crystal_map import CrystalMap
>>> from orix.quaternion import Rotation
>>> out = write_orix_h5(CrystalMap(Rotation.identity(2)), pathlib.Path(tempfile.mkdtemp()) / "m.h5")
>>> import orix.io; int(orix.io.load(out).size)
2
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffraflow.flow.exporters._common import atomic_write

if TYPE_CHECKING:
    from orix.crystal_map import CrystalMap

__all__ = ["write_orix_h5"]


def write_orix_h5(xmap: CrystalMap, path: str | os.PathLike[str], overwrite: bool = False,
                  metadata: Mapping[str, Any] | None = None) -> Path:
    """Write an orix ``CrystalMap`` with ``orix.io.save`` (the orix HDF5 layout).

    Parameters
    ----------
    xmap
        Crystal map.
    path
        Output ``.h5``/``.hdf5`` file; written under a temporary name and renamed.
    overwrite
        Replace an existing file.
    metadata
        Unused (orix's layout has no place for scan metadata); accepted so all
        exporters share one signature.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from orix.io import save

    def write(temp: Path) -> None:
        save(str(temp), xmap, overwrite=True)

    return atomic_write(path, overwrite, write)

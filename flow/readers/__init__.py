"""Input readers, one module per format, and format detection.

:data:`READERS` maps a format name to its :class:`~diffraflow.flow.readers.base.Reader`
class. :func:`detect_format` picks one from the file extension *and* the
first bytes (magic numbers), so that a renamed file is still recognised and
a garbled one is refused before any data moves; :func:`open_reader` returns
a ready reader.

========================= ================================= ===============
format                    extensions                        modality
========================= ================================= ===============
``h5ebsd`` (kikuchipy,    .h5 .hdf5 .h5ebsd .h5oina          ebsd
EDAX, Bruker, Oxford)
``edax_binary``           .up1 .up2                          ebsd
``oxford_binary``         .ebsp                              ebsd
``nordif``                .dat (+ Setting.txt)               ebsd
``blockfile``             .blo                               sped
``merlin``                .mib (+ .hdr)                      4dstem
``hspy``                  .hspy                              from metadata
``npy``                   .npy                               --modality
``tiff``                  .tif .tiff (multi-page)            --modality
``image_stack``           directory, glob or list of         --modality
                          .png .jpg .bmp .tif
========================= ================================= ===============

Examples
--------
>>> sorted(READERS)[:3]
['blockfile', 'edax_binary', 'h5ebsd']
>>> detect_format(["/no/such/file.up1"])
Traceback (most recent call last):
...
diffraflow.schemas.errors.InputFileError: /no/such/file.up1: no such file (fix: check the path)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffraflow.flow.readers.base import Probe, Reader, Variable
from diffraflow.flow.readers.blockfile import BlockfileReader
from diffraflow.flow.readers.edax_binary import EDAXBinaryReader
from diffraflow.flow.readers.h5ebsd import H5EBSDReader
from diffraflow.flow.readers.hdf5 import is_hdf5, open_h5
from diffraflow.flow.readers.hspy import HspyReader, is_hspy_file
from diffraflow.flow.readers.images import ImageStackReader, TiffReader
from diffraflow.flow.readers.merlin import MerlinReader
from diffraflow.flow.readers.nordif import NordifReader
from diffraflow.flow.readers.numpy_file import NpyReader
from diffraflow.flow.readers.oxford_binary import OxfordBinaryReader
from diffraflow.flow.readers.rawio import read_head
from diffraflow.schemas.errors import InputFileError, TruncatedFileError, UnknownFormatError

__all__ = ["READERS", "Probe", "Reader", "Variable", "detect_format", "open_reader", "supported_extensions"]

#: Format name -> reader class.
READERS: dict[str, type[Reader]] = {
    cls.format_name: cls
    for cls in (H5EBSDReader, HspyReader, EDAXBinaryReader, OxfordBinaryReader, NordifReader, BlockfileReader,
                MerlinReader, NpyReader, TiffReader, ImageStackReader)
}
# Formats whose magic bytes identify them whatever the extension (HDF5 is split by content).
_MAGIC_ORDER = (BlockfileReader, MerlinReader, NpyReader, TiffReader, ImageStackReader)


def supported_extensions() -> list[str]:
    """Every file extension a reader claims.

    Examples
    --------
    >>> "mib" in supported_extensions()
    True
    """
    return sorted({ext for cls in READERS.values() for ext in cls.extensions})


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _hdf5_kind(path: Path) -> type[Reader]:
    """hspy or h5ebsd, by looking inside the HDF5 file."""
    with open_h5(path) as f:
        if is_hspy_file(f):
            return HspyReader
        from diffraflow.flow.readers.h5ebsd import h5ebsd_flavour

        man, _ = h5ebsd_flavour(f)
    if man is None:
        raise UnknownFormatError(str(path), "HDF5 file is neither h5ebsd (no 'Manufacturer') nor HyperSpy",
                                 "convert an h5ebsd (kikuchipy, EDAX, Bruker, Oxford) or .hspy file")
    return H5EBSDReader


def detect_format(sources: Sequence[str | os.PathLike[str]]) -> type[Reader]:
    """The reader class for an input, from extension and magic bytes.

    Parameters
    ----------
    sources
        One path (file, directory or glob) or several image files.

    Raises
    ------
    InputFileError
        A path does not exist.
    UnknownFormatError
        No reader recognises the input.
    TruncatedFileError
        The extension names a format whose header is missing or garbled.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> p = Path(tempfile.mkdtemp()) / "a.npy"; np.save(p, np.zeros((2, 2, 3, 3)))
    >>> detect_format([p]).format_name
    'npy'
    """
    paths = [str(s) for s in sources]
    if not paths:
        raise InputFileError("input", "no input given", "name a file, a directory or a glob")
    if len(paths) > 1:
        return ImageStackReader
    text = paths[0]
    path = Path(text)
    if path.is_dir():
        return ImageStackReader
    if not path.exists():
        if _is_glob(text):
            return ImageStackReader
        raise InputFileError(text, "no such file", "check the path")
    head = read_head(path, 4096)
    ext = path.suffix.lower().lstrip(".")
    if not head:
        raise TruncatedFileError(text, "file is empty", "re-copy or re-export the file")
    if ext == "hspy" or (ext in H5EBSDReader.extensions and is_hdf5(head)) or is_hdf5(head):
        if not is_hdf5(head):
            raise TruncatedFileError(text, "no HDF5 signature at the start of the file",
                                     "the file is garbled or not HDF5: re-copy or re-export it")
        return _hdf5_kind(path)
    claimed = [cls for cls in READERS.values() if ext in cls.extensions]
    for cls in claimed:
        if cls is NordifReader or cls.sniff(head, path):
            return cls
    for cls in _MAGIC_ORDER:
        if cls.sniff(head, path):
            return cls
    if claimed:
        names = ", ".join(cls.format_name for cls in claimed)
        raise TruncatedFileError(text, f"header does not look like {names} (first bytes {head[:8]!r})",
                                 "the file is garbled or misnamed: re-copy or re-export it")
    raise UnknownFormatError(text, f"unknown format (extension {('.' + ext) if ext else 'none'!s}, first bytes "
                             f"{head[:8]!r})", "convert one of: " + ", ".join("." + e for e in supported_extensions())
                             + ", a directory of images, or a glob")


def open_reader(sources: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *, format: str | None = None,
                scan_shape: tuple[int, int] | None = None, det_shape: tuple[int, int] | None = None,
                **options: Any) -> Reader:
    """A reader for ``sources`` (detected, or forced with ``format``).

    Parameters
    ----------
    sources
        A path, directory or glob, or a list of image files.
    format
        Force a reader by name (see :data:`READERS`).
    scan_shape, det_shape
        ``--scan-shape`` / ``--det-shape`` for formats that need them.
    options
        Reader-specific keywords (``scan_group``, ``setting_file``...);
        keywords a reader does not take are ignored.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> p = Path(tempfile.mkdtemp()) / "a.npy"; np.save(p, np.zeros((2, 3, 4, 4), "uint8"))
    >>> with open_reader(p) as r:
    ...     r.probe().scan_shape, next(r.iter_frames()).shape
    ((2, 3), (6, 4, 4))
    """
    paths = [str(sources)] if isinstance(sources, (str, os.PathLike)) else [str(s) for s in sources]
    if format is not None:
        if format not in READERS:
            raise UnknownFormatError("--format", f"unknown format {format!r}", f"use one of {', '.join(sorted(READERS))}")
        cls = READERS[format]
    else:
        cls = detect_format(paths)
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters)
    kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
    if cls is ImageStackReader:
        kwargs["files"] = paths if len(paths) > 1 else None
    if len(paths) > 1 and cls is not ImageStackReader:
        raise InputFileError(paths[0], f"{len(paths)} inputs given but {cls.format_name} reads one file",
                             "give one file, or a list of image files")
    return cls(paths[0], scan_shape=scan_shape, det_shape=det_shape, **kwargs)


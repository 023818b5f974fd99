"""HDF5 helpers shared by the h5ebsd and hspy readers.

Examples
--------
>>> HDF5_MAGIC
b'\\x89HDF\\r\\n\\x1a\\n'
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.schemas.errors import TruncatedFileError

if TYPE_CHECKING:
    import h5py

__all__ = ["HDF5_MAGIC", "is_hdf5", "open_h5", "group_to_dict", "scalar", "iter_dataset_frames"]

#: The HDF5 signature; it sits at byte 0 or after a user block of 512 * 2**k bytes.
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_hdf5(head: bytes) -> bool:
    """Whether the first bytes carry the HDF5 signature (no user block).

    Examples
    --------
    >>> is_hdf5(HDF5_MAGIC + b"rest"), is_hdf5(b"PK")
    (True, False)
    """
    return head.startswith(HDF5_MAGIC)


def open_h5(path: Path) -> h5py.File:
    """Open an HDF5 file read-only, turning h5py's errors into one-line errors.

    Raises
    ------
    TruncatedFileError
        The file is cut short or is not HDF5.

    Examples
    --------
    >>> open_h5(Path("/nonexistent.h5"))
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.TruncatedFileError: /nonexistent.h5: cannot open as HDF5 (FileNotFoundError) (fix: check the path; a truncated or garbled HDF5 file cannot be read)
    """
    import h5py

    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        text = str(exc).split("(")[0].strip().rstrip(",")
        detail = "truncated file" if "truncated" in str(exc) else (text or type(exc).__name__)
        if isinstance(exc, FileNotFoundError):
            detail = "FileNotFoundError"
        raise TruncatedFileError(str(path), f"cannot open as HDF5 ({detail})",
                                 "check the path; a truncated or garbled HDF5 file cannot be read") from None


def scalar(value: Any) -> Any:
    """A one-element array as a Python scalar; bytes decoded.

    Examples
    --------
    >>> scalar(np.array([b"Ni"])), scalar(np.array([3]))
    ('Ni', 3)
    """
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.names is None:
        value = value.reshape(-1)[0]
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("latin-1").rstrip("\x00").strip()
    if isinstance(value, np.generic):
        return value.item()
    return value


def group_to_dict(group: h5py.Group, skip: tuple[str, ...] = (), max_size: int = 1_000_000, attrs: bool = False) -> dict[str, Any]:
    """Datasets (and sub-groups) of an HDF5 group as a nested dict.

    Datasets named in ``skip`` and datasets larger than ``max_size`` elements
    are left out, so pattern arrays are never read. Keys are stripped of
    surrounding blanks (EDAX writes some with a leading space).

    Parameters
    ----------
    attrs
        Read group attributes as well (HyperSpy stores metadata there).

    Examples
    --------
    >>> import h5py, io
    >>> f = h5py.File(io.BytesIO(), "w"); f["a/b"] = [1.5]; f["a/c"] = np.zeros(10)
    >>> group_to_dict(f, max_size=5)
    {'a': {'b': 1.5}}
    """
    import h5py

    out: dict[str, Any] = {}
    if attrs:
        for key, value in group.attrs.items():
            out[str(key).strip()] = scalar(np.asarray(value) if isinstance(value, np.ndarray) else value)
    for key, item in group.items():
        name = str(key).strip()
        if key in skip or name in skip:
            continue
        if isinstance(item, h5py.Group):
            out[name] = group_to_dict(item, skip, max_size, attrs)
        elif isinstance(item, h5py.Dataset):
            if item.size > max_size or item.dtype.kind == "O" and item.size > 1000:
                continue
            try:
                out[name] = scalar(item[()])
            except (OSError, TypeError, ValueError):  # unreadable vendor blobs
                continue
    return out


def iter_dataset_frames(dset: h5py.Dataset, start: int, stop: int, batch: int, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Read frames ``start:stop`` of a ``(n, det_y, det_x)`` dataset in batches.

    Batches are rounded to whole HDF5 chunks along the frame axis so that no
    chunk is decompressed twice; ``order`` maps scan position to file frame
    (Bruker regions of interest) and is read with sorted fancy indexing.

    Examples
    --------
    >>> import h5py, io
    >>> f = h5py.File(io.BytesIO(), "w"); d = f.create_dataset("p", data=np.arange(24).reshape(6, 2, 2), chunks=(4, 2, 2))
    >>> [b.shape[0] for b in iter_dataset_frames(d, 0, 6, 3)]
    [4, 2]
    """
    chunks = dset.chunks
    if chunks is not None and order is None:
        batch = max(chunks[0], (batch // chunks[0]) * chunks[0])
    for lo in range(start, stop, batch):
        hi = min(stop, lo + batch)
        if order is None:
            yield np.asarray(dset[lo:hi])
        else:
            wanted = order[lo:hi]
            sort = np.argsort(wanted)
            block = np.asarray(dset[np.asarray(wanted)[sort]])
            out = np.empty_like(block)
            out[sort] = block
            yield out

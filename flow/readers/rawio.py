"""Streaming reads of fixed-size records from binary files.

``np.fromfile`` with an offset reads exactly one batch into a fresh buffer;
unlike a long-lived ``np.memmap`` it does not leave every page it touched
mapped into the process (which would make the resident set grow to the file
size during a conversion).

Examples
--------
>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "f.bin"
>>> np.arange(12, dtype="uint8").tofile(p)
>>> read_records(p, 4, 2, np.dtype(("uint8", (2, 2)))).tolist()
[[[4, 5], [6, 7]], [[8, 9], [10, 11]]]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from diffraflow.schemas.errors import TruncatedFileError

__all__ = ["read_records", "read_head"]


def read_records(path: Path, offset: int, count: int, dtype: np.dtype) -> np.ndarray:
    """Read ``count`` records of ``dtype`` starting at byte ``offset``.

    Raises
    ------
    TruncatedFileError
        The file ends before ``count`` records.
    """
    dtype = np.dtype(dtype)
    with open(path, "rb") as fh:
        out = np.fromfile(fh, dtype=dtype, count=count, offset=offset)
    if len(out) != count:
        raise TruncatedFileError(str(path), f"file ends after {len(out)} of {count} records at byte {offset}",
                                 "the file is truncated: re-copy or re-export it")
    return out


def read_head(path: Path, n: int = 4096) -> bytes:
    """The first ``n`` bytes of a file (fewer if it is shorter).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "h.bin"; _ = p.write_bytes(b"IMGBLO...")
    >>> read_head(p, 6)
    b'IMGBLO'
    """
    with open(path, "rb") as fh:
        return fh.read(n)

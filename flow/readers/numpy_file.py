"""NumPy ``.npy`` arrays of patterns: ``(scan_y, scan_x, det_y, det_x)``, ``(n, det_y, det_x)`` or one frame.

The header is parsed with :mod:`numpy.lib.format`; C-ordered data is read
batch by batch with ``np.fromfile`` at the data offset, so nothing beyond a
batch is held in memory.

Examples
--------
>>> NpyReader.sniff(b"\\x93NUMPY\\x01\\x00", Path("a.npy"))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
from diffraflow.flow.readers.base import Probe, Reader, batched, check_file_size
from diffraflow.flow.readers.rawio import read_records

__all__ = ["NpyReader"]


class NpyReader(Reader):
    """Reader of ``.npy`` files.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.npy"; np.save(p, np.zeros((2, 3, 4, 5), "uint16"))
    >>> NpyReader(p).probe().scan_shape
    (2, 3)
    """

    format_name = "npy"
    extensions = ("npy",)
    modality = None

    @classmethod
    def sniff(cls, head: bytes, path: Path) -> bool:
        return head.startswith(b"\x93NUMPY")

    def _probe(self) -> Probe:
        from numpy.lib import format as npformat

        try:
            with open(self.path, "rb") as fh:
                version = npformat.read_magic(fh)
                read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
                shape, fortran, dtype = read(fh)
                offset = fh.tell()
        except (ValueError, OSError, SyntaxError) as exc:
            raise self.truncated(f"garbled .npy header ({exc})", "re-save the array with numpy.save") from None
        if dtype.hasobject or dtype.names or dtype.kind not in "biuf":
            raise self.error(f"dtype {dtype} cannot hold patterns", "save patterns as integers or floats")
        notes: list[str] = []
        if len(shape) == 4:
            scan, det = (shape[0], shape[1]), (shape[2], shape[3])
        elif len(shape) == 3:
            scan, det = None, (shape[1], shape[2])
            if self.scan_shape_hint is None:
                scan = (1, shape[0])
                notes.append(f"3-D array of {shape[0]} frames stored as one row (use --scan-shape ROWS COLS)")
        elif len(shape) == 2:
            scan, det = (1, 1), shape
        else:
            raise self.error(f"array of shape {list(shape)} is not a stack of 2-D patterns",
                             "save an array shaped (scan_y, scan_x, det_y, det_x) or (n, det_y, det_x)")
        n = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        check_file_size(self.path, offset + n * int(np.prod(det)) * dtype.itemsize,
                        f"an array of shape {list(shape)} {dtype}")
        self._offset, self._fortran, self._file_dtype, self._shape = offset, fortran, dtype, shape
        return Probe(n_frames=n, scan_shape=scan, det_shape=cast("tuple[int, int]", tuple(int(v) for v in det)),
                     dtype=dtype.newbyteorder("="), attrs={"detector": {"shape": list(det)}, "original_metadata": {
                         "npy_shape": list(shape), "npy_dtype": str(dtype), "fortran_order": bool(fortran)}},
                     notes=notes)

    def _iter_frames(self, batch: int) -> Iterator[np.ndarray]:
        probe = self.probe()
        if self._fortran:
            # Column-major frames are strided over the whole file: read them one by one through a memory map.
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
            nav = arr.shape[:-2]
            for lo, hi in batched(probe.n_frames, batch):
                index = zip(*np.unravel_index(np.arange(lo, hi), nav), strict=True) if nav else [()]
                yield np.stack([np.asarray(arr[tuple(int(i) for i in ix)], dtype=probe.dtype) for ix in index])
            del arr
            return
        record = np.dtype((self._file_dtype, probe.det_shape))
        for lo, hi in batched(probe.n_frames, batch):
            block = read_records(self.path, self._offset + lo * record.itemsize, hi - lo, record)
            yield block.astype(probe.dtype, copy=False)

"""EDAX TSL uncompressed pattern files ``.up1`` (uint8) and ``.up2`` (uint16).

Layout (little-endian), as documented by kikuchipy's reader:

* version 1: ``uint32 version, width, height, data_offset`` (16 bytes), then
  frames; the scan is one row of ``(size - offset) / frame_bytes`` frames.
* version >= 3: the same 16 bytes, ``uint8`` extra-patterns flag,
  ``uint32 n_columns, n_rows``, ``uint8`` hexagonal-grid flag,
  ``float64 step_x, step_y`` (42 bytes), then frames. A hexagonal grid is
  stored as one row (its points do not lie on a rectangle).

Examples
--------
>>> EDAXBinaryReader.sniff(np.array([1, 60, 60, 16], "<u4").tobytes(), Path("a.up1"))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.flow.readers.base import Probe, Reader, batched, check_file_size
from diffraflow.flow.readers.rawio import read_head, read_records

__all__ = ["EDAXBinaryReader"]


class EDAXBinaryReader(Reader):
    """Reader of EDAX ``.up1``/``.up2`` files.

    Examples
    --------
    >>> # EDAXBinaryReader("scan.up2").probe().scan_shape
    """

    format_name = "edax_binary"
    extensions = ("up1", "up2")
    modality = "ebsd"

    @classmethod
    def sniff(cls, head: bytes, path: Path) -> bool:
        if len(head) < 16 or path.suffix.lower() not in (".up1", ".up2"):
            return False
        version, sx, sy, offset = (int(v) for v in np.frombuffer(head[:16], "<u4"))
        return version in (1, 3, 4, 5) and 0 < sx < 65536 and 0 < sy < 65536 and offset >= 16

    def _probe(self) -> Probe:
        dtype = np.dtype("<u2") if self.path.suffix.lower() == ".up2" else np.dtype("u1")
        head = read_head(self.path, 42)
        if len(head) < 16:
            raise self.truncated(f"file has {len(head)} bytes, the header alone needs 16")
        version, sx, sy, offset = (int(v) for v in np.frombuffer(head[:16], "<u4"))
        if version not in (1, 3, 4, 5) or not (0 < sx < 65536 and 0 < sy < 65536) or offset < 16:
            raise self.truncated(f"garbled header: version {version}, pattern {sx} x {sy}, data offset {offset}",
                                 "this is not an EDAX .up1/.up2 file, or its header is damaged")
        size = self.path.stat().st_size
        frame_bytes = sx * sy * dtype.itemsize
        om: dict[str, Any] = {"version": version, "data_offset": offset}
        attrs: dict[str, Any] = {"modality": "ebsd", "detector": {"shape": [sy, sx], "pc_convention": "edax"},
                       "original_metadata": om}
        notes: list[str] = []
        hexagonal = False
        if version == 1:
            n, rem = divmod(size - offset, frame_bytes)
            if rem:
                raise self.truncated(f"{size - offset} data bytes are not a whole number of {sx} x {sy} "
                                     f"{dtype.name} patterns ({n} and {rem} bytes)")
            scan = (1, n)
        else:
            if len(head) < 42 or offset < 42:
                raise self.truncated(f"version {version} header needs 42 bytes, data offset is {offset}")
            nx, ny = (int(v) for v in np.frombuffer(head[17:25], "<u4"))
            hexagonal = bool(head[25])
            step_x, step_y = (float(v) for v in np.frombuffer(head[26:42], "<f8"))
            om.update({"n_columns": nx, "n_rows": ny, "hexagonal_grid": hexagonal,
                       "step_x": step_x, "step_y": step_y})
            if step_x > 0 and step_y > 0:
                attrs["step_size"] = {"y": step_y, "x": step_x, "unit": "um"}
            if hexagonal:
                n, rem = divmod(size - offset, frame_bytes)
                if rem:
                    raise self.truncated(f"{size - offset} data bytes are not a whole number of patterns")
                scan = (1, n)
                notes.append(f"hexagonal grid ({ny} rows x {nx} columns) stored as one row of {n} patterns")
            else:
                scan = (ny, nx)
                n = ny * nx
                check_file_size(self.path, offset + n * frame_bytes, f"{ny} x {nx} patterns of {sx} x {sy}")
        self._offset, self._dtype = offset, dtype
        return Probe(n_frames=scan[0] * scan[1], scan_shape=scan, det_shape=(sy, sx),
                     dtype=dtype.newbyteorder("="), attrs=attrs, notes=notes)

    def _iter_frames(self, batch: int) -> Iterator[np.ndarray]:
        probe = self.probe()
        record = np.dtype((self._dtype, probe.det_shape))
        for lo, hi in batched(probe.n_frames, batch):
            block = read_records(self.path, self._offset + lo * record.itemsize, hi - lo, record)
            yield block.astype(probe.dtype, copy=False)

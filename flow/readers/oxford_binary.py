"""Oxford Instruments uncompressed pattern files ``.ebsp``.

Layout (little-endian), as documented by kikuchipy's reader:

* an ``int64`` holding ``-version`` (version 0 files start with the table);
* a table of ``int64`` byte positions, one per scan point (0 = not stored),
  starting at byte 0 (v0), 8 (v1-3) or 9 (v4+); the table ends where the
  first pattern begins, which gives the number of points *exactly*;
* per pattern: a header of ``int32`` (``map_x, map_y`` from v5 on, then
  ``is_compressed, rows, cols, n_bytes``), the pixels (uint8 or uint16),
  and a footer with the beam position (``float64 x, y`` in v1;
  ``bool has_x [float64 x] bool has_y [float64 y]`` from v2 on).

The scan shape comes from the beam positions of the first, second and last
patterns, as kikuchipy does.

Examples
--------
>>> OxfordBinaryReader.sniff(np.array([-2], "<i8").tobytes(), Path("a.ebsp"))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.flow.readers.base import Probe, Reader, batched
from diffraflow.flow.readers.rawio import read_head, read_records

__all__ = ["OxfordBinaryReader"]


class OxfordBinaryReader(Reader):
    """Reader of Oxford ``.ebsp`` files (uncompressed).

    Examples
    --------
    >>> # OxfordBinaryReader("scan.ebsp").probe().det_shape
    """

    format_name = "oxford_binary"
    extensions = ("ebsp",)
    modality = "ebsd"

    @classmethod
    def sniff(cls, head: bytes, path: Path) -> bool:
        if len(head) < 8 or path.suffix.lower() != ".ebsp":
            return False
        first = int(np.frombuffer(head[:8], "<i8")[0])
        return -10 <= first < 0 or first > 0

    def _table(self, start: int, size: int) -> np.ndarray:
        """Pattern positions: read until the table meets the first pattern."""
        big = np.iinfo(np.int64).max
        entries: list[np.ndarray] = []
        running_min = big
        pos = start
        while True:
            if pos + 8 > size:
                raise self.truncated(f"pattern position table runs past the end of the file at byte {pos}")
            chunk = read_records(self.path, pos, min(65536, (size - pos) // 8), np.dtype("<i8"))
            # Entries past the table are pattern bytes: judge only those before the first pattern.
            cummin = np.minimum.accumulate(np.concatenate([[running_min], np.where(chunk > 0, chunk, big)]))[1:]
            next_pos = pos + 8 * (np.arange(len(chunk)) + 1)
            done = np.nonzero(next_pos >= cummin)[0]
            part = chunk[: int(done[0]) + 1] if len(done) else chunk
            bad = (part < 0) | (part >= size)
            if bad.any():
                raise self.truncated(f"pattern position {int(part[bad][0])} lies outside the file ({size} bytes)")
            entries.append(part)
            if len(done):
                table = np.concatenate(entries)
                if start + 8 * len(table) != int(cummin[int(done[0])]):
                    raise self.truncated("pattern position table does not end where the first pattern begins",
                                         "the file is garbled or not an Oxford .ebsp file")
                return table
            running_min = int(cummin[-1])
            pos += 8 * len(chunk)

    def _probe(self) -> Probe:
        size = self.path.stat().st_size
        head = read_head(self.path, 16)
        if len(head) < 8:
            raise self.truncated(f"file has {size} bytes, too short for an .ebsp header")
        first = int(np.frombuffer(head[:8], "<i8")[0])
        version = -first if first < 0 else 0
        table_start = 0 if version == 0 else (9 if version > 3 else 8)
        starts = self._table(table_start, size)
        present = starts > 0
        if not present.any():
            raise self.error("the file lists no stored patterns", "export the patterns from AZtec again")
        first_pos = table_start + 8 * len(starts)
        hdr_fields = ["map_x", "map_y"] if version >= 5 else []
        hdr_fields += ["is_compressed", "rows", "cols", "n_bytes"]
        header_dtype = np.dtype([(f, "<i4") for f in hdr_fields])
        hdr = read_records(self.path, first_pos, 1, header_dtype)[0]
        rows, cols, n_bytes = int(hdr["rows"]), int(hdr["cols"]), int(hdr["n_bytes"])
        if hdr["is_compressed"]:
            raise self.error("patterns are compressed", "export uncompressed patterns from AZtec")
        if rows <= 0 or cols <= 0 or n_bytes not in (rows * cols, 2 * rows * cols):
            raise self.truncated(f"garbled pattern header: {rows} x {cols} pixels in {n_bytes} bytes")
        dtype = np.dtype("u1") if n_bytes == rows * cols else np.dtype("<u2")
        footer_pos = first_pos + header_dtype.itemsize + n_bytes
        footer: list[tuple[str, str]] = []
        if version == 1:
            footer = [("beam_x", "<f8"), ("beam_y", "<f8")]
        elif version > 1:
            flags = read_head_at(self.path, footer_pos, 10)
            if len(flags) < 1:
                raise self.truncated("file ends inside the first pattern")
            if flags[0]:
                footer += [("has_beam_x", "u1"), ("beam_x", "<f8")]
            else:
                footer += [("has_beam_x", "u1")]
            yflag_at = 9 if flags[0] else 1
            if len(flags) > yflag_at and flags[yflag_at]:
                footer += [("has_beam_y", "u1"), ("beam_y", "<f8")]
            else:
                footer += [("has_beam_y", "u1")]
        record = np.dtype([(f, "<i4") for f in hdr_fields] + [("pattern", dtype, (rows, cols))] + footer)
        n_present = int(present.sum())
        expected = first_pos + n_present * record.itemsize
        if size < expected or int(starts.max()) + record.itemsize > size:
            raise self.truncated(f"file has {size} bytes but {n_present} patterns of {rows} x {cols} need "
                                 f"{max(expected, int(starts.max()) + record.itemsize)}")
        order = (starts[present] - first_pos) // record.itemsize  # file record of each scan point
        om: dict[str, Any] = {"version": version, "n_points": len(starts), "n_stored": n_present}
        attrs: dict[str, Any] = {"modality": "ebsd", "detector": {"shape": [rows, cols], "pc_convention": "oxford"},
                       "original_metadata": om}
        notes: list[str] = []
        scan: tuple[int, int] = (1, n_present)
        assert record.names is not None  # a structured dtype
        if present.all() and "beam_x" in record.names and "beam_y" in record.names and n_present > 1:
            pick = read_records(self.path, int(starts[0]), 1, record)[0], \
                read_records(self.path, int(starts[1]), 1, record)[0], \
                read_records(self.path, int(starts[-1]), 1, record)[0]
            step = float(pick[1]["beam_x"] - pick[0]["beam_x"])
            if step > 0:
                nrows = int(abs(round(pick[2]["beam_y"] / step) - round(pick[0]["beam_y"] / step))) + 1
                ncols = int(abs(round(pick[2]["beam_x"] / step) - round(pick[0]["beam_x"] / step))) + 1
                if nrows * ncols == n_present:
                    scan = (nrows, ncols)
                    attrs["step_size"] = {"y": step, "x": step, "unit": "um"}
        if scan == (1, n_present) and n_present > 1:
            notes.append("scan shape not found in the beam positions: stored as one row (use --scan-shape)")
        self._record, self._order = record, order
        self._sorted = bool(np.array_equal(order, np.arange(n_present)))
        self._first_pos = first_pos
        return Probe(n_frames=n_present, scan_shape=scan, det_shape=(rows, cols), dtype=dtype.newbyteorder("="),
                     attrs=attrs, notes=notes)

    def _iter_frames(self, batch: int) -> Iterator[np.ndarray]:
        probe = self.probe()
        rec = self._record
        for lo, hi in batched(probe.n_frames, batch):
            wanted = self._order[lo:hi]
            first, last = int(wanted.min()), int(wanted.max())
            if self._sorted or last - first + 1 <= 4 * (hi - lo):
                # Read the covering run of records once and pick from it (AZtec
                # reorders only within rows, so the run stays short).
                block = read_records(self.path, self._first_pos + first * rec.itemsize, last - first + 1, rec)
                frames = block["pattern"][wanted - first]
            else:
                frames = np.stack([read_records(self.path, self._first_pos + int(i) * rec.itemsize, 1, rec)[0]["pattern"]
                                   for i in wanted])
            yield np.ascontiguousarray(frames, dtype=probe.dtype)


def read_head_at(path: Path, offset: int, n: int) -> bytes:
    """``n`` bytes at ``offset`` (fewer at the end of the file).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "h.bin"; _ = p.write_bytes(b"abcdef")
    >>> read_head_at(p, 2, 3)
    b'cde'
    """
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(n)

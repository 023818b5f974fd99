"""Quantum Detectors Merlin (Medipix3) ``.mib`` files, with the ``.hdr`` beside them.

Every frame is an ASCII header (``MQ1,seq,offset,chips,width,height,dtype,
layout,...,timestamp,exposure,...``; 384 bytes for one chip, 768 for a quad)
followed by big-endian pixels (``U08``/``U16``/``U32``; ``R64`` raw counter
data is not supported). Frames are flipped vertically, as RosettaSciIO
does, so that stores match what ``rsciio.quantumdetector`` reads.

The scan shape follows RosettaSciIO: the ``.hdr`` gives the number of
frames and frames per trigger; with one frame per trigger the row length is
where the frame timestamps jump (the flyback). Unlike RosettaSciIO, a file
holding more frames than the ``.hdr`` says is refused (the surplus would be
silently dropped) unless ``--scan-shape`` covers every frame in the file.

Examples
--------
>>> MerlinReader.sniff(b"MQ1,000001,00384,01,0256,0256,U08", Path("x.mib"))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.flow.readers.base import Probe, Reader, batched, fitting_scan_shapes, jsonable
from diffraflow.flow.readers.merlin_format import PIXEL_TYPES as _DTYPES
from diffraflow.flow.readers.merlin_format import exposure_s, parse_hdr
from diffraflow.flow.readers.rawio import read_head, read_records

__all__ = ["MerlinReader", "parse_hdr"]


class MerlinReader(Reader):
    """Reader of Merlin ``.mib`` files.

    Examples
    --------
    >>> # MerlinReader("scan.mib").probe().scan_shape
    """

    format_name = "merlin"
    extensions = ("mib",)
    modality = "4dstem"

    @classmethod
    def sniff(cls, head: bytes, path: Path) -> bool:
        return head.startswith(b"MQ1,")

    def _probe(self) -> Probe:
        size = self.path.stat().st_size
        head = read_head(self.path, 768)
        try:
            fields = head[:384].decode("ascii").split(",")
            header_size = int(fields[2])
            width, height = int(fields[4]), int(fields[5])
            kind = fields[6].strip()
        except (UnicodeDecodeError, ValueError, IndexError):
            raise self.truncated("the first frame header is not a Merlin MQ1 header",
                                 "this is not a Merlin .mib file, or it is damaged") from None
        if not head.startswith(b"MQ1,") or header_size not in (384, 768) or min(width, height) < 1:
            raise self.truncated(f"garbled frame header: size {header_size}, frame {width} x {height}")
        if kind == "R64":
            raise self.error("frames are raw counter data (R64)", "save processed frames (U08/U16/U32) in Merlin")
        if kind not in _DTYPES:
            raise self.truncated(f"unknown pixel type {kind!r} in the frame header")
        if header_size == 768:
            fields = head[:768].decode("ascii", "replace").split(",")
        dtype = np.dtype(_DTYPES[kind])
        record = np.dtype([("header", f"S{header_size}"), ("data", dtype, (height, width))])
        n_file, rem = divmod(size, record.itemsize)
        if n_file == 0 or rem:
            raise self.truncated(f"file has {size} bytes: {n_file} whole frames of {record.itemsize} bytes "
                                 f"and {rem} bytes of a cut frame")
        hdr_path = self.path.with_suffix(".hdr")
        hdr = parse_hdr(hdr_path.read_text(encoding="latin-1")) if hdr_path.is_file() else {}
        om: dict[str, Any] = {"hdr_file": hdr, "first_frame_header": [f.strip() for f in fields if f.strip()][:40],
                              "header_size": header_size, "pixel_type": kind, "frames_in_file": n_file}
        notes: list[str] = [] if hdr else [f"no {hdr_path.name} beside the file: scan shape from timestamps"]
        try:
            n_frames = int(hdr.get("Frames in Acquisition (Number)", n_file))
            per_trigger = int(hdr.get("Frames per Trigger (Number)", 1))
        except ValueError:
            n_frames, per_trigger = n_file, 1
        if n_frames > n_file:
            raise self.truncated(f"the .hdr says {n_frames} frames but the file holds {n_file}")
        if n_frames == 0:
            n_frames = n_file
        hint = self.checked_hint("--scan-shape", self.scan_shape_hint)
        if n_frames < n_file:
            if hint is None or hint[0] * hint[1] != n_file:
                # RosettaSciIO reads only the .hdr's count; the frames after it would vanish without a word.
                shapes = " or ".join(f"{r} {c}" for r, c in fitting_scan_shapes(n_file, limit=2))
                raise self.error(f"the file holds {n_file} frames but {hdr_path.name} says {n_frames} "
                                 f"(Frames in Acquisition): {n_file - n_frames} frames would be left out",
                                 f"pass --scan-shape ROWS COLS with ROWS x COLS = {n_file} (e.g. {shapes}) to "
                                 f"keep every frame, or correct {hdr_path.name}")
            notes.append(f"{hdr_path.name} says {n_frames} frames; --scan-shape {hint[0]} {hint[1]} takes all "
                         f"{n_file} in the file")
            n_frames = n_file
        if per_trigger <= 1 and n_frames > 1:
            per_trigger = self._row_length(record, min(n_frames, 10_000))
        scan = (n_frames // per_trigger, per_trigger) if per_trigger and n_frames % per_trigger == 0 else (1, n_frames)
        attrs: dict[str, Any] = {"modality": "4dstem", "detector": {"shape": [height, width]},
                                 "original_metadata": jsonable(om)}
        exposure = self._exposure_s(fields)
        if exposure is not None and 0 <= exposure < float("inf"):  # a garbled field is not an exposure
            attrs["exposure_s"] = exposure
        self._record = record
        return Probe(n_frames=n_frames, scan_shape=scan, det_shape=(height, width),
                     dtype=dtype.newbyteorder("="), attrs=attrs, notes=notes)

    @staticmethod
    def _exposure_s(fields: list[str]) -> float | None:
        return exposure_s(fields)

    def _row_length(self, record: np.dtype, count: int) -> int:
        """Frames per scan row: where the timestamps jump above their mean step (as RosettaSciIO)."""
        stamps = []
        assert record.fields is not None  # a structured dtype with a "header" field
        with open(self.path, "rb") as fh:
            for i in range(count):
                fh.seek(i * record.itemsize)
                fields = fh.read(record.fields["header"][0].itemsize).decode("ascii", "replace").split(",")
                stamps.append(fields[-4] if len(fields) > 4 else "")
        try:
            times = np.array([s.rstrip("Z") for s in stamps], dtype="datetime64[ns]")
        except ValueError:
            return 1
        diff = np.diff(times).astype(float)
        if len(diff) == 0:
            return 1
        above = np.argwhere(diff - diff.mean() > 0)
        return int(above[0][0]) + 1 if len(above) else 1

    def _iter_frames(self, batch: int) -> Iterator[np.ndarray]:
        probe = self.probe()
        rec = self._record
        for lo, hi in batched(probe.n_frames, batch):
            data = read_records(self.path, lo * rec.itemsize, hi - lo, rec)["data"]
            yield np.ascontiguousarray(data[:, ::-1, :], dtype=probe.dtype)

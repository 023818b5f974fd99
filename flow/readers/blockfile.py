"""NanoMegas ASTAR blockfiles ``.blo`` (scanning precession electron diffraction).

Layout (little-endian), as documented by RosettaSciIO: a fixed header
(``IMGBLO`` signature, offsets, pattern size, scan size, step sizes in nm,
beam energy in V, detector scale, camera length, acquisition date,
centring and distortion coefficients), a free-text note up to
``Data_offset_1``, a virtual bright-field image of ``NX * NY`` bytes, then
from ``Data_offset_2`` one record per scan point: 6 bytes (``AA 55`` and a
``uint32`` frame number) followed by ``DP_SZ x DP_SZ`` uint8 pixels.

Examples
--------
>>> BlockfileReader.sniff(b"IMGBLO\\x02\\x01", Path("x.blo"))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.flow.readers.base import Probe, Reader, batched, check_file_size, jsonable
from diffraflow.flow.readers.rawio import read_head, read_records

__all__ = ["BlockfileReader", "HEADER_DTYPE"]

HEADER_DTYPE = np.dtype(
    [("ID", "S6"), ("MAGIC", "<u2"), ("Data_offset_1", "<u4"), ("Data_offset_2", "<u4"), ("UNKNOWN1", "<u4"),
     ("DP_SZ", "<u2"), ("DP_rotation", "<u2"), ("NX", "<u2"), ("NY", "<u2"), ("Scan_rotation", "<u2"),
     ("SX", "<f8"), ("SY", "<f8"), ("Beam_energy", "<u4"), ("SDP", "<u2"), ("Camera_length", "<u4"),
     ("Acquisition_time", "<f8")]
    + [(f"Centering_N{i}", "<f8") for i in range(8)]
    + [(f"Distortion_N{i:02d}", "<f8") for i in range(14)]
)


class BlockfileReader(Reader):
    """Reader of NanoMegas ``.blo`` files.

    Examples
    --------
    >>> # BlockfileReader("scan.blo").probe().attrs["beam_energy_kv"]  -> 200.0
    """

    format_name = "blockfile"
    extensions = ("blo",)
    modality = "sped"

    @classmethod
    def sniff(cls, head: bytes, path: Path) -> bool:
        return head.startswith(b"IMGBLO")

    def _probe(self) -> Probe:
        head = read_head(self.path, HEADER_DTYPE.itemsize)
        if len(head) < HEADER_DTYPE.itemsize:
            raise self.truncated(f"file has {len(head)} bytes, the header alone needs {HEADER_DTYPE.itemsize}")
        h = np.frombuffer(head, HEADER_DTYPE)[0]
        if bytes(h["ID"]) != b"IMGBLO":
            raise self.truncated(f"signature is {bytes(h['ID'])!r}, not b'IMGBLO'",
                                 "this is not a NanoMegas blockfile, or its header is damaged")
        nx, ny, side = int(h["NX"]), int(h["NY"]), int(h["DP_SZ"])
        off1, off2 = int(h["Data_offset_1"]), int(h["Data_offset_2"])
        if min(nx, ny, side) < 1 or off2 < off1 or off1 < HEADER_DTYPE.itemsize:
            raise self.truncated(f"garbled header: scan {ny} x {nx}, pattern {side} px, offsets {off1}/{off2}")
        record = 6 + side * side
        check_file_size(self.path, off2 + nx * ny * record, f"{ny} x {nx} patterns of {side} x {side} px")
        with open(self.path, "rb") as fh:
            fh.seek(HEADER_DTYPE.itemsize)
            note = fh.read(max(0, off1 - HEADER_DTYPE.itemsize)).decode("latin-1").strip("\x00")
        assert HEADER_DTYPE.names is not None  # a structured dtype
        header = {name: jsonable(h[name]) for name in HEADER_DTYPE.names}
        header["Note"] = note
        attrs: dict[str, Any] = {"modality": "sped", "detector": {"shape": [side, side]},
                       "original_metadata": {"blockfile_header": header}}
        if h["Beam_energy"] > 0:
            attrs["beam_energy_kv"] = float(h["Beam_energy"]) / 1000.0  # stored in volts
        if h["SX"] > 0 and h["SY"] > 0:
            attrs["step_size"] = {"y": float(h["SY"]), "x": float(h["SX"]), "unit": "nm"}
        if h["SDP"]:
            # SDP is 100 x pixels per cm on the (virtual) screen, as RosettaSciIO reads it.
            attrs["detector"]["calibration"] = {"scale": 100.0 / float(h["SDP"]), "units": "cm",
                                                "camera_length_raw": int(h["Camera_length"])}
        self._offset = off2
        marker = read_records(self.path, off2, 1, np.dtype("u1"))  # first byte of the first record
        notes = [] if marker[0] == 0xAA else [f"first frame marker is {int(marker[0]):#x}, expected 0xaa"]
        return Probe(n_frames=nx * ny, scan_shape=(ny, nx), det_shape=(side, side), dtype=np.dtype("uint8"),
                     attrs=attrs, notes=notes)

    def _iter_frames(self, batch: int) -> Iterator[np.ndarray]:
        probe = self.probe()
        side = probe.det_shape[0]
        record = np.dtype([("marker", "u1", (6,)), ("data", "u1", (side, side))])
        for lo, hi in batched(probe.n_frames, batch):
            yield np.ascontiguousarray(read_records(self.path, self._offset + lo * record.itemsize, hi - lo,
                                                    record)["data"])

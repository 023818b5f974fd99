"""The Quantum Detectors Merlin (Medipix3) frame format, shared by the ``.mib`` reader and the live receiver.

A Merlin writes the same bytes to a ``.mib`` file and to its TCP data port;
on the wire each message is preceded by ``MPX,<10-digit length>,`` where the
length counts the bytes after the length field, its trailing comma included.
Two kinds of message follow the prefix:

* the **acquisition header** ``HDR,`` — ``Key:<TAB>value`` lines up to
  ``End`` (the ``.hdr`` file beside a ``.mib``), giving the number of frames,
  frames per trigger and counter depth;
* a **frame**: an ASCII header ``MQ1,seq,offset,chips,width,height,type,
  layout,...`` of ``offset`` bytes (384 for one chip, 768 for a quad; an
  ``MQ1A`` extension carries the exposure in ns and the counter depth),
  followed by the pixels.

Pixel types: ``U01``/``U08`` one byte per pixel (1- and 6-bit counters),
``U16`` (12-bit), ``U32`` (24-bit), ``U64``, all big-endian; ``R64`` is the
raw counter read-out: 64-bit big-endian words whose pixels run from the
least significant end (64 one-bit, 8 six-bit or 4 twelve-bit pixels per
word), a quad's four chips interleaved row by row with the lower two chips
rotated by 180 degrees. Raw 24-bit read-out (two 12-bit frames per frame)
is not supported.

diffraflow stores frames flipped vertically (:data:`FLIP_ROWS`), as
RosettaSciIO does, so a cube converted from a file and one received live
hold the same arrays.

Examples
--------
>>> head = parse_frame_header(b"MQ1,000007,00384,01,0004,0002,U16,   1x1,01,2021-05-07 18:51:10.9,0.1")
>>> head.sequence, head.frame_shape, head.dtype.str, head.data_nbytes
(7, (2, 4), '<u2', 16)
>>> frame = np.arange(8, dtype=">u2").tobytes()
>>> decode_frame(np.frombuffer(frame, np.uint8), head).tolist()
[[0, 1, 2, 3], [4, 5, 6, 7]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FrameHeader", "MalformedMerlinData", "parse_frame_header", "parse_hdr", "parse_mpx_prefix",
           "decode_frame", "encode_frame", "frame_header", "exposure_s", "PIXEL_TYPES", "MPX_PREFIX_SIZE", "FLIP_ROWS",
           "mpx_prefix"]

#: Bytes of ``MPX,<10 digits>,``.
MPX_PREFIX_SIZE = 15
#: Processed pixel types and their wire dtypes (big-endian).
PIXEL_TYPES = {"U01": ">u1", "U1": ">u1", "U08": ">u1", "U16": ">u2", "U32": ">u4", "U64": ">u8"}
#: Native dtype of raw (``R64``) frames by counter depth.
_RAW_DTYPES = {1: "u1", 6: "u1", 12: "<u2"}
#: diffraflow's orientation: rows reversed relative to the wire (RosettaSciIO's convention).
FLIP_ROWS = True
_CHIP = 256


class MalformedMerlinData(ValueError):
    """Bytes that do not follow the Merlin layout (the message says which field)."""


def parse_mpx_prefix(prefix: bytes) -> int:
    """The length field of an ``MPX,<10 digits>,`` prefix: bytes that follow it (its comma included).

    Raises
    ------
    MalformedMerlinData
        Not such a prefix.

    Examples
    --------
    >>> parse_mpx_prefix(b"MPX,0000065921,")
    65921
    >>> try:
    ...     parse_mpx_prefix(b"GARBAGEGARBAGEG")
    ... except MalformedMerlinData as exc:
    ...     print(exc)
    expected 'MPX,<10 digits>,', got b'GARBAGEGARBAGEG'
    """
    digits = prefix[4:14]
    if len(prefix) < MPX_PREFIX_SIZE or prefix[:4] != b"MPX," or prefix[14:15] != b"," or not digits.isdigit():
        raise MalformedMerlinData(f"expected 'MPX,<10 digits>,', got {bytes(prefix[:MPX_PREFIX_SIZE])!r}")
    length = int(digits)
    if length < 1:
        raise MalformedMerlinData(f"message length {length} in {bytes(prefix)!r} is below 1")
    return length


def mpx_prefix(payload_nbytes: int) -> bytes:
    """The ``MPX,<length>,`` prefix announcing a payload of ``payload_nbytes`` bytes.

    Examples
    --------
    >>> mpx_prefix(65920)
    b'MPX,0000065921,'
    """
    return b"MPX,%010d," % (payload_nbytes + 1)


def parse_hdr(text: str) -> dict[str, str]:
    """Key/value pairs of a Merlin acquisition header (``HDR,`` message or ``.hdr`` file).

    Lines are ``Key:<TAB>value`` (``Key<TAB>value`` and ``Key: value`` are
    accepted too); reading stops at ``End``.

    Examples
    --------
    >>> parse_hdr("HDR,\\nFrames in Acquisition (Number):\\t8\\nEnd\\t")
    {'Frames in Acquisition (Number)': '8'}
    >>> parse_hdr("HDR,\\nTime and Date Stamp (day, mnth, yr, hr, min, s):\\t07/05/2021 18:50:41\\nScanX: 4\\n")
    {'Time and Date Stamp (day, mnth, yr, hr, min, s)': '07/05/2021 18:50:41', 'ScanX': '4'}
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("HDR"):
            continue
        if line.strip().startswith("End"):
            break
        for separator in (":\t", "\t", ":"):
            if separator in line:
                key, value = line.split(separator, 1)
                out[key.rstrip(":").strip()] = value.strip()
                break
    return out


def exposure_s(fields: list[str]) -> float | None:
    """Exposure of a frame from its header fields: the ``MQ1A`` ns field, else the shutter time (ms).

    Examples
    --------
    >>> exposure_s("MQ1,1,384,1,2,2,U08,1x1,1,t,0.1,0,0,0,MQ1A,t,100000000ns,6,".split(","))
    0.1
    """
    for field in fields:
        field = field.strip()
        if field.endswith("ns") and field[:-2].replace(".", "", 1).isdigit():
            return float(field[:-2]) * 1e-9
    try:
        return float(fields[10]) * 1e-3  # shutter time in ms in older firmware
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class FrameHeader:
    """One parsed ``MQ1`` frame header.

    Attributes
    ----------
    sequence
        Frame number, counted from 1 in an acquisition.
    header_size
        Bytes of the header (the data offset).
    chips, width, height, pixel_type, layout
        As the header says; ``layout`` without its padding (``1x1``, ``2x2``, ``2x2G``, ``Nx1``...).
    counter_depth
        Bits per counter from the ``MQ1A`` extension, or None.
    exposure_s
        Exposure in seconds, or None.
    timestamp
        The header's time stamp text.
    """

    sequence: int
    header_size: int
    chips: int
    width: int
    height: int
    pixel_type: str
    layout: str
    counter_depth: int | None
    exposure_s: float | None
    timestamp: str

    @property
    def raw(self) -> bool:
        """True for raw counter read-out (``R64``)."""
        return self.pixel_type == "R64"

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the decoded frame."""
        if not self.raw:
            return self.height, self.width
        if self.layout == "1x1":
            return _CHIP, _CHIP
        side = 2 * _CHIP + (2 if self.layout.endswith("G") else 0)
        return side, side

    @property
    def dtype(self) -> np.dtype:
        """Native dtype of the decoded frame."""
        if self.raw:
            return np.dtype(_RAW_DTYPES[int(self.counter_depth or 0)])
        return np.dtype(PIXEL_TYPES[self.pixel_type]).newbyteorder("=")

    @property
    def wire_dtype(self) -> np.dtype:
        """Dtype of the pixels as sent (processed frames only)."""
        return np.dtype(PIXEL_TYPES[self.pixel_type])

    @property
    def data_nbytes(self) -> int:
        """Bytes of pixel data after the header."""
        if not self.raw:
            return self.width * self.height * self.wire_dtype.itemsize
        pixels = self.chips * _CHIP * _CHIP
        return {1: pixels // 8, 6: pixels, 12: 2 * pixels}[int(self.counter_depth or 0)]


def parse_frame_header(head: bytes) -> FrameHeader:
    """Parse an ``MQ1`` frame header (the bytes after the ``MPX`` prefix, at least the header itself).

    Raises
    ------
    MalformedMerlinData
        The header does not follow the layout; the message names the field.

    Examples
    --------
    >>> parse_frame_header(b"MQ1,000001,00384,01,0256,0256,U08,   1x1,01,x,0.1").frame_shape
    (256, 256)
    >>> try:
    ...     parse_frame_header(b"MQ1,000001,00384,01,0256,0256,U12,   1x1,01,x,0.1")
    ... except MalformedMerlinData as exc:
    ...     print(exc)
    frame header: unknown pixel type 'U12'
    """
    try:
        size = int(head[11:16])
    except ValueError:
        raise MalformedMerlinData(f"frame header: data offset {bytes(head[11:16])!r} is not a number") from None
    text = bytes(head[:size]).decode("ascii", "replace")
    fields = text.split(",")
    if fields[0] != "MQ1" or len(fields) < 9:
        raise MalformedMerlinData(f"frame header: expected 'MQ1,...' with at least 9 fields, got {text[:40]!r}")
    try:
        sequence, chips, width, height = int(fields[1]), int(fields[3]), int(fields[4]), int(fields[5])
    except ValueError:
        raise MalformedMerlinData(f"frame header: sequence, chips or size is not a number in {text[:40]!r}") from None
    kind, layout = fields[6].strip(), fields[7].strip()
    if kind not in PIXEL_TYPES and kind != "R64":
        raise MalformedMerlinData(f"frame header: unknown pixel type {kind!r}")
    if size not in (384, 768) or not 0 < width <= 65536 or not 0 < height <= 65536 or sequence < 0:
        raise MalformedMerlinData(f"frame header: offset {size}, frame {width} x {height}, sequence {sequence} "
                                  "out of range")
    depth = None
    if "MQ1A" in fields:
        tail = fields[fields.index("MQ1A") + 1:]
        try:
            depth = int(tail[2].strip())
        except (IndexError, ValueError):
            depth = None
    if kind == "R64":
        if depth not in _RAW_DTYPES:
            raise MalformedMerlinData(f"frame header: raw (R64) read-out of counter depth {depth} is not supported "
                                      "(1, 6 and 12 are)")
        if layout not in ("1x1", "2x2", "2x2G") or chips != (1 if layout == "1x1" else 4):
            raise MalformedMerlinData(f"frame header: raw (R64) read-out in layout {layout!r} with {chips} chips "
                                      "is not supported (1x1, 2x2 and 2x2G are)")
    timestamp = fields[9].strip() if len(fields) > 9 else ""
    return FrameHeader(sequence=sequence, header_size=size, chips=chips, width=width, height=height,
                       pixel_type=kind, layout=layout, counter_depth=depth, exposure_s=exposure_s(fields),
                       timestamp=timestamp)


def _raw_pixels(raw: np.ndarray, depth: int) -> np.ndarray:
    """Pixels of raw read-out words in read-out order (within a word they start at the low end)."""
    little = np.frombuffer(raw, ">u8").astype("<u8").view(np.uint8)  # each word's bytes, low byte first
    if depth == 1:
        return np.unpackbits(little, bitorder="little")
    if depth == 12:
        return little.view("<u2")
    return little


def decode_frame(data: np.ndarray, header: FrameHeader, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one frame's pixel bytes (as sent, rows not yet flipped) into a native array.

    Parameters
    ----------
    data
        The ``header.data_nbytes`` bytes after the frame header, as ``uint8``.
    header
        The frame's parsed header.
    out
        Optional ``header.frame_shape`` array of ``header.dtype`` to fill.

    Examples
    --------
    >>> head = parse_frame_header(b"MQ1,000001,00384,01,0256,0256,R64,   1x1,01,t,0.1,0,0,0,MQ1A,t,1ns,6,")
    >>> raw = np.zeros(head.data_nbytes, np.uint8); raw[7] = 5  # the first pixel is the last byte of a word
    >>> int(decode_frame(raw, head)[0, 0])
    5
    """
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    if data.size != header.data_nbytes:
        raise MalformedMerlinData(f"frame {header.sequence}: {data.size} bytes of pixel data, the header implies "
                                  f"{header.data_nbytes}")
    rows, cols = header.frame_shape
    if out is None:
        out = np.empty((rows, cols), header.dtype)
    if not header.raw:
        out[...] = data.view(header.wire_dtype).reshape(rows, cols)
        return out
    pixels = _raw_pixels(data, int(header.counter_depth or 0))
    if header.layout == "1x1":
        out[...] = pixels.reshape(_CHIP, _CHIP)
        return out
    # Quads: each read-out row holds row r of chips 4, 3, 2, 1; chips 3 and 4 sit upside down at the bottom.
    chip_rows = pixels.reshape(_CHIP, 4, _CHIP)
    gap = 2 if header.layout.endswith("G") else 0
    out[...] = 0
    out[:_CHIP, :_CHIP] = chip_rows[:, 3]
    out[:_CHIP, _CHIP + gap:] = chip_rows[:, 2]
    out[_CHIP + gap:, :_CHIP] = chip_rows[::-1, 1, ::-1]
    out[_CHIP + gap:, _CHIP + gap:] = chip_rows[::-1, 0, ::-1]
    return out


def encode_frame(frame: np.ndarray, sequence: int, *, pixel_type: str | None = None, counter_depth: int | None = None,
                 exposure_ns: int = 1_000_000, timestamp: str = "2026-01-01 00:00:00.000000") -> bytes:
    """One processed frame as a Merlin sends it (header and big-endian pixels, no ``MPX`` prefix).

    ``frame`` is in diffraflow's orientation; rows are flipped back to the
    wire's. Used by ``diffraflow replay`` and tests.

    Examples
    --------
    >>> blob = encode_frame(np.arange(4, dtype="uint16").reshape(2, 2), 3, counter_depth=12)
    >>> head = parse_frame_header(blob)
    >>> head.sequence, head.counter_depth, decode_frame(np.frombuffer(blob[384:], np.uint8), head)[::-1].tolist()
    (3, 12, [[0, 1], [2, 3]])
    """
    frame = np.asarray(frame)
    pixel_type = pixel_type or _KINDS[frame.dtype.itemsize]
    head = frame_header(sequence, frame.shape, pixel_type=pixel_type, counter_depth=counter_depth,
                        exposure_ns=exposure_ns, timestamp=timestamp)
    pixels = np.ascontiguousarray(frame[::-1] if FLIP_ROWS else frame).astype(PIXEL_TYPES[pixel_type])
    return head + pixels.tobytes()


_KINDS = {1: "U08", 2: "U16", 4: "U32", 8: "U64"}


def frame_header(sequence: int, shape: tuple[int, int], *, pixel_type: str = "U08", counter_depth: int | None = None,
                 exposure_ns: int = 1_000_000, timestamp: str = "2026-01-01 00:00:00.000000") -> bytes:
    """A 384-byte ``MQ1`` header (with ``MQ1A`` extension) of one single-chip-layout frame.

    Examples
    --------
    >>> head = parse_frame_header(frame_header(5, (4, 6), pixel_type="U16"))
    >>> head.sequence, head.frame_shape, head.counter_depth, head.exposure_s
    (5, (4, 6), 12, 0.001)
    """
    depth = counter_depth or {"U08": 8, "U16": 12, "U32": 24}.get(pixel_type, 32)
    rows, cols = shape
    head = (f"MQ1,{sequence:06d},00384,01,{cols:04d},{rows:04d},{pixel_type},   1x1,01,{timestamp},"
            f"{exposure_ns / 1e6:.6f},0,0,0,0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,"
            f"0.000000E+0,0.000000E+0,0.000000E+0,3RX,MQ1A,{timestamp},{exposure_ns}ns,{depth},").encode("ascii")
    if len(head) > 384:
        raise ValueError(f"frame header of {len(head)} bytes does not fit in 384")
    return head.ljust(384, b"\x00")

"""Quantum Detectors Merlin TCP data port: the receiver (a client, as Merlin set-ups need) and a sender.

The data port carries ``MPX,<10-digit length>,`` messages (see
:mod:`diffraflow.flow.readers.merlin_format`): an ``HDR`` acquisition header at
the start of each acquisition, then one ``MQ1`` frame (header and pixels) per
message. :class:`MerlinClient` connects to the detector, reads through a
buffer (big frames go straight from the socket into their pool slot),
resynchronises on the next ``MPX,`` after junk, skips a malformed message by
its announced length, reconnects after a dropped connection, and takes frame
``sequence - 1`` as the scan index. Frames of a new acquisition (a different
``HDR``) before this one ended are reported by the core.

:class:`MerlinServer` is the simulated detector of ``diffraflow replay``:
it serves a stored cube (or a ``.mib`` file, byte for byte) to each client
that connects, at a given frame rate.

Examples
--------
>>> import numpy as np
>>> frames = np.arange(2 * 3 * 4 * 4, dtype="uint16").reshape(6, 4, 4)
>>> server = MerlinServer(frames, scan_shape=(2, 3), port=0).start()
>>> from diffraflow.flow.live.inprocess import receive_to_memory
>>> cube, ledger = receive_to_memory(MerlinClient("127.0.0.1", server.port))
>>> bool((cube.reshape(6, 4, 4) == frames).all()), ledger.summary()["missing"]
(True, 0)
>>> server.stop()
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.flow.live.core import Acquisition, DetectorUnreachableError, ReceiverCore
from diffraflow.flow.readers.merlin_format import (
    FLIP_ROWS,
    MPX_PREFIX_SIZE,
    FrameHeader,
    MalformedMerlinData,
    decode_frame,
    encode_frame,
    frame_header,
    mpx_prefix,
    parse_frame_header,
    parse_hdr,
    parse_mpx_prefix,
)

__all__ = ["MerlinClient", "MerlinServer", "acquisition_from_headers", "DEFAULT_PORT"]

#: The Merlin data port.
DEFAULT_PORT = 6342
_ONE_BYTE = ("U01", "U1", "U08")
#: Longest acquisition header accepted (a real one is about 2 KiB).
MAX_HDR_BYTES = 1 << 20
#: Longest frame message accepted (a 24-bit quad frame is 1 MiB).
MAX_FRAME_BYTES = 1 << 30


class _Closed(Exception):
    """The peer closed the connection (or it broke)."""


class _Wire:
    """Buffered reads from a socket: small reads through a buffer, large ones straight into the destination."""

    def __init__(self, sock: socket.socket, stop: threading.Event, size: int = 4 << 20) -> None:
        self.sock, self.stop = sock, stop
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = self.end = 0
        self.bytes_in = 0
        #: Payload bytes from which a read goes straight from the socket into its slot (no copy).
        self.direct = 32 << 10

    def _recv_into(self, view: memoryview) -> int:
        while True:
            if self.stop.is_set():
                raise _Closed("stopped")
            try:
                n = self.sock.recv_into(view)
            except TimeoutError:
                continue
            except OSError as exc:
                raise _Closed(str(exc)) from None
            if n == 0:
                raise _Closed("closed by the detector")
            self.bytes_in += n
            return n

    def available(self) -> int:
        return self.end - self.start

    def unread(self, data: bytes) -> None:
        """Put bytes read past the buffer back in front of it (only when the buffer is empty)."""
        assert self.start == self.end
        self.buf[:len(data)] = data
        self.start, self.end = 0, len(data)

    def fill(self, n: int) -> None:
        """Have at least ``n`` bytes buffered."""
        if n > len(self.buf):
            raise MalformedMerlinData(f"a header of {n} bytes is longer than the receive buffer")
        if self.start + n > len(self.buf):  # compact: move the unread tail to the front
            tail = self.end - self.start
            self.buf[:tail] = self.buf[self.start:self.end]
            self.start, self.end = 0, tail
        while self.end - self.start < n:
            self.end += self._recv_into(self.view[self.end:])

    def peek(self, n: int) -> bytes:
        self.fill(n)
        return bytes(self.view[self.start:self.start + n])

    def skip(self, n: int) -> None:
        take = min(n, self.available())
        self.start += take
        n -= take
        while n > 0:  # skip unbuffered bytes through the buffer
            got = self._recv_into(self.view[: min(n, len(self.buf))])
            n -= got
        if self.start == self.end:
            self.start = self.end = 0

    def read_into(self, dest: memoryview) -> None:
        """Fill ``dest`` exactly."""
        take = min(len(dest), self.available())
        dest[:take] = self.view[self.start:self.start + take]
        self.start += take
        if self.start == self.end:
            self.start = self.end = 0
        done = take
        while done < len(dest):
            left = len(dest) - done
            if left >= self.direct:
                done += self._recv_into(dest[done:])  # big payloads: no copy through the buffer
            else:
                self.fill(left)
                dest[done:] = self.view[self.start:self.start + left]
                self.start += left
                done += left
        if self.start == self.end:
            self.start = self.end = 0


def acquisition_from_headers(hdr: dict[str, str] | None, frame: FrameHeader, where: str) -> Acquisition:
    """The acquisition an ``HDR`` message (if any) and the first frame header describe.

    The scan shape comes from ``ScanY``/``ScanX`` lines, else from frames per
    trigger when they tile the acquisition, else it is left to the user.

    Examples
    --------
    >>> head = parse_frame_header(b"MQ1,000001,00384,01,0256,0256,U16,   1x1,01,t,0.1")
    >>> acq = acquisition_from_headers({"Frames in Acquisition (Number)": "12",
    ...                                 "Frames per Trigger (Number)": "4"}, head, "tcp://x")
    >>> acq.n_frames, acq.scan_shape, acq.det_shape, acq.dtype.str
    (12, (3, 4), (256, 256), '<u2')
    """
    hdr = hdr or {}

    def number(key: str) -> int | None:
        try:
            return int(float(hdr[key]))
        except (KeyError, ValueError):
            return None

    n = number("Frames in Acquisition (Number)") or None  # 0: continuous acquisition, length unknown
    per_trigger = number("Frames per Trigger (Number)") or 1
    scan: tuple[int, int] | None = None
    sy, sx = number("ScanY"), number("ScanX")
    if sy and sx:
        scan = (sy, sx)
    elif n and per_trigger > 1 and n % per_trigger == 0:
        scan = (n // per_trigger, per_trigger)
    depth = frame.counter_depth or number("Counter Depth (number)")
    attrs: dict[str, Any] = {
        "modality": "4dstem", "detector": {"shape": list(frame.frame_shape)},
        "provenance": {"source_file": where, "source_format": "merlin"},
        "original_metadata": {"hdr": hdr, "bit_depth": depth, "pixel_type": frame.pixel_type,
                              "layout": frame.layout, "chips": frame.chips, "header_size": frame.header_size},
    }
    if frame.exposure_s is not None and 0 <= frame.exposure_s < float("inf"):
        attrs["exposure_s"] = frame.exposure_s
    series = hdr.get("Time and Date Stamp (day, mnth, yr, hr, min, s)") or None
    # Pixels stay big-endian in the pool; the persister converts them while it writes (one pass fewer here).
    wire = None if frame.raw or frame.wire_dtype.isnative else frame.wire_dtype
    return Acquisition(n_frames=n, det_shape=frame.frame_shape, dtype=frame.dtype, scan_shape=scan, attrs=attrs,
                       flip_rows=FLIP_ROWS, series=series, wire_dtype=wire)


class MerlinClient:
    """Receive one acquisition from a Merlin data port into a :class:`ReceiverCore`.

    Parameters
    ----------
    host, port
        The detector's data port (the receiver connects to it).
    connect_timeout
        Seconds the first connection may take before the detector counts as unreachable.
    attrs
        Extra ``scan`` metadata for the cube (modality, energy... from the command line).
    """

    name = "merlin"

    def __init__(self, host: str, port: int = DEFAULT_PORT, *, connect_timeout: float = 10.0,
                 attrs: dict[str, Any] | None = None) -> None:
        self.host, self.port = host, int(port)
        self.connect_timeout = float(connect_timeout)
        self.attrs = attrs or {}
        self.where = f"tcp://{host}:{port}"
        self.bytes_in = 0
        self._front = bytearray(0)  # the header part of a scatter read
        #: Keep the connection open after a complete acquisition, for the next one on it (see :meth:`close`).
        self.keep_connection = False
        self._kept: tuple[socket.socket, _Wire] | None = None

    def resume_acquisition(self, det_shape: tuple[int, int], dtype: np.dtype, scan_shape: tuple[int, int],
                           attrs: dict[str, Any]) -> Acquisition:
        """The acquisition of a cube this protocol began (a resumed scan needs no new ``HDR``)."""
        dtype = np.dtype(dtype)
        raw = (attrs.get("original_metadata") or {}).get("pixel_type") == "R64"
        wire = None if raw or dtype.itemsize == 1 else dtype.newbyteorder(">")
        return Acquisition(n_frames=scan_shape[0] * scan_shape[1], det_shape=det_shape, dtype=dtype,
                           scan_shape=scan_shape, attrs=attrs, flip_rows=FLIP_ROWS, wire_dtype=wire,
                           series=(attrs.get("original_metadata", {}).get("hdr") or {}).get(
                               "Time and Date Stamp (day, mnth, yr, hr, min, s)"))

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.settimeout(0.2)  # reads wake up to see a stop request
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        return sock

    def run(self, core: ReceiverCore, stop: threading.Event) -> None:
        """Connect, receive until the acquisition is complete or ``stop`` is set; reconnect after drops.

        Raises
        ------
        DetectorUnreachableError
            The first connection failed for ``connect_timeout`` seconds.
        """
        first = True
        t0 = time.monotonic()
        delay = 0.05
        while not stop.is_set() and not core.finished.is_set():
            wire: _Wire | None = None
            if self._kept is not None:  # the connection the previous acquisition arrived on, its buffer kept
                (sock, wire), self._kept = self._kept, None
                wire.stop = stop
                first = False
            else:
                try:
                    sock = self._connect(min(2.0, self.connect_timeout))
                except OSError as exc:
                    gone = time.monotonic() - t0 > self.connect_timeout
                    if gone and not first and core.acquisition is None:
                        # Dropped before any acquisition began: no gap timeout can end this, so say so.
                        raise DetectorUnreachableError(self.where, f"the connection dropped before an acquisition "
                                                       f"started and did not come back within {self.connect_timeout:g} "
                                                       f"s ({exc.strerror or exc})", "check the detector, then run "
                                                       "the same command again") from None
                    if first and gone:
                        raise DetectorUnreachableError(self.where, f"cannot connect to the Merlin data port "
                                                       f"({exc.strerror or exc})",
                                                       "check the address and port (--connect HOST:PORT), that the "
                                                       "detector software runs and that nothing else is connected"
                                                       ) from None
                    stop.wait(delay)
                    delay = min(1.0, delay * 2)
                    continue
                if not first:
                    core.fault("reconnects", f"reconnected to {self.where}")
            first, delay = False, 0.05
            keep = False
            try:
                wire = self._receive(sock, core, stop, wire)
                keep = self.keep_connection and core.all_received() and not stop.is_set()
            finally:
                if keep and wire is not None:
                    self._kept = (sock, wire)
                else:
                    sock.close()
            if core.all_received():
                while not core.finished.wait(0.1) and not stop.is_set():
                    pass  # the persister writes the last shards; the detector may hang up meanwhile
                return
            if not stop.is_set() and not core.finished.is_set() and not core.stopping:
                core.fault("disconnects", f"the connection to {self.where} dropped; reconnecting")
                t0 = time.monotonic()  # the detector has connect_timeout seconds to come back

    def close(self) -> None:
        """Close a connection kept open after the last acquisition (``keep_connection``)."""
        if self._kept is not None:
            self._kept[0].close()
            self._kept = None

    def _receive(self, sock: socket.socket, core: ReceiverCore, stop: threading.Event,
                 wire: _Wire | None = None) -> _Wire:
        """Receive on ``sock`` (through ``wire``, the buffer of an earlier acquisition on it, if given)."""
        wire = wire if wire is not None else _Wire(sock, stop)
        hdr: dict[str, str] | None = None
        hdr_pending = False
        partial = False  # part of a message has been read
        fast: tuple[int, int, bytes, FrameHeader] | None = None  # the first frame's fixed header fields
        last = -1  # the last frame index read (the next one is usually last + 1)
        try:
            while not stop.is_set() and not core.finished.is_set() and not core.all_received():
                if fast is not None and not hdr_pending and not wire.available():
                    done = self._scatter(wire, core, fast, last + 1)
                    if done < 0:
                        return wire
                    if done:
                        last = done - 1
                        continue
                partial = wire.available() > 0
                prefix = wire.peek(MPX_PREFIX_SIZE)
                partial = True
                try:
                    length = parse_mpx_prefix(prefix)
                except MalformedMerlinData:
                    self._resync(wire, core)
                    continue
                if length - 1 > MAX_FRAME_BYTES:
                    core.fault("malformed", f"message of {length} bytes announced; skipping to the next 'MPX,'")
                    wire.skip(4)
                    self._resync(wire, core)
                    continue
                payload = length - 1
                if fast is not None and payload == fast[0] and not hdr_pending and \
                        wire.available() >= 2 * (MPX_PREFIX_SIZE + payload):
                    done = self._batch(wire, core, fast)  # whole frames back to back in the buffer
                    if done < 0:
                        return wire
                    if done:
                        partial = False
                        continue
                if fast is not None and payload == fast[0] and not hdr_pending:
                    # Frames of one acquisition differ only in sequence number and time stamps: compare
                    # the fixed fields (offset, chips, size, pixel type, layout) and read the sequence.
                    _size, fixed_at, fixed, head = fast
                    wire.fill(MPX_PREFIX_SIZE + head.header_size)
                    at = wire.start + MPX_PREFIX_SIZE
                    if bytes(wire.view[at + 10:at + fixed_at]) == fixed and bytes(wire.view[at:at + 4]) == b"MQ1,":
                        digits = bytes(wire.view[at + 4:at + 10])
                        if digits.isdigit():
                            wire.skip(MPX_PREFIX_SIZE + head.header_size)
                            index = int(digits) - 1
                            slot = core.frame_buffer(index)
                            if slot is None:
                                return wire
                            self._read_pixels(wire, head, slot)
                            core.commit(index)
                            partial, last = False, index
                            continue
                wire.skip(MPX_PREFIX_SIZE)
                kind = wire.peek(min(3, payload))
                if kind == b"HDR":
                    if payload > MAX_HDR_BYTES:
                        core.fault("malformed", f"acquisition header of {payload} bytes; skipped")
                        wire.skip(payload)
                        continue
                    text = wire.peek(payload).decode("latin-1")
                    wire.skip(payload)
                    hdr, hdr_pending = parse_hdr(text), True
                    continue
                if kind != b"MQ1" or payload < 16:
                    core.fault("malformed", f"unknown message type {kind!r} of {payload} bytes; skipped")
                    wire.skip(payload)
                    continue
                try:
                    size = int(wire.peek(16)[11:16])
                    head = parse_frame_header(wire.peek(min(size, payload)))
                    if head.header_size + head.data_nbytes != payload:
                        raise MalformedMerlinData(f"frame {head.sequence}: header and pixels make "
                                                  f"{head.header_size + head.data_nbytes} bytes, the message has "
                                                  f"{payload}")
                except (MalformedMerlinData, ValueError) as exc:
                    core.fault("malformed", f"malformed frame message skipped ({exc})")
                    wire.skip(payload)
                    continue
                if hdr_pending or core.acquisition is None:
                    acq = acquisition_from_headers(hdr, head, self.where)
                    acq.attrs = _merge(acq.attrs, self.attrs)
                    core.start(acq)  # a repeated header of this acquisition is only counted
                    hdr_pending = False
                    if core.finished.is_set() or core.stopping:
                        return wire
                current = core.acquisition
                assert current is not None
                if head.frame_shape != tuple(current.det_shape) or head.dtype != np.dtype(current.dtype):
                    core.fault("malformed", f"frame {head.sequence} is {head.frame_shape} {head.dtype}, the "
                               f"acquisition {tuple(current.det_shape)} {np.dtype(current.dtype)}; skipped")
                    wire.skip(payload)
                    continue
                raw_head = wire.peek(head.header_size)
                wire.skip(head.header_size)
                cut = _nth(raw_head, b",", 8)
                if cut > 0 and raw_head[4:10].isdigit() and raw_head[10:11] == b",":
                    fast = (payload, cut, raw_head[10:cut], head)
                index = head.sequence - 1
                slot = core.frame_buffer(index)
                if slot is None:
                    return wire  # stopping
                self._read_pixels(wire, head, slot)
                core.commit(index)
                partial, last = False, index
        except _Closed:
            if partial or wire.available():
                core.fault("truncated", f"the connection closed inside a message from {self.where}")
        finally:
            self.bytes_in += wire.bytes_in
            wire.bytes_in = 0  # counted once, also when the wire serves the next acquisition
        return wire

    def _scatter(self, wire: _Wire, core: ReceiverCore, fast: tuple[int, int, bytes, FrameHeader],
                 guess: int) -> int:
        """Read the next message with one scatter read: its header aside, its pixels straight into the slot
        of frame ``guess`` (the one after the last). Returns the frame index + 1, 0 when the message was
        something else (its bytes go back to the buffer), -1 when stopping.
        """
        payload, fixed_at, fixed, head = fast
        if head.raw:
            return 0
        slot = core.open_slot(guess)  # only inside a shard already open: nothing to wait for or count
        if slot is None:
            return 0
        size = MPX_PREFIX_SIZE + head.header_size
        front = self._front if len(self._front) == size else bytearray(size)
        self._front = front
        parts = [memoryview(front), slot.data]
        total, got = size + head.data_nbytes, 0
        while got < total:
            if wire.stop.is_set():
                raise _Closed("stopped")
            views = [parts[0][got:], parts[1]] if got < size else [parts[1][got - size:]]
            try:
                n = wire.sock.recvmsg_into(views)[0]
            except TimeoutError:
                if got:
                    continue
                return 0  # nothing came: back to the loop, which checks for a stop
            except OSError as exc:
                raise _Closed(str(exc)) from None
            if n == 0:
                if got:
                    wire.unread(bytes(front[:min(got, size)]) + bytes(slot[:max(0, got - size)]))
                raise _Closed("closed by the detector")
            wire.bytes_in += n
            got += n
            if got >= size and (front[:MPX_PREFIX_SIZE] != mpx_prefix(payload) or front[size - head.header_size:
                                                                                       size - head.header_size + 4] != b"MQ1,"):
                break  # not a frame of this acquisition: hand the bytes back
        at = MPX_PREFIX_SIZE
        digits = bytes(front[at + 4:at + 10])
        if got < total or front[at + 10:at + fixed_at] != fixed or not digits.isdigit():
            wire.unread(bytes(front[:min(got, size)]) + bytes(slot[:max(0, got - size)]))
            return 0
        index = int(digits) - 1
        if index != guess:  # out of order: the pixels go where they belong
            other = core.frame_buffer(index)
            if other is None:
                return -1
            other[...] = slot
        core.commit(index)
        return index + 1

    @staticmethod
    def _batch(wire: _Wire, core: ReceiverCore, fast: tuple[int, int, bytes, FrameHeader]) -> int:
        """Take the whole frame messages waiting in the buffer at once; returns how many (-1: stopping).

        All messages of an acquisition have one length, so the buffer is a
        table of records: their prefixes and fixed header fields are checked
        and their sequence numbers read with NumPy, and each run of
        consecutive frames is one copy into the pool.
        """
        payload, fixed_at, fixed, head = fast
        record = MPX_PREFIX_SIZE + payload
        k = wire.available() // record
        table = np.frombuffer(wire.buf, np.uint8, count=k * record, offset=wire.start).reshape(k, record)
        at = MPX_PREFIX_SIZE
        expected = np.frombuffer(mpx_prefix(payload) + b"MQ1,", np.uint8)
        digits = table[:, at + 4:at + 10]
        ok = (table[:, :at + 4] == expected).all(axis=1) & ((digits >= 48) & (digits <= 57)).all(axis=1)
        ok &= (table[:, at + 10:at + fixed_at] == np.frombuffer(fixed, np.uint8)).all(axis=1)
        m = k if ok.all() else int(np.argmin(ok))
        if m < 2:
            return 0
        seq = (digits[:m].astype(np.int64) - 48) @ (10 ** np.arange(5, -1, -1, dtype=np.int64))
        pixels = table[:m, at + head.header_size:]
        breaks = [0, *(np.flatnonzero(np.diff(seq) != 1) + 1).tolist(), m]
        try:
            for a, b in zip(breaks[:-1], breaks[1:], strict=False):
                if head.raw:
                    for r in range(a, b):
                        slot = core.frame_buffer(int(seq[r]) - 1)
                        if slot is None:
                            return -1
                        decode_frame(pixels[r], head, out=slot.view(head.dtype).reshape(head.frame_shape))
                        core.commit(int(seq[r]) - 1)
                elif not core.put_run(int(seq[a]) - 1, pixels[a:b]):
                    return -1
        finally:
            del table, pixels, digits
        wire.skip(m * record)
        return m

    @staticmethod
    def _read_pixels(wire: _Wire, head: FrameHeader, slot: np.ndarray) -> None:
        if head.raw:
            data = np.empty(head.data_nbytes, np.uint8)
            wire.read_into(data.data)
            decode_frame(data, head, out=slot.view(head.dtype).reshape(head.frame_shape))
            return
        wire.read_into(slot.data)  # big-endian pixels are converted by the persister

    @staticmethod
    def _resync(wire: _Wire, core: ReceiverCore) -> None:
        """Skip bytes up to the next ``MPX,`` (junk before a header, a cut message)."""
        skipped = 0
        while True:
            wire.fill(min(MPX_PREFIX_SIZE, len(wire.buf)))
            data = bytes(wire.view[wire.start:wire.end])
            at = data.find(b"MPX,", 1 if skipped == 0 else 0)
            if at >= 0:
                wire.skip(at)
                skipped += at
                break
            keep = 3  # "MPX" may straddle two reads
            wire.skip(len(data) - keep)
            skipped += len(data) - keep
            wire.fill(keep + 1)
        core.fault("junk_bytes", None, n=skipped)
        core.fault("malformed", f"skipped {skipped} bytes that were not a Merlin message")


def _nth(data: bytes, sep: bytes, n: int) -> int:
    """Index just after the ``n``-th ``sep`` in ``data`` (0 when there are fewer).

    Examples
    --------
    >>> _nth(b"a,b,c,d", b",", 2)
    4
    """
    at = -1
    for _ in range(n):
        at = data.find(sep, at + 1)
        if at < 0:
            return 0
    return at + 1


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class MerlinServer:
    """A simulated Merlin data port: serves frames to each client that connects (``diffraflow replay``).

    Parameters
    ----------
    frames
        ``(n, rows, cols)`` frames in diffraflow's orientation, or a ``.mib``
        path (sent byte for byte, with its ``.hdr`` if present).
    scan_shape
        Announced as ``Frames per Trigger`` = columns and ``ScanX``/``ScanY``.
    host, port
        Where to listen (port 0: any free port, see :attr:`port`).
    rate
        Frames per second (0: as fast as the receiver takes them).
    counter_depth
        Bits per counter to announce (default from the dtype: 8, 12 or 24).
    junk
        Bytes of garbage sent before the header (a receiver must skip them).
    acquisitions
        Acquisitions sent on each connection, each with its own header.
    on_reconnect
        ``"continue"``: a new connection gets the frames still to come (those
        that came due while nobody was connected are lost, as on a detector
        that keeps scanning); ``"restart"``: the acquisition is sent again from
        its header.
    """

    def __init__(self, frames: np.ndarray | str | Path, *, scan_shape: tuple[int, int] | None = None,
                 host: str = "127.0.0.1", port: int = DEFAULT_PORT, rate: float = 0.0,
                 counter_depth: int | None = None, junk: int = 0, acquisitions: int = 1,
                 on_reconnect: str = "continue", timestamp: str = "01/01/2026 00:00:00") -> None:
        self.rate = float(rate)
        self.junk, self.acquisitions, self.on_reconnect = int(junk), int(acquisitions), on_reconnect
        if isinstance(frames, (str, Path)):
            self._messages, self._hdr, self.n = _mib_messages(Path(frames))
        else:
            self.n = len(frames)
            dtype = np.asarray(frames[0]).dtype
            scan = scan_shape or (1, self.n)
            depth = counter_depth or {1: 8, 2: 12, 4: 24}.get(dtype.itemsize, 32)
            self._hdr = (f"HDR,\t\nTime and Date Stamp (day, mnth, yr, hr, min, s):\t{timestamp}\n"
                         f"Counter Depth (number):\t{depth}\nFrames in Acquisition (Number):\t{self.n}\n"
                         f"Frames per Trigger (Number):\t{scan[1]}\nScanX:\t{scan[1]}\nScanY:\t{scan[0]}\n"
                         f"End\t").encode("latin-1")
            self._frames, self._depth = frames, depth
            self._shape = tuple(np.asarray(frames[0]).shape)
            self._kind = {1: "U08", 2: "U16", 4: "U32", 8: "U64"}[dtype.itemsize]
            self._messages = None
            # Pixels are encoded once when they fit in memory; headers (sequence numbers) per frame.
            frame_bytes = int(np.prod(np.asarray(frames[0]).shape)) * dtype.itemsize
            self._pixels: list[bytes] | None = [] if self.n * frame_bytes <= self.CACHE_BYTES else None
        self._sock = socket.create_server((host, int(port)))
        self._sock.settimeout(0.2)
        self.host, self.port = host, self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.connections = 0
        self.blocked_seconds = 0.0
        self.t_start: float | None = None
        self.t_end: float | None = None

    #: Bytes of encoded pixels kept in memory (beyond that, frames are encoded as they are sent).
    CACHE_BYTES = 512 << 20

    def frame_message(self, i: int) -> list[bytes]:
        """The ``MPX`` message of frame ``i`` (0-based), as parts to send one after the other."""
        if self._messages is not None:
            return [self._messages(i)]
        if self._pixels is not None and i < len(self._pixels):
            pixels = self._pixels[i]
        else:
            pixels = encode_frame(self._frames[i], i + 1, counter_depth=self._depth)[384:]
            if self._pixels is not None and i == len(self._pixels):
                self._pixels.append(pixels)
        head = frame_header(i + 1, self._shape, pixel_type=self._kind, counter_depth=self._depth)
        return [mpx_prefix(len(head) + len(pixels)) + head, pixels]

    def start(self) -> MerlinServer:
        self._thread = threading.Thread(target=self._serve, name="merlin-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sock.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every acquisition was sent; True when done."""
        assert self._thread is not None
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        self._position = 0
        acquisition = 0
        clock: float | None = None
        while not self._stop.is_set() and acquisition < self.acquisitions:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            try:
                if self.junk:
                    conn.sendall(b"GARBAGE!" * (self.junk // 8) + b"G" * (self.junk % 8))
                while acquisition < self.acquisitions and not self._stop.is_set():
                    if self._position == 0 or self.on_reconnect == "restart":
                        self._position = 0
                        conn.sendall(mpx_prefix(len(self._hdr)) + self._hdr)
                        clock = None
                    clock = self._send_frames(conn, self._position, clock)
                    if self._position >= self.n:
                        acquisition += 1
                        self._position = 0
            except OSError:
                pass  # the receiver went away: wait for the next connection
            finally:
                conn.close()
        self.t_end = time.perf_counter()

    def _send_frames(self, conn: socket.socket, position: int, clock: float | None) -> float:
        if clock is None:
            clock = time.perf_counter() - position / self.rate if self.rate else time.perf_counter()
        if self.t_start is None:
            self.t_start = time.perf_counter()
        if self.rate and self.on_reconnect == "continue":
            position = max(position, int((time.perf_counter() - clock) * self.rate))  # frames lost while down
        i = position
        while i < self.n and not self._stop.is_set():
            if self.rate:
                due = clock + i / self.rate
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
            t0 = time.perf_counter()
            self._position = i  # a frame cut by a dropped connection is sent again if still due
            for part in self.frame_message(i):
                conn.sendall(part)
            self.blocked_seconds += max(0.0, time.perf_counter() - t0 - 0.001)
            self.sent += 1
            i += 1
            self._position = i
        return clock


def _mib_messages(path: Path) -> tuple[Any, bytes, int]:
    """Frames of a ``.mib`` file as ``MPX`` messages, byte for byte, and its ``.hdr``."""
    from diffraflow.flow.readers.rawio import read_head

    head = parse_frame_header(read_head(path, 768))
    record = head.header_size + head.data_nbytes
    n = path.stat().st_size // record
    hdr_path = path.with_suffix(".hdr")
    hdr = hdr_path.read_bytes() if hdr_path.is_file() else (
        f"HDR,\t\nFrames in Acquisition (Number):\t{n}\nFrames per Trigger (Number):\t{n}\nEnd\t").encode("latin-1")
    data = np.memmap(path, np.uint8, mode="r")
    prefix = mpx_prefix(record)

    def message(i: int) -> bytes:
        return prefix + bytes(data[i * record:(i + 1) * record])

    return message, hdr, n


def iter_messages(blob: bytes) -> Iterator[bytes]:
    """Split a byte string of ``MPX`` messages into payloads (tests).

    Examples
    --------
    >>> list(iter_messages(mpx_prefix(3) + b"abc" + mpx_prefix(1) + b"d"))
    [b'abc', b'd']
    """
    at = 0
    while at < len(blob):
        length = parse_mpx_prefix(blob[at:at + MPX_PREFIX_SIZE])
        yield blob[at + MPX_PREFIX_SIZE:at + MPX_PREFIX_SIZE + length - 1]
        at += MPX_PREFIX_SIZE + length - 1

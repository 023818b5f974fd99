"""A generic ZeroMQ framing for any camera: a JSON header part, and a raw frame part.

The sender binds a PUSH socket; the receiver connects a PULL socket. Every
ZeroMQ message is multipart:

=====================  ==========================================================================
``start``              ``[{"type": "start", "n_frames": N, "shape": [rows, cols], "dtype": "<u2",
                       "scan_shape": [R, C], "series": "id", "attrs": {...}}]``
``frame``              ``[{"type": "frame", "index": i, "series": "id"}, <rows*cols*itemsize bytes>]``
``end``                ``[{"type": "end", "series": "id"}]``
=====================  ==========================================================================

``dtype`` is a NumPy type string of an integer or float type (``u1``,
``<u2``, ``>i4``, ``<f4``...): the frame part is exactly ``rows * cols``
such values in row-major order, and nothing else is accepted (no object or
structured types, nothing unpickled). ``scan_shape``, ``series`` and
``attrs`` (``scan`` metadata such as ``modality``) are optional; ``index``
counts from 0 in scan order.

Examples
--------
>>> import numpy as np
>>> frames = np.arange(6 * 2 * 3, dtype="<f4").reshape(6, 2, 3)
>>> server = ZmqFrameServer(frames, port=0, scan_shape=(3, 2)).start()
>>> from diffraflow.flow.live.inprocess import receive_to_memory
>>> cube, ledger = receive_to_memory(ZmqFrameClient("127.0.0.1", server.port))
>>> bool((cube.reshape(6, 2, 3) == frames).all()), cube.dtype.str
(True, '<f4')
>>> server.stop()
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
from diffraflow.flow.live.core import Acquisition, DetectorUnreachableError, ReceiverCore
from diffraflow.flow.live.zmqpush import PushServer

__all__ = ["ZmqFrameClient", "ZmqFrameServer", "frame_dtype", "DEFAULT_PORT"]

DEFAULT_PORT = 5555
#: Longest JSON header part accepted.
MAX_HEADER_BYTES = 64 << 10


class MalformedMessage(ValueError):
    """A message that does not follow the framing (the text says what)."""


def frame_dtype(text: Any) -> np.dtype:
    """The frame dtype a header names: integer or float types only.

    Examples
    --------
    >>> frame_dtype("<u2").str
    '<u2'
    >>> try:
    ...     frame_dtype("O")
    ... except MalformedMessage as exc:
    ...     print(exc)
    dtype 'O' is not an integer or float type (u1, <u2, <f4...)
    """
    try:
        dtype = np.dtype(str(text))
    except TypeError:
        raise MalformedMessage(f"dtype {text!r} is not a NumPy type string") from None
    if dtype.kind not in "uif" or dtype.itemsize > 8 or dtype.fields is not None or dtype.subdtype is not None:
        raise MalformedMessage(f"dtype {text!r} is not an integer or float type (u1, <u2, <f4...)")
    return dtype


def _header(part: Any) -> dict[str, Any]:
    raw = bytes(part.buffer if hasattr(part, "buffer") else part)
    if len(raw) > MAX_HEADER_BYTES:
        raise MalformedMessage(f"header part of {len(raw)} bytes")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MalformedMessage("header part is not JSON") from None
    if not isinstance(header, dict) or header.get("type") not in ("start", "frame", "end"):
        raise MalformedMessage("header is not a map with type start, frame or end")
    return header


class ZmqFrameClient:
    """Receive one acquisition in the generic ZeroMQ framing into a :class:`ReceiverCore`.

    Parameters
    ----------
    host, port
        The sender's PUSH address.
    connect_timeout
        Seconds the first connection may take before the sender counts as unreachable.
    hwm
        ZeroMQ receive high-water mark (messages).
    """

    name = "zmq"

    def __init__(self, host: str, port: int = DEFAULT_PORT, *, connect_timeout: float = 10.0, hwm: int = 8) -> None:
        self.host, self.port = host, int(port)
        self.connect_timeout = float(connect_timeout)
        self.hwm = int(hwm)
        self.where = f"tcp://{host}:{port}"

    def resume_acquisition(self, det_shape: tuple[int, int], dtype: Any, scan_shape: tuple[int, int],
                           attrs: dict[str, Any]) -> Acquisition:
        """The acquisition of a cube this protocol began (resuming needs no new ``start``)."""
        series = (attrs.get("original_metadata") or {}).get("series")
        return Acquisition(n_frames=scan_shape[0] * scan_shape[1], det_shape=det_shape,
                           dtype=np.dtype(dtype), scan_shape=scan_shape, attrs=attrs, series=series)

    def _acquisition(self, header: dict[str, Any]) -> Acquisition:
        try:
            shape = tuple(int(v) for v in header["shape"])
            dtype = frame_dtype(header["dtype"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessage(f"start header without a valid shape and dtype ({exc})") from None
        if len(shape) != 2 or min(shape) < 1:
            raise MalformedMessage(f"frame shape {list(shape)} is not two positive numbers")
        scan = header.get("scan_shape")
        scan_shape = (int(scan[0]), int(scan[1])) if isinstance(scan, list) and len(scan) == 2 else None
        extra: dict[str, Any] = header["attrs"] if isinstance(header.get("attrs"), dict) else {}
        attrs = {"modality": "4dstem", **extra, "detector": {**extra.get("detector", {}), "shape": list(shape)},
                 "provenance": {"source_file": self.where, "source_format": "zmq"},
                 "original_metadata": {"series": header.get("series"), "dtype": dtype.str}}
        n = header.get("n_frames")
        return Acquisition(n_frames=int(n) if isinstance(n, int) and n > 0 else None, det_shape=(shape[0], shape[1]),
                           dtype=dtype.newbyteorder("="), scan_shape=scan_shape, attrs=attrs,
                           series=header.get("series"))

    def run(self, core: ReceiverCore, stop: threading.Event) -> None:
        """Receive until the acquisition is complete or ``stop`` is set.

        Raises
        ------
        DetectorUnreachableError
            No connection within ``connect_timeout`` seconds.
        """
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        ctx: Any = zmq.Context.instance()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.where)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        connected = ever = False
        down_since = time.monotonic()
        t0 = time.monotonic()
        series: Any = None
        wire: np.dtype | None = None  # the frame dtype as sent (a resumed session learns it from a start)
        try:
            while not stop.is_set() and not core.finished.is_set() and not core.all_received():
                events = dict(poller.poll(200))
                if monitor in events:
                    event = recv_monitor_message(monitor)["event"]
                    if event == zmq.EVENT_CONNECTED:
                        if ever:
                            core.fault("reconnects", f"reconnected to {self.where}")
                        connected = ever = True
                    elif event == zmq.EVENT_DISCONNECTED and connected:
                        connected, down_since = False, time.monotonic()
                        core.fault("disconnects", f"the connection to {self.where} dropped; reconnecting")
                if ever and not connected and core.acquisition is None and \
                        time.monotonic() - down_since > self.connect_timeout:
                    raise DetectorUnreachableError(self.where, "the connection dropped before an acquisition "
                                                   f"started and did not come back within {self.connect_timeout:g} s",
                                                   "check the detector, then run the same command again")
                if not ever and time.monotonic() - t0 > self.connect_timeout:
                    raise DetectorUnreachableError(self.where, "no ZeroMQ sender answers there",
                                                   "check the address (--connect HOST:PORT) and that the sender "
                                                   "binds a PUSH socket")
                if sock not in events:
                    continue
                parts = sock.recv_multipart(copy=False)
                try:
                    header = _header(parts[0])
                    kind = header["type"]
                    if kind == "start":
                        series = header.get("series")
                        announced = self._acquisition(header)
                        wire = frame_dtype(header["dtype"])
                        core.start(announced)
                        if core.finished.is_set() or core.stopping:
                            return
                        continue
                    if kind == "end":
                        if header.get("series") in (None, series):
                            core.end_of_stream()
                        continue
                    acq = core.acquisition
                    if acq is None:
                        raise MalformedMessage(f"frame {header.get('index')} before any start message")
                    index = header.get("index")
                    if not isinstance(index, int) or isinstance(index, bool):
                        raise MalformedMessage("frame header without an integer index")
                    if header.get("series") not in (None, series):
                        raise MalformedMessage(f"frame of another series {header.get('series')!r}")
                    if len(parts) != 2 or len(parts[1]) != acq.frame_nbytes:
                        size = len(parts[1]) if len(parts) > 1 else 0
                        core.fault("truncated", f"frame {index}: {size} bytes, expected {acq.frame_nbytes}; "
                                   "skipped")
                        continue
                except MalformedMessage as exc:
                    core.fault("malformed", f"malformed message skipped ({exc})")
                    continue
                slot = core.frame_buffer(index)
                if slot is None:
                    return
                pixels = np.frombuffer(parts[1].buffer, wire if wire is not None else acq.dtype)
                slot.view(acq.dtype)[...] = pixels  # converted to native byte order on the way
                core.commit(index)
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)


class ZmqFrameServer(PushServer):
    """A sender of the generic framing: PUSH socket, start / frames / end (``diffraflow replay``).

    Parameters
    ----------
    frames
        ``(n, rows, cols)`` frames (or an object with ``len`` and ``[i]``).
    host, port
        Where to bind (port 0: any free port, see :attr:`port`).
    rate
        Frames per second (0: as fast as the receiver takes them).
    scan_shape, attrs
        Announced in the start header.
    """

    thread_name = "zmq-sim"

    def __init__(self, frames: Any, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, rate: float = 0.0,
                 scan_shape: tuple[int, int] | None = None, attrs: dict[str, Any] | None = None, repeat: int = 1,
                 hwm: int = 8) -> None:
        super().__init__(frames, host=host, port=port, rate=rate, repeat=repeat, hwm=hwm)
        self.scan_shape, self.attrs = scan_shape, attrs or {}

    def _serve(self) -> None:
        first = np.asarray(self.frames[0])
        for k in range(self.repeat):
            series = f"diffraflow-replay-{time.time_ns()}-{k}"
            start = {"type": "start", "n_frames": self.n, "shape": list(first.shape), "dtype": first.dtype.str,
                     "series": series, "attrs": self.attrs}
            if self.scan_shape:
                start["scan_shape"] = list(self.scan_shape)
            if not self._send([json.dumps(start).encode()]):
                return
            self.t_start = self.t_start or time.perf_counter()
            clock = time.perf_counter()
            for i in range(self.n):
                self._pace(clock, i)
                head = json.dumps({"type": "frame", "index": i, "series": series}).encode()
                if not self._send([head, np.ascontiguousarray(self.frames[i], first.dtype).tobytes()]):
                    return
                self.sent += 1
            if not self._send([json.dumps({"type": "end", "series": series}).encode()]):
                return
        self.t_end = time.perf_counter()

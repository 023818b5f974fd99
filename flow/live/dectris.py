"""DECTRIS SIMPLON stream V2: one CBOR message per ZeroMQ message (start, image, end), on a PULL socket.

The detector's PUSH socket (port 31001) sends a ``start`` map when armed
(``number_of_images``, ``image_size_x``/``_y``, ``channels``, ``count_time``,
``series_unique_id``...), one ``image`` map per exposure (``image_id`` from 0,
``data``: channel name -> multi-dimensional array) and ``end`` at disarm.
Arrays are CBOR tag 40 (``[dims, typed array]``, row-major; tag 1040 column-major) around an
RFC 8746 typed array (tags 64-87: unsigned, signed or float, either byte
order), whose byte string may be a DECTRIS compression tag 56500
(``[algorithm, element size, compressed bytes]``, ``bslz4`` or ``lz4`` in
HDF5 framing) — decompressed with the ``dectris-compression`` package.

:class:`DectrisClient` receives the first channel of every image (or the
one named), keeps the socket's high-water mark low so that a full slot pool
holds the detector back, and watches the connection through a ZeroMQ
monitor (unreachable at start: an error; dropped and re-made: counted).
:class:`DectrisServer` is the simulated detector of ``diffraflow replay``;
it compresses with the HDF5 filters of ``hdf5plugin`` (the same framing).

Nothing read from the socket is unpickled: CBOR decodes to plain values,
and arrays are built from their declared type and shape only.

Examples
--------
>>> import numpy as np
>>> frames = np.arange(4 * 3 * 5, dtype="uint16").reshape(4, 3, 5)
>>> server = DectrisServer(frames, port=0, scan_shape=(2, 2), compression="bslz4").start()
>>> from diffraflow.flow.live.inprocess import receive_to_memory
>>> cube, ledger = receive_to_memory(DectrisClient("127.0.0.1", server.port))
>>> bool((cube.reshape(4, 3, 5) == frames).all()), cube.shape
(True, (2, 2, 3, 5))
>>> server.stop()
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from diffraflow.flow.live.core import Acquisition, DetectorUnreachableError, ReceiverCore
from diffraflow.flow.live.zmqpush import PushServer

__all__ = ["DectrisClient", "DectrisServer", "decode_message", "encode_image", "compress", "DEFAULT_PORT"]

DEFAULT_PORT = 31001
#: RFC 8746 typed-array tags: tag -> dtype.
TYPED_ARRAY_TAGS = {
    64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8",
    72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
    80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8",
}
_TAG_OF = {np.dtype(v).str if np.dtype(v).itemsize > 1 else np.dtype(v).kind + "1": k
           for k, v in TYPED_ARRAY_TAGS.items() if k != 68}
MULTI_DIM, MULTI_DIM_COLUMN_MAJOR, COMPRESSED = 40, 1040, 56500
#: Largest message accepted (bytes); a 16-Mpixel 32-bit frame is 64 MiB.
MAX_MESSAGE_BYTES = 256 << 20


class MalformedMessage(ValueError):
    """A stream message that does not follow SIMPLON stream V2 (the text says what)."""


def _decompress(item: Any) -> bytes:
    from dectris.compression import decompress

    try:
        algorithm, elem_size, data = item
        out: bytes = decompress(bytes(data), str(algorithm), elem_size=int(elem_size))
        return out
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"compressed byte string cannot be decoded ({exc})") from None
    except RuntimeError as exc:  # the decompressor's own failures
        raise MalformedMessage(f"compressed byte string cannot be decoded ({exc})") from None


def _resolve(obj: Any) -> Any:
    """Replace array, typed-array and compression tags by NumPy arrays and bytes."""
    import cbor2

    if isinstance(obj, cbor2.CBORTag):
        tag, value = obj.tag, obj.value
        if tag == COMPRESSED:
            return _decompress(value)
        if tag in TYPED_ARRAY_TAGS:
            raw = _resolve(value)
            if not isinstance(raw, (bytes, bytearray, memoryview)):
                raise MalformedMessage(f"typed array (tag {tag}) holds no byte string")
            dtype = np.dtype(TYPED_ARRAY_TAGS[tag])
            if len(raw) % dtype.itemsize:
                raise MalformedMessage(f"typed array of {len(raw)} bytes is not whole {dtype} elements")
            return np.frombuffer(raw, dtype)
        if tag in (MULTI_DIM, MULTI_DIM_COLUMN_MAJOR):
            try:
                dims, contents = value
                dims = [int(d) for d in dims]
            except (TypeError, ValueError):
                raise MalformedMessage("multi-dimensional array is not [dims, array]") from None
            array = _resolve(contents)
            if not isinstance(array, np.ndarray) or int(np.prod(dims)) != array.size:
                raise MalformedMessage(f"multi-dimensional array of dims {dims} does not match its contents")
            return array.reshape(dims, order="F" if tag == MULTI_DIM_COLUMN_MAJOR else "C")
        return obj  # other tags stay as they are (never evaluated)
    if isinstance(obj, dict):
        return {k: (_resolve(v) if k != "data" or not isinstance(v, dict) else v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_resolve(v) for v in obj]
    return obj


def decode_message(blob: bytes | memoryview, channel: str | None = None) -> dict[str, Any]:
    """Decode one stream V2 message; for an ``image``, ``data`` holds only ``channel``'s array (decoded).

    Raises
    ------
    MalformedMessage
        Not CBOR, not a map with a ``type``, or an array that does not decode.

    Examples
    --------
    >>> msg = decode_message(encode_image(3, np.ones((2, 2), "uint16"), series_id=1, compression="lz4"))
    >>> msg["type"], msg["image_id"], msg["data"]["threshold_1"].tolist()
    ('image', 3, [[1, 1], [1, 1]])
    """
    import cbor2

    try:
        obj = cbor2.loads(blob, max_depth=64)
    except Exception as exc:  # cbor2 raises its own decode errors and ValueErrors
        raise MalformedMessage(f"not a CBOR message ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise MalformedMessage("not a map with a 'type'")
    data = obj.get("data")
    if obj["type"] == "image":
        if not isinstance(data, dict) or not data:
            raise MalformedMessage("image message without channel data")
        name = channel if channel is not None else next(iter(data))
        if name not in data:
            raise MalformedMessage(f"image message has no channel {name!r} (has {sorted(data)})")
        obj = {**_resolve({k: v for k, v in obj.items() if k != "data"}), "data": {name: _resolve(data[name])}}
    else:
        obj = _resolve({k: v for k, v in obj.items() if k not in ("flatfield", "pixel_mask",
                                                                    "countrate_correction_lookup_table")})
    message: dict[str, Any] = obj
    return message


def compress(frames: np.ndarray, algorithm: str) -> list[bytes]:
    """Compress each frame with the HDF5 ``bslz4`` (bitshuffle + LZ4) or ``lz4`` filter (``hdf5plugin``).

    Examples
    --------
    >>> from dectris.compression import decompress
    >>> a = np.arange(12, dtype="uint16").reshape(1, 3, 4)
    >>> np.frombuffer(decompress(compress(a, "bslz4")[0], "bslz4", elem_size=2), "uint16").tolist()[:4]
    [0, 1, 2, 3]
    """
    import io

    import h5py
    import hdf5plugin

    frames = np.ascontiguousarray(frames)
    options = hdf5plugin.Bitshuffle(nelems=0, cname="lz4") if algorithm == "bslz4" else hdf5plugin.LZ4()
    out = []
    with h5py.File(io.BytesIO(), "w") as fh:
        ds = fh.create_dataset("f", shape=frames.shape, chunks=(1, *frames.shape[1:]), dtype=frames.dtype,
                               **options)
        ds[...] = frames
        for i in range(len(frames)):
            out.append(bytes(ds.id.read_direct_chunk((i, 0, 0))[1]))
    return out


def encode_image(image_id: int, frame: np.ndarray | None = None, *, series_id: int = 1, series_unique_id: str = "",
                 compression: str = "none", compressed: bytes | None = None, dtype: Any = None,
                 shape: tuple[int, int] | None = None, channel: str = "threshold_1") -> bytes:
    """One ``image`` message (used by the simulated detector and tests).

    Examples
    --------
    >>> len(encode_image(0, np.zeros((4, 4), "uint8"))) > 16
    True
    """
    import cbor2

    dtype = np.dtype(dtype if dtype is not None else frame.dtype)  # type: ignore[union-attr]
    shape = tuple(shape if shape is not None else frame.shape)  # type: ignore[union-attr]
    little = dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
    if compression == "none":
        payload: Any = np.ascontiguousarray(frame, dtype=little).tobytes()
    else:
        body = compressed if compressed is not None else compress(np.asarray(frame, little)[None], compression)[0]
        payload = cbor2.CBORTag(COMPRESSED, [compression, dtype.itemsize if compression == "bslz4" else 0, body])
    key = little.str if little.itemsize > 1 else little.kind + "1"
    array = cbor2.CBORTag(MULTI_DIM, [list(shape), cbor2.CBORTag(_TAG_OF[key], payload)])
    stamp = [image_id, 1_000_000]
    return cbor2.dumps({"type": "image", "image_id": int(image_id), "series_id": int(series_id),
                        "series_unique_id": series_unique_id, "real_time": [1000, 1_000_000],
                        "start_time": stamp, "stop_time": [image_id + 1000, 1_000_000], "data": {channel: array}})


def start_message(n: int, shape: tuple[int, int], *, series_id: int = 1, series_unique_id: str = "",
                  count_time: float = 0.001, user_data: Any = None, channel: str = "threshold_1") -> bytes:
    """A ``start`` message.

    Examples
    --------
    >>> decode_message(start_message(4, (2, 3)))["number_of_images"]
    4
    """
    import cbor2

    return cbor2.dumps({"type": "start", "number_of_images": int(n), "image_size_x": int(shape[1]),
                        "image_size_y": int(shape[0]), "series_id": series_id, "series_unique_id": series_unique_id,
                        "channels": [channel], "count_time": count_time, "frame_time": count_time,
                        "detector_description": "simulated (diffraflow replay)", "user_data": user_data or {}})


def end_message(series_id: int = 1, series_unique_id: str = "") -> bytes:
    import cbor2

    return cbor2.dumps({"type": "end", "series_id": series_id, "series_unique_id": series_unique_id})


class DectrisClient:
    """Receive one series from a DECTRIS stream V2 PUSH socket into a :class:`ReceiverCore`.

    Parameters
    ----------
    host, port
        The detector's stream address (the receiver connects a PULL socket to it).
    connect_timeout
        Seconds the first connection may take before the detector counts as unreachable.
    channel
        Channel to keep (default: the first the ``start`` message lists).
    hwm
        ZeroMQ receive high-water mark (messages queued before the sender is held back).
    """

    name = "dectris"

    def __init__(self, host: str, port: int = DEFAULT_PORT, *, connect_timeout: float = 10.0,
                 channel: str | None = None, hwm: int = 8) -> None:
        self.host, self.port = host, int(port)
        self.connect_timeout = float(connect_timeout)
        self.channel = channel
        self.hwm = int(hwm)
        self.where = f"tcp://{host}:{port}"

    def resume_acquisition(self, det_shape: tuple[int, int], dtype: Any, scan_shape: tuple[int, int],
                           attrs: dict[str, Any]) -> Acquisition:
        """The acquisition of a cube this protocol began (resuming needs no new ``start``)."""
        series = (attrs.get("original_metadata") or {}).get("series_unique_id")
        return Acquisition(n_frames=scan_shape[0] * scan_shape[1], det_shape=det_shape,
                           dtype=np.dtype(dtype), scan_shape=scan_shape, attrs=attrs, series=series or None)

    def _acquisition(self, start: dict[str, Any], image: np.ndarray) -> Acquisition:
        user = start.get("user_data") if isinstance(start.get("user_data"), dict) else {}
        scan = user.get("scan_shape") if user else None
        scan_shape = (int(scan[0]), int(scan[1])) if isinstance(scan, (list, tuple)) and len(scan) == 2 else None
        keep = {k: v for k, v in start.items() if isinstance(v, (str, int, float, bool)) or k == "channels"}
        attrs: dict[str, Any] = {"modality": "4dstem", "detector": {"shape": list(image.shape)},
                                 "provenance": {"source_file": self.where, "source_format": "dectris-stream2"},
                                 "original_metadata": {**keep, "bit_depth": int(start.get("bit_depth_image", 0)
                                                                                or 8 * image.dtype.itemsize)}}
        count = start.get("count_time")
        if isinstance(count, (int, float)) and 0 <= count < float("inf"):
            attrs["exposure_s"] = float(count)
        n = start.get("number_of_images")
        series = start.get("series_unique_id") or (str(start["series_id"]) if "series_id" in start else None)
        return Acquisition(n_frames=int(n) if isinstance(n, int) and n > 0 else None, det_shape=image.shape,
                           dtype=image.dtype.newbyteorder("="), scan_shape=scan_shape, attrs=attrs, series=series)

    def run(self, core: ReceiverCore, stop: threading.Event) -> None:
        """Receive until the series is complete or ``stop`` is set.

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
        sock.setsockopt(zmq.RCVBUF, 4 << 20)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.where)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        connected, ever = False, False
        down_since = time.monotonic()
        t0 = time.monotonic()
        start: dict[str, Any] | None = None
        start_pending = False
        series: Any = None
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
                    raise DetectorUnreachableError(self.where, "no DECTRIS stream answers there",
                                                   "check the address (--connect HOST:PORT, port 31001 by "
                                                   "default) and that the stream is enabled in SIMPLON "
                                                   "(format cbor)")
                if sock not in events:
                    continue
                frame = sock.recv(copy=False)
                if len(frame) > MAX_MESSAGE_BYTES:
                    core.fault("malformed", f"message of {len(frame)} bytes skipped")
                    continue
                try:
                    msg = decode_message(frame.buffer, self.channel)
                except MalformedMessage as exc:
                    core.fault("malformed", f"malformed message skipped ({exc})")
                    continue
                kind = msg["type"]
                if kind == "start":
                    # Checked against the acquisition at its first image (which gives the dtype).
                    start, start_pending = msg, True
                    series = msg.get("series_unique_id") or msg.get("series_id")
                    continue
                if kind == "end":
                    if series is None or (msg.get("series_unique_id") or msg.get("series_id")) == series:
                        core.end_of_stream()
                    continue
                if kind != "image":
                    continue
                image = next(iter(msg["data"].values()))
                if not isinstance(image, np.ndarray) or image.ndim != 2:
                    core.fault("malformed", f"image {msg.get('image_id')}: not a 2-d array; skipped")
                    continue
                if core.acquisition is None or start_pending:
                    if start is None:
                        core.fault("malformed", "image before any start message; skipped (start the receiver "
                                   "before arming the detector)")
                        continue
                    core.start(self._acquisition(start, image))
                    start_pending = False
                    if core.finished.is_set() or core.stopping:
                        return
                acq = core.acquisition
                assert acq is not None
                if image.shape != tuple(acq.det_shape) or image.dtype.newbyteorder("=") != np.dtype(acq.dtype):
                    core.fault("malformed", f"image {msg.get('image_id')} is {image.shape} {image.dtype}, the "
                               f"series {tuple(acq.det_shape)} {np.dtype(acq.dtype)}; skipped")
                    continue
                image_series = msg.get("series_unique_id") or msg.get("series_id")
                if series is not None and image_series not in (None, series):
                    core.fault("malformed", f"image of another series {image_series!r}; skipped")
                    continue
                index = msg.get("image_id")
                if not isinstance(index, int):
                    core.fault("malformed", "image without an integer image_id; skipped")
                    continue
                slot = core.frame_buffer(index)
                if slot is None:
                    return
                slot.view(acq.dtype).reshape(acq.det_shape)[...] = image
                core.commit(index)
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)


class DectrisServer(PushServer):
    """A simulated DECTRIS stream V2 detector: PUSH socket, start / images / end (``diffraflow replay``).

    Parameters
    ----------
    frames
        ``(n, rows, cols)`` frames (or an object with ``len`` and ``[i]``).
    host, port
        Where to bind (port 0: any free port, see :attr:`port`).
    rate
        Frames per second (0: as fast as the receiver takes them).
    compression
        ``bslz4``, ``lz4`` or ``none``.
    scan_shape
        Sent as ``user_data.scan_shape``.
    repeat
        Series sent one after the other.
    """

    thread_name = "dectris-sim"

    def __init__(self, frames: Any, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, rate: float = 0.0,
                 compression: str = "bslz4", scan_shape: tuple[int, int] | None = None, repeat: int = 1,
                 hwm: int = 8) -> None:
        super().__init__(frames, host=host, port=port, rate=rate, repeat=repeat, hwm=hwm)
        self.compression, self.scan_shape = compression, scan_shape

    def _serve(self) -> None:
        first = np.asarray(self.frames[0])
        shape = first.shape
        for k in range(self.repeat):
            uid = f"diffraflow-replay-{time.time_ns()}-{k}"
            user = {"scan_shape": list(self.scan_shape)} if self.scan_shape else {}
            if not self._send([start_message(self.n, shape, series_id=k + 1, series_unique_id=uid, user_data=user)]):
                return
            self.t_start = self.t_start or time.perf_counter()
            clock = time.perf_counter()
            batch: list[bytes] = []
            for i in range(self.n):
                self._pace(clock, i)
                if self.compression != "none" and not batch:
                    block = np.asarray([np.asarray(self.frames[j]) for j in range(i, min(self.n, i + 64))])
                    batch = compress(block, self.compression)
                frame = np.asarray(self.frames[i])
                blob = encode_image(i, frame, series_id=k + 1, series_unique_id=uid, compression=self.compression,
                                    compressed=batch.pop(0) if batch else None)
                if not self._send([blob]):
                    return
                self.sent += 1
            if not self._send([end_message(k + 1, uid)]):
                return
        self.t_end = time.perf_counter()

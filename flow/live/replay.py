"""``diffraflow replay``: serve a stored cube as a detector stream (the simulated detector).

Frames are read from the cube a chunk at a time (memory stays at one chunk)
and sent in scan order through the protocol's sender
(:class:`~diffraflow.flow.live.merlin.MerlinServer`,
:class:`~diffraflow.flow.live.dectris.DectrisServer`,
:class:`~diffraflow.flow.live.zmqframes.ZmqFrameServer`) at the requested
rate. A Merlin ``.mib`` file is served byte for byte, as the detector would.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> from diffraflow.flow.store import create_cube
>>> out = pathlib.Path(tempfile.mkdtemp()) / "c.zarr"
>>> with create_cube(out, scan_shape=(2, 2), det_shape=(3, 3), dtype="uint8",
...                  attrs={"modality": "4dstem", "detector": {"shape": [3, 3]}}) as w:
...     w.patterns.append(np.arange(36, dtype="uint8").reshape(4, 3, 3)); _ = w.finalize()
>>> frames = CubeFrames(out)
>>> len(frames), int(frames[3][2, 2]), frames.scan_shape
(4, 35, (2, 2))
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CubeFrames", "replay", "make_server"]


class CubeFrames:
    """Frames of a scan cube by flat scan index, read one stored chunk at a time.

    Examples
    --------
    >>> # CubeFrames("scan.zarr")[0].shape  -> (det_y, det_x)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from diffraflow.flow.store import open_cube_group

        group, scan = open_cube_group(path)
        array: Any = group["patterns"]
        self.array = array
        self.scan_shape = tuple(int(v) for v in array.shape[:2])
        self.det_shape = tuple(int(v) for v in array.shape[2:])
        self.dtype = np.dtype(str(array.dtype))
        self.attrs = scan.model_dump(mode="json")
        self.chunks = tuple(int(v) for v in array.chunks[:2])
        self._cache: tuple[int, int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]

    def __getitem__(self, i: int) -> np.ndarray:
        sx = self.scan_shape[1]
        if self._cache is None or not self._cache[0] <= i < self._cache[1]:
            y, x = divmod(int(i), sx)
            cy, cx = self.chunks
            y0 = (y // cy) * cy
            if cx >= sx:
                block = np.asarray(self.array[y0:y0 + cy])
                start = y0 * sx
            else:
                x0 = (x // cx) * cx
                block = np.asarray(self.array[y:y + 1, x0:x0 + cx])
                start = y * sx + x0
            flat = block.reshape(-1, *self.det_shape)
            self._cache = (start, start + len(flat), flat)
        start, _stop, flat = self._cache
        frame: np.ndarray = flat[int(i) - start]
        return frame


def make_server(source: str | os.PathLike[str], protocol: str, *, host: str = "127.0.0.1", port: int | None = None,
                rate: float = 0.0, compression: str = "bslz4", repeat: int = 1, junk: int = 0,
                on_reconnect: str = "continue") -> Any:
    """The protocol's simulated detector serving ``source`` (a cube, or a ``.mib`` for Merlin).

    Raises
    ------
    InputFileError
        A ``.mib`` file with another protocol, or an unknown protocol.
    """
    from diffraflow.schemas.errors import InputFileError

    path = Path(source)
    if path.suffix.lower() == ".mib":
        if protocol != "merlin":
            raise InputFileError(str(path), f"a .mib file can only be replayed as merlin, not {protocol}",
                                 "convert it first (diffraflow convert), or use --protocol merlin")
        from diffraflow.flow.live.merlin import DEFAULT_PORT, MerlinServer

        return MerlinServer(path, host=host, port=DEFAULT_PORT if port is None else port, rate=rate, junk=junk,
                            acquisitions=repeat, on_reconnect=on_reconnect)
    frames = CubeFrames(path)
    if protocol == "merlin":
        from diffraflow.flow.live.merlin import DEFAULT_PORT, MerlinServer

        if frames.dtype.kind != "u":
            raise InputFileError(str(path), f"Merlin frames are unsigned integers; the cube holds {frames.dtype}",
                                 "replay it with --protocol zmq")
        return MerlinServer(frames, scan_shape=frames.scan_shape, host=host,  # type: ignore[arg-type]
                            port=DEFAULT_PORT if port is None else port, rate=rate, junk=junk, acquisitions=repeat,
                            on_reconnect=on_reconnect)
    if protocol == "dectris":
        from diffraflow.flow.live.dectris import DEFAULT_PORT as DECTRIS_PORT
        from diffraflow.flow.live.dectris import DectrisServer

        return DectrisServer(frames, host=host, port=DECTRIS_PORT if port is None else port, rate=rate,
                             compression=compression, scan_shape=frames.scan_shape, repeat=repeat)  # type: ignore[arg-type]
    if protocol == "zmq":
        from diffraflow.flow.live.zmqframes import DEFAULT_PORT as ZMQ_PORT
        from diffraflow.flow.live.zmqframes import ZmqFrameServer

        attrs = {k: frames.attrs[k] for k in ("modality", "beam_energy_kv", "step_size", "exposure_s")
                 if frames.attrs.get(k) is not None}
        return ZmqFrameServer(frames, host=host, port=ZMQ_PORT if port is None else port, rate=rate,
                              scan_shape=frames.scan_shape, attrs=attrs, repeat=repeat)  # type: ignore[arg-type]
    raise InputFileError("--protocol", f"unknown protocol {protocol!r}", "use merlin, dectris or zmq")


def replay(source: str | os.PathLike[str], *, protocol: str, host: str = "127.0.0.1", port: int | None = None,
           rate: float = 0.0, compression: str = "bslz4", repeat: int = 1, junk: int = 0,
           on_reconnect: str = "continue", on_listen: Any = None) -> dict[str, float]:
    """Serve ``source`` until every frame was sent; returns frames sent, seconds, rate and time held back.

    Examples
    --------
    >>> # replay("scan.zarr", protocol="merlin", rate=2000)
    """
    server = make_server(source, protocol, host=host, port=port, rate=rate, compression=compression, repeat=repeat,
                         junk=junk, on_reconnect=on_reconnect)
    if on_listen is not None:
        on_listen(f"tcp://{server.host}:{server.port}")
    server.start()
    try:
        while not server.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    t0 = server.t_start or time.perf_counter()
    t1 = server.t_end or time.perf_counter()
    seconds = max(t1 - t0, 1e-9)
    return {"sent": server.sent, "seconds": seconds, "rate_fps": server.sent / seconds,
            "blocked_s": server.blocked_seconds}

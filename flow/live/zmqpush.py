"""The simulated ZeroMQ detectors' common part: a bound PUSH socket served from a thread, at a frame rate.

:class:`~diffraflow.flow.live.dectris.DectrisServer` and
:class:`~diffraflow.flow.live.zmqframes.ZmqFrameServer` differ only in what
they send (:meth:`PushServer._serve`); binding, the sending thread, pacing
and the account of time spent held back by the receiver live here.

Examples
--------
>>> class Hello(PushServer):
...     def _serve(self):
...         self._send([b"hello"])
>>> server = Hello([], port=0)
>>> server.port > 0
True
>>> server.stop()
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["PushServer"]


class PushServer:
    """A PUSH socket bound at ``host:port`` (0: any free port, see :attr:`port`) that ``_serve`` sends on.

    Parameters
    ----------
    frames
        ``(n, rows, cols)`` frames (or an object with ``len`` and ``[i]``).
    host, port
        Where to bind.
    rate
        Frames per second (0: as fast as the receiver takes them).
    repeat
        Series sent one after the other.
    hwm
        Send high-water mark: messages queued before the receiver holds the sender back.
    """

    thread_name = "zmq-push-sim"

    def __init__(self, frames: Any, *, host: str = "127.0.0.1", port: int = 0, rate: float = 0.0, repeat: int = 1,
                 hwm: int = 8) -> None:
        import zmq

        self.frames, self.n = frames, len(frames)
        self.rate, self.repeat = float(rate), int(repeat)
        self._sock: Any = zmq.Context.instance().socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, int(hwm))
        self._sock.setsockopt(zmq.LINGER, 2000)
        if port:
            self._sock.bind(f"tcp://{host}:{port}")
            self.port = int(port)
        else:
            self.port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.host = host
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.blocked_seconds = 0.0
        self.t_start: float | None = None
        self.t_end: float | None = None

    def start(self) -> Any:
        """Start sending in a thread; returns the server."""
        self._thread = threading.Thread(target=self._serve, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until everything was sent; True when done."""
        assert self._thread is not None
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop sending and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sock.close(0)

    def _serve(self) -> None:
        raise NotImplementedError  # each detector's messages

    def _send(self, parts: list[Any]) -> bool:
        """Send one message (its parts) without giving up on a full queue; False once stopped."""
        import zmq

        while not self._stop.is_set():
            try:
                self._sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:  # the receiver holds us back (high-water mark reached)
                t0 = time.perf_counter()
                self._sock.poll(100, zmq.POLLOUT)
                self.blocked_seconds += time.perf_counter() - t0
        return False

    def _pace(self, clock: float, i: int) -> None:
        """Sleep until frame ``i`` of a series started at ``clock`` is due at :attr:`rate`."""
        if self.rate:
            due = clock + i / self.rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)

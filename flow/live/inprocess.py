"""Frames handed over inside one process: a source for tests and notebooks, through the same core.

:class:`InProcessStream` is a sender and a client at once: code calls
:meth:`~InProcessStream.announce` and :meth:`~InProcessStream.send` (which
block while the bounded queue and the core's pool are full: the same
backpressure a socket gives), and the live session runs it like any protocol.
:func:`receive_to_memory` receives one acquisition from any client into a
temporary cube and returns its frames (tests, doctests).

Examples
--------
>>> import numpy as np, threading
>>> stream = InProcessStream(maxsize=2)
>>> frames = np.arange(4 * 2 * 2, dtype="uint8").reshape(4, 2, 2)
>>> def sender():
...     stream.announce(n_frames=4, det_shape=(2, 2), dtype="uint8", scan_shape=(2, 2))
...     for i in [0, 2, 1, 3, 3]:
...         stream.send(i, frames[i])
>>> threading.Thread(target=sender).start()
>>> cube, ledger = receive_to_memory(stream)
>>> bool((cube.reshape(4, 2, 2) == frames).all()), ledger.counts["duplicates"], ledger.counts["out_of_order"]
(True, 1, 1)
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.flow.live.core import Acquisition, Ledger, ReceiverCore

__all__ = ["InProcessStream", "receive_to_memory"]

_END = object()


class InProcessStream:
    """A detector stream fed by Python calls in the same process.

    Parameters
    ----------
    maxsize
        Messages queued before :meth:`send` blocks.
    attrs
        ``scan`` metadata for the cube (modality defaults to ``4dstem``).
    """

    name = "inprocess"
    where = "in-process"

    def __init__(self, maxsize: int = 64, attrs: dict[str, Any] | None = None) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self.attrs = attrs or {}

    # -- sender side ---------------------------------------------------------------------------------
    def announce(self, *, n_frames: int | None, det_shape: tuple[int, int], dtype: Any,
                 scan_shape: tuple[int, int] | None = None, series: str | None = None,
                 attrs: dict[str, Any] | None = None) -> None:
        """Start an acquisition (like a header on the wire)."""
        merged = {"modality": "4dstem", **self.attrs, **(attrs or {})}
        merged["detector"] = {**merged.get("detector", {}), "shape": list(det_shape)}
        merged.setdefault("provenance", {"source_format": "inprocess"})
        self._queue.put(Acquisition(n_frames=n_frames, det_shape=(int(det_shape[0]), int(det_shape[1])),
                                    dtype=np.dtype(dtype),
                                    scan_shape=scan_shape, attrs=merged, series=series))

    def send(self, index: int, frame: np.ndarray, timeout: float | None = None) -> None:
        """Send frame ``index`` (blocks while the receiver holds the sender back)."""
        self._queue.put((int(index), np.asarray(frame)), timeout=timeout)

    def end(self) -> None:
        """The sender ends the series (frames not sent are missing)."""
        self._queue.put(_END)

    # -- client side ---------------------------------------------------------------------------------
    def resume_acquisition(self, det_shape: tuple[int, int], dtype: Any, scan_shape: tuple[int, int],
                           attrs: dict[str, Any]) -> Acquisition:
        """The acquisition of a cube this stream began (resuming it)."""
        return Acquisition(n_frames=scan_shape[0] * scan_shape[1], det_shape=det_shape,
                           dtype=np.dtype(dtype), scan_shape=scan_shape, attrs=attrs)

    def run(self, core: ReceiverCore, stop: threading.Event) -> None:
        """Hand queued messages to ``core`` until the scan is complete or ``stop`` is set."""
        while not stop.is_set() and not core.finished.is_set():
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(item, Acquisition):
                core.start(item)
            elif item is _END:
                core.end_of_stream()
            else:
                index, frame = item
                acq = core.acquisition
                if acq is None:
                    core.fault("malformed", f"frame {index} before any acquisition was announced; dropped")
                    continue
                if frame.shape != tuple(acq.det_shape):
                    core.fault("malformed", f"frame {index} of shape {frame.shape}, expected {acq.det_shape}")
                    continue
                slot = core.frame_buffer(index)
                if slot is None:
                    return
                slot.view(acq.dtype).reshape(acq.det_shape)[...] = frame
                core.commit(index)


def receive_to_memory(client: Any, *, scan_shape: tuple[int, int] | None = None, slots: int | None = None,
                      gap_timeout: float = 5.0, timeout: float = 60.0) -> tuple[np.ndarray, Ledger]:
    """Receive one acquisition from ``client`` into a temporary cube; return its frames and ledger.

    Examples
    --------
    >>> stream = InProcessStream()
    >>> stream.announce(n_frames=1, det_shape=(1, 1), dtype="uint8"); stream.send(0, np.ones((1, 1)))
    >>> receive_to_memory(stream)[0].shape
    (1, 1, 1, 1)
    """
    from diffraflow.flow.store import create_cube, open_cube

    folder = Path(tempfile.mkdtemp(prefix="diffraflow-live-"))

    def open_store(acq: Acquisition, layout: Any) -> Any:
        return create_cube(folder / "raw.zarr", scan_shape=acq.scan_shape, det_shape=acq.det_shape,  # type: ignore[arg-type]
                           dtype=acq.dtype, attrs=acq.attrs, layout=layout, in_place=True)

    core = ReceiverCore(open_store, slots=slots, gap_timeout=gap_timeout, scan_shape=scan_shape)
    stop = threading.Event()
    failure: list[BaseException] = []

    def receive() -> None:
        try:
            client.run(core, stop)
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)
            core.stop(exc)

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        try:
            done = core.finished.wait(timeout)
        finally:
            stop.set()
            thread.join(5)
        if failure:
            raise failure[0]
        if core.error is not None:
            raise core.error
        if not done:
            core.stop()
            raise TimeoutError(f"no complete acquisition within {timeout} s")
        assert core.ledger is not None
        return np.asarray(open_cube(folder / "raw.zarr")["patterns"].values), core.ledger
    finally:
        # The cube was only a staging area for the frames returned: leave nothing behind in the temp folder.
        shutil.rmtree(folder, ignore_errors=True)

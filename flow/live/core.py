"""The receiver core shared by every detector protocol: slot pool, raw-cube persistence, frame ledger.

A protocol client (:mod:`~diffraflow.flow.live.merlin`, :mod:`~diffraflow.flow.live.dectris`,
:mod:`~diffraflow.flow.live.zmqframes`, :mod:`~diffraflow.flow.live.inprocess`) decodes
its wire format and talks to a :class:`ReceiverCore`:

1. :meth:`ReceiverCore.start` with the :class:`Acquisition` the stream
   announces (frame shape, dtype, number of frames, scan shape, metadata);
   the core opens the raw cube (new, or the same one resumed) through the
   session's ``open_store`` callback;
2. for each frame, :meth:`ReceiverCore.frame_buffer` with the frame's scan
   index returns the bytes to fill — a **slot** of the fixed pool, inside the
   buffer of the shard the frame belongs to — and the client fills it
   straight from the socket, then calls :meth:`ReceiverCore.commit`;
3. :meth:`ReceiverCore.end_of_stream` when the sender says the series ended.

**Bounded memory and backpressure.** The pool holds ``slots`` frames,
grouped into shard-sized buffers (the cube's shards are chosen to fit at
least :data:`MIN_GROUPS` in the pool). A frame of a shard that has no buffer
yet waits in :meth:`~ReceiverCore.frame_buffer` until the persister frees
one: the client stops reading, so TCP flow control or the ZeroMQ high-water
mark holds the sender back. Nothing is dropped to make room.

**Persisted first.** The persister thread writes each shard whole, once, as
soon as all its frames are in (``FrameArrayWriter.write_region``), then
publishes the flat index ranges persisted in the cube's acquisition record,
so a pipeline following the cube (:class:`~diffraflow.flow.sources.ZarrCubeSource`)
reads only persisted frames. Compute never holds the detector back.

**Every index accounted for** (:class:`Ledger`): each frame index is
received, persisted or missing. A hole in a shard is declared missing once
later frames have arrived and ``gap_timeout`` seconds have passed; silence
for ``gap_timeout`` ends the acquisition (aborted scans are silent on the
wire), every index not received becomes missing, and the shards are written
with zeros there and listed in the record and in the ``received`` map of the
cube (1 received, 0 missing). Duplicates, frames for shards already written
(late), out-of-order frames, out-of-range indices, malformed or truncated
messages, disconnects and reconnects, and a new acquisition starting before
this one ended are counted in :attr:`Ledger.counts`.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> from diffraflow.flow.store import create_cube, open_cube
>>> out = pathlib.Path(tempfile.mkdtemp()) / "raw.zarr"
>>> def open_store(acq, layout):
...     return create_cube(out, scan_shape=acq.scan_shape, det_shape=acq.det_shape, dtype=acq.dtype,
...                        attrs=acq.attrs, layout=layout, in_place=True)
>>> core = ReceiverCore(open_store, slots=8)
>>> core.start(Acquisition(n_frames=6, det_shape=(2, 2), dtype=np.dtype("uint8"), scan_shape=(2, 3),
...                        attrs={"modality": "4dstem", "detector": {"shape": [2, 2]}}))
>>> for i in [1, 0, 2, 3, 4, 5]:
...     buf = core.frame_buffer(i); buf[:] = i; core.commit(i)
>>> core.wait_finished(10)
True
>>> open_cube(out)["patterns"].values[:, :, 0, 0].tolist(), core.ledger.counts["out_of_order"]
([[0, 1, 2], [3, 4, 5]], 1)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diffraflow.schemas.chunking import (
    DEFAULT_CHUNK_BYTES,
    CubeLayout,
    choose_layout,
)
from diffraflow.schemas.errors import DiffraflowError, InputFileError

__all__ = ["Acquisition", "ReceiverCore", "Ledger", "StreamError", "DetectorUnreachableError", "LiveStopped",
           "ranges_of", "merge_range", "default_slots", "MIN_GROUPS", "FAULTS"]

#: The pool holds at least this many shard buffers (one filling, one being written, spares for disorder).
MIN_GROUPS = 4
#: Largest shard of a live raw cube (bytes): 64 frames of 256 x 256 uint16, 2,330 of 60 x 60 uint8.
LIVE_SHARD_BYTES = DEFAULT_CHUNK_BYTES
#: Default pool size in bytes when ``--slots`` is not given.
DEFAULT_POOL_BYTES = 256 * 2**20

#: Malformed messages in a row, before any frame was accepted, after which a stream is declared undecodable.
MAX_BAD_BEFORE_START = 16

#: Counted faults, in the order summaries list them.
FAULTS = ("duplicates", "late", "out_of_order", "out_of_range", "malformed", "truncated", "junk_bytes",
          "disconnects", "reconnects", "new_acquisition_before_end", "repeated_headers", "gap_timeouts",
          "backpressure_waits")


class StreamError(DiffraflowError, ConnectionError):
    """A detector stream failed in a way the receiver cannot mend (one line, exit status 2)."""


class DetectorUnreachableError(StreamError):
    """Nothing answers at the detector's address."""


class LiveStopped(DiffraflowError, RuntimeError):
    """The live session was stopped (Ctrl-C, ``--timeout``, or a fault that ends it)."""


def default_slots(frame_nbytes: int) -> int:
    """Slots in the default pool: :data:`DEFAULT_POOL_BYTES` of frames, at least 64.

    Examples
    --------
    >>> default_slots(256 * 256 * 2), default_slots(60 * 60)
    (2048, 74565)
    """
    return max(64, DEFAULT_POOL_BYTES // max(1, frame_nbytes))


def ranges_of(mask: np.ndarray) -> list[list[int]]:
    """``[start, stop)`` runs of the true entries of a 1-d mask.

    Examples
    --------
    >>> ranges_of(np.array([0, 1, 1, 0, 1], bool))
    [[1, 3], [4, 5]]
    """
    flags = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(flags[1:] != flags[:-1])
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2], strict=True)]


def merge_range(ranges: list[list[int]], start: int, stop: int) -> None:
    """Add ``[start, stop)`` to sorted, merged ranges in place.

    Examples
    --------
    >>> r = [[0, 4], [8, 12]]; merge_range(r, 4, 8); r
    [[0, 12]]
    """
    import bisect

    i = bisect.bisect_left([a for a, _ in ranges], start)
    ranges.insert(i, [start, stop])
    merged: list[list[int]] = []
    for a, b in ranges:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    ranges[:] = merged


@dataclass
class Acquisition:
    """What a stream announces about the scan it is sending.

    Attributes
    ----------
    n_frames
        Frames in the acquisition (``None``: not said; then ``scan_shape`` must be).
    det_shape
        ``(rows, cols)`` of a decoded frame.
    dtype
        Native dtype stored in the cube.
    scan_shape
        ``(rows, cols)`` of the scan, or ``None`` (then ``(1, n_frames)``, with a note).
    attrs
        ``scan`` metadata (modality, detector, exposure, original metadata, provenance).
    wire_dtype
        Dtype of the bytes a client puts in a slot when not native (e.g. ``>u2``); converted when persisted.
    flip_rows
        Reverse the rows of every frame when persisting (Merlin: diffraflow's orientation).
    series
        Identity of the acquisition on the wire (a new one starting is detected by it).
    notes
        Things the user should know (how the scan shape was chosen).
    """

    n_frames: int | None
    det_shape: tuple[int, int]
    dtype: np.dtype
    scan_shape: tuple[int, int] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    wire_dtype: np.dtype | None = None
    flip_rows: bool = False
    series: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def frame_nbytes(self) -> int:
        """Bytes of one frame in a slot."""
        return int(np.prod(self.det_shape)) * np.dtype(self.wire_dtype or self.dtype).itemsize


class Ledger:
    """The account of every frame index of one scan.

    ``state[i]`` is 0 (nothing yet), 1 (received, in a slot), 2 (persisted)
    or 3 (missing); ``arrival[i]`` the wall-clock time frame ``i`` arrived
    (this session), NaN otherwise.

    Examples
    --------
    >>> led = Ledger(4); led.state[:2] = 2; led.state[3] = 3
    >>> led.summary()["missing_ranges"], led.summary()["persisted"]
    ([[3, 4]], 2)
    """

    NONE, RECEIVED, PERSISTED, MISSING = 0, 1, 2, 3

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.state = np.zeros(self.n, np.uint8)
        self.arrival = np.full(self.n, np.nan)
        self.counts: dict[str, int] = dict.fromkeys(FAULTS, 0)
        #: Frames received (committed) in this session.
        self.received = 0
        #: Frames persisted before this session began (a resumed scan).
        self.persisted_before = 0
        #: Indices a resumed session found missing because the previous one stopped ([start, stop) ranges).
        self.lost_while_down: list[list[int]] = []

    def count(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + int(n)

    def summary(self) -> dict[str, Any]:
        """Counts and missing ranges, for records and reports."""
        state = self.state
        missing = state == self.MISSING
        return {"frames_expected": self.n, "received": int(self.received),
                "persisted": int(np.count_nonzero(state == self.PERSISTED)),
                "persisted_before_resume": int(self.persisted_before),
                "missing": int(np.count_nonzero(missing)), "missing_ranges": ranges_of(missing),
                "lost_while_down": self.lost_while_down, "faults": dict(self.counts)}


class _Shard:
    """One shard's buffer while its frames arrive."""

    __slots__ = ("index", "start", "stop", "group", "have", "count", "overtaken")

    def __init__(self, index: int, start: int, stop: int, group: int) -> None:
        self.index, self.start, self.stop, self.group = index, start, stop, group
        self.have = np.zeros(stop - start, bool)
        self.count = 0
        self.overtaken: float | None = None  # when a later frame first showed this shard has holes


class ReceiverCore:
    """Fixed slot pool, shard assembly, persister thread and ledger of one live acquisition.

    Parameters
    ----------
    open_store
        ``open_store(acquisition, layout) -> CubeWriter``: creates (or, for a
        resumed scan, reopens) the in-place raw cube. ``layout`` is the layout
        fitted to the pool, or None when the store exists already.
    slots
        Frames the pool holds (bounded memory); default: 256 MiB of frames.
    gap_timeout
        Seconds before a hole is declared missing, and of silence that ends the scan.
    scan_shape
        The user's scan shape (overrides the stream's; must hold its frames).
    on_event
        Called with one-line messages (faults, reconnects) for the progress display.
    """

    def __init__(self, open_store: Callable[[Acquisition, CubeLayout | None], Any], *, slots: int | None = None,
                 gap_timeout: float = 10.0, scan_shape: tuple[int, int] | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        if slots is not None and slots < 2:
            raise InputFileError("--slots", f"a pool of {slots} slots cannot hold two frames",
                                 "pass --slots 2 or more (default: 256 MiB of frames)")
        if not gap_timeout > 0:
            raise InputFileError("--gap-timeout", f"must be positive seconds, got {gap_timeout}",
                                 "pass --gap-timeout 10, say")
        self._open_store = open_store
        self.requested_slots = slots
        self.gap_timeout = float(gap_timeout)
        self.scan_shape_hint = tuple(scan_shape) if scan_shape else None
        self.on_event = on_event or (lambda message: None)
        self.acquisition: Acquisition | None = None
        self.ledger: Ledger | None = None
        self.writer: Any = None
        self.layout: CubeLayout | None = None
        self.persisted_ranges: list[list[int]] = []
        self.started = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.stopping = False
        self.sender_ended = False
        self.peak_groups_in_use = 0
        self.blocked_seconds = 0.0
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.t_finished: float | None = None
        self.latest: tuple[int, np.ndarray] | None = None
        self._latest_time = 0.0
        self._lock = threading.Condition(threading.Lock())  # a plain lock: cheaper than the default RLock
        self._open: dict[int, _Shard] = {}
        self._free: list[int] = []
        self._ready: queue.Queue[_Shard | None] = queue.Queue()
        self._max_seen = -1
        self._last_activity = time.monotonic()
        self._scratch = np.empty(0, np.uint8)
        self._persister: threading.Thread | None = None
        self._shard_written: np.ndarray = np.zeros(0, bool)
        self._early_faults: dict[str, int] = {}
        self._resumed = False
        self._first_after_resume: int | None = None
        self._awaited = 0
        self._bad_before_start = 0

    # -- set-up -------------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        """Frames the pool holds."""
        return self.n_groups * self.frames_per_group if self.layout is not None else int(self.requested_slots or 0)

    @property
    def pool_bytes(self) -> int:
        """Bytes held by the pool's buffers."""
        return self.slots * (self.acquisition.frame_nbytes if self.acquisition else 0)

    def start(self, acq: Acquisition) -> None:
        """Begin (or, after a reconnect, confirm) the acquisition the stream announces.

        A later call with the same shape and frame count is a repeated header
        (counted); a different one while frames are outstanding is a new
        acquisition before this one ended: counted, and the scan ends (the
        rest missing).

        Raises
        ------
        InputFileError
            The scan shape and number of frames disagree, or neither is known.
        """
        with self._lock:
            if self.acquisition is not None:
                if self._awaited == 0:
                    return  # our scan has all its frames: a later acquisition is not ours
                same = (tuple(acq.det_shape) == tuple(self.acquisition.det_shape)
                        and np.dtype(acq.dtype) == np.dtype(self.acquisition.dtype)
                        and (acq.n_frames in (None, self.ledger.n if self.ledger else None))
                        and (acq.series is None or self.acquisition.series is None
                             or acq.series == self.acquisition.series))
                if same:
                    self.ledger.count("repeated_headers")  # type: ignore[union-attr]
                    return
                self.ledger.count("new_acquisition_before_end")  # type: ignore[union-attr]
                self.on_event("a new acquisition started before this one ended: ending this scan, the frames "
                              "not received are missing")
                self._end_scan_locked("new acquisition")
                return
            acq = self._settle_scan_shape(acq)
            n = int(acq.scan_shape[0] * acq.scan_shape[1])  # type: ignore[index]
            itemsize = np.dtype(acq.dtype).itemsize
            layout = None
            if self.writer is None:
                layout = fit_layout(acq.scan_shape, acq.det_shape, itemsize,  # type: ignore[arg-type]
                                    self.requested_slots or default_slots(acq.frame_nbytes))
            self.acquisition = acq
            self.ledger = Ledger(n)
        writer = self._open_store(acq, layout)
        try:
            self._attach(acq, writer)
        except BaseException:
            if writer.acquisition_extra:
                writer._release()  # a resumed cube stays resumable (the stream did not match it)
            else:
                writer.abort()
            raise

    def _attach(self, acq: Acquisition, writer: Any) -> None:
        with self._lock:
            self.writer = writer
            self.layout = writer.patterns.layout
            self._check_store(acq)
            self._restore(writer.acquisition_extra)
            for kind, n in self._early_faults.items():
                self.ledger.count(kind, n)  # type: ignore[union-attr]
            self._awaited = int(np.count_nonzero(self.ledger.state == Ledger.NONE))  # type: ignore[union-attr]
            fps = self.frames_per_group = self.layout.frames_per_shard
            slots = self.requested_slots or max(default_slots(acq.frame_nbytes), MIN_GROUPS * fps)
            n_shards = self._n_shards()
            if slots // fps < min(2, n_shards):
                raise InputFileError("--slots", f"{slots} slots hold fewer than two shards of {fps} frames of the "
                                     f"cube {writer.final}", f"pass --slots {MIN_GROUPS * fps} or more")
            self.n_groups = min(slots // fps, n_shards)  # never more buffers than the scan has shards
            self._buffers: list[np.ndarray] = [np.empty((fps, acq.frame_nbytes), np.uint8)
                                               for _ in range(self.n_groups)]
            self._free = list(range(self.n_groups))[::-1]
            self._scratch = np.empty(acq.frame_nbytes, np.uint8)
            self._last_activity = time.monotonic()
            self._persister = threading.Thread(target=self._persist_loop, name="diffraflow-persister", daemon=True)
            self._persister.start()
            self.started.set()
            if self._all_accounted():
                self._ready.put(None)  # nothing left to receive: finalize at once

    def _settle_scan_shape(self, acq: Acquisition) -> Acquisition:
        where = "--scan-shape"
        if self.scan_shape_hint is not None:
            rows, cols = (int(v) for v in self.scan_shape_hint)
            if rows < 1 or cols < 1:
                raise InputFileError(where, f"{rows} {cols} must be two positive integers", "give ROWS COLS")
            if acq.n_frames not in (None, 0) and rows * cols != acq.n_frames:
                raise InputFileError(where, f"{rows} x {cols} = {rows * cols} frames but the detector announces "
                                     f"{acq.n_frames}", f"give ROWS COLS with ROWS x COLS = {acq.n_frames}")
            acq.scan_shape = (rows, cols)
        elif acq.scan_shape is None:
            if not acq.n_frames:
                raise InputFileError("stream", "the detector does not announce how many frames it will send",
                                     "pass --scan-shape ROWS COLS")
            acq.scan_shape = (1, int(acq.n_frames))
            acq.notes.append(f"the stream does not say the scan shape: storing 1 x {acq.n_frames} "
                             "(pass --scan-shape ROWS COLS)")
        elif acq.n_frames and acq.scan_shape[0] * acq.scan_shape[1] != acq.n_frames:
            raise InputFileError("stream", f"scan shape {acq.scan_shape} does not hold the {acq.n_frames} frames "
                                 "announced", f"pass --scan-shape ROWS COLS with ROWS x COLS = {acq.n_frames}")
        acq.n_frames = acq.scan_shape[0] * acq.scan_shape[1]
        return acq

    def _check_store(self, acq: Acquisition) -> None:
        arr = self.writer.patterns.array
        shape = tuple(int(v) for v in arr.shape)
        assert acq.scan_shape is not None  # settled by start()
        if shape != (*acq.scan_shape, *acq.det_shape) or np.dtype(str(arr.dtype)) != np.dtype(acq.dtype):
            raise InputFileError(str(self.writer.final), f"holds {shape[:2]} frames of {shape[2:]} {arr.dtype}, the "
                                 f"stream sends {acq.scan_shape} of {acq.det_shape} {np.dtype(acq.dtype)}",
                                 "resume only the same scan, or choose another --output")

    def _restore(self, extra: dict[str, Any]) -> None:
        """Mark what an earlier session of this scan persisted (a resumed cube)."""
        led = self.ledger
        assert led is not None and self.layout is not None
        n_shards = self._n_shards()
        self._shard_written = np.zeros(n_shards, bool)
        for a, b in extra.get("persisted", []):
            led.state[int(a):int(b)] = Ledger.PERSISTED
            merge_range(self.persisted_ranges, int(a), int(b))
        for a, b in extra.get("missing_ranges", []):
            led.state[int(a):int(b)] = Ledger.MISSING
        for s in range(n_shards):
            start, stop = self._shard_span(s)
            self._shard_written[s] = bool((led.state[start:stop] >= Ledger.PERSISTED).all())
        led.persisted_before = int(np.count_nonzero(led.state == Ledger.PERSISTED))
        for key, value in dict(extra.get("faults", {})).items():
            led.counts[key] = int(value)
        led.lost_while_down = [list(r) for r in extra.get("lost_while_down", [])]
        self._resumed = bool(extra.get("persisted"))

    # -- shard geometry -----------------------------------------------------------------------------
    def _geometry(self) -> tuple[int, int, int, int]:
        """Scan rows and columns, shard rows and columns."""
        assert self.layout is not None
        return (int(self.layout.shape[0]), int(self.layout.shape[1]), int(self.layout.shards[0]),
                int(self.layout.shards[1]))

    def _n_shards(self) -> int:
        sy, sx, ry, rx = self._geometry()
        return -(-sy // ry) if rx >= sx else sy * -(-sx // rx)

    def _shard_of(self, i: int) -> int:
        _sy, sx, ry, rx = self._geometry()
        return (i // sx) // ry if rx >= sx else (i // sx) * -(-sx // rx) + (i % sx) // rx

    def _shard_span(self, s: int) -> tuple[int, int]:
        sy, sx, ry, rx = self._geometry()
        if rx >= sx:
            return s * ry * sx, min((s + 1) * ry, sy) * sx
        per_row = -(-sx // rx)
        y, c = divmod(s, per_row)
        return y * sx + c * rx, y * sx + min((c + 1) * rx, sx)

    # -- the client's side --------------------------------------------------------------------------
    def frame_buffer(self, index: int, timeout: float | None = None) -> np.ndarray | None:
        """The bytes to fill with frame ``index`` (a pool slot, or scratch for a frame to drop).

        Waits while the pool is full (backpressure). Returns ``None`` when the
        session is stopping or ``timeout`` passed; then the client stops reading.
        """
        with self._lock:
            led, n = self.ledger, self.ledger.n if self.ledger else 0
            if led is None or not 0 <= index < n:
                if led is not None:
                    led.count("out_of_range")
                return self._scratch
            state = led.state[index]
            if state != Ledger.NONE:
                led.count("late" if state == Ledger.MISSING else "duplicates")
                return self._scratch
            s = self._shard_of(index)
            if self._shard_written[s]:
                led.count("late")
                return self._scratch
            shard = self._open.get(s)
            if shard is None:
                if not self._free:
                    led.count("backpressure_waits")
                    t0 = time.monotonic()
                    deadline = None if timeout is None else t0 + timeout
                    while not self._free and not self.stopping and not self.finished.is_set():
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            break
                        self._lock.wait(0.05 if left is None else min(0.05, left))
                    self.blocked_seconds += time.monotonic() - t0
                    if not self._free:
                        return None
                    if led.state[index] != Ledger.NONE or self._shard_written[s]:
                        led.count("late")
                        return self._scratch  # the gap timeout gave up on this shard meanwhile
                start, stop = self._shard_span(s)
                shard = self._open[s] = _Shard(s, start, stop, self._free.pop())
                self.peak_groups_in_use = max(self.peak_groups_in_use, self.n_groups - len(self._free))
            slot: np.ndarray = self._buffers[shard.group][index - shard.start]
            return slot

    def open_slot(self, index: int) -> np.ndarray | None:
        """The slot of frame ``index`` when its shard is open and the frame still awaited, else None.

        Never waits and counts nothing: for clients that read a frame before
        they know its index (a guess, checked before :meth:`commit`).
        """
        with self._lock:
            led = self.ledger
            if led is None or not 0 <= index < led.n or led.state[index] != Ledger.NONE:
                return None
            shard = self._open.get(self._shard_of(index))
            if shard is None or shard.have[index - shard.start]:
                return None
            slot: np.ndarray = self._buffers[shard.group][index - shard.start]
            return slot

    def put_run(self, first: int, frames: np.ndarray, fix: Callable[[np.ndarray], Any] | None = None) -> bool:
        """Frames ``first, first + 1, ...`` (rows of ``frames``, bytes as sent) in one go.

        For clients that find many frames back to back in their receive buffer:
        each run inside one shard is one copy and one ledger update; anything
        irregular (a duplicate, a late frame, an index out of range) goes frame
        by frame through :meth:`frame_buffer` and :meth:`commit`. ``fix`` is
        applied to each copied block (e.g. an in-place byte swap). Returns
        False when the session is stopping (the client stops reading).

        Examples
        --------
        >>> # core.put_run(100, rows_of_64_frames)  -> True
        """
        m, row, i = len(frames), 0, int(first)
        while row < m:
            with self._lock:
                led = self.ledger
                shard = None
                if led is not None and 0 <= i < led.n:
                    s = self._shard_of(i)
                    take = min(m - row, self._shard_span(s)[1] - i)
                    regular = not self._shard_written[s] and not led.state[i:i + take].any()
                    shard = self._open.get(s) if regular else None
                    if shard is not None and shard.have[i - shard.start:i - shard.start + take].any():
                        shard = None
            if shard is None:  # irregular, or a shard still to open (may wait for a free buffer)
                slot = self.frame_buffer(i)
                if slot is None:
                    return False
                slot[...] = frames[row]
                if fix is not None:
                    fix(slot)
                self.commit(i)
                row, i = row + 1, i + 1
                continue
            assert led is not None  # a shard is only found with a ledger
            pos = i - shard.start
            dest = self._buffers[shard.group][pos:pos + take]
            dest[...] = frames[row:row + take]  # outside the lock: only this client writes an open shard
            if fix is not None:
                fix(dest)
            now = time.time()
            with self._lock:
                shard.have[pos:pos + take] = True
                shard.count += take
                led.state[i:i + take] = Ledger.RECEIVED
                led.arrival[i:i + take] = now
                led.received += take
                self._awaited -= take
                if i < self._max_seen:
                    led.count("out_of_order")
                self._max_seen = max(self._max_seen, i + take - 1)
                if self.t_first is None:
                    self.t_first = now
                self.t_last = now
                self._last_activity = time.monotonic()
                if self._resumed and self._first_after_resume is None:
                    self._first_after_resume = i
                if shard.count == shard.stop - shard.start:
                    del self._open[shard.index]
                    self._ready.put(shard)
                if now - self._latest_time > 0.2:
                    self._latest_time = now
                    self.latest = (i + take - 1, dest[take - 1].copy())
            row, i = row + take, i + take
        return True

    def commit(self, index: int) -> None:
        """Frame ``index`` is in the buffer :meth:`frame_buffer` gave (no-op for a dropped frame)."""
        now = time.time()
        with self._lock:
            led = self.ledger
            if led is None or not 0 <= index < led.n or led.state[index] != Ledger.NONE:
                return
            s = self._shard_of(index)
            shard = self._open.get(s)
            if shard is None:
                return
            pos = index - shard.start
            if shard.have[pos]:
                return
            shard.have[pos] = True
            shard.count += 1
            led.state[index] = Ledger.RECEIVED
            self._awaited -= 1
            led.arrival[index] = now
            led.received += 1
            if index < self._max_seen:
                led.count("out_of_order")
            self._max_seen = max(self._max_seen, index)
            if self.t_first is None:
                self.t_first = now
            self.t_last = now
            self._last_activity = time.monotonic()
            if self._resumed and self._first_after_resume is None:
                self._first_after_resume = index
            if shard.count == shard.stop - shard.start:
                del self._open[s]
                self._ready.put(shard)
            if now - self._latest_time > 0.2:
                self._latest_time = now
                self.latest = (index, self._buffers[shard.group][pos].copy())

    def discard(self, index: int) -> None:
        """The client could not fill frame ``index`` (a truncated message): counted, the slot stays free."""
        with self._lock:
            if self.ledger is not None:
                self.ledger.count("truncated")

    def fault(self, kind: str, detail: str | None = None, n: int = 1) -> None:
        """Count a fault the client saw (``malformed``, ``junk_bytes``, ``disconnects``...).

        Raises
        ------
        StreamError
            :data:`MAX_BAD_BEFORE_START` malformed messages came before any
            acquisition could start: the stream cannot be decoded (an
            unsupported format), and waiting would never end.
        """
        if kind == "malformed" and self.acquisition is None:
            self._bad_before_start += 1
            if self._bad_before_start >= MAX_BAD_BEFORE_START:
                raise StreamError("stream", f"{self._bad_before_start} malformed messages and no acquisition "
                                  f"started; the last: {detail}", "check that the detector sends this protocol in "
                                  "a supported format (see the message), or pick the right --protocol")
        with self._lock:
            if self.ledger is not None:
                self.ledger.count(kind, n)
            else:
                self._early_faults[kind] = self._early_faults.get(kind, 0) + n
        if detail:
            self.on_event(detail)

    def end_of_stream(self) -> None:
        """The sender says the acquisition ended: whatever has not arrived is missing."""
        with self._lock:
            self.sender_ended = True
            if self.ledger is not None:
                self._end_scan_locked("the sender ended the series")

    def stop(self, error: BaseException | None = None) -> None:
        """Stop the session: the persister writes the shards that are complete and leaves the scan resumable."""
        with self._lock:
            if error is not None and self.error is None:
                self.error = error
            self.stopping = True
            self._lock.notify_all()
        self._ready.put(None)

    # -- persisting ---------------------------------------------------------------------------------
    def _all_accounted(self) -> bool:
        led = self.ledger
        return led is not None and not bool(np.count_nonzero(led.state < Ledger.PERSISTED)) and not self._open

    def _end_scan_locked(self, why: str) -> None:
        """Declare every index not received missing; every shard gets written (holes are zeros)."""
        led = self.ledger
        if led is None:
            return
        pending = led.state == Ledger.NONE
        if np.any(pending):
            led.state[pending] = Ledger.MISSING
            self._awaited -= int(np.count_nonzero(pending))
            self.on_event(f"{why}: {int(np.count_nonzero(pending))} frames never arrived")
        now = time.monotonic()
        for shard in self._open.values():
            shard.overtaken = now - self.gap_timeout - 1  # due at once
        self._ready.put(None)

    def _persist_loop(self) -> None:
        try:
            while True:
                try:
                    item = self._ready.get(timeout=0.05)
                except queue.Empty:
                    item = None
                if item is not None:
                    self._write(item)
                self._check_gaps()
                if self.stopping and self._ready.empty():
                    self._stop_writer()
                    return
                if self._finish_if_done():
                    return
        except BaseException as exc:  # a full disk, a damaged store: the scan cannot go on
            with self._lock:
                self.error = self.error or exc
                self.stopping = True
                self._lock.notify_all()
            try:
                self.writer.abort()
            except Exception:
                pass
            self.finished.set()

    def _check_gaps(self) -> None:
        now = time.monotonic()
        due: list[_Shard] = []
        with self._lock:
            led = self.ledger
            if led is None or (not self._open and now - self._last_activity <= self.gap_timeout):
                return
            for shard in list(self._open.values()):
                if shard.overtaken is None and self._max_seen >= shard.stop:
                    shard.overtaken = now
                if shard.overtaken is not None and now - shard.overtaken > self.gap_timeout:
                    holes = shard.start + np.flatnonzero(~shard.have)
                    fresh = holes[led.state[holes] == Ledger.NONE]
                    if fresh.size:
                        led.state[fresh] = Ledger.MISSING
                        self._awaited -= int(fresh.size)
                        led.count("gap_timeouts")
                        self.on_event(f"frames {_describe(fresh)} did not arrive within --gap-timeout "
                                      f"{self.gap_timeout:g} s: missing")
                    del self._open[shard.index]
                    due.append(shard)
            silent = now - self._last_activity > self.gap_timeout
            if silent and self._awaited > 0 and not self.stopping:
                led.count("gap_timeouts")
                self._end_scan_locked(f"no frame for --gap-timeout {self.gap_timeout:g} s (the scan was cut "
                                      "short or the detector went away)")
        for shard in due:
            self._write(shard)

    def _write(self, shard: _Shard) -> None:
        acq, led = self.acquisition, self.ledger
        assert acq is not None and led is not None and self.layout is not None
        n = shard.stop - shard.start
        buf = self._buffers[shard.group][:n]
        if shard.count < n:
            buf[~shard.have] = 0  # never-received frames are stored as zeros and listed as missing
        self._write_block(shard.index, buf)
        with self._lock:
            got = shard.start + np.flatnonzero(shard.have)
            led.state[got] = Ledger.PERSISTED
            self._free.append(shard.group)
            self._lock.notify_all()
        self._publish()

    def _write_block(self, s: int, buf: np.ndarray) -> None:
        acq = self.acquisition
        assert acq is not None and self.layout is not None
        start, stop = self._shard_span(s)
        sx = self.layout.shape[1]
        y0, x0 = divmod(start, sx)
        # A shard is a band of whole rows or a run inside one row (the chunking rules).
        rows, cols = ((stop - start) // sx, sx) if x0 == 0 and (stop - start) % sx == 0 else (1, stop - start)
        frames = buf.view(acq.wire_dtype or acq.dtype).reshape(stop - start, *acq.det_shape)
        if acq.flip_rows:
            frames = frames[:, ::-1]
        self.writer.patterns.write_region(y0, x0, frames.reshape(rows, cols, *acq.det_shape))
        with self._lock:
            self._shard_written[s] = True
            merge_range(self.persisted_ranges, start, stop)

    def _publish(self, final: bool = False) -> None:
        """Write the acquisition record: persisted ranges for followers, counts, missing ranges."""
        led = self.ledger
        assert led is not None
        with self._lock:
            summary = led.summary()
            ranges = [list(r) for r in self.persisted_ranges]
        self.writer.record_acquisition(summary["persisted"], persisted=ranges,
                                       missing_ranges=summary["missing_ranges"], frames_missing=summary["missing"],
                                       faults=summary["faults"], lost_while_down=summary["lost_while_down"])

    def _finish_if_done(self) -> bool:
        with self._lock:
            led = self.ledger
            if led is None or self.stopping or self._awaited or self._open or not self._ready.empty():
                return False  # cheap checks first: this runs every few tens of milliseconds
            if np.any(led.state < Ledger.PERSISTED):
                return False
            todo = [s for s in range(self._n_shards()) if not self._shard_written[s]]
        # Shards with no frame at all (the scan was cut short) are written as zeros, all missing.
        acq = self.acquisition
        assert acq is not None
        for s in todo:
            start, stop = self._shard_span(s)
            self._write_block(s, np.zeros((stop - start, acq.frame_nbytes), np.uint8))
        self._note_lost_while_down()
        self._publish()
        received = (led.state == Ledger.PERSISTED).astype(np.uint8).reshape(self.acquisition.scan_shape)  # type: ignore[union-attr]
        self.writer.write_variable("received", received, ("scan_y", "scan_x"),
                                   attributes={"meaning": "1: frame received from the detector; 0: missing "
                                               "(stored as zeros)"})
        self.writer.finalize()
        self.t_finished = time.time()
        self.finished.set()
        return True

    def _note_lost_while_down(self) -> None:
        led = self.ledger
        if led is None or not getattr(self, "_resumed", False):
            return
        first = self._first_after_resume if self._first_after_resume is not None else led.n
        lost = (led.state[:first] == Ledger.MISSING)
        new = ranges_of(lost)
        for a, b in new:
            if [a, b] not in led.lost_while_down:
                led.lost_while_down.append([a, b])

    def _stop_writer(self) -> None:
        """Leave the cube resumable: complete shards written, the record current, the lock released."""
        if self.writer is None:
            self.finished.set()
            return
        self._publish()
        self.writer._release()
        self.finished.set()

    # -- waiting and reporting ----------------------------------------------------------------------
    def wait_finished(self, timeout: float | None = None) -> bool:
        """Wait until the raw cube is complete (or the session stopped); True when it finished."""
        self.finished.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.finished.is_set() and not self.stopping

    def all_received(self) -> bool:
        """True once no frame index is still awaited (each is received, persisted or declared missing)."""
        return self.ledger is not None and self._awaited == 0

    def in_use(self) -> int:
        """Slots held by shards being received or written."""
        with self._lock:
            return (self.n_groups - len(self._free)) * self.frames_per_group if self.layout else 0


def fit_layout(scan_shape: tuple[int, int], det_shape: tuple[int, int], itemsize: int, slots: int) -> CubeLayout:
    """Cube layout whose shards fit :data:`MIN_GROUPS` times in a pool of ``slots`` frames.

    Shards are also at most :data:`LIVE_SHARD_BYTES` and a sixteenth of the
    scan, so that results follow the scan closely.

    Examples
    --------
    >>> fit_layout((64, 64), (256, 256), 2, 512).shards
    (1, 64, 256, 256)
    """
    frame = int(np.prod(det_shape)) * itemsize
    # Small shards: a frame is persisted (and readable by the pipeline) once its whole shard is in,
    # so the shard size bounds the latency from arrival to results.
    scan_bytes = int(scan_shape[0]) * int(scan_shape[1]) * frame
    budget = max(frame, min(LIVE_SHARD_BYTES, slots * frame // MIN_GROUPS, scan_bytes // 16))
    return choose_layout(scan_shape, det_shape, itemsize, chunk_bytes=min(DEFAULT_CHUNK_BYTES, budget),
                         shard_bytes=budget)


def _describe(indices: np.ndarray) -> str:
    runs = ranges_of(np.isin(np.arange(int(indices.min()), int(indices.max()) + 1), indices))
    text = ", ".join(f"{a + int(indices.min())}" if b - a == 1 else f"{a + int(indices.min())}-"
                     f"{b - 1 + int(indices.min())}" for a, b in runs[:5])
    return text + (f" and {len(runs) - 5} more runs" if len(runs) > 5 else "")


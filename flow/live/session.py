"""One live acquisition end to end: receive, persist the raw cube, run a pipeline on it, account for every frame.

:class:`LiveSession` wires a protocol client to a :class:`~diffraflow.flow.live.core.ReceiverCore`
(receiving thread + persister thread) and runs the pipeline in the calling
thread with :func:`~diffraflow.flow.engine.run_pipeline` on the raw cube as
it is being written (:class:`LiveCubeSource` follows the acquisition record),
so the engine's bounded window and every scheduler apply unchanged, and the
results at the end are those of an offline run on the same cube.

Starting the same session again resumes it: a raw cube left unfinished
(killed, interrupted, timed out) is reopened with its persisted shards kept,
the result store resumes its done chunks, and the summary lists the frame
indices lost while no receiver ran. The summary (JSON) is written beside
the results as ``RESULTS.live.json`` (beside the raw cube without results).

Examples
--------
>>> import numpy as np, tempfile, pathlib, threading
>>> from diffraflow.flow.live.inprocess import InProcessStream
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> stream = InProcessStream()
>>> def detector():
...     stream.announce(n_frames=4, det_shape=(3, 3), dtype="uint8", scan_shape=(2, 2))
...     for i in range(4):
...         stream.send(i, np.full((3, 3), i, "uint8"))
>>> threading.Thread(target=detector).start()
>>> report = LiveSession(stream, folder / "raw.zarr", progress=False).run()
>>> report.exit_status, report.summary["received"], report.summary["missing"]
(0, 4, 0)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.flow.live.core import Acquisition, LiveStopped, ReceiverCore
from diffraflow.flow.results import ZarrResultStore
from diffraflow.flow.sources import Region, ZarrCubeSource
from diffraflow.schemas.errors import DiffraflowError

__all__ = ["LiveSession", "LiveReport", "LiveCubeSource", "LiveResultStore", "summary_path"]

#: Exit statuses of ``diffraflow live``.
EXIT_COMPLETE, EXIT_MISSING, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 3, 130


def summary_path(results: str | os.PathLike[str] | None, raw: str | os.PathLike[str]) -> Path:
    """Where the JSON summary goes: beside the results store, else beside the raw cube.

    Examples
    --------
    >>> summary_path("/data/out.zarr", "/data/raw.zarr").as_posix()
    '/data/out.zarr.live.json'
    """
    base = Path(results if results is not None else raw).expanduser().absolute()
    return base.with_name(base.name + ".live.json")


class LiveCubeSource(ZarrCubeSource):
    """A :class:`~diffraflow.flow.sources.ZarrCubeSource` following the raw cube of a live session.

    Its :meth:`poll` also stops the run when the session stops (Ctrl-C,
    ``--timeout``, a fault), so the engine never waits on a stream that is gone.
    Workers get a plain source (the session stays in the driver).
    """

    def __init__(self, path: str | os.PathLike[str], session: LiveSession, chunk_frames: int | None = None) -> None:
        super().__init__(path, chunk_frames=chunk_frames)
        self._session: LiveSession | None = session

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None
        return state

    def poll(self, timeout: float) -> tuple[list[Region], bool]:
        if self._session is not None:
            self._session.check()
        fresh: tuple[list[Region], bool] = super().poll(min(timeout, 0.2))
        return fresh


class LiveResultStore(ZarrResultStore):
    """A result store that also notes when each chunk's results were written (processed frames, latency)."""

    def __init__(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        super().__init__(path, overwrite=overwrite)
        self.done_frames: dict[int, int] = {}
        self.done_at: dict[int, tuple[Any, float]] = {}

    def mark_done(self, round_: int, region: Any) -> None:
        super().mark_done(round_, region)
        self.done_frames[round_] = self.done_frames.get(round_, 0) + region.n
        if round_ == 0:
            self.done_at[region.index] = (region, time.time())


@dataclass
class LiveReport:
    """What a live session did: the summary written beside the results, and the exit status."""

    summary: dict[str, Any] = field(default_factory=dict)
    exit_status: int = 0
    summary_file: Path | None = None
    message: str = ""


class LiveSession:
    """Receive one acquisition from ``client`` into ``raw``, and run ``pipeline`` on it into ``results``.

    Parameters
    ----------
    client
        A protocol client (``run(core, stop)``; ``resume_acquisition(...)``; ``where``).
    raw
        The raw cube to write (resumed when it is an unfinished acquisition).
    results, pipeline
        Result store and pipeline (file, mapping or Pipeline); both or neither.
    scan_shape
        Scan shape when the stream does not say it (or to override it).
    slots
        Frames the receiver's pool holds (default: 256 MiB of frames).
    gap_timeout
        Seconds before a missing frame is given up, and of silence that ends the scan.
    timeout
        Seconds after which the session stops early (resumable); None: no limit.
    overwrite
        Replace earlier stores instead of resuming them.
    attrs
        ``scan`` metadata the user gives (modality, energy, step...), over the stream's.
    executor, workers, chunk_frames, window
        As for :func:`~diffraflow.flow.engine.run_pipeline`.
    progress
        Print a progress line on stderr.
    on_ready
        Called with the session once the raw cube exists (the live view starts there).
    """

    def __init__(self, client: Any, raw: str | os.PathLike[str], *, results: str | os.PathLike[str] | None = None,
                 pipeline: Any = None, scan_shape: tuple[int, int] | None = None, slots: int | None = None,
                 gap_timeout: float = 10.0, timeout: float | None = None, overwrite: bool = False,
                 attrs: dict[str, Any] | None = None, executor: Any = "threads", workers: int | None = None,
                 chunk_frames: int | None = None, window: int | None = None, progress: bool = True,
                 on_ready: Any = None, command: str | None = None) -> None:
        if (results is None) != (pipeline is None):
            raise DiffraflowError("live", "a result store needs a pipeline and a pipeline a result store",
                                  "give both PIPELINE and --results, or neither (receive and persist only)")
        self.client = client
        self.raw = Path(raw).expanduser().absolute()
        self.results = Path(results).expanduser().absolute() if results is not None else None
        self.pipeline = pipeline
        self.timeout = timeout
        self.overwrite = overwrite
        self.attrs = attrs or {}
        self.executor, self.workers, self.chunk_frames, self.window = executor, workers, chunk_frames, window
        self.progress = progress
        self.on_ready = on_ready
        self.command = command
        self.events: list[str] = []
        self.stop_event = threading.Event()
        self.stop_reason: str | None = None
        self.client_error: BaseException | None = None
        self.sink: LiveResultStore | None = None
        self._resuming = False
        self._t0 = time.monotonic()
        self.core = ReceiverCore(self._open_store, slots=slots, gap_timeout=gap_timeout, scan_shape=scan_shape,
                                 on_event=self._event)

    # -- stores ---------------------------------------------------------------------------------------
    def _event(self, message: str) -> None:
        self.events.append(message)
        if self.progress:
            print(f"\rdiffraflow live: {message}", file=sys.stderr, flush=True)

    def _open_store(self, acq: Acquisition, layout: Any) -> Any:
        from diffraflow.flow.store import CubeWriter, create_cube

        if self._resuming:
            return CubeWriter.reopen(self.raw)
        attrs = _merge(acq.attrs, self.attrs)
        prov = attrs.setdefault("provenance", {})
        if self.command:
            prov["command"] = self.command
        for note in acq.notes:
            self._event(f"note: {note}")
        assert acq.scan_shape is not None  # settled by the core
        return create_cube(self.raw, scan_shape=acq.scan_shape, det_shape=acq.det_shape,
                           dtype=acq.dtype, attrs=attrs, layout=layout, in_place=True, overwrite=self.overwrite)

    def _raw_state(self) -> str | None:
        """``complete``, ``unfinished`` (resumable), or None (no cube yet, or one to replace)."""
        from diffraflow.flow.store import acquisition_progress, diffraflow_kind

        if not self.raw.exists() or self.overwrite:
            return None
        progress = acquisition_progress(self.raw)
        if diffraflow_kind(self.raw) == "scan_cube" and progress is not None:
            return "complete" if progress.get("state") == "complete" else "unfinished"
        if diffraflow_kind(self.raw) == "scan_cube":
            return "complete"  # a cube written whole (convert): nothing to receive
        return None  # create_cube refuses it with the right message

    def _resume(self) -> None:
        import zarr
        from diffraflow.schemas.cube import validate_scan_attrs

        group = zarr.open_group(str(self.raw), mode="r", zarr_format=3)
        arr: Any = group["patterns"]
        scan_record: Any = group.attrs.get("scan", {})
        shape = tuple(int(v) for v in arr.shape)
        attrs = validate_scan_attrs(dict(scan_record), where=str(self.raw)).model_dump(mode="json")
        acq = self.client.resume_acquisition(shape[2:], np.dtype(str(arr.dtype)), shape[:2], attrs)
        self._resuming = True
        self._event(f"resuming the acquisition in {self.raw}")
        self.core.start(acq)

    # -- running --------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`LiveStopped` (or the fault) when the session must stop; called while following."""
        if self.timeout is not None and time.monotonic() - self._t0 > self.timeout and not self.core.finished.is_set():
            self.stop("timeout")
        if self.core.error is not None:
            raise self.core.error
        if self.client_error is not None and not (self.core.finished.is_set() and not self.core.stopping):
            raise self.client_error
        if self.stop_event.is_set() and not self.core.finished.is_set():
            raise LiveStopped("live", f"stopped ({self.stop_reason})",
                              "run the same command again to resume into the same stores")

    def stop(self, reason: str) -> None:
        """Stop receiving; the stores stay resumable."""
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()
            self.core.stop()

    def _receive(self) -> None:
        try:
            self.client.run(self.core, self.stop_event)
        except BaseException as exc:  # reported by the main thread
            self.client_error = exc
            self.core.stop(None)
            self.stop_event.set()

    def run(self) -> LiveReport:
        """Run the session to its end; the report holds the summary and the exit status.

        Raises
        ------
        DiffraflowError
            The detector is unreachable, the stores cannot be written, the pipeline fails.
        """
        state = self._raw_state()
        monitor = threading.Thread(target=self._monitor, name="diffraflow-live-progress", daemon=True)
        receiver = None
        interrupted = False
        try:
            if state == "unfinished":
                self._resume()
            if state != "complete":
                receiver = threading.Thread(target=self._receive, name="diffraflow-receiver", daemon=True)
                receiver.start()
            monitor.start()
            self._wait_for_cube(state)
            if self.on_ready is not None:
                self.on_ready(self)
            if self.pipeline is not None:
                self._run_pipeline(state)
            while not self.core.finished.wait(0.1) and state != "complete":
                self.check()
            if self.core.error is not None:
                raise self.core.error
        except LiveStopped:
            pass
        except KeyboardInterrupt:
            interrupted = True
            self.stop("interrupted")
        except BaseException:
            self.stop("error")
            self._join(receiver)
            raise
        finally:
            self._monitor_stop = True
        self._join(receiver)
        completed = self.core.finished.is_set() and not self.core.stopping
        if self.client_error is not None and not completed and not interrupted:
            raise self.client_error  # a receiver failure is an error, never a quiet early stop
        if self.core.error is not None:
            raise self.core.error
        return self._report(state, interrupted)

    def _join(self, receiver: threading.Thread | None) -> None:
        if not self.core.finished.is_set() and self.core.started.is_set() and not self.stop_event.is_set():
            self.stop("ended")
        self.stop_event.set()  # the client stops reading once the raw cube is complete
        if receiver is not None:
            receiver.join(10)
        if self.core.started.is_set():
            self.core.finished.wait(30)

    def _wait_for_cube(self, state: str | None) -> None:
        if state == "complete":
            return
        while not self.core.started.wait(0.1):
            self.check()
            if self.client_error is not None:
                raise self.client_error

    def _run_pipeline(self, state: str | None) -> None:
        from diffraflow.flow.engine import run_pipeline

        source: Any = LiveCubeSource(self.raw, self, chunk_frames=self.chunk_frames) if state != "complete" \
            else ZarrCubeSource(self.raw, chunk_frames=self.chunk_frames)
        assert self.results is not None
        self.sink = LiveResultStore(self.results, overwrite=self.overwrite)

        def on_start(executor: Any, plan: Any, sink: Any) -> None:
            if getattr(sink, "resumed", False):
                self._event(f"resuming {sink.path}")
            if executor.dashboard_link:
                self._event(f"dask dashboard: {executor.dashboard_link}")

        self.run_report = run_pipeline(self.pipeline, source, self.sink, executor=self.executor,
                                       workers=self.workers, window=self.window, collect=False,
                                       on_start=on_start)

    # -- reporting ------------------------------------------------------------------------------------
    _monitor_stop = False

    def status(self) -> dict[str, Any]:
        """Counts now, for the progress line and the live view."""
        core, led = self.core, self.core.ledger
        now = time.time()
        out: dict[str, Any] = {"state": "waiting for the detector" if led is None else "receiving",
                               "frames_expected": led.n if led else None, "slots": core.slots,
                               "slots_in_use": core.in_use() if led else 0, "pool_bytes": core.pool_bytes}
        if led is not None:
            summary = led.summary()
            out.update(received=summary["received"] + summary["persisted_before_resume"],
                       received_now=summary["received"], persisted=summary["persisted"],
                       missing=summary["missing"], faults=summary["faults"])
            recent = led.arrival[np.isfinite(led.arrival)]
            out["rate_fps"] = float(np.count_nonzero(recent > now - 2.0) / 2.0) if recent.size else 0.0
        if self.sink is not None:
            out["processed"] = self.sink.done_frames.get(0, 0) + getattr(self.sink, "skipped_frames", 0)
            out["passes_done"] = {str(k): v for k, v in self.sink.done_frames.items()}
        if core.finished.is_set():
            out["state"] = "persisted" if not core.stopping else "stopped"
        return out

    def _monitor(self) -> None:
        last = 0.0
        tty = sys.stderr.isatty()
        while not self._monitor_stop:
            time.sleep(0.2)
            if not self.progress or time.monotonic() - last < (0.5 if tty else 10.0):
                continue
            last = time.monotonic()
            print(("\r" if tty else "") + self.progress_line(), end="" if tty else "\n", file=sys.stderr,
                  flush=True)

    def progress_line(self) -> str:
        """One line: received, persisted, processed, missing, faults, rate, slots.

        Examples
        --------
        >>> from diffraflow.flow.live.inprocess import InProcessStream
        >>> LiveSession(InProcessStream(), "/tmp/x.zarr").progress_line()
        'live: waiting for the detector; slots 0/0 in use'
        """
        s = self.status()
        if s.get("frames_expected") is None:
            return f"live: {s['state']}; slots {s['slots_in_use']}/{s['slots']} in use"
        faults = s["faults"]
        bad = sum(faults.get(k, 0) for k in ("malformed", "truncated", "out_of_range"))
        text = (f"live: received {s['received']}/{s['frames_expected']} ({s['rate_fps']:.0f} fps), persisted "
                f"{s['persisted']}")
        if "processed" in s:
            text += f", processed {s['processed']}"
        text += (f", missing {s['missing']}; dup {faults['duplicates']}, late {faults['late']}, out-of-order "
                 f"{faults['out_of_order']}, bad {bad}, reconnects {faults['reconnects']}; slots "
                 f"{s['slots_in_use']}/{s['slots']} in use")
        return text

    def _report(self, state: str | None, interrupted: bool) -> LiveReport:
        core, led = self.core, self.core.ledger
        summary: dict[str, Any] = {"protocol": getattr(self.client, "name", "?"),
                                   "source": getattr(self.client, "where", None), "raw": str(self.raw),
                                   "results": str(self.results) if self.results else None}
        if led is None and state == "complete":
            summary.update(_summary_of_complete(self.raw))
        elif led is not None:
            summary.update(led.summary())
        summary["processed"] = self._processed(summary)
        summary["slots"] = {"frames": core.slots, "bytes": core.pool_bytes, "peak_in_use":
                            core.peak_groups_in_use * getattr(core, "frames_per_group", 0),
                            "seconds_receiver_blocked": round(core.blocked_seconds, 3)}
        if led is not None and core.t_first is not None and core.t_last is not None:
            span = max(core.t_last - core.t_first, 1e-9)
            summary["receive_rate_fps"] = round(max(led.received - 1, 0) / span, 1)
            if core.t_finished is not None:
                summary["persist_rate_fps"] = round(led.received / max(core.t_finished - core.t_first, 1e-9), 1)
        summary["latency_s"] = self._latency()
        summary["events"] = self.events[-50:]
        status = EXIT_COMPLETE
        received_all = state == "complete" or (core.finished.is_set() and not core.stopping)
        if interrupted or not received_all:
            summary["state"] = f"stopped early ({self.stop_reason or 'stopped'}; resumable)"
            status = EXIT_INTERRUPTED if (interrupted or self.stop_reason == "interrupted") else EXIT_TIMEOUT
        elif summary.get("missing"):
            summary["state"] = "complete with missing frames"
            status = EXIT_MISSING
        else:
            summary["state"] = "complete"
        summary["exit_status"] = status
        path = summary_path(self.results, self.raw)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, path)
        return LiveReport(summary=summary, exit_status=status, summary_file=path, message=_final_line(summary))

    def _processed(self, summary: dict[str, Any]) -> int | None:
        if self.sink is None:
            return None
        report = getattr(self, "run_report", None)
        if report is not None:
            return int(report.n_frames) if report.n_rounds else 0
        return int(self.sink.done_frames.get(0, 0))

    def _latency(self) -> dict[str, float] | None:
        led = self.core.ledger
        if self.sink is None or led is None or not self.sink.done_at:
            return None
        waits = []
        for region, done in self.sink.done_at.values():
            idx = region.scan_index()
            flat = idx[:, 0] * region.scan_x + idx[:, 1]
            arrived = led.arrival[flat]
            arrived = arrived[np.isfinite(arrived)]
            waits.extend((done - arrived).tolist())
        if not waits:
            return None
        arr = np.asarray(waits)
        return {"median": round(float(np.median(arr)), 4), "p95": round(float(np.percentile(arr, 95)), 4),
                "max": round(float(arr.max()), 4), "frames": int(arr.size)}


def _summary_of_complete(raw: Path) -> dict[str, Any]:
    from diffraflow.flow.store import acquisition_progress

    progress = acquisition_progress(raw) or {}
    keys = ("frames_expected", "frames_persisted", "frames_missing", "missing_ranges", "faults", "lost_while_down")
    out = {k: progress[k] for k in keys if k in progress}
    out["received"] = 0
    out["missing"] = int(progress.get("frames_missing", 0))
    out["note"] = "the raw cube was already complete: nothing received in this session"
    return out


def _final_line(summary: dict[str, Any]) -> str:
    missing = summary.get("missing", 0)
    ranges = summary.get("missing_ranges", [])
    text = (f"{summary['state']}: {summary.get('received', 0)} frames received in this session, "
            f"{summary.get('persisted', summary.get('frames_persisted', 0))} of {summary.get('frames_expected')} "
            f"persisted")
    if summary.get("processed") is not None:
        text += f", {summary['processed']} processed"
    if missing:
        shown = ", ".join(f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in ranges[:8])
        text += f"; {missing} missing (scan indices {shown}{' ...' if len(ranges) > 8 else ''})"
    lost = summary.get("lost_while_down") or []
    if lost:
        text += "; lost while no receiver ran: " + ", ".join(f"{a}-{b - 1}" for a, b in lost[:8])
    return text


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out

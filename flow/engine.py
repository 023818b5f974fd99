"""The driver: run a resolved pipeline over a source through an executor into a sink.

The driver builds the run's rounds one at a time (:class:`diffraflow.flow.schedule.Schedule`:
fixed-pass steps, iterative steps that stop when they converge, materialised
frames). For each round it

1. skips what an earlier run finished (rounds marked complete, chunks marked
   done, reductions checkpointed),
2. sends the round's shared data (plan, source, states, round plan) to the
   executor once,
3. keeps at most ``window`` chunk tasks submitted, refilling as each finishes
   and as the source announces new regions (a source that grows, such as a
   cube still being written, is followed until it ends); a task reads its
   own chunk, so only a region travels,
4. writes each finished chunk's small per-frame outputs (frame-sized outputs
   were written by the worker itself, one shard per region), then marks the
   chunk done,
5. merges reduction partials **in chunk order** (so results do not depend on
   the executor or on completion order) and checkpoints them; submission
   stays within a bounded lag of the merge point, so memory stays bounded,
6. retries a failed task up to ``retries`` times (never a damaged chunk, and
   never an error that would fail every chunk alike); a chunk that keeps
   failing is reported in one :class:`~diffraflow.schemas.errors.ChunkFailedError`
   after every other chunk of the round has been written,
7. calls ``finalize`` of the active steps (on a worker for ``device_state``
   operators), stores final reductions, the states and the schedule, and
   marks the round complete.

Examples
--------
>>> import numpy as np
>>> from diffraflow.flow.pipeline import Pipeline
>>> from diffraflow.operators.base import Operator, OutputSpec
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class SigSum(Operator):
...     name = "sig_sum_example"
...     def resolve(self, spec):
...         return {"sum": OutputSpec("sig", "float64", spec.det_shape)}
...     def process(self, frames, ctx):
...         return {"sum": frames.sum(axis=0, dtype="float64")}
>>> report = run_pipeline(Pipeline([SigSum()]), np.ones((3, 3, 2, 2), "uint8"), chunk_frames=2)
>>> report.results["sig_sum_example/sum"].tolist(), report.computed
([[9.0, 9.0], [9.0, 9.0]], 6)
"""

from __future__ import annotations

import heapq
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diffraflow.flow.executors import Executor, get_executor
from diffraflow.flow.executors.base import RunShared, run_chunk, run_finalize, to_numpy
from diffraflow.flow.pipeline import Pipeline, ResolvedPipeline, ResolvedStep, Step, load_pipeline
from diffraflow.flow.results import MATERIALIZED, MemorySink, ResultSink, ZarrResultStore
from diffraflow.flow.schedule import RoundPlan, Schedule
from diffraflow.flow.sources import ArraySource, ChunkSource, GrowingSource, Region, ZarrCubeSource
from diffraflow.operators.base import ChunkContext
from diffraflow.schemas.errors import (
    BackendUnavailableError,
    ChunkFailedError,
    DataCorruptionError,
    DiffraflowError,
    InputFileError,
    PipelineError,
    SchemaError,
)

__all__ = ["RunReport", "run_pipeline", "make_source", "bind_pipeline"]

#: Errors that would fail every chunk alike: the run stops at the first one.
_FATAL = (PipelineError, SchemaError, BackendUnavailableError)
#: Errors of one chunk that a retry cannot mend: reported without retrying.
_NOT_RETRIED = (DataCorruptionError, InputFileError)

#: Checkpoint reduction partials after every merge while they are this small.
SMALL_PARTIALS_BYTES = 16 * 2**20
#: Otherwise at most this often (seconds).
CHECKPOINT_SECONDS = 10.0
#: Default frames per chunk task when a step runs on a GPU (and no chunk size was asked for).
GPU_CHUNK_FRAMES = 32768
#: While a source grows, how long to wait for a task before asking the source again (seconds).
POLL_SECONDS = 0.2

#: What ``run_pipeline(on_start=...)`` is called with: the started executor, the plan and the sink.
OnStart = Callable[[Executor, ResolvedPipeline, ResultSink], object]


@dataclass
class RunReport:
    """What a run did.

    Attributes
    ----------
    results
        ``<step>/<output>`` -> array (empty when not collected).
    n_chunks
        Chunks per round.
    n_rounds
        Rounds (passes over the data).
    computed, skipped
        Chunk tasks run, and chunk tasks skipped because an earlier run did them.
    retried
        Task attempts that failed and were retried.
    """

    results: dict[str, np.ndarray] = field(default_factory=dict)
    n_chunks: int = 0
    n_rounds: int = 0
    n_frames: int = 0
    computed: int = 0
    skipped: int = 0
    retried: int = 0
    seconds: float = 0.0
    warmup_seconds: float = 0.0
    frames_computed: int = 0
    output: str | None = None
    already_complete: bool = False
    resumed: bool = False

    @property
    def scan_frames_computed(self) -> float:
        """Scan frames processed by this run: chunk-task frames divided by the passes over the data."""
        return self.frames_computed / max(1, self.n_rounds)

    @property
    def frames_per_second(self) -> float:
        """Scan frames per second through the whole pipeline (every pass), compile time excluded."""
        return self.scan_frames_computed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for people: scan frames, passes, time, rate (not frames x passes).

        Examples
        --------
        >>> RunReport(n_chunks=4, n_rounds=3, n_frames=400, computed=12, frames_computed=1200,
        ...           seconds=2.0).summary()
        '12 chunks computed, skipped 0 of 12 already done, 0 retried; 400 scan frames x 3 passes in 2.0 s (200 frames/s)'
        """
        passes = f" x {self.n_rounds} passes" if self.n_rounds > 1 else ""
        warm = f" (+{self.warmup_seconds:.1f} s compiling)" if self.warmup_seconds >= 0.5 else ""
        return (f"{self.computed} chunks computed, skipped {self.skipped} of {self.n_chunks * self.n_rounds} "
                f"already done, {self.retried} retried; {self.scan_frames_computed:.0f} scan frames{passes} in "
                f"{self.seconds:.1f} s{warm} ({self.frames_per_second:.0f} frames/s)")


def make_source(data: Any, chunk_frames: int | None = None) -> ChunkSource:
    """A chunk source from a cube path, a 4-d array, or a source (returned as is).

    Examples
    --------
    >>> make_source(np.zeros((2, 2, 3, 3), "uint8"), chunk_frames=1).grid
    (1, 1)
    """
    if isinstance(data, np.ndarray):
        return ArraySource(data, chunk_frames=chunk_frames)
    if isinstance(data, str | os.PathLike):
        return ZarrCubeSource(data, chunk_frames=chunk_frames)
    if isinstance(data, ChunkSource):
        return data
    raise PipelineError("input", f"cannot read frames from a {type(data).__name__}",
                        "pass a .zarr cube path, a 4-d array or a ChunkSource")


def bind_pipeline(pipeline: Pipeline, source: ChunkSource) -> Pipeline:
    """Let each operator bind what it needs from the source's store variables (:meth:`Operator.bind`).

    The bound pipeline keeps the fingerprint of the pipeline as written.

    Examples
    --------
    >>> from diffraflow.operators.base import Operator
    >>> p = Pipeline([Operator()]); bind_pipeline(p, make_source(np.zeros((1, 1, 1, 1)))).names
    ['Operator']
    """
    variables_fn = getattr(source, "variables", None)
    variables = variables_fn() if callable(variables_fn) else {}
    steps = [Step(s.op.bind(variables), s.name, s.backend, s.save, s.materialize) for s in pipeline.steps]
    bound = Pipeline(steps, chunk_frames=pipeline.chunk_frames)
    bound._identity = getattr(pipeline, "_identity", pipeline)  # fingerprints follow the pipeline as written
    return bound


def _bytes(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_bytes(v) for v in value.values())
    return int(getattr(value, "nbytes", 64))


def run_pipeline(pipeline: Pipeline | str | os.PathLike[str] | dict[str, Any], data: Any,
                 output: str | os.PathLike[str] | ResultSink | None = None,
                 *, executor: str | Executor = "inline", workers: int | None = None, chunk_frames: int | None = None,
                 overwrite: bool = False, progress: bool = False, retries: int = 2, window: int | None = None,
                 collect: bool = True, on_start: OnStart | None = None, connect_timeout: float = 10.0) -> RunReport:
    """Run a pipeline on a source and store its results.

    Parameters
    ----------
    pipeline
        A :class:`~diffraflow.flow.pipeline.Pipeline`, a pipeline-file path or mapping.
    data
        A ``.zarr`` scan cube path, a 4-d array, or a :class:`~diffraflow.flow.sources.ChunkSource`.
    output
        A result-store path (resumable), a :class:`~diffraflow.flow.results.ResultSink`,
        or ``None`` for in-memory results.
    executor
        ``inline``, ``threads``, ``local``, a scheduler address or an Executor.
    workers
        Threads or local-cluster workers.
    chunk_frames
        Frames per chunk (default: the pipeline's, else the input's chunks).
    overwrite
        Replace an existing output store instead of resuming it.
    progress
        Show a tqdm progress bar on stderr.
    retries
        Extra attempts for a failing chunk task.
    window
        Chunk tasks submitted at once (default: twice the executor's workers).
    collect
        Read the results back into ``report.results``.
    on_start
        Called with ``(executor, plan, sink)`` once the executor is started
        (the CLI prints the dashboard address there).
    connect_timeout
        Seconds a scheduler address has to answer.

    Returns
    -------
    RunReport

    Raises
    ------
    PipelineError
        The pipeline does not resolve on the input (raised before any data is read).
    ChunkFailedError
        Some chunks kept failing; every other chunk's results were kept.

    Examples
    --------
    See the module example.
    """
    pipeline = load_pipeline(pipeline)
    _check_run_numbers(retries, window)
    source = make_source(data, chunk_frames or pipeline.chunk_frames)
    bound = bind_pipeline(pipeline, source)
    plan = bound.resolve(source.spec)
    if plan.gpu and not (chunk_frames or pipeline.chunk_frames) and isinstance(source, ZarrCubeSource):
        # A GPU step wants tens of thousands of frames per task to keep the device busy; the store's own
        # chunks (a few thousand frames) would leave it idle between tasks.
        source = make_source(data, max(GPU_CHUNK_FRAMES, source.grid[0] * source.grid[1]))
        bound = bind_pipeline(pipeline, source)
        plan = bound.resolve(source.spec)
    plan.pipeline = getattr(bound, "_identity", bound)
    ex = get_executor(executor, workers, connect_timeout)
    own_executor = not isinstance(executor, Executor)
    if output is None:
        sink: ResultSink = MemorySink()
    elif isinstance(output, ResultSink):
        sink = output
    else:
        sink = ZarrResultStore(output, overwrite=overwrite)
    materialized = _materialized(plan, sink)
    try:
        done_before = not overwrite and isinstance(sink, ZarrResultStore) and sink.marked_complete()
        warmup = 0.0
        if not done_before:
            # Everything that can fail without data (compiling, reaching the scheduler) happens before
            # the output store is created, so such a failure leaves nothing behind.
            warmup = _warm_up(plan)
            ex.start(gpu=plan.gpu)
        sink.open(plan, source)
        try:
            report = _run_opened(plan, source, sink, ex, materialized, progress, retries, window, collect,
                                 on_start)
        finally:
            sink.close()
    finally:
        if own_executor:
            ex.close()
    report.warmup_seconds = warmup
    return report


def _materialized(plan: ResolvedPipeline, sink: ResultSink) -> dict[str, str]:
    """Steps whose final frames are stored for later passes, with the result key they are stored under."""
    if not isinstance(sink, ZarrResultStore):
        return {}  # in-memory runs recompute frames (there is no store for workers to read from)
    chosen = {}
    for step in plan.steps:
        if step.frames_output is None:
            continue
        wanted = step.step.materialize
        if wanted is None:
            wanted = step.op.expensive and plan.needed_later(step)
        if wanted:
            saved = step.saved(step.frames_output)
            chosen[step.name] = step.step.key(step.frames_output) if saved else f"{MATERIALIZED}/{step.name}"
    sink.materialize = chosen
    return chosen


def _check_run_numbers(retries: int, window: int | None) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int | np.integer) or retries < 0:
        raise PipelineError("--retries", f"must be a whole number of 0 or more, got {retries!r}",
                            "pass --retries 0 or more (default 2)")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1):
        raise PipelineError("--window", f"must be a whole number of 1 or more, got {window!r}",
                            "pass --window 1 or more, or leave it out for twice the workers")


def _warm_up(plan: ResolvedPipeline) -> float:
    """Let each step compile its kernels in the driver before the clock starts; returns the seconds spent."""
    from diffraflow.flow.notices import notify

    t0 = time.perf_counter()
    for step in plan.steps:
        step.op.warm_up(step.spec, step.step.backend, notify)
    return time.perf_counter() - t0


class _Feeder:
    """Regions of the scan as the source makes them available: all at once, or as a growing source grows."""

    def __init__(self, source: ChunkSource) -> None:
        self.source = source
        self.growing = isinstance(source, GrowingSource) and bool(getattr(source, "growing", False))
        self.all: list[Region] = list(source.regions())
        self.ready: dict[int, Region] = {} if self.growing else {r.index: r for r in self.all}
        self.ended = not self.growing

    def poll(self, timeout: float) -> list[Region]:
        """New regions (waiting up to ``timeout`` seconds for one); sets :attr:`ended` when the source ends."""
        if self.ended:
            return []
        assert isinstance(self.source, GrowingSource)
        regions, ended = self.source.poll(timeout)
        fresh = [r for r in regions if r.index not in self.ready]
        for region in fresh:
            self.ready[region.index] = region
        if ended:
            missing = len(self.all) - len(self.ready)
            if missing:
                raise InputFileError(str(getattr(self.source, "path", "source")), f"the source ended with "
                                     f"{missing} of {len(self.all)} regions never delivered",
                                     "the acquisition was cut short; re-acquire or convert what exists")
            self.ended = True
        return fresh


def _run_opened(plan: ResolvedPipeline, source: ChunkSource, sink: ResultSink, ex: Executor,
                materialized: dict[str, str], progress: bool, retries: int, window: int | None, collect: bool,
                on_start: OnStart | None) -> RunReport:
    feeder = _Feeder(source)
    n_regions = len(feeder.all)
    report = RunReport(n_chunks=n_regions, n_rounds=plan.n_rounds, n_frames=plan.input.n_frames,
                       output=sink.path, resumed=bool(getattr(sink, "resumed", False)))
    if isinstance(sink, ZarrResultStore) and sink.is_complete():
        report.already_complete = True
        report.skipped = n_regions * plan.n_rounds
        if collect:
            report.results = sink.results()
        return report

    t0 = time.perf_counter()
    bar = _progress_bar(progress, plan.input.n_frames, plan.n_rounds)
    schedule = Schedule(plan, frozenset(materialized))
    try:
        ex.start(gpu=plan.gpu)  # already started unless the sink said complete but was not
        if on_start is not None:
            on_start(ex, plan, sink)
        k = int(window or max(2, 2 * ex.workers))
        states: dict[str, Any] = {}
        while True:
            round_plan = schedule.next_round()
            if round_plan is None:
                break
            r = round_plan.round
            bar.start_pass(r)
            previous = sink.round_complete(r)
            if previous is not None:
                states = dict(previous["states"])
                schedule.restore(previous["schedule"])
                report.skipped += n_regions
                bar.update(plan.input.n_frames)
                continue
            states = _run_round(plan, source, feeder, sink, ex, round_plan, schedule, states, k, retries,
                                report, bar)
        report.n_rounds = schedule.rounds_run
        sink.complete()
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t0
    if collect:
        report.results = sink.results()
    return report


def _run_round(plan: ResolvedPipeline, source: ChunkSource, feeder: _Feeder, sink: ResultSink, ex: Executor,
               round_plan: RoundPlan, schedule: Schedule, states: dict[str, Any], window: int, retries: int,
               report: RunReport, bar: _NoBar | _PassBar) -> dict[str, Any]:
    round_ = round_plan.round
    reductions = schedule.has_reductions(round_plan)
    if reductions:
        merged, n_merged = sink.load_partials(round_)
        skip = set(range(n_merged))
    else:
        merged, n_merged = {}, 0
        skip = sink.done_chunks(round_)
    store, worker_keys, materialized = sink.worker_plan()
    shared = ex.share(RunShared(plan, source, states, round_plan, store, worker_keys, materialized))
    ops = {s.name: s.op for s in plan.steps}
    gpu = any(plan.step(name).backend.gpu for name in round_plan.active)

    # A heap by region index: the merge point waits for the smallest index, so that is what the lag check
    # must see, even when a growing source delivers a region after later ones.
    queue: list[tuple[int, Region]] = []
    seen: set[int] = set()

    def take(regions: list[Region]) -> None:
        for region in sorted(regions, key=lambda r: r.index):
            if region.index in seen:
                continue
            seen.add(region.index)
            if region.index in skip:
                report.skipped += 1
                bar.update(region.n)
            else:
                heapq.heappush(queue, (region.index, region))

    take(list(feeder.ready.values()))
    retry: deque[Region] = deque()
    attempts: dict[int, int] = {}
    pending: dict[int, dict[str, dict[str, Any]]] = {}  # finished but not yet merged (out of order)
    next_merge = n_merged
    merging = reductions
    lag = max(4 * window, 8)
    in_flight = 0
    failures: list[tuple[Region, BaseException]] = []
    last_checkpoint = time.monotonic()

    while queue or retry or in_flight or not feeder.ended:
        while in_flight < window and (retry or (queue and (not merging or queue[0][0] < next_merge + lag))):
            region = retry.popleft() if retry else heapq.heappop(queue)[1]
            ex.submit(region.index, run_chunk, shared, region, round_, gpu=gpu)
            in_flight += 1
        if not in_flight:
            take(feeder.poll(POLL_SECONDS))  # nothing running: wait for the source
            continue
        finished = ex.next_done(None if feeder.ended else POLL_SECONDS)
        if not feeder.ended:
            take(feeder.poll(0.0))
        if finished is None:
            continue
        index, ok, value = finished
        in_flight -= 1
        region = feeder.ready[index]
        if not ok:
            if isinstance(value, _FATAL):
                raise value  # fails every chunk alike: stop now
            attempts[index] = attempts.get(index, 0) + 1
            if attempts[index] <= retries and not isinstance(value, _NOT_RETRIED):
                report.retried += 1
                retry.append(region)
                continue
            failures.append((region, value))
            if merging:  # this round's reductions cannot complete; stop holding partials
                merging = False
                pending.clear()
            continue
        sink.write_chunk(round_, region, value.per_frame)
        sink.mark_done(round_, region)
        report.computed += 1
        report.frames_computed += region.n
        bar.update(region.n)
        if not merging:
            continue
        pending[index] = value.partials
        advanced = False
        while next_merge in pending:
            for step_name, parts in pending.pop(next_merge).items():
                into = merged.setdefault(step_name, {})
                for key, part in parts.items():
                    into[key] = ops[step_name].merge(key, into[key], part) if key in into else part
            next_merge += 1
            advanced = True
        if advanced:
            now = time.monotonic()
            if _bytes(merged) <= SMALL_PARTIALS_BYTES or now - last_checkpoint > CHECKPOINT_SECONDS:
                sink.save_partials(round_, merged, next_merge, final=False)
                last_checkpoint = now

    if failures:
        if merging and next_merge:
            sink.save_partials(round_, merged, next_merge, final=False)
        region, exc = failures[0]
        tries = attempts.get(region.index, 1)
        more = f"; {len(failures) - 1} more failed: " + ", ".join(str(r.index) for r, _ in failures[1:]) \
            if len(failures) > 1 else ""
        cause = exc.one_line() if isinstance(exc, DiffraflowError) else \
            f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no message'}"
        err = ChunkFailedError(f"{sink.path or 'run'}: {region.label()}",
                               f"failed after {tries} attempt{'s' if tries > 1 else ''}: {cause}{more}",
                               "all other chunks' results were kept; fix the cause and re-run the same "
                               "command to resume")
        # the failed regions and their errors, for callers that report each one (not a declared attribute)
        err.failures = [(r, e) for r, e in failures]  # type: ignore[attr-defined]
        raise err
    return _finish_round(plan, sink, ex, round_plan, schedule, merged, dict(states))


def _finalize(plan: ResolvedPipeline, ex: Executor, step: ResolvedStep, partials: dict[str, Any], pass_index: int,
              state: Any, final: bool) -> Any:
    if step.op.device_state:
        # On a worker with the step's backend, so device-resident partials and state stay there.
        ex.submit(("finalize", step.name), run_finalize, plan, step.name, partials, pass_index, state, final,
                  gpu=step.backend.gpu)
        finished = None
        while finished is None:
            finished = ex.next_done(None)
        _key, ok, value = finished
        if not ok:
            raise value
        return value
    ctx = ChunkContext(spec=step.spec, constants=None, pass_index=pass_index, state=state,
                       backend=step.step.backend, final_pass=final)
    return step.op.finalize(partials, ctx)


def _finish_round(plan: ResolvedPipeline, sink: ResultSink, ex: Executor, round_plan: RoundPlan, schedule: Schedule,
                  merged: dict[str, dict[str, Any]], states: dict[str, Any]) -> dict[str, Any]:
    finals: dict[str, np.ndarray] = {}
    for link in round_plan.chain:
        if link.action != "compute":
            continue
        step = plan.step(link.step)
        partials = merged.get(step.name, {})
        where = f"step {step.name!r}"
        if link.final and not step.reduced and not partials:
            schedule.interpret(step, {}, where)  # a map-only step: nothing to finalize
            continue
        result = _finalize(plan, ex, step, partials, link.pass_index, states.get(step.name), link.final)
        kind, value = schedule.interpret(step, result, where)
        if kind == "state":
            states[step.name] = value
            continue
        values = value or {}
        for name, out in step.reduced.items():
            if name not in values:
                raise PipelineError(where, f"finalize() did not return output {name!r} "
                                    f"(returned {sorted(values)})", "return every declared sig/single output")
            array = np.asarray(to_numpy(values[name]))
            if array.shape != out.extra_shape:
                raise PipelineError(f"{where}.{name}", f"finalize() returned shape {array.shape}, "
                                    f"resolve() declared {out.extra_shape}", "make finalize() match resolve()")
            if step.saved(name):
                finals[step.step.key(name)] = array.astype(out.dtype, copy=False)
    schedule.end_round()
    sink.finish_round(round_plan.round, {"states": states, "schedule": schedule.to_record()}, finals)
    return states


class _NoBar:
    def start_pass(self, round_: int) -> None:
        pass

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class _PassBar:
    """A tqdm bar over the scan's frames, restarted for each pass ("pass 2/3"): frames are scan frames."""

    def __init__(self, n_frames: int, n_passes: int) -> None:
        from tqdm import tqdm

        self.n_frames, self.n_passes = n_frames, n_passes
        self.bar = tqdm(total=n_frames, unit="frame", unit_scale=True, file=sys.stderr, dynamic_ncols=True,
                        desc="diffraflow run", smoothing=0.1)

    def start_pass(self, round_: int) -> None:
        if self.n_passes > 1:
            if round_:
                self.bar.reset(total=self.n_frames)
            self.bar.set_description(f"diffraflow run, pass {round_ + 1}/{self.n_passes}")

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _progress_bar(enabled: bool, n_frames: int, n_passes: int = 1) -> _NoBar | _PassBar:
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    return _PassBar(n_frames, n_passes)

"""The driver: run a resolved pipeline over a source through an executor into a sink.

For each round (pass over the data) the driver

1. skips what an earlier run finished (rounds marked complete, chunks marked
   done, reductions checkpointed),
2. sends the round's shared data (plan, source, states) to the executor once,
3. keeps at most ``window`` chunk tasks submitted, refilling as each
   finishes; a task reads its own chunk, so only a region travels,
4. writes each finished chunk's per-frame outputs (the driver is the single
   writer), then marks the chunk done,
5. merges reduction partials **in chunk order** (so results do not depend on
   the executor or on completion order) and checkpoints them; submission
   stays within a bounded lag of the merge point, so memory stays bounded,
6. retries a failed task up to ``retries`` times; a chunk that keeps failing
   is reported in one :class:`~schemas.errors.ChunkFailedError` after every
   other chunk of the round has been written,
7. calls ``finalize`` for steps whose pass ends, stores final reductions and
   states, and marks the round complete.

Examples
--------
>>> import numpy as np
>>> from flow.pipeline import Pipeline
>>> from operators.base import Operator, OutputSpec
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

import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np

from flow.executors import Executor, get_executor
from flow.executors.base import RunShared, run_chunk, to_numpy
from flow.pipeline import Pipeline, Step, load_pipeline
from flow.results import MemorySink, ResultSink, ZarrResultStore
from flow.sources import ArraySource, ChunkSource, ZarrCubeSource
from operators.base import ChunkContext, Operator
from schemas.errors import ChunkFailedError, DataCorruptionError, DiffraflowError, PipelineError

__all__ = ["RunReport", "run_pipeline", "make_source", "bind_pipeline"]

class _BindsStoreVariables(Protocol):
    """An operator with the optional ``bind_store_variables`` hook (looked up with getattr)."""

    def bind_store_variables(self, variables: Mapping[str, Any]) -> Operator: ...


#: Checkpoint reduction partials after every merge while they are this small.
SMALL_PARTIALS_BYTES = 16 * 2**20
#: Otherwise at most this often (seconds).
CHECKPOINT_SECONDS = 10.0


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
    """Let operators bind store variables (``bind_store_variables``) before resolving.

    Examples
    --------
    >>> from operators.base import Operator
    >>> p = Pipeline([Operator()]); bind_pipeline(p, make_source(np.zeros((1, 1, 1, 1)))) is p
    True
    """
    binders = [s for s in pipeline.steps if callable(getattr(s.op, "bind_store_variables", None))]
    if not binders:
        return pipeline
    variables_fn = getattr(source, "variables", None)
    variables = variables_fn() if callable(variables_fn) else {}
    steps = [Step(cast(_BindsStoreVariables, s.op).bind_store_variables(variables), s.name, s.backend, s.save)
             if s in binders else s for s in pipeline.steps]
    bound = Pipeline(steps, chunk_frames=pipeline.chunk_frames)
    bound._identity = pipeline  # fingerprints follow the pipeline as written
    return bound


def _bytes(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_bytes(v) for v in value.values())
    return int(getattr(value, "nbytes", 64))


def run_pipeline(pipeline: Pipeline | str | os.PathLike | dict, data: Any, output: str | os.PathLike | ResultSink | None = None,
                 *, executor: str | Executor = "inline", workers: int | None = None, chunk_frames: int | None = None,
                 overwrite: bool = False, progress: bool = False, retries: int = 2, window: int | None = None,
                 collect: bool = True, on_start: Any = None, connect_timeout: float = 10.0) -> RunReport:
    """Run a pipeline on a source and store its results.

    Parameters
    ----------
    pipeline
        A :class:`~flow.pipeline.Pipeline`, a pipeline-file path or mapping.
    data
        A ``.zarr`` scan cube path, a 4-d array, or a :class:`~flow.sources.ChunkSource`.
    output
        A result-store path (resumable), a :class:`~flow.results.ResultSink`,
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
    plan.pipeline = getattr(bound, "_identity", bound)
    ex = get_executor(executor, workers, connect_timeout)
    own_executor = not isinstance(executor, Executor)
    if output is None:
        sink: ResultSink = MemorySink()
    elif isinstance(output, ResultSink):
        sink = output
    else:
        sink = ZarrResultStore(output, overwrite=overwrite)
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
            report = _run_opened(plan, source, sink, ex, progress, retries, window, collect, on_start)
        finally:
            sink.close()
    finally:
        if own_executor:
            ex.close()
    report.warmup_seconds = warmup
    return report


def _check_run_numbers(retries: int, window: int | None) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int | np.integer) or retries < 0:
        raise PipelineError("--retries", f"must be a whole number of 0 or more, got {retries!r}",
                            "pass --retries 0 or more (default 2)")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1):
        raise PipelineError("--window", f"must be a whole number of 1 or more, got {window!r}",
                            "pass --window 1 or more, or leave it out for twice the workers")


def _warm_up(plan) -> float:
    """Let each step compile its kernels in the driver before the clock starts; returns the seconds spent."""
    from flow.notices import notify

    t0 = time.perf_counter()
    for step in plan.steps:
        step.op.warm_up(step.spec, step.step.backend, notify)
    return time.perf_counter() - t0


def _run_opened(plan, source, sink, ex, progress, retries, window, collect, on_start) -> RunReport:
    regions = list(source.regions())
    report = RunReport(n_chunks=len(regions), n_rounds=plan.n_rounds, n_frames=plan.input.n_frames,
                       output=sink.path, resumed=bool(getattr(sink, "resumed", False)))
    if isinstance(sink, ZarrResultStore) and sink.is_complete():
        report.already_complete = True
        report.skipped = len(regions) * plan.n_rounds
        if collect:
            report.results = sink.results()
        return report

    t0 = time.perf_counter()
    bar = _progress_bar(progress, plan.input.n_frames, plan.n_rounds)
    try:
        ex.start(gpu=plan.gpu)  # already started unless the sink said complete but was not
        if on_start is not None:
            on_start(ex, plan, sink)
        k = int(window or max(2, 2 * ex.workers))
        states: dict[str, Any] = {}
        for round_ in range(plan.n_rounds):
            bar.start_pass(round_)
            previous = sink.round_complete(round_)
            if previous is not None:
                states = previous
                report.skipped += len(regions)
                bar.update(plan.input.n_frames)
                continue
            states = _run_round(plan, source, sink, ex, regions, round_, states, k, retries, report, bar)
        sink.complete()
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t0
    if collect:
        report.results = sink.results()
    return report


def _run_round(plan, source, sink, ex, regions, round_, states, window, retries, report, bar) -> dict[str, Any]:
    reductions = plan.has_reductions(round_)
    if reductions:
        merged, n_merged = sink.load_partials(round_)
        todo = [r for r in regions if r.index >= n_merged]
    else:
        merged, n_merged = {}, 0
        done = sink.done_chunks(round_)
        todo = [r for r in regions if r.index not in done]
    report.skipped += len(regions) - len(todo)
    bar.update(sum(r.n for r in regions) - sum(r.n for r in todo))
    shared = ex.share(RunShared(plan, source, states))
    ops = {s.name: s.op for s in plan.steps}
    gpu = plan.gpu

    queue = deque(range(len(todo)))
    retry: deque[int] = deque()
    attempts = [0] * len(todo)
    pending: dict[int, dict] = {}  # finished but not yet merged (out of order)
    next_merge = 0
    merging = reductions
    lag = max(4 * window, 8)
    in_flight = 0
    failures: list[tuple[Any, BaseException]] = []
    last_checkpoint = time.monotonic()

    while queue or retry or in_flight:
        while in_flight < window and (retry or (queue and (not merging or queue[0] < next_merge + lag))):
            pos = retry.popleft() if retry else queue.popleft()
            ex.submit(pos, run_chunk, shared, todo[pos], round_, gpu=gpu)
            in_flight += 1
        finished = ex.next_done()
        if finished is None:  # cannot happen with tasks in flight and no timeout
            continue
        pos, ok, value = finished
        in_flight -= 1
        region = todo[pos]
        if not ok:
            if isinstance(value, PipelineError):
                raise value  # a contract violation fails every chunk alike: stop now
            attempts[pos] += 1
            if attempts[pos] <= retries and not isinstance(value, DataCorruptionError):
                report.retried += 1
                retry.append(pos)
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
        pending[pos] = value.partials
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
                sink.save_partials(round_, merged, todo[next_merge - 1].index + 1, final=False)
                last_checkpoint = now

    if failures:
        if merging and next_merge:
            sink.save_partials(round_, merged, todo[next_merge - 1].index + 1, final=False)
        region, exc = failures[0]
        tries = attempts[todo.index(region)]
        more = f"; {len(failures) - 1} more failed: " + ", ".join(str(r.index) for r, _ in failures[1:]) \
            if len(failures) > 1 else ""
        cause = exc.one_line() if isinstance(exc, DiffraflowError) else \
            f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no message'}"
        err = ChunkFailedError(f"{sink.path or 'run'}: {region.label()}",
                               f"failed after {tries} attempt{'s' if tries > 1 else ''}: {cause}{more}",
                               "all other chunks' results were kept; fix the cause and re-run the same "
                               "command to resume")
        err.failures = [(r, e) for r, e in failures]  # type: ignore[attr-defined]
        raise err
    return _finish_round(plan, sink, round_, merged, dict(states))


def _finish_round(plan, sink, round_, merged, states) -> dict[str, Any]:
    finals: dict[str, np.ndarray] = {}
    for step in plan.active(round_):
        partials = merged.get(step.name, {})
        pass_index = round_ - step.start
        ctx = ChunkContext(spec=step.spec, constants=None, pass_index=pass_index, state=states.get(step.name),
                           backend=step.step.backend)
        if round_ < step.last:
            states[step.name] = step.op.finalize(partials, ctx)
            continue
        if not step.reduced and not partials:
            continue
        values = step.op.finalize(partials, ctx) or {}
        for name, out in step.reduced.items():
            if name not in values:
                raise PipelineError(f"step {step.name!r}", f"finalize() did not return output {name!r} "
                                    f"(returned {sorted(values)})", "return every declared sig/single output")
            value = np.asarray(to_numpy(values[name]))
            if value.shape != out.extra_shape:
                raise PipelineError(f"step {step.name!r}.{name}", f"finalize() returned shape {value.shape}, "
                                    f"resolve() declared {out.extra_shape}", "make finalize() match resolve()")
            if step.saved(name):
                finals[step.step.key(name)] = value.astype(out.dtype, copy=False)
    sink.finish_round(round_, states, finals)
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

"""The task protocol shared by every executor.

A **task** is ``(shared, region, round)``: ``shared`` is a :class:`RunShared`
(resolved pipeline, source and per-step states), sent to workers once per
round (``Executor.share``); ``region`` says which frames to read. The task
body :func:`run_chunk` reads its chunk from the source itself, runs the whole
chain of steps on that one read, and returns a :class:`ChunkResult` with the
per-frame outputs to store and the partial reductions to merge.

Large constants (``Operator.setup``) are built once per worker process and
cached in :data:`_CONSTANTS` by the step's setup key.

An :class:`Executor` runs tasks: ``submit`` queues one, ``next_done`` blocks
until one finishes and returns ``(key, ok, value)``; the engine keeps a
bounded window of submitted tasks and refills it as tasks finish.

Examples
--------
>>> import numpy as np
>>> from diffraflow.flow.sources import ArraySource
>>> from diffraflow.flow.pipeline import Pipeline
>>> from diffraflow.operators.base import Operator, OutputSpec
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Peak(Operator):
...     name = "peak_example"
...     def resolve(self, spec):
...         return {"peak": OutputSpec("nav", "uint8")}
...     def process(self, frames, ctx):
...         return {"peak": frames.reshape(len(frames), -1).max(axis=1)}
>>> from diffraflow.flow.schedule import Schedule
>>> src = ArraySource(np.arange(32, dtype="uint8").reshape(2, 2, 2, 4))
>>> plan = Pipeline([Peak()]).resolve(src.spec)
>>> shared = RunShared(plan, src, {}, Schedule(plan).next_round())
>>> run_chunk(shared, next(iter(src.regions())), 0).per_frame["peak_example/peak"].tolist()
[7, 15, 23, 31]
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from diffraflow.operators.base import ChunkContext, OutputSpec
from diffraflow.schemas.errors import PipelineError

if TYPE_CHECKING:
    from diffraflow.flow.pipeline import ResolvedPipeline, ResolvedStep
    from diffraflow.flow.schedule import RoundPlan
    from diffraflow.flow.sources import ChunkSource, Region

__all__ = ["RunShared", "ChunkResult", "run_chunk", "run_finalize", "Executor", "to_numpy", "clear_constants"]


@dataclass
class RunShared:
    """What every task of a round needs: the plan, the source and the states.

    Attributes
    ----------
    plan
        The :class:`~diffraflow.flow.pipeline.ResolvedPipeline`.
    source
        A :class:`~diffraflow.flow.sources.ChunkSource` (a path and a grid; no data).
    states
        Per step name, what ``finalize`` returned after the step's previous pass.
    round
        The :class:`~diffraflow.flow.schedule.RoundPlan`: which steps compute, provide or load frames.
    store
        Path of the result store when outputs are written by workers, else None.
    worker_keys
        Result keys (``<step>/<output>``) that the task writes into ``store``
        itself (frame-sized outputs), instead of returning them to the driver.
    materialized
        Step name -> result key of its stored final frames.
    """

    plan: ResolvedPipeline
    source: ChunkSource
    states: dict[str, Any] = field(default_factory=dict)
    round: RoundPlan | None = None
    store: str | None = None
    worker_keys: frozenset[str] = frozenset()
    materialized: dict[str, str] = field(default_factory=dict)


@dataclass
class ChunkResult:
    """What one task returns.

    Attributes
    ----------
    per_frame
        ``<step>/<output>`` -> array with a leading axis of the region's frames (saved outputs only).
    partials
        step name -> {key: partial} to merge (reductions of this round).
    n
        Frames processed.
    seconds
        Wall time of the task.
    """

    index: int
    round: int
    per_frame: dict[str, np.ndarray]
    partials: dict[str, dict[str, Any]]
    n: int
    seconds: float = 0.0


# Large constants built by Operator.setup, once per worker process (shared by
# its threads). Keyed by ResolvedStep.setup_key(): operator token, input spec
# and backend.
_CONSTANTS: dict[str, Any] = {}
_CONSTANTS_LOCK = threading.Lock()
_KEY_LOCKS: dict[str, threading.Lock] = {}


def _constants(step: ResolvedStep) -> Any:
    key = step.setup_key()
    if key in _CONSTANTS:
        return _CONSTANTS[key]
    with _CONSTANTS_LOCK:
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one thread builds; the others wait and reuse
        if key not in _CONSTANTS:
            _CONSTANTS[key] = step.op.setup(step.spec, step.step.backend)
    return _CONSTANTS[key]


def clear_constants() -> int:
    """Forget cached constants in this process; returns how many were dropped.

    Examples
    --------
    >>> clear_constants() >= 0
    True
    """
    with _CONSTANTS_LOCK:
        n = len(_CONSTANTS)
        _CONSTANTS.clear()
        _KEY_LOCKS.clear()
    return n


def to_numpy(value: Any) -> Any:
    """A host NumPy array from numpy/cupy/torch values (other objects unchanged).

    Examples
    --------
    >>> to_numpy([1, 2]).tolist()
    [1, 2]
    """
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
        return value.get()
    if type(value).__module__.startswith("torch"):
        return value.detach().cpu().numpy()
    if isinstance(value, list | tuple | int | float | np.generic):
        return np.asarray(value)
    return value


def _to_backend(frames: Any, backend: str) -> Any:
    """``frames`` as the array type of ``backend`` (no copy when they already are)."""
    from diffraflow.schemas.backends import get_backend

    target = get_backend(backend)
    if target.library == "numpy":
        return to_numpy(frames)
    if target.library == "cupy":
        import cupy

        return frames if isinstance(frames, cupy.ndarray) else cupy.asarray(frames)
    import torch

    device = "cuda" if target.gpu else "cpu"
    if isinstance(frames, torch.Tensor):
        return frames.to(device)
    if type(frames).__module__.startswith("cupy") and not target.gpu:
        frames = frames.get()
    return torch.as_tensor(frames, device=device)


# Per-step concurrency limits (Operator.max_concurrency), per process: a numba-parallel kernel already
# uses every core, and two at once in one process only fight over them.
_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}


def _slot(step: ResolvedStep) -> AbstractContextManager[Any]:
    import contextlib

    limit = step.op.max_concurrency
    if not limit:
        return contextlib.nullcontext()
    key = (step.name, int(limit))
    with _CONSTANTS_LOCK:
        semaphore = _SLOTS.setdefault(key, threading.BoundedSemaphore(int(limit)))
    return semaphore


def _checked(step: ResolvedStep, name: str, spec: OutputSpec, value: Any, n: int) -> Any:
    want = (n, *spec.extra_shape)
    if tuple(value.shape) != want:
        raise PipelineError(f"step {step.name!r}.{name}", f"process() returned shape {tuple(value.shape)} for "
                            f"{n} frames, resolve() declared {want}", "make process() match resolve()")
    return value


def _as_dtype(value: Any, dtype: np.dtype[Any]) -> Any:
    """``value`` in ``dtype`` without leaving its device (numpy, cupy or torch); no copy when it already is."""
    if type(value).__module__.startswith("torch"):
        import torch

        wanted = getattr(torch, np.dtype(dtype).name)
        return value if value.dtype == wanted else value.to(wanted)
    return value if value.dtype == dtype else value.astype(dtype)


def run_chunk(shared: RunShared, region: Region, round_: int) -> ChunkResult:
    """The task body: read one chunk, run the round's chain of steps, return outputs and partials.

    Frame-sized outputs named in ``shared.worker_keys`` are written into the
    result store here, on the worker (each region is one whole shard, so each
    shard has one writer); everything else goes back to the driver.

    Raises
    ------
    PipelineError
        An operator returned a missing or mis-shaped per-frame output.
    """
    from diffraflow.flow.results import read_result_region, write_result_region

    t0 = time.perf_counter()
    plan = shared.plan
    assert shared.round is not None  # the engine shares a round's plan with every task
    steps = {s.name: s for s in plan.steps}
    frames: Any = shared.source.read(region) if shared.round.reads_source else None
    n = region.n
    per_frame: dict[str, np.ndarray] = {}
    partials: dict[str, dict[str, Any]] = {}
    scan_index = region.scan_index()
    for link in shared.round.chain:
        step = steps[link.step]
        if link.action == "load":
            frames = read_result_region(shared.store, shared.materialized[step.name], region)
            continue
        ctx = ChunkContext(spec=step.spec, constants=_constants(step), pass_index=link.pass_index,
                           state=shared.states.get(step.name), flat_start=region.flat_start,
                           scan_index=scan_index, backend=step.step.backend, final_pass=link.final)
        with _slot(step):
            keep_host = step.op.host_frames and isinstance(frames, np.ndarray)
            out = step.op.process(frames if keep_host else _to_backend(frames, step.step.backend), ctx)
        if not isinstance(out, dict):
            raise PipelineError(f"step {step.name!r}", f"process() returned {type(out).__name__}, not a dict",
                                "return {output_name: array}")
        keep_on_device = step.op.device_state and step.backend.gpu
        if not link.final:
            partials[step.name] = {k: (v if keep_on_device else to_numpy(v)) for k, v in out.items()}
            continue
        computing = link.action == "compute"
        for name, spec in step.per_frame.items():
            if not computing and name != step.frames_output:
                continue  # a finished step rerun only for the frames it feeds forward
            if name not in out:
                raise PipelineError(f"step {step.name!r}", f"process() did not return output {name!r} "
                                    f"(returned {sorted(out)})", "return every declared nav/frames output")
            value = _checked(step, name, spec, out[name], n)
            if name == step.frames_output:
                # The next step's input spec promises the declared dtype: cast on the step's own device.
                frames = _as_dtype(value, spec.dtype)
            if not computing:
                continue
            key = step.step.key(name)
            targets = [k for k in (key if step.saved(name) else None,
                                   shared.materialized.get(step.name) if name == step.frames_output else None)
                       if k is not None]
            if not targets:
                continue
            host = np.asarray(to_numpy(value)).astype(spec.dtype, copy=False)
            for target in dict.fromkeys(targets):
                if target in shared.worker_keys:
                    write_result_region(shared.store, target, region, host)
                else:
                    per_frame[target] = host
        if computing:
            rest = {k: (v if keep_on_device else to_numpy(v)) for k, v in out.items() if k not in step.per_frame}
            if rest:
                partials[step.name] = rest
    return ChunkResult(region.index, round_, per_frame, partials, n, time.perf_counter() - t0)


def run_finalize(plan: ResolvedPipeline, step_name: str, partials: dict[str, Any], pass_index: int, state: Any,
                 final: bool) -> Any:
    """Run one step's ``finalize`` as a task (on a worker with the step's backend; see ``device_state``)."""
    step = next(s for s in plan.steps if s.name == step_name)
    ctx = ChunkContext(spec=step.spec, constants=_constants(step), pass_index=pass_index, state=state,
                       backend=step.step.backend, final_pass=final)
    return step.op.finalize(partials, ctx)


class Executor(ABC):
    """Runs tasks; the engine keeps at most ``window`` of them submitted at once.

    Subclasses: :class:`~diffraflow.flow.executors.inline.InlineExecutor`,
    :class:`~diffraflow.flow.executors.threads.ThreadExecutor`,
    :class:`~diffraflow.flow.executors.distributed.DistributedExecutor`.
    """

    name: str = "executor"
    #: Printed by the CLI when not None (the dask dashboard).
    dashboard_link: str | None = None

    @property
    def workers(self) -> int:
        """Tasks that can run at once (sizes the default window)."""
        return 1

    def start(self, gpu: bool = False) -> None:  # noqa: B027 - optional hook
        """Acquire resources (threads, a cluster); ``gpu`` when a step needs a GPU backend."""

    def share(self, value: Any) -> Any:
        """Make ``value`` available to every task once; returns what to pass to :meth:`submit`."""
        return value

    @abstractmethod
    def submit(self, key: Any, fn: Callable[..., Any], *args: Any, gpu: bool = False) -> None:
        """Queue ``fn(*args)`` under ``key``."""

    @abstractmethod
    def next_done(self, timeout: float | None = None) -> tuple[Any, bool, Any] | None:
        """Wait for a submitted task to finish: ``(key, ok, result or exception)``.

        With ``timeout`` (seconds), return ``None`` when nothing finished in
        that time, so a caller can wait on "task finished" and on other events
        (a source announcing new frames) together. ``None`` waits for ever.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""Testing tools shipped with diffraflow: the operator conformance suite and sources for tests.

Any operator author (ours or a plugin's) checks an operator against the
contract with one mixin::

    from diffraflow.flow.testing import OperatorConformance, synthetic_frames

    class TestFrameSum(OperatorConformance):
        operator = FrameSum()                       # an operator instance
        frames = synthetic_frames((5, 7), (8, 9), "uint16", seed=0)   # optional
        rtol = 1e-6                                  # optional (default 1e-6, atol 0)

        def reference(self, frames):                 # optional naive NumPy result
            return {"total": frames.sum(axis=(2, 3), dtype="float64")}

pytest then collects the ``test_conformance_*`` tests below. Override
``make_operator(self)`` / ``make_frames(self)`` instead of the attributes when
building them needs code; set ``executors`` to add ``"local"`` (costs seconds:
a LocalCluster), ``chunkings`` to change the chunkings tried and
``backend_rtol``/``backend_atol`` when another backend is less exact than the
chunking tolerance. Or call the checks directly: :func:`check_operator` runs
them all, and :func:`check_pickle`, :func:`check_schema`,
:func:`check_chunking`, :func:`check_merge_order`, :func:`check_executors`,
:func:`check_reference` and :func:`check_backends` one at a time.

Every check runs the operator through the real engine
(:func:`~diffraflow.flow.engine.run_pipeline`, in memory or into a Zarr
result store), never through a loop of its own, so what passes here is what
runs in production.

What is asserted
----------------
* **picklable**: ``pickle`` and ``cloudpickle`` round-trips give an equal
  operator with the same ``token()``;
* **schema-consistent**: ``resolve`` is pure (same outputs twice), every
  declared output comes back with ``result_shape``/``dtype`` of its
  :class:`~diffraflow.operators.base.OutputSpec`, and a Zarr result store
  holds it with ``result_dims()`` as dimension names;
* **chunking-independent**: identical results (to ``rtol``/``atol``) with
  awkward chunks: 1 frame, a prime run splitting rows (3 of 7), bands of two
  rows with a one-row remainder, the whole scan in one chunk
  (``chunkings``: an int is frames per chunk, ``None`` one chunk, a tuple
  uneven runs; see :class:`UnevenArraySource`);
* **merge-order-independent**: the same results when the engine receives the
  regions in reverse or shuffled order, so reductions are merged in another
  order (the engine merges partials in region order);
* **executor-independent**: identical results on every executor of
  ``executors`` (``"inline"``, ``"threads"``, ``"local"`` or Executor
  objects, e.g. a module-scoped ``DistributedExecutor``);
* **reference**: equal to ``reference(frames)``, a naive NumPy function of
  the whole 4-d array returning ``{output_name: array}``;
* **backends**: every backend the operator declares (``op.backends``) agrees
  with ``numpy``; one test per backend, skipped with the backend's name where
  this machine cannot run it, and marked ``gpu`` for CUDA backends when the
  project declares that marker.

Results are keyed by output name for a single operator (``{"total": ...}``),
or by ``"<step>/<output>"`` when a :class:`~diffraflow.flow.pipeline.Pipeline`
is checked. The engine merges reductions in region order, so executors agree
exactly; only the chunking and the region order change floating-point
summation order.

:class:`GrowingArraySource` hands out an in-memory scan region by region on a
timer, the way a detector stream or a cube still being written does, so that
tests can check that a pipeline gives the same results live as offline.

pytest is imported only inside the mixin's tests, so importing this module
costs no test framework.

Examples
--------
>>> src = GrowingArraySource(np.zeros((2, 2, 3, 3), "uint8"), chunk_frames=2, interval=0.0)
>>> src.poll(1.0)[0][0].index, src.growing
(0, True)
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.pipeline import Pipeline, Step
from diffraflow.flow.sources import ArraySource, ChunkSource, Region
from diffraflow.operators.base import InputSpec, Operator
from diffraflow.schemas.backends import backend_available, get_backend

__all__ = [
    "DEFAULT_CHUNKINGS",
    "DEFAULT_ORDERS",
    "GrowingArraySource",
    "UnevenArraySource",
    "OperatorConformance",
    "synthetic_frames",
    "spot_frames",
    "input_spec",
    "run_operator",
    "check_operator",
    "check_pickle",
    "check_schema",
    "check_chunking",
    "check_merge_order",
    "check_executors",
    "check_reference",
    "check_backends",
    "assert_results_close",
]

#: Chunkings tried by default: single frames; 3 frames, splitting the default
#: 7-frame rows into 3 + 3 + 1; 17 frames, i.e. bands of 2 whole rows with a
#: 1-row remainder (chunks are rounded to whole rows above a row); and the
#: whole scan as one chunk.
DEFAULT_CHUNKINGS: tuple[int | tuple[int, ...] | None, ...] = (1, 3, 17, None)
#: Region orders tried by :func:`check_merge_order`: backwards, and a fixed
#: shuffle (the engine merges partials in the order it is given the regions).
DEFAULT_ORDERS: tuple[str, ...] = ("reverse", "shuffled")

Chunking = int | tuple[int, ...] | None


# -- data ----------------------------------------------------------------------------
def synthetic_frames(scan_shape: tuple[int, int] = (5, 7), det_shape: tuple[int, int] = (8, 9),
                     dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    """Seeded random frames ``(scan_y, scan_x, det_y, det_x)`` with a smooth background and noise.

    Examples
    --------
    >>> synthetic_frames((2, 3), (4, 4), "uint8").shape
    (2, 3, 4, 4)
    """
    rng = np.random.default_rng(seed)
    dy, dx = det_shape
    yy, xx = np.mgrid[0:dy, 0:dx]
    blob = np.exp(-((yy - dy / 2) ** 2 + (xx - dx / 2) ** 2) / (0.3 * dy * dx))
    hi = np.iinfo(dtype).max if np.dtype(dtype).kind in "iu" else 1.0
    scale = rng.uniform(0.2, 0.8, size=(*scan_shape, 1, 1))
    frames = hi * 0.5 * blob * scale + rng.uniform(0, hi * 0.3, size=(*scan_shape, dy, dx))
    out: np.ndarray = frames.astype(dtype)
    return out


def spot_frames(scan_shape: tuple[int, int] = (3, 5), det_shape: tuple[int, int] = (12, 10),
                dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """Seeded frames of a bright spot that moves from frame to frame over a smooth background, with noise.

    Values stay within 0..255 whatever ``dtype`` (rounded for integer types), so
    every frame of a ``uint8`` scan spans much of its range.

    Examples
    --------
    >>> cube = spot_frames((2, 3), (6, 5))
    >>> cube.shape, cube.dtype.name
    ((2, 3, 6, 5), 'uint8')
    """
    rng = np.random.default_rng(seed)
    n = scan_shape[0] * scan_shape[1]
    yy, xx = np.mgrid[: det_shape[0], : det_shape[1]]
    base = 40 + 30 * np.exp(-((yy - det_shape[0] / 2) ** 2 + (xx - det_shape[1] / 2) ** 2)
                            / (2 * (det_shape[1] / 3) ** 2))
    frames = np.empty((n, *det_shape))
    for i in range(n):
        cy, cx = rng.uniform(0, det_shape[0]), rng.uniform(0, det_shape[1])
        spot = rng.uniform(50, 150) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0)
        frames[i] = base * rng.uniform(0.7, 1.3) + spot + rng.normal(0, 5, det_shape)
    frames = np.clip(frames, 0, 255)
    if np.dtype(dtype).kind in "iu":
        frames = np.rint(frames)
    return frames.astype(dtype).reshape(*scan_shape, *det_shape)


def input_spec(frames: np.ndarray, attrs: dict[str, Any] | None = None) -> InputSpec:
    """The :class:`~diffraflow.operators.base.InputSpec` an operator sees for a 4-d array of frames.

    For testing ``resolve`` (its outputs and its errors) without running anything.

    Examples
    --------
    >>> input_spec(np.zeros((2, 3, 4, 5), "uint8"))
    InputSpec(scan_shape=(2, 3), det_shape=(4, 5), dtype=dtype('uint8'), attrs=None)
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected 4-d frames (scan_y, scan_x, det_y, det_x), got shape {frames.shape}")
    return InputSpec(tuple(frames.shape[:2]), tuple(frames.shape[2:]), frames.dtype, attrs)


# -- sources -------------------------------------------------------------------------
class GrowingArraySource(ArraySource):
    """An in-memory scan whose regions become readable one every ``interval`` seconds.

    The growth happens in the driver (in :meth:`poll`); the array itself
    travels to workers like an :class:`~diffraflow.flow.sources.ArraySource`'s.

    Parameters
    ----------
    array
        ``(scan_y, scan_x, det_y, det_x)`` frames.
    chunk_frames
        Frames per region.
    interval
        Seconds between two regions becoming readable.
    attrs
        Scan metadata for operators that need it.

    Examples
    --------
    >>> src = GrowingArraySource(np.zeros((1, 4, 2, 2), "uint8"), chunk_frames=2, interval=0.0)
    >>> regions, ended = src.poll(1.0)
    >>> [r.x for r in regions], ended
    ([(0, 2), (2, 4)], True)
    """

    def __init__(self, array: np.ndarray, chunk_frames: int | None = None, interval: float = 0.05,
                 attrs: dict[str, Any] | None = None) -> None:
        super().__init__(array, chunk_frames=chunk_frames, attrs=attrs)
        self.interval = float(interval)
        self.growing = True
        self._pending = list(self.regions())
        self._next_time: float | None = None
        self.polls = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pending"] = []  # workers only read
        return state

    def poll(self, timeout: float) -> tuple[list[Region], bool]:
        """Regions due by now, waiting up to ``timeout`` seconds for the next one; and whether all were given."""
        self.polls += 1
        now = time.monotonic()
        if self._next_time is None:
            self._next_time = now
        deadline = now + max(0.0, timeout)
        while self._pending and self._next_time > time.monotonic() and time.monotonic() < deadline:
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
        fresh: list[Region] = []
        while self._pending and self._next_time <= time.monotonic():
            fresh.append(self._pending.pop(0))
            self._next_time += self.interval
        return fresh, not self._pending


def _uneven_regions(scan_shape: tuple[int, int], runs: Sequence[int]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``(y, x)`` bounds of runs of ``runs[0], runs[1], ...`` frames (in turn), in scan order.

    A run never crosses a row end (a region is a rectangle); a run of at least
    a row that starts a row takes as many whole rows as it holds.
    """
    sy, sx = scan_shape
    bounds, y, x, i = [], 0, 0, 0
    while y < sy:
        size = int(runs[i % len(runs)])
        i += 1
        if x == 0 and size >= sx:
            rows = min(size // sx, sy - y)
            bounds.append(((y, y + rows), (0, sx)))
            y += rows
            continue
        stop = min(x + size, sx)
        bounds.append(((y, y + 1), (x, stop)))
        x = stop
        if x == sx:
            y, x = y + 1, 0
    return bounds


class UnevenArraySource(ArraySource):
    """An in-memory scan cut into uneven regions and handed to the engine in any order.

    The engine merges reduction partials in the order of the regions' indices,
    so a source whose regions run backwards (or shuffled) makes a run merge
    them in that order: what :func:`check_merge_order` needs to show that an
    operator's ``merge`` does not depend on it. Per-frame results still land
    where their frames are. Use it with in-memory results (``output=None``):
    a Zarr result store expects the regular grid of
    :class:`~diffraflow.flow.sources.ArraySource`.

    Parameters
    ----------
    array
        ``(scan_y, scan_x, det_y, det_x)`` frames.
    chunks
        Frames per region as for :class:`~diffraflow.flow.sources.ArraySource`
        (an int, or ``None`` for the array's default), or a tuple of run
        lengths used in turn: ``(2, 5, 3)`` cuts each row into runs of 2, 5,
        3, 2... frames (a run stops at the end of a row; one of at least a row
        that starts a row takes whole rows).
    order
        ``"scan"``, ``"reverse"``, ``"shuffled"`` (a fixed permutation,
        seeded by ``seed``) or a sequence giving the scan-order positions of
        the regions in the order wanted.
    attrs
        Scan metadata for operators that need it.
    seed
        Seed of the ``"shuffled"`` order.

    Examples
    --------
    >>> src = UnevenArraySource(np.zeros((2, 4, 1, 1), "uint8"), chunks=(3, 2), order="reverse")
    >>> [(r.index, r.y, r.x) for r in src.regions()]
    [(0, (1, 2), (3, 4)), (1, (1, 2), (0, 3)), (2, (0, 1), (3, 4)), (3, (0, 1), (0, 3))]
    """

    def __init__(self, array: np.ndarray, chunks: Chunking = None, order: str | Sequence[int] = "scan",
                 attrs: dict[str, Any] | None = None, seed: int = 0) -> None:
        runs = None if chunks is None or isinstance(chunks, int | np.integer) else tuple(int(c) for c in chunks)
        frames_per_chunk = int(chunks) if isinstance(chunks, int | np.integer) else None
        super().__init__(array, chunk_frames=frames_per_chunk, attrs=attrs)
        scan_shape = self.spec.scan_shape
        if runs is None:
            bounds = [(r.y, r.x) for r in super().regions()]
        else:
            if not runs or min(runs) < 1:
                raise ValueError(f"chunks: run lengths must be positive, got {chunks!r}")
            bounds = _uneven_regions(scan_shape, runs)
            widest: tuple[int, int] = (1, max(x1 - x0 for _y, (x0, x1) in bounds))
            self.grid = widest
        positions = _order(len(bounds), order, seed)
        self._regions = [Region(i, y, x, scan_x=scan_shape[1]) for i, (y, x) in enumerate(bounds[p] for p in positions)]

    def regions(self) -> Iterator[Region]:
        return iter(self._regions)

    def n_regions(self) -> int:
        return len(self._regions)


def _order(n: int, order: str | Sequence[int], seed: int) -> list[int]:
    if isinstance(order, str):
        if order == "scan":
            return list(range(n))
        if order == "reverse":
            return list(range(n))[::-1]
        if order == "shuffled":
            return [int(i) for i in np.random.default_rng(seed).permutation(n)]
        raise ValueError(f"order: expected 'scan', 'reverse', 'shuffled' or a permutation, got {order!r}")
    positions = [int(i) for i in order]
    if sorted(positions) != list(range(n)):
        raise ValueError(f"order: {positions} is not a permutation of the {n} regions 0..{n - 1}")
    return positions


# -- running -------------------------------------------------------------------------
def _pipeline(op: Operator | Pipeline, backend: str | None = None) -> Pipeline:
    if isinstance(op, Pipeline):
        return op
    return Pipeline([Step(op, backend=backend or "")])


def _strip(op: Operator | Pipeline, results: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(op, Pipeline):
        return results
    return {key.split("/", 1)[1]: value for key, value in results.items()}


def run_operator(op: Operator | Pipeline, frames: np.ndarray | str | os.PathLike[str] | ChunkSource, *,
                 chunk_frames: Chunking = None, executor: Any = "inline", output: str | os.PathLike[str] | None = None,
                 backend: str | None = None, order: str | Sequence[int] = "scan",
                 attrs: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Run one operator (or a pipeline) through the engine; results by output name.

    Parameters
    ----------
    op
        An operator, or a pipeline (results then keyed ``"<step>/<output>"``).
    frames
        A 4-d array, a ``.zarr`` scan cube or a
        :class:`~diffraflow.flow.sources.ChunkSource`.
    chunk_frames
        Frames per chunk; ``None`` processes an array as one chunk; a tuple
        cuts it into uneven runs (see :class:`UnevenArraySource`).
    executor
        ``"inline"``, ``"threads"``, ``"local"`` or an Executor.
    output
        A result-store path, or ``None`` for in-memory results.
    backend
        The step's backend (default: the operator's preferred one).
    order
        Order in which the engine gets an array's regions (see
        :class:`UnevenArraySource`); in-memory results only, unless ``"scan"``.
    attrs
        Scan metadata given to operators with an array.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from diffraflow.operators.base import OutputSpec
    >>> @dataclass(frozen=True)
    ... class Peak(Operator):
    ...     name = "peak_doc"
    ...     def resolve(self, spec): return {"peak": OutputSpec("nav", "uint16")}
    ...     def process(self, frames, ctx): return {"peak": frames.reshape(len(frames), -1).max(1)}
    >>> run_operator(Peak(), synthetic_frames((2, 2), (3, 3)), chunk_frames=1)["peak"].shape
    (2, 2)
    """
    data: Any = frames
    if isinstance(frames, np.ndarray):
        uneven = isinstance(chunk_frames, tuple | list) or not (isinstance(order, str) and order == "scan")
        if uneven and output is not None:
            raise ValueError("uneven chunks and region orders other than 'scan' need in-memory results "
                             "(output=None): a result store expects the regular grid")
        chunks = frames.shape[0] * frames.shape[1] if chunk_frames is None else chunk_frames
        data = UnevenArraySource(frames, chunks, order, attrs=attrs) if uneven else \
            ArraySource(frames, chunk_frames=int(chunks), attrs=attrs)  # type: ignore[arg-type]  # an int here
    elif chunk_frames is not None and not isinstance(chunk_frames, int | np.integer):
        raise ValueError("uneven chunks need an in-memory array; give a cube path an int chunk_frames")
    report = run_pipeline(_pipeline(op, backend), data, output=output, executor=executor,
                          # a cube path's chunk_frames is an int or None (checked above)
                          chunk_frames=cast("int | None", chunk_frames) if isinstance(data, str | os.PathLike) else None,
                          retries=0)
    return _strip(op, report.results)


def assert_results_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], *, rtol: float = 1e-6,
                         atol: float = 0.0, what: str = "") -> None:
    """Assert two result dicts have the same keys, shapes, dtypes and values (NaN equal NaN).

    Floating-point outputs are compared to ``rtol``/``atol``, others exactly.

    Examples
    --------
    >>> assert_results_close({"a": np.ones(2)}, {"a": np.ones(2)})
    >>> assert_results_close({"a": np.ones(2)}, {"a": np.zeros(2)}, what="demo")
    Traceback (most recent call last):
    ...
    AssertionError: ...
    """
    assert sorted(actual) == sorted(expected), f"{what}: outputs {sorted(actual)} != {sorted(expected)}"
    for key in expected:
        a, e = np.asarray(actual[key]), np.asarray(expected[key])
        assert a.shape == e.shape, f"{what}: {key} shape {a.shape} != {e.shape}"
        if a.dtype.kind in "fc" or e.dtype.kind in "fc":
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{what}: {key}")
        else:
            np.testing.assert_array_equal(a, e, err_msg=f"{what}: {key}")


# -- checks --------------------------------------------------------------------------
def check_pickle(op: Operator) -> None:
    """pickle and cloudpickle round-trips keep the operator equal, with the same token.

    Examples
    --------
    >>> check_pickle(Operator())
    """
    import cloudpickle

    for dumps, loads, name in ((pickle.dumps, pickle.loads, "pickle"),
                               (cloudpickle.dumps, cloudpickle.loads, "cloudpickle")):
        copy = loads(dumps(op))
        assert type(copy) is type(op), f"{name}: type changed to {type(copy)}"
        assert copy.token() == op.token(), f"{name}: token changed"
        assert copy.params() == op.params(), f"{name}: params changed"


def check_schema(op: Operator | Pipeline, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Results match what ``resolve`` declared: names, shapes, dtypes and stored dims.

    Runs the whole scan as one chunk into a temporary Zarr result store, and
    returns the results.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from diffraflow.operators.base import OutputSpec
    >>> @dataclass(frozen=True)
    ... class Mean(Operator):
    ...     name = "mean_doc"
    ...     def resolve(self, spec): return {"mean": OutputSpec("nav", "float32")}
    ...     def process(self, frames, ctx): return {"mean": frames.mean(axis=(1, 2))}
    >>> check_schema(Mean(), synthetic_frames((2, 3), (4, 4)))["mean"].dtype.name
    'float32'
    """
    import zarr

    pipe = _pipeline(op)
    spec = InputSpec(tuple(frames.shape[:2]), tuple(frames.shape[2:]), frames.dtype)
    plan = pipe.resolve(spec, check_backends=False)
    plan_again = pipe.resolve(spec, check_backends=False)
    assert [s.outputs for s in plan.steps] == [s.outputs for s in plan_again.steps], "resolve() is not pure"
    declared = plan.result_outputs()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "conformance.zarr"
        results = run_operator(op, frames, output=out)
        group = zarr.open_group(str(out), mode="r")
        record: Any = group.attrs["diffraflow"]
        assert record["complete"] is True
        for key, (_step, _name, spec_out) in declared.items():
            dims = tuple(getattr(group[key].metadata, "dimension_names", None) or ())
            assert len(dims) == len(spec_out.result_dims()), f"{key}: stored dims {dims}"
            assert all(d == w or d.endswith(w) for d, w in zip(dims, spec_out.result_dims(), strict=True)), \
                f"{key}: stored dims {dims} != declared {spec_out.result_dims()}"
    for key, (_step, name, spec_out) in declared.items():
        value = results[key if isinstance(op, Pipeline) else name]
        want = spec_out.result_shape(spec.scan_shape)
        assert value.shape == want, f"{key}: shape {value.shape} != declared {want}"
        assert value.dtype == spec_out.dtype, f"{key}: dtype {value.dtype} != declared {spec_out.dtype}"
    return results


def check_chunking(op: Operator | Pipeline, frames: np.ndarray, chunkings: Iterable[Chunking] = DEFAULT_CHUNKINGS,
                   *, executor: Any = "inline", rtol: float = 1e-6, atol: float = 0.0) -> dict[str, np.ndarray]:
    """Same results whatever the chunking; returns the one-chunk (or first) results.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from diffraflow.operators.base import OutputSpec
    >>> @dataclass(frozen=True)
    ... class Total(Operator):
    ...     name = "total_chunking_doc"
    ...     def resolve(self, spec): return {"total": OutputSpec("sig", "float64", spec.det_shape)}
    ...     def process(self, frames, ctx): return {"total": frames.sum(axis=0, dtype="float64")}
    >>> check_chunking(Total(), synthetic_frames((3, 4), (2, 2)), (1, (2, 3), None))["total"].shape
    (2, 2)
    """
    results = {c: run_operator(op, frames, chunk_frames=c, executor=executor) for c in chunkings}
    base_key = None if None in results else next(iter(results))
    base = results[base_key]
    for c, res in results.items():
        assert_results_close(res, base, rtol=rtol, atol=atol, what=f"chunk_frames={c} vs {base_key}")
    return base


def check_merge_order(op: Operator | Pipeline, frames: np.ndarray, orders: Iterable[str | Sequence[int]] = DEFAULT_ORDERS,
                      *, chunk_frames: Chunking = (2, 5, 3), rtol: float = 1e-6, atol: float = 0.0,
                      ) -> dict[str, np.ndarray]:
    """Same results when the engine gets the regions (and merges their partials) in other orders.

    Compares each order of ``orders`` with scan order, on uneven
    ``chunk_frames`` (see :class:`UnevenArraySource`); returns the scan-order results.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from diffraflow.operators.base import OutputSpec
    >>> @dataclass(frozen=True)
    ... class First(Operator):
    ...     name = "first_doc"
    ...     def resolve(self, spec): return {"first": OutputSpec("sig", "int64", spec.det_shape)}
    ...     def process(self, frames, ctx): return {"first": frames[0].astype("int64")}
    ...     def merge(self, name, left, right): return left   # keeps whichever came first: wrong
    >>> check_merge_order(First(), synthetic_frames((2, 3), (2, 2)))
    Traceback (most recent call last):
    ...
    AssertionError: ...
    """
    base = run_operator(op, frames, chunk_frames=chunk_frames)
    for order in orders:
        res = run_operator(op, frames, chunk_frames=chunk_frames, order=order)
        assert_results_close(res, base, rtol=rtol, atol=atol, what=f"regions in {order} order vs scan order")
    return base


def check_executors(op: Operator | Pipeline, frames: np.ndarray, executors: Sequence[Any] = ("inline", "threads"),
                    *, chunk_frames: Chunking = 3, rtol: float = 0.0, atol: float = 0.0) -> dict[str, np.ndarray]:
    """Same results on every executor (default: exactly; reductions merge in region order).

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from diffraflow.operators.base import OutputSpec
    >>> @dataclass(frozen=True)
    ... class Peak(Operator):
    ...     name = "peak_executors_doc"
    ...     def resolve(self, spec): return {"peak": OutputSpec("nav", "uint16")}
    ...     def process(self, frames, ctx): return {"peak": frames.reshape(len(frames), -1).max(1)}
    >>> check_executors(Peak(), synthetic_frames((2, 3), (3, 3)))["peak"].shape
    (2, 3)
    """
    results = [run_operator(op, frames, chunk_frames=chunk_frames, executor=ex) for ex in executors]
    for ex, res in zip(executors[1:], results[1:], strict=True):
        name = getattr(ex, "name", ex)
        assert_results_close(res, results[0], rtol=rtol, atol=atol, what=f"executor {name} vs {executors[0]}")
    return results[0]


def check_reference(op: Operator | Pipeline, frames: np.ndarray, reference: Callable[[np.ndarray], dict[str, np.ndarray] | None],
                    *, chunk_frames: Chunking = 3, rtol: float = 1e-6, atol: float = 0.0) -> None:
    """Results equal a naive NumPy ``reference(frames) -> {output: array}`` (compared in float for floats).

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from diffraflow.operators.base import OutputSpec
    >>> @dataclass(frozen=True)
    ... class Peak(Operator):
    ...     name = "peak_reference_doc"
    ...     def resolve(self, spec): return {"peak": OutputSpec("nav", "uint16")}
    ...     def process(self, frames, ctx): return {"peak": frames.reshape(len(frames), -1).max(1)}
    >>> check_reference(Peak(), synthetic_frames((2, 3), (3, 3)), lambda f: {"peak": f.max(axis=(2, 3))})
    """
    results = run_operator(op, frames, chunk_frames=chunk_frames)
    wanted = reference(frames)
    assert wanted is not None, "reference(frames) returned None: give {output_name: array}"
    expected = {k: np.asarray(v) for k, v in wanted.items()}
    missing = sorted(set(expected) - set(results))
    assert not missing, f"reference outputs {missing} not produced (produced {sorted(results)})"
    assert_results_close({k: results[k] for k in expected}, expected, rtol=rtol, atol=atol, what="vs reference")


def check_backends(op: Operator, frames: np.ndarray, backends: Iterable[str] | None = None, *,
                   chunk_frames: Chunking = 3, rtol: float = 1e-5, atol: float = 1e-6) -> list[str]:
    """Each backend agrees with numpy; returns the backends compared.

    ``backends=None`` compares every backend of ``op.backends`` that this
    machine can run (:func:`~diffraflow.schemas.backends.backend_available`);
    a backend named explicitly that cannot run here fails with the engine's
    BackendUnavailableError.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from diffraflow.operators.base import OutputSpec
    >>> @dataclass(frozen=True)
    ... class Peak(Operator):
    ...     name = "peak_backends_doc"
    ...     backends = ("numpy", "torch-cpu")
    ...     def resolve(self, spec): return {"peak": OutputSpec("nav", "float32")}
    ...     def process(self, frames, ctx):
    ...         return {"peak": ctx.xp.amax(frames.reshape(len(frames), -1), 1) * 1.0}
    >>> check_backends(Peak(), synthetic_frames((2, 3), (3, 3), "uint8"))
    ['torch-cpu']
    """
    if "numpy" not in op.backends:
        raise ValueError(f"{type(op).__name__} does not declare the numpy backend: nothing to compare with")
    wanted = [b for b in op.backends if b != "numpy" and backend_available(b)] if backends is None else \
        [b for b in backends if b != "numpy"]
    if not wanted:
        return []
    base = run_operator(op, frames, chunk_frames=chunk_frames, backend="numpy")
    for backend in wanted:
        other = run_operator(op, frames, chunk_frames=chunk_frames, backend=backend)
        assert_results_close(other, base, rtol=rtol, atol=atol, what=f"backend {backend} vs numpy")
    return wanted


def check_operator(op: Operator | Pipeline, frames: np.ndarray, reference: Callable[[np.ndarray], dict[str, np.ndarray] | None] | None = None, *,
                   chunkings: Iterable[Chunking] = DEFAULT_CHUNKINGS, executors: Sequence[Any] = ("inline", "threads"),
                   rtol: float = 1e-6, atol: float = 0.0) -> dict[str, np.ndarray]:
    """Run every conformance check; returns the results (one chunk, inline).

    Backends other than numpy are compared (to ``rtol``/``atol``) where this
    machine can run them.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from diffraflow.operators.base import OutputSpec
    >>> @dataclass(frozen=True)
    ... class Total(Operator):
    ...     name = "total_doc"
    ...     def resolve(self, spec): return {"total": OutputSpec("nav", "float64")}
    ...     def process(self, frames, ctx): return {"total": frames.sum(axis=(1, 2), dtype="float64")}
    >>> frames = synthetic_frames((3, 4), (5, 5))
    >>> ref = lambda f: {"total": f.sum(axis=(2, 3), dtype="float64")}
    >>> check_chunking(Total(), frames)["total"].shape   # a class defined here cannot be pickled...
    (3, 4)
    >>> out = check_operator(Total(), frames, reference=ref)   # doctest: +SKIP
    >>> # ...so check_operator (which checks pickling) is for operators defined in modules
    """
    frames = np.asarray(frames)
    if isinstance(op, Operator):
        check_pickle(op)
    results = check_schema(op, frames)
    check_chunking(op, frames, chunkings, rtol=rtol, atol=atol)
    check_merge_order(op, frames, rtol=rtol, atol=atol)
    check_executors(op, frames, executors)
    if reference is not None:
        check_reference(op, frames, reference, rtol=rtol, atol=atol)
    if isinstance(op, Operator) and "numpy" in op.backends:
        check_backends(op, frames, rtol=max(rtol, 1e-5), atol=max(atol, 1e-6))
    return results


# -- the mixin -----------------------------------------------------------------------
def _declares_marker(config: Any, name: str) -> bool:
    """Whether the project under test declares the pytest marker ``name`` (``--strict-markers`` safe)."""
    return any(str(line).split(":", 1)[0].strip() == name for line in config.getini("markers"))


class OperatorConformance:
    """Mixin: subclass as ``class TestMyOp(OperatorConformance)`` and set ``operator``.

    The mixin defines ``pytest_generate_tests`` (to give each backend its own
    test); a subclass that needs its own should call this one too.

    Attributes
    ----------
    operator
        The operator instance under test (or override :meth:`make_operator`).
    frames
        4-d input; default :func:`synthetic_frames` ``(5, 7, 8, 9)`` uint16
        (or override :meth:`make_frames`).
    chunkings, executors, rtol, atol
        See :func:`check_operator`.
    orders
        Region orders of :func:`check_merge_order`.
    backend_rtol, backend_atol
        Tolerance of other backends against numpy (default ``rtol``/``atol``).

    Examples
    --------
    >>> from diffraflow.operators.stats.max_pattern import MaxPattern
    >>> class TestMax(OperatorConformance):
    ...     operator = MaxPattern()
    >>> TestMax().test_conformance_chunking()
    """

    operator: Operator | None = None
    frames: np.ndarray | None = None
    chunkings: tuple[Chunking, ...] = DEFAULT_CHUNKINGS
    orders: tuple[str | Sequence[int], ...] = DEFAULT_ORDERS
    executors: tuple[Any, ...] = ("inline", "threads")
    rtol: float = 1e-6
    atol: float = 0.0
    backend_rtol: float | None = None
    backend_atol: float | None = None

    def make_operator(self) -> Operator:
        """The operator under test (default: :attr:`operator`)."""
        assert self.operator is not None, "set 'operator' or override make_operator()"
        return self.operator

    def make_frames(self) -> np.ndarray:
        """The frames checked (default: :attr:`frames`, else :func:`synthetic_frames`)."""
        return self.frames if self.frames is not None else synthetic_frames()

    def reference(self, frames: np.ndarray) -> dict[str, np.ndarray] | None:
        """Override with a naive NumPy result ``{output: array}``; None skips the check."""
        return None

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """One ``test_conformance_backend`` per backend the operator declares besides numpy."""
        if "conformance_backend" not in metafunc.fixturenames:
            return
        import pytest

        op = self.make_operator()
        mark_gpu = _declares_marker(metafunc.config, "gpu")
        params = [pytest.param(name, id=name, marks=[pytest.mark.gpu] if mark_gpu and get_backend(name).gpu else [])
                  for name in getattr(op, "backends", ()) if name != "numpy"]
        metafunc.parametrize("conformance_backend", params or [pytest.param(None, id="numpy-only")])

    def test_conformance_pickle(self) -> None:
        check_pickle(self.make_operator())

    def test_conformance_schema(self) -> None:
        check_schema(self.make_operator(), self.make_frames())

    def test_conformance_chunking(self) -> None:
        check_chunking(self.make_operator(), self.make_frames(), self.chunkings, rtol=self.rtol, atol=self.atol)

    def test_conformance_merge_order(self) -> None:
        check_merge_order(self.make_operator(), self.make_frames(), self.orders, rtol=self.rtol, atol=self.atol)

    def test_conformance_executors(self) -> None:
        check_executors(self.make_operator(), self.make_frames(), self.executors)

    def test_conformance_reference(self) -> None:
        import pytest

        frames = self.make_frames()
        if self.reference(frames) is None:
            pytest.skip("no NumPy reference given")
        check_reference(self.make_operator(), frames, self.reference, rtol=self.rtol, atol=self.atol)

    def test_conformance_backend(self, conformance_backend: str | None) -> None:
        import pytest

        op = self.make_operator()
        if conformance_backend is None:
            pytest.skip("the operator declares only the numpy backend: no other backend to compare with")
        if "numpy" not in op.backends:
            pytest.skip(f"{type(op).__name__} does not declare numpy: no reference backend to compare with")
        if not backend_available(conformance_backend):
            pytest.skip(f"backend {conformance_backend!r} is not available on this machine")
        rtol = self.rtol if self.backend_rtol is None else self.backend_rtol
        atol = self.atol if self.backend_atol is None else self.backend_atol
        check_backends(op, self.make_frames(), [conformance_backend], rtol=rtol, atol=atol)

"""Operator conformance suite: reuse it in every operator's tests.

Two ways to use it (the API is stable):

1. **Mixin class** — subclass :class:`OperatorConformance`, set ``operator``
   (and optionally the data, a NumPy reference and tolerances); pytest then
   collects five ``test_conformance_*`` tests::

       from tests.operators.conformance import OperatorConformance, synthetic_frames

       class TestFrameSum(OperatorConformance):
           operator = FrameSum()                       # an operator instance
           frames = synthetic_frames((5, 7), (8, 9), "uint16", seed=0)   # optional
           rtol = 1e-6                                  # optional (default 1e-6, atol 0)

           def reference(self, frames):                 # optional naive NumPy result
               return {"total": frames.sum(axis=(2, 3), dtype="float64")}

   Override ``make_operator(self)`` / ``make_frames(self)`` instead of the
   attributes when building them needs code; set ``executors`` to add
   ``"local"`` (costs seconds: a LocalCluster) and ``chunkings`` to change
   the chunk sizes tried.

2. **One call** — :func:`check_operator`::

       results = check_operator(FrameSum(), frames, reference=ref_fn,
                                chunkings=(1, 3, 7, None), executors=("inline", "threads"))

   or the single checks :func:`check_pickle`, :func:`check_schema`,
   :func:`check_chunking`, :func:`check_executors`, :func:`check_reference`,
   :func:`check_backends`.

What is asserted
----------------
* **picklable**: ``pickle`` and ``cloudpickle`` round-trips give an equal
  operator with the same ``token()``;
* **schema-consistent**: ``resolve`` is pure (same outputs twice), every
  declared output comes back with ``result_shape``/``dtype`` of its
  :class:`~diffraflow.operators.base.OutputSpec`, and a Zarr result store holds it with
  ``result_dims()`` as dimension names;
* **chunking-independent**: identical results (to ``rtol``/``atol``) with
  awkward chunks — 1 frame, a prime run splitting rows (3 of 7), bands of
  two rows with a one-row remainder, the whole scan in one chunk (``chunkings``; an int is frames per
  chunk, ``None`` means one chunk);
* **executor-independent**: identical results on every executor of
  ``executors`` (``"inline"``, ``"threads"``, ``"local"`` or Executor
  objects, e.g. a module-scoped ``DistributedExecutor``);
* **reference**: equal to ``reference(frames)`` — a naive NumPy function of
  the whole 4-d array returning ``{output_name: array}``;
* **backends** (:func:`check_backends`): every backend of ``op.backends``
  available here (CuPy needs CUDA) agrees with ``numpy``.

Results are keyed by output name for a single operator (``{"total": ...}``),
or by ``"<step>/<output>"`` when a :class:`~diffraflow.flow.pipeline.Pipeline` is checked.
Reductions are merged in chunk order by the engine, so executors agree
exactly; only chunking changes floating-point summation order.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.flow.engine import run_pipeline
from diffraflow.flow.pipeline import Pipeline, Step
from diffraflow.operators.base import InputSpec, Operator

__all__ = [
    "DEFAULT_CHUNKINGS",
    "OperatorConformance",
    "synthetic_frames",
    "run_operator",
    "check_operator",
    "check_pickle",
    "check_schema",
    "check_chunking",
    "check_executors",
    "check_reference",
    "check_backends",
    "assert_results_close",
]

#: Frames per chunk tried by default: single frames; 3 frames, splitting the
#: default 7-frame rows into 3 + 3 + 1; 17 frames, i.e. bands of 2 whole rows
#: with a 1-row remainder (chunks are rounded to whole rows above a row); and
#: the whole scan as one chunk.
DEFAULT_CHUNKINGS: tuple[int | None, ...] = (1, 3, 17, None)


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
    return frames.astype(dtype)


def _pipeline(op: Operator | Pipeline, backend: str | None = None) -> Pipeline:
    if isinstance(op, Pipeline):
        return op
    return Pipeline([Step(op, backend=backend or "")])


def _strip(op: Operator | Pipeline, results: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(op, Pipeline):
        return results
    return {key.split("/", 1)[1]: value for key, value in results.items()}


def run_operator(op: Operator | Pipeline, frames: np.ndarray | str | Path, *, chunk_frames: int | None = None,
                 executor: Any = "inline", output: str | Path | None = None, backend: str | None = None,
                 ) -> dict[str, np.ndarray]:
    """Run one operator (or a pipeline) through the engine; results by output name.

    ``chunk_frames=None`` processes the whole scan as one chunk.

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
    if chunk_frames is None:
        shape = np.shape(frames) if isinstance(frames, np.ndarray) else None
        chunk_frames = int(shape[0] * shape[1]) if shape is not None else None
    report = run_pipeline(_pipeline(op, backend), frames, output=output, executor=executor,
                          chunk_frames=chunk_frames, retries=0)
    return _strip(op, report.results)


def assert_results_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], *, rtol: float = 1e-6,
                         atol: float = 0.0, what: str = "") -> None:
    """Assert two result dicts have the same keys, shapes, dtypes and values (NaN equal NaN).

    Examples
    --------
    >>> assert_results_close({"a": np.ones(2)}, {"a": np.ones(2)})
    """
    assert sorted(actual) == sorted(expected), f"{what}: outputs {sorted(actual)} != {sorted(expected)}"
    for key in expected:
        a, e = np.asarray(actual[key]), np.asarray(expected[key])
        assert a.shape == e.shape, f"{what}: {key} shape {a.shape} != {e.shape}"
        if a.dtype.kind in "fc" or e.dtype.kind in "fc":
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{what}: {key}")
        else:
            np.testing.assert_array_equal(a, e, err_msg=f"{what}: {key}")


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

    Returns the results (whole scan in one chunk, inline).
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
        assert group.attrs["diffraflow"]["complete"] is True
        for key, (_step, _name, spec_out) in declared.items():
            arr = group[key]
            dims = tuple(arr.metadata.dimension_names or ())
            assert len(dims) == len(spec_out.result_dims()), f"{key}: stored dims {dims}"
            assert all(d == w or d.endswith(w) for d, w in zip(dims, spec_out.result_dims(), strict=True)), \
                f"{key}: stored dims {dims} != declared {spec_out.result_dims()}"
    for key, (_step, name, spec_out) in declared.items():
        short = key if isinstance(op, Pipeline) else name
        value = results[short]
        want = spec_out.result_shape(spec.scan_shape)
        assert value.shape == want, f"{key}: shape {value.shape} != declared {want}"
        assert value.dtype == spec_out.dtype, f"{key}: dtype {value.dtype} != declared {spec_out.dtype}"
    return results


def check_chunking(op: Operator | Pipeline, frames: np.ndarray, chunkings: Iterable[int | None] = DEFAULT_CHUNKINGS,
                   *, executor: Any = "inline", rtol: float = 1e-6, atol: float = 0.0) -> dict[str, np.ndarray]:
    """Same results whatever the chunking; returns the one-chunk (or first) results."""
    results = {c: run_operator(op, frames, chunk_frames=c, executor=executor) for c in chunkings}
    base_key = None if None in results else next(iter(results))
    base = results[base_key]
    for c, res in results.items():
        assert_results_close(res, base, rtol=rtol, atol=atol, what=f"chunk_frames={c} vs {base_key}")
    return base


def check_executors(op: Operator | Pipeline, frames: np.ndarray, executors: Sequence[Any] = ("inline", "threads"),
                    *, chunk_frames: int | None = 3, rtol: float = 0.0, atol: float = 0.0) -> dict[str, np.ndarray]:
    """Same results on every executor (default: exactly; reductions merge in chunk order)."""
    results = [run_operator(op, frames, chunk_frames=chunk_frames, executor=ex) for ex in executors]
    for ex, res in zip(executors[1:], results[1:], strict=True):
        name = getattr(ex, "name", ex)
        assert_results_close(res, results[0], rtol=rtol, atol=atol, what=f"executor {name} vs {executors[0]}")
    return results[0]


def check_reference(op: Operator | Pipeline, frames: np.ndarray, reference: Callable[[np.ndarray], dict],
                    *, chunk_frames: int | None = 3, rtol: float = 1e-6, atol: float = 0.0) -> None:
    """Results equal a naive NumPy ``reference(frames) -> {output: array}`` (compared in float for floats)."""
    results = run_operator(op, frames, chunk_frames=chunk_frames)
    expected = {k: np.asarray(v) for k, v in reference(frames).items()}
    missing = sorted(set(expected) - set(results))
    assert not missing, f"reference outputs {missing} not produced (produced {sorted(results)})"
    assert_results_close({k: results[k] for k in expected}, expected, rtol=rtol, atol=atol, what="vs reference")


def check_backends(op: Operator, frames: np.ndarray, *, chunk_frames: int | None = 3, rtol: float = 1e-5,
                   atol: float = 1e-6) -> list[str]:
    """Every available backend of the operator agrees with numpy; returns the backends checked."""
    from tests.conftest import cuda_available

    backends = [b for b in op.backends if b == "numpy" or cuda_available()]
    if len(backends) < 2:
        return backends
    base = run_operator(op, frames, chunk_frames=chunk_frames, backend=backends[0])
    for backend in backends[1:]:
        other = run_operator(op, frames, chunk_frames=chunk_frames, backend=backend)
        assert_results_close(other, base, rtol=rtol, atol=atol, what=f"backend {backend} vs {backends[0]}")
    return backends


def check_operator(op: Operator | Pipeline, frames: np.ndarray, reference: Callable | None = None, *,
                   chunkings: Iterable[int | None] = DEFAULT_CHUNKINGS, executors: Sequence[Any] = ("inline", "threads"),
                   rtol: float = 1e-6, atol: float = 0.0) -> dict[str, np.ndarray]:
    """Run every conformance check; returns the results (one chunk, inline).

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
    check_executors(op, frames, executors)
    if reference is not None:
        check_reference(op, frames, reference, rtol=rtol, atol=atol)
    return results


class OperatorConformance:
    """Mixin: subclass as ``class TestMyOp(OperatorConformance)`` and set ``operator``.

    Attributes
    ----------
    operator
        The operator instance under test (or override :meth:`make_operator`).
    frames
        4-d input; default :func:`synthetic_frames` ``(5, 7, 8, 9)`` uint16
        (or override :meth:`make_frames`).
    chunkings, executors, rtol, atol
        See :func:`check_operator`.
    """

    operator: Operator | None = None
    frames: np.ndarray | None = None
    chunkings: tuple[int | None, ...] = DEFAULT_CHUNKINGS
    executors: tuple[Any, ...] = ("inline", "threads")
    rtol: float = 1e-6
    atol: float = 0.0

    def make_operator(self) -> Operator:
        assert self.operator is not None, "set 'operator' or override make_operator()"
        return self.operator

    def make_frames(self) -> np.ndarray:
        return self.frames if self.frames is not None else synthetic_frames()

    def reference(self, frames: np.ndarray) -> dict[str, np.ndarray] | None:
        """Override with a naive NumPy result ``{output: array}``; None skips the check."""
        return None

    def test_conformance_pickle(self) -> None:
        check_pickle(self.make_operator())

    def test_conformance_schema(self) -> None:
        check_schema(self.make_operator(), self.make_frames())

    def test_conformance_chunking(self) -> None:
        check_chunking(self.make_operator(), self.make_frames(), self.chunkings, rtol=self.rtol, atol=self.atol)

    def test_conformance_executors(self) -> None:
        check_executors(self.make_operator(), self.make_frames(), self.executors)

    def test_conformance_reference(self) -> None:
        import pytest

        frames = self.make_frames()
        if self.reference(frames) is None:
            pytest.skip("no NumPy reference given")
        check_reference(self.make_operator(), frames, self.reference, rtol=self.rtol, atol=self.atol)

"""The operator contract.

An operator is a small frozen dataclass, in the spirit of LiberTEM's UDFs and
zarr's codecs:

* its **parameters** are the dataclass fields (each with a ``doc`` in its
  field metadata, shown by ``diffraflow operators``);
* :meth:`Operator.resolve` maps the input :class:`InputSpec` to the declared
  **outputs** (:class:`OutputSpec`), purely and cheaply, before any data is
  read;
* :meth:`Operator.setup` builds **large constants** (look-up tables, model
  weights) once per worker; the engine caches them by :meth:`Operator.token`;
* :meth:`Operator.process` is the per-chunk **kernel**: it receives a stack of
  frames ``(n, det_y, det_x)`` and returns one array per output, with a leading
  axis ``n`` for ``nav``/``frames`` outputs and the reduced value for
  ``sig``/``single`` outputs;
* :meth:`Operator.merge` combines two partial reductions (default: sum), and
  :meth:`Operator.finalize` turns the merged partials of a pass into final
  outputs or, for **multi-pass** operators (``passes > 1``), into the state
  handed to the next pass through :attr:`ChunkContext.state`;
* **iterative** operators (NMF, fuzzy c-means...) iterate until their own
  convergence test: ``finalize`` returns :class:`NextPass` (another pass),
  :class:`LastPass` (one more pass, the one that produces the per-frame
  outputs) or the final outputs, within :meth:`Operator.max_passes`;
* :meth:`Operator.bind` receives the input store's variables (static
  background, per-point projection centre) before resolution, and
  :meth:`Operator.warm_up` compiles kernels before the run is timed.

Output kinds
------------
``nav``     one value (of ``extra_shape``) per frame: a map over the scan.
``frames``  a new frame per frame (``extra_shape == det shape`` after the
            operator); later steps of a pipeline see these frames instead of
            the input (background correction, binning...).
``sig``     one frame-shaped value for the whole scan (mean pattern).
``single``  one value of any shape for the whole scan (a histogram, PCA factors).

Examples
--------
>>> import numpy as np
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class FrameSum(Operator):
...     name = "frame_sum_example"
...     def resolve(self, spec):
...         return {"total": OutputSpec("nav", "float64")}
...     def process(self, frames, ctx):
...         return {"total": frames.reshape(len(frames), -1).sum(axis=1)}
>>> op = FrameSum()
>>> spec = InputSpec(scan_shape=(1, 2), det_shape=(2, 2), dtype=np.dtype("uint8"))
>>> out = op.process(np.ones((2, 2, 2), "uint8"), ChunkContext(spec=spec))
>>> out["total"].tolist()
[4, 4]
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import numpy as np
from diffraflow.schemas.errors import PipelineError

__all__ = [
    "NextPass",
    "LastPass",
    "file_sha256",
    "jsonable",
    "matches_annotation",
    "describe_type",
    "type_hints",
    "OutputKind",
    "InputSpec",
    "OutputSpec",
    "ChunkContext",
    "Operator",
    "param",
    "internal_field",
    "register_operator",
    "get_operator_class",
    "list_operators",
    "build_operator",
    "operator_parameters",
]

OutputKind = Literal["nav", "frames", "sig", "single"]


@dataclass(frozen=True)
class InputSpec:
    """What an operator receives: scan and frame shapes, dtype and metadata.

    Parameters
    ----------
    scan_shape
        ``(scan_y, scan_x)``.
    det_shape
        ``(det_y, det_x)`` of the frames this operator sees (after earlier
        ``frames`` steps).
    dtype
        dtype of those frames.
    attrs
        The validated scan metadata as a dict (``ScanAttrs.model_dump()``),
        or ``None`` for in-memory use.

    Examples
    --------
    >>> InputSpec((2, 3), (60, 60), np.dtype("uint8")).n_frames
    6
    """

    scan_shape: tuple[int, int]
    det_shape: tuple[int, int]
    dtype: np.dtype
    attrs: dict[str, Any] | None = None

    @property
    def n_frames(self) -> int:
        return int(self.scan_shape[0] * self.scan_shape[1])

    def with_frames(self, det_shape: tuple[int, ...], dtype: Any) -> InputSpec:
        """The spec seen by the next step after a ``frames`` output."""
        return dataclasses.replace(self, det_shape=cast("tuple[int, int]", tuple(det_shape)), dtype=np.dtype(dtype))


@dataclass(frozen=True)
class OutputSpec:
    """A declared output of an operator.

    Parameters
    ----------
    kind
        ``nav``, ``frames``, ``sig`` or ``single`` (see the module docs).
    dtype
        dtype of the stored result.
    extra_shape
        Shape per frame (``nav``/``frames``) or of the whole value (``sig``/``single``).
    extra_dims
        One dimension name per axis of ``extra_shape``.
    description
        One line for ``diffraflow operators`` and the result attributes.
    product
        The result product this output belongs to (see ``diffraflow.schemas.results``),
        e.g. ``"crystal_map"``.

    Examples
    --------
    >>> OutputSpec("nav", "float32", (4,), ("quat",)).result_shape((3, 5))
    (3, 5, 4)
    """

    kind: OutputKind
    dtype: Any
    extra_shape: tuple[int, ...] = ()
    extra_dims: tuple[str, ...] = ()
    description: str = ""
    product: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "extra_shape", tuple(int(s) for s in self.extra_shape))
        if not self.extra_dims and self.extra_shape:
            default = ("det_y", "det_x") if self.kind in ("frames", "sig") and len(self.extra_shape) == 2 else None
            dims = default or tuple(f"dim_{i}" for i in range(len(self.extra_shape)))
            object.__setattr__(self, "extra_dims", dims)
        if len(self.extra_dims) != len(self.extra_shape):
            raise PipelineError("OutputSpec", f"extra_dims {self.extra_dims} do not match extra_shape "
                                f"{self.extra_shape}", "give one name per extra axis")

    @property
    def per_frame(self) -> bool:
        return self.kind in ("nav", "frames")

    def result_shape(self, scan_shape: tuple[int, int]) -> tuple[int, ...]:
        """Shape of the stored result for a scan of ``scan_shape``."""
        return (*scan_shape, *self.extra_shape) if self.per_frame else self.extra_shape

    def result_dims(self) -> tuple[str, ...]:
        """Dimension names of the stored result."""
        return ("scan_y", "scan_x", *self.extra_dims) if self.per_frame else self.extra_dims


@dataclass
class ChunkContext:
    """What the engine tells a kernel about the chunk it is processing.

    Attributes
    ----------
    spec
        The operator's input spec.
    constants
        Whatever :meth:`Operator.setup` returned (built once per worker).
    pass_index
        Which pass over the data this is (0-based), for multi-pass operators.
    state
        What :meth:`Operator.finalize` returned after the previous pass.
    flat_start
        Flat scan index of the chunk's first frame.
    scan_index
        ``(n, 2)`` array of the ``(y, x)`` scan positions of the chunk's frames.
    backend
        The step's backend (see :mod:`diffraflow.schemas.backends`): ``numpy``, ``cupy``,
        ``torch-cpu`` or ``torch-cuda``.
    final_pass
        True in the pass whose per-frame outputs are kept (the last one).
    """

    spec: InputSpec
    constants: Any = None
    pass_index: int = 0
    state: Any = None
    flat_start: int = 0
    scan_index: np.ndarray | None = None
    backend: str = "numpy"
    final_pass: bool = True

    @property
    def xp(self):
        """The array library of the backend: numpy, cupy or torch."""
        from diffraflow.schemas.backends import array_module

        return array_module(self.backend)


@dataclass(frozen=True)
class NextPass:
    """Returned by :meth:`Operator.finalize`: run another pass with ``state`` (not the last one).

    Examples
    --------
    >>> NextPass({"v": 1}).state
    {'v': 1}
    """

    state: Any


@dataclass(frozen=True)
class LastPass:
    """Returned by :meth:`Operator.finalize`: run one more pass with ``state``; its per-frame outputs are kept.

    Examples
    --------
    >>> LastPass({"v": 1}).state
    {'v': 1}
    """

    state: Any


def param(default: Any = dataclasses.MISSING, *, doc: str, choices: tuple | None = None, file: bool = False,
          **kwargs: Any):
    """Declare an operator parameter with its documentation.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Scale(Operator):
    ...     name = "scale_example"
    ...     factor: float = param(2.0, doc="multiply every pixel by this")
    >>> operator_parameters(Scale)[0]["doc"]
    'multiply every pixel by this'

    ``file=True`` marks a parameter that names a file the operator loads
    (model weights, a look-up table): its content hash becomes part of the
    operator's :meth:`~Operator.token`, so a changed file is never silently
    reused by a worker's constants cache or by a resumed run.
    """
    metadata = {"doc": doc, "choices": choices, "file": file}
    if isinstance(default, list | dict | set):
        def _copy_default(d: Any = default) -> Any:
            return type(d)(d)

        return field(default_factory=_copy_default, metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def internal_field(default: Any = None):
    """A dataclass field that the engine binds from the input store (:meth:`Operator.bind`).

    Internal fields are not parameters: pipeline files cannot set them, and they
    are left out of :meth:`Operator.params` and :meth:`Operator.token` (the
    input spec, which identifies the cube, is part of every constants cache key).

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class UsesBackground(Operator):
    ...     name = "uses_background_example"
    ...     background: object = internal_field()
    >>> UsesBackground(background=[1, 2]).params(), operator_parameters(UsesBackground)
    ({}, [])
    """
    return field(default=default, compare=False, repr=False, metadata={"internal": True})


@dataclass(frozen=True)
class Operator:
    """Base class of every operator; subclasses are frozen dataclasses.

    Class attributes
    ----------------
    name
        Registry name used in pipeline files.
    backends
        Backends the kernel supports (:mod:`diffraflow.schemas.backends`), in order of preference.
    passes
        Number of passes over the data (the most an iterative operator may
        take: see :meth:`max_passes`).
    max_concurrency
        At most this many chunks of this step run at once in one process
        (``1`` for kernels that are themselves parallel, such as numba
        ``parallel=True`` code); ``None``: no limit.
    expensive
        Recomputing the operator's frames is costly (a neural network): when
        later passes need them, the engine stores them once instead.
    device_state
        Keep partials and state on the backend's device and run
        :meth:`finalize` on a worker with that backend, instead of moving
        everything to host memory in the driver after each chunk.
    host_frames
        Receive frames read from the source as NumPy arrays whatever the
        backend, instead of having the engine convert or copy them first:
        for kernels that move data themselves, overlapping their copies with
        compute (pinned buffers, streams). Frames made by an earlier GPU step
        still arrive on the device.
    """

    name: ClassVar[str] = ""
    backends: ClassVar[tuple[str, ...]] = ("numpy",)
    passes: ClassVar[int] = 1
    max_concurrency: ClassVar[int | None] = None
    expensive: ClassVar[bool] = False
    device_state: ClassVar[bool] = False
    host_frames: ClassVar[bool] = False

    def max_passes(self) -> int:
        """Most passes this operator may take (default :attr:`passes`; iterative operators: their ``max_iter``).

        Examples
        --------
        >>> Operator().max_passes()
        1
        """
        return int(self.passes)

    def bind(self, variables: Mapping[str, Any]) -> Operator:
        """Take what the operator needs from the input store's variables; return the bound operator.

        The engine calls this once, before resolution, with the source's
        variables (static background, per-point projection centre, ground
        truth; lazily opened arrays). Default: nothing to bind.

        Examples
        --------
        >>> op = Operator(); op.bind({"static_background": None}) is op
        True
        """
        return self

    # -- declared behaviour -------------------------------------------------
    def resolve(self, spec: InputSpec) -> dict[str, OutputSpec]:
        """Declared outputs for ``spec``; must not touch data. Raise PipelineError if incompatible."""
        raise NotImplementedError(f"{type(self).__name__} must define resolve()")

    def setup(self, spec: InputSpec, backend: str = "numpy") -> Any:
        """Build large constants once per worker (default: nothing)."""
        return None

    def process(self, frames: Any, ctx: ChunkContext) -> dict[str, Any]:
        """The per-chunk kernel over ``frames`` of shape ``(n, det_y, det_x)``."""
        raise NotImplementedError(f"{type(self).__name__} must define process()")

    def merge(self, name: str, left: Any, right: Any) -> Any:
        """Combine two partial values of a ``sig``/``single`` output (default: sum)."""
        return left + right

    def finalize(self, partials: dict[str, Any], ctx: ChunkContext) -> dict[str, Any]:
        """Turn merged partials of a pass into final outputs or next-pass state (default: identity).

        Runs once per pass in the driver process, where ``ctx.constants`` is
        ``None`` (constants live on workers).
        """
        return partials

    def warm_up(self, spec: InputSpec, backend: str, notify: Callable[[str], None]) -> None:
        """Compile just-in-time kernels before the run is timed (default: nothing to do).

        The engine calls this once in the driver process before its clock
        starts, so reported rates leave compile time out and workers load the
        compiled kernels from the on-disk cache. An operator whose kernels are
        not cached yet calls ``notify`` with one line (for example
        ``"compiling Hough indexing kernels (first run only, about 2 min)"``)
        *before* it starts compiling, so a user never waits without a word.

        Examples
        --------
        >>> Operator().warm_up(InputSpec((1, 1), (2, 2), np.dtype("uint8")), "numpy", print)
        """
        return None

    def result_attrs(self, spec: InputSpec) -> dict[str, Any]:
        """JSON attributes stored with this step's results (default: none).

        They go into the step's group attributes and its entry in the result
        store's ``results`` record, e.g. ``{"phases": [...]}`` for a
        ``crystal_map`` product or ``{"method": "pca"}`` for a decomposition
        (see ``diffraflow.schemas.results``).

        Examples
        --------
        >>> Operator().result_attrs(InputSpec((1, 1), (2, 2), np.dtype("uint8")))
        {}
        """
        return {}

    # -- identity ------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Parameter values as a JSON-friendly dict.

        Examples
        --------
        >>> Operator().params()
        {}
        """
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not f.metadata.get("internal")}

    def token(self) -> str:
        """A stable hash of the operator's name and parameters (cache key for constants).

        Examples
        --------
        >>> len(Operator().token())
        16
        """
        text = json.dumps({"op": self.name or type(self).__name__, "params": self.params(),
                           "files": self.file_hashes()}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def file_hashes(self) -> dict[str, str]:
        """Content hashes of the files named by ``file=True`` parameters (part of :meth:`token`).

        Examples
        --------
        >>> Operator().file_hashes()
        {}
        """
        hashes = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("file") and getattr(self, f.name):
                hashes[f.name] = file_sha256(str(getattr(self, f.name)))
        return hashes


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    """SHA-256 of a file's content (or a directory's), cached by path, size and modification time.

    A directory (a model artefact, say) hashes its ``manifest.json`` when it
    has one (the manifest lists every file's own hash), else every file in
    it, in path order, names included. A missing path hashes to
    ``"missing"`` (the operator's ``resolve`` reports it with a proper error).

    Examples
    --------
    >>> file_sha256("/no/such/file")
    'missing'
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()); _ = (folder / "w.bin").write_bytes(b"1")
    >>> len(file_sha256(str(folder)))
    64
    """
    import os
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        manifest = target / "manifest.json"
        if manifest.is_file():
            return file_sha256(str(manifest))
        digest = hashlib.sha256()
        for item in sorted(p for p in target.rglob("*") if p.is_file()):
            digest.update(item.relative_to(target).as_posix().encode() + b"\0")
            digest.update(file_sha256(str(item)).encode())
        return digest.hexdigest()
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def jsonable(value: Any) -> Any:
    """A JSON-friendly form of a parameter value (arrays and tuples as lists, numpy scalars as numbers).

    Examples
    --------
    >>> jsonable((np.float32(1.5), 2))
    [1.5, 2]
    """
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


_REGISTRY: dict[str, type[Operator]] = {}

#: Sub-packages and modules of ``operators`` that hold no operators; skipped
#: when the registry imports the package on first access.
_NOT_OPERATOR_MODULES = ("diffraflow.operators.base", "diffraflow.operators.crystallography", "diffraflow.operators.simulate")


def register_operator(cls: type[Operator]) -> type[Operator]:
    """Class decorator adding an operator to the registry under ``cls.name``.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @register_operator
    ... @dataclass(frozen=True)
    ... class Noop(Operator):
    ...     name = "noop_example"
    >>> get_operator_class("noop_example") is Noop
    True
    """
    from diffraflow.schemas.backends import BACKENDS

    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute 'name'")
    unknown = [b for b in cls.backends if b not in BACKENDS]
    if unknown:
        raise TypeError(f"{cls.__name__}.backends names unknown backends {unknown}; use {list(BACKENDS)}")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"operator name {cls.name!r} already used by {existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


_LOADED = False


def _load_operator_modules() -> None:
    """Import every module of the ``operators`` package once, so each registers its operators.

    Operator modules must keep GPU and other optional imports inside functions,
    so importing them is cheap and never needs CUDA.
    """
    global _LOADED
    if _LOADED:
        return
    import importlib
    import pkgutil

    import diffraflow.operators as operators
    for info in pkgutil.walk_packages(operators.__path__, prefix="diffraflow.operators."):
        if info.name.startswith(_NOT_OPERATOR_MODULES) or info.name.rsplit(".", 1)[-1].startswith(("_", "gpu")):
            continue
        importlib.import_module(info.name)
    _LOADED = True


def list_operators() -> dict[str, type[Operator]]:
    """All registered operators by name.

    Examples
    --------
    >>> isinstance(list_operators(), dict)
    True
    """
    _load_operator_modules()
    return dict(sorted(_REGISTRY.items()))


def get_operator_class(name: str, where: str = "pipeline") -> type[Operator]:
    """The operator class registered as ``name``; PipelineError naming the closest name otherwise.

    Examples
    --------
    >>> get_operator_class("definitely_not_an_operator")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: pipeline: unknown operator 'definitely_not_an_operator' (fix: run 'diffraflow operators' to list operators)
    """
    operators = list_operators()
    if name in operators:
        return operators[name]
    close = difflib.get_close_matches(name, list(operators), n=1)
    fix = f"did you mean {close[0]!r}?" if close else "run 'diffraflow operators' to list operators"
    raise PipelineError(where, f"unknown operator {name!r}", fix)


def operator_parameters(cls: type[Operator]) -> list[dict[str, Any]]:
    """Declared parameters of an operator class: name, type, default, doc, choices.

    Examples
    --------
    >>> operator_parameters(Operator)
    []
    """
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue  # bound by the engine from the store (see internal_field), not set by users
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append({
            "name": f.name,
            "type": f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)),
            "default": None if default is dataclasses.MISSING else default,
            "required": default is dataclasses.MISSING,
            "doc": f.metadata.get("doc", ""),
            "choices": f.metadata.get("choices"),
        })
    return out


def build_operator(name: str, params: dict[str, Any] | None = None, where: str = "pipeline") -> Operator:
    """Instantiate a registered operator from a name and parameter mapping.

    Unknown or missing parameters raise a PipelineError naming the closest
    valid parameter.

    Examples
    --------
    >>> build_operator("definitely_not_an_operator")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: pipeline: unknown operator 'definitely_not_an_operator' (fix: run 'diffraflow operators' to list operators)
    """
    cls = get_operator_class(name, where)
    params = dict(params or {})
    declared = {p["name"]: p for p in operator_parameters(cls)}
    for key in params:
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"valid parameters: {', '.join(declared) or 'none'}"
            raise PipelineError(f"{where}: {name}", f"unknown parameter {key!r}", fix)
    for key, spec in declared.items():
        if spec["required"] and key not in params:
            raise PipelineError(f"{where}: {name}", f"missing required parameter {key!r}",
                                f"add '{key}: ...' ({spec['doc']})")
        if spec["choices"] and key in params and params[key] not in spec["choices"]:
            raise PipelineError(f"{where}: {name}.{key}", f"{params[key]!r} is not one of {list(spec['choices'])}",
                                f"use one of {', '.join(map(str, spec['choices']))}")
    hints = type_hints(cls)
    for key, value in params.items():
        expected = hints.get(key)
        if expected is not None and not matches_annotation(value, expected):
            raise PipelineError(f"{where}: {name}.{key}", f"expected {describe_type(expected)}, got {value!r}",
                                f"give {key} as {describe_type(expected)} ({declared[key]['doc']})")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, PipelineError):
            raise
        raise PipelineError(f"{where}: {name}", str(exc), "check the parameter values") from None


def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (empty when one cannot be evaluated).

    Examples
    --------
    >>> type_hints(InputSpec)["scan_shape"]
    tuple[int, int]
    """
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be evaluated is simply not checked
        return {}


def matches_annotation(value: Any, expected: Any) -> bool:
    """True when a parameter value (as parsed from YAML/JSON or given in Python) fits its annotation.

    Examples
    --------
    >>> matches_annotation(8, float | None), matches_annotation("eight", float | None)
    (True, False)"""
    import math
    import types
    import typing

    if expected is Any or expected is object:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(matches_annotation(value, arg) for arg in typing.get_args(expected))
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool | np.bool_)
    if expected is int:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool) \
            and math.isfinite(float(value))
    if expected is str:
        return isinstance(value, str)
    container = origin or expected
    if container in (list, tuple, typing.Sequence):
        if not isinstance(value, list | tuple | np.ndarray):
            return False
        args = [a for a in typing.get_args(expected) if a is not Ellipsis]
        return len(args) != 1 or all(matches_annotation(v, args[0]) for v in value)
    if container is dict:
        return isinstance(value, dict)
    return True  # other annotations (objects, arrays) are the operator's to check


def describe_type(expected: Any) -> str:
    """Words for an annotation in error messages.

    Examples
    --------
    >>> describe_type(float | None)
    'a finite number or null'
    """
    import types
    import typing

    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(expected))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(expected)))
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
             type(None): "null"}
    if expected in names:
        return names[expected]
    return "a list" if (origin or expected) in (list, tuple) else getattr(expected, "__name__", str(expected))

"""Pipelines: a linear chain of operator steps, resolved before any data moves.

A :class:`Pipeline` is a list of :class:`Step` (an operator, a unique name,
a backend and which outputs to save). ``frames`` outputs replace the frames
seen by later steps. :meth:`Pipeline.resolve` runs every operator's
``resolve`` on the chained :class:`~diffraflow.operators.base.InputSpec` and builds the
**schedule** of rounds (passes over the data); it reads no data.

Schedule
--------
A step starts once the last earlier step with a ``frames`` output (its
*provider*) has finished; it then runs one pass per round until it is done
(a fixed number of passes, or until an iterative operator converges). The
engine builds the rounds one at a time (:mod:`diffraflow.flow.schedule`). In each round
one task per chunk runs the whole chain on a single read of the chunk; a
finished provider's frames are recomputed, or read back when the step is
*materialised* (``materialize: true``, or automatically for expensive
operators whose frames later passes need). In every pass but its last,
everything a step's ``process`` returns is a partial reduction (merged with
``merge``, then ``finalize`` gives the next pass's state).

Pipelines are run by :func:`diffraflow.flow.engine.run_pipeline`; this module only
describes and resolves them.

Examples
--------
>>> import numpy as np
>>> from dataclasses import dataclass
>>> from diffraflow.operators.base import Operator, OutputSpec
>>> @dataclass(frozen=True)
... class Total(Operator):
...     name = "total_example"
...     def resolve(self, spec):
...         return {"total": OutputSpec("nav", "float64")}
...     def process(self, frames, ctx):
...         return {"total": frames.reshape(len(frames), -1).sum(axis=1)}
>>> plan = Pipeline([Total()]).resolve(InputSpec((2, 3), (4, 4), np.dtype("uint8")))
>>> plan.steps[0].outputs["total"].result_shape((2, 3))
(2, 3)
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffraflow.operators.base import InputSpec, Operator, OutputSpec, build_operator
from diffraflow.schemas.backends import Backend, get_backend, require_backend
from diffraflow.schemas.errors import PipelineError

__all__ = ["Step", "Pipeline", "ResolvedPipeline", "ResolvedStep", "load_pipeline"]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Step:
    """One step of a pipeline.

    Parameters
    ----------
    op
        The operator.
    name
        Unique step name (default: the operator's name); results are stored
        under ``<name>/<output>``.
    backend
        Backend of the kernel; default the first of ``op.backends``
        (``numpy`` when the operator supports it).
    save
        Output names to store; ``None`` stores every output.
    materialize
        For a step with a ``frames`` output: ``True`` stores its final frames
        once so that later passes read them instead of recomputing them;
        ``None`` (default) does so when the operator is expensive and later
        passes need its frames; ``False`` never.

    Examples
    --------
    >>> from diffraflow.operators.base import Operator
    >>> Step(Operator(), name="s").key("total")
    's/total'
    """

    op: Operator
    name: str = ""
    backend: str = ""
    save: tuple[str, ...] | None = None
    materialize: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.op, Operator):
            raise PipelineError("pipeline", f"step {self.name or self.op!r} is not an Operator",
                                "pass operator instances, e.g. Pipeline([FrameSum()])")
        if not self.name:
            object.__setattr__(self, "name", self.op.name or type(self.op).__name__)
        if not self.backend:
            backends = tuple(self.op.backends)
            object.__setattr__(self, "backend", "numpy" if "numpy" in backends else backends[0])
        if self.save is not None:
            object.__setattr__(self, "save", tuple(self.save))

    def key(self, output: str) -> str:
        """The result name of ``output``: ``<step>/<output>``."""
        return f"{self.name}/{output}"

    def to_dict(self) -> dict[str, Any]:
        """JSON record of the step (pipeline-file form)."""
        record: dict[str, Any] = {"op": self.op.name, "name": self.name, "params": self.op.params(),
                                  "backend": self.backend}
        if self.save is not None:
            record["save"] = list(self.save)
        if self.materialize is not None:
            record["materialize"] = self.materialize
        return record


@dataclass
class ResolvedStep:
    """A step with its input spec, declared outputs and place in the schedule."""

    step: Step
    index: int
    spec: InputSpec
    outputs: dict[str, OutputSpec]
    frames_output: str | None
    provider: str | None = None  # the earlier step whose frames this one sees

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def op(self) -> Operator:
        return self.step.op

    @property
    def passes(self) -> int:
        """The most passes the step may take."""
        return int(self.step.op.max_passes())

    @property
    def backend(self) -> Backend:
        """The step's compute backend."""
        return get_backend(self.step.backend)

    @property
    def per_frame(self) -> dict[str, OutputSpec]:
        return {k: v for k, v in self.outputs.items() if v.per_frame}

    @property
    def reduced(self) -> dict[str, OutputSpec]:
        return {k: v for k, v in self.outputs.items() if not v.per_frame}

    def saved(self, name: str) -> bool:
        return self.step.save is None or name in self.step.save

    def setup_key(self) -> str:
        """Cache key of this step's constants: operator token (with file hashes), input spec and backend."""
        text = json.dumps([self.op.token(), list(self.spec.scan_shape), list(self.spec.det_shape),
                           self.spec.dtype.str, self.step.backend], default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ResolvedPipeline:
    """A pipeline resolved against an input spec: specs, outputs and the rounds it may take.

    Attributes
    ----------
    steps
        One :class:`ResolvedStep` per step.
    n_rounds
        Passes over the data the pipeline takes at most (exactly, without
        iterative steps); the engine schedules the actual rounds
        (:class:`diffraflow.flow.schedule.Schedule`).
    """

    pipeline: Pipeline
    input: InputSpec
    steps: list[ResolvedStep]
    n_rounds: int = field(default=1)

    def step(self, name: str) -> ResolvedStep:
        """The resolved step called ``name``."""
        return next(s for s in self.steps if s.name == name)

    def needed_later(self, step: ResolvedStep) -> bool:
        """True when the frames of ``step`` are needed after its final pass (a later step takes more passes)."""
        return step.frames_output is not None and any(s.passes > 1 for s in self.steps[step.index + 1:])

    def result_outputs(self) -> dict[str, tuple[ResolvedStep, str, OutputSpec]]:
        """Saved outputs by result name ``<step>/<output>``."""
        return {s.step.key(name): (s, name, out) for s in self.steps for name, out in s.outputs.items()
                if s.saved(name)}

    @property
    def gpu(self) -> bool:
        """True when some step runs on a GPU backend."""
        return any(s.backend.gpu for s in self.steps)


class Pipeline:
    """A linear chain of operators.

    Parameters
    ----------
    steps
        Operators, :class:`Step` objects, or ``(name, operator)`` pairs.
    chunk_frames
        Frames per chunk (task and result chunk); ``None`` follows the input
        store's chunks.

    Examples
    --------
    >>> from diffraflow.operators.base import Operator
    >>> Pipeline([("a", Operator()), ("b", Operator())]).names
    ['a', 'b']
    >>> Pipeline([("a", Operator()), ("a", Operator())])
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: pipeline: step name 'a' is used twice (fix: give each step a unique 'name')
    """

    #: Set only on pipelines made by ``diffraflow.flow.engine.bind_pipeline``: the pipeline as
    #: written, whose fingerprint the bound one keeps (annotation only, no default).
    _identity: Pipeline

    def __init__(self, steps: Sequence[Operator | Step | tuple[str, Operator]], chunk_frames: int | None = None) -> None:
        built: list[Step] = []
        for item in steps:
            if isinstance(item, Step):
                built.append(item)
            elif isinstance(item, tuple):
                built.append(Step(item[1], name=item[0]))
            else:
                built.append(Step(item))
        if not built:
            raise PipelineError("pipeline", "no steps", "add at least one step")
        seen: set[str] = set()
        for step in built:
            if step.name in seen:
                raise PipelineError("pipeline", f"step name {step.name!r} is used twice",
                                    "give each step a unique 'name'")
            if not _NAME.match(step.name):
                raise PipelineError("pipeline", f"step name {step.name!r} is not a plain name",
                                    "use letters, digits, '_', '-' or '.' (it names a Zarr group)")
            seen.add(step.name)
        self.steps: tuple[Step, ...] = tuple(built)
        self.chunk_frames = chunk_frames

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def __repr__(self) -> str:
        return f"Pipeline({[f'{s.name}={s.op.name}' for s in self.steps]})"

    # -- construction from files -------------------------------------------
    @classmethod
    def from_dict(cls, record: dict[str, Any], where: str = "pipeline") -> Pipeline:
        """Build from a pipeline-file mapping (validated against the JSON Schema first).

        Examples
        --------
        >>> Pipeline.from_dict({"pipeline": 1, "steps": [{"op": "no_such_op"}]})
        Traceback (most recent call last):
        ...
        diffraflow.schemas.errors.PipelineError: pipeline: steps[0]: unknown operator 'no_such_op' (fix: run 'diffraflow operators' to list operators)
        """
        from diffraflow.schemas.pipeline import validate_pipeline_record

        record = validate_pipeline_record(record, where=where)
        steps = []
        for i, item in enumerate(record["steps"]):
            here = f"{where}: steps[{i}]" + (f" ({item['name']})" if "name" in item else "")
            op = build_operator(item["op"], item.get("params") or {}, where=here)
            save = item.get("save", True)
            save_names = None if save is True else (() if save is False else tuple(save))
            steps.append(Step(op, name=item.get("name", ""), backend=item.get("backend", ""), save=save_names,
                              materialize=item.get("materialize")))
        chunk_frames = (record.get("output") or {}).get("chunk_frames")
        return cls(steps, chunk_frames=chunk_frames)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Pipeline:
        """Load a YAML (or JSON) pipeline file; one-line PipelineError on any problem.

        Examples
        --------
        >>> Pipeline.from_file("/no/such/pipeline.yaml")
        Traceback (most recent call last):
        ...
        diffraflow.schemas.errors.PipelineError: /no/such/pipeline.yaml: no such file (fix: check the pipeline file path)
        """
        from diffraflow.schemas.pipeline import read_pipeline_file

        return cls.from_dict(read_pipeline_file(path), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The pipeline-file record of this pipeline.

        Examples
        --------
        >>> from diffraflow.operators.base import Operator
        >>> Pipeline([("a", Operator())]).to_dict()["steps"][0]["name"]
        'a'
        """
        record: dict[str, Any] = {"pipeline": 1, "steps": [s.to_dict() for s in self.steps]}
        if self.chunk_frames:
            record["output"] = {"chunk_frames": self.chunk_frames}
        return record

    def fingerprint(self) -> str:
        """Hash of the steps (operators, parameters, content of the files they load, backends, saved outputs)."""
        text = json.dumps([{**s.to_dict(), "token": s.op.token()} for s in self.steps], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- resolution ----------------------------------------------------------
    def resolve(self, spec: InputSpec, check_backends: bool = True) -> ResolvedPipeline:
        """Resolve every step on the chained input spec and build the schedule.

        Raises
        ------
        PipelineError
            An operator refuses its input, declares bad outputs, or a saved
            output name is unknown.
        BackendUnavailableError
            A GPU backend was asked for and CUDA is absent.

        Examples
        --------
        >>> import numpy as np
        >>> from diffraflow.operators.base import Operator
        >>> Pipeline([Operator()]).resolve(InputSpec((1, 1), (2, 2), np.dtype("u1")))
        Traceback (most recent call last):
        ...
        diffraflow.schemas.errors.PipelineError: pipeline: step 'Operator': resolve() is not defined (fix: implement Operator.resolve)
        """
        resolved: list[ResolvedStep] = []
        provider: ResolvedStep | None = None
        for index, step in enumerate(self.steps):
            where = f"pipeline: step {step.name!r}"
            get_backend(step.backend, where)
            if step.backend not in step.op.backends:
                raise PipelineError(where, f"backend {step.backend!r} is not supported by {step.op.name}",
                                    f"use one of {', '.join(step.op.backends)}")
            if check_backends:
                require_backend(step.backend, where)
            if int(step.op.max_passes()) < 1:
                raise PipelineError(where, f"passes must be >= 1, got {step.op.max_passes()}", "fix the operator")
            try:
                outputs = step.op.resolve(spec)
            except NotImplementedError:
                raise PipelineError(where, "resolve() is not defined",
                                    f"implement {type(step.op).__name__}.resolve") from None
            except PipelineError:
                raise
            except (ValueError, TypeError, KeyError) as exc:
                raise PipelineError(where, f"cannot resolve on input {spec.det_shape} {spec.dtype}: {exc}",
                                    "check the step's parameters against the input") from None
            outputs = _check_outputs(dict(outputs), where)
            _check_products(step.op, spec, outputs, where)
            frames = [k for k, v in outputs.items() if v.kind == "frames"]
            if len(frames) > 1:
                raise PipelineError(where, f"declares {len(frames)} frames outputs {frames}",
                                    "declare at most one 'frames' output per operator")
            if step.save is not None:
                for name in step.save:
                    if name not in outputs:
                        close = difflib.get_close_matches(name, list(outputs), n=1)
                        fix = f"did you mean {close[0]!r}?" if close else f"outputs are: {', '.join(outputs)}"
                        raise PipelineError(where, f"save names unknown output {name!r}", fix)
            if step.materialize and not frames:
                raise PipelineError(where, "materialize is set but the step has no frames output",
                                    "remove 'materialize' from this step")
            rs = ResolvedStep(step, index, spec, outputs, frames_output=frames[0] if frames else None,
                              provider=provider.name if provider else None)
            resolved.append(rs)
            if rs.frames_output:
                out = outputs[rs.frames_output]
                spec = spec.with_frames(out.extra_shape, out.dtype)
                provider = rs
        return ResolvedPipeline(self, resolved[0].spec, resolved, _max_rounds(resolved))


def _check_outputs(outputs: dict[str, Any], where: str) -> dict[str, OutputSpec]:
    if not outputs:
        raise PipelineError(where, "declares no outputs", "return at least one OutputSpec from resolve()")
    for name, out in outputs.items():
        if not isinstance(out, OutputSpec):
            raise PipelineError(where, f"output {name!r} is {type(out).__name__}, not an OutputSpec",
                                "return OutputSpec objects from resolve()")
        if not _NAME.match(name) or "/" in name:
            raise PipelineError(where, f"output name {name!r} is not a plain name", "use letters, digits and '_'")
        if out.kind == "frames" and len(out.extra_shape) != 2:
            raise PipelineError(where, f"frames output {name!r} has extra_shape {out.extra_shape}",
                                "a frames output must be 2-d (det_y, det_x)")
    return outputs


def _check_products(op: Operator, spec: InputSpec, outputs: dict[str, OutputSpec], where: str) -> None:
    """Every result product an operator declares must be complete: its variables and its attributes.

    Checked at resolve time so that an operator which forgets, say, the
    ``method`` attribute of a ``decomposition`` fails before any data is read,
    instead of writing a store that ``validate`` and ``export`` later refuse.
    """
    from diffraflow.schemas.results import PRODUCTS

    declared = sorted({out.product for out in outputs.values() if out.product})
    if not declared:
        return
    attrs = dict(op.result_attrs(spec) or {})
    for product in declared:
        if product not in PRODUCTS:
            raise PipelineError(where, f"declares unknown result product {product!r}",
                                f"use one of {', '.join(sorted(PRODUCTS))}, or no product")
        schema = PRODUCTS[product]
        missing = [name for name in schema.attributes if name not in attrs]
        if missing:
            raise PipelineError(where, f"declares product {product!r} but result_attrs() lacks {missing}",
                                f"return {', '.join(map(repr, missing))} from {type(op).__name__}.result_attrs()")
        for name, var in schema.variables.items():
            out = outputs.get(name)
            if out is None or out.product != product:
                if var.required:
                    raise PipelineError(where, f"declares product {product!r} without its variable {name!r}",
                                        f"declare output {name!r} with product={product!r}")
                continue
            if out.result_dims() != var.dims or out.dtype.kind not in var.kind:
                raise PipelineError(where, f"output {name!r} of product {product!r} has dims "
                                    f"{list(out.result_dims())} and dtype {out.dtype}; the product needs dims "
                                    f"{list(var.dims)} of kind {var.kind!r}", "match schemas.results.PRODUCTS")


def _max_rounds(steps: list[ResolvedStep]) -> int:
    # A step starts in its provider's final round (the provider's final frames exist there) and runs
    # `passes` rounds; exact for fixed passes, an upper bound for iterative steps.
    last: dict[str, int] = {}
    for step in steps:
        start = last[step.provider] if step.provider else 0
        last[step.name] = start + step.passes - 1
    return max(last.values()) + 1


def load_pipeline(path: str | os.PathLike[str] | dict[str, Any] | Pipeline) -> Pipeline:
    """A pipeline from a file path, a mapping, or a Pipeline (returned as is).

    Examples
    --------
    >>> load_pipeline({"pipeline": 1, "steps": []})
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: pipeline: steps: [] should be non-empty (fix: list at least one step: '- op: NAME')
    """
    if isinstance(path, Pipeline):
        return path
    if isinstance(path, dict):
        return Pipeline.from_dict(path)
    return Pipeline.from_file(Path(path))

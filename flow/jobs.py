"""The job contract: non-map work (training a model) over a source plus its ground truth.

An operator maps chunks of frames to results; a **job** instead makes passes
(epochs) over the frames of a source *with labels* (ground-truth variables of
the cube) and produces a **versioned model artefact**
(:mod:`diffraflow.operators.learning.artefact`). A job is a small dataclass,
in the manner of :class:`~diffraflow.operators.base.Operator`:

* its **parameters** are dataclass fields declared with
  :func:`~diffraflow.operators.base.param` (documented, type-checked, with
  choices), built from a config mapping by :meth:`Job.from_config`;
* :meth:`Job.variables` names the ground-truth variables it reads and
  :meth:`Job.check` validates them against the cube's metadata before any
  frame is read;
* :meth:`Job.setup` builds the model and optimiser (the runner seeds every
  RNG first), :meth:`Job.run` does the work epoch by epoch through
  :meth:`JobContext.epochs` (the default calls :meth:`Job.run_epoch`);
* :meth:`Job.state_dict` / :meth:`Job.load_state_dict` capture everything
  that changes while training (weights, optimiser moments), so that a run
  killed after any epoch resumes to the same bytes;
* :meth:`Job.artefact` returns the weights and the model record a loader
  needs; :attr:`Job.produces` names the artefact's kind.

Determinism: the runner reseeds Python's :mod:`random`, NumPy and torch from
``(seed, epoch)`` at the start of every epoch (:func:`epoch_seed`), and the
data order of an epoch depends on ``(seed, epoch)`` only, so resuming at an
epoch boundary needs no RNG state in the checkpoint.

The runner is :func:`diffraflow.flow.training.runner.run_job` (the command
``diffraflow train``); ``run_job``, ``load_artefact`` and ``artefact_hash``
can also be imported from here.

Examples
--------
>>> from dataclasses import dataclass
>>> @register_job
... @dataclass(eq=False)
... class CountFrames(Job):
...     name = "count_frames_example"
...     produces = "frame_count"
...     scale: float = param(1.0, doc="multiply the count by this")
...     def setup(self, ctx):
...         self.total = 0.0
...     def run_epoch(self, ctx, epoch):
...         for batch in ctx.data.batches("train", epoch):
...             self.total += self.scale * len(batch.frames)
...         return {"frames": self.total}
...     def state_dict(self):
...         return {"total": self.total}
...     def load_state_dict(self, state):
...         self.total = float(state["total"])
...     def artefact(self):
...         return ArtefactContent(weights={}, model={"total": self.total})
>>> job = build_job("count_frames_example", {"scale": 2.0})
>>> job.params()
{'scale': 2.0}
>>> build_job("count_frames_example", {"scael": 2.0})
Traceback (most recent call last):
...
diffraflow.schemas.errors.PipelineError: job: count_frames_example: unknown parameter 'scael' (fix: did you mean 'scale'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from diffraflow.operators.base import (
    describe_type,
    jsonable,
    matches_annotation,
    operator_parameters,
    param,
    type_hints,
)
from diffraflow.schemas.errors import PipelineError

__all__ = [
    "Job",
    "JobContext",
    "ArtefactContent",
    "param",
    "register_job",
    "get_job_class",
    "list_jobs",
    "build_job",
    "job_parameters",
    "epoch_seed",
    "derive_seed",
    "seed_everything",
    "STREAM_INIT",
    "STREAM_EPOCH",
    "STREAM_SHUFFLE",
]

#: Independent random streams derived from one seed (see :func:`derive_seed`).
STREAM_INIT, STREAM_EPOCH, STREAM_SHUFFLE = 0, 1, 2


def derive_seed(seed: int, *keys: int, bits: int = 32) -> int:
    """A seed for one purpose (``keys``: a stream and an epoch) derived from the job's ``seed``.

    NumPy's ``SeedSequence`` mixes the keys, so neighbouring epochs get
    unrelated streams.

    Examples
    --------
    >>> derive_seed(0, STREAM_EPOCH, 3) == derive_seed(0, STREAM_EPOCH, 3) != derive_seed(0, STREAM_EPOCH, 4)
    True
    """
    dtype = np.uint64 if bits == 64 else np.uint32
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype)[0])


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed every RNG gets at the start of ``epoch`` (0-based).

    Examples
    --------
    >>> epoch_seed(0, 0) == derive_seed(0, STREAM_EPOCH, 0)
    True
    """
    return derive_seed(seed, STREAM_EPOCH, epoch)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    Examples
    --------
    >>> seed_everything(3); a = random.random(); seed_everything(3); a == random.random()
    True
    """
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily, when CUDA initialises)


@dataclass(frozen=True)
class ArtefactContent:
    """What a job hands to the artefact writer.

    Attributes
    ----------
    weights
        Tensor name -> array (NumPy or CPU torch tensor); stored as safetensors.
    model
        JSON record a loader needs to rebuild the model (architecture, input
        shape, classes...), stored in ``artefact.json``.

    Examples
    --------
    >>> ArtefactContent({}, {"architecture": "pattern_cnn"}).model["architecture"]
    'pattern_cnn'
    """

    weights: Mapping[str, Any]
    model: Mapping[str, Any]


@dataclass
class JobContext:
    """What the runner gives :meth:`Job.setup` and :meth:`Job.run`.

    Attributes
    ----------
    data
        The labelled frames (:class:`diffraflow.flow.training.data.LabelledFrames`):
        ``data.batches("train", epoch)`` and ``data.batches("holdout")``.
    seed
        The job's seed.
    epochs_total
        Epochs the job runs in all.
    device
        ``cpu`` or ``cuda`` (a torch device name).
    start_epoch
        First epoch still to run (0, or where a checkpoint left off).
    history
        Metrics of the finished epochs (one record each, ``epoch`` 1-based).
    where
        Name used in error messages.
    on_epoch_end
        Called by the runner with ``(epoch, record)`` after each epoch (checkpoint, log).
    on_progress
        Called with a number of frames as training advances (progress bar).

    Examples
    --------
    >>> ctx = JobContext(data=None, seed=0, epochs_total=2)
    >>> for epoch in ctx.epochs():
    ...     ctx.log(loss=1.0 / (epoch + 1))
    >>> ctx.history
    [{'epoch': 1, 'loss': 1.0}, {'epoch': 2, 'loss': 0.5}]
    """

    data: Any
    seed: int
    epochs_total: int
    device: str = "cpu"
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    where: str = "job"
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None
    on_progress: Callable[[int], None] | None = None
    _pending: dict[str, Any] = field(default_factory=dict, repr=False)

    def epochs(self) -> Iterator[int]:
        """The epochs still to run (0-based); each ends with the runner's checkpoint.

        Every RNG is reseeded from ``(seed, epoch)`` before the epoch's body
        runs. The body's metrics (:meth:`log`) are recorded when it finishes;
        an epoch whose body raises is neither recorded nor checkpointed.
        """
        for epoch in range(self.start_epoch, self.epochs_total):
            seed_everything(epoch_seed(self.seed, epoch))
            self._pending = {}
            yield epoch
            record = {"epoch": epoch + 1, **_jsonable_metrics(self._pending)}
            self.history.append(record)
            self.start_epoch = epoch + 1
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, record)

    def log(self, **metrics: Any) -> None:
        """Record metrics of the current epoch (numbers; later calls add or replace keys)."""
        self._pending.update(metrics)

    def advance(self, frames: int) -> None:
        """Tell the progress bar that ``frames`` more frames were trained on."""
        if self.on_progress is not None:
            self.on_progress(int(frames))

    def rng(self, epoch: int, stream: int = STREAM_EPOCH) -> np.random.Generator:
        """A NumPy generator for ``epoch`` of a stream, independent of every other (seed, stream, epoch).

        Examples
        --------
        >>> ctx = JobContext(data=None, seed=1, epochs_total=1)
        >>> int(ctx.rng(0).integers(100)) == int(ctx.rng(0).integers(100))
        True
        """
        return np.random.default_rng(np.random.SeedSequence([int(self.seed), int(stream), int(epoch)]))

    @property
    def finished(self) -> bool:
        """True when every epoch has run."""
        return self.start_epoch >= self.epochs_total


def _jsonable_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if type(value).__module__.startswith("torch"):
            value = value.detach().cpu().numpy()
        value = jsonable(value)
        out[str(key)] = float(value) if isinstance(value, float) else value
    return out


@dataclass(eq=False)
class Job:
    """Base class of every job; subclasses are dataclasses whose fields are the parameters.

    Class attributes
    ----------------
    name
        Registry name used in job config files (``job: NAME``).
    produces
        Kind of the artefact the job writes (``pattern_classifier``...);
        operators check it when they load one.
    devices
        Torch devices the job can train on (``cpu``, ``cuda``).
    """

    name: ClassVar[str] = ""
    produces: ClassVar[str] = ""
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_config(cls, params: Mapping[str, Any] | None = None, where: str = "job") -> Job:
        """Build the job from its ``params`` mapping, checking names, required values, choices and types.

        Examples
        --------
        >>> Job.from_config({}).params()
        {}
        """
        params = dict(params or {})
        label = f"{where}: {cls.name or cls.__name__}"
        declared = {p["name"]: p for p in job_parameters(cls)}
        for key in params:
            if key not in declared:
                close = difflib.get_close_matches(str(key), list(declared), n=1)
                fix = f"did you mean {close[0]!r}?" if close else f"valid parameters: {', '.join(declared) or 'none'}"
                raise PipelineError(label, f"unknown parameter {key!r}", fix)
        hints = type_hints(cls)
        for key, spec in declared.items():
            if spec["required"] and key not in params:
                raise PipelineError(label, f"missing required parameter {key!r}", f"add '{key}: ...' ({spec['doc']})")
            if key not in params:
                continue
            value = params[key]
            if spec["choices"] and value not in spec["choices"]:
                raise PipelineError(f"{label}.{key}", f"{value!r} is not one of {list(spec['choices'])}",
                                    f"use one of {', '.join(map(str, spec['choices']))}")
            expected = hints.get(key)
            if expected is not None and not matches_annotation(value, expected):
                raise PipelineError(f"{label}.{key}", f"expected {describe_type(expected)}, got {value!r}",
                                    f"give {key} as {describe_type(expected)} ({spec['doc']})")
        job = cls(**params)
        job.validate(label)
        return job

    def validate(self, where: str) -> None:
        """Check parameter values beyond their types (ranges); raise PipelineError. Default: nothing.

        Examples
        --------
        >>> Job().validate("job")
        """
        return None

    def params(self) -> dict[str, Any]:
        """Parameter values as a JSON-friendly dict.

        Examples
        --------
        >>> Job().params()
        {}
        """
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    # -- declared behaviour -------------------------------------------------------
    def variables(self) -> tuple[str, ...]:
        """Ground-truth variables of the cube the job reads with the frames (default: none).

        Examples
        --------
        >>> Job().variables()
        ()
        """
        return ()

    def check(self, data: Any) -> None:
        """Validate the data's metadata (shapes, variables) before any frame is read. Default: nothing.

        Examples
        --------
        >>> Job().check(None)
        """
        return None

    def setup(self, ctx: JobContext) -> None:
        """Build the model and optimiser on ``ctx.device``; every RNG was seeded by the runner."""
        raise NotImplementedError(f"{type(self).__name__} must define setup()")

    def run(self, ctx: JobContext) -> None:
        """Do the work: by default, :meth:`run_epoch` for each of ``ctx.epochs()``, logging what it returns."""
        for epoch in ctx.epochs():
            ctx.log(**self.run_epoch(ctx, epoch))

    def run_epoch(self, ctx: JobContext, epoch: int) -> dict[str, Any]:
        """Train for one epoch and return its metrics (numbers)."""
        raise NotImplementedError(f"{type(self).__name__} must define run_epoch() or run()")

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes while training: tensors, arrays, numbers, strings, lists, dicts."""
        raise NotImplementedError(f"{type(self).__name__} must define state_dict()")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (after :meth:`setup`)."""
        raise NotImplementedError(f"{type(self).__name__} must define load_state_dict()")

    def artefact(self) -> ArtefactContent:
        """The trained weights and the model record a loader needs."""
        raise NotImplementedError(f"{type(self).__name__} must define artefact()")


_REGISTRY: dict[str, type[Job]] = {}
#: Modules defining the built-in jobs, imported on first use of the registry.
_JOB_MODULES = ("diffraflow.flow.training.classifier", "diffraflow.flow.training.learned",
                "diffraflow.flow.training.restoration")
_LOADED = False


def register_job(cls: type[Job]) -> type[Job]:
    """Class decorator adding a job to the registry under ``cls.name``.

    Examples
    --------
    >>> @register_job
    ... @dataclass(eq=False)
    ... class Nothing(Job):
    ...     name = "nothing_example"
    >>> get_job_class("nothing_example") is Nothing
    True
    """
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a class attribute 'name'")
    unknown = [d for d in cls.devices if d not in ("cpu", "cuda")]
    if unknown:
        raise TypeError(f"{cls.__name__}.devices names unknown devices {unknown}; use cpu, cuda")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"job name {cls.name!r} already used by {existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def list_jobs() -> dict[str, type[Job]]:
    """All registered jobs by name (built-in ones imported on first call).

    Examples
    --------
    >>> "train_pattern_classifier" in list_jobs()
    True
    """
    global _LOADED
    if not _LOADED:
        import importlib

        for module in _JOB_MODULES:
            importlib.import_module(module)
        _LOADED = True
    return dict(sorted(_REGISTRY.items()))


def get_job_class(name: str, where: str = "job") -> type[Job]:
    """The job class registered as ``name``; PipelineError naming the closest name otherwise.

    Examples
    --------
    >>> get_job_class("train_pattern_clasifier")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: job: unknown job 'train_pattern_clasifier' (fix: did you mean 'train_pattern_classifier'?)
    """
    jobs = list_jobs()
    if name in jobs:
        return jobs[name]
    close = difflib.get_close_matches(str(name), list(jobs), n=1)
    fix = f"did you mean {close[0]!r}?" if close else f"known jobs: {', '.join(jobs) or 'none'}"
    raise PipelineError(where, f"unknown job {name!r}", fix)


def job_parameters(cls: type[Job]) -> list[dict[str, Any]]:
    """Declared parameters of a job class: name, type, default, doc, choices (as for operators).

    Examples
    --------
    >>> [p["name"] for p in job_parameters(get_job_class("train_pattern_classifier"))][:2]
    ['label', 'channels']
    """
    return operator_parameters(cls)  # type: ignore[arg-type]  # same dataclass field metadata


def build_job(name: str, params: Mapping[str, Any] | None = None, where: str = "job") -> Job:
    """Instantiate a registered job from its name and parameter mapping (validated).

    Examples
    --------
    >>> build_job("train_pattern_classifier", {"learning_rate": "fast"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: job: train_pattern_classifier.learning_rate: expected a finite number, got 'fast' (fix: ...)
    """
    return get_job_class(name, where).from_config(params, where)


def __getattr__(name: str) -> Any:
    # The runner and the artefact loader import this module; hand them out lazily to avoid a cycle.
    if name == "run_job":
        from diffraflow.flow.training.runner import run_job

        return run_job
    if name in ("load_artefact", "artefact_hash"):
        from diffraflow.operators.learning import artefact

        return getattr(artefact, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The job file (YAML or JSON) and its validation, before any data is read.

A job file::

    training: 1                       # job-file format version
    job: train_pattern_classifier     # a registered job ('diffraflow train --list')
    seed: 0                           # seeds Python, NumPy and torch (default 0)
    epochs: 5                         # passes over the training frames (default 10)
    device: cpu                       # cpu or cuda (default cpu)
    data:
      source: two_phase.zarr          # scan cube; relative paths start at this file's folder
      frames: patterns                # frame variable (default patterns)
      batch_size: 32                  # frames per batch (default 32)
      holdout: 0.2                    # fraction held out for evaluation (default 0)
      holdout_group: grain_id         # optional: hold out whole groups (grains)
      split_seed: 0                   # seed of the hold-out split (default 0)
      chunk_frames: 256               # optional: frames per read (default: the cube's chunks)
      shuffle_buffer_mib: 256         # frames shuffled together (default 256 MiB)
    params:                           # the job's parameters ('diffraflow train --list')
      label: true_phase_id
    output: phase.dfmodel             # optional: the artefact (--output wins)

Every key, type and range is checked here and the job's parameters against
its declaration; each failure is one line naming the field and the fix.

Examples
--------
>>> cfg = parse_config({"training": 1, "job": "train_pattern_classifier", "data": {"source": "/d/c.zarr"}})
>>> cfg.epochs, cfg.data.batch_size, cfg.job.label
(10, 32, 'true_phase_id')
>>> parse_config({"training": 1, "job": "train_pattern_classifier", "data": {"source": "c.zarr", "batchsize": 8}})
Traceback (most recent call last):
...
diffraflow.schemas.errors.SchemaError: job file: data: unknown key 'batchsize' (fix: did you mean 'batch_size'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffraflow.flow.jobs import Job, build_job
from diffraflow.schemas.errors import PipelineError, SchemaError

__all__ = ["TRAINING_FORMAT", "DataConfig", "TrainingConfig", "parse_config", "read_config", "load_config",
           "DEVICES"]

#: The job-file format version this code reads.
TRAINING_FORMAT = 1
#: Torch devices a job may train on.
DEVICES = ("cpu", "cuda")
_TOP = ("training", "job", "seed", "epochs", "device", "data", "params", "output")
_DATA = ("source", "frames", "batch_size", "holdout", "holdout_group", "split_seed", "chunk_frames",
         "shuffle_buffer_mib")


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section: where frames and labels come from, and how they are batched.

    Examples
    --------
    >>> DataConfig(source="c.zarr").frames
    'patterns'
    """

    source: str | None
    frames: str = "patterns"
    batch_size: int = 32
    holdout: float = 0.0
    holdout_group: str | None = None
    split_seed: int = 0
    chunk_frames: int | None = None
    shuffle_buffer_mib: float = 256.0


@dataclass(frozen=True)
class TrainingConfig:
    """A validated job file.

    Attributes
    ----------
    job
        The job, built and validated from ``job`` and ``params``.
    seed, epochs, device
        Seed of every RNG, number of epochs, torch device.
    data
        The data section (``source`` made absolute).
    output
        The artefact path the file names, or None.
    path
        The job file (None for a mapping given in Python).
    """

    job: Job
    seed: int
    epochs: int
    device: str
    data: DataConfig
    output: str | None = None
    path: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The normalised config (defaults filled, paths absolute): stored in the artefact's ``config.json``.

        Examples
        --------
        >>> cfg = parse_config({"training": 1, "job": "train_pattern_classifier", "data": {"source": "/c.zarr"}})
        >>> cfg.to_record()["data"]["source"], cfg.to_record()["params"]["label"]
        ('/c.zarr', 'true_phase_id')
        """
        return {"training": TRAINING_FORMAT, "job": self.job.name, "seed": self.seed, "epochs": self.epochs,
                "device": self.device, "data": dataclasses.asdict(self.data), "params": self.job.params()}

    def fingerprint(self, data_identity: Mapping[str, Any]) -> str:
        """SHA-256 of the normalised config and the data's identity: a resume must match it exactly.

        Examples
        --------
        >>> cfg = parse_config({"training": 1, "job": "train_pattern_classifier", "data": {"source": "/c.zarr"}})
        >>> len(cfg.fingerprint({"source": {}}))
        64
        """
        text = json.dumps({"config": self.to_record(), "data": data_identity}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def with_device(self, device: str | None) -> TrainingConfig:
        """The config with ``device`` replaced (the command line's ``--device``), checked.

        Examples
        --------
        >>> cfg = parse_config({"training": 1, "job": "train_pattern_classifier", "data": {"source": "/c.zarr"}})
        >>> cfg.with_device("gpu")
        Traceback (most recent call last):
        ...
        diffraflow.schemas.errors.SchemaError: --device: 'gpu' is not one of cpu, cuda (fix: use --device cpu or --device cuda)
        """
        if device is None:
            return self
        if device not in DEVICES:
            raise SchemaError("--device", f"{device!r} is not one of {', '.join(DEVICES)}",
                              "use --device cpu or --device cuda")
        return dataclasses.replace(self, device=device)


def _unknown(record: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in record:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(allowed)}"
            raise SchemaError(where, f"unknown key {key!r}", fix)


def _whole(value: Any, where: str, minimum: int, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SchemaError(where, f"must be a whole number of {minimum} or more, got {value!r}", f"e.g. {example}")
    return int(value)


def _number(value: Any, where: str, low: float, high: float, example: str, high_open: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value)) \
        and low <= float(value) and (float(value) < high if high_open else float(value) <= high)
    if not ok:
        interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
        raise SchemaError(where, f"must be a number in {interval}, got {value!r}", f"e.g. {example}")
    return float(value)


def _name(value: Any, where: str, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SchemaError(where, f"must be a name, got {value!r}", f"e.g. {example}")
    return value


def _parse_data(record: Any, where: str, base: Path | None, need_source: bool) -> DataConfig:
    if not isinstance(record, Mapping):
        raise SchemaError(where, f"must be a mapping, got {type(record).__name__}",
                          "give 'data:' with at least 'source: CUBE.zarr'")
    _unknown(record, _DATA, where)
    source = record.get("source")
    if source is None:
        if need_source:
            raise SchemaError(f"{where}.source", "is missing", "add 'source: CUBE.zarr' (the scan cube to learn from)")
    else:
        source = _name(source, f"{where}.source", "source: two_phase.zarr")
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        source = str(Path(os.path.normpath(path)))
    group = record.get("holdout_group")
    chunk_frames = record.get("chunk_frames")
    return DataConfig(
        source=source,
        frames=_name(record.get("frames", "patterns"), f"{where}.frames", "frames: patterns"),
        batch_size=_whole(record.get("batch_size", 32), f"{where}.batch_size", 1, "batch_size: 32"),
        holdout=_number(record.get("holdout", 0.0), f"{where}.holdout", 0.0, 1.0, "holdout: 0.2", high_open=True),
        holdout_group=None if group is None else _name(group, f"{where}.holdout_group", "holdout_group: grain_id"),
        split_seed=_whole(record.get("split_seed", 0), f"{where}.split_seed", 0, "split_seed: 0"),
        chunk_frames=None if chunk_frames is None else _whole(chunk_frames, f"{where}.chunk_frames", 1,
                                                              "chunk_frames: 256"),
        shuffle_buffer_mib=_number(record.get("shuffle_buffer_mib", 256.0), f"{where}.shuffle_buffer_mib", 1e-3,
                                   1e6, "shuffle_buffer_mib: 256"),
    )


def parse_config(record: Any, where: str = "job file", base: str | os.PathLike[str] | None = None,
                 need_source: bool = True) -> TrainingConfig:
    """Validate a job-file mapping and build its job (no data is touched).

    Parameters
    ----------
    record
        The parsed file.
    where
        Name used in error messages (the file path).
    base
        Folder relative paths start from (the file's folder; default: the working directory).
    need_source
        Require ``data.source`` (not when the caller supplies the data itself).

    Raises
    ------
    SchemaError
        A missing, unknown or ill-typed key of the file.
    PipelineError
        An unknown job, or a bad job parameter.
    """
    if not isinstance(record, Mapping):
        raise SchemaError(where, f"must be a mapping of keys, got {type(record).__name__}",
                          "start the file with 'training: 1' and 'job: NAME'")
    _unknown(record, _TOP, where)
    if record.get("training") != TRAINING_FORMAT:
        raise SchemaError(f"{where}: training", f"format version must be {TRAINING_FORMAT}, got "
                          f"{record.get('training')!r}", f"start the file with 'training: {TRAINING_FORMAT}'")
    name = record.get("job")
    if not isinstance(name, str):
        raise SchemaError(f"{where}: job", f"must name a registered job, got {name!r}",
                          "e.g. job: train_pattern_classifier ('diffraflow train --list' shows all)")
    params = record.get("params")
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise SchemaError(f"{where}: params", f"must be a mapping, got {type(params).__name__}",
                          "give the job's parameters as 'params: {name: value}'")
    folder = Path(base) if base is not None else None
    data = _parse_data(record.get("data", {}), f"{where}: data", folder, need_source)
    seed = _whole(record.get("seed", 0), f"{where}: seed", 0, "seed: 0")
    epochs = _whole(record.get("epochs", 10), f"{where}: epochs", 1, "epochs: 10")
    device = record.get("device", "cpu")
    if device not in DEVICES:
        raise SchemaError(f"{where}: device", f"{device!r} is not one of {', '.join(DEVICES)}",
                          "use device: cpu or device: cuda")
    output = record.get("output")
    if output is not None:
        output = _name(output, f"{where}: output", "output: phase.dfmodel")
        path = Path(output).expanduser()
        output = str(path if path.is_absolute() else (folder or Path.cwd()) / path)
    job = build_job(name, params, where=where)
    if device not in job.devices:
        raise PipelineError(f"{where}: device", f"job {name!r} cannot train on {device}",
                            f"use device: {job.devices[0]}")
    return TrainingConfig(job=job, seed=seed, epochs=epochs, device=device, data=data, output=output)


def read_config(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML or JSON job file (structure not yet validated).

    Examples
    --------
    >>> read_config("/no/such/job.yaml")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.SchemaError: /no/such/job.yaml: no such file (fix: check the job file path)
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SchemaError(str(path), "no such file", "check the job file path")
    try:
        return yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise SchemaError(str(path), "not a text file", "pass a YAML or JSON job file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise SchemaError(where, f"not valid YAML: {problem}", "fix the YAML syntax (indentation, colons)") from None


def load_config(config: str | os.PathLike[str] | Mapping[str, Any] | TrainingConfig,
                need_source: bool = True) -> TrainingConfig:
    """A validated config from a job-file path, a mapping, or an existing :class:`TrainingConfig`.

    Examples
    --------
    >>> load_config({"training": 1, "job": "train_pattern_classifier", "epochs": 0, "data": {"source": "c"}})
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.SchemaError: job file: epochs: must be a whole number of 1 or more, got 0 (fix: e.g. epochs: 10)
    """
    if isinstance(config, TrainingConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(config, need_source=need_source)
    path = Path(config).expanduser().absolute()
    cfg = parse_config(read_config(path), where=str(path), base=path.parent, need_source=need_source)
    return dataclasses.replace(cfg, path=str(path))

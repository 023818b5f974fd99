"""The pipeline-file schema (YAML or JSON) and its one-line validation errors.

A pipeline file::

    pipeline: 1                      # format version
    steps:
      - op: remove_static_background # a registered operator ('diffraflow operators')
      - op: virtual_image
        name: vbf                    # unique step name (default: the operator name)
        params: {radius: 5}          # operator parameters
        backend: numpy               # optional: numpy, cupy, torch-cpu, torch-cuda
        save: [image]                # optional: true (all outputs), false, or names
        materialize: true            # optional, frames steps: store the frames once for later passes
    output: {chunk_frames: 400}      # optional: frames per chunk

The structure is checked here against :func:`pipeline_json_schema`; operator
and parameter names are checked against the registry when the pipeline is
built (:meth:`diffraflow.flow.pipeline.Pipeline.from_dict`). Both happen before any data
is read, and every failure is a one-line :class:`~diffraflow.schemas.errors.PipelineError`
naming the closest valid name.

Examples
--------
>>> validate_pipeline_record({"pipeline": 1, "steps": [{"op": "x", "parms": {}}]})
Traceback (most recent call last):
...
diffraflow.schemas.errors.PipelineError: pipeline: steps[0]: unknown key 'parms' (fix: did you mean 'params'?)
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from diffraflow.schemas.backends import BACKEND_NAMES
from diffraflow.schemas.errors import PipelineError

__all__ = ["PIPELINE_FORMAT", "pipeline_json_schema", "validate_pipeline_record", "read_pipeline_file"]

#: The pipeline-file format version this code reads.
PIPELINE_FORMAT = 1

_STEP_KEYS = ("op", "name", "params", "backend", "save", "materialize")
_TOP_KEYS = ("pipeline", "steps", "output")
_OUTPUT_KEYS = ("chunk_frames",)


def pipeline_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of pipeline files.

    Examples
    --------
    >>> pipeline_json_schema()["required"]
    ['pipeline', 'steps']
    """
    name = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.-]*$"}
    step = {
        "type": "object",
        "additionalProperties": False,
        "required": ["op"],
        "properties": {
            "op": {"type": "string", "minLength": 1, "description": "registered operator name"},
            "name": {**name, "description": "unique step name; results go under <name>/<output>"},
            "params": {"type": "object", "description": "operator parameters"},
            "backend": {"type": "string", "enum": list(BACKEND_NAMES),
                        "description": "kernel backend; GPU backends need CUDA"},
            "materialize": {"type": "boolean",
                            "description": "frames steps: store the final frames once so that later passes "
                                           "read them instead of recomputing (default: automatic for "
                                           "expensive operators)"},
            "save": {"description": "outputs to store: true (all), false (none) or a list of names",
                     "oneOf": [{"type": "boolean"}, {"type": "array", "items": {"type": "string"}}]},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://diffraflow.invalid/schemas/pipeline-v1.json",
        "title": "diffraflow pipeline file",
        "type": "object",
        "additionalProperties": False,
        "required": ["pipeline", "steps"],
        "properties": {
            "pipeline": {"const": PIPELINE_FORMAT, "description": "pipeline-file format version"},
            "steps": {"type": "array", "minItems": 1, "items": step},
            "output": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"chunk_frames": {"type": "integer", "minimum": 1,
                                                "description": "frames per chunk (task and result chunk)"}},
            },
        },
    }


def _path_text(path: list[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


def validate_pipeline_record(record: Any, where: str = "pipeline") -> dict[str, Any]:
    """Check a pipeline mapping against the schema; one-line PipelineError otherwise.

    Examples
    --------
    >>> validate_pipeline_record({"pipeline": 2, "steps": [{"op": "a"}]})
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: pipeline: pipeline: format version 2 is not supported (fix: write 'pipeline: 1')
    """
    import jsonschema

    if not isinstance(record, dict):
        raise PipelineError(where, f"expected a mapping with 'pipeline' and 'steps', got {type(record).__name__}",
                            "start the file with 'pipeline: 1' and a 'steps:' list")
    validator = jsonschema.Draft202012Validator(pipeline_json_schema())
    errors = sorted(validator.iter_errors(record), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return record
    err = errors[0]
    path = list(err.absolute_path)
    field = _path_text(path)
    if err.validator == "additionalProperties":
        allowed = _TOP_KEYS if not path else (_OUTPUT_KEYS if path == ["output"] else _STEP_KEYS)
        extra = sorted(set(err.instance) - set(allowed))
        key = extra[0] if extra else "?"
        close = difflib.get_close_matches(key, allowed, n=1)
        fix = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
        raise PipelineError(f"{where}: {field}", f"unknown key {key!r}", fix)
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        fix = {"op": "add 'op: NAME' (see 'diffraflow operators')", "pipeline": "add 'pipeline: 1' at the top",
               "steps": "add a 'steps:' list"}.get(missing, f"add {missing!r}")
        raise PipelineError(f"{where}: {field}", f"missing required key {missing!r}", fix)
    if path == ["pipeline"]:
        raise PipelineError(f"{where}: pipeline", f"format version {err.instance!r} is not supported",
                            f"write 'pipeline: {PIPELINE_FORMAT}'")
    if path == ["steps"] and err.validator == "minItems":
        raise PipelineError(f"{where}: steps", "[] should be non-empty", "list at least one step: '- op: NAME'")
    if err.validator == "enum":
        raise PipelineError(f"{where}: {field}", f"{err.instance!r} is not one of {err.validator_value}",
                            f"use one of {', '.join(map(str, err.validator_value))}")
    fixes = {"params": "give parameters as a mapping, e.g. params: {radius: 5}",
             "name": "use letters, digits, '_', '-' or '.'",
             "save": "use true, false or a list of output names",
             "materialize": "use true or false",
             "chunk_frames": "give a positive number of frames",
             "steps": "give steps as a list of '- op: NAME' items"}
    last = next((str(p) for p in reversed(path) if not isinstance(p, int)), "")
    raise PipelineError(f"{where}: {field}", f"{err.instance!r} is invalid ({err.message})",
                        fixes.get(last, "see 'diffraflow schema pipeline'"))


def read_pipeline_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML/JSON pipeline file (structure not yet validated).

    Examples
    --------
    >>> read_pipeline_file("/no/such/file.yaml")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: /no/such/file.yaml: no such file (fix: check the pipeline file path)
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PipelineError(str(path), "no such file", "check the pipeline file path")
    try:
        record = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise PipelineError(where, f"not valid YAML: {problem}", "fix the YAML syntax (indentation, colons)") from None
    return record

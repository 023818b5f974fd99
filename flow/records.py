"""Progress records that cannot run code: JSON for structure, ``.npz`` (no pickle) for arrays.

A resumed run reads back the states and merged partials of earlier rounds from
the output store. Those files sit on disk where anyone may have edited them,
so they are never unpickled: a record is one ``.npz`` archive holding a JSON
description of the tree (dicts, lists, tuples, numbers, strings, ``None``) and
one plain array per leaf array, read back with ``allow_pickle=False``.
Anything else in a state (an arbitrary object) is refused when it is written,
naming the step and the value's type, so an operator that keeps such state
fails on its first checkpoint rather than on a resume.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "state.npz"
>>> save_record(path, {"pca": {"mean": np.arange(3.0), "count": np.int64(4), "shape": (2, 3)}})
>>> back = load_record(path)
>>> back["pca"]["mean"].tolist(), int(back["pca"]["count"]), back["pca"]["shape"]
([0.0, 1.0, 2.0], 4, (2, 3))
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.schemas.errors import DataCorruptionError, PipelineError, UnsafeRecordError

__all__ = ["save_record", "load_record", "RECORD_SUFFIX"]

#: File suffix of a progress record.
RECORD_SUFFIX = ".npz"
_TREE = "__tree__"


def _host(value: Any) -> Any:
    # Device arrays (CuPy, torch) are checkpointed as host arrays.
    module = type(value).__module__
    if module.startswith("cupy"):
        return value.get()
    if module.startswith("torch"):
        return value.detach().cpu().numpy()
    return value


def _encode(value: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    value = _host(value)
    if value is None or isinstance(value, bool | str):
        return {"v": value}
    if isinstance(value, int | float):
        return {"v": value, "py": type(value).__name__}
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise PipelineError(where, "holds an object array, which cannot be checkpointed safely",
                                "keep numeric or string arrays in operator state")
        name = f"a{len(arrays)}"
        arrays[name] = array
        return {"a": name, "scalar": isinstance(value, np.generic)}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"d": {k: _encode(v, arrays, f"{where}.{k}") for k, v in value.items()}}
        return {"kv": [[_encode(k, arrays, where), _encode(v, arrays, f"{where}[{k!r}]")]
                       for k, v in value.items()]}
    if isinstance(value, list | tuple):
        tag = "l" if isinstance(value, list) else "t"
        return {tag: [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    raise PipelineError(where, f"holds a {type(value).__name__}, which cannot be checkpointed safely",
                        "keep operator state to arrays, numbers, strings, lists, tuples and dicts")


def _decode(node: Any, arrays: Any, where: str) -> Any:
    if not isinstance(node, dict) or len(node) == 0:
        raise DataCorruptionError(where, "malformed progress record", "re-run with --overwrite to start afresh")
    if "v" in node:
        value = node["v"]
        kind = node.get("py")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        return value
    if "a" in node:
        array = arrays[node["a"]]
        return array[()] if node.get("scalar") else array
    if "d" in node:
        return {k: _decode(v, arrays, where) for k, v in node["d"].items()}
    if "kv" in node:
        return {_decode(k, arrays, where): _decode(v, arrays, where) for k, v in node["kv"]}
    if "l" in node:
        return [_decode(v, arrays, where) for v in node["l"]]
    if "t" in node:
        return tuple(_decode(v, arrays, where) for v in node["t"])
    raise DataCorruptionError(where, f"unknown entry {sorted(node)} in progress record",
                              "re-run with --overwrite to start afresh")


def save_record(path: str | os.PathLike[str], value: Any, where: str = "state") -> None:
    """Write ``value`` atomically as a pickle-free record (write aside, fsync, rename).

    Parameters
    ----------
    path
        Target file (``.npz``).
    value
        A tree of dicts, lists, tuples, numbers, strings, ``None`` and arrays.
    where
        Names the value in the error raised for anything else.

    Raises
    ------
    PipelineError
        ``value`` holds an object that a record cannot represent.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> save_record(pathlib.Path(tempfile.mkdtemp()) / "x.npz", {"f": open})
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.PipelineError: state.f: holds a builtin_function_or_method, which cannot be checkpointed safely (fix: keep operator state to arrays, numbers, strings, lists, tuples and dicts)
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(value, arrays, where)
    text = np.frombuffer(json.dumps(tree, allow_nan=True).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        # Any: numpy's stub would check these keyword arrays against savez's own allow_pickle flag.
        members: dict[str, Any] = {_TREE: text, **arrays}
        np.savez(fh, **members)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_record(path: str | os.PathLike[str]) -> Any:
    """Read a record written by :func:`save_record`; nothing in it can execute.

    Raises
    ------
    UnsafeRecordError
        The file is a pickle or holds object arrays.
    DataCorruptionError
        The file is damaged.

    Examples
    --------
    >>> import tempfile, pathlib, pickle
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "state.npz"
    >>> _ = bad.write_bytes(pickle.dumps({"a": 1}))
    >>> load_record(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.UnsafeRecordError: ...state.npz: not a diffraflow progress record (a pickle or other file); it is never loaded (fix: ...)
    """
    path = Path(path)
    fix = "delete the output store's _progress folder or re-run with --overwrite to start afresh"
    if not zipfile.is_zipfile(path):
        raise UnsafeRecordError(str(path), "not a diffraflow progress record (a pickle or other file); "
                                "it is never loaded", fix)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if _TREE not in archive.files:
                raise UnsafeRecordError(str(path), "archive has no record tree; it is never loaded", fix)
            tree = json.loads(bytes(archive[_TREE]).decode())
            arrays = {name: archive[name] for name in archive.files if name != _TREE}
    except ValueError as exc:  # numpy refuses object arrays without allow_pickle
        if "pickle" in str(exc).lower():
            raise UnsafeRecordError(str(path), "holds pickled objects; it is never loaded", fix) from None
        raise DataCorruptionError(str(path), f"damaged progress record: {exc}", fix) from None
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataCorruptionError(str(path), f"damaged progress record: {exc}", fix) from None
    return _decode(tree, arrays, str(path))

"""Checkpoints of a training job: one safetensors file, written atomically, never pickle.

A checkpoint holds a tree (dicts, lists, tuples, numbers, strings, ``None``,
torch tensors and NumPy arrays), such as a job's ``state_dict()`` with its
optimiser state. The tensors are stored as safetensors; the tree's structure
is JSON in the file's header metadata (one key, so the bytes are
reproducible), pointing at the tensors by name. One file rather than a pair:
it is replaced by a single ``rename``, so a job killed at any instant leaves
either the previous checkpoint or the new one, never half of each.

Nothing here unpickles; a file that is not safetensors is refused unread
(:func:`diffraflow.operators.learning.artefact.check_safetensors`).

Examples
--------
>>> import tempfile, pathlib, torch
>>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.safetensors"
>>> save_checkpoint(path, {"epoch": 2, "model": {"w": torch.ones(2)}, "state": {0: {"step": torch.tensor(3.0)}},
...                        "betas": (0.9, 0.999)})
>>> back = load_checkpoint(path)
>>> back["epoch"], back["model"]["w"].tolist(), float(back["state"][0]["step"]), back["betas"]
(2, [1.0, 1.0], 3.0, (0.9, 0.999))
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.schemas.errors import DataCorruptionError, PipelineError

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT", "atomic_write"]

#: Version of the checkpoint layout this code writes and reads.
CHECKPOINT_FORMAT = 1
_KEY = "diffraflow.checkpoint"
_FIX = "re-run with --no-resume to start the training afresh"


def _encode(value: Any, tensors: dict[str, Any], where: str) -> Any:
    import torch

    if value is None or isinstance(value, bool | str | int | float):
        return {"v": value}
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous().clone()  # no shared storage (safetensors refuses it)
        return {"t": name}
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise PipelineError(where, f"holds a {array.dtype} array, which cannot be checkpointed",
                                "keep job state to numeric arrays and tensors")
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(array).copy())
        return {"n": name, "scalar": isinstance(value, np.generic)}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"d": {k: _encode(v, tensors, f"{where}.{k}") for k, v in value.items()}}
        return {"kv": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                       for k, v in value.items()]}
    if isinstance(value, list | tuple):
        tag = "l" if isinstance(value, list) else "tu"
        return {tag: [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    raise PipelineError(where, f"holds a {type(value).__name__}, which cannot be checkpointed safely",
                        "keep job state to tensors, arrays, numbers, strings, lists, tuples and dicts")


def _decode(node: Any, tensors: Any, where: str) -> Any:
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise DataCorruptionError(where, "malformed checkpoint tree", _FIX)
    if "v" in node:
        return node["v"]
    if "t" in node:
        return tensors.get_tensor(node["t"])
    if "n" in node:
        array = tensors.get_tensor(node["n"]).numpy()
        return array[()] if node.get("scalar") else array
    if "d" in node:
        return {k: _decode(v, tensors, f"{where}.{k}") for k, v in node["d"].items()}
    if "kv" in node:
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in node["kv"]}
    if "l" in node:
        return [_decode(v, tensors, where) for v in node["l"]]
    if "tu" in node:
        return tuple(_decode(v, tensors, where) for v in node["tu"])
    raise DataCorruptionError(where, f"unknown checkpoint node {sorted(node)}", _FIX)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.json"
    >>> atomic_write(p, b"{}"); p.read_bytes()
    b'{}'
    """
    path = Path(path)
    temp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(temp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename is still atomic


def save_checkpoint(path: str | os.PathLike[str], tree: Any) -> None:
    """Write ``tree`` to ``path`` atomically (see the module notes).

    Raises
    ------
    PipelineError
        The tree holds something other than tensors, arrays, numbers, strings, lists, tuples and dicts.
    """
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    encoded = _encode(tree, tensors, "state")
    header = json.dumps({"format": CHECKPOINT_FORMAT, "tree": encoded}, sort_keys=True)
    atomic_write(path, save(tensors, metadata={_KEY: header}))


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read back the tree :func:`save_checkpoint` wrote; tensors come back on the CPU.

    Raises
    ------
    UnsafeRecordError
        The file is a pickle or a torch zip archive: it is never read.
    DataCorruptionError
        The file is damaged or of an unknown layout.
    """
    from diffraflow.operators.learning.artefact import check_safetensors
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as tensors:
            record = json.loads((tensors.metadata() or {}).get(_KEY, "null"))
            if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
                raise DataCorruptionError(str(path), "not a diffraflow checkpoint of format "
                                          f"{CHECKPOINT_FORMAT}", _FIX)
            return _decode(record["tree"], tensors, str(path))
    except (SafetensorError, ValueError) as exc:
        raise DataCorruptionError(str(path), f"cannot be read ({exc})", _FIX) from None

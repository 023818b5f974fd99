"""The versioned model artefact: weights, config, training data identity and a manifest of hashes.

A training job (``diffraflow train``) writes one **directory** per model::

    phase.dfmodel/
      weights.safetensors   tensors only (safetensors: a JSON header and raw bytes, never pickle)
      config.json           the training config as validated (defaults filled, paths absolute)
      artefact.json         kind, job, model record (architecture, classes...), training data
                            identity, seed, diffraflow version, artefact format version, final metrics
      metrics.jsonl         one JSON line per epoch
      manifest.json         diffraflow marker, format version, SHA-256 and size of every other file

A directory rather than one file: its JSON files can be read (and diffed)
with any tool, the manifest lists what belongs to the artefact so a
restoration model can add files (EMA weights, noise schedules) without a new
container format, and safetensors files hold no nested metadata whose key
order would vary between writes (a multi-key safetensors header is written in
hash-map order, so it is not byte-reproducible).

The **content hash** of an artefact (:func:`artefact_hash`) is the SHA-256 of
its ``manifest.json``, which names the SHA-256 of every other file: operators
that load an artefact put it in their :meth:`~diffraflow.operators.base.Operator.token`,
so a retrained model is never mistaken for the old one. Every file is written
deterministically (sorted JSON, tensors in name order), so the same training
gives the same bytes and the same hash.

:func:`load_artefact` checks the format version, every file's hash and that
nothing unlisted was added, and reads the weights only after checking that
they are a safetensors file; a pickle (which could run code when loaded) is
refused unread.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp()) / "m.dfmodel"
>>> digest = write_artefact(folder, kind="demo", job="demo_job", weights={"w": np.ones(3, "float32")},
...                         model={"architecture": "none"}, config={"seed": 0}, data={}, training={},
...                         metrics=[{"epoch": 1, "loss": 0.5}])
>>> art = load_artefact(folder, kind="demo")
>>> art.weights["w"].tolist(), art.metrics[-1]["loss"], art.content_hash == digest == artefact_hash(folder)
([1.0, 1.0, 1.0], 0.5, True)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from diffraflow.schemas.errors import (
    DataCorruptionError,
    InputFileError,
    PipelineError,
    StoreNotFoundError,
    UnsafeRecordError,
)

__all__ = [
    "ARTEFACT_FORMAT",
    "ARTEFACT_MARKER",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "INFO_FILE",
    "METRICS_FILE",
    "MANIFEST_FILE",
    "SHIPPED_MAX_BYTES",
    "Artefact",
    "write_artefact",
    "load_artefact",
    "artefact_hash",
    "is_artefact",
    "read_manifest",
    "check_safetensors",
    "canonical_json",
]

#: The artefact format version this code writes and the newest it reads.
ARTEFACT_FORMAT = 1
#: ``diffraflow.kind`` in the manifest: what ``--overwrite`` is allowed to replace.
ARTEFACT_MARKER = "model_artefact"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
INFO_FILE = "artefact.json"
METRICS_FILE = "metrics.jsonl"
MANIFEST_FILE = "manifest.json"
_REQUIRED = (WEIGHTS_FILE, CONFIG_FILE, INFO_FILE, METRICS_FILE)
#: Weights the project ships stay below this (the job runner says when an artefact is larger).
SHIPPED_MAX_BYTES = 5 * 2**20
# A manifest or JSON file this large is not one diffraflow wrote: refuse it before parsing.
_MAX_JSON_BYTES = 64 * 2**20
_MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library's own limit
_FIX_RETRAIN = "re-create it with 'diffraflow train', or restore the artefact from a copy"


@dataclass(frozen=True)
class Artefact:
    """A verified model artefact.

    Attributes
    ----------
    path
        The artefact directory.
    content_hash
        SHA-256 of its manifest (see :func:`artefact_hash`).
    kind
        What the model is, e.g. ``pattern_classifier``; operators check it.
    info
        ``artefact.json``: job, model record, data identity, training record, versions.
    config
        The training config (``config.json``).
    metrics
        One record per epoch (``metrics.jsonl``).
    weights
        Tensor name -> NumPy array (empty when loaded with ``weights=False``).
    """

    path: Path
    content_hash: str
    kind: str
    info: dict[str, Any]
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def model(self) -> dict[str, Any]:
        """The model record the job wrote (architecture and what a loader needs to rebuild it).

        Examples
        --------
        >>> Artefact(Path("m"), "0" * 64, "demo", {"model": {"architecture": "x"}}, {}, []).model
        {'architecture': 'x'}
        """
        return dict(self.info.get("model") or {})


def _finite(value: Any) -> Any:
    """JSON-safe copy of ``value``: numpy scalars/arrays as Python values, NaN and infinities as None."""
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.ndarray):
        return _finite(value.tolist())
    if isinstance(value, np.generic):
        return _finite(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a diverged loss reads as null
    if isinstance(value, Path):
        return str(value)
    return value


def canonical_json(value: Any) -> bytes:
    """``value`` as deterministic JSON bytes: sorted keys, one indentation, a final newline.

    Examples
    --------
    >>> canonical_json({"b": np.float32(0.5), "a": [1, float("nan")]})
    b'{\\n "a": [\\n  1,\\n  null\\n ],\\n "b": 0.5\\n}\\n'
    """
    return (json.dumps(_finite(value), sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False)
            + "\n").encode()


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())  # durable before the directory is published by a rename


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _diffraflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffraflow")
    except PackageNotFoundError:
        return "unknown"


def write_artefact(folder: str | os.PathLike, *, kind: str, job: str, weights: Mapping[str, Any],
                   model: Mapping[str, Any], config: Mapping[str, Any], data: Mapping[str, Any],
                   training: Mapping[str, Any], metrics: Sequence[Mapping[str, Any]]) -> str:
    """Write a complete artefact into the new directory ``folder``; returns its content hash.

    ``folder`` must not exist (the job runner writes under a temporary name
    and renames the finished directory into place). The manifest is written
    last, so a directory without one is never a complete artefact.

    Parameters
    ----------
    folder
        Directory to create.
    kind
        What the model is (``pattern_classifier``...): loaders check it.
    job
        Registered name of the job that trained it.
    weights
        Tensor name -> array (NumPy or torch; numeric dtypes NumPy knows: float16/32/64, integers, bool).
    model
        JSON record a loader needs to rebuild the model (architecture, shapes, classes).
    config
        The validated training config.
    data
        Identity of the training data (source record, variables, split).
    training
        Seed, epochs, device and the training fingerprint.
    metrics
        One record per epoch.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a"
    >>> len(write_artefact(out, kind="k", job="j", weights={}, model={}, config={}, data={}, training={},
    ...                    metrics=[]))
    64
    """
    from safetensors.numpy import save

    folder = Path(folder)
    tensors = {}
    for name in sorted(weights):
        value = weights[name]
        if type(value).__module__.startswith("torch"):
            value = value.detach().cpu().numpy()
        array = np.ascontiguousarray(np.asarray(value))
        if array.dtype.hasobject or array.dtype.kind not in "biuf":
            raise PipelineError(f"{job}: weights[{name!r}]", f"dtype {array.dtype} cannot be stored as a tensor",
                                "return numeric arrays from the job's artefact()")
        tensors[str(name)] = array
    folder.mkdir()
    # No metadata in the safetensors header: its order is not reproducible (see the module notes).
    _write_file(folder / WEIGHTS_FILE, save(tensors))
    _write_file(folder / CONFIG_FILE, canonical_json(config))
    info = {"format_version": ARTEFACT_FORMAT, "kind": kind, "job": job, "model": model, "data": data,
            "training": training, "diffraflow_version": _diffraflow_version(),
            "metrics": dict(metrics[-1]) if metrics else {}}
    _write_file(folder / INFO_FILE, canonical_json(info))
    lines = b"".join(json.dumps(_finite(m), sort_keys=True, allow_nan=False).encode() + b"\n" for m in metrics)
    _write_file(folder / METRICS_FILE, lines)
    files = {}
    for name in sorted(_REQUIRED):
        digest, size = _sha256_file(folder / name)
        files[name] = {"sha256": digest, "bytes": size}
    manifest = {"diffraflow": {"kind": ARTEFACT_MARKER, "format_version": ARTEFACT_FORMAT}, "files": files}
    _write_file(folder / MANIFEST_FILE, canonical_json(manifest))
    return artefact_hash(folder)


def artefact_hash(path: str | os.PathLike) -> str:
    """Content hash of the artefact at ``path``: SHA-256 of its manifest, ``"missing"`` when there is none.

    The manifest holds the SHA-256 of every file, so this one hash changes
    whenever any file does; it is cheap enough to compute for every
    operator token. :func:`load_artefact` checks that the files still match.

    Examples
    --------
    >>> artefact_hash("/no/such/model")
    'missing'
    """
    try:
        data = (Path(path) / MANIFEST_FILE).read_bytes()
    except OSError:
        return "missing"
    return hashlib.sha256(data).hexdigest()


def is_artefact(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory with a diffraflow artefact manifest (what ``--overwrite`` may replace).

    Examples
    --------
    >>> is_artefact("/no/such/model")
    False
    """
    try:
        read_manifest(path)
    except (InputFileError, StoreNotFoundError, DataCorruptionError):
        return False
    return True


def _read_json(path: Path, where: str) -> Any:
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise DataCorruptionError(where, f"{path.stat().st_size} bytes, far more than an artefact record",
                                      _FIX_RETRAIN)
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataCorruptionError(where, f"not valid JSON ({str(exc).splitlines()[0]})", _FIX_RETRAIN) from None


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The validated manifest of the artefact at ``path`` (format version, listed files); files not checked.

    Raises
    ------
    StoreNotFoundError
        Nothing at ``path``.
    InputFileError
        ``path`` is not a diffraflow model artefact, or one of a newer format.
    DataCorruptionError
        The manifest is damaged.

    Examples
    --------
    >>> read_manifest("/no/such/model")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.StoreNotFoundError: /no/such/model: no such model artefact (fix: check the path, or train one with 'diffraflow train CONFIG')
    """
    folder = Path(path)
    if not folder.exists():
        raise StoreNotFoundError(str(folder), "no such model artefact",
                                 "check the path, or train one with 'diffraflow train CONFIG'")
    if not folder.is_dir():
        raise InputFileError(str(folder), "is a file, not a model artefact directory",
                             "pass the directory 'diffraflow train' wrote")
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputFileError(str(folder), f"not a diffraflow model artefact (no {MANIFEST_FILE})",
                             "pass the directory 'diffraflow train' wrote")
    where = str(manifest_path)
    manifest = _read_json(manifest_path, where)
    marker = manifest.get("diffraflow") if isinstance(manifest, dict) else None
    if not isinstance(marker, dict) or marker.get("kind") != ARTEFACT_MARKER:
        raise InputFileError(where, f"not a diffraflow model artefact manifest (no diffraflow.kind "
                             f"{ARTEFACT_MARKER!r})", "pass the directory 'diffraflow train' wrote")
    version = marker.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DataCorruptionError(where, f"format_version {version!r} is not a positive whole number", _FIX_RETRAIN)
    if version > ARTEFACT_FORMAT:
        raise InputFileError(where, f"artefact format {version} is newer than this diffraflow reads "
                             f"(up to {ARTEFACT_FORMAT})", "upgrade diffraflow, or re-train with this version")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise DataCorruptionError(where, "has no 'files' table", _FIX_RETRAIN)
    for name, entry in files.items():
        if not isinstance(name, str) or name in ("", ".", "..", MANIFEST_FILE) or "/" in name or "\\" in name:
            raise DataCorruptionError(where, f"lists {name!r}, which is not a plain file name of the artefact",
                                      _FIX_RETRAIN)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not isinstance(entry.get("bytes"), int):
            raise DataCorruptionError(where, f"entry {name!r} lacks sha256 or bytes", _FIX_RETRAIN)
    missing = [name for name in _REQUIRED if name not in files]
    if missing:
        raise DataCorruptionError(where, f"does not list {', '.join(missing)}", _FIX_RETRAIN)
    return manifest


def _verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    files = manifest["files"]
    extra = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST_FILE and p.name not in files)
    if extra:
        raise DataCorruptionError(str(folder), f"holds files its manifest does not list: {', '.join(extra)}",
                                  "remove them (an artefact holds only the files its manifest lists)")
    for name, entry in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            raise DataCorruptionError(str(path), "listed in the manifest but missing", _FIX_RETRAIN)
        digest, size = _sha256_file(path)
        if size != entry["bytes"] or digest != entry["sha256"]:
            raise DataCorruptionError(str(path), f"content does not match the manifest (SHA-256 {digest[:12]}..., "
                                      f"manifest {entry['sha256'][:12]}...): the file was changed after training",
                                      _FIX_RETRAIN)


def check_safetensors(path: str | os.PathLike) -> None:
    """Refuse anything at ``path`` that is not a well-formed safetensors file, without deserialising it.

    A safetensors file starts with an 8-byte little-endian header length and
    a JSON header. Python pickles (``\\x80`` protocol byte) and torch's zip
    archives (which hold a pickle) are named as such: they are never loaded,
    since loading them can run arbitrary code.

    Examples
    --------
    >>> import tempfile, pathlib, pickle
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "weights.safetensors"
    >>> _ = bad.write_bytes(pickle.dumps({"w": [1.0]}))
    >>> check_safetensors(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.UnsafeRecordError: ...weights.safetensors: is a Python pickle, not safetensors; pickles can run code when loaded and are never read (fix: ...)
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(9)
        size = os.fstat(fh.fileno()).st_size
    fix = "export the weights with safetensors (diffraflow train does), or re-create the artefact"
    if head[:1] == b"\x80":
        raise UnsafeRecordError(str(path), "is a Python pickle, not safetensors; pickles can run code when loaded "
                                "and are never read", fix)
    if head[:2] == b"PK":
        raise UnsafeRecordError(str(path), "is a zip archive (torch.save format, which holds a pickle), not "
                                "safetensors; it is never read", fix)
    if len(head) < 9:
        raise DataCorruptionError(str(path), f"only {size} bytes: too short for a safetensors file", _FIX_RETRAIN)
    (length,) = struct.unpack("<Q", head[:8])
    if length > min(size - 8, _MAX_HEADER_BYTES) or head[8:9] != b"{":
        raise DataCorruptionError(str(path), "not a safetensors file (its header is malformed)", _FIX_RETRAIN)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise DataCorruptionError(f"{path}:{number}", "not a JSON line", _FIX_RETRAIN) from None
    return records


def load_artefact(path: str | os.PathLike, kind: str | None = None, weights: bool = True) -> Artefact:
    """Verify the artefact at ``path`` and read it: weights, config, model record, metrics.

    Parameters
    ----------
    path
        The artefact directory.
    kind
        Expected kind (``pattern_classifier``...); another kind is refused.
    weights
        Also read the weights (``False``: metadata only, e.g. in an operator's ``resolve``).

    Raises
    ------
    StoreNotFoundError, InputFileError
        No artefact there, or one of a newer format or another kind.
    DataCorruptionError
        A file differs from its manifest hash, is missing, or an unlisted file was added.
    UnsafeRecordError
        The weights are a pickle (or a torch zip archive) instead of safetensors.

    Examples
    --------
    >>> load_artefact("/no/such/model")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.StoreNotFoundError: /no/such/model: no such model artefact (fix: ...)
    """
    folder = Path(path).expanduser().absolute()
    manifest = read_manifest(folder)
    _verify_files(folder, manifest)
    info = _read_json(folder / INFO_FILE, str(folder / INFO_FILE))
    if not isinstance(info, dict) or not isinstance(info.get("kind"), str):
        raise DataCorruptionError(str(folder / INFO_FILE), "has no 'kind'", _FIX_RETRAIN)
    if kind is not None and info["kind"] != kind:
        raise InputFileError(str(folder), f"is a {info['kind']} artefact (job {info.get('job')!r}), not a {kind}",
                             f"pass an artefact trained as a {kind}")
    config = _read_json(folder / CONFIG_FILE, str(folder / CONFIG_FILE))
    tensors: dict[str, np.ndarray] = {}
    if weights:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        check_safetensors(folder / WEIGHTS_FILE)
        try:
            tensors = dict(load_file(str(folder / WEIGHTS_FILE)))
        except (SafetensorError, ValueError) as exc:
            raise DataCorruptionError(str(folder / WEIGHTS_FILE), f"cannot be read as safetensors ({exc})",
                                      _FIX_RETRAIN) from None
    return Artefact(path=folder, content_hash=artefact_hash(folder), kind=info["kind"], info=info,
                    config=config if isinstance(config, dict) else {},
                    metrics=_read_metrics(folder / METRICS_FILE), weights=tensors)

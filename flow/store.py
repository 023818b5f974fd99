"""Create, write and open scan cubes as Zarr v3 stores.

A new cube is written under a temporary sibling name
(``.NAME.partial-HOST-PID``) and renamed to its final name only by
:meth:`CubeWriter.finalize`, after its ``diffraflow.complete`` marker is set.
A writer that dies therefore leaves at most a hidden partial directory, which
the next writer of the same output removes (saying so) once its owner is gone.
One writer per store: the writer holds the store's lock
(:class:`diffraflow.flow.locks.StoreLock`).

``overwrite=True`` replaces only a store that diffraflow made, of the same
kind, and never an input of the command (:func:`prepare_output_path`); even
then the old store is replaced only once the new one is complete.

Every array is written with a CRC-32C checksum on each stored chunk and with
every chunk present (``write_empty_chunks``), and a complete store records a
``manifest`` (chunk files per array). Opening a store checks the manifest
against the files, and reading a region checks that its chunk files exist, so
a deleted chunk is an error (:class:`~diffraflow.schemas.errors.DataCorruptionError`),
never fill values, and damaged bytes fail their checksum.

Frames are pushed in scan order with :meth:`FrameArrayWriter.append`; the
writer buffers exactly one shard and writes it whole, so memory is bounded by
the shard size and no shard is ever rewritten.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "demo.zarr"
>>> attrs = {"modality": "ebsd", "detector": {"shape": [4, 5]}}
>>> with create_cube(out, scan_shape=(2, 3), det_shape=(4, 5), dtype="uint8", attrs=attrs) as writer:
...     writer.patterns.append(np.ones((6, 4, 5), dtype="uint8"))
...     path = writer.finalize()
>>> ds = open_cube(out)
>>> ds["patterns"].dims, int(ds["patterns"].sum())
(('scan_y', 'scan_x', 'det_y', 'det_x'), 120)
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, cast

import numpy as np
from diffraflow.flow.locks import HOST, StoreLock, pid_alive
from diffraflow.flow.notices import notify
from diffraflow.schemas.chunking import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_SHARD_BYTES,
    CubeLayout,
    choose_layout,
    validate_layout,
)
from diffraflow.schemas.cube import (
    FORMAT_VERSION,
    SCAN_DIMS,
    ScanAttrs,
    StoreMarker,
    validate_scan_attrs,
    validate_store_marker,
)
from diffraflow.schemas.errors import (
    DataCorruptionError,
    DestinationNotWritableError,
    IncompleteStoreError,
    InputFileError,
    OutputExistsError,
    SchemaError,
    StoreNotFoundError,
)

if TYPE_CHECKING:
    import xarray as xr
    import zarr
    from zarr.codecs import BloscCodec
    from zarr.core.array_spec import ArrayConfigParams
    from zarr.core.metadata import ArrayV3Metadata

__all__ = [
    "CubeWriter",
    "TemporaryStoreWriter",
    "FrameArrayWriter",
    "create_cube",
    "open_cube",
    "open_group_checked",
    "read_scan_attrs",
    "store_marker",
    "prepare_output_path",
    "frame_compressors",
    "checksum_codecs",
    "ARRAY_CONFIG",
    "store_manifest",
    "check_manifest",
    "check_region_present",
    "stored_array",
    "dimension_names",
    "open_cube_group",
    "verify_checksums",
    "acquisition_progress",
    "write_acquisition_progress",
]

#: Zarr array configuration for everything diffraflow writes: every chunk is stored, even one equal
#: to the fill value, so that a missing chunk file always means damage, never "all fill".
ARRAY_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


def checksum_codecs() -> list[Any]:
    """A CRC-32C checksum codec, appended to every array's compressors.

    Measured cost: see ``bench/RESULTS.md`` ("Checksums").

    Examples
    --------
    >>> type(checksum_codecs()[0]).__name__
    'Crc32cCodec'
    """
    from zarr.codecs import Crc32cCodec

    return [Crc32cCodec()]


def prepare_output_path(path: str | os.PathLike[str], overwrite: bool = False, *, kind: str = "result",
                        inputs: Iterable[str | os.PathLike[str]] = ()) -> tuple[Path, Path]:
    """Check an output store path and return ``(final, temporary)`` paths.

    Stale partial stores of dead writers of the same output are removed first
    (and reported). An existing output is replaced only when ``overwrite`` is
    set **and** it is a diffraflow store of ``kind`` **and** it is none of
    ``inputs``: diffraflow never deletes a user's files or its own input.

    Parameters
    ----------
    path
        The output store.
    overwrite
        Allow replacing an earlier diffraflow store of the same kind.
    kind
        What the caller writes: ``result`` or ``scan_cube``.
    inputs
        Paths the command reads; the output may be none of them, nor inside or around one.

    Raises
    ------
    OutputExistsError
        ``path`` exists and may not be replaced, or is an input.
    DestinationNotWritableError
        The parent directory is missing or not writable.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> final, temp = prepare_output_path(pathlib.Path(tempfile.mkdtemp()) / "a.zarr")
    >>> temp.name.startswith(".a.zarr.partial-")
    True
    >>> prepare_output_path("/tmp/x.up1", overwrite=True, inputs=["/tmp/x.up1"])
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.OutputExistsError: /tmp/x.up1: the output is the command's input /tmp/x.up1; diffraflow never overwrites its input (fix: choose another output path)
    """
    final = Path(path).expanduser().absolute()
    check_not_an_input(final, inputs)
    if final.exists() and not overwrite:
        raise OutputExistsError(str(final), "output already exists",
                                "choose another name, or pass --overwrite to replace it")
    if final.exists():
        check_replaceable(final, kind)
    parent = final.parent
    if not parent.is_dir():
        raise DestinationNotWritableError(str(final), f"parent directory {parent} does not exist",
                                          "create the directory first or choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DestinationNotWritableError(str(final), f"directory {parent} is not writable",
                                          "choose an output path in a directory you can write to")
    remove_stale_partials(final)
    temp = parent / f".{final.name}.partial-{HOST}-{os.getpid()}"
    return final, temp


def _same_or_nested(a: Path, b: Path) -> bool:
    a, b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    return a == b or a in b.parents or b in a.parents


def check_not_an_input(final: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse an output that is, contains or lies inside one of the command's inputs.

    Examples
    --------
    >>> check_not_an_input("/data/out.zarr", ["/data/scan.zarr"])
    >>> check_not_an_input("/data/scan.zarr/x", ["/data/scan.zarr"])
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.OutputExistsError: /data/scan.zarr/x: the output is inside the command's input /data/scan.zarr; diffraflow never writes into its input (fix: choose another output path)
    """
    out = Path(final).expanduser().absolute()
    for item in inputs:
        source = Path(item).expanduser().absolute()
        if not _same_or_nested(out, source):
            continue
        real_out, real_in = Path(os.path.realpath(out)), Path(os.path.realpath(source))
        if real_out == real_in:
            problem = f"the output is the command's input {source}; diffraflow never overwrites its input"
        elif real_in in real_out.parents:
            problem = f"the output is inside the command's input {source}; diffraflow never writes into its input"
        else:
            problem = f"the output would contain the command's input {source}"
        raise OutputExistsError(str(out), problem, "choose another output path")


def diffraflow_kind(path: str | os.PathLike[str]) -> str | None:
    """The ``diffraflow.kind`` of a store at ``path``, or None when it is not a diffraflow store.

    Reads only the group's ``zarr.json``; never raises for foreign files.

    Examples
    --------
    >>> diffraflow_kind("/no/such/store.zarr") is None
    True
    """
    import json

    meta = Path(path) / "zarr.json"
    try:
        record = json.loads(meta.read_text())
        marker = record.get("attributes", {}).get("diffraflow")
        kind = marker.get("kind") if isinstance(marker, dict) else None
        return kind if isinstance(kind, str) else None
    except (OSError, ValueError, AttributeError):
        return None


def check_replaceable(final: Path, kind: str) -> None:
    """Allow ``--overwrite`` only on a diffraflow store of ``kind``; anything else is the user's.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> check_replaceable(folder, "result")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.OutputExistsError: ...: exists and was not made by diffraflow (no diffraflow store marker); --overwrite never replaces it (fix: choose another output path, or move it away yourself)
    """
    found = diffraflow_kind(final) if final.is_dir() else None
    if found is None:
        raise OutputExistsError(str(final), "exists and was not made by diffraflow (no diffraflow store marker); "
                                "--overwrite never replaces it",
                                "choose another output path, or move it away yourself")
    if found != kind:
        raise OutputExistsError(str(final), f"exists and is a diffraflow {found} store; --overwrite here replaces "
                                f"only a {kind} store", "choose another output path")


def _partial_owner(name: str, final_name: str) -> tuple[str, int] | None:
    for tag in (".partial-", ".old-"):
        prefix = f".{final_name}{tag}"
        if name.startswith(prefix):
            host, _, pid = name[len(prefix):].rpartition("-")
            if pid.isdigit():
                return host or HOST, int(pid)  # names without a host come from older versions
    return None


def remove_stale_partials(final: Path) -> list[Path]:
    """Remove hidden partial stores of ``final`` whose writer (on this host) is gone; report each.

    Only directories that diffraflow names ``.NAME.partial-HOST-PID`` (or
    ``.NAME.old-HOST-PID``) and that hold a diffraflow marker or nothing are
    touched, and only when process PID no longer runs on this machine.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> final = pathlib.Path(tempfile.mkdtemp()) / "x.zarr"
    >>> (final.parent / ".x.zarr.partial-999999999").mkdir()
    >>> [p.name for p in remove_stale_partials(final)]
    ['.x.zarr.partial-999999999']
    """
    removed: list[Path] = []
    try:
        siblings = list(final.parent.iterdir())
    except OSError:
        return removed
    for candidate in siblings:
        owner = _partial_owner(candidate.name, final.name)
        if owner is None or owner[0] != HOST or pid_alive(owner[1]) or not candidate.is_dir():
            continue
        if diffraflow_kind(candidate) is None and any(candidate.iterdir()):
            continue  # not recognisably ours: leave it
        size = sum(f.stat().st_size for f in candidate.rglob("*") if f.is_file())
        shutil.rmtree(candidate, ignore_errors=True)
        notify(f"removed {candidate} ({size / 2**20:.1f} MiB), a partial output left by a writer that died "
               f"(pid {owner[1]})")
        removed.append(candidate)
    return removed


def frame_compressors() -> list[BloscCodec]:
    """The codec for frame data: Blosc-LZ4 with bit shuffling.

    Measured on 3,600 Poisson-noise 60x60 uint16 frames (2 cores): 281 MB/s at
    ratio 3.0, against 70 MB/s at ratio 2.9 for zarr's default Zstd; detector
    frames are noisy, so the fast codec loses almost nothing in size.

    Examples
    --------
    >>> frame_compressors()[0].cname.value
    'lz4'
    """
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]


class FrameArrayWriter:
    """Sequential writer of a frame-shaped variable ``(scan_y, scan_x, *frame)``.

    Frames arrive in scan order through :meth:`append`; exactly one shard is
    buffered and written whole when full.

    Examples
    --------
    >>> import numpy as np, zarr
    >>> root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    >>> layout = CubeLayout((2, 2, 3, 3), (1, 2, 3, 3), (2, 2, 3, 3))
    >>> w = FrameArrayWriter(root, "patterns", layout, np.dtype("uint16"))
    >>> w.append(np.arange(36, dtype="uint16").reshape(4, 3, 3)); w.close()
    >>> int(root["patterns"][1, 1, 2, 2])
    35
    """

    def __init__(self, group: zarr.Group, name: str, layout: CubeLayout, dtype: np.dtype[Any],
                 dims: Sequence[str] = SCAN_DIMS, where: str = "input",
                 attributes: dict[str, Any] | None = None, check_finite: bool = True,
                 on_flush: Callable[[int], object] | None = None) -> None:
        self.layout = validate_layout(layout, where=name)
        #: Called with the number of frames persisted (whole shards, a prefix in scan order) after each flush.
        self.on_flush = on_flush
        self.persisted = 0
        self.dtype = np.dtype(dtype)
        self.where = where
        self.name = name
        self.check_finite = check_finite and self.dtype.kind == "f"
        fill = np.nan if self.dtype.kind == "f" else 0
        self.array = group.create_array(
            name, shape=layout.shape, chunks=layout.chunks, shards=layout.shards, dtype=self.dtype,
            dimension_names=list(dims), fill_value=fill, attributes=attributes or {},
            compressors=[*frame_compressors(), *checksum_codecs()], config=ARRAY_CONFIG,
        )
        self._frame_shape: tuple[int, ...] = layout.shape[2:]
        self._n_total = layout.shape[0] * layout.shape[1]
        self._written = 0  # frames appended so far (flat scan index of the next frame)
        self._buffer = np.empty((layout.shards[0] * layout.shards[1], *self._frame_shape), dtype=self.dtype)
        self._fill = 0
        self._shard_origin = (0, 0)

    @classmethod
    def reopen(cls, group: zarr.Group, name: str, where: str = "input", frames_written: int = 0) -> FrameArrayWriter:
        """A writer of an existing frame array, to go on writing regions of an interrupted acquisition.

        ``frames_written`` counts the frames an earlier writer already persisted
        (so that :meth:`close` checks the whole scan). Only :meth:`write_region`
        may be used on it.

        Examples
        --------
        >>> import numpy as np, zarr
        >>> root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
        >>> w = FrameArrayWriter(root, "p", CubeLayout((2, 2, 1, 1), (1, 2, 1, 1), (1, 2, 1, 1)), np.dtype("u1"))
        >>> w.write_region(0, 0, np.ones((1, 2, 1, 1), "u1"))
        >>> again = FrameArrayWriter.reopen(root, "p", frames_written=2)
        >>> again.write_region(1, 0, np.ones((1, 2, 1, 1), "u1")); again.close(); again.layout.shards
        (1, 2, 1, 1)
        """
        self = cls.__new__(cls)
        self.array = stored_array(group, name).with_config(ARRAY_CONFIG)  # the config is not stored: all-zero shards too
        shape = tuple(int(v) for v in self.array.shape)
        chunks = tuple(int(v) for v in self.array.chunks)
        shards = tuple(int(v) for v in (self.array.shards or self.array.chunks))
        self.layout = validate_layout(CubeLayout(shape, chunks, shards), where=name)  # type: ignore[arg-type]
        self.on_flush, self.persisted, self.where, self.name = None, 0, where, name
        self.dtype = np.dtype(str(self.array.dtype))
        self.check_finite = self.dtype.kind == "f"
        self._frame_shape = shape[2:]
        self._n_total = shape[0] * shape[1]
        self._written = int(frames_written)
        self._buffer = np.empty((0, *self._frame_shape), dtype=self.dtype)  # append() is not for reopened arrays
        self._fill, self._shard_origin = 0, (0, 0)
        return self

    @property
    def frames_written(self) -> int:
        """How many frames have been appended."""
        return self._written

    def _shard_frames(self) -> tuple[int, int]:
        """Rows and columns of the shard that starts at the current origin, clipped to the scan."""
        sy, sx = self.layout.shape[:2]
        y0, x0 = self._shard_origin
        return min(self.layout.shards[0], sy - y0), min(self.layout.shards[1], sx - x0)

    def append(self, frames: np.ndarray) -> None:
        """Append frames ``(n, *frame_shape)`` in scan order.

        Raises
        ------
        InputFileError
            Wrong frame shape, too many frames, or non-finite values.
        """
        frames = np.asarray(frames)
        if frames.ndim == len(self._frame_shape):
            frames = frames[None]
        if frames.shape[1:] != self._frame_shape:
            raise InputFileError(self.where, f"frame shape {frames.shape[1:]} does not match {self.name} "
                                 f"frame shape {self._frame_shape}", "check the detector shape of the input")
        if self._written + len(frames) > self._n_total:
            raise InputFileError(self.where, f"more frames than the scan shape {self.layout.shape[:2]} holds "
                                 f"({self._written + len(frames)} > {self._n_total})",
                                 "check --scan-shape: rows x columns must equal the number of frames")
        if self.check_finite and not np.isfinite(frames).all():
            bad = self._written + int(np.flatnonzero(~np.isfinite(frames).reshape(len(frames), -1).all(axis=1))[0])
            raise InputFileError(self.where, f"frame {bad} contains NaN or infinite values",
                                 "repair or drop the bad frames before converting")
        start = 0
        while start < len(frames):
            rows, cols = self._shard_frames()
            capacity = rows * cols
            take = min(capacity - self._fill, len(frames) - start)
            self._buffer[self._fill:self._fill + take] = frames[start:start + take]
            self._fill += take
            start += take
            self._written += take
            if self._fill == capacity:
                self._flush(rows, cols)

    def write_region(self, y0: int, x0: int, block: np.ndarray) -> None:
        """Write a block ``(rows, cols, *frame)`` at scan position ``(y0, x0)``, out of scan order.

        For writers that receive regions in any order (parallel readers, a live
        source): the region must be made of whole shards (edge shards clipped
        to the scan) so that no shard is ever written twice or by two writers.
        Do not mix with :meth:`append` on one variable.

        Raises
        ------
        SchemaError
            The region is not shard-aligned or does not fit.

        Examples
        --------
        >>> import numpy as np, zarr
        >>> root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
        >>> w = FrameArrayWriter(root, "p", CubeLayout((2, 4, 1, 1), (1, 2, 1, 1), (1, 2, 1, 1)), np.dtype("u1"))
        >>> w.write_region(1, 2, np.ones((1, 2, 1, 1), "u1")); w.frames_written
        2
        """
        block = np.asarray(block)
        sy, sx = self.layout.shape[:2]
        ry, rx = self.layout.shards[:2]
        rows, cols = block.shape[:2]
        aligned = y0 % ry == 0 and x0 % rx == 0 and (rows % ry == 0 or y0 + rows == sy) \
            and (cols % rx == 0 or x0 + cols == sx)
        if not aligned or y0 + rows > sy or x0 + cols > sx or block.shape[2:] != self._frame_shape:
            raise SchemaError(f"{self.where}: {self.name}", f"region at ({y0}, {x0}) of shape {block.shape} is "
                              f"not made of whole shards {self.layout.shards} inside {self.layout.shape}",
                              "write regions aligned to the store's shards")
        if self.check_finite and not np.isfinite(block).all():
            raise InputFileError(self.where, f"region at ({y0}, {x0}) contains NaN or infinite values",
                                 "repair or drop the bad frames before writing")
        self.array[y0:y0 + rows, x0:x0 + cols] = block
        self._written += rows * cols

    def _flush(self, rows: int, cols: int) -> None:
        y0, x0 = self._shard_origin
        block = self._buffer[: rows * cols].reshape(rows, cols, *self._frame_shape)
        self.array[y0:y0 + rows, x0:x0 + cols] = block
        self._fill = 0
        self.persisted += rows * cols
        if self.on_flush is not None:
            self.on_flush(self.persisted)
        sx = self.layout.shape[1]
        if x0 + cols < sx:
            self._shard_origin = (y0, x0 + cols)
        else:
            self._shard_origin = (y0 + rows, 0)

    def close(self) -> None:
        """Check that every frame of the scan was written.

        Raises
        ------
        InputFileError
            Fewer frames arrived than the scan shape needs.
        """
        if self._written != self._n_total:
            raise InputFileError(self.where, f"only {self._written} of {self._n_total} frames "
                                 f"({self.layout.shape[0]} x {self.layout.shape[1]}) were read",
                                 "the file is truncated, or --scan-shape is wrong")


class TemporaryStoreWriter:
    """Base of writers that build a store under a temporary name and publish it whole.

    Subclasses set ``final``, ``temp``, ``overwrite`` and ``where`` and call
    :meth:`publish` at the end of their ``finalize``. Used as a context
    manager, leaving the block without publishing (an error, a forgotten
    ``finalize``) deletes the partial store; an existing store at ``final`` is
    replaced only once the new one is complete.
    """

    final: Path
    temp: Path
    overwrite: bool
    where: str
    kind: str = "result"
    _finalized: bool = False
    _lock: StoreLock | None = None

    def claim(self) -> None:
        """Take the output's writer lock (one writer per store); released by publish or abort."""
        self._lock = StoreLock(self.final, self.where).acquire()

    def publish(self) -> Path:
        """Move the finished temporary store to its final name.

        Returns
        -------
        pathlib.Path
            The final store path.
        """
        if self.final.exists():
            if not self.overwrite:
                raise OutputExistsError(self.where, "output appeared while writing",
                                        "choose another name, or pass --overwrite")
            check_replaceable(self.final, self.kind)  # checked again: it may have changed meanwhile
            # Keep the old store until the new one is in place: move it aside first.
            trash = self.final.parent / f".{self.final.name}.old-{HOST}-{os.getpid()}"
            os.replace(self.final, trash)
            os.replace(self.temp, self.final)
            shutil.rmtree(trash, ignore_errors=True)  # a diffraflow store of our kind (checked above)
            notify(f"replaced the earlier {self.kind.replace('_', ' ')} store at {self.final}")
        else:
            os.replace(self.temp, self.final)
        self._finalized = True
        self._release()
        return self.final

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def abort(self) -> None:
        """Delete the partial store (ours: named by this process) and release the lock."""
        if not self._finalized:
            shutil.rmtree(self.temp, ignore_errors=True)
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None or not self._finalized:
            self.abort()


class CubeWriter(TemporaryStoreWriter):
    """Writes one new scan cube; use :func:`create_cube` to make one.

    The writer is a context manager: leaving the block without
    :meth:`finalize` (for instance on an error) deletes the partial store.

    With ``in_place=True`` (an acquisition: frames that exist nowhere else)
    the cube is written at its final path from the start, marked incomplete,
    and an **acquisition record** (``_acquisition/progress.json``, kept apart
    from the data) says after every flushed shard how many frames are
    persisted, so readers can follow it (``diffraflow info`` shows "acquiring:
    N of M frames", ``diffraflow run`` processes what is there and waits for
    the rest). Such a cube is never deleted: an error marks it ``aborted``.
    """

    kind = "scan_cube"

    def __init__(self, final: Path, temp: Path, layout: CubeLayout, dtype: np.dtype,
                 attrs: ScanAttrs, overwrite: bool, where: str, in_place: bool = False) -> None:
        import zarr

        self.final = final
        self.in_place = in_place
        self.temp = final if in_place else temp
        self.layout = layout
        self.overwrite = overwrite
        self.where = where
        self.attrs = attrs
        self.claim()
        if in_place and final.exists():  # an earlier diffraflow cube (prepare_output_path checked it)
            shutil.rmtree(final)
            notify(f"replaced the earlier scan cube store at {final}")
        if self.temp.exists():  # our own name (host and pid): left by this very process
            shutil.rmtree(self.temp)
        temp = self.temp
        try:
            self.group = zarr.open_group(str(temp), mode="w", zarr_format=3)
        except PermissionError:
            raise DestinationNotWritableError(str(final), "cannot create the store",
                                              "choose a writable output directory") from None
        self.group.attrs.update({
            "diffraflow": StoreMarker(kind="scan_cube").model_dump(),
            "scan": attrs.model_dump(mode="json"),
        })
        self.patterns = FrameArrayWriter(self.group, "patterns", layout, dtype, where=where,
                                         on_flush=self._persisted if in_place else None)
        self._frame_writers: list[FrameArrayWriter] = [self.patterns]
        self._finalized = False
        #: Further fields of the acquisition record, set by :meth:`record_acquisition` (kept to the end).
        self.acquisition_extra: dict[str, Any] = {}
        if in_place:
            self._persisted(0)

    @classmethod
    def reopen(cls, path: str | os.PathLike[str], where: str | None = None) -> CubeWriter:
        """Go on writing an in-place acquisition whose writer stopped before it was complete.

        The cube keeps its metadata, creation time and every persisted shard;
        the new writer takes the store's lock (refused while the old writer
        lives), starts from the acquisition record's fields (kept in
        :attr:`acquisition_extra`) and writes the remaining regions with
        ``patterns.write_region``. For live receivers that resume a scan.

        Raises
        ------
        IncompleteStoreError
            ``path`` is not an unfinished in-place acquisition.
        StoreLockedError
            Its writer is still running.

        Examples
        --------
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "acq.zarr"
        >>> w = create_cube(out, scan_shape=(2, 2), det_shape=(1, 1), dtype="u1", in_place=True,
        ...                 attrs={"modality": "4dstem", "detector": {"shape": [1, 1]}},
        ...                 layout=CubeLayout((2, 2, 1, 1), (1, 2, 1, 1), (1, 2, 1, 1)))
        >>> w.patterns.write_region(0, 0, np.ones((1, 2, 1, 1), "u1")); w.record_acquisition(2, persisted=[[0, 2]])
        >>> w._release()  # the writer stops without finishing (killed, interrupted)
        >>> again = CubeWriter.reopen(out)
        >>> again.acquisition_extra["persisted"], again.patterns.frames_written
        ([[0, 2]], 2)
        >>> again.patterns.write_region(1, 0, np.ones((1, 2, 1, 1), "u1")); _ = again.finalize()
        >>> acquisition_progress(out)["state"], int(open_cube(out)["patterns"].sum())
        ('complete', 4)
        """
        import zarr

        final = Path(path).expanduser().absolute()
        where = where or str(final)
        progress = acquisition_progress(final)
        if progress is None or progress.get("state") not in ("acquiring", "aborted"):
            raise IncompleteStoreError(where, "is not an unfinished acquisition written in place "
                                       f"(state {progress.get('state') if progress else None!r})",
                                       "resume only a cube that a live acquisition left unfinished")
        self = cls.__new__(cls)
        self.final = self.temp = final
        self.in_place, self.overwrite, self.where, self._finalized = True, False, where, False
        self.claim()
        try:
            self.group = zarr.open_group(str(final), mode="r+", zarr_format=3)
            self.attrs = validate_scan_attrs(dict(cast(Mapping[str, Any], self.group.attrs.get("scan", {}))),
                                             where=where)
            extra = {k: v for k, v in progress.items() if k not in ("state", "frames_expected", "writer", "updated")}
            written = sum(int(b) - int(a) for a, b in extra.get("persisted", [])) if "persisted" in extra \
                else int(progress.get("frames_persisted", 0))
            self.patterns = FrameArrayWriter.reopen(self.group, "patterns", where, frames_written=written)
        except BaseException:
            self._release()
            raise
        self.layout = self.patterns.layout
        self._frame_writers = [self.patterns]
        self.acquisition_extra = extra
        self._persisted(int(progress.get("frames_persisted", 0)))
        return self

    def record_acquisition(self, frames_persisted: int, **fields: Any) -> None:
        """Publish an in-place acquisition's progress: frames persisted and further record fields.

        For writers that persist regions out of scan order (:meth:`FrameArrayWriter.write_region`):
        ``persisted`` (a list of ``[start, stop)`` flat frame-index ranges whose
        shards are written) tells followers (:class:`~diffraflow.flow.sources.ZarrCubeSource`)
        which regions they may read; other fields (counts, missing frames) are
        kept for readers and for :meth:`finalize`.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "r.zarr"
        >>> w = create_cube(out, scan_shape=(1, 2), det_shape=(1, 1), dtype="u1", in_place=True,
        ...                 attrs={"modality": "4dstem", "detector": {"shape": [1, 1]}})
        >>> w.record_acquisition(1, persisted=[[1, 2]]); acquisition_progress(out)["persisted"]
        [[1, 2]]
        >>> w.abort()
        """
        self.acquisition_extra = dict(fields, frames_persisted=int(frames_persisted))
        self._persisted(int(frames_persisted))

    def _persisted(self, frames: int, state: str = "acquiring") -> None:
        n = self.layout.shape[0] * self.layout.shape[1]
        record = {"state": state, "frames_persisted": int(frames), "frames_expected": n,
                  "writer": {"host": HOST, "pid": os.getpid()}}
        record.update({k: v for k, v in getattr(self, "acquisition_extra", {}).items() if k != "state"})
        write_acquisition_progress(self.temp, record)

    def add_frame_variable(self, name: str, dtype: Any = None, dims: Sequence[str] = SCAN_DIMS) -> FrameArrayWriter:
        """Another frame-shaped variable (e.g. ground-truth clean patterns), same layout.

        Examples
        --------
        >>> # writer.add_frame_variable("clean_patterns", "float32").append(frames)
        """
        writer = FrameArrayWriter(self.group, name, self.layout, np.dtype(dtype or self.patterns.dtype),
                                  dims=dims, where=self.where)
        self._frame_writers.append(writer)
        return writer

    def write_variable(self, name: str, data: np.ndarray, dims: Sequence[str],
                       attributes: dict[str, Any] | None = None, ground_truth: bool = False) -> None:
        """Write a small whole variable (per-point map, look-up table, ground truth).

        Parameters
        ----------
        name
            Variable name, e.g. ``"pc"`` or ``"true_rotation"``.
        data
            The array; its leading dims are usually ``scan_y, scan_x``.
        dims
            One name per axis of ``data``.
        ground_truth
            Record the variable in the ``scan.ground_truth`` list.
        """
        data = np.asarray(data)
        if len(dims) != data.ndim:
            raise SchemaError(f"{self.where}: {name}", f"{data.ndim}-d data but dims {list(dims)}",
                              "give one dimension name per axis")
        chunks = tuple(max(1, s) for s in data.shape)
        arr = self.group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype,
                                      dimension_names=list(dims), attributes=attributes or {},
                                      compressors=[*_default_compressors(data.dtype), *checksum_codecs()],
                                      config=ARRAY_CONFIG)
        arr[...] = data
        if ground_truth and name not in self.attrs.ground_truth:
            self.attrs.ground_truth.append(name)

    def finalize(self) -> Path:
        """Check completeness, mark the store complete and move it to its final name.

        Returns
        -------
        pathlib.Path
            The final store path.
        """
        for writer in self._frame_writers:
            writer.close()
        scan = self.attrs.model_copy(update={"scan_shape": self.layout.shape[:2]})
        validate_scan_attrs(scan, where=str(self.final))
        self.group.attrs.update({
            "scan": scan.model_dump(mode="json"),
            "manifest": store_manifest(self.temp),
            "diffraflow": StoreMarker(kind="scan_cube", complete=True).model_dump(),
        })
        if self.in_place:
            self._persisted(self.patterns.persisted, "complete")
            self._finalized = True
            self._release()
            return self.final
        return self.publish()

    def abort(self) -> None:
        """Delete the partial store; an in-place acquisition is kept and marked ``aborted`` instead."""
        if self.in_place and not self._finalized:
            try:
                self._persisted(self.patterns.persisted, "aborted")
            finally:
                self._release()
            return
        super().abort()


def create_cube(
    path: str | os.PathLike[str],
    *,
    scan_shape: tuple[int, int],
    det_shape: tuple[int, int],
    dtype: Any,
    attrs: dict[str, Any] | ScanAttrs,
    overwrite: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    chunk_frames: int | None = None,
    layout: CubeLayout | None = None,
    where: str | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
    in_place: bool = False,
) -> CubeWriter:
    """Start writing a new scan cube at ``path``.

    Parameters
    ----------
    path
        Final store path (``.zarr`` directory). Written under a temporary name
        until :meth:`CubeWriter.finalize`.
    scan_shape, det_shape
        ``(scan_y, scan_x)`` and ``(det_y, det_x)``.
    dtype
        Pattern dtype.
    attrs
        The ``scan`` attribute record, validated here; ``detector.shape`` must
        equal ``det_shape``.
    overwrite
        Replace an existing store (only once the new one is complete).
    chunk_bytes, shard_bytes, chunk_frames, layout
        Chunking; see :func:`diffraflow.schemas.chunking.choose_layout`.
    where
        Name of the input for error messages (defaults to ``path``).
    inputs
        Files the cube is made from: never overwritten, whatever ``overwrite`` says.
    in_place
        Write at ``path`` directly with an acquisition record that readers
        follow (for frames arriving live); see :class:`CubeWriter`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.zarr"
    >>> w = create_cube(out, scan_shape=(1, 1), det_shape=(2, 2), dtype="uint8",
    ...                 attrs={"modality": "4dstem", "detector": {"shape": [2, 2]}})
    >>> w.abort(); out.exists()
    False
    """
    final, temp = prepare_output_path(path, overwrite, kind="scan_cube", inputs=inputs)
    where = where or str(final)
    scan = validate_scan_attrs(attrs, where=where)
    if tuple(scan.detector.shape) != tuple(det_shape):
        raise SchemaError(f"{where}: detector.shape", f"metadata says {list(scan.detector.shape)} but frames are "
                          f"{list(det_shape)}", "make detector.shape equal to the frame shape")
    dtype = np.dtype(dtype)
    if layout is None:
        layout = choose_layout(scan_shape, det_shape, dtype.itemsize, chunk_bytes, shard_bytes, chunk_frames)
    return CubeWriter(final, temp, layout, dtype, scan, overwrite, where, in_place=in_place)


def stored_array(group: zarr.Group, name: str) -> zarr.Array[ArrayV3Metadata]:
    """``group[name]``, typed as what it is in every diffraflow store: a Zarr v3 array, not a group.

    Zarr's item access may return either; only the store's layout says which.

    Examples
    --------
    >>> import zarr
    >>> root = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    >>> _ = root.create_array("a", shape=(2,), dtype="u1")
    >>> stored_array(root, "a").shape
    (2,)
    """
    return cast("zarr.Array[ArrayV3Metadata]", group[name])


def dimension_names(array: zarr.Array[Any]) -> tuple[str | None, ...]:
    """The ``dimension_names`` of a Zarr v3 array; ``()`` when it has none (Zarr v2 metadata has none).

    Examples
    --------
    >>> import zarr
    >>> root = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    >>> dimension_names(root.create_array("a", shape=(2,), dtype="u1", dimension_names=["x"]))
    ('x',)
    """
    return tuple(getattr(array.metadata, "dimension_names", None) or ())


def open_group_checked(path: str | os.PathLike[str], kind: str | None = None,
                       require_complete: bool = True) -> zarr.Group:
    """Open a diffraflow Zarr group and check its marker.

    Raises
    ------
    StoreNotFoundError
        Not a directory, not Zarr, or not a diffraflow store.
    IncompleteStoreError
        The store's writer never finished.

    Examples
    --------
    >>> open_group_checked("/nonexistent.zarr")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.StoreNotFoundError: /nonexistent.zarr: no such store (fix: check the path; create a store with 'diffraflow convert' or 'diffraflow simulate')
    """
    import zarr

    path = Path(path)
    if not path.exists():
        raise StoreNotFoundError(str(path), "no such store",
                                 "check the path; create a store with 'diffraflow convert' or 'diffraflow simulate'")
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception:
        raise StoreNotFoundError(str(path), "not a Zarr v3 group",
                                 "pass a store written by diffraflow, or convert the file first") from None
    marker_record = group.attrs.get("diffraflow")
    if not isinstance(marker_record, dict):
        raise StoreNotFoundError(str(path), "Zarr group has no 'diffraflow' attribute",
                                 "pass a store written by diffraflow, or convert the data first")
    marker = validate_store_marker(marker_record, str(path))
    if marker.format_version > FORMAT_VERSION:
        raise SchemaError(f"{path}: diffraflow.format_version", f"store format {marker.format_version} is newer "
                          f"than this diffraflow understands ({FORMAT_VERSION})", "upgrade diffraflow")
    if kind is not None and marker.kind != kind:
        raise SchemaError(f"{path}: diffraflow.kind", f"expected a {kind} store, got {marker.kind}",
                          "pass the right store")
    if require_complete and not marker.complete:
        raise IncompleteStoreError(str(path), "store is incomplete (its writer did not finish)",
                                   "re-run the command that makes it; delete the partial store")
    if marker.complete:
        check_manifest(path)
    return group


def _default_compressors(dtype: np.dtype) -> list[Any]:
    from zarr.codecs import ZstdCodec

    return [ZstdCodec(level=0)]


# -- completeness: manifest of chunk files -----------------------------------------------------------

def _array_nodes(root: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    import json

    nodes: dict[str, tuple[Path, dict[str, Any]]] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            record = json.loads((folder / "zarr.json").read_text())
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and record.get("node_type") == "array":
            nodes[folder.relative_to(root).as_posix()] = (folder, record)
            continue  # chunk folders below an array hold no nodes
        if folder != root and record is None:
            continue  # not a zarr node (e.g. _progress)
        try:
            stack.extend(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
        except OSError:
            continue
    return nodes


def _grid(record: dict[str, Any]) -> tuple[list[int], str]:
    shape = [int(v) for v in record["shape"]]
    chunk = [int(v) for v in record["chunk_grid"]["configuration"]["chunk_shape"]]
    encoding = record.get("chunk_key_encoding", {})
    separator = encoding.get("configuration", {}).get("separator", "/")
    counts = [math.ceil(n / c) if c else 0 for n, c in zip(shape, chunk, strict=True)]
    return counts, separator


def _chunk_key(index: Sequence[int], separator: str) -> str:
    return separator.join(["c", *map(str, index)]) if index else "c"


def _present_keys(folder: Path, separator: str) -> set[str]:
    if separator == "/":
        base = folder / "c"
        if not base.exists():
            return set()
        if base.is_file():
            return {"c"}
        return {"c/" + f.relative_to(base).as_posix() for f in base.rglob("*") if f.is_file()}
    return {f.name for f in folder.iterdir() if f.is_file() and f.name.startswith("c")}


def store_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a complete store holds: chunk files per array (recorded in the ``manifest`` attribute).

    Examples
    --------
    >>> import zarr, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> g = zarr.open_group(folder, mode="w")
    >>> g.create_array("a", shape=(4, 3), chunks=(2, 3), dtype="u1", config=ARRAY_CONFIG)[...] = 0
    >>> store_manifest(folder)
    {'version': 1, 'arrays': {'a': {'chunk_files': 2}}}
    """
    arrays = {}
    for name, (_folder, record) in sorted(_array_nodes(Path(path)).items()):
        counts, _ = _grid(record)
        arrays[name] = {"chunk_files": int(np.prod(counts)) if counts else 1}
    return {"version": 1, "arrays": arrays}


def check_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Check a complete store's chunk files against its ``manifest``; None when it has none (older stores).

    Raises
    ------
    DataCorruptionError
        An array or chunk file is missing, or the array metadata no longer
        matches what was written.

    Examples
    --------
    >>> check_manifest("/no/such/store.zarr") is None
    True
    """
    import json

    root = Path(path)
    try:
        attrs = json.loads((root / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None
    manifest = attrs.get("manifest")
    if not isinstance(manifest, dict):
        return None
    fix = "the store is damaged: restore it from a copy, or re-create it with the command that made it"
    nodes = _array_nodes(root)
    for name, entry in dict(manifest.get("arrays", {})).items():
        if name not in nodes:
            raise DataCorruptionError(f"{root}: {name}", "array listed in the manifest is missing", fix)
        folder, record = nodes[name]
        counts, separator = _grid(record)
        expected = int(np.prod(counts)) if counts else 1
        if int(entry.get("chunk_files", -1)) != expected:
            raise DataCorruptionError(f"{root}: {name}", f"metadata describes {expected} chunk files but "
                                      f"{entry.get('chunk_files')} were written", fix)
        present = _present_keys(folder, separator)
        if len(present) < expected:
            missing = next(k for k in (_chunk_key(i, separator) for i in itertools.product(*map(range, counts)))
                           if k not in present)
            raise DataCorruptionError(f"{root}: {name}", f"{expected - len(present)} of {expected} chunk files "
                                      f"are missing (first: {name}/{missing})", fix)
    return manifest


def check_region_present(array_path: str | os.PathLike[str], record: dict[str, Any], y: tuple[int, int],
                         x: tuple[int, int]) -> None:
    """Raise DataCorruptionError when a chunk file under scan rows ``y`` and columns ``x`` is gone.

    ``record`` is the array's ``zarr.json``; the array's leading dims are ``scan_y, scan_x``.

    Examples
    --------
    >>> rec = {"shape": [2, 2, 3, 3], "chunk_grid": {"configuration": {"chunk_shape": [1, 2, 3, 3]}}}
    >>> check_region_present("/no/such/array", rec, (0, 1), (0, 2))
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.DataCorruptionError: /no/such/array: chunk file c/0/0/0/0 is missing (fix: the store is damaged: restore it from a copy, or re-create it with the command that made it)
    """
    counts, separator = _grid(record)
    chunk = [int(v) for v in record["chunk_grid"]["configuration"]["chunk_shape"]]
    rows = range(y[0] // chunk[0], math.ceil(y[1] / chunk[0]))
    cols = range(x[0] // chunk[1], math.ceil(x[1] / chunk[1]))
    rest = list(itertools.product(*map(range, counts[2:])))
    folder = Path(array_path)
    for iy, ix in itertools.product(rows, cols):
        for tail in rest:
            key = _chunk_key((iy, ix, *tail), separator)
            if not (folder / key).is_file():
                raise DataCorruptionError(str(folder), f"chunk file {key} is missing",
                                          "the store is damaged: restore it from a copy, or re-create it with "
                                          "the command that made it")


def verify_checksums(path: str | os.PathLike[str], progress: bool = False) -> int:
    """Read every stored chunk of every array once, so damaged bytes fail their CRC-32C; returns bytes read.

    Reads one shard (or chunk) at a time, so memory stays at one shard.

    Raises
    ------
    DataCorruptionError
        A chunk fails its checksum or cannot be decoded.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "v.zarr"
    >>> with create_cube(out, scan_shape=(1, 2), det_shape=(3, 3), dtype="uint8",
    ...                  attrs={"modality": "ebsd", "detector": {"shape": [3, 3]}}) as w:
    ...     w.patterns.append(np.zeros((2, 3, 3), "uint8")); _ = w.finalize()
    >>> verify_checksums(out) > 0
    True
    """
    import zarr

    root = Path(path)
    nodes = _array_nodes(root)
    blocks: list[tuple[str, tuple[int, ...], list[int]]] = []
    for name, (_folder, record) in sorted(nodes.items()):
        counts, _ = _grid(record)
        outer = [int(v) for v in record["chunk_grid"]["configuration"]["chunk_shape"]]
        blocks.extend((name, index, outer) for index in itertools.product(*map(range, counts)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(blocks), unit="chunk", desc="verifying checksums", leave=False)
    group = zarr.open_group(str(root), mode="r", zarr_format=3)
    total = 0
    try:
        for name, index, outer in blocks:
            selection = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, outer, strict=True))
            try:
                total += int(np.asarray(stored_array(group, name)[selection]).nbytes)
            except ValueError as exc:
                raise DataCorruptionError(f"{root}: {name}", f"chunk {list(index)} is damaged ({exc})",
                                          "restore the store from a copy, or re-create it") from None
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return total


ACQUISITION_RECORD = "_acquisition/progress.json"


def write_acquisition_progress(store: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Replace the acquisition record of an in-place cube atomically (readers never see half of it).

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_acquisition_progress(folder, {"state": "acquiring", "frames_persisted": 0, "frames_expected": 4})
    >>> acquisition_progress(folder)["state"]
    'acquiring'
    """
    import datetime as dt
    import json

    target = Path(store) / ACQUISITION_RECORD
    target.parent.mkdir(exist_ok=True)
    body = {**record, "updated": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")}
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, target)


def acquisition_progress(store: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The acquisition record of a cube written in place, or None (a cube written whole).

    Examples
    --------
    >>> acquisition_progress("/no/such/cube.zarr") is None
    True
    """
    import json

    try:
        record = json.loads((Path(store) / ACQUISITION_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def open_cube_group(path: str | os.PathLike[str], allow_acquiring: bool = False) -> tuple[zarr.Group, ScanAttrs]:
    """Open a complete scan cube and check that it agrees with itself; returns ``(group, ScanAttrs)``.

    Beyond the schema, the metadata must describe the arrays actually stored:
    ``patterns`` is 4-d with the scan-cube dimension names, ``detector.shape``
    equals its frame shape, ``scan_shape`` its scan shape, and every per-point
    variable (leading dims ``scan_y, scan_x``) has the scan shape.

    Raises
    ------
    SchemaError
        The store contradicts itself (a hand-edited attribute, say).

    Examples
    --------
    >>> open_cube_group("/no/such/cube.zarr")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.StoreNotFoundError: /no/such/cube.zarr: no such store (fix: check the path; create a store with 'diffraflow convert' or 'diffraflow simulate')
    """
    progress = acquisition_progress(path) or {}
    state = progress.get("state")
    if state == "aborted":
        raise InputFileError(str(path), f"the acquisition was aborted after {progress.get('frames_persisted')} "
                             f"of {progress.get('frames_expected')} frames", "process the frames there are after "
                             "converting them to a complete cube, or re-acquire")
    if state == "acquiring" and not allow_acquiring:
        raise IncompleteStoreError(str(path), f"still being acquired ({progress.get('frames_persisted')} of "
                                   f"{progress.get('frames_expected')} frames so far)",
                                   "wait for the acquisition to end, or run a pipeline on it: runs follow it")
    group = open_group_checked(path, kind="scan_cube", require_complete=state != "acquiring")
    scan = validate_scan_attrs(dict(cast(Mapping[str, Any], group.attrs.get("scan", {}))), where=str(path))
    fix = "the store's metadata was edited or damaged; restore it, or re-create the store with diffraflow"
    if "patterns" not in group:
        raise SchemaError(f"{path}: patterns", "store has no 'patterns' array", "re-create the store")
    patterns = stored_array(group, "patterns")
    shape = tuple(int(v) for v in patterns.shape)
    dims = dimension_names(patterns)
    if len(shape) != 4 or dims != SCAN_DIMS:
        raise SchemaError(f"{path}: patterns", f"shape {list(shape)} with dimension names {list(dims)}, expected "
                          f"4-d {list(SCAN_DIMS)}", fix)
    if tuple(scan.detector.shape) != shape[2:]:
        raise SchemaError(f"{path}: scan.detector.shape", f"metadata says {list(scan.detector.shape)} but the "
                          f"patterns are {list(shape[2:])}", fix)
    if scan.scan_shape is not None and tuple(scan.scan_shape) != shape[:2]:
        raise SchemaError(f"{path}: scan.scan_shape", f"metadata says {list(scan.scan_shape)} but the patterns "
                          f"hold {list(shape[:2])}", fix)
    for name, arr in group.arrays():
        names = dimension_names(arr)
        if name == "patterns" or names[:2] != SCAN_DIMS[:2]:
            continue
        if tuple(int(v) for v in arr.shape[:2]) != shape[:2]:
            raise SchemaError(f"{path}: {name}", f"per-point variable of scan shape {list(arr.shape[:2])}, the "
                              f"patterns have {list(shape[:2])}", fix)
        if name == "pc" and (arr.ndim != 3 or arr.shape[2] != 3):
            raise SchemaError(f"{path}: pc", f"per-point projection centre of shape {list(arr.shape)}, expected "
                              f"{[*shape[:2], 3]}", fix)
    return group, scan


def store_marker(path: str | os.PathLike[str]) -> StoreMarker:
    """The ``diffraflow`` marker of a store, complete or not.

    Examples
    --------
    >>> # store_marker("scan.zarr").complete
    """
    group = open_group_checked(path, require_complete=False)
    return validate_store_marker(dict(cast(Mapping[str, Any], group.attrs["diffraflow"])), str(path))


def read_scan_attrs(path: str | os.PathLike[str]) -> ScanAttrs:
    """Validated ``scan`` attributes of a complete cube.

    Examples
    --------
    >>> # read_scan_attrs("scan.zarr").detector.pc
    """
    return open_cube_group(path)[1]


def open_cube(path: str | os.PathLike[str], chunks: str | dict[str, Any] | None = "store") -> xr.Dataset:
    """Open a complete scan cube lazily as an ``xarray.Dataset``.

    Parameters
    ----------
    path
        The ``.zarr`` store.
    chunks
        ``"store"`` (default) gives dask chunks equal to the stored chunks;
        anything else is passed to xarray (``None`` for numpy arrays loaded
        on access).

    Returns
    -------
    xarray.Dataset
        ``patterns`` with dims ``(scan_y, scan_x, det_y, det_x)``, ground
        truth and per-point variables; ``ds.attrs["scan"]`` holds the
        validated metadata as a dict.

    Examples
    --------
    >>> # ds = open_cube("scan.zarr"); ds["patterns"].data  -> dask array
    """
    import xarray as xr

    group, scan = open_cube_group(path)
    patterns = stored_array(group, "patterns")
    if chunks == "store":
        chunks = dict(zip(SCAN_DIMS, patterns.chunks, strict=True))
    # any other string is passed on for xarray to accept ("auto") or reject
    ds: xr.Dataset = xr.open_zarr(str(path), consolidated=False, zarr_format=3,
                                  chunks=cast("dict[str, Any] | Literal['auto'] | None", chunks))
    ds.attrs = {"scan": scan.model_dump(mode="json"),
                "diffraflow": dict(cast(Mapping[str, Any], group.attrs["diffraflow"]))}
    return ds

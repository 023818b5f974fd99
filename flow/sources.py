"""Chunk sources: where the frames of a run come from.

A source tiles the scan into **regions** (the unit of one task) and reads one
region's frames on demand, wherever the task runs. Only the source object (a
path and a grid, never data) travels to workers, so the client never holds
frames.

:class:`ChunkSource` is the abstract protocol; :class:`ZarrCubeSource` reads a
scan cube written by :mod:`diffraflow.flow.store`, :class:`ArraySource` wraps an
in-memory array (tests, notebooks). A live detector stream will implement the
same protocol later.

Regions follow the cube chunking rules (:mod:`diffraflow.schemas.chunking`): a band of
whole rows, or a run of frames inside one row, on a regular grid so that a
region maps to exactly one chunk of every per-frame result array.

Examples
--------
>>> import numpy as np
>>> src = ArraySource(np.zeros((3, 4, 2, 2), "uint8"), chunk_frames=2)
>>> [(r.index, r.y, r.x) for r in src.regions()][:3]
[(0, (0, 1), (0, 2)), (1, (0, 1), (2, 4)), (2, (1, 2), (0, 2))]
>>> src.read(next(iter(src.regions()))).shape
(2, 2, 2)
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import numpy as np
from diffraflow.operators.base import InputSpec
from diffraflow.schemas.chunking import choose_layout
from diffraflow.schemas.errors import SchemaError

if TYPE_CHECKING:
    import zarr
    from zarr.core.metadata import ArrayV3Metadata

__all__ = ["Region", "ChunkSource", "GrowingSource", "ZarrCubeSource", "ArraySource", "region_grid",
           "iter_regions"]


@dataclass(frozen=True)
class Region:
    """One task's share of the scan: rows ``y[0]:y[1]`` and columns ``x[0]:x[1]``.

    Examples
    --------
    >>> r = Region(3, (1, 2), (0, 4), scan_x=4)
    >>> r.n, r.flat_start, r.label()
    (4, 4, 'chunk 3 (scan_y 1:2, scan_x 0:4)')
    """

    index: int
    y: tuple[int, int]
    x: tuple[int, int]
    scan_x: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y[1] - self.y[0], self.x[1] - self.x[0])

    @property
    def n(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def flat_start(self) -> int:
        return self.y[0] * self.scan_x + self.x[0]

    def scan_index(self) -> np.ndarray:
        """``(n, 2)`` array of the ``(y, x)`` positions of the region's frames, in scan order."""
        yy, xx = np.meshgrid(np.arange(*self.y), np.arange(*self.x), indexing="ij")
        return np.stack([yy.ravel(), xx.ravel()], axis=1)

    def label(self) -> str:
        """Human name used in progress files and error messages."""
        return f"chunk {self.index} (scan_y {self.y[0]}:{self.y[1]}, scan_x {self.x[0]}:{self.x[1]})"


def region_grid(scan_shape: tuple[int, int], det_shape: tuple[int, int], itemsize: int,
                chunk_frames: int | None = None, default: tuple[int, int] | None = None) -> tuple[int, int]:
    """The ``(rows, cols)`` of one region: ``chunk_frames`` per the chunking rules, else ``default``.

    Examples
    --------
    >>> region_grid((10, 6), (4, 4), 1, chunk_frames=4)
    (1, 4)
    >>> region_grid((10, 6), (4, 4), 1, chunk_frames=13)
    (2, 6)
    """
    if chunk_frames is not None:
        if chunk_frames < 1:
            raise SchemaError("chunk_frames", f"must be a positive number of frames, got {chunk_frames}",
                              "pass --chunk-frames 1 or more")
        layout = choose_layout(scan_shape, det_shape, itemsize, chunk_frames=int(chunk_frames))
        return layout.chunks[0], layout.chunks[1]
    if default is not None:
        return int(default[0]), int(default[1])
    layout = choose_layout(scan_shape, det_shape, itemsize)
    return layout.chunks[0], layout.chunks[1]


def iter_regions(scan_shape: tuple[int, int], grid: tuple[int, int]) -> Iterator[Region]:
    """Regions of a regular ``grid`` over the scan, in scan order.

    Examples
    --------
    >>> [r.x for r in iter_regions((1, 5), (1, 2))]
    [(0, 2), (2, 4), (4, 5)]
    """
    sy, sx = scan_shape
    gy, gx = grid
    index = 0
    for y0 in range(0, sy, gy):
        for x0 in range(0, sx, gx):
            yield Region(index, (y0, min(y0 + gy, sy)), (x0, min(x0 + gx, sx)), scan_x=sx)
            index += 1


@runtime_checkable
class ChunkSource(Protocol):
    """What the engine needs from a source of frames.

    Attributes
    ----------
    spec
        Scan and frame shapes, dtype and metadata of the frames.
    grid
        ``(rows, cols)`` of one region (the chunk shape of per-frame results).
    """

    spec: InputSpec
    grid: tuple[int, int]

    def regions(self) -> Iterator[Region]:
        """The regions to process, in scan order."""
        ...

    def read(self, region: Region) -> np.ndarray:
        """Frames of ``region`` as ``(n, det_y, det_x)``, in scan order."""
        ...

    def identity(self) -> dict[str, Any]:
        """A JSON record identifying the data (recorded in result stores to refuse wrong resumes)."""
        ...


@runtime_checkable
class GrowingSource(ChunkSource, Protocol):
    """A source whose regions become readable over time (a cube still being written, a live stream).

    :meth:`ChunkSource.regions` still lists every region of the scan (the
    scan shape is known from the start); :meth:`poll` says which of them can
    be read now. The engine waits on "a task finished" and "new regions" together.
    """

    growing: bool

    def poll(self, timeout: float) -> tuple[list[Region], bool]:
        """Regions that became readable since the last call, waiting up to ``timeout`` s for one;
        and whether the source has ended (no region will come any more)."""
        ...


# Per-process cache of opened Zarr arrays: a task re-opening the store for
# every chunk would re-read its metadata each time.
_OPEN: dict[str, zarr.Array[ArrayV3Metadata]] = {}
_OPEN_LOCK = threading.Lock()


def read_checked(path: str, variable: str, region: Region, det_shape: tuple[int, ...]) -> np.ndarray:
    """Read ``region`` of a frame variable, refusing missing chunk files and checksum failures.

    Zarr reads a chunk whose file is gone as fill values; a run must never
    compute on those, so the files under the region are checked first, and a
    CRC-32C mismatch (damaged bytes) becomes a one-line error naming the chunk.

    Examples
    --------
    >>> read_checked("/no/such.zarr", "patterns", Region(0, (0, 1), (0, 1), 1), (2, 2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: ...
    """
    from diffraflow.flow.store import check_region_present
    from diffraflow.schemas.errors import DataCorruptionError

    arr = _open_patterns(path, variable)
    folder = Path(path) / variable
    check_region_present(folder, arr.metadata.to_dict(), region.y, region.x)
    try:
        block = arr[region.y[0]:region.y[1], region.x[0]:region.x[1]]
    except ValueError as exc:
        if "checksum" not in str(exc).lower():
            raise
        raise DataCorruptionError(f"{folder}: {region.label()}", "stored bytes fail their CRC-32C checksum "
                                  "(the file was damaged after writing)",
                                  "restore the store from a copy, or re-create it") from None
    return np.asarray(block).reshape(region.n, *det_shape)


def _open_patterns(path: str, variable: str) -> zarr.Array[ArrayV3Metadata]:
    key = f"{path}::{variable}"
    arr = _OPEN.get(key)
    if arr is None:
        import zarr
        from diffraflow.flow.store import stored_array

        with _OPEN_LOCK:
            arr = _OPEN.get(key)
            if arr is None:
                arr = stored_array(zarr.open_group(path, mode="r", zarr_format=3), variable)
                _OPEN[key] = arr
    return arr


class ZarrCubeSource:
    """Frames of a scan cube (:func:`diffraflow.flow.store.open_cube` layout), complete or still being acquired.

    Opening checks the store marker and metadata and reads no frames. A cube
    written in place by an acquisition (``create_cube(..., in_place=True)``)
    is *followed*: :attr:`growing` is true, and :meth:`poll` hands out the
    regions its acquisition record lists as persisted, until it is complete.

    Parameters
    ----------
    path
        The ``.zarr`` scan cube.
    chunk_frames
        Frames per region; default: the store's own chunks, so each task
        reads whole stored chunks.
    variable
        The frame variable (default ``patterns``).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from diffraflow.flow.store import create_cube
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "s.zarr"
    >>> with create_cube(out, scan_shape=(2, 3), det_shape=(4, 4), dtype="uint8",
    ...                  attrs={"modality": "ebsd", "detector": {"shape": [4, 4]}}) as w:
    ...     w.patterns.append(np.ones((6, 4, 4), "uint8")); _ = w.finalize()
    >>> src = ZarrCubeSource(out, chunk_frames=3)
    >>> src.spec.scan_shape, src.grid, int(src.read(next(iter(src.regions()))).sum())
    ((2, 3), (1, 3), 48)
    """

    def __init__(self, path: str | os.PathLike[str], chunk_frames: int | None = None, variable: str = "patterns") -> None:
        from diffraflow.flow.store import acquisition_progress, open_cube_group, stored_array

        self.path = str(Path(path).expanduser().absolute())
        self.variable = variable
        group, scan = open_cube_group(self.path, allow_acquiring=True)
        progress = acquisition_progress(self.path)
        #: True while the cube is being acquired: regions are handed out as they are persisted.
        self.growing = bool(progress and progress.get("state") == "acquiring")
        self._delivered: set[int] = set()
        if variable not in group:
            raise SchemaError(f"{self.path}: {variable}", "store has no such array", "pass a scan cube")
        arr = stored_array(group, variable)
        shape = tuple(int(s) for s in arr.shape)
        self.spec = InputSpec(scan_shape=cast("tuple[int, int]", shape[:2]),
                              det_shape=cast("tuple[int, int]", shape[2:]), dtype=np.dtype(str(arr.dtype)),
                              attrs=scan.model_dump(mode="json"))
        self.store_chunks = cast("tuple[int, int]", tuple(int(c) for c in arr.chunks[:2]))
        self.grid = region_grid(self.spec.scan_shape, self.spec.det_shape, self.spec.dtype.itemsize,
                                chunk_frames, default=self.store_chunks)
        self._created = scan.provenance.created

    def variables(self) -> dict[str, Any]:
        """The cube's other arrays (backgrounds, masks, ground truth), lazily, for :meth:`Operator.bind`."""
        import zarr

        group = zarr.open_group(self.path, mode="r", zarr_format=3)
        return {name: arr for name, arr in group.arrays() if name != self.variable}

    def regions(self) -> Iterator[Region]:
        return iter_regions(self.spec.scan_shape, self.grid)

    def poll(self, timeout: float) -> tuple[list[Region], bool]:
        """Regions whose frames the acquisition has persisted since the last call (see :class:`GrowingSource`).

        Raises
        ------
        InputFileError
            The acquisition was aborted, or its writer on this machine is gone.
        """
        import time

        from diffraflow.flow.locks import HOST, pid_alive
        from diffraflow.flow.store import acquisition_progress
        from diffraflow.schemas.errors import InputFileError

        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            progress = acquisition_progress(self.path) or {"state": "complete"}
            state = progress.get("state")
            persisted = self.spec.n_frames if state == "complete" else int(progress.get("frames_persisted", 0))
            sx = self.spec.scan_shape[1]
            # Writers that persist shards out of scan order (live receivers) list the flat index ranges
            # they wrote; sequential writers only count a prefix.
            ranges = progress.get("persisted") if state != "complete" else None
            fresh = []
            # Regions are handed out in scan order only: the engine merges reductions in chunk order and
            # submits within a bounded lag of the merge point, so a region persisted late (a gap filled
            # at the end) must not queue behind later ones.
            for r in self.regions():
                if r.index in self._delivered:
                    continue
                stop = (r.y[1] - 1) * sx + r.x[1]
                if not (_ranges_cover(ranges, r.flat_start, stop) if ranges is not None else stop <= persisted):
                    break
                fresh.append(r)
            self._delivered.update(r.index for r in fresh)
            if state == "aborted":
                raise InputFileError(self.path, f"the acquisition was aborted after {persisted} of "
                                     f"{self.spec.n_frames} frames", "process the frames there are after "
                                     "converting them to a complete cube, or re-acquire")
            writer = progress.get("writer") or {}
            if state == "acquiring" and writer.get("host") == HOST and not pid_alive(int(writer.get("pid", 0))):
                raise InputFileError(self.path, f"the acquisition's writer (pid {writer.get('pid')}) is gone after "
                                     f"{persisted} of {self.spec.n_frames} frames", "re-acquire the scan")
            ended = state == "complete" and len(self._delivered) == self.n_regions()
            if fresh or ended or time.monotonic() >= deadline:
                return fresh, ended
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def n_regions(self) -> int:
        """How many regions :meth:`regions` yields."""
        (sy, sx), (gy, gx) = self.spec.scan_shape, self.grid
        return -(-sy // gy) * -(-sx // gx)

    def read(self, region: Region) -> np.ndarray:
        """Frames of ``region``; a missing or damaged chunk raises DataCorruptionError, never fill values."""
        return read_checked(self.path, self.variable, region, self.spec.det_shape)

    def identity(self) -> dict[str, Any]:
        return {"path": self.path, "variable": self.variable, "shape": [*self.spec.scan_shape, *self.spec.det_shape],
                "dtype": self.spec.dtype.str, "created": self._created}


def _ranges_cover(ranges: list[list[int]], start: int, stop: int) -> bool:
    """True when sorted, merged ``[a, b)`` ranges hold all of ``[start, stop)``.

    Examples
    --------
    >>> _ranges_cover([[0, 4], [8, 12]], 8, 10), _ranges_cover([[0, 4], [8, 12]], 2, 6)
    (True, False)
    """
    import bisect

    starts = [int(a) for a, _b in ranges]
    i = bisect.bisect_right(starts, start) - 1
    return i >= 0 and int(ranges[i][1]) >= stop


class ArraySource:
    """Frames of an in-memory array ``(scan_y, scan_x, det_y, det_x)``.

    The array travels with the source to workers: use it for small data and
    tests; use :class:`ZarrCubeSource` for real scans.

    Examples
    --------
    >>> ArraySource(np.ones((2, 2, 3, 3), "uint16")).spec.n_frames
    4
    """

    def __init__(self, array: np.ndarray, chunk_frames: int | None = None, attrs: dict[str, Any] | None = None) -> None:
        array = np.asarray(array)
        if array.ndim != 4:
            raise SchemaError("array", f"expected 4-d frames (scan_y, scan_x, det_y, det_x), got shape {array.shape}",
                              "reshape the data to (scan_y, scan_x, det_y, det_x)")
        self.array = array
        self.spec = InputSpec(scan_shape=array.shape[:2], det_shape=array.shape[2:], dtype=array.dtype, attrs=attrs)
        self.grid = region_grid(self.spec.scan_shape, self.spec.det_shape, array.dtype.itemsize, chunk_frames)

    def regions(self) -> Iterator[Region]:
        return iter_regions(self.spec.scan_shape, self.grid)

    def n_regions(self) -> int:
        (sy, sx), (gy, gx) = self.spec.scan_shape, self.grid
        return -(-sy // gy) * -(-sx // gx)

    def read(self, region: Region) -> np.ndarray:
        block = self.array[region.y[0]:region.y[1], region.x[0]:region.x[1]]
        return np.ascontiguousarray(block).reshape(region.n, *self.spec.det_shape)

    def identity(self) -> dict[str, Any]:
        head = np.ascontiguousarray(self.array).view(np.uint8).ravel()[: 1 << 20]
        digest = hashlib.sha256(head).hexdigest()[:16]  # type: ignore[arg-type]  # numpy stub lacks __buffer__
        return {"array": list(self.array.shape), "dtype": self.array.dtype.str, "sha256_1MiB": digest}

"""Chunking rules for scan cubes.

Detector axes are never chunked: an operator always sees whole frames.
Scan axes are chunked in scan order: a chunk is a band of whole rows, unless a
single row is larger than the chunk budget, in which case a chunk is a run of
frames inside one row. Chunks are grouped into shards (Zarr v3 sharding) of
whole chunks, also in scan order, so that a shard is written by one writer
from a contiguous run of frames.

Examples
--------
>>> layout = choose_layout((100, 80), (60, 60), 1, chunk_bytes=1_000_000, shard_bytes=4_000_000)
>>> layout.chunks, layout.shards
((3, 80, 60, 60), (12, 80, 60, 60))
"""

from __future__ import annotations

from dataclasses import dataclass

from diffraflow.schemas.errors import SchemaError

__all__ = ["CubeLayout", "choose_layout", "validate_layout", "DEFAULT_CHUNK_BYTES", "DEFAULT_SHARD_BYTES"]

#: Default budget for one chunk (the unit an operator processes).
DEFAULT_CHUNK_BYTES = 8 * 2**20
#: Default budget for one shard (the unit of one write, and one file on disk).
DEFAULT_SHARD_BYTES = 64 * 2**20


@dataclass(frozen=True)
class CubeLayout:
    """Chunk and shard shapes of a 4-D cube ``(scan_y, scan_x, det_y, det_x)``.

    Examples
    --------
    >>> CubeLayout(shape=(4, 4, 8, 8), chunks=(1, 4, 8, 8), shards=(2, 4, 8, 8)).frames_per_shard
    8
    """

    shape: tuple[int, int, int, int]
    chunks: tuple[int, int, int, int]
    shards: tuple[int, int, int, int]

    @property
    def frames_per_chunk(self) -> int:
        return self.chunks[0] * self.chunks[1]

    @property
    def frames_per_shard(self) -> int:
        return self.shards[0] * self.shards[1]


def choose_layout(
    scan_shape: tuple[int, int],
    det_shape: tuple[int, int],
    itemsize: int,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    chunk_frames: int | None = None,
) -> CubeLayout:
    """Choose chunk and shard shapes following the cube chunking rules.

    Parameters
    ----------
    scan_shape, det_shape
        ``(scan_y, scan_x)`` and ``(det_y, det_x)``.
    itemsize
        Bytes per pixel.
    chunk_bytes, shard_bytes
        Budgets for one chunk and one shard.
    chunk_frames
        Force this many frames per chunk (rounded to whole rows when larger
        than a row), overriding ``chunk_bytes``.

    Examples
    --------
    >>> choose_layout((2, 1000), (256, 256), 2, chunk_bytes=2**22).chunks
    (1, 32, 256, 256)
    """
    sy, sx = (int(v) for v in scan_shape)
    dy, dx = (int(v) for v in det_shape)
    if min(sy, sx, dy, dx) < 1:
        raise SchemaError("layout", f"all dimensions must be positive, got scan {scan_shape} detector {det_shape}",
                          "check the scan and detector shapes")
    frame_bytes = dy * dx * itemsize
    frames = chunk_frames if chunk_frames else max(1, chunk_bytes // frame_bytes)
    if frames >= sx:
        chunk = (min(sy, frames // sx), sx)
    else:
        chunk = (1, frames)
    per_shard = max(1, shard_bytes // (frame_bytes * chunk[0] * chunk[1]))
    if chunk[1] < sx:
        # Rows are split: a shard is a run of chunks within one row.
        shard = (1, min(chunk[1] * per_shard, -(-sx // chunk[1]) * chunk[1]))
    else:
        shard = (min(chunk[0] * per_shard, -(-sy // chunk[0]) * chunk[0]), sx)
    return CubeLayout(shape=(sy, sx, dy, dx), chunks=(*chunk, dy, dx), shards=(*shard, dy, dx))


def validate_layout(layout: CubeLayout, where: str = "layout") -> CubeLayout:
    """Check a layout obeys the rules; raise SchemaError naming the broken rule.

    Examples
    --------
    >>> validate_layout(CubeLayout((4, 4, 8, 8), (2, 2, 4, 8), (2, 4, 8, 8)))
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.SchemaError: layout: chunks: detector axes must not be chunked, got chunks (2, 2, 4, 8) for detector (8, 8) (fix: use chunks of shape (n_y, n_x, 8, 8))
    """
    sy, sx, dy, dx = layout.shape
    cy, cx, cdy, cdx = layout.chunks
    if (cdy, cdx) != (dy, dx):
        raise SchemaError(f"{where}: chunks", f"detector axes must not be chunked, got chunks {layout.chunks} "
                          f"for detector {(dy, dx)}", f"use chunks of shape (n_y, n_x, {dy}, {dx})")
    if cx < sx and cy != 1:
        raise SchemaError(f"{where}: chunks", f"a chunk that splits rows must be one row high, got {layout.chunks}",
                          "use whole rows per chunk, or (1, n_x) chunks")
    ry, rx = layout.shards[0], layout.shards[1]
    if ry % cy or rx % cx or layout.shards[2:] != (dy, dx):
        raise SchemaError(f"{where}: shards", f"shards {layout.shards} are not whole multiples of chunks {layout.chunks}",
                          "choose shards made of whole chunks")
    if rx < sx and ry != 1:
        raise SchemaError(f"{where}: shards", f"a shard that splits rows must be one row high, got {layout.shards}",
                          "use whole rows per shard, or (1, n_x) shards")
    return layout

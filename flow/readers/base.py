"""The reader contract shared by every input format.

A reader opens one input (a file, a directory of images, or a list of
files) and answers two questions:

* :meth:`Reader.probe` — what is in it, *without reading pattern data*:
  scan and detector shape, dtype, the ``scan`` metadata record (a
  :class:`~diffraflow.schemas.cube.ScanAttrs`-shaped dict) and small per-point
  variables (projection centre, crystal map, static background);
* :meth:`Reader.iter_frames` — the patterns, as batches ``(n, det_y, det_x)``
  in scan order, streamed from disk (memory maps, HDF5 slabs, ``np.fromfile``
  with offsets), so memory stays bounded by the batch.

Truncation is checked in :meth:`Reader.probe` wherever a header implies a
size (:func:`check_file_size`); the store writer also refuses a scan that
ends early. Where the size comes from the user (``--scan-shape``,
``--det-shape``) or a side file (NORDIF ``Setting.txt``, Merlin ``.hdr``),
the file must hold exactly that many patterns, no fewer and no more
(:func:`check_frames_fill_file`): surplus bytes would otherwise be
silently left out of the cube.

Examples
--------
>>> import numpy as np
>>> v = Variable(np.zeros((2, 3, 3)), ("scan_y", "scan_x", "pc_component"))
>>> v.reshape_scan((1, 6)).data.shape
(1, 6, 3)
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
from diffraflow.schemas.errors import InputFileError, TruncatedFileError

__all__ = [
    "Variable",
    "Probe",
    "Reader",
    "check_file_size",
    "check_frames_fill_file",
    "fitting_scan_shapes",
    "jsonable",
    "batched",
]

#: Default bytes of pattern data per batch handed to the store writer.
DEFAULT_BATCH_BYTES = 32 * 2**20


@dataclass(frozen=True)
class Variable:
    """A small non-pattern array to store next to ``patterns``.

    Parameters
    ----------
    data
        The array.
    dims
        One name per axis; per-point variables start with ``scan_y, scan_x``.
    attributes
        Zarr attributes (units, convention...).

    Examples
    --------
    >>> Variable(np.zeros(3), ("pc_component",)).per_point
    False
    """

    data: np.ndarray
    dims: tuple[str, ...]
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def per_point(self) -> bool:
        """True when the leading dims are ``(scan_y, scan_x)``."""
        return self.dims[:2] == ("scan_y", "scan_x")

    def reshape_scan(self, scan_shape: tuple[int, int]) -> Variable:
        """The same values in another scan shape of equal size (scan order kept).

        Examples
        --------
        >>> Variable(np.arange(6).reshape(1, 6), ("scan_y", "scan_x")).reshape_scan((2, 3)).data.tolist()
        [[0, 1, 2], [3, 4, 5]]
        """
        if not self.per_point:
            return self
        return replace(self, data=np.asarray(self.data).reshape(*scan_shape, *np.shape(self.data)[2:]))


@dataclass
class Probe:
    """What a reader found in its input, before any pattern is read.

    Attributes
    ----------
    n_frames
        Frames the input holds.
    scan_shape
        ``(scan_y, scan_x)`` as the file describes it, or ``None`` when the
        file does not say (image stacks, raw files): then ``--scan-shape``
        is required.
    det_shape
        ``(det_y, det_x)``.
    dtype
        Pattern dtype.
    attrs
        The ``scan`` metadata record (``ScanAttrs`` fields; ``detector.shape``
        filled in by the driver).
    variables
        Small arrays to store: ``pc``, ``rotation``, ``phase_id``, scores,
        ``static_background``.
    notes
        Things the user should know (ignored fields, guesses), printed as
        warnings by the command line.

    Examples
    --------
    >>> Probe(n_frames=4, scan_shape=(2, 2), det_shape=(8, 8), dtype=np.dtype("uint8")).frame_bytes
    64
    """

    n_frames: int
    scan_shape: tuple[int, int] | None
    det_shape: tuple[int, int]
    dtype: np.dtype
    attrs: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Variable] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one pattern."""
        return int(np.prod(self.det_shape)) * np.dtype(self.dtype).itemsize


class Reader(abc.ABC):
    """Base class of the per-format readers.

    Subclasses set :attr:`format_name`, :attr:`extensions` and implement
    :meth:`_probe` and :meth:`_iter_frames`; they may override
    :meth:`sniff` (magic bytes) and :meth:`close`.

    Parameters
    ----------
    path
        The input file (or directory, or glob).
    scan_shape
        ``--scan-shape`` if the user gave one; readers that cannot know the
        scan shape (raw formats) use it to size the file.
    det_shape
        ``--det-shape`` if given (raw formats without a header).
    """

    #: Short name stored as ``provenance.source_format``.
    format_name: ClassVar[str] = ""
    #: Lower-case extensions without the dot.
    extensions: ClassVar[tuple[str, ...]] = ()
    #: Modality of the format ("ebsd", "sped", "4dstem"), or None to decide per file.
    modality: ClassVar[str | None] = None

    def __init__(self, path: str | os.PathLike[str], *, scan_shape: tuple[int, int] | None = None,
                 det_shape: tuple[int, int] | None = None) -> None:
        self.path = Path(path)
        self.scan_shape_hint: tuple[int, int] | None = (
            cast("tuple[int, int]", tuple(scan_shape)) if scan_shape else None)
        self.det_shape_hint: tuple[int, int] | None = (
            cast("tuple[int, int]", tuple(det_shape)) if det_shape else None)
        self._probe_cache: Probe | None = None

    # -- contract -------------------------------------------------------
    @classmethod
    def sniff(cls, head: bytes, path: Path) -> bool:
        """Whether the first bytes of ``path`` look like this format.

        Examples
        --------
        >>> Reader.sniff(b"", Path("x"))
        False
        """
        return False

    def probe(self) -> Probe:
        """Shapes, dtype and metadata, without reading pattern data (cached).

        Raises
        ------
        InputFileError
            The file is not what it claims, or is truncated
            (:class:`~diffraflow.schemas.errors.TruncatedFileError`).
        """
        if self._probe_cache is None:
            probe = self._probe()
            if self.det_shape_hint is not None and tuple(probe.det_shape) != tuple(self.det_shape_hint):
                # Formats with their own pattern shape do not use --det-shape: a different one is a mistake.
                h, w = self.det_shape_hint
                raise self.error(f"--det-shape {h} {w} but the file's patterns are {probe.det_shape[0]} x "
                                 f"{probe.det_shape[1]} px", "drop --det-shape (this format says its pattern "
                                 f"shape) or give --det-shape {probe.det_shape[0]} {probe.det_shape[1]}")
            self._probe_cache = probe
            attrs = self._probe_cache.attrs
            prov = attrs.setdefault("provenance", {})
            prov.setdefault("source_file", str(self.path))
            prov.setdefault("source_format", self.format_name)
            prov.setdefault("reader", f"{type(self).__module__}.{type(self).__name__}")
            if self.modality and "modality" not in attrs:
                attrs["modality"] = self.modality
        return self._probe_cache

    def iter_frames(self, batch: int | None = None) -> Iterator[np.ndarray]:
        """Yield frame batches ``(n, det_y, det_x)`` in scan order.

        Parameters
        ----------
        batch
            Frames per batch (default: about 32 MiB of patterns).
        """
        probe = self.probe()
        if batch is None:
            batch = max(1, DEFAULT_BATCH_BYTES // max(1, probe.frame_bytes))
        yield from self._iter_frames(max(1, int(batch)))

    @abc.abstractmethod
    def _probe(self) -> Probe: ...

    @abc.abstractmethod
    def _iter_frames(self, batch: int) -> Iterator[np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - optional hook, most readers hold no open file
        """Release open files."""

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------
    def error(self, problem: str, fix: str) -> InputFileError:
        """An :class:`InputFileError` about this input (to ``raise``)."""
        return InputFileError(str(self.path), problem, fix)

    def truncated(self, problem: str, fix: str = "re-copy or re-export the file; it is truncated or garbled") -> TruncatedFileError:
        """A :class:`TruncatedFileError` about this input (to ``raise``)."""
        return TruncatedFileError(str(self.path), problem, fix)

    def checked_hint(self, option: str, value: tuple[int, int] | None) -> tuple[int, int] | None:
        """``--scan-shape``/``--det-shape`` as given, refused unless two positive integers.

        For readers that size a raw file with the hint (checked where it is
        used, so that other readers keep the driver's fuller message).

        Examples
        --------
        >>> class R(Reader):
        ...     def _probe(self): ...
        ...     def _iter_frames(self, batch): ...
        >>> R("x.dat").checked_hint("--scan-shape", (0, 3))
        Traceback (most recent call last):
        ...
        diffraflow.schemas.errors.InputFileError: x.dat: --scan-shape 0 3 must be two positive integers (fix: give ROWS COLS, e.g. --scan-shape 3 3)
        """
        if value is None:
            return None
        if len(value) != 2 or min(int(v) for v in value) < 1:
            example = "ROWS COLS, e.g. --scan-shape 3 3" if option == "--scan-shape" else "H W, e.g. --det-shape 60 60"
            raise self.error(f"{option} {' '.join(str(v) for v in value)} must be two positive integers",
                             f"give {example}")
        return int(value[0]), int(value[1])


def check_file_size(path: Path, expected: int, what: str, exact: bool = False) -> int:
    """Raise :class:`TruncatedFileError` when a file is shorter than its header says.

    Parameters
    ----------
    path
        The file.
    expected
        Bytes the header implies.
    what
        How the expectation was derived, for the message.
    exact
        Also refuse a file that is longer (garbled header).

    Returns
    -------
    int
        The actual size.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "f.bin"; _ = p.write_bytes(b"abc")
    >>> check_file_size(p, 3, "test")
    3
    >>> check_file_size(p, 10, "3 frames")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.TruncatedFileError: ...f.bin: file has 3 bytes but 3 frames need 10 (fix: the file is truncated: re-copy or re-export it)
    """
    size = path.stat().st_size
    if size < expected:
        raise TruncatedFileError(str(path), f"file has {size} bytes but {what} need {expected}",
                                 "the file is truncated: re-copy or re-export it")
    if exact and size != expected:
        raise TruncatedFileError(str(path), f"file has {size} bytes but {what} need exactly {expected}",
                                 "the header and the data disagree: the file is garbled or not this format")
    return size


def fitting_scan_shapes(n: int, cols: int | None = None, limit: int = 3) -> list[tuple[int, int]]:
    """Scan shapes ``(rows, cols)`` of exactly ``n`` points, the likeliest first.

    A shape keeping the expected row length ``cols`` comes first (the scan
    has more or fewer rows than said), then the squarest ones.

    Examples
    --------
    >>> fitting_scan_shapes(12)
    [(3, 4), (2, 6), (1, 12)]
    >>> fitting_scan_shapes(12, cols=6)
    [(2, 6), (3, 4), (1, 12)]
    """
    pairs = [(r, n // r) for r in range(1, math.isqrt(max(n, 0)) + 1) if n % r == 0]
    shapes = sorted(pairs, key=lambda p: p[1] - p[0])
    if cols and n % cols == 0:
        keep = (n // cols, cols)
        shapes = [keep] + [p for p in shapes if p != keep]
    return shapes[:limit]


def check_frames_fill_file(path: Path, *, n_frames: int, frame_bytes: int, header_bytes: int = 0,
                           scan_shape: tuple[int, int], det_shape: tuple[int, int], sized_by: str) -> int:
    """Refuse a raw file that does not hold exactly the patterns its size was taken from.

    For formats sized by the user or a side file: a shorter file is
    truncated; a longer one would have its surplus silently left out.

    Parameters
    ----------
    path
        The file.
    n_frames, frame_bytes, header_bytes
        Patterns expected, bytes per pattern, bytes before the first one.
    scan_shape, det_shape
        The shapes the size came from, for the message.
    sized_by
        Where they came from (``"--scan-shape"``, ``"Setting.txt"``...).

    Returns
    -------
    int
        The file size.

    Raises
    ------
    TruncatedFileError
        The file is shorter.
    InputFileError
        The file is longer, or not a whole number of patterns.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "Pattern.dat"; _ = p.write_bytes(bytes(12 * 4))
    >>> check_frames_fill_file(p, n_frames=12, frame_bytes=4, scan_shape=(3, 4), det_shape=(2, 2), sized_by="test")
    48
    >>> check_frames_fill_file(p, n_frames=4, frame_bytes=4, scan_shape=(2, 2), det_shape=(2, 2),
    ...                        sized_by="--scan-shape")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.InputFileError: ...Pattern.dat: file holds 12 patterns of 2 x 2 px (48 bytes) but the scan 2 x 2 from --scan-shape needs 4 (16 bytes): 32 bytes would be left out (fix: pass --scan-shape ROWS COLS with ROWS x COLS = 12, e.g. --scan-shape 6 2, 3 4 or 2 6)
    """
    size = path.stat().st_size
    expected = header_bytes + n_frames * frame_bytes
    if size == expected:
        return size
    rows, cols = scan_shape
    wanted = f"the scan {rows} x {cols} from {sized_by} needs {n_frames} ({n_frames * frame_bytes} bytes)"
    whole, rest = divmod(max(0, size - header_bytes), frame_bytes)
    if rest == 0:
        held = f"file holds {whole} patterns of {det_shape[0]} x {det_shape[1]} px ({size - header_bytes} bytes)"
        options = [f"{r} {c}" for r, c in fitting_scan_shapes(whole, cols)]
        fix = f"pass --scan-shape ROWS COLS with ROWS x COLS = {whole}"
        if options:
            fix += ", e.g. --scan-shape " + (" or ".join([", ".join(options[:-1]), options[-1]])
                                             if len(options) > 1 else options[0])
    else:
        held = (f"file's {size - header_bytes} data bytes are not a whole number of {det_shape[0]} x "
                f"{det_shape[1]} px patterns ({whole} and {rest} bytes)")
        per, odd = divmod(size - header_bytes, max(1, n_frames))
        side = math.isqrt(per)
        hint = f"--det-shape {side} {side}" if not odd and side * side == per else "--det-shape H W"
        fix = f"check the pattern shape: pass {hint}, or correct {sized_by}"
    if size < expected:
        raise TruncatedFileError(str(path), f"{held} but {wanted}",
                                 f"the file is truncated: re-copy it, or {fix}" if rest == 0 else fix)
    raise InputFileError(str(path), f"{held} but {wanted}: {size - expected} bytes would be left out", fix)


def jsonable(value: Any, max_items: int = 4096) -> Any:
    """Turn vendor metadata into JSON-friendly values (big arrays are summarised).

    Examples
    --------
    >>> jsonable({"a": np.float32(1.5), "b": b"Ni", "c": np.arange(3)})
    {'a': 1.5, 'b': 'Ni', 'c': [0, 1, 2]}
    >>> jsonable(np.zeros((100, 100)))["shape"]
    [100, 100]
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v, max_items) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, max_items) for v in value]
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("latin-1").rstrip("\x00")
    if isinstance(value, np.ndarray):
        if value.dtype.names:  # structured arrays: keep field names only
            return {"structured_array": list(value.dtype.names), "shape": list(value.shape)}
        if value.size > max_items:
            return {"array": str(value.dtype), "shape": list(value.shape)}
        return jsonable(value.tolist(), max_items)
    if isinstance(value, np.generic):
        return jsonable(value.item(), max_items)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def batched(n_frames: int, batch: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` frame ranges of at most ``batch`` frames.

    Examples
    --------
    >>> list(batched(5, 2))
    [(0, 2), (2, 4), (4, 5)]
    """
    for start in range(0, n_frames, batch):
        yield start, min(n_frames, start + batch)

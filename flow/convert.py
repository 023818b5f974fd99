"""Streaming conversion of a vendor file into a scan cube (``diffraflow convert``).

The driver is format-agnostic: a reader (:mod:`diffraflow.flow.readers`) says what the
input holds (:meth:`~diffraflow.flow.readers.base.Reader.probe`), the driver settles
the scan shape and metadata (file values, then command-line overrides),
validates them, and streams frame batches into a
:class:`~diffraflow.flow.store.CubeWriter`. Memory is bounded by one reader batch plus
one store shard; a failure at any point leaves no store that ``open_cube``
or ``diffraflow info`` would take for complete.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> np.save(d / "p.npy", np.arange(2 * 3 * 4 * 5, dtype="uint16").reshape(2, 3, 4, 5))
>>> report = convert([d / "p.npy"], d / "p.zarr", modality="ebsd", energy=20)
>>> report.scan_shape, report.frames
((2, 3), 6)
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from diffraflow.flow.readers import open_reader
from diffraflow.flow.readers.base import DEFAULT_BATCH_BYTES, Probe, Reader, Variable
from diffraflow.flow.readers.crystal import (
    find_sidecar_crystal_map,
    load_crystal_map_file,
    xmap_to_variables,
)
from diffraflow.flow.store import CubeWriter, create_cube, prepare_output_path
from diffraflow.schemas.cube import check_projection_centre
from diffraflow.schemas.errors import (
    DiffraflowError,
    InputFileError,
    SchemaError,
    TruncatedFileError,
)

__all__ = ["convert", "ConvertReport", "resolve_scan_shape", "apply_overrides"]


@dataclass
class ConvertReport:
    """What a conversion did.

    Examples
    --------
    >>> ConvertReport(Path("a.zarr"), "npy", (1, 2), (3, 3), "uint8", 2, 18, 0.5).mb_per_s
    3.6e-05
    """

    output: Path
    source_format: str
    scan_shape: tuple[int, int]
    det_shape: tuple[int, int]
    dtype: str
    frames: int
    bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB/s (10**6 bytes) of pattern data."""
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def _factor_pairs(n: int, limit: int = 3) -> str:
    pairs = [(r, n // r) for r in range(1, math.isqrt(n) + 1) if n % r == 0]
    pairs = sorted(pairs, key=lambda p: p[1] - p[0])[:limit]
    return ", ".join(f"{r} {c}" for r, c in pairs)


def resolve_scan_shape(probe: Probe, requested: tuple[int, int] | None, where: str) -> tuple[int, int]:
    """The scan shape to write: ``--scan-shape`` if consistent, else the file's.

    Raises
    ------
    InputFileError
        ``--scan-shape`` does not match the number of frames, or the file
        does not say its scan shape and none was given.

    Examples
    --------
    >>> p = Probe(n_frames=9, scan_shape=(1, 9), det_shape=(4, 4), dtype=np.dtype("uint8"))
    >>> resolve_scan_shape(p, (3, 3), "x.up1")
    (3, 3)
    >>> resolve_scan_shape(p, (2, 4), "x.up1")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.InputFileError: x.up1: --scan-shape 2 4 needs 8 frames but the input holds 9 (fix: give ROWS COLS with ROWS x COLS = 9, e.g. --scan-shape 3 3)
    """
    n = probe.n_frames
    if requested is not None:
        rows, cols = (int(v) for v in requested)
        if rows < 1 or cols < 1:
            raise InputFileError(where, f"--scan-shape {rows} {cols} must be positive",
                                 f"give ROWS COLS with ROWS x COLS = {n}, e.g. --scan-shape {_factor_pairs(n, 1)}")
        if rows * cols != n:
            raise InputFileError(where, f"--scan-shape {rows} {cols} needs {rows * cols} frames but the input "
                                 f"holds {n}", f"give ROWS COLS with ROWS x COLS = {n}, e.g. --scan-shape "
                                 f"{_factor_pairs(n, 1)}")
        return rows, cols
    if probe.scan_shape is None:
        raise InputFileError(where, f"the input holds {n} frames but does not say the scan shape",
                             f"pass --scan-shape ROWS COLS with ROWS x COLS = {n} (e.g. {_factor_pairs(n)})")
    return tuple(int(v) for v in probe.scan_shape)  # type: ignore[return-value]


def apply_overrides(attrs: dict[str, Any], *, modality: str | None = None, pc: Sequence[float] | None = None,
                    pc_convention: str | None = None, sample_tilt: float | None = None,
                    energy: float | None = None, step: Sequence[float] | None = None,
                    step_unit: str | None = None) -> dict[str, Any]:
    """Command-line values replace what the file says (returns a new dict).

    Examples
    --------
    >>> a = apply_overrides({"detector": {"pc": [0.5, 0.5, 0.5], "pc_convention": "edax"}}, pc=[0.4, 0.2, 0.6])
    >>> a["detector"]["pc"], a["detector"]["pc_convention"]
    ([0.4, 0.2, 0.6], 'bruker')
    """
    attrs = copy.deepcopy(attrs)
    det = attrs.setdefault("detector", {})
    if modality:
        attrs["modality"] = modality
    if pc_convention and pc is None and det.get("pc") is None:
        raise SchemaError("--pc-convention", "a projection-centre convention without a projection centre",
                          "give --pc X Y Z together with --pc-convention")
    if pc is not None:
        det["pc"] = [float(v) for v in pc]
        det["pc_convention"] = (pc_convention or "bruker").lower()
    elif pc_convention:
        if det.get("pc_convention", "bruker") != pc_convention.lower():
            raise SchemaError("--pc-convention", f"the file's projection centre is in the {det.get('pc_convention')!r} "
                              f"convention, not {pc_convention!r}", "give --pc X Y Z to replace it, or drop "
                              "--pc-convention (conventions are converted by kikuchipy's EBSDDetector)")
    if sample_tilt is not None:
        det["sample_tilt"] = float(sample_tilt)
    if energy is not None:
        attrs["beam_energy_kv"] = float(energy)
    if step is not None:
        unit = step_unit or (attrs.get("step_size") or {}).get("unit", "um")
        attrs["step_size"] = {"y": float(step[0]), "x": float(step[1]), "unit": unit}
    return attrs


def _ctf_ang_header(path: Path) -> dict[str, Any]:
    """Beam energy, tilt, steps and (``.ang``) projection centre from a crystal-map header."""
    out: dict[str, Any] = {}
    try:
        lines = path.read_text(encoding="latin-1", errors="replace").splitlines()[:200]
    except OSError:
        return out
    tokens: dict[str, str] = {}
    for line in lines:
        # .ctf: "Key<TAB>Value" pairs, several per line; .ang: "# KEY: value".
        parts = line.split("\t") if path.suffix.lower() == ".ctf" else line.lstrip("#").replace(":", " ").split()
        parts = [p.strip() for p in parts]
        for key, value in zip(parts, parts[1:], strict=False):
            tokens.setdefault(key.lower(), value)

    def num(*keys: str) -> float | None:
        for key in keys:
            try:
                return float(tokens[key])
            except (KeyError, ValueError):
                continue
        return None

    out["beam_energy_kv"] = num("kv")
    out["sample_tilt"] = num("tiltangle")
    out["step"] = (num("ystep"), num("xstep"))
    if path.suffix.lower() == ".ang":
        x_star, y_star, z_star = num("x-star"), num("y-star"), num("z-star")
        if x_star is not None and y_star is not None and z_star is not None and z_star > 0:
            out["pc"] = (x_star, y_star, z_star)
    return out


def _attach_crystal_map(path: Path, explicit: bool, scan_shape: tuple[int, int], attrs: dict[str, Any],
                        variables: dict[str, Variable], notes: list[str]) -> None:
    try:
        xmap = load_crystal_map_file(path)
        cmap, phases = xmap_to_variables(xmap, scan_shape)
    except Exception as exc:  # orix raises many kinds of parser errors
        if explicit:
            raise InputFileError(str(path), f"cannot use as crystal map ({type(exc).__name__}: {exc})",
                                 "pass an .ang/.ctf map of the same scan, or drop --crystal-map") from None
        notes.append(f"ignored crystal map {path.name} ({exc})")
        return
    if tuple(xmap.shape) not in (tuple(scan_shape), (scan_shape[0] * scan_shape[1],)):
        notes.append(f"crystal map {path.name} is {list(xmap.shape)}, scan is {list(scan_shape)}: "
                     "points taken in file order")
    variables.update(cmap)
    om = attrs.setdefault("original_metadata", {})
    om["crystal_map_variables"] = sorted(cmap)
    om["crystal_map_file"] = str(path)
    if not attrs.get("phases"):
        attrs["phases"] = phases
    attrs.setdefault("modality", "ebsd")
    header = _ctf_ang_header(path)
    if header.get("beam_energy_kv") and not attrs.get("beam_energy_kv"):
        attrs["beam_energy_kv"] = header["beam_energy_kv"]
    det = attrs.setdefault("detector", {})
    if header.get("sample_tilt") is not None and "sample_tilt" not in det:
        det["sample_tilt"] = header["sample_tilt"]
    ys, xs = header.get("step", (None, None))
    if ys is not None and xs is not None and ys > 0 and xs > 0 and "step_size" not in attrs:
        attrs["step_size"] = {"y": ys, "x": xs, "unit": "um"}
    if header.get("pc") and det.get("pc") is None:
        try:
            check_projection_centre(header["pc"], "edax", f"{path}: pc")
        except SchemaError as exc:  # a crystal map's header is a side note: keep the patterns, drop its PC
            notes.append(f"projection centre in {path.name} ignored: {exc.problem}")
        else:
            det["pc"], det["pc_convention"] = list(header["pc"]), "edax"


def _command_line(argv: Sequence[str] | None) -> str:
    if argv is None:
        argv = sys.argv
    import shlex

    return shlex.join(["diffraflow", *list(argv)[1:]]) if argv and "diffraflow" in Path(argv[0]).name \
        else shlex.join(list(argv))


def convert(
    sources: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    scan_shape: tuple[int, int] | None = None,
    det_shape: tuple[int, int] | None = None,
    overwrite: bool = False,
    chunk_mb: float | None = None,
    modality: str | None = None,
    pc: Sequence[float] | None = None,
    pc_convention: str | None = None,
    sample_tilt: float | None = None,
    energy: float | None = None,
    step: Sequence[float] | None = None,
    step_unit: str | None = None,
    crystal_map: str | os.PathLike[str] | None = None,
    format: str | None = None,
    reader_options: dict[str, Any] | None = None,
    command: str | None = None,
    progress: bool = False,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    on_note: Callable[[str], None] | None = None,
) -> ConvertReport:
    """Convert an input file (or image stack) into a scan cube, streaming.

    Parameters
    ----------
    sources
        A file, a directory or glob of images, or a list of image files.
    output
        The ``.zarr`` store to create.
    scan_shape
        ``(rows, cols)``; required for image stacks, and may re-shape any
        input with the same number of frames.
    det_shape
        ``(height, width)`` for raw files without a header (NORDIF without
        ``Setting.txt``).
    overwrite
        Replace an existing store (only once the new one is complete).
    chunk_mb
        Chunk budget in MiB (default: the store's 8 MiB).
    modality, pc, pc_convention, sample_tilt, energy, step, step_unit
        Metadata that replaces what the file says.
    crystal_map
        An ``.ang``/``.ctf`` crystal map to store with the patterns (one
        beside the input whose name begins the input's name is used
        automatically).
    format
        Force a reader (see :data:`diffraflow.flow.readers.READERS`).
    reader_options
        Extra reader keywords (``scan_group``, ``setting_file``, ``processed``).
    command
        The command line, for provenance.
    progress
        Show a tqdm progress bar on stderr.
    batch_bytes
        Bytes of patterns per reader batch.
    on_note
        Called with each note (things the user should know).

    Returns
    -------
    ConvertReport

    Raises
    ------
    DiffraflowError
        One-line errors for unknown, truncated or garbled inputs, a wrong
        ``--scan-shape``, NaN frames, an existing output or an unwritable
        destination; no complete store is left behind.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); np.save(d / "f.npy", np.zeros((4, 8, 8), "uint8"))
    >>> convert(d / "f.npy", d / "f.zarr", scan_shape=(2, 2)).scan_shape
    (2, 2)
    """
    paths = [str(sources)] if isinstance(sources, (str, os.PathLike)) else [str(s) for s in sources]
    where = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)"
    if chunk_mb is not None and (isinstance(chunk_mb, bool) or not math.isfinite(chunk_mb) or chunk_mb <= 0):
        raise SchemaError("--chunk-mb", f"must be a number of MiB greater than 0, got {chunk_mb}",
                          "pass e.g. --chunk-mb 8, or leave it out for the default")
    inputs = [*paths, *([crystal_map] if crystal_map is not None else [])]
    prepare_output_path(output, overwrite, kind="scan_cube", inputs=inputs)  # fail fast, before reading anything
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        if on_note is not None:
            on_note(text)

    with open_reader(paths, format=format, scan_shape=scan_shape, det_shape=det_shape,
                     **(reader_options or {})) as reader:
        probe = reader.probe()
        for text in probe.notes:
            note(text)
        shape = resolve_scan_shape(probe, scan_shape, where)
        variables = {name: (var.reshape_scan(shape) if shape != probe.scan_shape else var)
                     for name, var in probe.variables.items()}
        attrs = copy.deepcopy(probe.attrs)
        attrs.setdefault("detector", {})["shape"] = list(probe.det_shape)
        wants_ebsd = (modality or attrs.get("modality")) in (None, "ebsd", "tkd")
        if "rotation" not in variables and (crystal_map is not None or wants_ebsd):
            side = Path(crystal_map) if crystal_map is not None else find_sidecar_crystal_map(Path(paths[0]))
            if side is not None:
                _attach_crystal_map(side, crystal_map is not None, shape, attrs, variables, notes)
        if pc is not None and "pc" in variables:
            del variables["pc"]
            note("--pc replaces the per-point projection centres of the file")
        attrs = apply_overrides(attrs, modality=modality, pc=pc, pc_convention=pc_convention,
                                sample_tilt=sample_tilt, energy=energy, step=step, step_unit=step_unit)
        if not attrs.get("modality"):
            attrs["modality"] = "4dstem"
            note("modality not stored in the input: assuming 4dstem (set --modality)")
        prov = attrs.setdefault("provenance", {})
        prov["source_file"] = str(Path(paths[0]).absolute()) if len(paths) == 1 else where
        prov["command"] = command or _command_line(None)
        if notes:
            attrs.setdefault("original_metadata", {})["conversion_notes"] = list(notes)
        dtype = np.dtype(probe.dtype)
        chunk_bytes = int(chunk_mb * 2**20) if chunk_mb else None
        kwargs: dict[str, Any] = {"chunk_bytes": chunk_bytes} if chunk_bytes else {}
        batch = max(1, batch_bytes // max(1, probe.frame_bytes))
        start = time.perf_counter()
        with create_cube(output, scan_shape=shape, det_shape=probe.det_shape, dtype=dtype, attrs=attrs,
                         overwrite=overwrite, where=where, inputs=inputs, **kwargs) as writer:
            for name, var in variables.items():
                writer.write_variable(name, np.asarray(var.data), var.dims, attributes=var.attributes)
            _stream(reader, writer, probe.n_frames, batch, where, progress)
            path = writer.finalize()
    seconds = time.perf_counter() - start
    return ConvertReport(path, str(attrs["provenance"].get("source_format", reader.format_name)), shape,
                         cast("tuple[int, int]", tuple(probe.det_shape)), dtype.name, probe.n_frames, probe.n_frames * probe.frame_bytes,
                         seconds, notes)


def _stream(reader: Reader, writer: CubeWriter, n_frames: int, batch: int, where: str, progress: bool) -> None:
    """Copy frames from reader to writer with a progress bar; read errors become one-line errors."""
    from tqdm import tqdm

    done = 0
    bar = tqdm(total=n_frames, unit="frame", unit_scale=True, desc="convert", file=sys.stderr,
               disable=not progress, dynamic_ncols=True, leave=False)
    try:
        frames = reader.iter_frames(batch)
        while True:
            try:
                block = next(frames)
            except StopIteration:
                break
            except DiffraflowError:
                raise
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise TruncatedFileError(where, f"reading failed after {done} of {n_frames} frames "
                                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                                         "the file is truncated or garbled: re-copy or re-export it") from None
            writer.patterns.append(block)
            done += len(block)
            bar.update(len(block))
    finally:
        bar.close()

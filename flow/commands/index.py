"""``diffraflow index IN.zarr OUT.zarr --phase NAME_OR_CIF``: Hough-index an EBSD cube into a crystal map.

The cube is streamed in blocks of whole scan rows (aligned to its chunks, a
few thousand patterns each), so memory stays bounded whatever the scan size;
each block goes through :meth:`diffraflow.operators.indexing.HoughIndexer.index_chunk`
and is written straight into the crystal-map result store
(:class:`diffraflow.flow.crystal_map.CrystalMapStoreWriter`), which is renamed to its
final name only when complete.

The projection centre comes from the cube (per-point variable ``pc`` if
present, else ``detector.pc``, in ``detector.pc_convention``) unless ``--pc``
overrides it; the detector's sample tilt, camera tilt and azimuthal angle come
from the cube metadata. A static background stored in the cube
(``static_background``) is subtracted unless ``--no-static-background``.

The store keeps every solution with its confidence. The summary counts as
indexed only the points whose confidence reaches ``--min-confidence``
(default :data:`diffraflow.flow.crystal_map.MIN_CONFIDENCE`, chosen by measurement), the
value ``diffraflow export`` then applies. The numba kernels are compiled (or
loaded from numba's cache) before the clock starts, with a word when that
takes long, so the reported rate is the indexing rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from diffraflow.schemas.cube import PC_CONVENTIONS
from diffraflow.schemas.errors import SchemaError

#: Patterns handed to the indexer per block (rounded to whole rows of chunks).
BLOCK_PATTERNS = 4096
#: Upper bound on the bytes of one block of patterns.
BLOCK_BYTES = 256 * 2**20


def register(subparsers) -> None:
    """Add the ``index`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser(
        "index", help="Hough-index an EBSD scan cube into a crystal map",
        description="Index every pattern of an EBSD/TKD scan cube by Radon-transform band detection and "
                    "triplet voting; write a crystal-map result store (export it with 'diffraflow export').")
    parser.add_argument("input", help="scan cube (.zarr) with EBSD patterns")
    parser.add_argument("output", help="crystal-map result store to write (.zarr)")
    parser.add_argument("--phase", action="append", default=None, metavar="NAME_OR_CIF",
                        help="phase to index against: a library name (ni, al, fe, si...) or a .cif file; "
                             "repeat for several phases (default: the phases in the cube metadata)")
    parser.add_argument("--pc", nargs=3, type=float, metavar=("X", "Y", "Z"),
                        help="projection centre, overriding the cube's")
    parser.add_argument("--pc-convention", choices=[c for c in PC_CONVENTIONS if c in
                                                    ("bruker", "edax", "tsl", "oxford", "emsoft")],
                        default="bruker", help="convention of --pc (default bruker)")
    parser.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto",
                        help="compute backend (default auto: CUDA when available)")
    parser.add_argument("--n-bands", type=int, default=None,
                        help="bands to detect per pattern (default: the indexer's)")
    parser.add_argument("--min-confidence", type=float, default=None, metavar="CI",
                        help="count (and later export) points whose confidence is below CI as not indexed; the "
                             "store keeps every solution (default 0.10; 0 counts every solution)")
    parser.add_argument("--static-background", action=argparse.BooleanOptionalAction, default=True,
                        help="subtract the cube's static_background variable when present (default yes)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--png", action="store_true",
                        help="also write OUT_ipf.png, OUT_confidence.png, OUT_fit.png, OUT_phase.png")
    parser.set_defaults(func=run)


def _phase_list(args, scan, where: str):
    from diffraflow.operators.crystallography.phases import get_phase, phase_from_record
    from orix.crystal_map import PhaseList

    if args.phase:
        phases = [get_phase(name) for name in args.phase]
    elif scan.phases:
        phases = [phase_from_record(p.model_dump()) for p in scan.phases]
    else:
        raise SchemaError(f"{where}: phases", "no phase given and the cube metadata lists none",
                          "pass --phase NAME_OR_CIF (e.g. --phase ni), once per phase")
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise SchemaError("--phase", f"phase names repeat: {names}", "give each phase once")
    return PhaseList(phases={i: phase for i, phase in enumerate(phases)})


def _projection_centre(args, ds, scan, where: str) -> tuple[np.ndarray, str, str]:
    """``(pc, convention, source)``; pc is (3,) or (ny, nx, 3)."""
    det = scan.detector
    if args.pc is not None:
        return np.asarray(args.pc, dtype=float), args.pc_convention, "--pc"
    if "pc" in ds.variables:
        pc = np.asarray(ds["pc"].values, dtype=float)
        convention = ds["pc"].attrs.get("convention", det.pc_convention)
        if pc.shape == (*ds["patterns"].shape[:2], 3):
            return pc, convention, "cube variable pc (per point)"
    if det.pc is not None:
        return np.asarray(det.pc, dtype=float), det.pc_convention, "cube detector.pc"
    raise SchemaError(f"{where}: detector.pc", "projection centre is unknown (the cube has no detector.pc or pc "
                      "variable)", "pass --pc X Y Z [--pc-convention bruker|edax|tsl|oxford|emsoft]")


def _block_rows(shape: tuple[int, ...], chunk_rows: int, itemsize: int) -> int:
    ny, nx, sy, sx = shape
    per_row = nx * sy * sx * itemsize
    rows = max(1, BLOCK_PATTERNS // max(1, nx))
    rows = min(rows, max(1, BLOCK_BYTES // max(1, per_row)))
    if rows >= chunk_rows:
        rows -= rows % chunk_rows  # whole chunks of rows
    return int(min(ny, max(1, rows)))


def _geq() -> str:
    """``≥`` where the terminal can print it, else ``>=``."""
    try:
        "≥".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ">="
    return "≥"


def _say(message: str) -> None:
    print(f"{message}...", file=sys.stderr, flush=True)


def summary_line(path, n_indexed: int, n_below: int, n: int, min_confidence: float, phases: str, backend: str,
                 seconds: float) -> str:
    """The line ``diffraflow index`` ends with.

    Examples
    --------
    >>> summary_line("cm.zarr", 391, 9, 400, 0.1, "ni", "cpu", 0.2).replace("≥", ">=")
    'cm.zarr: indexed 391 of 400 patterns (97.8%) with confidence >= 0.10 (9 more below it) against ni on cpu in 0.2 s (2000 patterns/s)'
    """
    below = f" ({n_below} more below it)" if n_below else ""
    return (f"{path}: indexed {n_indexed} of {n} patterns ({100 * n_indexed / max(n, 1):.1f}%) with confidence "
            f"{_geq()} {min_confidence:.2f}{below} against {phases} on {backend} in {seconds:.1f} s "
            f"({n / max(seconds, 1e-9):.0f} patterns/s)")


def run(args) -> int:
    from diffraflow.flow.commands.export import check_min_confidence
    from diffraflow.flow.crystal_map import (
        MIN_CONFIDENCE,
        CrystalMapStoreWriter,
        count_indexed,
        phase_records_from_phase_list,
    )
    from diffraflow.flow.exporters._common import check_output
    from diffraflow.flow.plots_crystal import png_paths
    from diffraflow.flow.store import open_cube, prepare_output_path
    from diffraflow.operators.indexing import HoughIndexer
    from diffraflow.schemas.cube import ebsd_geometry, validate_scan_attrs
    from kikuchipy.detectors import EBSDDetector
    from tqdm import tqdm

    where = str(args.input)
    check_min_confidence(args.min_confidence)
    min_confidence = MIN_CONFIDENCE if args.min_confidence is None else float(args.min_confidence)
    out_final, _ = prepare_output_path(args.output, args.overwrite)  # fail before any work
    base = out_final.with_suffix("") if out_final.suffix == ".zarr" else out_final
    if args.png:
        for path in png_paths(base).values():
            check_output(path, args.overwrite)
    ds = open_cube(args.input, chunks=None)  # lazy, no dask: blocks are read on demand
    scan = validate_scan_attrs(ds.attrs["scan"], where=where)
    if scan.modality not in ("ebsd", "tkd"):
        raise SchemaError(f"{where}: modality", f"cannot Hough-index a {scan.modality} scan",
                          "index EBSD or TKD cubes only")
    patterns = ds["patterns"]
    ny, nx, sy, sx = (int(s) for s in patterns.shape)
    phase_list = _phase_list(args, scan, where)
    pc, convention, pc_source = _projection_centre(args, ds, scan, where)
    det = scan.detector
    detector = EBSDDetector(shape=(sy, sx), pc=pc, convention=convention,
                            **ebsd_geometry(det))  # tilts the cube does not know: 70/0 deg, with a warning
    background = None
    if args.static_background and "static_background" in ds.variables:
        background = np.asarray(ds["static_background"].values, dtype=np.float32)
        if background.shape != (sy, sx):
            background = None
    options: dict = {"backend": args.backend, "static_background": background}
    if args.n_bands is not None:
        options["n_bands"] = args.n_bands
    indexer = HoughIndexer(phase_list, detector, **options)
    per_point_pc = np.asarray(pc).ndim == 3
    records, mapping = phase_records_from_phase_list(phase_list)
    if mapping != {i: i for i in range(len(records))}:  # built with ids 0..n-1 above
        raise AssertionError(f"unexpected phase ids {mapping}")
    pc_used = np.asarray(pc).reshape(-1, 3).mean(axis=0).round(6).tolist()
    extra = {
        "source": str(Path(args.input).absolute()),
        "projection_centre": {"value": pc_used,
                              "convention": convention, "source": pc_source, "per_point": bool(per_point_pc)},
        "indexer": {"class": "diffraflow.operators.indexing.HoughIndexer", "backend": indexer.backend,
                    **{k: v for k, v in indexer.options.items() if k != "backend"},
                    "static_background": background is not None},
        "min_confidence": min_confidence,
    }
    stored = patterns.encoding.get("shards") or patterns.encoding.get("chunks") or (1,)
    chunk_rows = int(stored[0])
    rows = _block_rows((ny, nx, sy, sx), chunk_rows, patterns.dtype.itemsize)
    compile_seconds = indexer.warm_up(patterns.dtype, notify=_say)  # before the clock: rates leave it out
    if compile_seconds is not None:
        print(f"compiled the kernels in {compile_seconds:.0f} s; later runs load them from numba's cache",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    n_indexed = n_below = 0
    with CrystalMapStoreWriter(args.output, (ny, nx), records, scan_attrs=scan, operator="hough_index",
                               overwrite=args.overwrite, extra_attrs=extra) as writer, \
            tqdm(total=ny * nx, unit="pat", desc="indexing", disable=None, leave=False) as bar:
        for y0 in range(0, ny, rows):
            y1 = min(ny, y0 + rows)
            block = np.asarray(patterns.isel(scan_y=slice(y0, y1)).values)
            flat = block.reshape(-1, sy, sx)
            nav = np.arange(y0 * nx, y1 * nx) if per_point_pc else None
            result = indexer.index_chunk(flat, nav_indices=nav)
            counts = count_indexed(result["phase_id"], result["confidence"], min_confidence)
            n_indexed, n_below = n_indexed + counts[0], n_below + counts[1]
            writer.write_rows(y0, {
                "rotation": result["quaternion"],
                "phase_id": result["phase_id"],
                "fit": result["fit"],
                "confidence": result["confidence"],
                "pattern_quality": result["pattern_quality"],
                "n_bands": result["n_bands"],
            })
            bar.update(flat.shape[0])
        path = writer.finalize()
    seconds = time.perf_counter() - start
    n = ny * nx
    print(summary_line(path, n_indexed, n_below, n, min_confidence, ", ".join(p.name for _, p in phase_list),
                       indexer.backend, seconds))
    if n_below > n_indexed:
        print(f"most solutions have a confidence below {min_confidence:.2f}: check the projection centre "
              f"(used {pc_used}, {convention}; set it with --pc) and the phases",
              file=sys.stderr)
    if args.png:
        from diffraflow.flow.crystal_map import read_crystal_map
        from diffraflow.flow.plots_crystal import write_crystal_map_pngs

        for picture in write_crystal_map_pngs(read_crystal_map(path), base, overwrite=args.overwrite,
                                              min_confidence=min_confidence):
            print(picture)
    return 0

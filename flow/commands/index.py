"""``diffraflow index IN.zarr OUT.zarr --phase NAME_OR_CIF``: Hough-index an EBSD cube into a crystal map.

A thin command over a one-step pipeline: the ``hough_index`` operator, in a
step named ``crystal_map``, run by the engine like any ``diffraflow run``. So
indexing resumes after a kill (re-run the same command), runs on any executor
(``--scheduler``), shows the same progress, and writes the same result store
that ``diffraflow export`` reads. Everything that can be checked without data
(phases, projection centre, backend, parameters) is checked first: a typo
fails before a single pattern is read.

The projection centre comes from the cube (per-point variable ``pc`` if
present, else ``detector.pc``, in ``detector.pc_convention``) unless ``--pc``
overrides it; tilts come from the cube metadata. A static background stored
in the cube (``static_background``) is subtracted unless
``--no-static-background``.

The store keeps every solution with its confidence. The summary counts as
indexed only the points whose confidence reaches ``--min-confidence``
(default :data:`diffraflow.operators.indexing.confidence.MIN_CONFIDENCE`,
chosen by measurement), the value ``diffraflow export`` then applies. The
numba kernels are compiled (or loaded from numba's cache) before the clock
starts, with a word when that takes long, so the reported rate is the
indexing rate.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from diffraflow.flow.cli import positive_float, positive_int
from diffraflow.flow.executors import DEFAULT_CONNECT_TIMEOUT
from diffraflow.schemas.cube import PC_CONVENTIONS

if TYPE_CHECKING:
    from pathlib import Path

    import zarr
    from diffraflow.flow.cli import Subparsers
    from diffraflow.flow.pipeline import Pipeline
    from diffraflow.operators.indexing.hough_index import HoughIndex

#: The step name of the crystal map in stores ``diffraflow index`` writes.
STEP_NAME = "crystal_map"


def register(subparsers: Subparsers) -> None:
    """Add the ``index`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser(
        "index", help="Hough-index an EBSD scan cube into a crystal map (resumable)",
        description="Index every pattern of an EBSD/TKD scan cube by Radon-transform band detection and "
                    "triplet voting; write a crystal-map result store (export it with 'diffraflow export'). "
                    "Re-running the same command resumes an interrupted run.")
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
    parser.add_argument("--n-bands", type=positive_int, default=None,
                        help="bands to detect per pattern (default: the indexer's)")
    parser.add_argument("--min-confidence", type=float, default=None, metavar="CI",
                        help="count (and later export) points whose confidence is below CI as not indexed; the "
                             "store keeps every solution (default 0.10; 0 counts every solution)")
    parser.add_argument("--static-background", action=argparse.BooleanOptionalAction, default=True,
                        help="subtract the cube's static_background variable when present (default yes)")
    parser.add_argument("--scheduler", default="threads",
                        help="inline, threads (default), local (a dask LocalCluster) or tcp://host:port")
    parser.add_argument("--workers", type=positive_int, default=None, help="threads, or local-cluster workers")
    parser.add_argument("--chunk-frames", type=positive_int, default=None,
                        help="patterns per chunk task (default: the cube's chunks)")
    parser.add_argument("--connect-timeout", type=positive_float, default=DEFAULT_CONNECT_TIMEOUT, metavar="S",
                        help=f"seconds a scheduler address has to answer (default {DEFAULT_CONNECT_TIMEOUT:g})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier result store at OUT instead of resuming it")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--png", action="store_true",
                        help="also write OUT_ipf.png, OUT_confidence.png, OUT_fit.png, OUT_phase.png")
    parser.set_defaults(func=run)


def step_backend(choice: str) -> str:
    """The pipeline backend for ``--backend``: ``cupy`` for cuda, ``numpy`` for cpu; auto picks CUDA when present.

    Examples
    --------
    >>> step_backend("cpu")
    'numpy'
    """
    from diffraflow.schemas.backends import backend_available

    if choice == "auto":
        return "cupy" if backend_available("cupy") else "numpy"
    return "cupy" if choice == "cuda" else "numpy"


def index_pipeline(args: argparse.Namespace) -> Pipeline:
    """The one-step pipeline ``diffraflow index`` runs, built (and its parameters checked) from the arguments.

    Examples
    --------
    >>> ns = argparse.Namespace(phase=["ni"], pc=None, pc_convention="bruker", backend="cpu", n_bands=None,
    ...                         min_confidence=None, static_background=True)
    >>> index_pipeline(ns).to_dict()["steps"][0]["name"]
    'crystal_map'
    """
    from diffraflow.flow.commands.export import check_min_confidence
    from diffraflow.flow.pipeline import Pipeline, Step
    from diffraflow.operators.base import build_operator
    from diffraflow.schemas.cube import check_projection_centre

    check_min_confidence(args.min_confidence)
    params: dict[str, Any] = {"use_static_background": bool(args.static_background)}
    if args.phase:
        if len(set(args.phase)) != len(args.phase):
            from diffraflow.schemas.errors import SchemaError

            raise SchemaError("--phase", f"phase names repeat: {args.phase}", "give each phase once")
        params["phases"] = list(args.phase)
    if args.pc is not None:
        params["pc"] = list(check_projection_centre(args.pc, args.pc_convention, "--pc"))
        params["pc_convention"] = args.pc_convention
    if args.n_bands is not None:
        params["n_bands"] = args.n_bands
    if args.min_confidence is not None:
        params["min_confidence"] = float(args.min_confidence)
    op = build_operator("hough_index", params, where="diffraflow index")
    return Pipeline([Step(op, name=STEP_NAME, backend=step_backend(args.backend))])


def summary_line(path: str | os.PathLike[str], n_indexed: int, n_below: int, n: int, min_confidence: float, phases: str, backend: str,
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


def _geq() -> str:
    """``≥`` where the terminal can print it, else ``>=``."""
    try:
        "≥".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ">="
    return "≥"


def run(args: argparse.Namespace) -> int:
    from diffraflow.flow.commands.run import say_how_it_starts
    from diffraflow.flow.crystal_map import count_indexed, read_crystal_map, read_crystal_map_record
    from diffraflow.flow.engine import run_pipeline
    from diffraflow.flow.exporters._common import check_output
    from diffraflow.flow.plots_crystal import png_paths
    from diffraflow.flow.store import check_not_an_input, prepare_output_path, stored_array

    pipeline = index_pipeline(args)  # parameters checked before anything else
    check_not_an_input(args.output, [args.input])
    if args.overwrite:  # refuse a non-replaceable output before the kernels compile
        prepare_output_path(args.output, overwrite=True, inputs=[args.input])
    base = _picture_base(args.output)
    if args.png:
        for path in png_paths(base).values():
            check_output(path, args.overwrite)

    report = run_pipeline(pipeline, args.input, args.output, executor=args.scheduler, workers=args.workers,
                          chunk_frames=args.chunk_frames, overwrite=args.overwrite, progress=not args.quiet,
                          collect=False, on_start=say_how_it_starts, connect_timeout=args.connect_timeout)
    if report.warmup_seconds >= 1:
        print(f"compiled the kernels in {report.warmup_seconds:.0f} s; later runs load them from numba's cache",
              file=sys.stderr)
    output = report.output
    assert output is not None  # the run wrote a result store
    group, _, record = read_crystal_map_record(output, STEP_NAME)
    # the prefix names the step's group (checked by read_crystal_map_record)
    target = cast("zarr.Group", group[record["prefix"]]) if record.get("prefix") else group
    phase_id = np.asarray(stored_array(target, "phase_id")[...])
    confidence = np.asarray(stored_array(target, "confidence")[...])
    hough = cast("HoughIndex", pipeline.steps[0].op)  # index_pipeline builds a hough_index step
    min_confidence = float(record.get("min_confidence", hough.min_confidence))
    n_indexed, n_below = count_indexed(phase_id, confidence, min_confidence)
    phases = ", ".join(p["name"] for p in record.get("phases", []))
    backend = "cuda" if pipeline.steps[0].backend == "cupy" else "cpu"
    if report.already_complete:
        print(f"{output}: already complete (re-run with --overwrite to index again)")
    print(summary_line(output, n_indexed, n_below, phase_id.size, min_confidence, phases, backend,
                       report.seconds))
    if n_below > n_indexed:
        pc = (record.get("projection_centre") or {})
        print(f"most solutions have a confidence below {min_confidence:.2f}: check the projection centre "
              f"(used {pc.get('value')}, {pc.get('convention')}; set it with --pc) and the phases",
              file=sys.stderr)
    if args.png:
        from diffraflow.flow.plots_crystal import write_crystal_map_pngs

        for picture in write_crystal_map_pngs(read_crystal_map(output, STEP_NAME), base,
                                              overwrite=args.overwrite, min_confidence=min_confidence):
            print(picture)
    return 0


def _picture_base(output: str) -> Path:
    from pathlib import Path

    final = Path(output).expanduser().absolute()
    return final.with_suffix("") if final.suffix == ".zarr" else final

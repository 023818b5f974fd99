"""``diffraflow demo``: the main job on an embedded default.

Simulates a small EBSD scan of nickel grains, runs the default pipeline
(background correction, virtual images, mean pattern), Hough-indexes the scan
and writes result stores and PNG pictures, then prints where they are. Each
step goes through the same subcommand a user would type, so the demo checks
the real command line end to end. On a machine's first run the Hough
indexing kernels are compiled as a step of their own, announced before it
starts, so the indexing step's time and rate are those of a warm run.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from diffraflow.schemas.errors import OutputExistsError

if TYPE_CHECKING:
    from diffraflow.flow.cli import Subparsers

DEFAULT_PIPELINE = "default_ebsd.yaml"


def register(subparsers: Subparsers) -> None:
    """Add the ``demo`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser(
        "demo", help="simulate a small EBSD scan, run the default pipeline and indexing, write pictures",
        description="Run the main job on an embedded default: simulate -> pipeline -> index -> results and PNGs.")
    parser.add_argument("--output", "-o", default="diffraflow-results",
                        help="directory for the stores and pictures (default: ./diffraflow-results)")
    parser.add_argument("--scan-shape", nargs=2, type=int, default=(30, 40), metavar=("ROWS", "COLS"),
                        help="size of the simulated scan (default: 30 40)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the simulation")
    parser.add_argument("--scheduler", default="threads", help="executor for the pipeline (default: threads)")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=True,
                        help="replace an earlier demo's outputs, never other files (default: yes)")
    parser.set_defaults(func=run)


def default_pipeline_path() -> Path:
    """Path of the packaged default EBSD pipeline file.

    Examples
    --------
    >>> default_pipeline_path().name
    'default_ebsd.yaml'
    """
    return Path(str(resources.files("diffraflow.flow.pipelines") / DEFAULT_PIPELINE))


def _step(title: str, argv: list[str]) -> None:
    from diffraflow.flow.cli import main

    print(f"==> {title}\n    diffraflow {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    status = main(argv)
    if status != 0:
        raise SystemExit(status)
    print(f"    done in {time.perf_counter() - start:.1f} s", flush=True)


def _compile_indexing_kernels(scan: Path) -> None:
    """Compile the indexing kernels for the scan's dtype as a step, saying so first; silent when cached."""
    from diffraflow.flow.store import open_cube
    from diffraflow.operators.indexing.indexer import warm_up_kernels

    dtype = open_cube(scan, chunks=None)["patterns"].dtype
    seconds = warm_up_kernels(dtype, "auto", notify=lambda message: print(f"==> {message}", flush=True))
    if seconds is not None:
        print(f"    done in {seconds:.1f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output).absolute()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(str(out), "exists and is not a directory", "pass another --output directory")
    out.mkdir(parents=True, exist_ok=True)
    scan, results, xmap = out / "scan.zarr", out / "pipeline.zarr", out / "crystal_map.zarr"
    # Each step replaces only what an earlier demo made (diffraflow stores of the same kind), never
    # anything else that happens to sit in the output directory.
    again = ["--overwrite"] if args.overwrite else []
    rows, cols = args.scan_shape
    _step("simulating a noisy EBSD scan of nickel grains",
          ["simulate", "ebsd", str(scan), "--scan-shape", str(rows), str(cols), "--seed", str(args.seed), *again])
    _step("running the default pipeline",
          ["run", str(default_pipeline_path()), "--input", str(scan), "--output", str(results),
           "--scheduler", args.scheduler, "--png", str(out / "pipeline"), *again])
    _compile_indexing_kernels(scan)
    _step("Hough-indexing the scan", ["index", str(scan), str(xmap), "--phase", "ni", *again])
    _step("exporting the crystal map", ["export", str(xmap), str(out / "crystal_map.ang"), *again])
    _step("drawing the orientation, confidence and phase maps",
          ["export", str(xmap), str(out / "crystal_map.png"), *again])
    _report(out, scan, xmap)
    return 0


def _report(out: Path, scan: Path, xmap: Path) -> None:
    import numpy as np
    from diffraflow.flow.crystal_map import read_crystal_map
    from diffraflow.flow.store import open_cube

    print("\nResults")
    for path in sorted(out.iterdir()):
        if path.suffix in (".zarr", ".png", ".ang"):
            print(f"  {path}")
    try:
        truth = open_cube(scan)
        crystal_map = read_crystal_map(xmap)
        from orix.quaternion import Orientation

        symmetry = crystal_map.phases[0].point_group
        est = Orientation(crystal_map.rotations.data, symmetry)
        true = Orientation(truth["true_rotation"].values.reshape(-1, 4), symmetry)
        angles = np.degrees(est.angle_with(true, degrees=False))
        print(f"\nIndexing against the simulation's ground truth: {np.mean(angles < 2) * 100:.1f}% of points "
              f"within 2 deg, median error {np.median(angles):.2f} deg")
    except Exception as exc:  # the summary is a courtesy; the files above are the result
        print(f"(could not compare with ground truth: {exc})")
    print(f"\nOpen the pictures: {out}/*.png")

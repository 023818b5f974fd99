"""``diffraflow export RESULT.zarr OUT.{ang,ctf,h5,png}``: write a crystal map for other programs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from diffraflow.flow.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add the ``export`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser(
        "export", help="export a crystal map to .ang, .ctf, orix .h5 or PNG pictures",
        description="Export the crystal map of a result store. The output format follows the extension: "
                    ".ang (EDAX/TSL OIM), .ctf (Oxford Channel 5/AZtec), .h5/.hdf5 (orix HDF5), "
                    ".png (OUT_ipf.png, OUT_confidence.png, OUT_fit.png, OUT_phase.png).")
    parser.add_argument("store", help="result store (.zarr) holding a crystal map")
    parser.add_argument("output", help="output file: .ang, .ctf, .h5, .hdf5 or .png")
    parser.add_argument("--ipf-direction", choices=("x", "y", "z"), default="z",
                        help="sample direction of the IPF colouring for .png (default z)")
    parser.add_argument("--min-confidence", type=float, default=None, metavar="CI",
                        help="write points whose confidence is below CI as not indexed (default: the value "
                             "'diffraflow index' used, else 0.10; 0 keeps every solution)")
    parser.add_argument("--map", dest="key", default=None,
                        help="which crystal map, when the store holds several")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output")
    parser.set_defaults(func=run)


def check_min_confidence(value: float | None, option: str = "--min-confidence") -> None:
    """Refuse a confidence threshold outside [0, 1].

    Examples
    --------
    >>> check_min_confidence(0.1)
    >>> check_min_confidence(10)
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.SchemaError: --min-confidence: must be between 0 and 1, got 10 (fix: e.g. --min-confidence 0.1; 0 keeps every solution)
    """
    from diffraflow.schemas.errors import SchemaError

    if value is not None and not 0.0 <= value <= 1.0:
        raise SchemaError(option, f"must be between 0 and 1, got {value:g}",
                          f"e.g. {option} 0.1; 0 keeps every solution")


def run(args: argparse.Namespace) -> int:
    from diffraflow.flow.crystal_map import (
        MIN_CONFIDENCE,
        header_metadata,
        read_crystal_map,
        read_crystal_map_record,
    )
    from diffraflow.flow.exporters import export_crystal_map, exporter_for
    from diffraflow.flow.exporters._common import check_output
    from diffraflow.flow.plots_crystal import png_paths

    check_min_confidence(args.min_confidence)
    exporter_for(args.output)  # unknown extension: fail before reading anything
    outputs = png_paths(args.output).values() if args.output.lower().endswith(".png") else [args.output]
    for path in outputs:
        check_output(path, args.overwrite)
    _, _, record = read_crystal_map_record(args.store, args.key)
    min_confidence = args.min_confidence
    if min_confidence is None:
        min_confidence = float(record.get("min_confidence", MIN_CONFIDENCE))
    xmap = read_crystal_map(args.store, args.key)
    written = export_crystal_map(xmap, args.output, overwrite=args.overwrite, metadata=header_metadata(record),
                                 ipf_direction=args.ipf_direction, min_confidence=min_confidence)
    for path in written:
        print(path)
    return 0

"""``diffraflow export RESULT.zarr OUT.{ang,ctf,h5,png}``: write a crystal map for other programs."""

from __future__ import annotations


def register(subparsers) -> None:
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
    parser.add_argument("--map", dest="key", default=None,
                        help="which crystal map, when the store holds several")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output")
    parser.set_defaults(func=run)


def run(args) -> int:
    from flow.crystal_map import read_crystal_map, read_crystal_map_record
    from flow.exporters import export_crystal_map, exporter_for
    from flow.exporters._common import check_output
    from flow.plots_crystal import png_paths

    exporter_for(args.output)  # unknown extension: fail before reading anything
    outputs = png_paths(args.output).values() if args.output.lower().endswith(".png") else [args.output]
    for path in outputs:
        check_output(path, args.overwrite)
    _, _, record = read_crystal_map_record(args.store, args.key)
    xmap = read_crystal_map(args.store, args.key)
    written = export_crystal_map(xmap, args.output, overwrite=args.overwrite, metadata=record.get("scan"),
                                 ipf_direction=args.ipf_direction)
    for path in written:
        print(path)
    return 0

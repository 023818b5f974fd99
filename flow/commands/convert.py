"""``diffraflow convert IN [IN ...] OUT.zarr``: vendor files to a scan cube, streaming."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING

from diffraflow.flow.cli import positive_float
from diffraflow.schemas.cube import PC_CONVENTIONS

if TYPE_CHECKING:
    import argparse

    from diffraflow.flow.cli import Subparsers

_EPILOG = """formats: h5ebsd (kikuchipy, EDAX, Bruker, Oxford), EDAX .up1/.up2, Oxford .ebsp,
NORDIF .dat (+Setting.txt), NanoMegas .blo, Merlin .mib (+.hdr), HyperSpy .hspy, .npy,
multi-page TIFF, and stacks of PNG/JPEG/BMP/TIFF images (a directory, a quoted glob or a
list of files; --scan-shape required). An .ang/.ctf beside the input whose name begins
the input's name is stored as the crystal map.

examples:
  diffraflow convert scan.h5 scan.zarr
  diffraflow convert "patterns/p*.jpg" scan.zarr --scan-shape 2 2 --modality ebsd
  diffraflow convert data.mib data.zarr --chunk-mb 16 --energy 300"""


def register(subparsers: Subparsers) -> None:
    """Add the ``convert`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    import argparse

    parser = subparsers.add_parser(
        "convert", help="convert a vendor file or image stack into a scan cube (streaming)",
        description="Convert an EBSD, SPED or 4D-STEM file (or a stack of images) into a diffraflow "
                    "scan cube, streaming frames so memory stays bounded.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IN", help="input file, directory, glob, or image files")
    parser.add_argument("output", metavar="OUT.zarr", help="store to create")
    parser.add_argument("--scan-shape", nargs=2, type=int, metavar=("ROWS", "COLS"),
                        help="scan shape; required for image stacks, may re-shape any input of equal size")
    parser.add_argument("--det-shape", nargs=2, type=int, metavar=("H", "W"),
                        help="pattern shape for raw files without a header (NORDIF without Setting.txt)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT once the new store is complete")
    parser.add_argument("--chunk-mb", type=positive_float, metavar="MB", help="chunk size budget in MiB (default 8)")
    parser.add_argument("--modality", choices=["ebsd", "tkd", "4dstem", "sped"], help="override the modality")
    parser.add_argument("--pc", nargs=3, type=float, metavar=("X", "Y", "Z"), help="projection centre")
    parser.add_argument("--pc-convention", choices=PC_CONVENTIONS, help="convention of --pc (default bruker)")
    parser.add_argument("--sample-tilt", type=float, metavar="DEG", help="sample tilt in degrees")
    parser.add_argument("--energy", type=float, metavar="KV", help="beam energy in kV")
    parser.add_argument("--step", nargs=2, type=float, metavar=("Y", "X"), help="scan step sizes")
    parser.add_argument("--step-unit", choices=["um", "nm"], help="unit of --step (default: the file's, or um)")
    parser.add_argument("--crystal-map", metavar="FILE", help=".ang/.ctf crystal map to store with the patterns")
    parser.add_argument("--format", metavar="NAME", help="force a reader (h5ebsd, hspy, npy, tiff, image_stack...)")
    parser.add_argument("--scan-group", metavar="NAME", help="h5ebsd: scan group to read (default: the first)")
    parser.add_argument("--setting-file", metavar="FILE", help="NORDIF: Setting.txt to use")
    parser.add_argument("--processed", action="store_true", help="Oxford H5OINA: read processed patterns")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar, notes or summary")
    parser.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    """The command line, rebuilt from the parsed arguments (for provenance)."""
    words = ["diffraflow", "convert", *args.inputs, args.output]
    for name in ("scan_shape", "det_shape", "chunk_mb", "modality", "pc", "pc_convention", "sample_tilt",
                 "energy", "step", "step_unit", "crystal_map", "format", "scan_group", "setting_file"):
        value = getattr(args, name)
        if value is None:
            continue
        words.append("--" + name.replace("_", "-"))
        words.extend(str(v) for v in (value if isinstance(value, list) else [value]))
    words += [f"--{flag}" for flag in ("overwrite", "processed") if getattr(args, flag)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    from diffraflow.flow.convert import convert

    quiet = args.quiet

    def note(text: str) -> None:
        if not quiet:
            print(f"diffraflow convert: note: {text}", file=sys.stderr)

    report = convert(
        args.inputs, args.output,
        scan_shape=tuple(args.scan_shape) if args.scan_shape else None,
        det_shape=tuple(args.det_shape) if args.det_shape else None,
        overwrite=args.overwrite, chunk_mb=args.chunk_mb, modality=args.modality, pc=args.pc,
        pc_convention=args.pc_convention, sample_tilt=args.sample_tilt, energy=args.energy, step=args.step,
        step_unit=args.step_unit, crystal_map=args.crystal_map, format=args.format,
        reader_options={"scan_group": args.scan_group, "setting_file": args.setting_file,
                        "processed": args.processed or None},
        command=_command(args), progress=not quiet and sys.stderr.isatty(), on_note=note,
    )
    if not quiet:
        print(f"wrote {report.output}: {report.scan_shape[0]} x {report.scan_shape[1]} frames of "
              f"{report.det_shape[0]} x {report.det_shape[1]} {report.dtype} from {report.source_format} "
              f"in {report.seconds:.2f} s ({report.mb_per_s:.1f} MB/s)")
    return 0

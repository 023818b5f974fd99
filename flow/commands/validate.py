"""``diffraflow validate STORE``: check a store against the schemas."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from diffraflow.flow.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add the ``validate`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser("validate", help="check a store against the diffraflow schemas",
                                   description="Validate a store; exit 0 if valid, 2 with a one-line error if not.")
    parser.add_argument("store", help="a .zarr store")
    parser.add_argument("--quick", action="store_true",
                        help="check metadata and that every chunk file exists, without reading the data back "
                             "to verify its checksums")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from diffraflow.flow.inspect_store import validate_store
    from diffraflow.flow.store import check_manifest, verify_checksums

    report = validate_store(args.store)
    manifest = check_manifest(args.store)
    how = "metadata and chunk files checked"
    if not args.quick:
        size = verify_checksums(args.store, progress=sys.stderr.isatty())
        how = f"metadata, chunk files and checksums of {size / 2**20:.1f} MiB checked"
    if manifest is None:
        how += "; no manifest (written by an older diffraflow), so missing chunks cannot be ruled out"
    print(f"{args.store}: valid {report['kind']} store ({how})")
    return 0

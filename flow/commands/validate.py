"""``diffraflow validate STORE``: check a store against the schemas."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add the ``validate`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser("validate", help="check a store against the diffraflow schemas",
                                   description="Validate a store; exit 0 if valid, 2 with a one-line error if not.")
    parser.add_argument("store", help="a .zarr store")
    parser.set_defaults(func=run)


def run(args) -> int:
    from flow.inspect_store import validate_store

    report = validate_store(args.store)
    print(f"{args.store}: valid {report['kind']} store")
    return 0

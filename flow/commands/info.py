"""``diffraflow info STORE``: a human summary of a store."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add the ``info`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser("info", help="summarise a store: shape, chunks, metadata, results",
                                   description="Print a human summary of a diffraflow store.")
    parser.add_argument("store", help="a .zarr store written by diffraflow")
    parser.set_defaults(func=run)


def run(args) -> int:
    from flow.inspect_store import describe_store

    print(describe_store(args.store))
    return 0

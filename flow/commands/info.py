"""``diffraflow info STORE``: a human summary of a store."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from diffraflow.flow.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add the ``info`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser("info", help="summarise a store: shape, chunks, metadata, results",
                                   description="Print a human summary of a diffraflow store.")
    parser.add_argument("store", help="a .zarr store written by diffraflow")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary of ``args.store``; values the store does not know read "unknown".

    Examples
    --------
    >>> import argparse
    >>> run(argparse.Namespace(store="/nonexistent.zarr"))
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.StoreNotFoundError: /nonexistent.zarr: no such store (fix: check the path; create a store with 'diffraflow convert' or 'diffraflow simulate')
    """
    from diffraflow.flow.inspect_store import describe_store

    print(describe_store(args.store))
    return 0

"""The ``diffraflow`` command line.

Each subcommand lives in its own module ``flow.commands.<name>`` exposing
``register(subparsers)``, which adds a parser whose ``func`` default takes the
parsed arguments and returns an exit status. Errors that diffraflow raises on
purpose (:class:`~schemas.errors.DiffraflowError`) are printed as one line on
stderr with exit status 2; ``--debug`` shows the traceback instead.

Examples
--------
>>> main(["--version"])  # doctest: +ELLIPSIS
diffraflow ...
0
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from schemas.errors import DiffraflowError

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = ("demo", "simulate", "convert", "info", "validate", "run", "operators", "index", "export",
                   "schema")


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser with every available subcommand.

    Examples
    --------
    >>> "info" in build_parser().format_help()
    True
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("diffraflow")
    except PackageNotFoundError:
        ver = "unknown"
    parser = argparse.ArgumentParser(
        prog="diffraflow",
        description="Streaming dataflow engine for electron-diffraction scans (EBSD, 4D-STEM, SPED).",
    )
    parser.add_argument("--version", action="version", version=f"diffraflow {ver}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"flow.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"flow.commands.{name}":
                continue  # that command is not part of this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Examples
    --------
    >>> main(["info", "/no/such/store.zarr"])
    2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DiffraflowError as exc:
        if args.debug:
            raise
        print(f"diffraflow {args.command}: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffraflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``diffraflow info x | head``): stop quietly,
        # and keep Python from complaining again when it flushes stdout at exit.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def console_main() -> None:  # pragma: no cover - entry point
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console_main()

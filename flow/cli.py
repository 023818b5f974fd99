"""The ``diffraflow`` command line.

Each subcommand lives in its own module ``diffraflow.flow.commands.<name>`` exposing
``register(subparsers)``, which adds a parser whose ``func`` default takes the
parsed arguments and returns an exit status. Errors that diffraflow raises on
purpose (:class:`~diffraflow.schemas.errors.DiffraflowError`) are printed as one line on
stderr with exit status 2; ``--debug`` shows the traceback instead.

Examples
--------
>>> main(["--version"])  # doctest: +ELLIPSIS
diffraflow ...
0
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn, TypeAlias, TypeVar

from diffraflow.schemas.errors import DiffraflowError

if TYPE_CHECKING:
    #: What each command module's ``register(subparsers)`` receives: the ``diffraflow`` parser's subcommands.
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["main", "build_parser", "COMMAND_MODULES", "positive_int", "non_negative_int", "positive_float",
           "OneLineParser"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = ("demo", "simulate", "convert", "info", "validate", "run", "operators", "index", "export",
                   "schema", "train", "live", "evaluate")


_Number = TypeVar("_Number", int, float)


def _number_type(kind: type[_Number], test: Callable[[_Number], bool], words: str) -> Callable[[str], _Number]:
    def parse(text: str) -> _Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
        if kind is float and value != value or value in (float("inf"), float("-inf")) or not test(value):
            raise argparse.ArgumentTypeError(f"expected {words}, got {text}")
        return value

    parse.__name__ = words  # argparse names the type in its messages
    return parse


#: ``type=`` for arguments that must be a whole number >= 1 (workers, chunk sizes, windows).
positive_int = _number_type(int, lambda v: v >= 1, "a whole number of 1 or more")
#: ``type=`` for arguments that must be a whole number >= 0 (retries).
non_negative_int = _number_type(int, lambda v: v >= 0, "a whole number of 0 or more")
#: ``type=`` for arguments that must be a finite number > 0 (sizes in MiB, timeouts).
positive_float = _number_type(float, lambda v: v > 0, "a number greater than 0")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line with a fix, exit status 2.

    Examples
    --------
    >>> OneLineParser(prog="diffraflow run").error("argument --workers: expected a whole number of 1 or more, got -2")
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (fix: see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


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
    parser = OneLineParser(
        prog="diffraflow",
        description="Streaming dataflow engine for electron-diffraction scans (EBSD, 4D-STEM, SPED).",
    )
    parser.add_argument("--version", action="version", version=f"diffraflow {ver}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"diffraflow.flow.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"diffraflow.flow.commands.{name}":
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
    except OSError as exc:
        # A full disk, a quota or a read-only mount reaches us from deep inside zarr or numpy:
        # the user needs one line that says which file and what to do, not the stack.
        problem = _os_problem(exc)
        if problem is None or args.debug:
            raise
        print(f"diffraflow {args.command}: error: {problem}", file=sys.stderr)
        return 2


_OS_FIXES = {
    errno.ENOSPC: ("no space left on the device", "free space or write to another disk, then re-run the same "
                   "command (runs resume; partial outputs are cleaned up)"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or write elsewhere, then re-run"),
    errno.EROFS: ("the file system is read-only", "write the output to a writable location"),
    errno.EIO: ("input/output error from the device", "check the disk or network mount, then re-run"),
}


def _os_problem(exc: OSError) -> str | None:
    """One line for operating-system errors a user can act on; None for anything else (a bug: keep the trace).

    Examples
    --------
    >>> print(_os_problem(OSError(errno.ENOSPC, "No space left on device", "/data/out.zarr/c/0")))
    /data/out.zarr/c/0: no space left on the device (fix: free space or write to another disk, then re-run the same command (runs resume; partial outputs are cleaned up))
    """
    seen: BaseException | None = exc
    while seen is not None:  # zarr and dask may wrap the OSError
        if isinstance(seen, OSError) and seen.errno in _OS_FIXES:
            problem, fix = _OS_FIXES[seen.errno]
            where = seen.filename or "output"
            return f"{where}: {problem} (fix: {fix})"
        seen = seen.__cause__ or seen.__context__
    return None


def console_main() -> None:  # pragma: no cover - entry point
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console_main()

"""One error hierarchy for diffraflow.

Every error the package raises on purpose derives from :class:`DiffraflowError`
and also from the built-in exception a caller would naturally catch
(``ValueError``, ``FileNotFoundError``...), in the manner of zarr-python's
``errors.py``. Messages are one line and name three things: *where* (the file
or the field), *what* is wrong (with the offending value), and *the fix*.

The command line turns any :class:`DiffraflowError` into that one line on
stderr and exit status 2; other exceptions are bugs and keep their traceback.

Examples
--------
>>> from diffraflow.schemas.errors import SchemaError
>>> err = SchemaError("detector.pc", "pc_x must lie in [0, 1], got 1.7", "give the projection centre as a fraction of the detector width")
>>> print(err)
detector.pc: pc_x must lie in [0, 1], got 1.7 (fix: give the projection centre as a fraction of the detector width)
>>> isinstance(err, ValueError)
True
"""

from __future__ import annotations

__all__ = [
    "DiffraflowError",
    "SchemaError",
    "InputFileError",
    "UnknownFormatError",
    "TruncatedFileError",
    "OutputExistsError",
    "DestinationNotWritableError",
    "IncompleteStoreError",
    "StoreNotFoundError",
    "PipelineError",
    "ChunkFailedError",
    "BackendUnavailableError",
    "StoreLockedError",
    "DataCorruptionError",
    "UnsafeRecordError",
    "StorageFullError",
    "SchedulerUnreachableError",
    "WorkersLostError",
]


class DiffraflowError(Exception):
    """Root of every error diffraflow raises on purpose.

    Parameters
    ----------
    where
        The file path or dotted field name the error is about.
    problem
        What is wrong, showing the offending value.
    fix
        What the user should do about it.

    Examples
    --------
    >>> str(DiffraflowError("scan.zarr", "not a directory", "pass a Zarr store"))
    'scan.zarr: not a directory (fix: pass a Zarr store)'
    """

    def __init__(self, where: str, problem: str, fix: str | None = None) -> None:
        self.where = str(where)
        self.problem = str(problem)
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The message as a single line: ``where: problem (fix: ...)``.

        Examples
        --------
        >>> DiffraflowError("a", "b").one_line()
        'a: b'
        """
        text = f"{self.where}: {self.problem}"
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())

    def __reduce__(self):  # keep errors picklable across dask workers
        return (self.__class__, (self.where, self.problem, self.fix))


class SchemaError(DiffraflowError, ValueError):
    """Metadata or a pipeline file does not satisfy its schema."""


class InputFileError(DiffraflowError, ValueError):
    """An input file cannot be read as what it claims to be."""


class UnknownFormatError(InputFileError):
    """No reader recognises the input file."""


class TruncatedFileError(InputFileError):
    """An input file is shorter than its header says, or garbled."""


class OutputExistsError(DiffraflowError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


class DestinationNotWritableError(DiffraflowError, PermissionError):
    """The output location cannot be written."""


class StoreNotFoundError(DiffraflowError, FileNotFoundError):
    """A store path does not exist or is not a diffraflow store."""


class IncompleteStoreError(DiffraflowError, ValueError):
    """A store was never finished (its writer died or is still running)."""


class PipelineError(DiffraflowError, ValueError):
    """A pipeline is invalid: unknown operator, bad parameter, incompatible steps."""


class ChunkFailedError(DiffraflowError, RuntimeError):
    """A chunk kept failing after its retries; other results were kept."""


class BackendUnavailableError(DiffraflowError, RuntimeError):
    """A compute backend (CUDA, CuPy, cuML) was asked for but is not present."""


class StoreLockedError(DiffraflowError, BlockingIOError):
    """Another live process is writing the same store (one writer per store)."""


class DataCorruptionError(DiffraflowError, OSError):
    """Stored data is missing or damaged: a deleted chunk file, a checksum mismatch."""


class UnsafeRecordError(DiffraflowError, ValueError):
    """A record read from a store is in a format that could run code (pickle); it is never loaded."""


class StorageFullError(DiffraflowError, OSError):
    """The device holding an output is full (or over quota, or read-only) while writing."""


class SchedulerUnreachableError(DiffraflowError, ConnectionError):
    """A dask scheduler address does not answer, or the connection to it dropped."""


class WorkersLostError(DiffraflowError, RuntimeError):
    """Every worker of a cluster died while a run was going."""

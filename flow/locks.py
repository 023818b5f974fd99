"""One writer per store: a lock file beside the store, naming its owner.

Writing ``OUT.zarr`` takes ``.OUT.zarr.lock`` in the same directory: an
exclusive ``flock`` on it (released by the kernel when the owner dies, however
it dies) plus a JSON body naming the owner's host, pid and start time, so a
refused writer can say who holds the store. A lock file left behind by a dead
process on this host is stale and taken over; one naming another host whose
lock cannot be checked from here (a network file system without ``flock``) is
refused with the fix of removing it by hand.

Examples
--------
>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "r.zarr"
>>> with StoreLock(out) as lock:
...     lock.path.name
'.r.zarr.lock'
>>> lock.path.exists()
False
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

from diffraflow.schemas.errors import DestinationNotWritableError, StoreLockedError

__all__ = ["StoreLock", "lock_path", "pid_alive", "HOST"]

#: This machine's name, as written into lock files and temporary store names.
HOST = socket.gethostname() or "localhost"


def lock_path(store: str | os.PathLike[str]) -> Path:
    """The lock file of ``store``: a hidden sibling ``.NAME.lock``.

    Examples
    --------
    >>> lock_path("/data/scan.zarr").as_posix()
    '/data/.scan.zarr.lock'
    """
    store = Path(store).expanduser().absolute()
    return store.parent / f".{store.name}.lock"


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists on this machine.

    Examples
    --------
    >>> pid_alive(os.getpid())
    True
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _read_owner(path: Path) -> dict[str, Any]:
    try:
        owner = json.loads(path.read_text() or "{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


class StoreLock:
    """Exclusive writer lock of one store (context manager; also :meth:`acquire` / :meth:`release`).

    Parameters
    ----------
    store
        The store path being written.
    where
        Name used in error messages (default: the store path).

    Raises
    ------
    StoreLockedError
        Another live process holds the lock.
    """

    def __init__(self, store: str | os.PathLike[str], where: str | None = None) -> None:
        self.store = Path(store).expanduser().absolute()
        self.path = lock_path(self.store)
        self.where = where or str(self.store)
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> StoreLock:
        """Take the lock or raise :class:`~diffraflow.schemas.errors.StoreLockedError` naming the owner."""
        import fcntl

        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise DestinationNotWritableError(self.where, f"cannot create the lock file {self.path}",
                                              "choose an output in a directory you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            owner = _read_owner(self.path)
            raise StoreLockedError(self.where, f"another diffraflow process is writing it ({_describe(owner)})",
                                   "wait for it to finish, or stop it; one writer per store") from None
        owner = _read_owner(self.path)
        if owner and owner.get("host") not in (None, HOST):
            # flock does not reach across hosts on every network file system: trust the record.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise StoreLockedError(self.where, f"locked by a writer on another machine ({_describe(owner)})",
                                   f"if nothing runs there any more, delete {self.path}")
        if owner and owner.get("pid") not in (None, os.getpid()) and pid_alive(int(owner.get("pid", 0))) \
                and owner.get("start") == _process_start(int(owner["pid"])):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise StoreLockedError(self.where, f"another diffraflow process is writing it ({_describe(owner)})",
                                   "wait for it to finish, or stop it; one writer per store")
        self.took_over = owner or None  # a stale record of a dead writer
        record = {"host": HOST, "pid": os.getpid(), "start": _process_start(os.getpid()),
                  "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "store": str(self.store)}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up and remove the lock file (it is ours)."""
        import fcntl

        if self._fd is None:
            return
        try:
            if _read_owner(self.path).get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock must not outlive its object
        try:
            self.release()
        except Exception:
            pass


def _process_start(pid: int) -> str | None:
    # The kernel's start time of a process tells a live owner from a new process that reused its pid.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "owner unknown"
    return f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('since')}"

"""The threaded executor: a ``concurrent.futures`` thread pool in this process.

NumPy, Zarr decompression and most kernels release the GIL, so threads give
real parallelism without copying frames between processes.

Examples
--------
>>> with ThreadExecutor(2) as ex:
...     ex.submit("a", sum, [1, 2])
...     ex.next_done()
('a', True, 3)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from diffraflow.flow.executors.base import Executor

__all__ = ["ThreadExecutor"]


class ThreadExecutor(Executor):
    """Run tasks on ``n_threads`` threads (default: the CPU count)."""

    name = "threads"

    def __init__(self, n_threads: int | None = None) -> None:
        self.n_threads = int(n_threads or os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[Future[Any], Any] = {}

    @property
    def workers(self) -> int:
        return self.n_threads

    def start(self, gpu: bool = False) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.n_threads, thread_name_prefix="diffraflow")

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any, gpu: bool = False) -> None:
        self.start()
        assert self._pool is not None
        self._futures[self._pool.submit(fn, *args)] = key

    def next_done(self, timeout: float | None = None) -> tuple[Any, bool, Any] | None:
        if not self._futures:
            return None
        done, _ = wait(list(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
        if not done:
            return None
        future = next(iter(done))
        key = self._futures.pop(future)
        exc = future.exception()
        return (key, False, exc) if exc is not None else (key, True, future.result())

    def close(self) -> None:
        if self._pool is not None:
            for future in self._futures:
                future.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._futures.clear()

"""The inline executor: a plain loop in the calling thread, the reference.

Tasks run one at a time, in submission order, when the engine asks for the
next finished one, so a debugger or a traceback sees the kernel directly.

Examples
--------
>>> ex = InlineExecutor()
>>> ex.submit("a", pow, 2, 5)
>>> ex.next_done()
('a', True, 32)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from diffraflow.flow.executors.base import Executor

__all__ = ["InlineExecutor"]


class InlineExecutor(Executor):
    """Run each task in the calling thread when its result is asked for."""

    name = "inline"

    def __init__(self) -> None:
        self._queue: deque[tuple[Any, Callable[..., Any], tuple[Any, ...]]] = deque()

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any, gpu: bool = False) -> None:
        self._queue.append((key, fn, args))

    def next_done(self, timeout: float | None = None) -> tuple[Any, bool, Any] | None:
        if not self._queue:
            return None  # nothing submitted: nothing will ever finish
        key, fn, args = self._queue.popleft()
        try:
            return key, True, fn(*args)
        except Exception as exc:  # the engine decides: retry or report
            return key, False, exc

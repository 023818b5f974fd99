"""Testing tools shipped with diffraflow: sources that grow, for engine and operator tests.

:class:`GrowingArraySource` hands out an in-memory scan region by region on a
timer, the way a detector stream or a cube still being written does, so that
tests (ours and those of operator authors) can check that a pipeline gives
the same results live as offline, on every executor.

Examples
--------
>>> import numpy as np
>>> src = GrowingArraySource(np.zeros((2, 2, 3, 3), "uint8"), chunk_frames=2, interval=0.0)
>>> src.poll(1.0)[0][0].index, src.growing
(0, True)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from diffraflow.flow.sources import ArraySource, Region

__all__ = ["GrowingArraySource"]


class GrowingArraySource(ArraySource):
    """An in-memory scan whose regions become readable one every ``interval`` seconds.

    The growth happens in the driver (in :meth:`poll`); the array itself
    travels to workers like an :class:`~diffraflow.flow.sources.ArraySource`'s.

    Parameters
    ----------
    array
        ``(scan_y, scan_x, det_y, det_x)`` frames.
    chunk_frames
        Frames per region.
    interval
        Seconds between two regions becoming readable.
    attrs
        Scan metadata for operators that need it.
    """

    def __init__(self, array: np.ndarray, chunk_frames: int | None = None, interval: float = 0.05,
                 attrs: dict[str, Any] | None = None) -> None:
        super().__init__(array, chunk_frames=chunk_frames, attrs=attrs)
        self.interval = float(interval)
        self.growing = True
        self._pending = list(self.regions())
        self._next_time: float | None = None
        self.polls = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pending"] = []  # workers only read
        return state

    def poll(self, timeout: float) -> tuple[list[Region], bool]:
        """Regions due by now, waiting up to ``timeout`` seconds for the next one; and whether all were given."""
        self.polls += 1
        now = time.monotonic()
        if self._next_time is None:
            self._next_time = now
        deadline = now + max(0.0, timeout)
        while self._pending and self._next_time > time.monotonic() and time.monotonic() < deadline:
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
        fresh: list[Region] = []
        while self._pending and self._next_time <= time.monotonic():
            fresh.append(self._pending.pop(0))
            self._next_time += self.interval
        return fresh, not self._pending

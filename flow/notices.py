"""One-line notices to the user: what diffraflow did on its own (cleaned up, replaced, is compiling).

Library code calls :func:`notify`; by default the line goes to stderr
prefixed with ``diffraflow:``. Tests and embedding applications may install
their own receiver with :func:`set_receiver`.

Examples
--------
>>> seen = []
>>> previous = set_receiver(seen.append)
>>> notify("compiling kernels (first run only)")
>>> _ = set_receiver(previous); seen
['compiling kernels (first run only)']
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["notify", "set_receiver"]


def _to_stderr(message: str) -> None:
    print(f"diffraflow: {message}", file=sys.stderr, flush=True)


_receiver: Callable[[str], None] = _to_stderr


def notify(message: str) -> None:
    """Tell the user, in one line, about something diffraflow did or is doing by itself.

    Examples
    --------
    >>> notify("hello")  # printed on stderr
    """
    _receiver(message)


def set_receiver(receiver: Callable[[str], None] | None) -> Callable[[str], None]:
    """Route notices to ``receiver`` (``None`` restores stderr); returns the previous receiver.

    Examples
    --------
    >>> set_receiver(None) is not None
    True
    """
    global _receiver
    previous = _receiver
    _receiver = receiver or _to_stderr
    return previous

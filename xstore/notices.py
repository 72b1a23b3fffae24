"""How library code tells the person at the keyboard something without printing it.

Library code never writes to stdout or stderr: stdout may carry a NAR, and only the command line knows
how to word things and whether a progress line must be cleared first. A long wait or a note that does
not change the outcome ("waiting for the big lock...") goes to `notice()`, which hands it to whoever
listens: the CLI installs a listener that writes one line to stderr; a library user may install their
own, or none (then notices are dropped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Listener = Callable[[str], None]

_listeners: list[Listener] = []


def notice(message: str) -> None:
    """Tell the listeners `message` (one line, no newline)."""
    for listener in _listeners:
        listener(message)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send notices to `listener` while the block runs (instead of to any listener outside it)."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)

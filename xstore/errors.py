"""One exception hierarchy for the whole package.

Every error that library code raises on purpose is an `XstoreError`. Each subclass also inherits the
built-in exception a generic handler would expect (`ValueError` for bad input, `OSError` for the
filesystem), so code that does not know xstore still catches them sensibly. The CLI turns them into one
line on stderr; the FUSE layer turns them into errno values. Anything else escaping is a bug.

Errors cross process boundaries (FUSE daemons, namespace children), so they pickle: `__reduce__`
rebuilds them from the message and keyword context they were created with.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any


class XstoreError(Exception):
    """Base class: a message for a person, plus keyword context for programs."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context
        for key, value in context.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.context))


def _rebuild(cls: type[XstoreError], message: str, context: dict[str, Any]) -> XstoreError:
    return cls(message, **context)


def _show_path(path: bytes | tuple[bytes, ...]) -> str:
    if isinstance(path, tuple):
        path = b"/".join(path)
    return "/" + os.fsdecode(path) if path else "/"


class NarError(XstoreError, ValueError):
    """The archive's bytes are wrong: the fault is in the input, not in the caller.

    `offset` is the byte offset (from the start of the archive) of the token that was wrong, `path` the
    path inside the archive of the node being read, as bytes components.
    """

    offset: int
    path: tuple[bytes, ...]

    def __init__(self, message: str, *, offset: int, path: tuple[bytes, ...] = ()) -> None:
        self.reason = message
        super().__init__(
            f"bad archive: {message} (at byte {offset}, in {_show_path(path)})",
            offset=offset,
            path=path,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_nar, (type(self), self.reason, self.context))


def _rebuild_nar(cls: type[NarError], reason: str, context: dict[str, Any]) -> NarError:
    return cls(reason, **context)


class TruncatedError(NarError):
    """The input ended before the archive did."""


class NarEncodeError(XstoreError, ValueError):
    """The caller asked the encoder for something that is not a valid NAR (a bug in the caller)."""


class CaseHackError(XstoreError, ValueError):
    """Names that the case hack cannot keep apart (on restore or on dump)."""


class DumpError(XstoreError, OSError):
    """A tree cannot be serialised: unsupported file type, a file changed while read, ..."""


class RestoreError(XstoreError, OSError):
    """A NAR cannot be written to the destination."""


class DestinationExistsError(RestoreError, FileExistsError):
    """The destination already exists; xstore never overwrites."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.errno = _errno.EEXIST


class TrailingDataError(XstoreError, ValueError):
    """Bytes follow the end of an archive where nothing may."""


class PathNotFoundError(XstoreError, LookupError):
    """A path inside an archive does not exist."""


class UsageError(XstoreError, ValueError):
    """The caller's arguments do not make sense together."""

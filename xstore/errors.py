"""One exception hierarchy for the whole package, grouped by whose fault an error is.

Every error that library code raises on purpose is an `XstoreError`, and one of three kinds:

- `InputError`: bytes or text from outside were wrong: an archive, an export stream, a store path, a hash,
  a narinfo, a peer speaking a protocol. Retrying with the same input fails again.
- `StateError`: the system is not in a state that allows the operation: a path that is not valid, a
  store that cannot be opened, a destination that exists, a full disk, a missing feature. The input
  may be fine; something around it must change.
- `CallerError`: the program using xstore asked for something that makes no sense (an encoder fed an
  invalid event, a digest of the wrong size). From the command line, `UsageError` is the one kind that
  exits 2; every other error exits 1.

Each class also inherits the built-in exception a generic handler would expect (`ValueError` for bad
input, `OSError` for the filesystem, `LookupError` for something not found), so code that does not know
xstore still catches them sensibly. The CLI turns them into one line on stderr; the FUSE layer turns
them into errno values. Anything else escaping is a bug.

Errors cross process boundaries (FUSE daemons, namespace children), so they pickle: `__reduce__`
rebuilds them from the message and keyword context they were created with.
"""

from __future__ import annotations

import errno as _errno
import os

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
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


class InputError(XstoreError):
    """Bytes or text from outside are wrong (an archive, a stream, a path, a hash, a peer)."""


class StateError(XstoreError):
    """The system's state does not allow the operation (missing path, closed store, full disk...)."""


class CallerError(XstoreError):
    """The caller asked for something that makes no sense: a bug in the calling code, or misuse."""


def _show_path(path: bytes | tuple[bytes, ...]) -> str:
    if isinstance(path, tuple):
        path = b"/".join(path)
    return "/" + os.fsdecode(path) if path else "/"


# -- input from outside ------------------------------------------------------------------------------


class NarError(InputError, ValueError):
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


class TrailingDataError(InputError, ValueError):
    """Bytes follow the end of an archive where nothing may."""


class WireError(InputError, ValueError):
    """Nix's wire framing is broken: a string too long, padding that is not zero, a count out of range.

    `offset` is the stream offset of the item that was wrong.
    """

    offset: int


class ExportStreamError(InputError, ValueError):
    """The export stream's framing is wrong (outside the NARs, which raise `NarError`)."""


class HashMismatchError(InputError, ValueError):
    """Contents do not match the hash or size they were registered or announced with."""


class InvalidHashError(InputError, ValueError):
    """Text that is not a valid hash (bad characters, wrong length, unknown algorithm)."""


class InvalidStorePathError(InputError, ValueError):
    """Text that is not a valid store path, or a name that is not a valid store path name.

    `path` is the text as given (bytes shown with escapes), `reason` what is wrong with it.
    """

    path: str
    reason: str


class InvalidStoreUrlError(InputError, ValueError):
    """A store URL that cannot be parsed, or names a parameter with a bad value."""


class WrongFormatError(InputError, ValueError):
    """The input is a known format, but not the one the command reads (a NAR given to `import`...)."""


class CompressionError(InputError, ValueError):
    """Compressed input is corrupt or truncated."""


class CaseHackError(InputError, ValueError):
    """Names that the case hack cannot keep apart (on restore or on dump)."""


class PathNotFoundError(InputError, LookupError):
    """A path inside an archive does not exist."""


class NarInfoError(InputError, ValueError):
    """A `.narinfo` or `nix-cache-info` file that cannot be read (Nix: "NAR info file ... is corrupt")."""


class SigningKeyError(InputError, ValueError):
    """A signing key (secret or public) that is corrupt or of the wrong size."""


class SignatureError(InputError, PermissionError):
    """A path that lacks a signature valid for a trusted key, where one is required."""


class ProtocolError(InputError, ValueError):
    """A peer speaking Nix's serve or daemon protocol sent bytes that break it: a wrong magic, an
    unsupported version, a malformed message, garbage. `offset` is the stream offset, when known."""


# -- the state of the system -------------------------------------------------------------------------


class DumpError(StateError, OSError):
    """A tree cannot be serialised: unsupported file type, a file changed while read, ..."""


class RestoreError(StateError, OSError):
    """A NAR cannot be written to the destination."""


class DestinationExistsError(RestoreError, FileExistsError):
    """The destination already exists; xstore never overwrites."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.errno = _errno.EEXIST


class StoreError(StateError, OSError):
    """The store cannot be opened or used: wrong layout, unsupported schema, a corrupt row..."""


class InvalidPathError(StateError, LookupError):
    """A store path is not valid in this store."""


class StreamClosedError(StateError, OSError):
    """Standard input or output was closed when xstore started (`<&-`, `>&-`), or went away while it
    was written to."""


class BinaryCacheError(StateError, OSError):
    """A binary cache cannot be used: unreachable, refusing, for another store directory, not a cache."""


class ServeError(StateError, OSError):
    """A server cannot start or go on: the address cannot be listened on, the store cannot be served."""


class RepairError(StateError, LookupError):
    """A path cannot be repaired: no source has it with its registered hash, or no source was given."""


class UnsupportedError(StateError, NotImplementedError):
    """xstore cannot do this here (yet): a store kind not supported, a missing optional package."""


class RemoteError(StateError, OSError):
    """The far end of a protocol (a remote `nix-store --serve`, a Nix daemon) reported a failure, or
    refused the operation; the message is its own, on one line."""


class RemoteConnectionError(StateError, ConnectionError):
    """A connection to a remote store cannot be made or broke: ssh failed, the far end exited or
    closed the connection in the middle of an exchange."""


class RemoteTimeoutError(RemoteConnectionError, TimeoutError):
    """The far end stopped answering (or reading) for longer than the connection's timeout."""


class NotAllowedError(StateError, PermissionError):
    """The operation is not allowed here (a write to a store served without `--write`)."""


class MountError(StateError, OSError):
    """A mount operation failed; the message says what to do."""


class UnsupportedPlatformError(MountError):
    """Mount namespaces and bind mounts exist only on Linux."""


class FuseUnavailableError(StateError, OSError):
    """FUSE cannot be used here; the message says what is missing and how to get it."""


class FuseMountError(StateError, OSError):
    """A mount or an unmount failed, or the mount point cannot be used."""


# -- mistakes by the caller --------------------------------------------------------------------------


class NarEncodeError(CallerError, ValueError):
    """The caller asked the encoder for something that is not a valid NAR (a bug in the caller)."""


class InvalidArgumentError(CallerError, ValueError):
    """A library function was called with an argument outside its domain (a bug in the caller)."""


class UsageError(CallerError, ValueError):
    """The command line does not make sense: the one error that exits with status 2."""

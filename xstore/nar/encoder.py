"""The sans-IO NAR encoder: events in, bytes out.

The mirror image of `parser.py`: `send(event)` returns the bytes that event adds to the archive. The
encoder enforces the same rules as the parser (names valid and strictly increasing within a directory,
targets valid, contents exactly as long as announced, depth below 64), so whatever it produces, current
Nix accepts. A violation is the caller's bug and raises `NarEncodeError`.

Contents are returned as the very object passed in (no copy); headers of small nodes are built in one
`bytes.join`. Nix: archive.cc `dumpPath` (the `NarWriter` visitor).
"""

from __future__ import annotations

from xstore.errors import NarEncodeError
from xstore.nar import tokens
from xstore.nar.events import (
    ArchiveEnd,
    DirectoryEnd,
    DirectoryStart,
    Event,
    FileChunk,
    FileEnd,
    RegularFile,
    Symlink,
)
from xstore.nar.rules import name_problem, show, target_problem
from xstore.wire import NAR_MAX_DEPTH, U64, ZEROS, encode_strings


class NarEncoder:
    """Incremental NAR encoder. Feed events in archive order; concatenate what `send` returns.

    The archive is complete after `ArchiveEnd` (which returns `b""` and checks that every directory
    was closed); `size` is the number of bytes produced so far.
    """

    def __init__(self) -> None:
        self.size = 0
        self._started = False
        self._done = False
        self._dirs: list[tuple[tuple[bytes, ...], list[bytes]]] = []  # open dirs and their last name
        self._file: tuple[bytes, ...] | None = None
        self._file_left = 0
        self._file_size = 0

    def send(self, event: Event) -> bytes:
        if self._done:
            raise NarEncodeError("event after the end of the archive")
        if type(event) is FileChunk:
            data = event.data
            if self._file is None:
                raise NarEncodeError("file contents outside a regular file")
            if len(data) > self._file_left:
                raise NarEncodeError(
                    f"contents of /{show(b'/'.join(self._file))} exceed the announced size {self._file_size}"
                )
            self._file_left -= len(data)
            self.size += len(data)
            return data
        out = self._encode(event)
        self.size += len(out)
        return out

    def _encode(self, event: Event) -> bytes:
        if isinstance(event, FileEnd):
            if self._file is None or event.path != self._file:
                raise NarEncodeError("FileEnd does not close the open file")
            if self._file_left:
                raise NarEncodeError(
                    f"contents of /{show(b'/'.join(self._file))} are {self._file_left} bytes short "
                    f"of the announced size {self._file_size}"
                )
            self._file = None
            return ZEROS[: -self._file_size & 7] + self._close_node()
        if self._file is not None:
            raise NarEncodeError("a regular file is still open")
        if isinstance(event, DirectoryEnd):
            if not self._dirs or self._dirs[-1][0] != event.path:
                raise NarEncodeError("DirectoryEnd does not close the innermost open directory")
            self._dirs.pop()
            return self._close_node()
        if isinstance(event, ArchiveEnd):
            if self._dirs or not self._started:
                raise NarEncodeError("archive ended before its root node was complete")
            self._done = True
            return b""
        if isinstance(event, RegularFile | DirectoryStart | Symlink):
            prefix = self._open_node(event.path)
            if isinstance(event, RegularFile):
                if not 0 <= event.size < 1 << 64:
                    raise NarEncodeError(f"file size {event.size} out of range")
                self._file = event.path
                self._file_left = self._file_size = event.size
                parts = [prefix, tokens.OPEN_TYPE, tokens.REGULAR]
                if event.executable:
                    parts.append(tokens.EXECUTABLE)
                parts += (tokens.CONTENTS, U64.pack(event.size))
                return b"".join(parts)
            if isinstance(event, DirectoryStart):
                self._dirs.append((event.path, []))
                return prefix + tokens.OPEN_TYPE + tokens.DIRECTORY
            problem = target_problem(event.target)
            if problem is not None:
                raise NarEncodeError(f"{problem} at /{show(b'/'.join(event.path))}")
            out = prefix + tokens.OPEN_TYPE + tokens.SYMLINK_TARGET + encode_strings(event.target)
            return out + self._close_node()
        raise NarEncodeError(f"not a NAR event: {event!r}")

    def _open_node(self, path: tuple[bytes, ...]) -> bytes:
        """Bytes that introduce the node at `path`: the header for the root, an entry otherwise."""
        if not self._started:
            if path:
                raise NarEncodeError("the first node of an archive must be its root")
            self._started = True
            return tokens.MAGIC
        if not self._dirs or path[:-1] != self._dirs[-1][0] or not path:
            raise NarEncodeError(f"node /{show(b'/'.join(path))} is not inside the open directory")
        if len(path) >= NAR_MAX_DEPTH:
            raise NarEncodeError(f"directory nesting exceeds maximum depth of {NAR_MAX_DEPTH}")
        name = path[-1]
        problem = name_problem(name)
        if problem is not None:
            raise NarEncodeError(problem)
        last = self._dirs[-1][1]
        if last and name <= last[0]:
            raise NarEncodeError(
                f"entries not in strictly increasing order: '{show(name)}' after '{show(last[0])}'"
            )
        if last:
            last[0] = name
        else:
            last.append(name)
        return tokens.ENTRY_NAME + encode_strings(name) + tokens.NODE

    def _close_node(self) -> bytes:
        """Bytes that end a node: ")" and, inside a directory, the ")" of its entry."""
        if self._dirs:
            return tokens.CLOSE_CLOSE
        return tokens.CLOSE

"""The events the NAR parser yields and the encoder takes.

A NAR is a tree walked depth first, entries of a directory in strictly increasing byte order. Each node
is announced by one event carrying its path inside the archive (a tuple of byte components, `()` for the
root). A regular file is `RegularFile`, then its contents as any number of `FileChunk`s, then `FileEnd`
(or, from a parser asked for them, a small one can be a single `WholeFile`). A directory is
`DirectoryStart`, its entries, `DirectoryEnd`. The archive closes with `ArchiveEnd`.

The events are `records.Record`s, not dataclasses: every command that reads an archive imports them
(see `records.py` on start-up).
"""

from __future__ import annotations

from xstore.records import Record
from xstore.wire import NEED_DATA, Signal

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "NEED_DATA",
    "ArchiveEnd",
    "DirectoryEnd",
    "DirectoryStart",
    "Event",
    "FileChunk",
    "FileEnd",
    "NodeEvent",
    "RegularFile",
    "Signal",
    "Symlink",
    "WholeFile",
]


class _PathEvent(Record):
    """An event that carries only a node's path; each subclass is an event of its own kind (records
    of different types never compare equal)."""

    __slots__ = ("path",)

    def __init__(self, path: tuple[bytes, ...]) -> None:
        self.path: Final = path


class DirectoryStart(_PathEvent):
    __slots__ = ()


class DirectoryEnd(_PathEvent):
    __slots__ = ()


class RegularFile(Record):
    """A regular file's header. `contents_offset` is the archive offset of its first content byte."""

    __slots__ = ("path", "executable", "size", "contents_offset")  # noqa: RUF023 (the fields' order)

    def __init__(self, path: tuple[bytes, ...], executable: bool, size: int, contents_offset: int) -> None:
        self.path: Final = path
        self.executable: Final = executable
        self.size: Final = size
        self.contents_offset: Final = contents_offset


class WholeFile(RegularFile):
    """A regular file whole, header and `data` (its contents) in one event, instead of `RegularFile`,
    `FileChunk`s and `FileEnd`. Only a parser asked for them (`NarParser(whole_files=True)`) makes these,
    for small files whose bytes up to their node's end it holds already; a consumer that asks handles a
    file in one step instead of three. `data` is a read-only view into the parser's input, not a copy
    (the parser never changes a buffer it was given: it replaces it); `bytes(data)` makes one."""

    __slots__ = ("data",)

    def __init__(
        self,
        path: tuple[bytes, ...],
        executable: bool,
        size: int,
        contents_offset: int,
        data: bytes | memoryview,
    ) -> None:
        super().__init__(path, executable, size, contents_offset)
        self.data: Final = data


class FileChunk(Record):
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data: Final = data


class FileEnd(_PathEvent):
    __slots__ = ()


class Symlink(Record):
    __slots__ = ("path", "target")

    def __init__(self, path: tuple[bytes, ...], target: bytes) -> None:
        self.path: Final = path
        self.target: Final = target


class ArchiveEnd(Record):
    """The archive is complete; `size` is its length in bytes."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size: Final = size


Event = DirectoryStart | DirectoryEnd | RegularFile | FileChunk | FileEnd | Symlink | ArchiveEnd
NodeEvent = DirectoryStart | RegularFile | Symlink

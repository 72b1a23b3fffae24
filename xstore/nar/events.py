"""The events the NAR parser yields and the encoder takes.

A NAR is a tree walked depth first, entries of a directory in strictly increasing byte order. Each node
is announced by one event carrying its path inside the archive (a tuple of byte components, `()` for the
root). A regular file is `RegularFile`, then its contents as any number of `FileChunk`s, then `FileEnd`.
A directory is `DirectoryStart`, its entries, `DirectoryEnd`. The archive closes with `ArchiveEnd`.
"""

from __future__ import annotations

from dataclasses import dataclass

from xstore.wire import NEED_DATA, Signal

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
]


@dataclass(frozen=True, slots=True)
class DirectoryStart:
    path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class DirectoryEnd:
    path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RegularFile:
    """A regular file's header. `contents_offset` is the archive offset of its first content byte."""

    path: tuple[bytes, ...]
    executable: bool
    size: int
    contents_offset: int


@dataclass(frozen=True, slots=True)
class FileChunk:
    data: bytes


@dataclass(frozen=True, slots=True)
class FileEnd:
    path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Symlink:
    path: tuple[bytes, ...]
    target: bytes


@dataclass(frozen=True, slots=True)
class ArchiveEnd:
    """The archive is complete; `size` is its length in bytes."""

    size: int


Event = DirectoryStart | DirectoryEnd | RegularFile | FileChunk | FileEnd | Symlink | ArchiveEnd
NodeEvent = DirectoryStart | RegularFile | Symlink

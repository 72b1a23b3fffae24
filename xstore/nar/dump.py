"""Filesystem tree -> NAR: the blocking dump driver.

`iter_tree_events` walks a tree and yields NAR events; `dump_path` runs them through the encoder into a
sink. The walk holds one directory file descriptor per level and opens everything relative to it with
`O_NOFOLLOW`, so a tree that changes underneath (a directory swapped for a symlink) cannot redirect it.
Symlinks are read, never followed; sockets, FIFOs and devices are refused, as Nix refuses them.

Per directory, entries are read, un-hacked when the case hack is on (Nix: archive.cc
`unhackedEntries`), filtered by `exclude`, and emitted in byte order of their archive names. A regular
file is executable when its owner may execute it, and exactly `st_size` bytes are read: a file that
shrinks while it is read is an error, never a corrupt archive. Nix: archive.cc `dumpPath`.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from xstore.casehack import unhack_entries
from xstore.errors import DumpError
from xstore.nar.encoder import NarEncoder
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
from xstore.wire import NAR_MAX_DEPTH

CHUNK: Final = 1 << 20
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOATIME", 0)

PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def _kind(mode: int) -> str:
    for test, word in (
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return word
    return "file of unknown type"


def _show(root: bytes, path: tuple[bytes, ...]) -> str:
    return os.fsdecode(b"/".join((root, *path)))


class Excluder:
    """`--exclude` globs: a glob without `/` matches an entry's name anywhere in the tree; a glob with
    `/` matches the entry's path relative to the root (`src/*.o`). Like a Nix path filter, an excluded
    directory is left out with everything below it."""

    def __init__(self, patterns: Sequence[str]) -> None:
        by_name = [fnmatch.translate(p) for p in patterns if "/" not in p]
        by_path = [fnmatch.translate(p.strip("/")) for p in patterns if "/" in p]
        self._name = re.compile("|".join(by_name)).match if by_name else None
        self._path = re.compile("|".join(by_path)).match if by_path else None

    def __bool__(self) -> bool:
        return self._name is not None or self._path is not None

    def excluded(self, path: tuple[bytes, ...]) -> bool:
        if self._name is not None and self._name(os.fsdecode(path[-1])):
            return True
        return self._path is not None and self._path(os.fsdecode(b"/".join(path))) is not None


def iter_tree_events(
    root: PathArg,
    *,
    case_hack: bool = True,
    exclude: Sequence[str] = (),
    chunk_size: int = CHUNK,
) -> Iterator[Event]:
    """Yield the NAR events of the tree at `root` (a directory, regular file or symlink; not followed).

    `case_hack` strips `~nix~case~hack~N` suffixes (refusing names that then collide); with it off a
    name carrying the suffix is refused. Raises `DumpError` for unsupported file types, files that
    change while read, and nesting too deep for a NAR; `OSError` for I/O failures. Closing the
    generator early (or an exception) closes every descriptor it opened.
    """
    root_b = os.fsencode(root)
    excluder = Excluder(exclude)
    st = os.lstat(root_b)
    if stat.S_ISLNK(st.st_mode):
        yield Symlink((), os.readlink(root_b))
    elif stat.S_ISREG(st.st_mode):
        fd = os.open(root_b, _FILE_FLAGS)
        try:
            yield from _file_events(fd, (), root_b, chunk_size)
        finally:
            os.close(fd)
    elif stat.S_ISDIR(st.st_mode):
        fd = os.open(root_b, _DIR_FLAGS)
        try:
            yield from _directory_events(fd, (), root_b, case_hack, excluder, chunk_size)
        finally:
            os.close(fd)
    else:
        raise DumpError(f"file '{os.fsdecode(root_b)}' has an unsupported type ({_kind(st.st_mode)})")
    yield ArchiveEnd(0)


def _file_events(fd: int, path: tuple[bytes, ...], root: bytes, chunk_size: int) -> Iterator[Event]:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise DumpError(f"'{_show(root, path)}' changed type while being dumped")
    size = st.st_size
    yield RegularFile(path, bool(st.st_mode & stat.S_IXUSR), size, 0)
    left = size
    while left:
        data = os.read(fd, min(left, chunk_size))
        if not data:
            raise DumpError(
                f"'{_show(root, path)}' shrank while being dumped ({size - left} of {size} bytes read)"
            )
        left -= len(data)
        yield FileChunk(data)
    yield FileEnd(path)


def _directory_events(
    fd: int,
    path: tuple[bytes, ...],
    root: bytes,
    case_hack: bool,
    excluder: Excluder,
    chunk_size: int,
) -> Iterator[Event]:
    yield DirectoryStart(path)
    with os.scandir(fd) as it:
        entries = {os.fsencode(e.name): e for e in it}
    where = b"/".join((root, *path))
    for nar_name, disk_name in unhack_entries(entries, hack=case_hack, where=where):
        child = (*path, nar_name)
        if excluder and excluder.excluded(child):
            continue
        if len(child) >= NAR_MAX_DEPTH:
            raise DumpError(
                f"'{_show(root, child)}' is nested deeper than a NAR allows "
                f"(at most {NAR_MAX_DEPTH - 1} levels)"
            )
        entry = entries[disk_name]
        if entry.is_symlink():
            yield Symlink(child, os.readlink(disk_name, dir_fd=fd))
        elif entry.is_dir(follow_symlinks=False):
            sub = os.open(disk_name, _DIR_FLAGS, dir_fd=fd)
            try:
                yield from _directory_events(sub, child, root, case_hack, excluder, chunk_size)
            finally:
                os.close(sub)
        elif entry.is_file(follow_symlinks=False):
            try:
                sub = os.open(disk_name, _FILE_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno == errno.ELOOP:  # replaced by a symlink since the directory was read
                    raise DumpError(f"'{_show(root, child)}' changed type while being dumped") from e
                raise
            try:
                yield from _file_events(sub, child, root, chunk_size)
            finally:
                os.close(sub)
        else:
            mode = entry.stat(follow_symlinks=False).st_mode
            raise DumpError(f"file '{_show(root, child)}' has an unsupported type ({_kind(mode)})")
    yield DirectoryEnd(path)


class BufferedSink:
    """Collects small pieces and passes them on in blocks of about `CHUNK`; large pieces go straight
    through. `flush()` must be called at the end."""

    __slots__ = ("_parts", "_size", "_write")

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._parts: list[bytes] = []
        self._size = 0

    def __call__(self, data: bytes) -> None:
        if len(data) >= CHUNK // 4:
            self.flush()
            self._write(data)
            return
        self._parts.append(data)
        self._size += len(data)
        if self._size >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self._write(b"".join(self._parts))
            self._parts.clear()
            self._size = 0


def write_all(fd: int) -> Callable[[bytes], None]:
    """A sink writing every byte to `fd` (short writes retried)."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    return write


def dump_path(
    root: PathArg,
    sink: Callable[[bytes], object],
    *,
    case_hack: bool = True,
    exclude: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> int:
    """Serialise the tree at `root` as a NAR into `sink`; return the archive's size in bytes.

    `sink` receives the archive in blocks of up to about 1 MiB and may be called many times.
    `progress`, if given, is called with the number of bytes produced so far, about once a block.
    Errors as for `iter_tree_events`; on error the sink has received a prefix of the archive.
    """
    encoder = NarEncoder()
    out = BufferedSink(sink)
    send = encoder.send
    last = 0
    for event in iter_tree_events(root, case_hack=case_hack, exclude=exclude):
        out(send(event))
        if progress is not None and encoder.size - last >= CHUNK:
            last = encoder.size
            progress(last)
    out.flush()
    if progress is not None:
        progress(encoder.size)
    return encoder.size

"""Filesystem tree -> NAR: the blocking dump driver.

`dump_path` walks a tree and writes its NAR to a sink. It writes the framing directly rather than going
through events and the encoder: the walk itself guarantees what the encoder would check (entries sorted
and unique, names from the filesystem), and skipping the event objects matters on trees of many small
files. The walk holds one directory file descriptor per level and opens everything relative to it with
`O_NOFOLLOW`, so a tree that changes underneath (a directory swapped for a symlink) cannot redirect it.
Symlinks are read, never followed; sockets, FIFOs and devices are refused, as Nix refuses them.

Per directory, entries are read, un-hacked when the case hack is on (Nix: archive.cc
`unhackedEntries`), filtered by `exclude`, and emitted in byte order of their archive names. A regular
file is executable when its owner may execute it, and exactly `st_size` bytes are read: a file that
shrinks while it is read is an error, never a corrupt archive. Nix: archive.cc `dumpPath`.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Sequence

from xstore.casehack import unhack_entries
from xstore.errors import DumpError
from xstore.fsops import CopySink
from xstore.nar import tokens
from xstore.wire import NAR_MAX_DEPTH, U64, ZEROS, encode_strings

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Final, NoReturn

CHUNK: Final = 1 << 20
KERNEL_COPY_MIN: Final = 1 << 20  # below this a kernel copy saves less than the calls it costs
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# No O_NOATIME: open(2) refuses it (EPERM) on files the caller does not own, such as a root-owned store.
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]

_FS_ENCODING: Final = sys.getfilesystemencoding()
_FS_ERRORS: Final = sys.getfilesystemencodeerrors()


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


def _path_glob(pattern: str) -> str:
    """A regex for a path glob: `*` and `?` stay within one component, `**` crosses components."""
    import fnmatch
    import re

    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            out.append(fnmatch.translate(pattern[i : end + 1])[4:-3])  # the class, without (?s:...)\Z
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "(?s:" + "".join(out) + r")\Z"


class Excluder:
    """`--exclude` globs: a glob without `/` matches an entry's name anywhere in the tree; a glob with
    `/` matches the entry's path relative to the root, `*` within one component and `**` across them
    (`src/*.o`, `**/cache`). Like a Nix path filter, an excluded directory is left out with everything
    below it."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._name: Callable[[str], object] | None = None
        self._path: Callable[[str], object] | None = None
        if not patterns:
            return  # the usual case: `re` and `fnmatch` are not even imported
        import fnmatch
        import re

        by_name = [fnmatch.translate(p) for p in patterns if "/" not in p]
        by_path = [_path_glob(p.strip("/")) for p in patterns if "/" in p]
        self._name = re.compile("|".join(by_name)).match if by_name else None
        self._path = re.compile("|".join(by_path)).match if by_path else None

    def __bool__(self) -> bool:
        return self._name is not None or self._path is not None

    def excluded(self, path: tuple[bytes, ...]) -> bool:
        if self._name is not None and self._name(os.fsdecode(path[-1])):
            return True
        return self._path is not None and self._path(os.fsdecode(b"/".join(path))) is not None


class _Dumper:
    """The walk. Writes framed NAR bytes straight to the sink: a regular file costs one header
    allocation, not a chain of events."""

    def __init__(
        self,
        root: bytes,
        out: BufferedSink,
        case_hack: bool,
        excluder: Excluder,
        chunk_size: int,
        *,
        copy_from: Callable[[int, int], int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.root = root
        self.out = out
        self.case_hack = case_hack
        self.excluder = excluder if excluder else None  # None: nothing to exclude, not even a test
        self.chunk_size = chunk_size
        self.copy_from = copy_from
        self.progress = progress
        self.reported = 0
        self.size = 0

    def emit(self, data: bytes) -> None:
        self.size += len(data)
        self.out(data)
        if self.progress is not None and self.size - self.reported >= CHUNK:
            self.reported = self.size
            self.progress(self.size)

    def run(self) -> None:
        root = self.root
        st = os.lstat(root)
        self.emit(tokens.HEADER)
        if stat.S_ISLNK(st.st_mode):
            self.emit(tokens.SYMLINK_TARGET + encode_strings(os.readlink(root)) + tokens.CLOSE)
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(root, _FILE_FLAGS)
            try:
                self.regular(fd, (), b"", tokens.CLOSE)
            finally:
                os.close(fd)
        elif stat.S_ISDIR(st.st_mode):
            fd = os.open(root, _DIR_FLAGS)
            try:
                self.directory(fd, ())
            finally:
                os.close(fd)
        else:
            raise DumpError(f"file '{os.fsdecode(root)}' has an unsupported type ({_kind(st.st_mode)})")

    def regular(self, fd: int, path: tuple[bytes, ...], head: bytes, tail: bytes) -> None:
        """A regular file's node after its "type" tag, between `head` (what comes before, written
        first) and `tail` (what closes the node, written after its padding): a small file is then one
        piece for the sink, not three."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DumpError(f"'{_show(self.root, path)}' changed type while being dumped")
        size = st.st_size
        header = tokens.REGULAR_EXEC_CONTENTS if st.st_mode & stat.S_IXUSR else tokens.REGULAR_CONTENTS
        left = size
        if size < self.chunk_size:
            # The common case, a small file: one read, one piece. Asking for one byte more than the
            # size costs nothing and tells a file that grew since its size was taken (the loop below
            # refuses it).
            data = os.read(fd, size + 1)
            if len(data) == size:
                self.emit(b"".join((head, header, U64.pack(size), data, ZEROS[: -size & 7], tail)))
                return
        elif self.copy_from is not None and size >= KERNEL_COPY_MIN:
            self._copy_in_kernel(fd, path, head + header, size)
            self.emit(tail)
            return
        else:
            data = os.read(fd, self.chunk_size)
        self.emit(head + header + U64.pack(size))
        while True:
            if not data:
                raise DumpError(
                    f"'{_show(self.root, path)}' shrank while being dumped "
                    f"({size - left} of {size} bytes read)"
                )
            if len(data) > left:
                self._grew(path, size)
            self.emit(data)
            left -= len(data)
            if not left:
                break
            data = os.read(fd, min(left, self.chunk_size))
        if os.read(fd, 1):
            self._grew(path, size)
        self.emit(ZEROS[: -size & 7] + tail)

    def _copy_in_kernel(self, fd: int, path: tuple[bytes, ...], header: bytes, size: int) -> None:
        """A large file's contents handed to the sink as its descriptor (`CopySink.copy_from`), never
        through Python; the same checks as reading it: shrinking and growing are errors."""
        assert self.copy_from is not None
        self.emit(header + U64.pack(size))
        self.out.flush()
        copied = self.copy_from(fd, size)
        self.size += copied
        if copied < size:
            raise DumpError(
                f"'{_show(self.root, path)}' shrank while being dumped ({copied} of {size} bytes read)"
            )
        if os.read(fd, 1):
            self._grew(path, size)
        self.emit(ZEROS[: -size & 7])

    def _grew(self, path: tuple[bytes, ...], size: int) -> NoReturn:
        raise DumpError(f"'{_show(self.root, path)}' grew while being dumped (beyond its {size} bytes)")

    def directory(self, fd: int, path: tuple[bytes, ...]) -> None:
        self.emit(tokens.DIRECTORY)
        encoding, errors = _FS_ENCODING, _FS_ERRORS
        with os.scandir(fd) as it:
            entries = {e.name.encode(encoding, errors): e for e in it}  # os.fsencode, without the call
        where = b"/".join((self.root, *path))
        excluder = self.excluder
        too_deep = len(path) + 1 >= NAR_MAX_DEPTH
        for nar_name, disk_name in unhack_entries(entries, hack=self.case_hack, where=where):
            child = (*path, nar_name)
            if excluder is not None and excluder.excluded(child):
                continue
            if too_deep:
                raise DumpError(
                    f"'{_show(self.root, child)}' is nested deeper than a NAR allows "
                    f"(at most {NAR_MAX_DEPTH - 1} levels)"
                )
            entry = entries[disk_name]
            size = len(nar_name)
            head = b"".join(
                (tokens.ENTRY_NAME, U64.pack(size), nar_name, ZEROS[: -size & 7], tokens.NODE_OPEN_TYPE)
            )
            if entry.is_symlink():
                target = os.readlink(disk_name, dir_fd=fd)
                self.emit(head + tokens.SYMLINK_TARGET + encode_strings(target) + tokens.CLOSE_CLOSE)
            elif entry.is_dir(follow_symlinks=False):
                self.emit(head)
                sub = os.open(disk_name, _DIR_FLAGS, dir_fd=fd)
                try:
                    self.directory(sub, child)
                finally:
                    os.close(sub)
                self.emit(tokens.CLOSE)
            elif entry.is_file(follow_symlinks=False):
                try:
                    sub = os.open(disk_name, _FILE_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno == errno.ELOOP:  # replaced by a symlink since the directory was read
                        raise DumpError(f"'{_show(self.root, child)}' changed type while being dumped") from e
                    raise
                try:
                    self.regular(sub, child, head, tokens.CLOSE_CLOSE)
                finally:
                    os.close(sub)
            else:
                mode = entry.stat(follow_symlinks=False).st_mode
                raise DumpError(f"file '{_show(self.root, child)}' has an unsupported type ({_kind(mode)})")
        self.emit(tokens.CLOSE)


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


def dump_path(
    root: PathArg,
    sink: Callable[[bytes], object],
    *,
    case_hack: bool = True,
    exclude: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> int:
    """Serialise the tree at `root` (a directory, regular file or symlink; not followed) as a NAR into
    `sink`; return the archive's size in bytes.

    `sink` receives the archive in blocks of up to about 1 MiB; a `CopySink` (`fsops.FdSink`, a
    channel's) receives the contents of large files as their descriptors instead, to move them in the
    kernel (`copy_file_range`, `sendfile`), never through Python.
    `case_hack` strips `~nix~case~hack~N` suffixes (refusing names that then collide); with it off, a
    name carrying the suffix is refused.
    `exclude` holds globs (see `Excluder`). `progress`, if given, is called with the number of bytes
    produced so far, about once a block. Raises `DumpError` for unsupported file types, files that
    change while read and nesting too deep for a NAR, `CaseHackError` for collisions, `OSError` for
    I/O failures; the sink has then received a prefix of the archive. Every descriptor opened is closed
    whatever happens.
    """
    copy_from = sink.copy_from if isinstance(sink, CopySink) else None
    out = BufferedSink(sink)
    dumper = _Dumper(
        os.fsencode(root), out, case_hack, Excluder(exclude), CHUNK, copy_from=copy_from, progress=progress
    )
    dumper.run()
    out.flush()
    if progress is not None:
        progress(dumper.size)
    return dumper.size

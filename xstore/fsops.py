"""Filesystem operations on store contents: canonicalisation as Nix does it, and removal of read-only trees.

Nix makes everything in the store read-only and timeless once a path is complete: files 0444 (0555 when
the owner could execute them), directories 0555, no setuid, setgid or sticky bits, and an mtime of 1
second after the epoch on everything, symlinks included. Such a tree cannot be deleted as it is, so
removal first gives the owner write permission on every directory. Nix: posix-fs-canonicalise.cc
(`canonicalisePathMetaData`), util.cc (`deletePath`).

Restores and atomic outputs build beside their destination in a private staging entry, locked while its
owner lives; `remove_dead_staging` clears what killed processes left.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Final

PLATFORM: str = sys.platform  # a plain string: both branches type-check on every platform


CANONICAL_MTIME_NS: Final = 1_000_000_000  # Nix's mtime for everything in the store: 1 s after the epoch


def canonicalise(real_path: bytes, *, recursive: bool = True) -> None:
    """Make the tree at `real_path` read-only and timeless, as Nix does (without `recursive`: only the
    entry at `real_path`)."""
    st = os.lstat(real_path)
    if recursive and stat.S_ISDIR(st.st_mode):
        with os.scandir(real_path) as it:
            children = [os.fsencode(e.path) for e in it]
        for child in children:
            canonicalise(child)
    if not stat.S_ISLNK(st.st_mode):
        mode = 0o555 if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR else 0o444
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(real_path, mode)
    if st.st_mtime != 1:
        os.utime(real_path, (st.st_atime, 1), follow_symlinks=False)


def make_writable(real_path: bytes) -> None:
    """Give the owner write permission on every directory of a tree (so it can be removed)."""
    st = os.lstat(real_path)
    if stat.S_ISDIR(st.st_mode):
        os.chmod(real_path, 0o755)  # noqa: S103 (only to delete it: the tree is being removed)
        with os.scandir(real_path) as it:
            children = [os.fsencode(e.path) for e in it if e.is_dir(follow_symlinks=False)]
        for child in children:
            make_writable(child)


def remove_tree(real_path: bytes) -> None:
    """Delete a (possibly read-only, canonicalised) tree; missing is fine."""
    try:
        st = os.lstat(real_path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        make_writable(real_path)
        try:
            os.rmdir(real_path)  # the common case at the end of a command: an empty scratch directory
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        import shutil  # not at start-up: it imports bz2 and lzma

        shutil.rmtree(real_path)
    else:
        os.unlink(real_path)


# -- staging beside a destination -------------------------------------------------------------------

# `.<name>.xstore-<12 hex digits>`: the private sibling a restore builds in, and the temporary file of an
# atomic `-o`; while its owner lives it holds an exclusive flock on it.
_STAGING_MARK: Final = b".xstore-"
_LOWER_HEX: Final = frozenset(b"0123456789abcdef")
STAGING_GRACE: Final = 30.0  # seconds: never touch a staging entry changed more recently


def staging_name(dest_name: bytes) -> bytes:
    return b"." + dest_name[:200] + b".xstore-" + os.urandom(6).hex().encode()


def is_staging_name(name: bytes) -> bool:
    """Whether `name` is one `staging_name` makes: `.`, anything, `.xstore-` and 12 lowercase hex digits.
    (Not a regular expression: `re` is not loaded by a restore or a dump.)"""
    return (
        len(name) >= 1 + len(_STAGING_MARK) + 12
        and name.startswith(b".")
        and name[-12 - len(_STAGING_MARK) : -12] == _STAGING_MARK
        and _LOWER_HEX.issuperset(name[-12:])
    )


def hold(fd: int) -> None:
    """Mark the staging entry open at `fd` as alive for as long as this process keeps it open."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_dead_staging(parent_fd: int) -> list[bytes]:
    """Remove the staging entries in the directory open at `parent_fd` that dead processes left (killed
    by SIGKILL, or a machine that went down): entries named as `staging_name` makes them, owned by this
    user, unchanged for a while, and whose lock nobody holds. Returns their names."""
    removed = []
    with os.scandir(parent_fd) as it:
        names = [name for e in it if is_staging_name(name := os.fsencode(e.name))]
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent_fd)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or time.time() - st.st_mtime < STAGING_GRACE:
                continue
            try:
                hold(fd)
            except BlockingIOError:
                continue  # alive
            if stat.S_ISDIR(st.st_mode):
                import shutil

                shutil.rmtree(name, dir_fd=parent_fd)
            else:
                os.unlink(name, dir_fd=parent_fd)
            removed.append(name)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def announce_fifo(path: str | bytes, waits_for: str) -> None:
    """Opening a FIFO blocks until its other end is opened: say so first (Ctrl-C ends the wait)."""
    from xstore.notices import notice

    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.stat(path).st_mode):
            notice(f"waiting for {waits_for} on the FIFO '{os.fsdecode(path)}'")


@contextlib.contextmanager
def atomic_file(path: str | bytes) -> Iterator[Callable[[bytes], object]]:
    """A sink writing the file `path` atomically: into a locked staging file beside it that replaces it
    only when the block completes, so a failure or a kill leaves no partial file (a later write into the
    same directory removes what a killed one left). A symlink is written through: its target is
    replaced, the link stays. A `path` that exists and is not a regular file (`/dev/null`, a FIFO) is
    written to directly: replacing it would destroy it."""
    path = os.fsencode(path)
    if os.path.islink(path):
        path = os.path.realpath(path)
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    if special:
        announce_fifo(path, "a reader")
        with open(path, "wb", buffering=0) as f:
            yield FdSink(f.fileno())
        return
    directory, name = os.path.split(os.path.abspath(path))
    parent_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            remove_dead_staging(parent_fd)
        tmp = staging_name(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(tmp, flags, 0o644, dir_fd=parent_fd)
        try:
            hold(fd)
            with os.fdopen(fd, "wb", buffering=0) as f:
                yield FdSink(f.fileno())
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent_fd)
            raise
    finally:
        os.close(parent_fd)


# -- moving file contents in the kernel -----------------------------------------------------------------

_COPY_STEP: Final = 1 << 30  # bytes per call: large, but bounded so a hostile count stays an int
_UNSUPPORTED: Final = (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP, errno.EBADF, errno.ESPIPE)


def copy_range(src_fd: int, dst_fd: int, count: int) -> int:
    """Move `count` bytes from `src_fd`'s position to `dst_fd`'s, in the kernel where it can: a file to a
    file with `copy_file_range` (which may even share blocks), a pipe to anything with `splice`, a file
    to anything (a pipe, a socket) with `sendfile`; otherwise through a buffer. Both positions advance.
    Returns the bytes moved: fewer than `count` only when the source ended first."""
    methods = [_copy_file_range, _splice, _sendfile]
    settled = False  # a method has worked once: from then on its errors are real
    done = 0
    while done < count:
        step = min(count - done, _COPY_STEP)
        while True:
            if not methods:
                n = _read_write(src_fd, dst_fd, step)
                break
            try:
                n = methods[0](src_fd, dst_fd, step)
                settled = True
                break
            except OSError as e:
                if settled or e.errno not in _UNSUPPORTED:
                    raise
                methods.pop(0)
        if n == 0:
            break  # the source ended
        done += n
    return done


def _copy_file_range(src_fd: int, dst_fd: int, count: int) -> int:
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        raise OSError(errno.ENOSYS, "no copy_file_range")
    return int(copy(src_fd, dst_fd, count))


def _splice(src_fd: int, dst_fd: int, count: int) -> int:
    splice = getattr(os, "splice", None)
    if splice is None or not stat.S_ISFIFO(os.fstat(src_fd).st_mode):
        raise OSError(errno.ENOSYS, "no splice")
    return int(splice(src_fd, dst_fd, count))


def _sendfile(src_fd: int, dst_fd: int, count: int) -> int:
    if not stat.S_ISREG(os.fstat(src_fd).st_mode):
        raise OSError(errno.ENOSYS, "sendfile reads regular files only")
    # With an explicit offset (the form every platform's signature has); the source's position is
    # then moved on by hand, as the offset-less Linux form would.
    offset = os.lseek(src_fd, 0, os.SEEK_CUR)
    n = os.sendfile(dst_fd, src_fd, offset, count)
    os.lseek(src_fd, offset + n, os.SEEK_SET)
    return n


def _read_write(src_fd: int, dst_fd: int, count: int) -> int:
    data = os.read(src_fd, min(count, 1 << 20))
    view = memoryview(data)
    while view:
        view = view[os.write(dst_fd, view) :]
    return len(data)


class CopySink(abc.ABC):
    """A sink (called with each block of bytes) that can also take bytes straight from a file
    descriptor: given one, the NAR dumper hands it the contents of large files as descriptors, so they
    can move in the kernel and never through Python."""

    __slots__ = ()

    @abc.abstractmethod
    def __call__(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def copy_from(self, src_fd: int, count: int) -> int:
        """Move `count` bytes from `src_fd`'s position on (which advances); return the bytes moved,
        fewer only when the source ended first."""


class FdSink(CopySink):
    """A sink writing every byte to the descriptor `fd` (short writes retried), a blocking one; file
    contents go from file to output in the kernel (`copy_range`)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def copy_from(self, src_fd: int, count: int) -> int:
        return copy_range(src_fd, self.fd, count)


# Linux renameat2(2): swap two names in one step. Nix has no equivalent; repair uses it to put a fetched
# copy in place of a damaged path without a moment where the path is missing.
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: bytes, b: bytes) -> bool:
    """Swap the entries `a` and `b` atomically (Linux `renameat2(RENAME_EXCHANGE)`). Returns False where
    the system or the filesystem cannot (then nothing changed); raises `OSError` for other failures."""
    if not PLATFORM.startswith("linux"):
        return False
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fsdecode(a), None, os.fsdecode(b))

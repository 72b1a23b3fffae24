"""Locks for a store: flock on files, with Nix's protocol for lock files that are deleted after use, and
the lock a path takes while it is being added.

Nix locks a path being added with `<store dir>/<path>.lock` (pathlocks.cc `lockPaths`): open or create it,
flock it exclusively, and if the file has contents, its last owner deleted it (unlink, then "d" written
into it) while we waited, so start again. On release the owner unlinks it, then writes "d".

That scheme has a hole: `<hash>-foo.lock` is a valid store path name. Nix 2.8 locks, truncates or deletes
such a valid path as if it were its lock file, spins forever when it has contents, and can never add
`<hash>-foo` when it is a directory. xstore therefore locks a path twice:

1. its own lock, outside the store directory where no store path can be, and per hash part (lower-case
   nix32), so two spellings of a name that a folding filesystem cannot keep apart share it. This one is
   always taken, and is what keeps xstore processes apart. On Linux it is one byte of one file,
   `ROOT/nix/var/xstore/path-locks`, at an offset given by the hash part, locked with an open file
   description lock (`fcntl(F_OFD_SETLK)`: owned by the open file like flock, so threads and processes
   exclude each other alike, and released when it is closed): nothing is created or deleted per path.
   A store object opens that file once (`ByteLockFile`) and locks its paths' bytes through it; a byte it
   holds already is locked again through an open file of its own, which waits like another process.
   Elsewhere it is a file per hash part, `ROOT/nix/var/xstore/locks/path-<hash part>`, deleted after
   use as Nix deletes its own.
2. Nix's `<path>.lock` beside it, so that Nix and xstore adding the same path wait for each other, but
   only where that is safe: never when the name is a valid store path, a directory, a symlink, or a file
   with contents that is still linked (junk no lock protocol leaves behind); then xstore goes on with
   its own lock alone. It is never truncated, and on release it is unlinked only if it is still the very
   file that was locked (a store path that took the name meanwhile is another file).

Every wait is first tried without blocking; when the lock is taken the wait is announced
(`notices.notice`) and then blocks in flock, which Ctrl-C and SIGTERM interrupt. No wait spins.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from xstore.notices import notice

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from typing import Final

_MAX_STALE_RETRIES: Final = 100  # each retry means the previous owner released; never a spin

PathLike = Path | bytes | str


def lock_file(path: PathLike, *, shared: bool = False, blocking: bool = True, what: str = "") -> int | None:
    """Open (creating, mode 0600) and flock `path`; the descriptor, or None when `blocking` is off and
    the lock is taken. A blocking wait is announced first, naming `what`."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if not flock_fd(fd, shared, blocking, what or f"the lock '{os.fsdecode(path)}'"):
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def flock_fd(fd: int, shared: bool, blocking: bool, what: str) -> bool:
    """flock `fd`, trying without blocking first; a blocking wait is announced, naming `what`. False
    when `blocking` is off and the lock is taken."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        if not blocking:
            return False
    notice(f"waiting for {what}, which another process holds")
    fcntl.flock(fd, mode)
    return True


def _still_linked(path: PathLike, st: os.stat_result) -> bool:
    """Whether `path` still names the file whose status (its open descriptor's) is `st`."""
    try:
        return os.path.samestat(os.stat(path, follow_symlinks=False), st)
    except FileNotFoundError:
        return False


class DeletableLock:
    """An exclusive lock on a file that is deleted on release, with Nix's protocol (see the module
    docstring). Use as a context manager."""

    def __init__(self, path: PathLike, what: str, *, blocking: bool = True) -> None:
        self.path = path
        self._fd = -1
        for _ in range(_MAX_STALE_RETRIES):
            fd = lock_file(path, what=what, blocking=blocking)
            if fd is None:
                return  # taken, and not waited for: `acquired` is False
            self._st = os.fstat(fd)
            linked = _still_linked(path, self._st)
            if linked and self._st.st_size == 0:
                self._fd = fd
                return
            if linked:  # contents but still linked: no owner leaves that; it is junk in our own place
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            os.close(fd)  # released and deleted by its owner while we waited: take the new file
        raise OSError(errno.EAGAIN, f"cannot lock '{os.fsdecode(path)}': it keeps changing")

    @property
    def acquired(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            if _still_linked(self.path, self._st):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            with contextlib.suppress(OSError):
                os.write(self._fd, b"d")
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DeletableLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# Linux's open file description locks, through fcntl's `struct flock` (type, whence, start, length, pid),
# laid out as on the 64-bit ABIs; elsewhere the lock is a file of its own (`DeletableLock`).
_OFD_SETLK: Final = getattr(fcntl, "F_OFD_SETLK", None)
_OFD_SETLKW: Final = getattr(fcntl, "F_OFD_SETLKW", None)
HAVE_BYTE_LOCKS: Final = (
    sys.platform == "linux" and _OFD_SETLK is not None and struct.calcsize("@hhqqi4x") == 32
)


def _lock_byte(fd: int, offset: int, what: str, blocking: bool, undo: Callable[[], None]) -> bool:
    """Lock byte `offset` of the file open at `fd` with an open file description lock, trying without
    blocking first; a blocking wait is announced, naming `what`. False when `blocking` is off and the
    byte is taken (by another open file description); then, and on any failure, `undo()` first."""
    assert _OFD_SETLK is not None
    assert _OFD_SETLKW is not None
    request = struct.pack("@hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    try:
        try:
            fcntl.fcntl(fd, _OFD_SETLK, request)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if not blocking:
                undo()
                return False
            notice(f"waiting for {what}, which another process holds")
            fcntl.fcntl(fd, _OFD_SETLKW, request)
    except BaseException:
        undo()
        raise
    return True


def _open_lock_file(path: PathLike) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


class ByteLock:
    """An exclusive lock on byte `offset` of the file `path` (made when missing, never deleted), with an
    open file description lock of its own: another `ByteLock` on the same byte waits, in this process
    or another. The wait is announced, naming `what`; without `blocking`, `acquired` says whether the
    byte was free. Linux only (`HAVE_BYTE_LOCKS`)."""

    def __init__(self, path: PathLike, offset: int, what: str, *, blocking: bool = True) -> None:
        self._fd = -1
        fd = _open_lock_file(path)
        if _lock_byte(fd, offset, what, blocking, lambda: os.close(fd)):
            self._fd = fd

    @property
    def acquired(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # the lock belongs to this open file alone: closing it releases the lock


class ByteLockFile:
    """The file of one store object's byte locks, opened once: a byte this process does not hold yet is
    locked through that one open file description, with no open and close per lock; a byte it holds
    already is locked through a description of its own (a `ByteLock`), which then waits for the first
    holder as another process would (a description never conflicts with itself). `close()` it with the
    store. Linux only (`HAVE_BYTE_LOCKS`)."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self._fd = -1
        self._held: set[int] = set()  # bytes locked (or being locked) through self._fd
        self._mutex = threading.Lock()

    def lock(self, offset: int, what: str, *, blocking: bool = True) -> ByteLock | _SharedByte:
        """Lock byte `offset` (see `ByteLock`); the result's `acquired` says whether it was."""
        with self._mutex:
            if offset in self._held:
                fd = -1
            else:
                if self._fd < 0:
                    self._fd = _open_lock_file(self.path)
                fd = self._fd
                self._held.add(offset)
        if fd < 0:
            return ByteLock(self.path, offset, what, blocking=blocking)
        locked = _lock_byte(fd, offset, what, blocking, lambda: self._forget(offset))
        return _SharedByte(self, offset, locked)

    def _forget(self, offset: int) -> None:
        with self._mutex:
            self._held.discard(offset)

    def unlock(self, offset: int) -> None:
        with self._mutex:
            fd = self._fd
        try:
            if fd >= 0:
                assert _OFD_SETLK is not None
                request = struct.pack("@hhqqi4x", fcntl.F_UNLCK, os.SEEK_SET, offset, 1, 0)
                fcntl.fcntl(fd, _OFD_SETLK, request)
        finally:
            self._forget(offset)

    def close(self) -> None:
        """Close the file, which releases every byte still locked through it."""
        with self._mutex:
            fd, self._fd = self._fd, -1
            self._held.clear()
        if fd >= 0:
            os.close(fd)


class _SharedByte:
    """A byte locked through a `ByteLockFile`'s own description."""

    __slots__ = ("_file", "_offset", "acquired")

    def __init__(self, file: ByteLockFile, offset: int, acquired: bool) -> None:
        self._file = file
        self._offset = offset
        self.acquired = acquired

    def release(self) -> None:
        if self.acquired:
            self.acquired = False
            self._file.unlock(self._offset)


class NixLockFile:
    """Nix's `<path>.lock`, taken only where that is safe (see the module docstring). `held` says
    whether it was; when it was not, the caller relies on its own lock alone."""

    def __init__(
        self, path: bytes, what: str, is_valid_path: Callable[[], bool], *, blocking: bool = True
    ) -> None:
        self.path = path
        self._fd = -1
        self.busy = False  # taken by someone else, and not waited for
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        for _ in range(_MAX_STALE_RETRIES):
            # Usually there is no such file and this makes it: then it is no store path, and the database
            # need not be asked (a path made valid under this name meanwhile would be another file).
            fresh = True
            try:
                try:
                    fd = os.open(path, flags | os.O_EXCL, 0o600)
                except FileExistsError:
                    fresh = False
                    if is_valid_path():
                        return  # a store path named like a lock file: never touch it
                    fd = os.open(path, flags, 0o600)
            except OSError as e:
                if e.errno in (errno.EISDIR, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.EPERM):
                    return  # not a lock file (a directory, a symlink...) or not ours to use
                raise
            try:
                if not flock_fd(fd, False, blocking, what):
                    os.close(fd)
                    self.busy = True
                    return
                self._st = os.fstat(fd)
                linked = _still_linked(path, self._st)
                if linked and self._st.st_size == 0 and (fresh or not is_valid_path()):
                    self._fd = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if linked:
                return  # a linked file with contents is junk, not a lock: leave it alone
        raise OSError(errno.EAGAIN, f"cannot lock '{os.fsdecode(path)}': it keeps changing")

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            # Still the very file locked (its inode cannot be reused while it is open): a store path that
            # took this name meanwhile is another file, and stays.
            if _still_linked(self.path, self._st):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            with contextlib.suppress(OSError):
                os.write(self._fd, b"d")
        finally:
            os.close(self._fd)
            self._fd = -1


class PathLock:
    """The lock on a store path being added: xstore's own lock, and Nix's beside it where safe."""

    def __init__(
        self,
        own: PathLike | tuple[ByteLockFile | PathLike, int],
        nix: bytes,
        shown: str,
        is_lock_a_valid_path: Callable[[], bool],
        *,
        blocking: bool = True,
    ) -> None:
        """`own` is xstore's own lock: a file of its own, or a file (or a store's open `ByteLockFile`) and
        the byte in it."""
        what = f"the lock on '{shown}'"
        self.acquired = False
        self._own: DeletableLock | ByteLock | _SharedByte
        if not isinstance(own, tuple):
            self._own = DeletableLock(own, what, blocking=blocking)
        elif isinstance(own[0], ByteLockFile):
            self._own = own[0].lock(own[1], what, blocking=blocking)
        else:
            self._own = ByteLock(own[0], own[1], what, blocking=blocking)
        self._nix = None
        if not self._own.acquired:
            return
        try:
            self._nix = NixLockFile(nix, what, is_lock_a_valid_path, blocking=blocking)
        except BaseException:
            self._own.release()
            raise
        if self._nix.busy:
            self._own.release()
            return
        self.acquired = True

    @property
    def holds_nix_lock(self) -> bool:
        return self._nix is not None and self._nix.held

    def release(self) -> None:
        self.acquired = False
        try:
            if self._nix is not None:
                self._nix.release()
        finally:
            self._own.release()

    def __enter__(self) -> PathLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

"""Read-only store mounts on Linux, and private mount namespaces for the processes that write.

A store is protected by bind-mounting its directory onto itself and remounting that bind read-only.
Writers (imports, `xstore ro run`) get a private mount namespace (propagation private, so nothing
leaks back) in which the same bind is remounted writable; nobody else ever sees it writable.

A remount must repeat the flags the mount already has (nosuid, nodev, noexec, the atime mode), or the
kernel refuses it where they are locked and silently drops them elsewhere (NixOS/nix#9705); they are
read from /proc/self/mountinfo. `unshare(CLONE_NEWNS)` moves only the calling thread, so it must happen
before any thread starts (trio's worker threads included), or in a child process.

This is the only module that talks to mount(2), umount2(2) and unshare(2): through ctypes, since
Python 3.11 has no `os.unshare`. On other platforms every entry point raises `UnsupportedPlatformError`.
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NoReturn

from xstore.errors import MountError, UnsupportedPlatformError, XstoreError

if TYPE_CHECKING:
    import ctypes

MS_RDONLY: Final = 1
MS_NOSUID: Final = 2
MS_NODEV: Final = 4
MS_NOEXEC: Final = 8
MS_REMOUNT: Final = 32
MS_NOATIME: Final = 1024
MS_NODIRATIME: Final = 2048
MS_BIND: Final = 4096
MS_REC: Final = 16384
MS_PRIVATE: Final = 1 << 18
MS_RELATIME: Final = 1 << 21
MS_STRICTATIME: Final = 1 << 24
CLONE_NEWNS: Final = 0x00020000

# Per-mount options in mountinfo that must be repeated on a remount, and their flags.
_KEPT_FLAGS: Final = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    parent_id: int
    device: str  # major:minor of the filesystem
    mount_point: str
    root: str  # the part of the filesystem mounted here ("/" unless a bind of a subdirectory)
    options: tuple[str, ...]  # per-mount options: rw/ro, nosuid, nodev, ...
    fstype: str
    source: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    @property
    def kept_flags(self) -> int:
        flags = 0
        for option in self.options:
            flags |= _KEPT_FLAGS.get(option, 0)
        return flags


@dataclass(frozen=True, slots=True)
class Status:
    """What `xstore ro status` reports about a directory."""

    path: str
    mount_point: str  # the mount the directory lives on
    is_mount_point: bool  # the directory is itself a mount point
    bind: bool  # that mount is a bind of a subdirectory
    read_only: bool
    writable: bool  # writable by this process (access(2) W_OK and not read-only)
    options: tuple[str, ...]
    fstype: str


def _require_linux() -> None:
    if not sys.platform.startswith("linux"):
        raise UnsupportedPlatformError(
            f"read-only store mounts and mount namespaces are not supported on this platform ({sys.platform})"
        )


@functools.cache
def _c() -> ctypes.CDLL:
    # ctypes here, not at import: store commands load this module only to read the mount table, and
    # ctypes.util alone costs several milliseconds of their start-up.
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.unshare.argtypes = [ctypes.c_int]
    return libc


def _fail(what: str, path: str) -> NoReturn:
    import ctypes

    code = ctypes.get_errno()
    reason = os.strerror(code)
    if code == errno.EPERM:
        hint = "this needs root (CAP_SYS_ADMIN); run it as root, e.g. with sudo"
        if what == "create a private mount namespace":
            hint = (
                "unshare(CLONE_NEWNS) was refused: run as root, outside a restricted container "
                "(NixOS/nix#2404)"
            )
        raise MountError(f"cannot {what} for '{path}': {reason}; {hint}", errno=code)
    raise MountError(f"cannot {what} for '{path}': {reason}", errno=code)


def _mount(source: str | None, target: str, flags: int, what: str) -> None:
    src = os.fsencode(source) if source is not None else None
    if _c().mount(src, os.fsencode(target), None, flags, None) != 0:
        _fail(what, target)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \\ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table(mountinfo: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """The calling process's mounts, in mount order."""
    _require_linux()
    entries = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=fields[2],
                    mount_point=_unescape(fields[4]),
                    root=_unescape(fields[3]),
                    options=tuple(fields[5].split(",")),
                    fstype=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                )
            )
    return entries


def mount_of(path: str | os.PathLike[str]) -> MountEntry:
    """The mount `path` lives on: the last-mounted entry whose mount point is the longest prefix."""
    real = os.path.realpath(path)
    best: MountEntry | None = None
    for entry in mount_table():
        mp = entry.mount_point
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = entry
    if best is None:  # pragma: no cover - "/" is always mounted
        raise MountError(f"no mount found for '{real}'")
    return best


def status(path: str | os.PathLike[str]) -> Status:
    """Whether `path` is read-only, a bind mount, and with which options."""
    _require_linux()
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as e:
        raise MountError(f"cannot access '{real}': {e.strerror}", errno=e.errno) from e
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"'{real}' is not a directory")
    entry = mount_of(real)
    writable = not entry.read_only and os.access(real, os.W_OK)
    # A bind of the directory onto itself shows, as the part of its filesystem mounted here, exactly the
    # directory's own place in the mount below it (same device). A mount that merely shows a
    # subdirectory of its filesystem (a btrfs subvolume, a container volume) is not one.
    table = mount_table()
    parent = next((e for e in table if e.mount_id == entry.parent_id), None)
    bind = (
        entry.mount_point == real
        and parent is not None
        and parent.device == entry.device
        and entry.root
        == posixpath.normpath(posixpath.join(parent.root, os.path.relpath(real, parent.mount_point)))
    )
    return Status(
        path=real,
        mount_point=entry.mount_point,
        is_mount_point=entry.mount_point == real,
        bind=bind,
        read_only=entry.read_only,
        writable=writable,
        options=entry.options,
        fstype=entry.fstype,
    )


def protect(path: str | os.PathLike[str]) -> Status:
    """Make `path` a read-only bind mount of itself, keeping its other mount flags. Idempotent."""
    _require_linux()
    real = os.path.realpath(path)
    before = status(real)
    if before.bind and before.read_only:
        return before
    if not before.bind:
        _mount(real, real, MS_BIND, "bind-mount the store directory onto itself")
    entry = mount_of(real)
    _mount(
        real,
        real,
        MS_REMOUNT | MS_BIND | MS_RDONLY | entry.kept_flags,
        "remount the store directory read-only",
    )
    return status(real)


def unprotect(path: str | os.PathLike[str]) -> Status:
    """Undo `protect`: remove the read-only bind mount of `path` onto itself."""
    _require_linux()
    real = os.path.realpath(path)
    before = status(real)
    if not before.read_only:
        return before
    if not before.bind:
        raise MountError(
            f"'{real}' is read-only, but not through a bind mount xstore can remove "
            f"(its filesystem at '{before.mount_point}' is mounted read-only)"
        )
    if _c().umount2(os.fsencode(real), 0) != 0:
        _fail("unmount the read-only bind mount", real)
    return status(real)


def enter_writable_namespace(path: str | os.PathLike[str]) -> None:
    """Give the calling process a private mount namespace in which `path` is writable.

    Call only while the process has a single thread. Propagation is made private first, so nothing
    done here is seen outside. Raises `MountError` when `path` is read-only for a reason other than a
    bind mount (a read-only filesystem), or when the namespace or the remount is refused.
    """
    _require_linux()
    real = os.path.realpath(path)
    before = status(real)
    if not before.read_only:
        return
    if not before.bind:
        raise MountError(
            f"'{real}' is read-only because its filesystem ('{before.mount_point}', {before.fstype}) is "
            "mounted read-only, not through a bind mount; remount that filesystem writable first"
        )
    if _c().unshare(CLONE_NEWNS) != 0:
        _fail("create a private mount namespace", real)
    _mount(None, "/", MS_REC | MS_PRIVATE, "make mount propagation private")
    entry = mount_of(real)
    _mount(real, real, MS_REMOUNT | MS_BIND | entry.kept_flags, "remount the store directory writable")


def run_writable(path: str | os.PathLike[str], argv: Sequence[str]) -> int:
    """Run `argv` in a private mount namespace where `path` is writable; return its exit status
    (128 + N for a signal, as shells report it)."""
    _require_linux()
    if not argv:
        raise MountError("no command given")
    real = os.path.realpath(path)
    status(real)  # fail early on a bad path
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        try:
            enter_writable_namespace(real)
            os.set_inheritable(write_fd, False)
            os.execvp(argv[0], list(argv))  # noqa: S606 (the user's command, as `ro run` promises)
        except BaseException as e:  # noqa: BLE001 (reported to the parent through the pipe)
            message = str(e) if isinstance(e, XstoreError) else f"cannot run '{argv[0]}': {e}"
            os.write(write_fd, message.encode())
        os._exit(127)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as r:
        failure = r.read()
    _, wait_status = os.waitpid(pid, 0)
    if failure:
        raise MountError(failure.decode(errors="replace"))
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code

"""Temporary garbage collector roots and the collector's lock, in Nix's format and with Nix's protocol.

A process that is about to use a store path (import it, copy it, refer to it) records the path as a
temporary root, so that a garbage collection running at the same time never deletes it:

- Each process has one file, `STATE/temproots/<pid>`, holding store paths each followed by a NUL, locked
  (flock, exclusive) by that process for as long as it lives. A file whose lock can be taken belongs to
  a dead process: the collector unlinks it and writes "d" into it, so that a process that opened it just
  before knows to make a new one (its file must be empty when it has the lock).
- `STATE/gc.lock` is held exclusively by a running collector. A process adding a root first tries a
  shared lock on it without waiting: when it gets one, no collector is running and none can start
  before the root is written to the file. When it does not, a collector is running and has already read
  the files: the root is sent to the collector's socket `STATE/gc-socket/socket` as a line, and the
  collector answers "1" once it will keep the path (it waits first if it is deleting that very path).
- A collector keeps paths by their hash part, so a root also protects `<path>.lock` and xstore's
  temporary directories named after a made-up path.

Several `LocalStore` objects on the same store in one process share the one file (Nix has one store
object per process; a second file for the same pid would make the first look stale). The file is
removed when the last of them closes.

Nix: gc.cc (`addTempRoot`, `createTempRootsFile`, `findTempRoots`, `openGCLock`), local-store.cc.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import threading
import time
from pathlib import Path

from xstore.errors import StoreError
from xstore.storepath import StorePath

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    import socket
    from typing import Final

TEMP_ROOTS_DIR: Final = "temproots"
GC_LOCK: Final = "gc.lock"
GC_SOCKET: Final = "gc-socket/socket"
_UNIX_PATH_MAX: Final = 107  # sun_path holds 108 bytes, the last a NUL
PLATFORM: str = sys.platform  # a plain string: both branches type-check on every platform


def open_gc_lock(state_dir: Path) -> int:
    """Open (creating, mode 0600) the collector's lock file. Nix: `openGCLock`."""
    return os.open(state_dir / GC_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def socket_address(path: Path) -> tuple[str, int]:
    """A name under which `path` can be bound or connected to, and a directory descriptor to close after
    (-1 if none): the path itself, or on Linux, when it is too long for a socket address, the same path
    through `/proc/self/fd` of its directory."""
    text = os.fspath(path)
    if len(os.fsencode(text)) <= _UNIX_PATH_MAX:
        return text, -1
    if not PLATFORM.startswith("linux"):
        raise StoreError(f"the socket path '{text}' is too long (at most {_UNIX_PATH_MAX} bytes)")
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{path.name}", fd


class RootsFile:
    """This process's temporary roots file for one store, shared by its store objects."""

    __slots__ = ("fd", "gc_lock", "lock", "pid", "recorded", "sock", "state_dir", "users")

    def __init__(self, state_dir: Path, pid: int) -> None:
        self.state_dir = state_dir
        self.pid = pid
        self.fd = -1
        self.gc_lock = -1
        self.sock: socket.socket | None = None
        self.users = 0
        self.lock = threading.Lock()
        self.recorded: set[StorePath] = set()  # in the file already

    @property
    def name(self) -> Path:
        return self.state_dir / TEMP_ROOTS_DIR / str(self.pid)

    def _create(self) -> None:
        (self.state_dir / TEMP_ROOTS_DIR).mkdir(parents=True, exist_ok=True)
        while True:
            # A file with our pid is stale: no two living processes share a pid.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name)
            fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_size == 0:
                    self.fd = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            # A collector found the file before we locked it, took it for stale and marked it: again.
            os.close(fd)

    def add(self, path: StorePath) -> None:
        with self.lock:
            if path in self.recorded:
                return
            if self.fd < 0:
                self._create()
            if self.gc_lock < 0:
                self.gc_lock = open_gc_lock(self.state_dir)
            while True:
                try:
                    fcntl.flock(self.gc_lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    if self._tell_collector(path):
                        break
                    continue
                try:
                    self._append(path)
                finally:
                    fcntl.flock(self.gc_lock, fcntl.LOCK_UN)
                return
            # A collector is running and keeps the path; record it for the next one too.
            self._append(path)

    def _append(self, path: StorePath) -> None:
        data = path.path.encode() + b"\0"
        while data:
            data = data[os.write(self.fd, data) :]
        self.recorded.add(path)

    def _tell_collector(self, path: StorePath) -> bool:
        """Send `path` to the running collector and wait for its answer. False when there was no
        collector to tell after all (it ended, or has not made its socket yet): try again."""
        if self.sock is None:
            import socket  # only when a collector runs

            address, dir_fd = socket_address(self.state_dir / GC_SOCKET)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(address)
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
                time.sleep(0.1)
                return False
            except BaseException:
                sock.close()
                raise
            finally:
                if dir_fd >= 0:
                    os.close(dir_fd)
            self.sock = sock
        try:
            self.sock.sendall(path.path.encode() + b"\n")
            answer = self.sock.recv(1)
        except (BrokenPipeError, ConnectionResetError):
            answer = b""
        if answer != b"1":
            self.sock.close()
            self.sock = None
            return False
        return True

    def release(self) -> None:
        """One user fewer; the last one removes the file (before unlocking it, so no collector ever
        sees it unlocked and nobody can take it for their own)."""
        with self.lock:
            self.users -= 1
            if self.users > 0:
                return
            if self.fd >= 0:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.name)
                os.close(self.fd)
                self.fd = -1
            if self.gc_lock >= 0:
                os.close(self.gc_lock)
                self.gc_lock = -1
            if self.sock is not None:
                self.sock.close()
                self.sock = None
        with _registry_lock:
            if _registry.get((str(self.state_dir), self.pid)) is self:
                del _registry[(str(self.state_dir), self.pid)]


_registry: dict[tuple[str, int], RootsFile] = {}
_registry_lock = threading.Lock()


def roots_file(state_dir: Path) -> RootsFile:
    """This process's temporary roots file for the store whose state directory is `state_dir`, with one
    more user (call `release()` once done)."""
    state_dir = Path(os.path.realpath(state_dir))
    pid = os.getpid()
    with _registry_lock:
        for key in [k for k in _registry if k[1] != pid]:
            del _registry[key]  # inherited through fork(): the child makes its own
        entry = _registry.get((str(state_dir), pid))
        if entry is None:
            entry = _registry[(str(state_dir), pid)] = RootsFile(state_dir, pid)
        entry.users += 1
        return entry


# -- the collector's side ----------------------------------------------------------------------------------


def read_temp_roots(state_dir: Path) -> dict[str, set[str]]:
    """The temporary roots of the living processes: store path text -> `{temp:<pid>}` labels. Files of
    dead processes are removed on the way (unlinked, then marked "d"). Nix: `findTempRoots`."""
    roots: dict[str, set[str]] = {}
    directory = state_dir / TEMP_ROOTS_DIR
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return roots
    for name in names:
        if name.startswith("."):
            continue
        path = directory / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                # Its owner is gone.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.write(fd, b"d")
                continue
            chunks = []
            while block := os.read(fd, 1 << 16):
                chunks.append(block)
            for text in b"".join(chunks).split(b"\0")[:-1]:
                roots.setdefault(text.decode("utf-8", "replace"), set()).add(f"{{temp:{name}}}")
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        finally:
            os.close(fd)
    return roots

"""Temporary garbage-collector roots, written exactly as Nix 2.8 writes them.

A process that needs store paths to survive a concurrent garbage collection (an import in progress, a
`nix-store --serve` session that locked paths) appends each to its own file
`STATE/temproots/<pid>`: the full store path followed by a NUL byte. The process holds an exclusive
`flock` on that file while it lives; a collector that can take the lock knows its owner is dead and
deletes the file. Before appending, the process takes the store's global GC lock `STATE/gc.lock`
shared without waiting: if that fails a collection is running, and the path is sent to the
collector's socket `STATE/gc-socket/socket` instead (the path and a newline, answered with `1`).

The file lives as long as the process (one per state directory), so roots added here hold until the
process exits, as Nix's do. Nix: gc.cc `LocalStore::addTempRoot`, `findTempRoots`; local-store.cc
(`fnTempRoots`), pathlocks.cc (`openLockFile`, `lockFile`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from pathlib import Path

from xstore.errors import StoreError
from xstore.storepath import StorePath

_lock = threading.Lock()
_files: dict[tuple[int, str], int] = {}  # (pid, state dir) -> descriptor of the locked roots file


def _roots_file(state_dir: Path) -> int:
    """This process's temporary roots file in `state_dir`, created and locked on first use."""
    key = (os.getpid(), str(state_dir))
    fd = _files.get(key)
    if fd is not None:
        return fd
    directory = state_dir / "temproots"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / str(os.getpid())
    while True:
        # A file with our pid must be stale: no two live processes share a pid.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size == 0:
            break
        # A collector deleted the file (and wrote "d" into it) between our open and our lock: again.
        os.close(fd)
    _files[key] = fd
    return fd


def _tell_collector(state_dir: Path, path: StorePath) -> bool:
    """Send `path` to the running collector; False if it has gone meanwhile (then retry the lock)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(60.0)
        try:
            sock.connect(os.fspath(state_dir / "gc-socket" / "socket"))
            sock.sendall(path.path.encode() + b"\n")
            answer = sock.recv(1)
        except (ConnectionRefusedError, FileNotFoundError, BrokenPipeError, ConnectionResetError):
            return False
        except TimeoutError:
            raise StoreError(
                f"the garbage collector of '{state_dir}' did not acknowledge the root '{path}'"
            ) from None
        return answer == b"1"
    finally:
        sock.close()


def add_temp_root(state_dir: Path, path: StorePath) -> None:
    """Keep `path` from being collected from the store whose state directory (`ROOT/nix/var/nix`) is
    `state_dir` until this process exits. Raises `StoreError` if the roots cannot be written."""
    with _lock:
        try:
            fd = _roots_file(state_dir)
            gc_lock = os.open(state_dir / "gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StoreError(f"cannot record a temporary root in '{state_dir}': {e.strerror or e}") from e
        try:
            while True:
                try:
                    fcntl.flock(gc_lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    shared = True
                except BlockingIOError:
                    # A collection is running: it takes new roots from its socket. If it has just
                    # ended, take the lock again.
                    shared = False
                    if not _tell_collector(state_dir, path):
                        time.sleep(0.01)
                        continue
                try:
                    os.write(fd, path.path.encode() + b"\0")
                finally:
                    if shared:
                        fcntl.flock(gc_lock, fcntl.LOCK_UN)
                break
        finally:
            os.close(gc_lock)

"""Helpers for the FUSE tests: mount for real, in a child process, and always unmount.

- `require_fuse()` skips a test where FUSE cannot be used (fails instead in CI, see `require_or_skip`).
- `mounted(argv, mountpoint)` runs `xstore mount ARGV...` (background mode, so it returns once the
  filesystem answers) and unmounts in `finally` whatever happened: `xstore umount`, then a lazy
  `umount -l`/`fusermount3 -u -z` if that did not do it.
- `foreground(argv, mountpoint)` runs `xstore mount ARGV... --foreground` as a child process, waits
  until its mount answers, and yields the `Popen` (for signal tests); on the way out it stops the
  child and removes any mount it left.
- `xstore_mounts()` lists the FUSE mounts of type `fuse.xstore`, to check that a test left none.

Every wait is bounded, and everything that touches a mount which may hang runs in a subprocess with a
timeout (a process blocked on a FUSE request can still be killed), so a broken filesystem fails a test
instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tests.helpers import require_or_skip

XSTORE = [sys.executable, "-m", "xstore"]
MOUNT_TIMEOUT = 120.0
EXIT_TIMEOUT = 30.0


def require_fuse() -> None:
    """Skip (in CI: fail) unless FUSE mounts can be made here."""
    from xstore.errors import FuseUnavailableError
    from xstore.fuse.lifecycle import check_fuse

    try:
        check_fuse()
    except FuseUnavailableError as e:
        require_or_skip(False, str(e))
    require_or_skip(
        os.geteuid() == 0 or shutil.which("fusermount3") is not None,
        "mounting FUSE needs root or fusermount3 (apt-get install fuse3)",
    )


Arg = str | os.PathLike[str]


def _strs(args: Iterable[Arg]) -> list[str]:
    return [os.fspath(a) for a in args]


def errno_of(action: Callable[..., object], *args: object) -> int | None:
    """The errno `action(*args)` fails with, or None if it succeeds (closing what it opened, if it
    returned a file object)."""
    try:
        result = action(*args)
    except OSError as e:
        return e.errno
    close = getattr(result, "close", None)
    if callable(close):
        close()
    return None


def xstore(*args: Arg, timeout: float = 300.0) -> subprocess.CompletedProcess[bytes]:
    """`xstore ARGS...` as a subprocess; never raises for its exit status."""
    return subprocess.run(
        [*XSTORE, *_strs(args)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def is_mounted(path: Arg) -> bool:
    from xstore.fuse.lifecycle import is_mounted as lifecycle_is_mounted

    return lifecycle_is_mounted(path)


def xstore_mounts() -> list[str]:
    """The mount table's lines for xstore's FUSE filesystems (type fuse.xstore), sorted."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return sorted(line.strip() for line in f if " - fuse.xstore " in line)


def force_unmount(mountpoint: Arg) -> None:
    """Remove whatever is mounted at `mountpoint`, however it ended up: `xstore umount`, then lazy."""
    if not is_mounted(mountpoint):
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        xstore("umount", mountpoint, timeout=60)
    for argv in (["umount", "-l"], ["fusermount3", "-u", "-z"]):
        if not is_mounted(mountpoint):
            return
        if shutil.which(argv[0]) is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([*argv, os.fspath(mountpoint)], capture_output=True, timeout=60, check=False)


def answers(mountpoint: Arg, timeout: float = 30.0) -> bool:
    """Whether a listing of `mountpoint` succeeds within `timeout` (run in a subprocess, so a hung
    mount cannot hang the test)."""
    try:
        result = subprocess.run(
            ["ls", "-a", os.fspath(mountpoint)], capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


@contextlib.contextmanager
def mounted(argv: list[Arg], mountpoint: Arg, *, env: dict[str, str] | None = None) -> Iterator[Path]:
    """`xstore mount ARGV...` (ARGV ends with the mount point); yields the mount point, mounted and
    answering, and always unmounts it afterwards. Fails the test if the mount command fails."""
    try:
        result = subprocess.run(
            [*XSTORE, "mount", *_strs(argv)],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=MOUNT_TIMEOUT,
            env=env,
            check=False,
        )
        assert result.returncode == 0, (
            f"xstore mount {' '.join(_strs(argv))} exited with {result.returncode}: "
            f"{result.stderr.decode('utf-8', 'replace')}"
        )
        assert is_mounted(mountpoint), "xstore mount returned but nothing is mounted"
        yield Path(mountpoint)
    finally:
        force_unmount(mountpoint)
    assert not is_mounted(mountpoint)


@contextlib.contextmanager
def foreground(argv: list[Arg], mountpoint: Arg) -> Iterator[subprocess.Popen[bytes]]:
    """`xstore mount ARGV... --foreground` as a child process, yielded once its mount answers. On the
    way out: SIGTERM if it still runs, SIGKILL if it does not stop, and any mount left is removed."""
    with subprocess.Popen(
        [*XSTORE, "mount", *_strs(argv), "--foreground"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            deadline = time.monotonic() + MOUNT_TIMEOUT
            while not is_mounted(mountpoint):
                if proc.poll() is not None:
                    _, err = proc.communicate()
                    raise AssertionError(
                        f"xstore mount --foreground exited with {proc.returncode}: "
                        f"{err.decode('utf-8', 'replace')}"
                    )
                assert time.monotonic() < deadline, "the foreground mount did not appear in time"
                time.sleep(0.05)
            assert answers(mountpoint), "the foreground mount does not answer"
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(EXIT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
            proc.communicate()
            force_unmount(mountpoint)

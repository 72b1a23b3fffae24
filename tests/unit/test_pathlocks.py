"""Locks: Nix's protocol for lock files deleted after use, and the lock a path takes while it is added,
which must never use, truncate or delete a valid store path named like a lock file, and never spin."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import xstore.pathlocks as pathlocks
from xstore.pathlocks import ByteLock, DeletableLock


def test_path_lock_release_unlinks_then_marks(tmp_path: Path) -> None:
    lock_path = os.fsencode(tmp_path / "x.lock")
    lock = DeletableLock(lock_path, "x")
    assert os.stat(lock_path).st_size == 0
    watcher = os.open(lock_path, os.O_RDONLY)
    try:
        lock.release()
        assert not os.path.lexists(lock_path)
        st = os.fstat(watcher)
        assert (st.st_nlink, st.st_size) == (0, 1)
        assert os.pread(watcher, 8, 0) == b"d"
    finally:
        os.close(watcher)
    lock.release()  # twice is harmless


def test_path_lock_retries_stale_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock taken on a file its last owner deleted (size 1, "d") is dropped and taken again."""
    lock_path = os.fsencode(tmp_path / "x.lock")
    real_lock_file = pathlocks.lock_file
    calls: list[int] = []

    def lock_file(path: Path | bytes | str, **options: Any) -> int | None:
        fd = real_lock_file(path, **options)
        calls.append(-1 if fd is None else fd)
        if len(calls) == 1:
            # What a waiter holds after the owner released: the deleted inode, marked "d".
            os.unlink(path)
            assert fd is not None
            os.write(fd, b"d")
        return fd

    monkeypatch.setattr(pathlocks, "lock_file", lock_file)
    with DeletableLock(lock_path, "x"):
        assert len(calls) == 2
        assert os.stat(lock_path).st_size == 0
        assert not held_elsewhere_free(lock_path)
    assert not os.path.lexists(lock_path)


def held_elsewhere_free(path: bytes) -> bool:
    """Whether an exclusive flock on `path` can be taken right now (by another open file)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def waiting_on(path: bytes) -> bool:
    """Whether some flock request is blocked on the file at `path` (Linux: a `->` line of /proc/locks
    naming its inode)."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if (
                "->" in fields
                and "FLOCK" in fields
                and any(field.count(":") == 2 and field.rsplit(":", 1)[1] == str(inode) for field in fields)
            ):
                return True
    return False


def test_path_lock_waiter_gets_fresh_file(tmp_path: Path) -> None:
    """Nix's protocol with a real waiter: it blocks on the owner's inode, finds it deleted and marked when
    it gets it, and locks a fresh file instead."""
    lock_path = os.fsencode(tmp_path / "x.lock")
    owner = DeletableLock(lock_path, "x")
    got: list[DeletableLock] = []
    thread = threading.Thread(target=lambda: got.append(DeletableLock(lock_path, "x")), daemon=True)
    thread.start()
    if os.path.exists("/proc/locks"):
        deadline = time.monotonic() + 10
        while not waiting_on(lock_path):
            assert time.monotonic() < deadline, "the second lock never waited"
            time.sleep(0.005)
    else:
        time.sleep(0.2)
    assert not got
    owner.release()  # unlinks the file, marks it "d"
    thread.join(10)
    (waiter,) = got
    try:
        # The name exists again, so the waiter made a new file after finding the old one stale; it is
        # empty and locked.
        assert os.stat(lock_path).st_size == 0
        assert not held_elsewhere_free(lock_path)
    finally:
        waiter.release()
    assert not os.path.lexists(lock_path)




needs_byte_locks = pytest.mark.skipif(not pathlocks.HAVE_BYTE_LOCKS, reason="open file description locks")


@needs_byte_locks
def test_byte_locks_exclude_each_other_per_byte_in_one_process(tmp_path: Path) -> None:
    path = tmp_path / "path-locks"
    first = ByteLock(path, 7, "x")
    try:
        assert first.acquired
        assert not ByteLock(path, 7, "x", blocking=False).acquired  # another open file, same byte
        other = ByteLock(path, 8, "x", blocking=False)
        assert other.acquired
        other.release()
    finally:
        first.release()
    again = ByteLock(path, 7, "x", blocking=False)
    assert again.acquired
    again.release()
    again.release()  # twice is harmless
    assert path.stat().st_size == 0  # nothing is written, and the file stays


@needs_byte_locks
def test_byte_lock_waiter_gets_the_byte_when_released(tmp_path: Path) -> None:
    path = tmp_path / "path-locks"
    far = (1 << 62) - 1  # the highest offset a path lock uses
    owner = ByteLock(path, far, "x")
    got: list[ByteLock] = []
    thread = threading.Thread(target=lambda: got.append(ByteLock(path, far, "x")), daemon=True)
    thread.start()
    thread.join(0.3)
    assert not got, "the waiter should still wait"
    owner.release()
    thread.join(10)
    (waiter,) = got
    assert waiter.acquired
    waiter.release()


@needs_byte_locks
def test_a_stores_byte_lock_file_shares_one_description_and_still_excludes(tmp_path: Path) -> None:
    """A store's `ByteLockFile` locks the bytes it does not hold through its one open file (no open per
    lock), yet a byte it holds is refused to a second lock of this process through the same object, to
    a `ByteLock` of its own, and to a waiting thread until released; closing it releases everything."""
    path = tmp_path / "path-locks"
    locks = pathlocks.ByteLockFile(path)
    try:
        first, second = locks.lock(7, "x"), locks.lock(8, "x")
        assert first.acquired
        assert second.acquired
        assert not locks.lock(7, "x", blocking=False).acquired  # this process holds it already
        assert not ByteLock(path, 8, "x", blocking=False).acquired  # another description
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.append(locks.lock(7, "x")), daemon=True)
        thread.start()
        thread.join(0.3)
        assert not got, "the waiter should still wait"
        first.release()
        first.release()  # twice is harmless
        thread.join(10)
        (waiter,) = got
        assert waiter.acquired
        waiter.release()
        again = locks.lock(7, "x", blocking=False)
        assert again.acquired
        held_fds = len(os.listdir("/proc/self/fd"))
        for offset in range(100, 120):  # no descriptor per lock
            locks.lock(offset, "x")
        assert len(os.listdir("/proc/self/fd")) == held_fds
    finally:
        locks.close()
    for offset in (7, 8, 100):  # all released with the file
        lock = ByteLock(path, offset, "x", blocking=False)
        assert lock.acquired
        lock.release()


@needs_byte_locks
def test_byte_lock_excludes_another_process(tmp_path: Path) -> None:
    path = tmp_path / "path-locks"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from xstore.pathlocks import ByteLock; lock = ByteLock(sys.argv[1], 42, 'x'); "
            "print('held', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        assert not ByteLock(path, 42, "x", blocking=False).acquired
        assert ByteLock(path, 43, "x", blocking=False).acquired
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
        assert holder.stdout is not None
        holder.stdout.close()
    assert ByteLock(path, 42, "x", blocking=False).acquired  # its end released the lock


@needs_byte_locks
def test_store_path_locks_create_and_delete_nothing_of_their_own(tmp_path: Path) -> None:
    """On Linux xstore's own lock on a path is a byte of one file: nothing per path in the locks
    directory, and a second lock on the same hash part (another name) waits for the first."""
    from xstore.casehack import CaseHackMode
    from xstore.store import LocalStore
    from xstore.storepath import StorePath

    with LocalStore.create(tmp_path / "root", case_hack=CaseHackMode.OFF) as store:
        path = StorePath("a" * 32, "one")
        locks = tmp_path / "root" / "nix" / "var" / "xstore" / "locks"
        with store.lock(path):
            assert os.listdir(locks) == []
            assert store.try_lock(StorePath("a" * 32, "ONE")) is None  # same hash part
            other = store.try_lock(StorePath("b" * 32, "one"))
            assert other is not None
            other.release()
        free = store.try_lock(StorePath("a" * 32, "ONE"))
        assert free is not None
        free.release()

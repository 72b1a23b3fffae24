"""Registrations deferred while a copy runs (`LocalStore.registering_together`, which `copy` uses into a
local store from a local store or a cache's files): kept in memory with each path's lock, committed
together in one short transaction, never while waiting for anything, and every path that was added
before an error committed before the error leaves."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.localstores import add_path, leftovers, sp, unlocked, valid_elsewhere
from xstore import store as store_module
from xstore.casehack import CaseHackMode
from xstore.copy import CopyResult, copy_one, copy_paths
from xstore.errors import HashMismatchError, StoreError
from xstore.hashing import encode_nix32
from xstore.pathlocks import HAVE_BYTE_LOCKS, PathLock
from xstore.store import LocalStore
from xstore.storeapi import PathInfo
from xstore.storepath import StorePath


@pytest.fixture
def source(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore.create(tmp_path / "source", case_hack=CaseHackMode.OFF) as s:
        yield s


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore.create(tmp_path / "dest", case_hack=CaseHackMode.OFF) as s:
        yield s


def chain(store: LocalStore, count: int, *, shared_lock: bool = False) -> list[StorePath]:
    """`count` small paths, each referring to the one before: copied in this order. Their hash parts
    are as random as real ones, or with `shared_lock` (at most 10) differ only in their first
    character, which gives them all the same byte of xstore's lock file (the hash part read in base
    36, within 62 bits: 36**31 is a multiple of 2**62)."""
    paths: list[StorePath] = []
    for i in range(count):
        name = f"p{i}"
        if shared_lock:
            path = sp("0123456789"[i], name)
        else:
            path = StorePath(encode_nix32(hashlib.sha256(name.encode()).digest()[:20]), name)
        add_path(store, path, {b"f": b"contents %d\n" % i}, *paths[-1:])
        paths.append(path)
    return paths


def commits(store: LocalStore) -> list[str]:
    """The transactions committed from here on: each `commit`, and each insert made outside a
    transaction (one path without references is registered by its one statement). The trace shows
    statements as they start: a `begin` that failed would hide the inserts after it, and none fails
    in these tests."""
    seen: list[str] = []
    open_ = False

    def trace(sql: str) -> None:
        nonlocal open_
        statement = sql.strip().lower()
        if statement.startswith("begin"):
            open_ = True
        elif statement in ("commit", "rollback"):
            open_ = False
            if statement == "commit":
                seen.append(statement)
        elif statement.startswith("insert into validpaths") and not open_:
            seen.append(statement)

    store.db.set_trace_callback(trace)
    return seen


def checks_out(store: LocalStore, path: StorePath) -> bool:
    """Whether the path's tree dumps to the NAR its registration names (hash and size)."""
    return store.nar_from_path(path, lambda _data: None) == store.require(path).nar_size


def full_disk(self: LocalStore, info: object) -> None:
    """In place of `LocalStore._register_all` and `register`: a database that cannot be written."""
    raise StoreError("the store database cannot be used: database or disk is full")


class SlowSource(LocalStore):
    """A local store whose NARs count as not at hand (as a remote cache's not fetched yet)."""

    def nar_ready(self, path: StorePath) -> bool:
        return False


def test_a_copy_commits_its_registrations_together(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DEFER_SECONDS", 60.0)  # the count alone decides
    paths = chain(source, 70)
    seen = commits(dest)
    reported: list[CopyResult] = []

    def on_path(result: CopyResult) -> None:
        # A path is reported once its registration is committed, and every path before it too.
        assert valid_elsewhere(dest, [result.path]) == [result.path]
        reported.append(result)

    results = copy_paths(source, dest, [paths[-1]], on_path=on_path)
    assert [r.path for r in results] == [r.path for r in reported] == paths
    assert [r.copied for r in results] == [True] * 70
    assert valid_elsewhere(dest, paths) == paths
    # Each path refers to the one before, counted valid while its registration waited: 70 paths in
    # batches of DEFER_PATHS (32, 32, 6), not 70 commits.
    assert len(seen) == 3
    assert leftovers(dest) == []
    assert not dest.db.in_transaction
    assert unlocked(dest, paths)
    assert checks_out(dest, paths[-1])


def test_a_registration_waits_no_longer_than_defer_seconds(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DEFER_SECONDS", 0.0)
    paths = chain(source, 5)
    seen = commits(dest)
    copy_paths(source, dest, [paths[-1]])
    assert len(seen) == 5  # before each next path, and the last at the end
    assert valid_elsewhere(dest, paths) == paths


def test_a_nar_of_unknown_size_first_commits_what_waits(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DEFER_SECONDS", 60.0)
    paths = chain(source, 3)
    source.db.execute("update ValidPaths set narSize = null where path = ?", (paths[2].path,))
    assert source.require(paths[2]).nar_size == 0
    seen = commits(dest)
    copy_paths(source, dest, [paths[-1]])
    assert len(seen) == 2  # paths 0 and 1 before path 2, path 2 at the end
    assert valid_elsewhere(dest, paths) == paths
    assert checks_out(dest, paths[2])


def test_a_path_stays_locked_until_its_registration_is_committed(
    source: LocalStore, dest: LocalStore
) -> None:
    (path,) = chain(source, 1)
    info = source.require(path)
    with dest.registering_together():
        assert copy_paths(source, dest, [path])[0].copied
        assert valid_elsewhere(dest, [path]) == []
        assert not dest.is_valid(path)
        assert dest.registered_or_deferred([path]) == {path}
        assert os.path.exists(dest.real_path(path))
        assert not unlocked(dest, [path])
    assert valid_elsewhere(dest, [path]) == [path]
    assert unlocked(dest, [path])
    with LocalStore(dest.root) as other:
        assert other.require(path) == info.replace(registration_time=other.require(path).registration_time)


def test_an_add_tells_once_registered_before_the_lock_is_released(
    source: LocalStore, dest: LocalStore
) -> None:
    # `add_to_store(on_registered=)`, which `xstore serve ssh` confirms a path with: told once the
    # path is registered and while it is still locked; not told for a path valid already, nor when the
    # registration is deferred (the commit tells then).
    paths = chain(source, 3)
    told: list[tuple[list[StorePath], bool]] = []

    def add(path: StorePath) -> bool:
        nar: list[bytes] = []
        source.nar_from_path(path, nar.append)
        chunks = iter([b"".join(nar)])
        return dest.add_to_store(
            source.require(path),
            lambda _n: next(chunks, b""),
            check_sigs=False,
            on_registered=lambda: told.append((valid_elsewhere(dest, [path]), unlocked(dest, [path]))),
        )

    assert add(paths[0])
    assert told == [([paths[0]], False)]
    assert unlocked(dest, [paths[0]])
    assert not add(paths[0])  # valid already
    with dest.registering_together():
        assert add(paths[1])
    assert add(paths[2])
    assert told == [([paths[0]], False), ([paths[2]], False)]
    assert valid_elsewhere(dest, paths) == paths


def test_another_threads_add_is_registered_at_once(source: LocalStore, dest: LocalStore) -> None:
    # Only the adds of the thread that defers wait for its commits; another thread's are its own.
    first, second = sp("0c", "first"), sp("0d", "second")
    add_path(source, first, {b"f": b"1"})
    add_path(source, second, {b"f": b"2"})
    with dest.registering_together():
        copy_one(source, dest, source.require(first), check_sigs=False)
        worker = threading.Thread(
            target=lambda: copy_one(source, dest, source.require(second), check_sigs=False)
        )
        worker.start()
        worker.join(60)
        assert valid_elsewhere(dest, [first, second]) == [second]
    assert valid_elsewhere(dest, [first, second]) == [first, second]


def test_paths_that_share_a_lock_byte_commit_before_the_next_one_is_locked(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DEFER_SECONDS", 60.0)  # not the timer
    # The lock of a path whose registration waits is still held; a later path whose lock is the same
    # byte would wait for it for ever. The registrations are committed first instead.
    paths = chain(source, 5, shared_lock=True)
    if HAVE_BYTE_LOCKS:
        assert len({int(p.hash_part, 36) & store_module._BYTE_LOCK_MASK for p in paths}) == 1
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(copy_paths(source, dest, [paths[-1]])), daemon=True)
    worker.start()
    worker.join(60)
    assert done, "the copy waited for a lock it held itself"
    assert valid_elsewhere(dest, paths) == paths
    assert leftovers(dest) == []


def test_a_lock_held_elsewhere_commits_the_waiting_registrations_before_waiting(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DEFER_SECONDS", 60.0)  # not the timer
    # Another process holds the lock of the next path and may itself wait for one of the paths whose
    # registration waits here: those are committed and unlocked before this copy waits, so neither
    # waits for ever.
    paths = chain(source, 3)
    with LocalStore(dest.root) as other:
        held = other.try_lock(paths[2])
        assert held is not None
        done: list[object] = []
        worker = threading.Thread(
            target=lambda: done.append(copy_paths(source, dest, [paths[-1]])), daemon=True
        )
        worker.start()
        deadline = time.monotonic() + 30
        while valid_elsewhere(dest, paths[:2]) != paths[:2] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert valid_elsewhere(dest, paths[:2]) == paths[:2]
        first = other.try_lock(paths[0])  # what the other process would wait for is free
        assert first is not None
        first.release()
        assert not done  # the copy waits for the path the other holds
        held.release()
        worker.join(60)
    assert done
    assert valid_elsewhere(dest, paths) == paths
    assert unlocked(dest, paths)


def test_paths_before_a_failure_are_committed_and_the_failing_one_leaves_nothing(
    source: LocalStore, dest: LocalStore
) -> None:
    paths = chain(source, 6)
    broken = source.real_path(paths[3]) + b"/f"
    os.chmod(broken, 0o644)
    with open(broken, "ab") as f:
        f.write(b"changed\n")
    os.chmod(broken, 0o444)
    reported: list[StorePath] = []
    with pytest.raises(HashMismatchError, match="was modified"):
        copy_paths(source, dest, [paths[-1]], on_path=lambda r: reported.append(r.path))
    assert valid_elsewhere(dest, paths) == paths[:3]
    assert reported == paths[:3]
    assert [p for p in paths if os.path.lexists(dest.real_path(p))] == paths[:3]
    assert leftovers(dest) == []
    assert unlocked(dest, paths)
    assert not dest.db.in_transaction


def test_a_large_nar_first_commits_what_waits(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    small, large = sp("01", "small"), sp("02", "large")
    add_path(source, small, {b"f": b"x"})
    add_path(source, large, {b"f": os.urandom(4000)})
    monkeypatch.setattr(store_module, "DEFER_NAR_SIZE", 1000)
    monkeypatch.setattr(store_module, "DEFER_SECONDS", 60.0)  # the size alone decides
    with dest.registering_together():
        copy_paths(source, dest, [small])
        assert valid_elsewhere(dest, [small]) == []
        copy_paths(source, dest, [large])
        assert valid_elsewhere(dest, [small, large]) == [small]
    assert valid_elsewhere(dest, [small, large]) == [small, large]


def test_a_source_that_may_wait_gets_each_registration_committed_first(
    source: LocalStore, dest: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DEFER_SECONDS", 60.0)  # not the timer
    # A NAR not at hand (a remote cache's, not fetched yet) may take any time to come: the paths
    # before it are committed and unlocked before it is read.
    paths = chain(source, 4)
    seen = commits(dest)
    with SlowSource(source.root) as slow:
        results = copy_paths(slow, dest, [paths[-1]])
    assert [r.copied for r in results] == [True] * 4
    assert len(seen) == 4
    assert valid_elsewhere(dest, paths) == paths


def test_a_commit_that_fails_removes_the_paths_it_held(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = chain(source, 3)

    with monkeypatch.context() as patched:
        patched.setattr(LocalStore, "_register_all", full_disk)
        patched.setattr(LocalStore, "register", full_disk)
        with pytest.raises(StoreError, match="disk is full"):
            copy_paths(source, dest, [paths[-1]])
    assert valid_elsewhere(dest, paths) == []
    assert [p for p in paths if os.path.lexists(dest.real_path(p))] == []
    assert leftovers(dest) == []
    assert unlocked(dest, paths)
    # Nothing is held: the same paths copy now.
    assert [r.copied for r in copy_paths(source, dest, [paths[-1]])] == [True] * 3
    assert valid_elsewhere(dest, paths) == paths


def test_a_batch_that_fails_keeps_the_paths_before_the_one_that_fails(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another writer registers path 2 while its registration waits here (one that ignores the path
    # locks): the batch fails on it; the paths before it are registered one by one, path 2 keeps its
    # tree (the database holds it), and the paths after it are removed.
    monkeypatch.setattr(store_module, "DEFER_SECONDS", 60.0)
    paths = chain(source, 5)
    real = LocalStore.register_or_defer

    def meanwhile(self: LocalStore, info: PathInfo, lock: PathLock) -> bool:
        deferred = real(self, info, lock)
        if info.path == paths[2]:
            db = sqlite3.connect(self.db_dir / "db.sqlite")
            with db:
                db.execute(
                    "insert into ValidPaths (path, hash, registrationTime, narSize) values (?, ?, 1, ?)",
                    (info.path.path, "sha256:" + info.nar_hash.hex(), info.nar_size),
                )
            db.close()
        return deferred

    monkeypatch.setattr(LocalStore, "register_or_defer", meanwhile)
    reported: list[StorePath] = []
    with pytest.raises(StoreError, match="UNIQUE"):
        copy_paths(source, dest, [paths[-1]], on_path=lambda r: reported.append(r.path))
    assert reported == paths[:2]
    assert valid_elsewhere(dest, paths) == paths[:3]
    assert [p for p in paths if os.path.lexists(dest.real_path(p))] == paths[:3]
    assert unlocked(dest, paths)


def test_an_interrupt_just_after_the_commit_keeps_the_committed_paths(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "DEFER_SECONDS", 60.0)  # one commit, at the end
    paths = chain(source, 3)
    real = LocalStore._register_all

    def interrupted(self: LocalStore, infos: list[object]) -> None:
        real(self, infos)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalStore, "_register_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        copy_paths(source, dest, [paths[-1]])
    monkeypatch.setattr(LocalStore, "_register_all", real)
    assert valid_elsewhere(dest, paths) == paths
    for path in paths:  # registered and in place, as registered
        assert checks_out(dest, path)
    assert unlocked(dest, paths)


def test_an_interrupt_as_a_path_is_deferred_leaves_it_out(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Interrupted after the store took the path but before the adder knew: the adder removes the tree,
    # and the commit leaves the path out rather than registering a path without its tree.
    paths = chain(source, 3)
    real = LocalStore.register_or_defer

    def interrupted(self: LocalStore, info: PathInfo, lock: PathLock) -> bool:
        real(self, info, lock)
        if info.path == paths[1]:
            raise KeyboardInterrupt
        return True

    monkeypatch.setattr(LocalStore, "register_or_defer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        copy_paths(source, dest, [paths[-1]])
    assert valid_elsewhere(dest, paths) == paths[:1]
    assert [p for p in paths if os.path.lexists(dest.real_path(p))] == paths[:1]
    assert checks_out(dest, paths[0])
    assert unlocked(dest, paths)


def test_an_interrupt_just_after_a_path_is_registered_keeps_it(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same window without deferral (the daemon, import and serve routes): registered is registered.
    (path,) = chain(source, 1)
    real = LocalStore.register

    def interrupted(self: LocalStore, info: PathInfo) -> None:
        real(self, info)
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalStore, "register", interrupted)
    with pytest.raises(KeyboardInterrupt):
        copy_one(source, dest, source.require(path), check_sigs=False)
    assert valid_elsewhere(dest, [path]) == [path]
    assert checks_out(dest, path)


def test_another_threads_copy_leaves_the_waiting_registrations_alone(
    source: LocalStore, dest: LocalStore
) -> None:
    first, second = sp("0g", "first"), sp("0h", "second")
    add_path(source, first, {b"f": b"1"})
    add_path(source, second, {b"f": b"2"})
    with dest.registering_together():
        copy_one(source, dest, source.require(first), check_sigs=False)
        worker = threading.Thread(target=lambda: copy_paths(source, dest, [second]))
        worker.start()
        worker.join(60)
        assert valid_elsewhere(dest, [first, second]) == [second]
        assert not unlocked(dest, [first])
    assert valid_elsewhere(dest, [first, second]) == [first, second]


def test_a_report_that_fails_stops_the_copy_and_holds_nothing(source: LocalStore, dest: LocalStore) -> None:
    paths = chain(source, 4)

    def on_path(result: CopyResult) -> None:
        if result.path == paths[1]:
            raise BrokenPipeError("the reader went away")

    with pytest.raises(BrokenPipeError):
        copy_paths(source, dest, [paths[-1]], on_path=on_path)
    assert valid_elsewhere(dest, paths) == [p for p in paths if os.path.lexists(dest.real_path(p))]
    assert unlocked(dest, paths)
    assert [r.copied for r in copy_paths(source, dest, [paths[-1]])].count(True) == 4 - len(
        valid_elsewhere(dest, paths)
    )
    assert valid_elsewhere(dest, paths) == paths


def test_closing_the_store_when_its_commit_fails_still_closes_it(
    source: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (path,) = chain(source, 1)
    dest = LocalStore.create(tmp_path / "closing", case_hack=CaseHackMode.OFF)
    roots = dest.state_dir / "temproots" / str(os.getpid())

    with dest.registering_together():
        copy_one(source, dest, source.require(path), check_sigs=False)
        assert roots.exists()
        monkeypatch.setattr(LocalStore, "_register_all", full_disk)
        monkeypatch.setattr(LocalStore, "register", full_disk)
        with pytest.raises(StoreError, match="disk is full"):
            dest.close()
    assert not roots.exists()  # the temporary roots were released, the rest closed with them
    assert not os.path.lexists(dest.real_path(path))
    assert unlocked(dest, [path])


def test_outside_a_copy_each_registration_is_its_own_transaction(dest: LocalStore) -> None:
    seen = commits(dest)
    base = sp("0a", "base")
    add_path(dest, base, {b"f": b"1"})
    add_path(dest, sp("0b", "user"), {b"f": b"2"}, base)
    # The path without references is registered by its one INSERT, the one with a reference in a
    # transaction of its own.
    assert [statement.split(" (")[0] for statement in seen] == ["insert into validpaths", "commit"]
    assert valid_elsewhere(dest, [base]) == [base]

"""Paths registered together (`LocalStore.registering_together`, which `copy` uses into a local store):
shared SQLite transactions, each path locked until its registration is committed, and every path that
was added before an error committed before the error leaves."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.localstores import add_path, leftovers, sp
from xstore import store as store_module
from xstore.casehack import CaseHackMode
from xstore.copy import copy_paths
from xstore.errors import HashMismatchError, StoreError
from xstore.hashing import encode_nix32
from xstore.store import LocalStore
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
    are as random as real ones, or with `shared_lock` (at most 10) differ only in their first character, which
    gives them all the same byte of xstore's lock file (`store._own_lock_key`)."""
    paths: list[StorePath] = []
    for i in range(count):
        name = f"p{i}"
        if shared_lock:
            path = sp("0123456789"[i], name)  # 36**31 is a multiple of 2**62
        else:
            path = StorePath(encode_nix32(hashlib.sha256(name.encode()).digest()[:20]), name)
        add_path(store, path, {b"f": b"contents %d\n" % i}, *paths[-1:])
        paths.append(path)
    return paths


def valid_elsewhere(store: LocalStore, paths: list[StorePath]) -> list[StorePath]:
    """Which of `paths` another connection to the store's database sees as valid (committed)."""
    db = sqlite3.connect(store.db_dir / "db.sqlite")
    try:
        query = "select 1 from ValidPaths where path = ?"
        return [p for p in paths if db.execute(query, (p.path,)).fetchone()]
    finally:
        db.close()


def commits(store: LocalStore) -> list[str]:
    seen: list[str] = []
    store.db.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().lower() == "commit" else None)
    return seen


def test_a_copy_commits_its_registrations_together(source: LocalStore, dest: LocalStore) -> None:
    paths = chain(source, 40)
    seen = commits(dest)
    results = copy_paths(source, dest, [paths[-1]])
    assert [r.copied for r in results] == [True] * 40
    assert valid_elsewhere(dest, paths) == paths
    # One transaction per batch: 40 small paths well within BATCH_SECONDS, not 40 commits (the old way:
    # one per path with references).
    assert 1 <= len(seen) < 5
    assert leftovers(dest) == []
    assert not dest.db.in_transaction
    for path in paths:  # every lock was released
        lock = dest.try_lock(path)
        assert lock is not None
        lock.release()


def test_paths_that_share_a_lock_byte_commit_before_the_next_one_is_locked(
    source: LocalStore, dest: LocalStore
) -> None:
    # The lock of a path registered but not committed is still held; a later path whose lock is the same
    # byte would wait for it for ever. The registrations are committed first instead.
    paths = chain(source, 5, shared_lock=True)
    assert len({store_module._own_lock_key(p) for p in paths}) == 1
    seen = commits(dest)
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(copy_paths(source, dest, [paths[-1]])), daemon=True)
    worker.start()
    worker.join(60)
    assert done, "the copy waited for a lock it held itself"
    assert valid_elsewhere(dest, paths) == paths
    assert len(seen) == 5
    assert leftovers(dest) == []


def test_a_path_stays_locked_and_unseen_until_its_registration_is_committed(
    source: LocalStore, dest: LocalStore, tmp_path: Path
) -> None:
    (path,) = chain(source, 1)
    info = source.require(path)
    with dest.registering_together():
        assert copy_paths(source, dest, [path])[0].copied
        assert dest.is_valid(path)  # this connection sees its own transaction
        assert valid_elsewhere(dest, [path]) == []
        assert os.path.exists(dest.real_path(path))
        with LocalStore(dest.root) as other:  # another store object: another process, as far as locks go
            assert other.try_lock(path) is None
    assert valid_elsewhere(dest, [path]) == [path]
    with LocalStore(dest.root) as other:
        lock = other.try_lock(path)
        assert lock is not None
        lock.release()
        assert other.require(path) == info.replace(registration_time=other.require(path).registration_time)


def test_paths_before_a_failure_are_committed_and_the_failing_one_leaves_nothing(
    source: LocalStore, dest: LocalStore
) -> None:
    paths = chain(source, 6)
    broken = source.real_path(paths[3]) + b"/f"
    os.chmod(broken, 0o644)
    with open(broken, "ab") as f:
        f.write(b"changed\n")
    os.chmod(broken, 0o444)
    with pytest.raises(HashMismatchError, match="was modified"):
        copy_paths(source, dest, [paths[-1]])
    assert valid_elsewhere(dest, paths) == paths[:3]
    assert [p for p in paths if os.path.lexists(dest.real_path(p))] == paths[:3]
    assert leftovers(dest) == []
    assert not dest.db.in_transaction


def test_a_large_nar_first_commits_what_is_pending(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unpacking a large NAR must not hold the database's write lock (nor the paths before it): they are
    # committed before it starts.
    small, large = sp("01", "small"), sp("02", "large")
    add_path(source, small, {b"f": b"x"})
    add_path(source, large, {b"f": os.urandom(4000)})
    monkeypatch.setattr(store_module, "BATCH_NAR_SIZE", 1000)
    with dest.registering_together():
        copy_paths(source, dest, [small])
        assert valid_elsewhere(dest, [small]) == []
        copy_paths(source, dest, [large])
        assert valid_elsewhere(dest, [small, large]) == [small]
    assert valid_elsewhere(dest, [small, large]) == [small, large]


def test_a_commit_that_fails_removes_the_paths_it_held(
    source: LocalStore, dest: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = chain(source, 3)
    real_commit = LocalStore._commit  # the failure is injected at the commit itself

    def full_disk(self: LocalStore) -> None:
        self.db.execute("rollback")
        raise StoreError("the store database cannot be used: database or disk is full")

    monkeypatch.setattr(LocalStore, "_commit", full_disk)
    with pytest.raises(StoreError, match="disk is full"):
        copy_paths(source, dest, [paths[-1]])
    monkeypatch.setattr(LocalStore, "_commit", real_commit)
    assert valid_elsewhere(dest, paths) == []
    assert [p for p in paths if os.path.lexists(dest.real_path(p))] == []
    assert leftovers(dest) == []
    # Nothing is held: the same paths copy now.
    assert [r.copied for r in copy_paths(source, dest, [paths[-1]])] == [True] * 3
    assert valid_elsewhere(dest, paths) == paths


def test_outside_a_batch_each_registration_is_its_own_transaction(dest: LocalStore) -> None:
    seen = commits(dest)
    base = sp("0a", "base")
    add_path(dest, base, {b"f": b"1"})
    add_path(dest, sp("0b", "user"), {b"f": b"2"}, base)
    assert seen == ["commit"]  # the path with a reference; the one without is a single INSERT
    assert valid_elsewhere(dest, [base]) == [base]

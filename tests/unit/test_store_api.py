"""The store interface on local stores, the one add transaction, copying, and path arguments.

The transaction is tried both ways paths arrive: metadata first (`add_to_store`, as from a binary cache,
the serve or daemon protocol, `copy`) and metadata last (an export stream). Each way meets a NAR whose
hash does not match, one whose size does not match, and one cut short; each time nothing may be
registered and nothing may be left in the store.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.localstores import add_path, dummy, export_bytes, leftovers, read_from, rows, sp, store_entries
from xstore.casehack import CaseHackMode, Fold
from xstore.copy import copy_paths, plan_copy
from xstore.errors import (
    ExportStreamError,
    HashMismatchError,
    InvalidPathError,
    InvalidStorePathError,
    StoreError,
    TrailingDataError,
    TruncatedError,
)
from xstore.exportstream import PATH_MARKER, STREAM_END, trailer
from xstore.import_export import import_stream
from xstore.nar.dump import dump_path
from xstore.store import LocalStore
from xstore.storeapi import PathInfo, Store, closure_sizes, pipe_nar, topo_sort
from xstore.storepath import StorePath, parse_store_path
from xstore.stores import resolve_path


def nar_of(store: LocalStore, path: StorePath) -> bytes:
    parts: list[bytes] = []
    store.nar_from_path(path, parts.append)
    return b"".join(parts)


@pytest.fixture
def other(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore.create(tmp_path / "other", case_hack=CaseHackMode.OFF) as s:
        yield s


# -- queries ---------------------------------------------------------------------------------------------


def test_queries(store: LocalStore, filled: list[StorePath]) -> None:
    lib, app_, doc, single = filled
    info = store.query_path_info(app_)
    assert info is not None
    assert info.references == tuple(sorted([lib, app_]))
    assert info.deriver == sp("dd", "app.drv")
    assert store.query_path_info(sp("77", "missing")) is None
    assert store.query_valid_paths([lib, sp("77", "missing"), doc]) == {lib, doc}
    assert store.query_path_from_hash_part(app_.hash_part) == app_
    assert store.query_path_from_hash_part(sp("3a", "x").hash_part) is None
    assert store.query_path_from_hash_part("short") is None
    assert set(store.query_closure([app_])) == {app_, lib}
    sizes = closure_sizes(store, [app_, single])
    assert sizes[app_] == store.require(app_).nar_size + store.require(lib).nar_size
    assert sizes[single] == store.require(single).nar_size
    with pytest.raises(InvalidPathError, match="is not valid in the store at"):
        store.require(sp("77", "missing"))


def test_info_by_hash_part_is_the_two_step_lookup(store: LocalStore, filled: list[StorePath]) -> None:
    # One statement in a local store; the interface's default asks for the path, then its info.
    for path in filled:
        expected = store.query_path_info(path)
        assert expected is not None
        assert store.query_info_by_hash_part(path.hash_part) == expected
        assert Store.query_info_by_hash_part(store, path.hash_part) == expected
    assert store.query_info_by_hash_part(sp("3a", "x").hash_part) is None
    assert store.query_info_by_hash_part("short") is None


def test_info_by_hash_part_takes_only_that_hash_part(store: LocalStore) -> None:
    # Paths whose hash parts sort right before and right after the one asked for are not it.
    hash_part = sp("bb", "x").hash_part[:-1] + "1"
    before = parse_store_path(f"/nix/store/{hash_part[:-1]}0-before")
    after = parse_store_path(f"/nix/store/{hash_part[:-1]}2-after")
    for p in (before, after):
        store.register(dummy(p))
    assert before < after
    assert store.query_info_by_hash_part(hash_part) is None
    wanted = parse_store_path(f"/nix/store/{hash_part}-wanted")
    store.register(dummy(wanted, before, wanted))
    info = store.query_info_by_hash_part(hash_part)
    assert info is not None
    assert info.path == wanted
    assert info.references == tuple(sorted([before, wanted]))


def test_info_by_hash_part_reports_a_corrupt_path(store: LocalStore) -> None:
    a = sp("aa", "a")
    store.register(dummy(a))
    store.db.execute("update ValidPaths set path = ? where path = ?", (f"{a.path[:-1]}/", a.path))
    with pytest.raises(StoreError, match="corrupt path"):
        store.query_info_by_hash_part(a.hash_part)


def test_reference_graph_is_one_snapshot(store: LocalStore) -> None:
    # Another process registers a path with a reference between the graph's reads of the paths and of
    # the references: the graph holds neither it nor its reference (once a KeyError in the collector).
    lib = sp("aa", "lib")
    store.register(dummy(lib))
    late = sp("bb", "late")
    registered: list[StorePath] = []

    def register_meanwhile(statement: str) -> None:
        if statement.startswith("select a.path, b.path from Refs") and not registered:
            registered.append(late)
            with LocalStore.open(store.root) as writer:
                writer.register(dummy(late, lib))

    store.db.set_trace_callback(register_meanwhile)
    try:
        refs, _, _ = store.reference_graph()
    finally:
        store.db.set_trace_callback(None)
    assert registered == [late]
    assert refs == {lib.path: []}
    assert store.query_valid_paths([late]) == {late}
    assert store.reference_graph()[0] == {lib.path: [], late.path: [lib.path]}


def test_query_valid_paths_in_batches(store: LocalStore) -> None:
    paths = [sp(f"{i:04d}", "p") for i in range(1200)]
    for p in paths[::2]:
        store.register(dummy(p))
    assert store.query_valid_paths(paths) == set(paths[::2])


def test_corrupt_row_is_a_store_error_naming_the_path(store: LocalStore) -> None:
    a = sp("aa", "a")
    store.register(dummy(a))
    store.db.execute("update ValidPaths set hash = 'sha256:nonsense' where path = ?", (a.path,))
    with pytest.raises(StoreError, match=f"corrupt row for '{a.path}'"):
        store.query_path_info(a)


# 077 takes bits of 0444/0555, so each mode is set after its file is complete; 022 and 000 take none,
# so the store's scratch directory is known to keep modes and files are created read-only at once.
@pytest.mark.parametrize("umask", [0o077, 0o022, 0o000], ids=oct)
def test_added_paths_are_canonical_whatever_the_umask(store: LocalStore, tmp_path: Path, umask: int) -> None:
    path = sp("ab", "tree")
    files = {b"bin/tool": b"#!/bin/sh\n", b"share/doc/readme": b"text", b"empty/": b"", b"ln": b"->bin/tool"}
    info = add_path(store, path, files)
    nar = nar_of(store, path)
    old = os.umask(umask)
    try:
        with LocalStore.create(tmp_path / f"dest-{umask:o}", case_hack=CaseHackMode.OFF) as dest:
            assert dest.add_to_store(info, read_from(nar), check_sigs=False)
            assert dest.scratch_keeps_modes is (umask & 0o755 == 0)
            real = os.fsdecode(dest.real_path(path))
            modes = {}
            for top, dirs, names in os.walk(real):
                for name in [*dirs, *names]:
                    st = os.lstat(os.path.join(top, name))
                    assert st.st_mtime_ns == 1_000_000_000
                    if not stat.S_ISLNK(st.st_mode):
                        modes[os.path.relpath(os.path.join(top, name), real)] = stat.S_IMODE(st.st_mode)
            assert modes == {
                "bin": 0o555,
                "bin/tool": 0o555,
                "empty": 0o555,
                "share": 0o555,
                "share/doc": 0o555,
                "share/doc/readme": 0o444,
            }
            assert stat.S_IMODE(os.lstat(real).st_mode) == 0o555
            assert nar_of(dest, path) == nar
    finally:
        os.umask(old)


def test_nar_from_path_is_the_registered_nar(store: LocalStore, filled: list[StorePath]) -> None:
    for path in filled:
        nar = nar_of(store, path)
        assert hashlib.sha256(nar).digest() == store.require(path).nar_hash
        assert len(nar) == store.require(path).nar_size


def test_topo_sort_puts_dependencies_first(store: LocalStore) -> None:
    a, b, c = sp("cc", "a"), sp("bb", "b"), sp("aa", "c")
    infos = {a: dummy(a), b: dummy(b, a), c: dummy(c, b, c)}
    assert topo_sort(infos) == [a, b, c]


# -- the add transaction, metadata first -------------------------------------------------------------------


def test_add_to_store_metadata_first(store: LocalStore, filled: list[StorePath], other: LocalStore) -> None:
    lib, app_, _, _ = filled
    for path in (lib, app_):
        info = store.require(path)
        assert other.add_to_store(info, io.BytesIO(nar_of(store, path)).read, check_sigs=False) is True
    assert other.require(app_) == store.require(app_).replace(
        registration_time=other.require(app_).registration_time
    )
    assert nar_of(other, app_) == nar_of(store, app_)
    # Again: the path is valid, its NAR is read to the end and nothing changes.
    assert (
        other.add_to_store(store.require(app_), io.BytesIO(nar_of(store, app_)).read, check_sigs=False)
        is False
    )
    assert leftovers(other) == []


def test_add_to_store_needs_references_first(
    store: LocalStore, filled: list[StorePath], other: LocalStore
) -> None:
    app_ = filled[1]
    with pytest.raises(InvalidPathError, match=r"its reference '.*-lib' is not valid"):
        other.add_to_store(store.require(app_), io.BytesIO(nar_of(store, app_)).read, check_sigs=False)
    assert rows(other) == []
    assert leftovers(other) == []
    assert not os.path.lexists(other.real_path(app_))


def _broken(kind: str, nar: bytes, info: PathInfo) -> tuple[PathInfo, bytes]:
    if kind == "hash":
        return info.replace(nar_hash=hashlib.sha256(b"other").digest()), nar
    if kind == "size":
        return info.replace(nar_size=info.nar_size - 8), nar
    if kind == "bigger":
        return info.replace(nar_size=info.nar_size + 8), nar
    assert kind == "truncated"
    return info, nar[: len(nar) // 2]


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("hash", HashMismatchError),
        ("size", HashMismatchError),
        ("bigger", HashMismatchError),
        ("truncated", TruncatedError),
    ],
)
def test_add_to_store_refusals_leave_nothing(
    store: LocalStore, filled: list[StorePath], other: LocalStore, kind: str, error: type[Exception]
) -> None:
    doc = filled[2]
    info, nar = _broken(kind, nar_of(store, doc), store.require(doc))
    with pytest.raises(error):
        other.add_to_store(info, read_from(nar), check_sigs=False)
    assert rows(other) == []
    assert leftovers(other) == []
    assert store_entries(other) == []


def test_add_to_store_refuses_bytes_after_the_nar(
    store: LocalStore, filled: list[StorePath], other: LocalStore
) -> None:
    doc = filled[2]
    with pytest.raises(TrailingDataError):
        other.add_to_store(store.require(doc), read_from(nar_of(store, doc) + b"x"), check_sigs=False)
    assert rows(other) == []
    assert store_entries(other) == []


# -- the add transaction, metadata last (export streams) ----------------------------------------------------


def _stream_with(nar: bytes, path: StorePath, size_delta: int = 0) -> bytes:
    return PATH_MARKER + nar + trailer(path, (), None) + STREAM_END


@pytest.mark.parametrize("kind", ["hash", "size", "truncated"])
def test_import_refusals_leave_nothing(
    store: LocalStore, filled: list[StorePath], other: LocalStore, kind: str
) -> None:
    """An export stream carries no hash, so "the NAR does not match" means: the path is valid already
    with another NAR (hash), or the NAR is cut short in the stream (size, truncated)."""
    doc = filled[2]
    nar = nar_of(store, doc)
    if kind == "hash":
        other.register(store.require(doc).replace(nar_hash=hashlib.sha256(b"other").digest()))
        before = rows(other)
        with pytest.raises(HashMismatchError, match="is already valid with NAR hash"):
            import_stream(other, read_from(_stream_with(nar, doc)))
        assert rows(other) == before
    else:
        stream = _stream_with(nar, doc)
        cut = len(PATH_MARKER) + len(nar) - 8 if kind == "size" else len(stream) // 2
        with pytest.raises((TruncatedError, ExportStreamError)):
            import_stream(other, read_from(stream[:cut]))
        assert rows(other) == []
    assert leftovers(other) == []
    assert store_entries(other) == []


def test_import_then_export_is_byte_identical(
    store: LocalStore, filled: list[StorePath], other: LocalStore
) -> None:
    stream = export_bytes(store, filled)
    import_stream(other, read_from(stream))
    assert export_bytes(other, filled) == stream


# -- copy -------------------------------------------------------------------------------------------------


def test_copy_between_local_stores(store: LocalStore, filled: list[StorePath], other: LocalStore) -> None:
    app_ = filled[1]
    plan = plan_copy(store, other, [app_])
    assert plan.missing == plan.order == [filled[0], app_]
    results = copy_paths(store, other, [app_])
    assert [(r.path, r.copied) for r in results] == [(filled[0], True), (app_, True)]
    assert nar_of(other, app_) == nar_of(store, app_)
    again = copy_paths(store, other, [app_])
    assert [r.copied for r in again] == [False, False]
    assert plan_copy(store, other, [app_]).missing == []
    assert leftovers(other) == []


def test_copy_into_a_case_hacked_store_and_back(
    store: LocalStore, filled: list[StorePath], tmp_path: Path
) -> None:
    """doc has README and Readme: the case-hacked store keeps them apart on disk, and gives the original
    names back out."""
    doc = filled[2]
    with LocalStore.create(tmp_path / "mac", case_hack=CaseHackMode.ON, fold=Fold.APFS) as mac:
        copy_paths(store, mac, [doc])
        names = sorted(os.listdir(mac.real_path(doc)))
        assert names == [b"README", b"Readme~nix~case~hack~1"]
        assert nar_of(mac, doc) == nar_of(store, doc)
        with LocalStore.create(tmp_path / "back", case_hack=CaseHackMode.OFF) as back:
            copy_paths(mac, back, [doc])
            assert sorted(os.listdir(back.real_path(doc))) == [b"README", b"Readme"]


def test_copy_carries_signatures_and_content_address(store: LocalStore, other: LocalStore) -> None:
    a = sp("aa", "a")
    info = add_path(store, a, {b"f": b"x"})
    store.db.execute("update ValidPaths set sigs = 'k:c2ln', ca = 'text:sha256:x', ultimate = 1")
    copy_paths(store, other, [a])
    got = other.require(a)
    assert (got.sigs, got.ca, got.ultimate, got.nar_hash) == (
        ("k:c2ln",),
        "text:sha256:x",
        False,
        info.nar_hash,
    )


def test_copy_of_a_modified_path_is_refused(
    store: LocalStore, filled: list[StorePath], other: LocalStore
) -> None:
    doc = filled[2]
    real = store.real_path(doc) + b"/README"
    os.chmod(store.real_path(doc), 0o755)  # noqa: S103 (to modify a store path behind the store's back)
    os.chmod(real, 0o644)
    with open(real, "ab") as f:
        f.write(b"!")
    with pytest.raises(HashMismatchError):
        copy_paths(store, other, [doc])
    assert rows(other) == []
    assert store_entries(other) == []


def test_pipe_nar_stops_the_writer_when_the_reader_fails() -> None:
    written = []
    stopped = threading.Event()

    def produce(sink: object) -> None:
        assert callable(sink)
        try:
            for _ in range(1000):
                sink(bytes(1 << 16))
                written.append(1)
        finally:
            stopped.set()

    def consume(read: object) -> None:
        assert callable(read)
        read(10)
        raise ValueError("reader gave up")

    with pytest.raises(ValueError, match="reader gave up"):
        pipe_nar(produce, consume)
    assert stopped.is_set()
    assert len(written) < 50  # the bounded queue held the writer back


def test_pipe_nar_reports_the_writers_error() -> None:
    def produce(sink: object) -> None:
        assert callable(sink)
        sink(b"abc")
        raise OSError("disk gone")

    def consume(read: object) -> bytes:
        assert callable(read)
        out = b""
        while data := read(2):
            out += data
        return out

    with pytest.raises(OSError, match="disk gone"):
        pipe_nar(produce, consume)


# -- path arguments ---------------------------------------------------------------------------------------


def test_path_arguments(
    store: LocalStore, filled: list[StorePath], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_ = filled[1]
    monkeypatch.chdir(tmp_path)
    assert resolve_path(store, app_.path) == app_
    assert resolve_path(store, app_.path + "/bin/app") == app_
    assert resolve_path(store, app_.base) == app_
    real = os.fsdecode(store.real_path(app_))
    assert resolve_path(store, real) == app_
    assert resolve_path(store, real + "/bin") == app_
    # ./result pointing at the logical location (which need not exist here) or at the real one.
    os.symlink(app_.path, "result")
    assert resolve_path(store, "./result") == app_
    assert resolve_path(store, "result/bin/app") == app_
    os.symlink(real, "result-real")
    assert resolve_path(store, "result-real") == app_
    os.symlink("result", "chain")
    assert resolve_path(store, "chain") == app_
    os.symlink("loop", "loop")
    with pytest.raises(InvalidStorePathError, match="too many levels of symbolic links"):
        resolve_path(store, "loop")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(InvalidStorePathError, match="'plain' is not in the store"):
        resolve_path(store, "plain")
    with pytest.raises(InvalidStorePathError, match="too short"):
        resolve_path(store, "/nix/store/abc")


def test_a_base_name_that_is_also_a_file_here_is_the_file(
    store: LocalStore, filled: list[StorePath], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    os.symlink(filled[0].path, filled[3].base)  # a link named like one path, pointing at another
    assert resolve_path(store, filled[3].base) == filled[0]


def test_dump_of_store_path_agrees_with_nar_from_path(store: LocalStore, filled: list[StorePath]) -> None:
    parts: list[bytes] = []
    dump_path(store.real_path(filled[1]), parts.append)
    assert b"".join(parts) == nar_of(store, filled[1])

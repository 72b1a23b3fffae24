"""Faults that hostile input, races and crashes cause, and the guards against them. Each test here fails
when the guard it names is taken out (checked by removing each once by hand).

Crafted store states are made directly (rows registered, directories renamed into place) as a killed
process or an attacker would leave them; races are made deterministic with hooks in the sinks and with
locks held by the test itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.localstores import add_path, export_bytes, leftovers, read_from, rows, sp
from tests.narbuild import archive, directory, regular
from xstore.casehack import CaseHackMode
from xstore.cli.app import app
from xstore.errors import (
    DestinationExistsError,
    DumpError,
    ExportStreamError,
    StoreError,
    TrailingDataError,
)
from xstore.exportstream import EXPORT_MAGIC, MAX_REFERENCES
from xstore.fsops import STAGING_GRACE, canonicalise, is_staging_name, remove_dead_staging, staging_name
from xstore.import_export import export_paths, import_stream
from xstore.nar.dump import dump_path
from xstore.nar.restore import TreeWriter, restore_path
from xstore.notices import listening
from xstore.store import LocalStore
from xstore.storeapi import PathInfo
from xstore.storepath import StorePath
from xstore.verify import verify
from xstore.wire import encode_strings, encode_u64

runner = CliRunner()


def _nar_hash(real: bytes) -> bytes:
    digest = hashlib.sha256()
    dump_path(real, digest.update)
    return digest.digest()


def _nar_size(real: bytes) -> int:
    return dump_path(real, lambda block: None)


def run_with_timeout(target: object, seconds: float = 60.0) -> None:
    """Run `target()` in a thread; fail (instead of hanging the suite) if it has not ended in time."""
    assert callable(target)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as e:  # noqa: BLE001 (re-raised in the test's thread)
            failure.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "did not finish: it hangs"
    if failure:
        raise failure[0]


# -- lock files that are store paths -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["empty file", "file with contents", "directory"])
def test_a_valid_path_named_like_a_lock_file_is_never_used_as_one(
    store: LocalStore, tmp_path: Path, kind: str
) -> None:
    """`<h>-foo.lock` is a valid store path name. Nix 2.8, importing `<h>-foo` after it, unlinks it
    (empty), spins for ever (contents) or can never import (directory)."""
    foo, foo_lock = sp("f1", "foo"), sp("f1", "foo.lock")
    files = {"empty file": {}, "file with contents": {b"": b"data"}, "directory": {b"x": b"1"}}[kind]
    if kind == "directory":
        lock_info = add_path(store, foo_lock, files)
    else:
        real = store.real_path(foo_lock)
        Path(os.fsdecode(real)).write_bytes(files.get(b"", b""))
        canonicalise(real)
        digest = hashlib.sha256()
        size = dump_path(real, digest.update)
        lock_info = PathInfo(foo_lock, digest.digest(), size)
        store.register(lock_info)
    before = export_bytes(store, [foo_lock])
    with LocalStore.create(tmp_path / "src", case_hack=CaseHackMode.OFF) as src:
        add_path(src, foo, {b"bin/foo": b"#!/bin/sh\n"})
        stream = export_bytes(src, [foo])
    run_with_timeout(lambda: import_stream(store, read_from(stream)))
    assert store.is_valid(foo)
    assert store.require(foo_lock) == lock_info.replace(
        registration_time=store.require(foo_lock).registration_time
    )
    assert export_bytes(store, [foo_lock]) == before  # untouched, still there
    assert verify(store, check_contents=True) == []


def test_a_valid_lock_named_path_is_not_even_locked(store: LocalStore, tmp_path: Path) -> None:
    """Not even a flock is taken on a valid path named like a lock file: with someone holding one on it,
    the import goes on without waiting."""
    foo, foo_lock = sp("f6", "foo"), sp("f6", "foo.lock")
    real = store.real_path(foo_lock)
    Path(os.fsdecode(real)).write_bytes(b"")  # an empty regular file: exactly what a lock file looks like
    canonicalise(real)
    store.register(PathInfo(foo_lock, _nar_hash(real), _nar_size(real)))
    with LocalStore.create(tmp_path / "src", case_hack=CaseHackMode.OFF) as src:
        add_path(src, foo, {b"a": b"1"})
        stream = export_bytes(src, [foo])
    import fcntl

    fd = os.open(real, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        run_with_timeout(lambda: import_stream(store, read_from(stream)), seconds=20)
    finally:
        os.close(fd)
    assert store.is_valid(foo)


def test_junk_lock_file_with_contents_is_left_alone_without_spinning(
    store: LocalStore, tmp_path: Path
) -> None:
    """A linked `<path>.lock` with contents is not what any lock protocol leaves behind; Nix 2.8 spins on
    it. xstore goes on with its own lock and leaves the file as it is."""
    foo = sp("f2", "foo")
    junk = store.real_path(foo) + b".lock"
    Path(os.fsdecode(junk)).write_bytes(b"junk")
    with LocalStore.create(tmp_path / "src", case_hack=CaseHackMode.OFF) as src:
        add_path(src, foo, {b"a": b"1"})
        stream = export_bytes(src, [foo])
    run_with_timeout(lambda: import_stream(store, read_from(stream)))
    assert store.is_valid(foo)
    assert Path(os.fsdecode(junk)).read_bytes() == b"junk"


def test_the_path_lock_is_held_across_rename_and_register(store: LocalStore, tmp_path: Path) -> None:
    """A second importer of the same path waits (and says so) while the lock is held, and goes on at once
    when it is released."""
    foo = sp("f3", "foo")
    with LocalStore.create(tmp_path / "src", case_hack=CaseHackMode.OFF) as src:
        add_path(src, foo, {b"a": b"1"})
        stream = export_bytes(src, [foo])
    said: list[str] = []
    waiting = threading.Event()

    def listener(message: str) -> None:
        said.append(message)
        waiting.set()

    with listening(listener), LocalStore.open(store.root) as second:
        lock = store.lock(foo)
        done = threading.Event()

        def second_import() -> None:
            import_stream(second, read_from(stream))
            done.set()

        thread = threading.Thread(target=second_import)
        thread.start()
        try:
            assert waiting.wait(60), "the second importer never waited for the lock"
            assert not store.is_valid(foo)
            assert not os.path.lexists(store.real_path(foo))
        finally:
            lock.release()
        thread.join(60)
    assert done.is_set()
    assert store.is_valid(foo)
    assert any(f"waiting for the lock on '{foo}'" in m for m in said), said


# -- leftovers, registration failures ------------------------------------------------------------------------


def test_import_after_a_kill_between_rename_and_register(store: LocalStore, tmp_path: Path) -> None:
    """A killed import can leave the path's tree in place, unregistered: the next import of the path
    removes it and succeeds."""
    foo = sp("f4", "foo")
    with LocalStore.create(tmp_path / "src", case_hack=CaseHackMode.OFF) as src:
        add_path(src, foo, {b"a": b"right"})
        stream = export_bytes(src, [foo])
    leftover = store.real_path(foo)
    os.makedirs(leftover + b"/stale")
    Path(os.fsdecode(leftover + b"/a")).write_bytes(b"wrong")
    canonicalise(leftover)
    import_stream(store, read_from(stream))
    assert store.is_valid(foo)
    assert sorted(os.listdir(leftover)) == [b"a"]
    assert verify(store, check_contents=True) == []


def test_leftover_removal_never_deletes_a_valid_path(store: LocalStore, filled: list[StorePath]) -> None:
    with pytest.raises(StoreError, match="is valid; refusing to remove it"):
        store.remove_invalid_leftover(filled[0])
    assert os.path.isdir(store.real_path(filled[0]))


def test_failed_registration_after_the_rename_leaves_nothing(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    foo = sp("f5", "foo")
    with LocalStore.create(tmp_path / "src", case_hack=CaseHackMode.OFF) as src:
        add_path(src, foo, {b"a": b"1"})
        stream = export_bytes(src, [foo])

    def failing(info: PathInfo) -> None:
        assert os.path.isdir(store.real_path(info.path))  # renamed into place by now
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "register", failing)
    with pytest.raises(sqlite3.OperationalError):
        import_stream(store, read_from(stream))
    assert not os.path.lexists(store.real_path(foo))
    assert leftovers(store) == []
    assert rows(store) == []


# -- canonicalisation, schema, database ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o4555, 0o2555, 0o1555, 0o6755, 0o4444, 0o2444, 0o7777, 0o1777])
def test_canonicalise_clears_setuid_setgid_and_sticky(tmp_path: Path, mode: int) -> None:
    tree = tmp_path / "t"
    (tree / "sub").mkdir(parents=True)
    f = tree / "sub" / "f"
    f.write_bytes(b"x")
    os.chmod(f, mode)
    os.chmod(tree / "sub", mode | 0o700)
    canonicalise(os.fsencode(tree))
    for p in (f, tree / "sub", tree):
        assert stat.S_IMODE(os.lstat(p).st_mode) & 0o7000 == 0, oct(os.lstat(p).st_mode)
        assert stat.S_IMODE(os.lstat(p).st_mode) in (0o444, 0o555)


def test_foreign_keys_are_enforced(store: LocalStore, filled: list[StorePath]) -> None:
    """Nix's schema keeps a referenced path from being deleted (`on delete restrict`), but only with the
    foreign-keys pragma on, as Nix sets it."""
    lib = filled[0]
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        store.db.execute("delete from ValidPaths where path = ?", (lib.path,))
    assert store.is_valid(lib)


def test_older_schema_versions_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    LocalStore.create(root).close()
    (root / "nix" / "var" / "nix" / "db" / "schema").write_text("7")
    with pytest.raises(StoreError, match="old schema version 7"):
        LocalStore.open(root)


def test_null_nar_size_is_unknown_not_wrong(
    store: LocalStore, filled: list[StorePath], tmp_path: Path
) -> None:
    """Nix's schema allows a NULL narSize: export and verify go by the hash, and a copy fills the size in."""
    doc = filled[2]
    size = store.require(doc).nar_size
    store.db.execute("update ValidPaths set narSize = null where path = ?", (doc.path,))
    assert store.require(doc).nar_size == 0
    parts: list[bytes] = []
    export_paths(store, [doc], parts.append)
    assert verify(store, check_contents=True) == []
    with LocalStore.create(tmp_path / "other", case_hack=CaseHackMode.OFF) as other:
        import_stream(other, read_from(b"".join(parts)))
        assert other.require(doc).nar_size == size
        from xstore.copy import copy_paths

        with LocalStore.create(tmp_path / "third", case_hack=CaseHackMode.OFF) as third:
            copy_paths(store, third, [doc])
            assert third.require(doc).nar_size == size


def test_one_invalid_row_does_not_stop_verify(store: LocalStore, filled: list[StorePath]) -> None:
    store.db.execute(
        "insert into ValidPaths (path, hash, registrationTime) values ('/nix/store/garbage', 'sha256:00', 1)"
    )
    os.chmod(store.real_path(filled[1]), 0o755)  # noqa: S103 (to damage a valid path)
    os.rename(store.real_path(filled[1]) + b"/link", store.real_path(filled[1]) + b"/moved")
    problems = verify(store, check_contents=True)
    assert [(p.path, p.kind) for p in problems] == [
        ("/nix/store/garbage", "corrupt-row"),
        (filled[1].path, "modified"),
    ]
    assert store.all_paths() == sorted(filled)


# -- dumps and restores that race with the filesystem --------------------------------------------------------


def _big(path: Path, size: int = 3 << 20) -> None:
    path.write_bytes(os.urandom(1024) * (size // 1024))


@pytest.mark.parametrize("change", ["shrink", "grow"])
def test_a_file_that_changes_size_while_dumped_is_an_error(tmp_path: Path, change: str) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    victim = tree / "big"
    _big(victim)
    changed = False

    def sink(block: bytes) -> None:
        nonlocal changed
        if not changed and len(block) >= 1 << 20:  # the first block of the big file's contents
            changed = True
            with open(victim, "r+b") as f:
                if change == "shrink":
                    f.truncate(1 << 20)
                else:
                    f.seek(0, os.SEEK_END)
                    f.write(b"more")

    with pytest.raises(DumpError, match=f"'{tree}/big' {'shrank' if change == 'shrink' else 'grew'} while"):
        dump_path(tree, sink)


def test_a_small_file_that_grew_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small file is read in one go, asking for one byte more than the size its stat gave: a file that
    grew between the stat and the read (made to happen here right after the stat) is refused."""
    tree = tmp_path / "t"
    tree.mkdir()
    victim = tree / "b"
    victim.write_bytes(b"small")
    real_fstat = os.fstat

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if os.path.exists(f"/proc/self/fd/{fd}") and os.readlink(f"/proc/self/fd/{fd}") == str(victim):
            with open(victim, "ab") as f:
                f.write(b"!")
        return st

    monkeypatch.setattr(os, "fstat", fstat)
    with pytest.raises(DumpError, match=f"'{tree}/b' grew while being dumped"):
        dump_path(tree, lambda block: None)


def test_an_entry_swapped_for_a_symlink_mid_walk_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    _big(tree / "a")
    (tree / "b").write_bytes(b"plain")
    (tmp_path / "secret").write_bytes(b"not in the tree")
    swapped = False

    def sink(block: bytes) -> None:
        nonlocal swapped
        if not swapped and len(block) >= 1 << 20:  # while `a` is read, after the listing
            swapped = True
            os.unlink(tree / "b")
            os.symlink(tmp_path / "secret", tree / "b")

    with pytest.raises(DumpError, match=r"'.*/b' changed type while being dumped"):
        dump_path(tree, sink)


@pytest.mark.parametrize("root", ["file", "directory"])
def test_an_entry_that_appears_at_the_destination_is_never_replaced(tmp_path: Path, root: str) -> None:
    data = archive(regular(b"new")) if root == "file" else archive(directory((b"f", regular(b"new"))))
    dest = tmp_path / "dest"
    writer = TreeWriter(dest, case_hack=CaseHackMode.OFF)
    from xstore.nar.drive import iter_events

    try:
        for event in iter_events(io.BytesIO(data).read):
            writer.handle(event)
        # Someone else's entry appears at the destination before the final step.
        # (An empty directory: `rename` would replace it silently if the commit did not check again.)
        if root == "file":
            dest.write_bytes(b"theirs")
        else:
            dest.mkdir()
        with pytest.raises(DestinationExistsError, match="never overwrites"):
            writer.commit()
    finally:
        writer.abort()
    if root == "file":
        assert dest.read_bytes() == b"theirs"
    else:
        assert os.listdir(dest) == []
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def test_the_final_step_never_replaces_even_in_the_last_instant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file appearing after the last check and before the move: `link` refuses it (a `rename` would
    replace it). The last check is made to miss it, as a race would."""
    dest = tmp_path / "dest"
    writer = TreeWriter(dest, case_hack=CaseHackMode.OFF)
    from xstore.nar.drive import iter_events

    try:
        for event in iter_events(io.BytesIO(archive(regular(b"new"))).read):
            writer.handle(event)
        dest.write_bytes(b"theirs")
        real_lexists = os.path.lexists
        monkeypatch.setattr(
            os.path, "lexists", lambda p: False if os.fsencode(p) == os.fsencode(dest) else real_lexists(p)
        )
        with pytest.raises(DestinationExistsError, match="never overwrites"):
            writer.commit()
    finally:
        monkeypatch.undo()
        writer.abort()
    assert dest.read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == ["dest"]


# -- what killed restores leave ------------------------------------------------------------------------------


def test_a_later_restore_removes_what_dead_restores_left(tmp_path: Path) -> None:
    parent = tmp_path / "p"
    parent.mkdir()
    dead = parent / os.fsdecode(staging_name(b"out"))
    dead.mkdir()
    (dead / "root").write_bytes(b"x" * 1000)
    old = time.time() - STAGING_GRACE - 5
    os.utime(dead, (old, old))
    alive = parent / os.fsdecode(staging_name(b"other"))
    alive.mkdir()
    os.utime(alive, (old, old))
    recent = parent / os.fsdecode(staging_name(b"third"))
    recent.mkdir()
    mine = parent / ".keep.xstore-notmine"
    mine.mkdir()
    with contextlib.ExitStack() as stack:
        fd = os.open(alive, os.O_RDONLY)
        stack.callback(os.close, fd)
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)  # a live restore holds its staging directory so
        restore_path(parent / "new", io.BytesIO(archive(regular(b"hi"))).read, case_hack=CaseHackMode.OFF)
    assert sorted(os.listdir(parent)) == sorted([alive.name, recent.name, mine.name, "new"])


def test_dead_staging_removal_keeps_names_it_did_not_make(tmp_path: Path) -> None:
    for name in [
        ".x.xstore-abc",
        ".x.xstore-0123456789abX",
        "x.xstore-0123456789ab",
        ".x.xstore-0123456789ABCD",
    ]:
        (tmp_path / name).mkdir()
        old = time.time() - STAGING_GRACE - 5
        os.utime(tmp_path / name, (old, old))
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert remove_dead_staging(fd) == []
    finally:
        os.close(fd)


# -- bounded trailers ----------------------------------------------------------------------------------------


def test_a_trailer_claiming_too_many_references_is_refused_at_once(store: LocalStore) -> None:
    stream = (
        encode_u64(1)
        + archive(regular(b"x"))
        + encode_u64(EXPORT_MAGIC)
        + encode_strings(sp("a1", "x").path.encode())
        + encode_u64(MAX_REFERENCES + 1)
    )
    read = io.BytesIO(stream).read  # no references follow: the count alone is refused
    with pytest.raises(
        ExportStreamError, match=f"the number of references {MAX_REFERENCES + 1} is out of range"
    ):
        import_stream(store, read)
    assert rows(store) == []
    assert leftovers(store) == []


# -- command-line details ------------------------------------------------------------------------------------


def test_output_onto_a_symlink_writes_through_it(tmp_path: Path) -> None:
    target = tmp_path / "real.nar"
    target.write_bytes(b"old")
    link = tmp_path / "link.nar"
    link.symlink_to(target)
    (tmp_path / "f").write_bytes(b"x")
    result = runner.invoke(app, ["nar", "dump", str(tmp_path / "f"), "-o", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink()
    assert os.readlink(link) == str(target)
    assert target.read_bytes().startswith(b"\x0d\0\0\0\0\0\0\0nix-archive-1")


@pytest.mark.parametrize("command", [["nar", "ls"], ["nar", "cat"]])
def test_listing_refuses_trailing_bytes_as_restore_does(tmp_path: Path, command: list[str]) -> None:
    nar = tmp_path / "x.nar"
    nar.write_bytes(archive(regular(b"hello")) + b"junk")
    result = runner.invoke(app, [*command, str(nar), *(["/"] if command[1] == "cat" else [])])
    assert result.exit_code == 1
    assert "unexpected data after the end of the archive" in result.stderr
    with pytest.raises(TrailingDataError):
        restore_path(tmp_path / "out", io.BytesIO(nar.read_bytes()).read)


def test_non_utf8_names_in_messages_are_the_bytes_themselves(tmp_path: Path) -> None:
    """Nix prints a name's bytes as they are; xstore neither shows Python's b'...' nor escapes them."""
    nar = tmp_path / "x.nar"
    nar.write_bytes(archive(directory((b"\xff\xfe", regular(b"x")))))
    result = runner.invoke(app, ["nar", "cat", str(nar), "/\udcff\udcfd"])
    assert result.exit_code == 1
    assert b"error: path '/\xff\xfd' does not exist in the NAR" in result.stderr_bytes
    assert b"\\x" not in result.stderr_bytes
    assert b"b'" not in result.stderr_bytes


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


_STAGING_PATTERN = re.compile(rb"\A\..*\.xstore-[0-9a-f]{12}\Z", re.DOTALL)  # what staging_name makes


@given(
    st.one_of(
        st.binary(max_size=40),
        st.builds(
            lambda head, mark, digits: head + mark + digits,
            st.sampled_from([b".", b"", b"..", b".a", b"a", b".\n", b".x.y"]),
            st.sampled_from([b".xstore-", b"xstore-", b".xstorex", b".XSTORE-"]),
            st.text("0123456789abcdefABCDEFg", min_size=10, max_size=14).map(str.encode),
        ),
    )
)
def test_staging_names_are_recognised_exactly(name: bytes) -> None:
    assert is_staging_name(name) == bool(_STAGING_PATTERN.match(name))
    assert is_staging_name(staging_name(name))

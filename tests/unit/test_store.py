"""The local store without Nix: layout and schema, settings, opening, locks, canonicalisation, the export
order, the export/import pipeline on small synthetic stores, temporary directories, verify.

Synthetic paths are registered directly (`LocalStore.register`) over real trees written into the store
directory, canonicalised and hashed with xstore's own dump. Everything compared with Nix itself is in
`tests/compat/test_store_compat.py`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import sqlite3
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests import narbuild
from tests.localstores import add_path, dummy, export_bytes, leftovers, read_from, rows, sp, store_entries
from xstore.casehack import CaseHackMode, Fold, probe
from xstore.cli.app import app
from xstore.errors import HashMismatchError, InvalidPathError, StoreError, XstoreError
from xstore.fsops import canonicalise, remove_tree
from xstore.import_export import export_order, export_paths, import_stream, list_stream
from xstore.store import TEMP_PREFIX, LocalStore, temp_token
from xstore.storeapi import PathInfo, Store, path_info_json
from xstore.storepath import StorePath
from xstore.verify import verify
from xstore.wire import encode_strings

# Nix 2.8's sqlite_master, in order, for a new database (type, name, table): the issue's fact sheet.
NIX_SCHEMA_OBJECTS = [
    ("table", "ValidPaths", "ValidPaths"),
    ("index", "sqlite_autoindex_ValidPaths_1", "ValidPaths"),
    ("table", "sqlite_sequence", "sqlite_sequence"),
    ("table", "Refs", "Refs"),
    ("index", "sqlite_autoindex_Refs_1", "Refs"),
    ("index", "IndexReferrer", "Refs"),
    ("index", "IndexReference", "Refs"),
    ("trigger", "DeleteSelfRefs", "ValidPaths"),
    ("table", "DerivationOutputs", "DerivationOutputs"),
    ("index", "sqlite_autoindex_DerivationOutputs_1", "DerivationOutputs"),
    ("index", "IndexDerivationOutputs", "DerivationOutputs"),
]

runner = CliRunner()


# -- creating and opening --------------------------------------------------------------------------------


def test_create_layout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with LocalStore.create(root, case_hack=CaseHackMode.OFF):
        pass
    db_dir = root / "nix" / "var" / "nix" / "db"
    assert (root / "nix" / "store").is_dir()
    assert (db_dir / "schema").read_bytes() == b"10"
    assert stat.S_IMODE((db_dir / "big-lock").stat().st_mode) == 0o600
    settings = json.loads((root / "nix" / "var" / "xstore" / "settings.json").read_text())
    # The fold, not asked for, is what the filesystem does (ascii here, apfs on a Mac).
    assert settings == {"version": 1, "caseHack": False, "caseFold": probe(root / "nix" / "store").fold.value}
    # WAL is persistent: a new connection sees it, and the header says so (bytes 18 and 19).
    db = sqlite3.connect(db_dir / "db.sqlite")
    try:
        assert db.execute("pragma journal_mode").fetchone() == ("wal",)
        objects = db.execute("select type, name, tbl_name from sqlite_master").fetchall()
        columns = [row[1] for row in db.execute("pragma table_info(ValidPaths)")]
    finally:
        db.close()
    assert objects == NIX_SCHEMA_OBJECTS
    assert columns == [
        "id", "path", "hash", "registrationTime", "deriver", "narSize", "ultimate", "sigs", "ca"
    ]  # fmt: skip
    assert (db_dir / "db.sqlite").read_bytes()[18:20] == b"\x02\x02"
    # Nothing of SQLite's is left once closed.
    assert sorted(os.listdir(db_dir)) == ["big-lock", "db.sqlite", "schema"]


def test_create_records_settings(tmp_path: Path) -> None:
    with LocalStore.create(tmp_path / "a", case_hack=CaseHackMode.ON, fold=Fold.APFS) as s:
        assert (s.settings.case_hack, s.settings.fold) == (True, Fold.APFS)
    with LocalStore.open(tmp_path / "a") as s:
        assert (s.settings.case_hack, s.settings.fold) == (True, Fold.APFS)
    # Creating again without saying anything keeps them; saying the same is fine too.
    for mode in (CaseHackMode.AUTO, CaseHackMode.ON):
        with LocalStore.create(tmp_path / "a", case_hack=mode) as s:
            assert (s.settings.case_hack, s.settings.fold) == (True, Fold.APFS)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((CaseHackMode.ON, None), (CaseHackMode.OFF, None)),
        ((CaseHackMode.OFF, None), (CaseHackMode.ON, None)),
        ((CaseHackMode.ON, Fold.ASCII), (CaseHackMode.AUTO, Fold.APFS)),
    ],
)
def test_create_twice_with_other_settings(
    tmp_path: Path, first: tuple[CaseHackMode, Fold | None], second: tuple[CaseHackMode, Fold | None]
) -> None:
    root = tmp_path / "root"
    LocalStore.create(root, case_hack=first[0], fold=first[1]).close()
    settings = (root / "nix" / "var" / "xstore" / "settings.json").read_bytes()
    with pytest.raises(StoreError, match="already exists with case hack"):
        LocalStore.create(root, case_hack=second[0], fold=second[1])
    assert (root / "nix" / "var" / "xstore" / "settings.json").read_bytes() == settings


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "cannot read"),
        ("[]", "is not a valid xstore settings file"),
        ('"on"', "is not a valid xstore settings file"),
        ('{"version": 1, "caseHack": true}', "is not a valid xstore settings file"),
        ('{"version": 1, "caseHack": true, "caseFold": "klingon"}', "is not a valid xstore settings file"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_a_corrupt_settings_file_is_one_store_error(tmp_path: Path, text: str, reason: str) -> None:
    root = tmp_path / "root"
    LocalStore.create(root, case_hack=CaseHackMode.ON).close()
    (root / "nix" / "var" / "xstore" / "settings.json").write_text(text)
    with LocalStore.open(root) as store, pytest.raises(StoreError, match=reason) as caught:
        store.settings  # noqa: B018 (read when first needed)
    assert "\n" not in str(caught.value)


def test_init_twice_with_other_case_hack(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    first = runner.invoke(app, ["store", "init", "--store", root, "--case-hack", "on"])
    assert first.exit_code == 0, first.output
    assert "case hack on" in first.output
    second = runner.invoke(app, ["store", "init", "--store", root, "--case-hack", "off"])
    assert second.exit_code == 1
    assert second.output.startswith("error: ")
    assert "already exists with case hack on" in second.output
    assert second.output.count("\n") == 1


def test_open_missing_store(tmp_path: Path) -> None:
    root = tmp_path / "nothing"
    with pytest.raises(StoreError, match="no store at") as info:
        LocalStore.open(root)
    assert str(root) in str(info.value)
    assert "xstore store init" in str(info.value)
    assert isinstance(info.value, OSError)
    assert not root.exists()  # opening creates nothing


def test_open_missing_store_cli(tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", "--store", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert result.output.startswith("error: no store at")
    assert not (tmp_path / "nothing").exists()


def test_open_newer_schema(tmp_path: Path) -> None:
    root = tmp_path / "root"
    LocalStore.create(root).close()
    (root / "nix" / "var" / "nix" / "db" / "schema").write_text("11")
    with pytest.raises(StoreError, match="schema version 11"):
        LocalStore.open(root)


@pytest.mark.parametrize("text", ["", "ten", "\u00b2", "9" * 5000])
def test_open_unreadable_schema(tmp_path: Path, text: str) -> None:
    # One StoreError, never int()'s own ValueError ('²' is a digit to str.isdigit, not to int).
    root = tmp_path / "root"
    LocalStore.create(root).close()
    (root / "nix" / "var" / "nix" / "db" / "schema").write_text(text)
    with pytest.raises(StoreError, match="should hold the schema version"):
        LocalStore.open(root)


def test_closed_store(tmp_path: Path) -> None:
    s = LocalStore.create(tmp_path / "root")
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.all_paths()


# -- registering and querying ----------------------------------------------------------------------------


def test_register_and_query(store: LocalStore) -> None:
    a, b = sp("a", "a"), sp("b", "b")
    store.register(dummy(a))
    info = PathInfo(b, bytes(range(32)), 4096, (a, b), deriver=sp("d", "x.drv"), sigs=("k2:x", "k1:y"))
    store.register(info)
    got = store.query_path_info(b)
    assert got is not None
    assert (got.nar_hash, got.nar_size, got.references, got.deriver) == (
        info.nar_hash,
        4096,
        (a, b),
        info.deriver,
    )
    assert got.sigs == ("k1:y", "k2:x")
    assert got.registration_time > 0
    row = store.db.execute(
        "select hash, deriver, ultimate, ca from ValidPaths where path = ?", (a.path,)
    ).fetchone()
    assert row == ("sha256:" + dummy(a).nar_hash.hex(), None, None, None)
    assert store.query_path_info(sp("c", "c")) is None
    assert set(store.query_closure([b])) == {a, b}
    with pytest.raises(InvalidPathError, match="is not valid"):
        store.require(sp("c", "c"))


def test_closure_in_one_statement_is_the_closure_path_by_path(store: LocalStore) -> None:
    # A random graph of 1,200 paths (more than one batch of the statement's placeholders), with
    # shared references, self-references and paths nobody refers to, against the default that asks
    # for each path in turn. Every statement is counted: the closure is one per batch.
    rng = random.Random(7)
    paths: list[StorePath] = []
    for i in range(1200):
        path = sp(f"{i:x}".replace("e", "y"), f"p{i}")  # nix32 has no "e"
        refs = set(rng.sample(paths, min(len(paths), rng.choice((0, 0, 1, 2, 5)))))
        if rng.random() < 0.1:
            refs.add(path)
        info = dummy(path, *refs)
        store.register(PathInfo(path, info.nar_hash, info.nar_size, info.references, sigs=("k:s",) * (i % 2)))
        paths.append(path)
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    for wanted in (paths[-1:], paths[::3], paths[-700:], [paths[0], paths[0]]):
        statements.clear()
        got = store.query_closure(wanted)
        assert len(statements) == (len(set(wanted)) + 499) // 500
        assert got == Store.query_closure(store, wanted)
    with pytest.raises(InvalidPathError, match=r"path '/nix/store/y0+-missing' is not valid"):
        store.query_closure([paths[5], sp("y", "missing")])


def test_register_with_invalid_reference_registers_nothing(store: LocalStore) -> None:
    with pytest.raises(InvalidPathError, match="is not valid"):
        store.register(dummy(sp("b", "b"), sp("a", "a")))
    assert store.all_paths() == []
    assert store.db.execute("select count(*) from Refs").fetchone() == (0,)


def test_path_info_json(store: LocalStore) -> None:
    a = sp("a", "a")
    store.register(PathInfo(a, bytes(32), 120, (), registration_time=17))
    assert path_info_json([store.require(a)], closure_sizes={a: 120}) == {
        a.path: {
            "ca": None,
            "closureSize": 120,
            "deriver": None,
            "narHash": "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "narSize": 120,
            "references": [],
            "registrationTime": 17,
            "signatures": [],
            "ultimate": False,
        }
    }


# -- locks -----------------------------------------------------------------------------------------------


def test_store_lock_is_beside_the_path(store: LocalStore) -> None:
    path = sp("a", "a")
    with store.lock(path):
        assert os.path.exists(store.real_path(path) + b".lock")
    assert leftovers(store) == []


# -- canonicalisation ------------------------------------------------------------------------------------


def test_canonicalise(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "sub" / "private").mkdir(parents=True)
    modes = {
        "plain": 0o644,
        "exec": 0o755,
        "setuid": 0o4755,
        "group-write": 0o664,
        "owner-only-exec": 0o700,
        "read-only": 0o444,
        "sub/inner": 0o600,
    }
    for name, mode in modes.items():
        (top / name).write_text(name)
        os.chmod(top / name, mode)
    os.chmod(top / "sub" / "private", 0o700)
    os.chmod(top / "sub", 0o2775)  # noqa: S103 (setgid and group write: canonicalise must drop them)
    (top / "link").symlink_to("plain")
    (top / "dangling").symlink_to("nowhere")
    canonicalise(os.fsencode(top))

    expected = {
        "plain": 0o444,
        "exec": 0o555,
        "setuid": 0o555,
        "group-write": 0o444,
        "owner-only-exec": 0o555,
        "read-only": 0o444,
        "sub/inner": 0o444,
        "sub": 0o555,
        "sub/private": 0o555,
        "": 0o555,
    }
    for name, mode in expected.items():
        st = os.lstat(top / name)
        assert stat.S_IMODE(st.st_mode) == mode, name
        assert st.st_mtime == 1, name
    for link in ("link", "dangling"):
        st = os.lstat(top / link)
        assert stat.S_ISLNK(st.st_mode)
        assert st.st_mtime == 1, link  # lutimes, as Nix
    assert (top / "plain").read_text() == "plain"


def test_canonicalise_single_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o4711)  # noqa: S103 (setuid: canonicalise must drop it)
    canonicalise(os.fsencode(f))
    st = os.lstat(f)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o555, 1)


# -- export order ----------------------------------------------------------------------------------------


def test_export_order_follows_references_inside_the_set(store: LocalStore) -> None:
    """The fact sheet's observed Nix orders: depth-first post-order over the set in base-name order."""
    u, x, q, r = sp("7lm", "u"), sp("78i", "x"), sp("7xd", "q"), sp("8md", "r")
    for info in (dummy(u), dummy(q), dummy(r), dummy(x, q, r)):
        store.register(info)
    for order in ([u, x, q, r], [r, q, x, u], [x, u, r, q, x]):
        assert export_order(store, order) == [q, r, x, u]
    # A reference outside the set does not count: then it is base-name order.
    w, p, s = sp("nbb", "w"), sp("0d8", "p"), sp("kwf", "s")
    for info in (dummy(s), dummy(w, s), dummy(p)):
        store.register(info)
    assert export_order(store, [w, p]) == [p, w]
    assert export_order(store, [w, p, s]) == [p, s, w]


def test_export_order_ignores_self_references_and_finds_cycles(store: LocalStore) -> None:
    a = sp("a", "a")
    store.register(PathInfo(a, bytes(32), 120, (a,)))
    assert export_order(store, [a]) == [a]
    with pytest.raises(InvalidPathError):
        export_order(store, [sp("b", "b")])


def test_export_order_of_a_long_chain(store: LocalStore) -> None:
    """Thousands of paths deep (each referencing the previous): no recursion limit applies."""
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    chain = [
        sp(alphabet[i // 1024] + alphabet[i // 32 % 32] + alphabet[i % 32], f"p{i}") for i in range(3000)
    ]
    store.register(dummy(chain[0]))
    for previous, path in itertools.pairwise(chain):
        store.register(dummy(path, previous))
    assert export_order(store, reversed(chain)) == chain


def test_export_order_cycle(store: LocalStore) -> None:
    # Cycles cannot be registered one path at a time; make one in the database as Nix could have.
    a, b = sp("a", "a"), sp("b", "b")
    store.register(dummy(a))
    store.register(dummy(b, a))
    ids = dict(store.db.execute("select path, id from ValidPaths").fetchall())
    store.db.execute("insert into Refs (referrer, reference) values (?, ?)", (ids[a.path], ids[b.path]))
    with pytest.raises(XstoreError, match="cycle detected"):
        export_order(store, [a, b])


# -- export and import on synthetic stores ---------------------------------------------------------------


def test_export_import_round_trip(store: LocalStore, filled: list[StorePath], tmp_path: Path) -> None:
    stream = export_bytes(store, filled)
    entries = list_stream(read_from(stream))
    assert [e.path for e in entries] == export_order(store, filled)
    lib, app_, doc, single = filled
    # Base-name order is file (00), app (3b), lib (9a), doc (zz); app's reference lib comes first.
    assert [e.path for e in entries] == [single, lib, app_, doc]
    app_entry = next(e for e in entries if e.path == filled[1])
    assert app_entry.references == tuple(sorted([filled[0], filled[1]]))
    assert app_entry.deriver == sp("dd", "app.drv")
    with LocalStore.create(tmp_path / "other", case_hack=CaseHackMode.OFF) as other:
        results = import_stream(other, read_from(stream))
        assert [(r.path, r.imported) for r in results] == [(e.path, True) for e in entries]
        assert rows(other) == rows(store)
        assert export_bytes(other, filled) == stream
        assert verify(other, check_contents=True) == []
        assert leftovers(other) == []
        # Again: nothing changes, not even the registration times.
        times = other.db.execute("select path, registrationTime, id from ValidPaths").fetchall()
        again = import_stream(other, read_from(stream))
        assert [r.imported for r in again] == [False] * len(filled)
        assert other.db.execute("select path, registrationTime, id from ValidPaths").fetchall() == times


def test_import_path_twice_in_one_stream(store: LocalStore, filled: list[StorePath], tmp_path: Path) -> None:
    """As Nix: imported once, reported twice."""
    one = export_bytes(store, [filled[3]])
    with LocalStore.create(tmp_path / "other", case_hack=CaseHackMode.OFF) as other:
        results = import_stream(other, read_from(one[:-8] + one))
        assert [(r.path, r.imported) for r in results] == [(filled[3], True), (filled[3], False)]
        assert other.all_paths() == [filled[3]]
        assert leftovers(other) == []


def test_import_other_nar_for_valid_path(store: LocalStore, filled: list[StorePath]) -> None:
    stream = export_bytes(store, [filled[3]])
    tag = encode_strings(b"contents") + (6).to_bytes(8, "little")
    at = stream.index(tag) + len(tag)
    changed = stream[:at] + b"j" + stream[at + 1 :]
    before = rows(store)
    with pytest.raises(HashMismatchError, match="already valid with NAR hash"):
        import_stream(store, read_from(changed))
    assert rows(store) == before
    assert leftovers(store) == []
    with open(store.real_path(filled[3]), "rb") as f:
        assert f.read() == b"hello\n"


def test_import_missing_reference_leaves_nothing(
    store: LocalStore, filled: list[StorePath], tmp_path: Path
) -> None:
    stream = export_bytes(store, [filled[1]])  # app without lib
    with LocalStore.create(tmp_path / "other", case_hack=CaseHackMode.OFF) as other:
        with pytest.raises(InvalidPathError, match="is not valid"):
            import_stream(other, read_from(stream))
        assert other.all_paths() == []
        assert store_entries(other) == []


def _deep_tree(store: LocalStore) -> PathInfo:
    """A path with nested directories, an executable, a plain file and symlinks at several depths,
    referring to another path (which an export of it alone does not carry)."""
    dep = add_path(store, sp("5f", "dep"), {b"x": b"x"}).path
    return add_path(
        store,
        sp("7d", "deep"),
        {
            b"a/b/c/": b"",
            b"a/b/c/file": b"data\n",
            b"a/b/run": b"#!/bin/sh\n",
            b"a/link": b"->b/run",
            b"top": b"->a",
            b"z/": b"",
        },
        dep,
    )


def test_an_imported_tree_is_canonical_throughout(store: LocalStore, tmp_path: Path) -> None:
    """The add transaction makes each node read-only and timeless as it completes it (the root once
    moved): every entry ends as `canonicalise` would leave it."""
    info = _deep_tree(store)
    stream = export_bytes(store, [info.references[0], info.path])
    with LocalStore.create(tmp_path / "other", case_hack=CaseHackMode.OFF) as other:
        import_stream(other, read_from(stream))
        real = os.fsdecode(other.real_path(info.path))
        seen = {}
        for where, dirs, files in os.walk(real):
            for name in ["", *dirs, *files]:
                path = os.path.join(where, name) if name else where
                st = os.lstat(path)
                seen[os.path.relpath(path, real)] = (stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        links = {k for k in seen if os.path.islink(os.path.join(real, k))}
        assert links == {"a/link", "top"}
        expected = {
            k: (0o777 if k in links else 0o555 if os.path.isdir(os.path.join(real, k)) else 0o444, 10**9)
            for k in seen
        }
        expected["a/b/run"] = (0o555, 10**9)
        assert seen == expected
        assert export_bytes(other, [info.references[0], info.path]) == stream


@pytest.mark.parametrize("kind", ["file", "executable", "symlink", "directory"])
def test_an_added_root_of_each_kind_is_canonical(kind: str, store: LocalStore) -> None:
    """The root is made read-only and timeless too: a file or symlink root by the tree writer before the
    move, a directory root after it (the writer leaves that one writable so it can be moved)."""
    node = {
        "file": narbuild.regular(b"text\n"),
        "executable": narbuild.regular(b"#!/bin/sh\n", executable=True),
        "symlink": narbuild.symlink(b"/nix/store/elsewhere"),
        "directory": narbuild.directory((b"f", narbuild.regular(b"x"))),
    }[kind]
    data = narbuild.archive(node)
    info = PathInfo(sp("3c", kind), hashlib.sha256(data).digest(), len(data), ())
    assert store.add_to_store(info, read_from(data), check_sigs=False)
    st = os.lstat(store.real_path(info.path))
    expected = {"file": 0o444, "executable": 0o555, "symlink": 0o777, "directory": 0o555}[kind]
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (expected, 10**9)


def test_a_refused_import_with_read_only_directories_leaves_nothing(
    store: LocalStore, tmp_path: Path
) -> None:
    """Directories completed before the refusal are read-only already; removing the tree must not stop
    at them (as an unprivileged user, where they would block the removal: the suite's second run)."""
    info = _deep_tree(store)
    stream = export_bytes(store, [info.path])  # its reference is checked once the NAR has arrived
    with LocalStore.create(tmp_path / "other", case_hack=CaseHackMode.OFF) as other:
        with pytest.raises(InvalidPathError, match="is not valid"):
            import_stream(other, read_from(stream))
        assert other.all_paths() == []
        assert store_entries(other) == []
        assert not os.listdir(other.scratch_dir or b"/nonexistent")


@pytest.mark.case_sensitive_tmp  # the `filled` store holds README and Readme side by side
def test_case_hacked_store_round_trip(store: LocalStore, filled: list[StorePath], tmp_path: Path) -> None:
    stream = export_bytes(store, filled)
    with LocalStore.create(tmp_path / "hacked", case_hack=CaseHackMode.ON) as hacked:
        import_stream(hacked, read_from(stream))
        doc = hacked.real_path(filled[2])
        assert sorted(os.listdir(doc)) == [b"README", b"Readme~nix~case~hack~1"]
        assert export_bytes(hacked, filled) == stream
        assert verify(hacked, check_contents=True) == []


def test_export_refuses_modified_path(store: LocalStore, filled: list[StorePath]) -> None:
    real = store.real_path(filled[3])
    os.chmod(real, 0o644)
    with open(real, "wb") as f:
        f.write(b"HELLO\n")
    parts: list[bytes] = []
    with pytest.raises(HashMismatchError, match="was modified"):
        export_paths(store, [filled[3]], parts.append)
    problems = verify(store, check_contents=True)
    assert [(p.path, p.kind) for p in problems] == [(filled[3].path, "modified")]


def test_verify_missing_keeps_row(store: LocalStore, filled: list[StorePath]) -> None:
    remove_tree(store.real_path(filled[2]))
    problems = verify(store)
    assert [(p.path, p.kind) for p in problems] == [(filled[2].path, "missing")]
    assert filled[2].path in problems[0].detail
    assert store.is_valid(filled[2])


# -- temporary directories -------------------------------------------------------------------------------


def test_clean_temp_removes_only_dead_temporaries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with LocalStore.create(root, case_hack=CaseHackMode.OFF) as first, first.temp_dir() as live:
        (Path(os.fsdecode(live)) / "partial").write_bytes(b"x")
        # What a killed import leaves: a temporary directory (read-only inside, as after
        # canonicalisation) with or without its lock file, nobody holding the lock.
        dead = []
        for token, with_lock in (("0123456789abcdef", True), ("fedcba9876543210", False)):
            name = TEMP_PREFIX + token
            inner = root / "nix" / "store" / name / "nar" / "sub"
            inner.mkdir(parents=True)
            (inner / "file").write_bytes(b"y")
            canonicalise(os.fsencode(inner.parent))
            if with_lock:
                (root / "nix" / "var" / "xstore" / "locks" / token).write_bytes(b"")
            dead.append(name)
        with LocalStore.open(root) as second:
            assert sorted(second.clean_temp()) == sorted(dead)
            assert second.clean_temp() == []
        names = os.listdir(root / "nix" / "store")
        assert names == [os.path.basename(os.fsdecode(live))]
        assert (Path(os.fsdecode(live)) / "partial").read_bytes() == b"x"
        assert sorted(os.listdir(root / "nix" / "var" / "xstore" / "locks")) == [temp_token(names[0])]
    assert os.listdir(root / "nix" / "store") == []
    assert os.listdir(root / "nix" / "var" / "xstore" / "locks") == []

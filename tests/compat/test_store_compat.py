"""The store commands side by side with Nix 2.8, on stores that Nix made and on stores that xstore made.

- `xstore import` of Nix's export gives a store that Nix verifies and describes as it describes its own
  (and the same database rows and trees as Nix's own import).
- `xstore export` gives Nix's bytes and Nix's order, from a Nix-made store (which it leaves untouched)
  and from an xstore-made one, whatever the order of the arguments.
- With the case hack, the names on disk are Nix's (`use-case-hack = true`), Nix verifies the store, and
  the export gives the original bytes back; the `apfs` fold goes further than Nix can, and Nix still
  verifies the result. The store remembers its setting: later commands need no flag.
- `xstore verify` reports and changes nothing; `xstore copy` is an export piped into an import;
  `xstore path-info --json` says what `nix path-info --json` says; importing a path that is valid
  already is a no-op only when its NAR is the one registered.

Every xstore command runs as a real subprocess (`python -X dev -bb -W error -m xstore`). The Nix-made
stores are built once per session and never changed; a test that changes a store works on a copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from tests.helpers import Arg, Nix
from tests.nixstores import CASE_UNICODE_COLLISIONS, NixStore, build_case_closure, build_nix_store
from xstore.wire import encode_strings

XSTORE: list[str] = [sys.executable, "-X", "dev", "-bb", "-W", "error", "-m", "xstore"]
CASE_HACK = b"~nix~case~hack~"
CLOSURE_LABELS = ("text_a", "text_b", "text_c", "dep", "out")

# relative path -> (file type, permission bits, mtime in ns, contents or symlink target)
Tree: TypeAlias = dict[bytes, tuple[int, int, int, bytes]]
# (ValidPaths rows without id and registrationTime, references as (referrer, reference) paths)
Rows: TypeAlias = tuple[list[tuple[Any, ...]], list[tuple[str, str]]]


# -- running things ------------------------------------------------------------------------------------


def xstore(*args: Arg, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """`xstore ARGS...` as a real process; returns whatever it did."""
    return subprocess.run(
        [*XSTORE, *(os.fsdecode(a) for a in args)],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )


def xstore_ok(*args: Arg, input: bytes | None = None) -> bytes:
    """`xstore ARGS...`, which must succeed; returns stdout."""
    result = xstore(*args, input=input)
    assert result.returncode == 0, (args, result.stderr.decode("utf-8", "replace"))
    return result.stdout


def xstore_fails(*args: Arg, input: bytes | None = None) -> str:
    """`xstore ARGS...`, which must exit 1 with a one-line error; returns that line."""
    result = xstore(*args, input=input)
    assert result.returncode == 1, (args, result.returncode, result.stderr)
    message = result.stderr.decode()
    assert message.startswith("error: ")
    assert message.count("\n") == 1, message
    return message.rstrip("\n")


def export_fails(root: Path, path: str, tmp_path: Path) -> str:
    """`xstore export -o FILE PATH`, which must fail without creating FILE (Nix, and xstore on stdout,
    have written part of the stream by then); returns the error line."""
    output = tmp_path / "refused.closure"
    message = xstore_fails("export", "--store", root, "-o", output, path)
    assert not output.exists()
    assert [name for name in os.listdir(tmp_path) if "refused" in name] == []
    return message


def nix_verify(nix: Nix, store: NixStore, *, case_hack: bool = False) -> None:
    """`nix-store --verify --check-contents` on `store`, which must pass with nothing to report."""
    argv: list[Arg] = [nix.nix_store_exe, *store.store_args()]
    if case_hack:
        argv += ["--option", "use-case-hack", "true"]
    result = nix.run([*argv, "--verify", "--check-contents"])
    assert b"checking store hashes" in result.stderr
    for complaint in (b"modified", b"disappeared", b"error", b"warning"):
        assert complaint not in result.stderr, result.stderr.decode()


def nix_path_info(nix: Nix, store: NixStore, *paths: str, closure_size: bool = False) -> list[dict[str, Any]]:
    """`nix path-info --json -r [-S] PATHS...` as Nix 2.8 prints it (a list sorted by path)."""
    flags = ["--json", "--recursive", *(["--closure-size"] if closure_size else [])]
    resolved = [store.paths.get(path, path) for path in paths]
    infos = json.loads(nix.nix_cmd("path-info", *store.store_args(), *flags, *resolved))
    assert isinstance(infos, list)
    return infos


def nix_export_case_hacked(nix: Nix, store: NixStore, paths: list[str]) -> bytes:
    """`nix-store --option use-case-hack true --export PATHS...`."""
    return nix.nix_store(*store.store_args(), "--option", "use-case-hack", "true", "--export", *paths)


def at(root: Path, like: NixStore) -> NixStore:
    """The store at `root`, with the labels of `like` (for running Nix on a store xstore made)."""
    return NixStore(root=root, paths=dict(like.paths))


def copy_store(source: Path, dest: Path) -> Path:
    """A copy of a whole store (a test that changes a store works on one of these)."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


# -- looking at stores ---------------------------------------------------------------------------------


def tree(store_dir: Path) -> Tree:
    """Everything under the store paths of a real store directory: each entry's type, permissions,
    mtime and contents (or symlink target). Lock files and hidden entries (`.links`, xstore's
    temporaries) are left out: they are not store paths."""
    out: Tree = {}

    def walk(real: bytes, relative: bytes) -> None:
        st = os.lstat(real)
        kind = stat.S_IFMT(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            with open(real, "rb") as f:
                data = f.read()
        elif stat.S_ISLNK(st.st_mode):
            data = os.readlink(real)
        else:
            data = b""
        out[relative] = (kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns, data)
        if stat.S_ISDIR(st.st_mode):
            for name in os.listdir(real):
                walk(os.path.join(real, name), relative + b"/" + name)

    base = os.fsencode(store_dir)
    for name in os.listdir(base):
        if not name.startswith(b".") and not name.endswith(b".lock"):
            walk(os.path.join(base, name), name)
    return out


def remove_tree(top: Path) -> None:
    """Delete a read-only tree from a store (the owner may write the directories first)."""
    for directory, _dirs, _files in os.walk(top):
        os.chmod(directory, 0o755)  # noqa: S103 (only to delete what is inside)
    shutil.rmtree(top)


def leftovers(root: Path) -> list[str]:
    """What xstore must never leave in a real store directory: temporaries and lock files."""
    return sorted(
        n
        for n in os.listdir(root / "nix" / "store")
        if n.startswith(".xstore") or n.endswith((".lock", "-xstore-tmp"))
    )


@contextlib.contextmanager
def database(root: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"file:{root / 'nix/var/nix/db/db.sqlite'}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()


def rows(root: Path, *, with_time: bool = False) -> Rows:
    """The store's registrations: ValidPaths without id (and registrationTime unless `with_time`), and
    Refs by path."""
    columns = "path, hash, deriver, narSize, ultimate, sigs, ca" + (", registrationTime" if with_time else "")
    with database(root) as db:
        valid = db.execute(f"select {columns} from ValidPaths order by path").fetchall()  # noqa: S608
        refs = db.execute(
            "select a.path, b.path from Refs join ValidPaths a on referrer = a.id "
            "join ValidPaths b on reference = b.id order by 1, 2"
        ).fetchall()
    return valid, refs


def untouched(root: Path) -> dict[str, tuple[int, int, int]]:
    """What reading a store must not change: every entry under `root` with its mode, size and mtime, and
    db.sqlite's contents. The database directory's own mtime is left out: SQLite (in Nix as in xstore)
    makes and removes `db.sqlite-wal` and `db.sqlite-shm` there whenever the database is opened."""
    out: dict[str, tuple[int, int, int]] = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            relative = os.path.relpath(path, root)
            mtime = 0 if relative == "nix/var/nix/db" else st.st_mtime_ns
            out[relative] = (st.st_mode, st.st_size if not stat.S_ISDIR(st.st_mode) else 0, mtime)
    db = root / "nix" / "var" / "nix" / "db" / "db.sqlite"
    out["db.sqlite sha256"] = (int.from_bytes(hashlib.sha256(db.read_bytes()).digest()[:8], "big"), 0, 0)
    return out


@contextlib.contextmanager
def read_only(root: Path) -> Iterator[None]:
    """Assert that the block leaves the store at `root` exactly as it was (see `untouched`)."""
    before = untouched(root)
    yield
    assert untouched(root) == before


def by_path(infos: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Nix 2.8's `path-info --json` list as current Nix's object keyed by path, with every field present
    (Nix 2.8 leaves out what is absent; current Nix, and xstore, print null, false or [])."""
    out = {}
    for info in infos:
        entry = {key: value for key, value in info.items() if key != "path"}
        for key, default in (
            ("ca", None),
            ("deriver", None),
            ("registrationTime", None),
            ("ultimate", False),
            ("signatures", []),
        ):
            entry.setdefault(key, default)
        out[info["path"]] = entry
    return out


# -- the stores, made once per session -------------------------------------------------------------------


@pytest.fixture(scope="session")
def nix_store(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    """`build_nix_store`: a store made by Nix (read-only for tests)."""
    return build_nix_store(nix, tmp_path_factory.mktemp("store-compat-nix") / "root")


@pytest.fixture(scope="session")
def case_store(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    """`build_case_closure`: a store made by Nix, full of case collisions (read-only for tests)."""
    return build_case_closure(nix, tmp_path_factory.mktemp("store-compat-case") / "root")


@pytest.fixture(scope="session")
def out_closure(nix: Nix, nix_store: NixStore) -> list[str]:
    """`nix-store -qR out`: the closure of `out`, dependencies first."""
    closure = nix_store.query_requisites(nix, "out")
    assert sorted(closure) == sorted(nix_store.paths[label] for label in CLOSURE_LABELS)
    return closure


@pytest.fixture(scope="session")
def out_export(nix: Nix, nix_store: NixStore, out_closure: list[str]) -> bytes:
    """Nix's export of the closure of `out`."""
    return nix_store.export(nix, *out_closure)


@pytest.fixture(scope="session")
def printed_by_import() -> dict[str, list[str]]:
    """What `imported` and `nix_imported` printed on stdout, by "xstore" and "nix"."""
    return {}


@pytest.fixture(scope="session")
def imported(
    nix_store: NixStore,
    out_export: bytes,
    printed_by_import: dict[str, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> NixStore:
    """A new store into which `xstore import` read Nix's export of `out`'s closure (read-only for tests)."""
    root = tmp_path_factory.mktemp("store-compat-imported") / "root"
    printed_by_import["xstore"] = xstore_ok("import", "--store", root, input=out_export).decode().splitlines()
    return at(root, nix_store)


@pytest.fixture(scope="session")
def nix_imported(
    nix: Nix,
    nix_store: NixStore,
    out_export: bytes,
    printed_by_import: dict[str, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> NixStore:
    """A new store into which `nix-store --import` read the same export (read-only for tests)."""
    store = at(tmp_path_factory.mktemp("store-compat-nix-imported") / "root", nix_store)
    printed = nix.nix_store(*store.store_args(), "--import", input=out_export)
    printed_by_import["nix"] = printed.decode().splitlines()
    return store


@pytest.fixture(scope="session")
def case_closure(nix: Nix, case_store: NixStore) -> list[str]:
    return case_store.query_requisites(nix, "out")


@pytest.fixture(scope="session")
def case_export(nix: Nix, case_store: NixStore, case_closure: list[str]) -> bytes:
    """Nix's export of the closure of the case store's `out`."""
    return case_store.export(nix, *case_closure)


@pytest.fixture(scope="session")
def case_nix_imported(
    nix: Nix, case_store: NixStore, case_export: bytes, tmp_path_factory: pytest.TempPathFactory
) -> NixStore:
    """`nix-store --option use-case-hack true --import` of `case_export` into a new store."""
    store = at(tmp_path_factory.mktemp("store-compat-case-nix") / "root", case_store)
    nix.nix_store(*store.store_args(), "--option", "use-case-hack", "true", "--import", input=case_export)
    return store


def _case_hacked(root: Path, like: NixStore, stream: bytes, *init: str) -> NixStore:
    settings = json.loads(xstore_ok("store", "init", "--store", root, "--json", *init))
    assert settings["caseHack"] is True
    xstore_ok("import", "--store", root, input=stream)  # no flag: the store's setting applies
    return at(root, like)


@pytest.fixture(scope="session")
def case_hacked(
    case_store: NixStore, case_export: bytes, tmp_path_factory: pytest.TempPathFactory
) -> NixStore:
    """`case_export` imported into a store made with `xstore store init --case-hack on`."""
    root = tmp_path_factory.mktemp("store-compat-case-hacked") / "root"
    return _case_hacked(root, case_store, case_export, "--case-hack", "on")


@pytest.fixture(scope="session")
def case_apfs(case_store: NixStore, case_export: bytes, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    """`case_export` imported into a store made with `--case-hack on --case-fold apfs`."""
    root = tmp_path_factory.mktemp("store-compat-case-apfs") / "root"
    return _case_hacked(root, case_store, case_export, "--case-hack", "on", "--case-fold", "apfs")


# -- 1. importing Nix's export ----------------------------------------------------------------------------


def test_import_of_nix_export_passes_nix_verify(nix: Nix, imported: NixStore) -> None:
    nix_verify(nix, imported)
    assert (imported.root / "nix" / "var" / "nix" / "db" / "schema").read_bytes() == b"10"
    assert leftovers(imported.root) == []


def test_import_of_nix_export_has_nix_path_info(nix: Nix, nix_store: NixStore, imported: NixStore) -> None:
    source = by_path(nix_path_info(nix, nix_store, "out"))
    mine = by_path(nix_path_info(nix, imported, "out"))
    assert sorted(mine) == sorted(source) == sorted(nix_store.paths[label] for label in CLOSURE_LABELS)
    for path, info in mine.items():
        for key in ("narHash", "narSize", "references", "deriver"):
            assert info[key] == source[path][key], (path, key)
        # The export format carries neither a content address nor `ultimate`, as with Nix's import.
        assert info["ca"] is None
        assert info["ultimate"] is False
    assert mine[nix_store.paths["out"]]["deriver"] == nix_store.paths["drv"]
    assert nix_store.paths["out"] in mine[nix_store.paths["out"]]["references"]


def test_import_gives_what_nix_import_gives(
    imported: NixStore, nix_imported: NixStore, printed_by_import: dict[str, list[str]]
) -> None:
    """The same paths printed in the same order (the stream's), the same rows (but for the
    registration time) and the same trees, modes and mtimes as Nix's import."""
    assert printed_by_import["xstore"] == printed_by_import["nix"]
    assert sorted(printed_by_import["nix"]) == sorted(imported.paths[label] for label in CLOSURE_LABELS)
    assert rows(imported.root) == rows(nix_imported.root)
    assert tree(imported.store_dir) == tree(nix_imported.store_dir)


# -- 2. export -----------------------------------------------------------------------------------------


def test_export_single_paths_from_nix_store(nix: Nix, nix_store: NixStore) -> None:
    expected = {label: nix_store.export(nix, label) for label in nix_store.paths}
    with read_only(nix_store.root):
        for label, path in nix_store.paths.items():
            assert xstore_ok("export", "--store", nix_store.root, path) == expected[label], label


def test_export_single_paths_from_xstore_store(nix: Nix, imported: NixStore) -> None:
    for label in CLOSURE_LABELS:
        path = imported.paths[label]
        assert xstore_ok("export", "--store", imported.root, path) == imported.export(nix, path), label


def argument_orders(paths: list[str]) -> list[list[str]]:
    """Several orders of `paths`: sorted, reversed, dependencies first and last, shuffled, repeated."""
    shuffled = []
    rng = random.Random(1234)
    for _ in range(3):
        order = list(paths)
        rng.shuffle(order)
        shuffled.append(order)
    return [
        sorted(paths),
        sorted(paths, reverse=True),
        list(paths),
        paths[::-1],
        *shuffled,
        paths + paths[:2],
    ]


@pytest.mark.parametrize("which", ["nix-made", "xstore-made"])
def test_export_closure_in_any_order(
    nix: Nix, nix_store: NixStore, imported: NixStore, out_closure: list[str], which: str
) -> None:
    store = nix_store if which == "nix-made" else imported
    expected = store.export(nix, *out_closure)
    with read_only(store.root):
        for order in argument_orders(out_closure):
            assert xstore_ok("export", "--store", store.root, *order) == expected, order


def test_export_whole_nix_store_in_any_order(nix: Nix, nix_store: NixStore) -> None:
    """Every path of the Nix-made store (derivations too, whose references are partly outside the set):
    Nix's depth-first order, whatever the order of the arguments."""
    everything = sorted(nix_store.paths.values())
    expected = nix_store.export(nix, *everything)
    with read_only(nix_store.root):
        for order in argument_orders(everything):
            assert xstore_ok("export", "--store", nix_store.root, *order) == expected, order


@pytest.mark.parametrize("label", ["out", "drv", "text_c", "file"])
def test_export_recursive(nix: Nix, nix_store: NixStore, imported: NixStore, label: str) -> None:
    expected = nix_store.export(nix, *nix_store.query_requisites(nix, label))
    with read_only(nix_store.root):
        assert xstore_ok("export", "--store", nix_store.root, "-r", nix_store.paths[label]) == expected
    if label in CLOSURE_LABELS:
        assert xstore_ok("export", "--store", imported.root, "-r", imported.paths[label]) == expected


def test_export_of_nix_export_round_trips(imported: NixStore, out_export: bytes) -> None:
    assert xstore_ok("export", "--store", imported.root, "-r", imported.paths["out"]) == out_export


def test_export_invalid_path(nix_store: NixStore, imported: NixStore) -> None:
    with read_only(imported.root):
        message = xstore_fails("export", "--store", imported.root, nix_store.paths["file"])
    assert nix_store.paths["file"] in message
    assert "not valid" in message


# -- 3. the case hack ------------------------------------------------------------------------------------


def test_case_hack_names_are_nix_names(nix: Nix, case_hacked: NixStore, case_nix_imported: NixStore) -> None:
    mine = tree(case_hacked.store_dir)
    assert mine == tree(case_nix_imported.store_dir)
    assert rows(case_hacked.root) == rows(case_nix_imported.root)
    hacked = sorted(name for name in mine if CASE_HACK in name)
    base = case_hacked.paths["tree"].removeprefix("/nix/store/").encode()
    # First spelling in NAR (byte) order keeps its name; later ones are numbered per folded key.
    for name in (b"ReadMe~nix~case~hack~1", b"readme~nix~case~hack~2", b"nested/deep/nAmE~nix~case~hack~2"):
        assert base + b"/" + name in hacked
    assert base + b"/README" in mine
    nix_verify(nix, case_hacked, case_hack=True)


def test_case_hack_export_gives_original_bytes(
    nix: Nix, case_hacked: NixStore, case_closure: list[str], case_export: bytes
) -> None:
    assert xstore_ok("export", "--store", case_hacked.root, *case_closure) == case_export
    assert xstore_ok("export", "--store", case_hacked.root, "-r", case_hacked.paths["out"]) == case_export
    # Nix (with its case hack) reads the names xstore wrote back to the same bytes.
    assert nix_export_case_hacked(nix, case_hacked, case_closure) == case_export


def apfs_names(nix_tree: Tree, store: NixStore) -> Tree:
    """`nix_tree` (Nix's ASCII case hack) with the names that only a Unicode fold catches renamed as
    the apfs fold renames them: the first in byte order keeps its name, the others are numbered."""
    renames: dict[bytes, bytes] = {}
    bases = [store.paths[label].removeprefix("/nix/store/").encode() for label in ("tree", "out")]
    for prefix in (bases[0] + b"/", bases[1] + b"/tree/"):
        for group in CASE_UNICODE_COLLISIONS:
            for n, name in enumerate(sorted(group)[1:], start=1):
                renames[prefix + name] = prefix + name + CASE_HACK + str(n).encode()
    assert all(old in nix_tree for old in renames)
    return {renames.get(name, name): entry for name, entry in nix_tree.items()}


def test_case_hack_apfs_fold(
    nix: Nix,
    case_apfs: NixStore,
    case_nix_imported: NixStore,
    case_closure: list[str],
    case_export: bytes,
) -> None:
    """Nix cannot make these names (its fold is ASCII only), but verifies the store and exports it."""
    assert tree(case_apfs.store_dir) == apfs_names(tree(case_nix_imported.store_dir), case_apfs)
    nix_verify(nix, case_apfs, case_hack=True)
    assert nix_export_case_hacked(nix, case_apfs, case_closure) == case_export
    assert xstore_ok("export", "--store", case_apfs.root, *case_closure) == case_export
    assert xstore_ok("verify", "--store", case_apfs.root, "--check-contents") == b""


# -- 4. the store remembers its case-hack setting --------------------------------------------------------


def test_case_hack_setting_is_honoured(
    nix: Nix, case_store: NixStore, case_hacked: NixStore, case_export: bytes
) -> None:
    root = case_hacked.root
    settings = json.loads((root / "nix" / "var" / "xstore" / "settings.json").read_text())
    assert settings == {"version": 1, "caseHack": True, "caseFold": "ascii"}
    assert "case hack on, ascii fold" in xstore_ok("store", "init", "--store", root).decode()

    info = json.loads(xstore_ok("path-info", "--store", root, "--json", "-r", "-S", case_hacked.paths["out"]))
    expected = by_path(nix_path_info(nix, case_store, "out", closure_size=True))
    assert sorted(info) == sorted(expected)
    for path, entry in info.items():
        for key in ("narHash", "narSize", "references", "deriver", "closureSize"):
            assert entry[key] == expected[path][key], (path, key)

    result = xstore("verify", "--store", root, "--check-contents")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert xstore_ok("export", "--store", root, "-r", case_hacked.paths["out"]) == case_export
    assert xstore_ok("export", "--store", root, case_hacked.paths["tree"]) == case_store.export(nix, "tree")


def test_case_hack_setting_matters(case_hacked: NixStore, tmp_path: Path) -> None:
    """Control: the same store with the setting turned off cannot be read back (its names carry the
    suffix), so the commands above really did use the setting."""
    root = copy_store(case_hacked.root, tmp_path / "root")
    settings_file = root / "nix" / "var" / "xstore" / "settings.json"
    settings_file.write_text(json.dumps({"version": 1, "caseHack": False, "caseFold": "ascii"}))
    assert xstore("verify", "--store", root, "--check-contents").returncode == 1
    assert CASE_HACK.decode() in export_fails(root, case_hacked.paths["tree"], tmp_path)


def test_case_hack_later_import_needs_no_flag(
    nix: Nix, case_hacked: NixStore, out_export: bytes, nix_store: NixStore, tmp_path: Path
) -> None:
    root = copy_store(case_hacked.root, tmp_path / "root")
    xstore_ok("import", "--store", root, input=out_export)
    out = root / nix_store.paths["out"].lstrip("/")
    assert sorted(os.listdir(out / "include")) == ["xt_CONNMARK.h", "xt_connmark.h~nix~case~hack~1"]
    assert sorted(os.listdir(out / "share" / "terminfo")) == ["E", "e~nix~case~hack~1"]
    assert xstore_ok("export", "--store", root, "-r", nix_store.paths["out"]) == out_export
    nix_verify(nix, at(root, nix_store), case_hack=True)


# -- 5. verify -------------------------------------------------------------------------------------------


def test_verify_good_store(imported: NixStore) -> None:
    for flags in ([], ["--check-contents"]):
        result = xstore("verify", "--store", imported.root, *flags)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), flags
    report = json.loads(xstore_ok("verify", "--store", imported.root, "--check-contents", "--json"))
    assert report == {"ok": True, "problems": []}


def test_verify_nix_made_store(nix_store: NixStore, case_store: NixStore) -> None:
    for store in (nix_store, case_store):
        with read_only(store.root):
            assert xstore_ok("verify", "--store", store.root, "--check-contents") == b""


def test_verify_missing_path(imported: NixStore, tmp_path: Path) -> None:
    root = copy_store(imported.root, tmp_path / "root")
    store = at(root, imported)
    missing = store.paths["dep"]  # a directory, and `out` refers to it
    remove_tree(store.real_path(missing))
    before = rows(root, with_time=True)
    for flags in ([], ["--check-contents"]):
        result = xstore("verify", "--store", root, *flags)
        assert result.returncode == 1, flags
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert missing in lines[0]
        assert "missing" in lines[0]
    report = json.loads(xstore("verify", "--store", root, "--json").stdout)
    assert report["ok"] is False
    assert [(p["path"], p["problem"]) for p in report["problems"]] == [(missing, "missing")]
    assert missing in report["problems"][0]["detail"]
    # Unlike Nix 2.8's --verify, which deletes the row of a path that disappeared, nothing changed.
    assert rows(root, with_time=True) == before
    assert missing in [path for path, *_ in before[0]]


def test_verify_modified_file(imported: NixStore, tmp_path: Path) -> None:
    root = copy_store(imported.root, tmp_path / "root")
    store = at(root, imported)
    target = store.real_path("out") / "include" / "xt_CONNMARK.h"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes().replace(b"1", b"2"))
    target.chmod(0o444)
    os.utime(target, (1, 1))

    # Existence only: nothing to see.
    assert xstore("verify", "--store", root).returncode == 0
    result = xstore("verify", "--store", root, "--check-contents")
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert store.paths["out"] in lines[0]
    assert "was modified" in lines[0]
    report = json.loads(xstore("verify", "--store", root, "--check-contents", "--json").stdout)
    assert report["ok"] is False
    assert [(p["path"], p["problem"]) for p in report["problems"]] == [(store.paths["out"], "modified")]
    # Exporting it is refused too.
    assert "was modified" in export_fails(root, store.paths["out"], tmp_path)


# -- 6. copy -------------------------------------------------------------------------------------------


def test_copy_carries_what_the_source_knows(
    nix: Nix, nix_store: NixStore, imported: NixStore, tmp_path: Path
) -> None:
    """`copy` moves each path through the store interface: the contents and references as an import
    of the export stream gives them, plus what an export stream cannot carry (content addresses,
    signatures). As in Nix's `copyStorePath`, a copied path is not `ultimate` (built here)."""
    dest = tmp_path / "root"
    with read_only(nix_store.root):
        printed = xstore_ok(
            "copy", "--from", nix_store.root, "--to", dest, "-r", nix_store.paths["out"]
        ).decode()
    assert sorted(printed.splitlines()) == sorted(nix_store.paths[label] for label in CLOSURE_LABELS)
    source_valid, source_refs = rows(nix_store.root)
    closure = {nix_store.paths[label] for label in CLOSURE_LABELS}
    expected = [(*row[:4], None, *row[5:]) for row in source_valid if row[0] in closure]
    assert rows(dest) == (expected, [r for r in source_refs if r[0] in closure])
    imported_valid, imported_refs = rows(imported.root)
    assert [row[:4] for row in rows(dest)[0]] == [row[:4] for row in imported_valid]
    assert rows(dest)[1] == imported_refs
    assert any(row[6] for row in expected), "the closure should hold a content-addressed path"
    assert tree(dest / "nix" / "store") == tree(imported.store_dir)
    assert leftovers(dest) == []
    nix_verify(nix, at(dest, nix_store))


# -- 7. path-info ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["nix-made", "xstore-made"])
def test_path_info_matches_nix(nix: Nix, nix_store: NixStore, imported: NixStore, which: str) -> None:
    store = nix_store if which == "nix-made" else imported
    for closure_size in (False, True):
        expected = by_path(nix_path_info(nix, store, "out", closure_size=closure_size))
        flags = ["--json", "-r", *(["-S"] if closure_size else [])]
        with read_only(store.root):
            mine = json.loads(xstore_ok("path-info", "--store", store.root, *flags, store.paths["out"]))
        # Every field, compared semantically (ca, registrationTime and ultimate differ between a built
        # store and an imported one, and are Nix's in both).
        assert mine == expected


def test_path_info_several_paths(nix: Nix, nix_store: NixStore) -> None:
    # Not a derivation: Nix 2.8 takes `foo.drv` as an installable meaning its outputs (current Nix, and
    # xstore, describe the derivation itself).
    labels = ["tree", "dep", "file", "text_b"]
    paths = [nix_store.paths[label] for label in labels]
    argv = [*nix_store.store_args(), "--json", *paths]
    expected = by_path(json.loads(nix.nix_cmd("path-info", *argv)))
    mine = json.loads(xstore_ok("path-info", "--store", nix_store.root, "--json", *paths))
    assert mine == expected


# -- 8. paths that are valid already ---------------------------------------------------------------------


def test_import_twice_changes_nothing(imported: NixStore, out_export: bytes, tmp_path: Path) -> None:
    root = copy_store(imported.root, tmp_path / "root")
    before = rows(root, with_time=True), tree(root / "nix" / "store")
    printed = xstore_ok("import", "--store", root, input=out_export).decode().splitlines()
    assert sorted(printed) == sorted(imported.paths[label] for label in CLOSURE_LABELS)
    assert (rows(root, with_time=True), tree(root / "nix" / "store")) == before
    assert leftovers(root) == []


def change_first_content_byte(stream: bytes) -> bytes:
    """`stream` with the first byte of the first regular file's contents changed: still a valid NAR, of
    the same size, with another hash."""
    tag = encode_strings(b"contents")
    start = stream.index(tag) + len(tag)
    size = int.from_bytes(stream[start : start + 8], "little")
    assert size > 0
    offset = start + 8
    return stream[:offset] + bytes([stream[offset] ^ 0x01]) + stream[offset + 1 :]


def test_import_of_other_nar_for_valid_path(
    nix: Nix, nix_store: NixStore, imported: NixStore, tmp_path: Path
) -> None:
    root = copy_store(imported.root, tmp_path / "root")
    original = nix_store.export(nix, "text_a")
    changed = change_first_content_byte(original)
    assert len(changed) == len(original)
    assert changed != original
    before = rows(root, with_time=True), tree(root / "nix" / "store")
    result = xstore("import", "--store", root, input=changed)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "already valid with NAR hash" in lines[0]
    assert nix_store.paths["text_a"] in lines[0]
    assert (rows(root, with_time=True), tree(root / "nix" / "store")) == before
    assert leftovers(root) == []
    # The unchanged stream is fine.
    assert xstore_ok("import", "--store", root, input=original).decode() == nix_store.paths["text_a"] + "\n"

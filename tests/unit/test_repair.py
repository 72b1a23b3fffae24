"""Repair without Nix: modified, missing and re-moded paths fetched again from another store or from an
export file (plain or xz), into a case-hacked store too; sources passed over with their reason, no
source at all, intact paths left alone, the atomic swap, and the commands.

Repairing stores Nix made, checked by Nix's verify, is in `tests/compat/test_repair_compat.py`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.localstores import store_entries
from tests.upkeep import Spec, make_store, register_tree
from xstore.casehack import CaseHackMode
from xstore.cli.app import app
from xstore.compression import open_writer
from xstore.copy import copy_paths
from xstore.errors import RepairError
from xstore.exportstore import ExportFileStore
from xstore.fsops import exchange
from xstore.import_export import export_paths
from xstore.repair import repair_path
from xstore.store import LocalStore
from xstore.storepath import StorePath
from xstore.verify import verify

SPEC: Spec = {
    "lib": ({b"lib/a.so": b"lib a\n", b"lib/A.so": b"lib upper A\n", b"share/": b""}, (), None),
    "app": ({b"bin/app": b"#!/bin/sh\necho app\n", b"doc": b"->bin/app"}, ("lib",), None),
    "file": ({b"": b"a single file\n"}, (), None),
}


@pytest.fixture
def source(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore.create(tmp_path / "source", case_hack=CaseHackMode.OFF) as s:
        yield s


@pytest.fixture
def paths(source: LocalStore) -> dict[str, StorePath]:
    return make_store(source, SPEC)


@pytest.fixture(params=["plain", "case-hacked"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, source: LocalStore, paths: dict[str, StorePath]
) -> Iterator[LocalStore]:
    hack = CaseHackMode.ON if request.param == "case-hacked" else CaseHackMode.OFF
    with LocalStore.create(tmp_path / "damaged", case_hack=hack) as s:
        copy_paths(source, s, paths.values())
        yield s


def damage(store: LocalStore, paths: dict[str, StorePath]) -> None:
    """Change a file's contents, make one executable, and remove a path altogether."""
    lib = store.real_path(paths["lib"])
    os.chmod(lib + b"/lib", 0o755)  # noqa: S103 (to damage it)
    os.chmod(os.path.join(lib, b"lib/A.so"), 0o644)  # a user who is not root needs write permission
    with open(os.path.join(lib, b"lib/A.so"), "ab") as f:  # the same name with the case hack on
        f.write(b"oops")
    app = store.real_path(paths["app"])
    os.chmod(os.path.join(app, b"bin/app"), 0o644)
    os.unlink(store.real_path(paths["file"]))


def test_repair_from_another_store(
    store: LocalStore, source: LocalStore, paths: dict[str, StorePath]
) -> None:
    damage(store, paths)
    assert sorted(p.kind for p in verify(store, check_contents=True)) == ["missing", "modified", "modified"]
    before = os.lstat(store.real_path(paths["lib"])).st_ino
    for name in ("lib", "app", "file"):
        done = repair_path(store, paths[name], [source])
        assert done.source == source.describe()
    assert verify(store, check_contents=True) == []
    assert os.lstat(store.real_path(paths["lib"])).st_ino != before  # a new tree, swapped in
    if store.settings.case_hack:
        assert sorted(os.listdir(store.real_path(paths["lib"]) + b"/lib")) == [
            b"A.so",
            b"a.so~nix~case~hack~1",
        ]
    assert [n for n in store_entries(store) if "xstore" in n] == []
    # Intact now: left alone unless forced.
    assert repair_path(store, paths["lib"], [source]).source is None
    assert repair_path(store, paths["lib"], [source], force=True).source == source.describe()


@pytest.mark.parametrize("compressed", [False, True])
def test_repair_from_export_file(
    store: LocalStore, source: LocalStore, paths: dict[str, StorePath], tmp_path: Path, compressed: bool
) -> None:
    exported = tmp_path / ("closure.xz" if compressed else "closure")
    with open(exported, "wb") as f:
        if compressed:
            writer = open_writer(f.write, "xz")
            export_paths(source, paths.values(), writer)
            writer.finish()
        else:
            export_paths(source, paths.values(), f.write)
    damage(store, paths)
    with ExportFileStore(exported) as from_file:
        assert from_file.query_path_info(paths["app"]) == source.require(paths["app"]).replace(
            registration_time=0, ultimate=False
        )
        for name in ("file", "app", "lib"):
            repair_path(store, paths[name], [from_file])
    assert verify(store, check_contents=True) == []


def test_sources_passed_over_with_reasons(
    store: LocalStore, paths: dict[str, StorePath], tmp_path: Path
) -> None:
    damage(store, paths)
    with (
        LocalStore.create(tmp_path / "empty", case_hack=CaseHackMode.OFF) as empty,
        LocalStore.create(tmp_path / "other", case_hack=CaseHackMode.OFF) as other,
    ):
        register_tree(other, paths["file"], {b"": b"other contents\n"})
        with pytest.raises(RepairError) as caught:
            repair_path(store, paths["file"], [empty, other])
        message = str(caught.value)
        assert message.startswith(f"cannot repair '{paths['file']}': {empty.describe()} does not have it; ")
        assert f"{other.describe()} has it with another NAR hash" in message
        with pytest.raises(RepairError, match="no source to fetch it from"):
            repair_path(store, paths["file"], [])
    assert not os.path.lexists(store.real_path(paths["file"]))


def test_exchange_swaps(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "in-a").write_bytes(b"")
    b.write_bytes(b"b")
    if exchange(os.fsencode(a), os.fsencode(b)):
        assert a.read_bytes() == b"b"
        assert (b / "in-a").exists()
    else:
        assert (a / "in-a").exists()  # nothing changed where it cannot


def test_commands(store: LocalStore, source: LocalStore, paths: dict[str, StorePath]) -> None:
    root, src = str(store.root), str(source.root)
    store.close()
    with LocalStore.open(root) as s:
        damage(s, paths)
    runner = CliRunner()
    checked = runner.invoke(app, ["verify", "--store", root, "--check-contents", "--repair"])
    assert checked.exit_code == 1
    assert "no source to fetch it from" in checked.stderr
    one = runner.invoke(app, ["repair", "--store", root, "--from", src, paths["file"].path])
    assert one.exit_code == 0, one.output
    assert one.stderr == f"repaired '{paths['file']}' from {source.describe()}\n"
    fixed = runner.invoke(app, ["verify", "--store", root, "--check-contents", "--repair", "--from", src])
    assert fixed.exit_code == 0, fixed.output
    assert fixed.stderr.count("repaired '") == 2
    again = runner.invoke(app, ["repair", "--store", root, "--from", src, paths["file"].path])
    assert again.stderr == f"'{paths['file']}' is intact\n"
    assert runner.invoke(app, ["verify", "--store", root, "--check-contents"]).exit_code == 0

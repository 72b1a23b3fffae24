"""The Nix-made stores of `tests/nixstores.py` are what they claim to be.

Checked with Nix 2.8 itself: the paths are valid and pass `nix-store --verify --check-contents`; the
references and derivers are those described (the built outputs have runtime references, one to itself,
and a deriver); `NixStore.dump` gives the NAR that the database describes; the export stream has the
expected framing, with dependencies first; the names colliding under case folding exist on disk with
their exact bytes; and building again gives the same store paths and NARs.
"""

from __future__ import annotations

import hashlib
import os
from base64 import b64encode
from pathlib import Path

import pytest

from tests.helpers import Nix
from tests.nixstores import (
    CASE_COLLISIONS,
    CASE_OUT_COLLISIONS,
    CASE_UNICODE_COLLISIONS,
    FILE_CONTENTS,
    FILE_PATH,
    OUT_COLLISIONS,
    OUT_EXECUTABLE,
    OUT_SYMLINK,
    TEXT_A_PATH,
    TEXT_B_PATH,
    TEXT_C_PATH,
    NixStore,
    build_case_closure,
    build_nix_store,
)

EXPORT_MAGIC = b"NIXE\0\0\0\0"


def u64(value: int) -> bytes:
    return value.to_bytes(8, "little")


@pytest.fixture(scope="module")
def store(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    return build_nix_store(nix, tmp_path_factory.mktemp("nixstore") / "root")


@pytest.fixture(scope="module")
def case_store(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    return build_case_closure(nix, tmp_path_factory.mktemp("casestore") / "root")


def exists_exactly(base: Path, relative: str | bytes) -> bool:
    """Whether `base/relative` exists with exactly the bytes of each component of `relative` (on a
    case-folding file system `os.path.lexists` would also find a differently spelled name)."""
    here = os.fsencode(base)
    for component in os.fsencode(relative).split(b"/"):
        if component not in os.listdir(here):
            return False
        here = os.path.join(here, component)
    return True


def exported_paths(stream: bytes) -> list[str]:
    """The store path of each record of an export stream, in stream order (found after each magic;
    good enough for stores whose files do not contain the magic)."""
    paths = []
    start = 0
    while (at := stream.find(EXPORT_MAGIC, start)) >= 0:
        length = int.from_bytes(stream[at + 8 : at + 16], "little")
        paths.append(stream[at + 16 : at + 16 + length].decode())
        start = at + 16 + length
    return paths


def test_layout(store: NixStore, case_store: NixStore) -> None:
    for made in (store, case_store):
        assert made.db.is_file()
        assert (made.db.parent / "schema").read_bytes() == b"10"
        for label, path in made.paths.items():
            assert path.startswith("/nix/store/"), label
            assert made.real_path(label) == made.store_dir / path.removeprefix("/nix/store/")
            assert made.real_path(label).exists(), label


def test_known_paths(store: NixStore) -> None:
    """Added and text paths depend only on names and contents (the fact sheet's examples)."""
    assert store.paths["file"] == FILE_PATH
    assert store.real_path("file").read_bytes() == FILE_CONTENTS
    assert (store.paths["text_a"], store.paths["text_b"], store.paths["text_c"]) == (
        TEXT_A_PATH,
        TEXT_B_PATH,
        TEXT_C_PATH,
    )
    assert store.real_path("text_c").read_text() == f"ref {TEXT_B_PATH} {TEXT_A_PATH}"


def test_verify_passes(nix: Nix, store: NixStore, case_store: NixStore) -> None:
    for made in (store, case_store):
        result = made.verify(nix)
        assert b"checking store hashes" in result.stderr


def test_references(nix: Nix, store: NixStore) -> None:
    p = store.paths
    expected = {
        "file": [],
        "tree": [],
        "text_a": [],
        "text_b": [p["text_a"]],
        "text_c": sorted([p["text_a"], p["text_b"]]),
        "dep": [p["text_a"]],
        "out": sorted([p["dep"], p["out"], p["text_c"]]),
    }
    for label, references in expected.items():
        assert sorted(store.query_references(nix, label)) == references, label
        assert store.info(nix, label)["references"] == references, label
    assert set(store.query_requisites(nix, "out")) == {
        p[label] for label in ("text_a", "text_b", "text_c", "dep", "out")
    }


def test_built_outputs_have_references_and_deriver(nix: Nix, store: NixStore) -> None:
    for output, drv in (("out", "drv"), ("dep", "dep_drv")):
        info = store.info(nix, output)
        assert info["references"], output
        assert info["deriver"] == store.paths[drv]
        assert store.paths[drv].endswith(".drv")
        assert store.query_deriver(nix, output) == store.paths[drv]
        assert info["ultimate"] is True
    # The derivation is valid too, and refers to its input sources and derivations.
    drv_refs = store.query_references(nix, "drv")
    assert store.paths["dep_drv"] in drv_refs
    assert store.paths["text_c"] in drv_refs


def test_added_and_text_paths_have_no_deriver(nix: Nix, store: NixStore) -> None:
    kinds = {"file": "fixed:r:sha256:", "tree": "fixed:r:sha256:"}
    for label in ("file", "tree", "text_a", "text_b", "text_c"):
        info = store.info(nix, label)
        assert "deriver" not in info, label
        assert "ultimate" not in info, label
        assert info["ca"].startswith(kinds.get(label, "text:sha256:")), label
        assert store.query_deriver(nix, label) is None


def test_path_info_recursive(nix: Nix, store: NixStore) -> None:
    infos = store.path_info(nix, "out", recursive=True)
    assert [info["path"] for info in infos] == sorted(store.query_requisites(nix, "out"))


def test_dump_matches_database(nix: Nix, store: NixStore, case_store: NixStore) -> None:
    for made in (store, case_store):
        for info in made.path_info(nix, *made.paths.values()):
            nar = made.dump(nix, info["path"])
            assert nar.startswith(u64(13) + b"nix-archive-1\0\0\0")
            assert len(nar) == info["narSize"], info["path"]
            assert "sha256-" + b64encode(hashlib.sha256(nar).digest()).decode() == info["narHash"]


def test_dump_of_logical_path_fails_in_28(nix: Nix, store: NixStore) -> None:
    """Why `NixStore.dump` uses the real path: 2.8's `--dump` reads the host file system."""
    message = nix.nix_store_fails(*store.store_args(), "--dump", store.paths["out"])
    assert "No such file or directory" in message


def test_export_stream(nix: Nix, store: NixStore) -> None:
    closure = store.query_requisites(nix, "out")
    stream = store.export(nix, *closure)
    assert stream.startswith(u64(1) + u64(13) + b"nix-archive-1\0\0\0")
    assert stream.endswith(u64(0))
    order = exported_paths(stream)
    assert sorted(order) == sorted(closure)
    # Dependencies before dependents.
    for index, path in enumerate(order):
        assert set(store.query_references(nix, path)) - {path} <= set(order[:index]), path
    # The record of `out` ends with its references, its deriver and the no-signature flag.
    references = sorted(store.query_references(nix, "out"))
    trailer = u64(len(references)) + b"".join(
        u64(len(ref)) + ref.encode() + b"\0" * (-len(ref) % 8) for ref in references
    )
    drv = store.paths["drv"]
    trailer += u64(len(drv)) + drv.encode() + b"\0" * (-len(drv) % 8) + u64(0)
    assert trailer in stream
    # Exporting one path gives one record.
    single = store.export(nix, "file")
    assert exported_paths(single) == [FILE_PATH]
    assert single.startswith(u64(1))
    # No references, no deriver, no signature, end of stream.
    assert single.endswith(u64(0) * 4)


def test_out_tree(store: NixStore) -> None:
    out = store.real_path("out")
    for group in OUT_COLLISIONS:
        for name in group:
            assert exists_exactly(out, name), name
    assert {os.fsencode(name) for name in os.listdir(out / "include")} == {b"xt_CONNMARK.h", b"xt_connmark.h"}
    assert (out / "share" / "terminfo" / "E" / "Eterm").read_text() == "Eterm\n"
    assert (out / "share" / "terminfo" / "e" / "eterm").read_text() == "eterm\n"
    script = out / OUT_EXECUTABLE
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n")
    for label in ("out", "dep", "text_c"):
        assert store.paths[label] in text
    assert os.readlink(out / OUT_SYMLINK) == "../include"
    assert os.listdir(out / "etc" / "empty") == []


def test_added_tree(store: NixStore) -> None:
    tree = store.real_path("tree")
    assert os.access(tree / "bin" / "run", os.X_OK)
    assert not os.access(tree / "README", os.X_OK)
    assert os.readlink(tree / "link") == "a/b/c/deep.txt"
    assert os.listdir(tree / "empty") == []
    assert (tree / "a" / "b" / "c" / "deep.txt").read_text() == "deep\n"


def test_case_closure(nix: Nix, case_store: NixStore) -> None:
    tree = case_store.real_path("tree")
    out = case_store.real_path("out")
    for group in (*CASE_COLLISIONS, *CASE_UNICODE_COLLISIONS):
        for name in group:
            assert exists_exactly(tree, name), name
            assert exists_exactly(out / "tree", name), name
    for out_group in CASE_OUT_COLLISIONS:
        for out_name in out_group:
            assert exists_exactly(out, out_name), out_name
    assert (out / "lib" / "TREE").read_text() == case_store.paths["tree"] + "\n"
    assert case_store.query_references(nix, "out") == [case_store.paths["tree"]]
    assert case_store.info(nix, "out")["deriver"] == case_store.paths["drv"]
    stream = case_store.export(nix, "out", "tree")
    assert exported_paths(stream) == [case_store.paths["tree"], case_store.paths["out"]]


def test_builds_are_reproducible(nix: Nix, store: NixStore, case_store: NixStore, tmp_path: Path) -> None:
    again = build_nix_store(nix, tmp_path / "again")
    case_again = build_case_closure(nix, tmp_path / "case-again")
    for first, second in ((store, again), (case_store, case_again)):
        assert second.paths == first.paths
        hashes = [(info["path"], info["narHash"]) for info in first.path_info(nix, *first.paths.values())]
        assert [
            (info["path"], info["narHash"]) for info in second.path_info(nix, *second.paths.values())
        ] == (hashes)

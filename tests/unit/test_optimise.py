"""optimise without Nix: Nix's link names (checked against names Nix 2.8 made), linking and skipping,
atomic replacement with directories left read-only and timeless, writable files skipped, corrupt links
replaced, EMLINK (a real one: a link with the filesystem's most links), and a second run doing nothing.

Nix itself on the same contents is in `tests/compat/test_optimise_compat.py`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.upkeep import Spec, make_store, xstore_ok
from xstore.casehack import CaseHackMode
from xstore.gc import GcOptions, collect_garbage
from xstore.notices import listening
from xstore.optimise import link_name, optimise_store
from xstore.store import LocalStore
from xstore.storepath import StorePath
from xstore.verify import verify

SAME = b"same content\n"
SPEC: Spec = {
    "one": ({b"a": SAME, b"bin/x": b"#!x\n", b"link": b"->target", b"sub/empty": b""}, (), None),
    "two": ({b"b": SAME, b"deep/er/c": SAME, b"y": b"#!x\n", b"other": b"->target"}, (), None),
    "three": ({b"": SAME}, (), None),
    "four": ({b"unique": b"only here\n", b"sub/empty": b""}, (), None),
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore.create(tmp_path / "root", case_hack=CaseHackMode.OFF) as s:
        yield s


@pytest.fixture
def paths(store: LocalStore) -> dict[str, StorePath]:
    return make_store(store, SPEC)


def test_link_names_are_nixs(tmp_path: Path) -> None:
    """The names Nix 2.8 gave these contents in `.links` (shared/nix-protocols §4, verified)."""
    (tmp_path / "f").write_bytes(b"same content\n")
    (tmp_path / "x").write_bytes(b"x")
    os.chmod(tmp_path / "x", 0o555)  # noqa: S103 (an executable, as in a store)
    (tmp_path / "l").symlink_to("target")
    assert link_name(os.fsencode(tmp_path / "f")) == "0zv3q8kzg89iw672fc00j77qqaw887zlr5nkzgcxlycbq0ykfsms"
    assert link_name(os.fsencode(tmp_path / "x")) == "1qf3k50cfba7m69yyp7n3dj4g3ckiyyaq16qw6nyh4vrpn97nyzh"
    assert link_name(os.fsencode(tmp_path / "l")) == "0x67g3311ihxwarw846p2jc8wbxmv9bd8ryh7qjpp6d8yb56536b"


def inode(store: LocalStore, path: StorePath, relative: bytes = b"") -> int:
    return os.lstat(
        os.path.join(store.real_path(path), relative) if relative else store.real_path(path)
    ).st_ino


def test_optimise_links_identical_files(store: LocalStore, paths: dict[str, StorePath]) -> None:
    stats = optimise_store(store)
    same = {
        inode(store, paths["one"], b"a"),
        inode(store, paths["two"], b"b"),
        inode(store, paths["two"], b"deep/er/c"),
        inode(store, paths["three"]),
    }
    assert len(same) == 1
    assert inode(store, paths["one"], b"bin/x") == inode(store, paths["two"], b"y")
    assert inode(store, paths["one"], b"link") == inode(store, paths["two"], b"other")
    assert inode(store, paths["one"], b"sub/empty") == inode(store, paths["four"], b"sub/empty")
    # b, c and three (SAME), y, other, four's empty file: 6 replaced; the first of each is the link.
    assert stats.files_linked == 6
    assert stats.bytes_freed == 3 * len(SAME) + len(b"#!x\n") + len(b"target") + 0
    assert stats.summary() == f"{stats.bytes_freed / 1048576:.2f} MiB freed by hard-linking 6 files"
    links = store.real_store_dir / ".links"
    assert (links / "0zv3q8kzg89iw672fc00j77qqaw887zlr5nkzgcxlycbq0ykfsms").stat().st_nlink == 5
    # Directories that held a replaced file are read-only and timeless again; nothing else is left.
    for directory in (store.real_path(paths["two"]), os.path.join(store.real_path(paths["two"]), b"deep/er")):
        st = os.lstat(directory)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o555, 1)
    assert sorted(n for n in os.listdir(store.real_store_dir) if n.startswith(".")) == [".links"]
    assert verify(store, check_contents=True) == []
    assert optimise_store(store).files_linked == 0


def test_writable_files_skipped(store: LocalStore, paths: dict[str, StorePath]) -> None:
    writable = os.path.join(store.real_path(paths["two"]), b"b")
    os.chmod(writable, 0o644)
    said: list[str] = []
    with listening(said.append):
        optimise_store(store)
    assert f"warning: skipping suspicious writable file '{os.fsdecode(writable)}'" in said
    assert os.lstat(writable).st_nlink == 1
    assert inode(store, paths["one"], b"a") == inode(store, paths["three"])


def test_corrupt_link_replaced(store: LocalStore, paths: dict[str, StorePath]) -> None:
    links = store.real_store_dir / ".links"
    links.mkdir()
    corrupt = links / link_name(os.path.join(store.real_path(paths["one"]), b"a"))
    corrupt.write_bytes(b"not the same size")
    said: list[str] = []
    with listening(said.append):
        optimise_store(store)
    assert f"warning: removing corrupted link '{corrupt}'" in said
    assert corrupt.read_bytes() == SAME
    assert verify(store, check_contents=True) == []


def test_emlink_leaves_the_file(store: LocalStore, paths: dict[str, StorePath], tmp_path: Path) -> None:
    """A real EMLINK: the link of SAME given the most links the filesystem allows, then a new copy."""
    limit = os.pathconf(store.real_store_dir, "PC_LINK_MAX")
    if limit > 100_000:
        pytest.skip(f"the temporary directory's filesystem allows {limit} links per file (ext4 allows 65000)")
    optimise_store(store)
    link = store.real_store_dir / ".links" / "0zv3q8kzg89iw672fc00j77qqaw887zlr5nkzgcxlycbq0ykfsms"
    spare = tmp_path / "root" / "spare"  # same filesystem
    spare.mkdir()
    for n in range(limit - link.stat().st_nlink):
        os.link(link, spare / str(n))
    assert link.stat().st_nlink == limit
    more = make_store(store, {"five": ({b"again": SAME, b"new": b"new\n"}, (), None)})
    said: list[str] = []
    with listening(said.append):
        stats = optimise_store(store, paths=[more["five"]])
    assert f"'{link}' has maximum number of links" in said
    assert stats.files_linked == 0
    assert os.lstat(os.path.join(store.real_path(more["five"]), b"again")).st_nlink == 1
    assert [n for n in os.listdir(store.real_store_dir) if n.startswith(".tmp-link")] == []
    assert verify(store, check_contents=True) == []


def test_gc_removes_links_no_longer_used(store: LocalStore, paths: dict[str, StorePath]) -> None:
    # In another process: its temporary roots (every path it optimised) end with it, as with Nix's.
    assert xstore_ok("optimise", "--store", store.root).endswith(b"freed by hard-linking 6 files\n")
    gcroot = store.state_dir / "gcroots" / "four"
    gcroot.parent.mkdir(parents=True)
    gcroot.symlink_to(paths["four"].path)
    result = collect_garbage(store, GcOptions())
    links = store.real_store_dir / ".links"
    # Only four's files remain: its unique file and the empty file (linked with one's, now gone).
    assert sorted(os.listdir(links)) == sorted(
        link_name(os.path.join(store.real_path(paths["four"]), name)) for name in (b"unique", b"sub/empty")
    )
    assert result.links_removed == 3
    assert verify(store, check_contents=True) == []

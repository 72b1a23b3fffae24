"""optimise side by side with Nix 2.8: the same `.links` names for the same contents, the same files
linked, either tool after the other finding nothing left to do, and each one's collector cleaning the
other's links.

The store: trees added with `nix-store --add` that share files (regular, executable, empty, symlinks,
a whole identical subtree), and a chain of text paths with references, so some paths are rooted and
some are not.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from tests.helpers import Nix
from tests.nixstores import NixStore, TreeEntry, write_tree
from tests.upkeep import build_chain, lines, nix_at, nix_run_at, xstore_ok

SHARED: tuple[TreeEntry, ...] = (
    (b"README", "file", b"the same readme\n"),
    (b"bin", "dir", b""),
    (b"bin/run", "exec", b"#!/bin/sh\necho same\n"),
    (b"empty", "file", b""),
    (b"doc", "symlink", b"README"),
    (b"lib", "dir", b""),
    (b"lib/data", "file", b"same data\n" * 100),
)


def tree(name: str, extra: bytes) -> tuple[TreeEntry, ...]:
    return (
        *SHARED,
        (b"own", "file", extra),
        (b"copy", "dir", b""),
        *((b"copy/" + p, k, d) for p, k, d in SHARED[:3]),
    )


@pytest.fixture(scope="module")
def base(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    root = tmp_path_factory.mktemp("optimise-nix") / "root"
    sources = tmp_path_factory.mktemp("optimise-sources")
    paths: dict[str, str] = {}
    for name in ("alpha", "beta", "gamma"):
        write_tree(sources / name, tree(name, f"own {name}\n".encode()))
    added = lines(nix_at(nix, root, "--add", *(sources / n for n in ("alpha", "beta", "gamma"))))
    paths.update(zip(("alpha", "beta", "gamma"), added, strict=True))
    for n, path in enumerate(build_chain(nix, root, 3, lines=50)):
        paths[f"chain{n}"] = path
    shutil.rmtree(root / "nix" / "store" / ".links")  # nothing linked yet
    (root / "nix" / "store" / ".links").mkdir()
    return NixStore(root, paths)


def copy_of(store: NixStore, dest: Path) -> NixStore:
    shutil.copytree(store.root, dest, symlinks=True)
    return NixStore(dest, dict(store.paths))


def nix_optimise(nix: Nix, store: NixStore) -> str:
    """`nix-store --optimise`; returns its summary line."""
    said = nix_run_at(nix, store, "--optimise").stderr.decode()
    found: list[str] = re.findall(r"^[\d.]+ MiB freed by hard-linking \d+ files$", said, re.MULTILINE)
    assert len(found) == 1, said
    return found[0]


def xstore_optimise(store: NixStore) -> str:
    return xstore_ok("optimise", "--store", store.root).decode().strip()


def partition(store: NixStore) -> set[frozenset[str]]:
    """The store's files grouped by inode (who is linked with whom), by path relative to the store."""
    groups: dict[int, set[str]] = {}
    for directory, dirs, files in os.walk(store.store_dir):
        if os.path.basename(directory) == ".links":
            continue
        for name in [*files, *dirs]:
            where = os.path.join(directory, name)
            st = os.lstat(where)
            if not stat.S_ISDIR(st.st_mode):
                groups.setdefault(st.st_ino, set()).add(os.path.relpath(where, store.store_dir))
    return {frozenset(group) for group in groups.values()}


def verifies(nix: Nix, store: NixStore) -> None:
    said = nix_run_at(nix, store, "--verify", "--check-contents").stderr
    assert b"modified" not in said
    assert b"error" not in said
    xstore_ok("verify", "--store", store.root, "--check-contents")


def test_same_links_as_nix(nix: Nix, base: NixStore, tmp_path: Path) -> None:
    theirs = copy_of(base, tmp_path / "theirs")
    mine = copy_of(base, tmp_path / "mine")
    nix_says = nix_optimise(nix, theirs)
    assert xstore_optimise(mine) == nix_says
    assert not nix_says.endswith(" 0 files")
    assert sorted(os.listdir(mine.store_dir / ".links")) == sorted(os.listdir(theirs.store_dir / ".links"))
    assert partition(mine) == partition(theirs)
    assert any(len(group) == 6 for group in partition(mine))  # README in three trees, twice in each
    verifies(nix, mine)
    # Either after the other: nothing left to do.
    assert xstore_optimise(theirs) == "0.00 MiB freed by hard-linking 0 files"
    assert nix_optimise(nix, mine) == "0.00 MiB freed by hard-linking 0 files"
    assert partition(mine) == partition(theirs)
    verifies(nix, theirs)


def test_links_remade_from_nix_optimised_files(nix: Nix, base: NixStore, tmp_path: Path) -> None:
    """A store Nix optimised whose `.links` was lost: xstore makes the very links Nix made, from the
    files as they are (already linked with each other: nothing to replace)."""
    store = copy_of(base, tmp_path / "root")
    nix_optimise(nix, store)
    made_by_nix = sorted(os.listdir(store.store_dir / ".links"))
    shutil.rmtree(store.store_dir / ".links")
    assert xstore_optimise(store) == "0.00 MiB freed by hard-linking 0 files"
    assert sorted(os.listdir(store.store_dir / ".links")) == made_by_nix
    assert nix_optimise(nix, store) == "0.00 MiB freed by hard-linking 0 files"
    verifies(nix, store)


@pytest.mark.parametrize("collector", ["nix", "xstore"])
def test_gc_cleans_the_other_tools_links(nix: Nix, base: NixStore, tmp_path: Path, collector: str) -> None:
    mine = copy_of(base, tmp_path / "mine")
    theirs = copy_of(base, tmp_path / "theirs")
    xstore_optimise(mine)
    nix_optimise(nix, theirs)
    for store in (mine, theirs):
        nix_at(nix, store, "--add-root", tmp_path / f"{store.root.name}-alpha", "-r", store.paths["alpha"])
        if collector == "nix":
            nix_at(nix, store, "--gc")
        else:
            xstore_ok("gc", "--store", store.root)
        verifies(nix, store)
    assert sorted(os.listdir(mine.store_dir / ".links")) == sorted(os.listdir(theirs.store_dir / ".links"))
    # What is left in .links is alpha's files (every link count above 1).
    left = os.listdir(mine.store_dir / ".links")
    assert left
    assert all((mine.store_dir / ".links" / name).lstat().st_nlink > 1 for name in left)

"""`xstore mount store`, for real: the mount lists the store's valid paths, shows case-hacked names under
their original names, dumps (with the real `nix-store --dump`) to the NAR Nix has for each path, refuses
writes, and shows paths imported while it is mounted.

The paths are made by Nix at run time (`nix-store --add` of trees with names that differ only in case,
which must not be in the repository) in a chroot store, exported, and imported into an xstore store
created with the case hack on, so that their names on disk carry `~nix~case~hack~N`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import Nix
from tests.integration.fusehelpers import (
    errno_of,
    is_mounted,
    mounted,
    xstore,
)

pytestmark = [pytest.mark.fuse, pytest.mark.usefixtures("fuse_here")]

CASE_HACK = "~nix~case~hack~"


@dataclass(frozen=True)
class NixPath:
    path: str  # /nix/store/...
    base: str
    nar: bytes  # what Nix dumps for it
    export: Path  # a `nix-store --export` stream of it


@dataclass(frozen=True)
class NixPaths:
    root: Path  # the chroot store Nix made them in
    colliding: NixPath  # names that differ only in case
    later: NixPath  # imported while mounted


def write_colliding_tree(root: Path) -> None:
    (root / "include").mkdir(parents=True)
    for name in ("xt_CONNMARK.h", "xt_CONNmark.h", "xt_connmark.h", "xt_DSCP.h", "xt_dscp.h"):
        (root / "include" / name).write_text(f"/* {name} */\n")
    for name in ("README", "ReadMe", "readme"):
        (root / name).write_text(f"{name}\n")
    for name in ("Docs", "docs"):
        (root / name / "Sub").mkdir(parents=True)
        (root / name / "Sub" / "file").write_text(f"in {name}\n")
        (root / name / "sub").mkdir()
    (root / "bin").mkdir()
    (root / "bin" / "Tool").write_text("#!/bin/sh\n")
    (root / "bin" / "Tool").chmod(0o755)
    (root / "bin" / "tool").symlink_to("Tool")
    (root / "empty").mkdir()
    with open(os.path.join(os.fsencode(root), b"caf\xe9"), "wb") as f:
        f.write(b"latin-1 name\n")
    with open(root / "big", "wb") as f:
        f.write(os.urandom(3 << 20))


def add_path(nix: Nix, store_root: Path, tree: Path, export: Path) -> NixPath:
    path = nix.nix_store("--store", store_root, "--add", tree).decode().strip()
    base = path.rsplit("/", 1)[1]
    nar = nix.nix_store("--dump", store_root / "nix" / "store" / base)
    export.write_bytes(nix.nix_store("--store", store_root, "--export", path))
    return NixPath(path, base, nar, export)


@pytest.fixture(scope="module")
def nix_paths(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixPaths:
    base = tmp_path_factory.mktemp("nix-paths")
    root = base / "nixroot"
    colliding = base / "colliding"
    write_colliding_tree(colliding)
    later = base / "later"
    later.mkdir()
    (later / "Hello").write_text("hello\n")
    (later / "hello").write_text("HELLO\n")
    return NixPaths(
        root,
        add_path(nix, root, colliding, base / "colliding.export"),
        add_path(nix, root, later, base / "later.export"),
    )


def init_store(root: Path, case_hack: str = "on") -> None:
    result = xstore("store", "init", "--store", root, "--case-hack", case_hack)
    assert result.returncode == 0, result.stderr


def import_into(root: Path, export: Path) -> None:
    result = xstore("import", "--store", root, "-i", export)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def hacked_store(tmp_path: Path, nix_paths: NixPaths) -> Path:
    root = tmp_path / "store"
    init_store(root, "on")
    import_into(root, nix_paths.colliding.export)
    on_disk = os.listdir(root / "nix" / "store" / nix_paths.colliding.base / "include")
    assert any(CASE_HACK in name for name in on_disk), on_disk  # the hack really is in use
    return root


def test_lists_valid_paths_with_original_names(
    hacked_store: Path, nix_paths: NixPaths, nix: Nix, mountpoint: Path
) -> None:
    base = nix_paths.colliding.base
    with mounted(["store", hacked_store, mountpoint], mountpoint) as m:
        assert os.listdir(m) == [base]
        assert sorted(os.listdir(m / base / "include")) == sorted(
            ["xt_CONNMARK.h", "xt_CONNmark.h", "xt_connmark.h", "xt_DSCP.h", "xt_dscp.h"]
        )
        assert (m / base / "include" / "xt_connmark.h").read_text() == "/* xt_connmark.h */\n"
        assert (m / base / "ReadMe").read_text() == "ReadMe\n"
        assert (m / base / "docs" / "Sub" / "file").read_text() == "in docs\n"
        assert os.readlink(m / base / "bin" / "tool") == "Tool"
        assert (m / base / "caf\udce9").read_bytes() == b"latin-1 name\n"
        # Names as they are on disk are not there.
        on_disk = os.listdir(hacked_store / "nix" / "store" / base / "include")
        hacked = next(n for n in on_disk if CASE_HACK in n)
        with pytest.raises(FileNotFoundError):
            os.lstat(m / base / "include" / hacked)
        # Nix's read-only modes.
        assert os.lstat(m / base / "bin" / "Tool").st_mode & 0o7777 == 0o555
        assert os.lstat(m / base / "README").st_mode & 0o7777 == 0o444
        assert os.lstat(m / base / "docs").st_mode & 0o7777 == 0o555


def test_dump_equals_the_nar_nix_has(
    hacked_store: Path, nix_paths: NixPaths, nix: Nix, mountpoint: Path
) -> None:
    with mounted(["store", hacked_store, mountpoint], mountpoint) as m:
        assert nix.nix_store("--dump", m / nix_paths.colliding.base) == nix_paths.colliding.nar
        # Make the kernel forget what it knows (FORGET requests: the view drops those inodes), then again.
        # Best effort: /proc/sys may be read-only in a container; the dump is checked either way.
        with contextlib.suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        assert nix.nix_store("--dump", m / nix_paths.colliding.base) == nix_paths.colliding.nar


def test_paths_imported_while_mounted_appear(
    hacked_store: Path, nix_paths: NixPaths, nix: Nix, mountpoint: Path
) -> None:
    later = nix_paths.later
    with mounted(["store", hacked_store, mountpoint], mountpoint) as m:
        assert later.base not in os.listdir(m)
        with pytest.raises(FileNotFoundError):
            os.lstat(m / later.base)
        import_into(hacked_store, later.export)
        assert sorted(os.listdir(m)) == sorted([nix_paths.colliding.base, later.base])
        assert nix.nix_store("--dump", m / later.base) == later.nar
        assert sorted(os.listdir(m / later.base)) == ["Hello", "hello"]


def test_unregistered_directories_are_not_shown(
    hacked_store: Path, nix_paths: NixPaths, mountpoint: Path
) -> None:
    stray = hacked_store / "nix" / "store" / ("0" * 32 + "-not-registered")
    stray.mkdir()
    with mounted(["store", hacked_store, mountpoint], mountpoint) as m:
        assert os.listdir(m) == [nix_paths.colliding.base]
        with pytest.raises(FileNotFoundError):
            os.lstat(m / stray.name)
        with pytest.raises(FileNotFoundError):
            os.lstat(m / "nix")


def test_nix_made_store(nix_paths: NixPaths, nix: Nix, mountpoint: Path) -> None:
    with mounted(["store", nix_paths.root, mountpoint], mountpoint) as m:
        listed = os.listdir(m)
        for p in (nix_paths.colliding, nix_paths.later):
            assert p.base in listed
            assert nix.nix_store("--dump", m / p.base) == p.nar


def test_writes_fail_with_erofs(hacked_store: Path, nix_paths: NixPaths, mountpoint: Path) -> None:
    base = nix_paths.colliding.base
    with mounted(["store", hacked_store, mountpoint], mountpoint) as m:
        writes: list[tuple[Callable[..., object], tuple[object, ...]]] = [
            (open, (m / "new", "wb")),
            (open, (m / base / "README", "r+b")),
            (os.mkdir, (m / base / "new-dir",)),
            (os.unlink, (m / base / "README",)),
            (os.chmod, (m / base / "README", 0o644)),
            (os.rename, (m / base / "README", m / base / "README2")),
            (os.truncate, (m / base / "README", 0)),
        ]
        for action, args in writes:
            assert errno_of(action, *args) == errno.EROFS, (action, args)
        assert (m / base / "README").read_text() == "README\n"


def test_missing_store_is_refused_before_mounting(tmp_path: Path, mountpoint: Path) -> None:
    result = xstore("mount", "store", tmp_path / "no-store", mountpoint)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: no store at ")
    assert not is_mounted(mountpoint)

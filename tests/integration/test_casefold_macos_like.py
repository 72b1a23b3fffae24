"""macOS on Linux: the case hack's whole story on a case-insensitive mount (`xstore mount casefold`, apfs
model), with the real Nix 2.8 beside xstore.

- `nix-store --restore` of a NAR with colliding names fails there, as on a Mac; with
  `use-case-hack = true` it succeeds and its dump gives the NAR back.
- Nix's case hack folds ASCII only, so a NAR whose names differ by Unicode normalisation still fails;
  `xstore nar restore` with no options probes the mount, turns the hack on with the apfs fold, and both
  xstore's and Nix's dumps give every NAR back byte for byte.
- A store made on the mount by `xstore store init` (no options) records the hack and the apfs fold;
  `xstore import` of Nix's export of paths full of collisions, then `xstore export`, gives the stream's
  bytes back, and Nix verifies the store's contents (with its case hack, which strips any suffix).
- The store import/export round trip of an ordinary closure (the store tests' fixture) works on the mount
  as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Arg, Nix
from tests.integration.fusehelpers import mounted, require_fuse
from tests.nixstores import (
    CASE_UNICODE_COLLISIONS,
    STORE_OPTIONS,
    NixStore,
    build_case_closure,
    build_nix_store,
)
from xstore.casehack import CASE_HACK_SUFFIX

pytestmark = pytest.mark.fuse

XSTORE: list[str] = [sys.executable, "-X", "dev", "-bb", "-W", "error", "-m", "xstore"]
USE_CASE_HACK = ("--option", "use-case-hack", "true")


def xstore_ok(*args: Arg, input: bytes | None = None) -> bytes:
    """`xstore ARGS...` as a real process, which must succeed; returns its stdout."""
    result = subprocess.run(
        [*XSTORE, *(os.fsdecode(a) for a in args)],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    return result.stdout


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """An apfs-model casefold mount for the module: (mount point, backing directory)."""
    require_fuse()
    base = tmp_path_factory.mktemp("macos-like")
    backing, mountpoint, log = base / "backing", base / "mnt", base / "fuse.log"
    backing.mkdir()
    mountpoint.mkdir()
    env = {**os.environ, "XSTORE_FUSE_LOG": str(log)}
    with mounted(["casefold", backing, mountpoint, "--model", "apfs"], mountpoint, env=env):
        yield mountpoint, backing
    errors = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
    assert errors == []


def fresh(layer: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    """A path that does not exist yet, on the mount and in the backing directory."""
    mount, backing = layer
    assert not (backing / name).exists()
    return mount / name, backing / name


def all_names(top: Path) -> list[bytes]:
    """The name of every entry under `top`, recursively (symlinks not followed)."""
    return [name for _, dirs, files in os.walk(os.fsencode(top)) for name in dirs + files]


# -- NARs --------------------------------------------------------------------------------------------------


def test_nix_restore_without_case_hack_fails(nix: Nix, layer: tuple[Path, Path], nix_fixtures: Path) -> None:
    dest, _ = fresh(layer, "nix-plain")
    message = nix.nix_store_fails("--restore", dest, input=(nix_fixtures / "case.nar").read_bytes())
    assert "File exists" in message


def test_nix_restore_with_case_hack_round_trips(
    nix: Nix, layer: tuple[Path, Path], nix_fixtures: Path
) -> None:
    nar = (nix_fixtures / "case.nar").read_bytes()
    dest, backing = fresh(layer, "nix-hacked")
    nix.nix_store(*USE_CASE_HACK, "--restore", dest, input=nar)
    assert sorted(os.listdir(backing)) == [
        "x",
        "xt_CONNMARK.h",
        "xt_CONNmark.h~nix~case~hack~1",
        "xt_connmark.h~nix~case~hack~2",
    ]
    assert nix.nix_store(*USE_CASE_HACK, "--dump", dest) == nar
    assert xstore_ok("nar", "dump", dest) == nar


def test_nix_case_hack_misses_unicode_collisions(
    nix: Nix, layer: tuple[Path, Path], nix_fixtures: Path
) -> None:
    """Nix folds ASCII only: NFC and NFD spellings of one name are different names to it, but one name
    to the mount (as to APFS), so even with its case hack the restore fails."""
    dest, _ = fresh(layer, "nix-unnormalized")
    message = nix.nix_store_fails(
        *USE_CASE_HACK, "--restore", dest, input=(nix_fixtures / "unnormalized.nar").read_bytes()
    )
    assert "File exists" in message


@pytest.mark.parametrize("fixture", ["case.nar", "unnormalized.nar"])
def test_xstore_restore_detects_the_layer(
    nix: Nix, layer: tuple[Path, Path], nix_fixtures: Path, fixture: str
) -> None:
    nar = (nix_fixtures / fixture).read_bytes()
    dest, backing = fresh(layer, f"xstore-{fixture}")
    summary = json.loads(xstore_ok("nar", "restore", dest, "-i", nix_fixtures / fixture, "--json"))
    assert (summary["caseHack"], summary["fold"]) == (True, "apfs")
    assert summary["filesystem"] == {
        "caseInsensitive": True,
        "unicodeCaseInsensitive": True,
        "normalizationInsensitive": True,
    }
    assert summary["renamed"] == sum(CASE_HACK_SUFFIX in name for name in all_names(backing)) > 0
    assert xstore_ok("nar", "dump", dest) == nar
    assert nix.nix_store(*USE_CASE_HACK, "--dump", dest) == nar


# -- stores ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def case_store(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    """A Nix-made store (on an ordinary directory) whose paths are full of case collisions."""
    return build_case_closure(nix, tmp_path_factory.mktemp("macos-like-case-store") / "root")


@pytest.fixture(scope="module")
def plain_store(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    """The store tests' Nix-made store of an ordinary closure."""
    return build_nix_store(nix, tmp_path_factory.mktemp("macos-like-plain-store") / "root")


def nix_verify_case_hacked(nix: Nix, root: Path) -> None:
    nix.run(
        [nix.nix_store_exe, "--store", root, *STORE_OPTIONS, *USE_CASE_HACK, "--verify", "--check-contents"]
    )


def test_store_import_export_with_collisions(
    nix: Nix, layer: tuple[Path, Path], case_store: NixStore
) -> None:
    closure = case_store.query_requisites(nix, "out")
    stream = case_store.export(nix, *closure)
    root, backing = fresh(layer, "case-store")
    settings = json.loads(xstore_ok("store", "init", "--store", root, "--json"))
    assert (settings["caseHack"], settings["caseFold"]) == (True, "apfs")
    xstore_ok("import", "--store", root, input=stream)
    assert xstore_ok("export", "--store", root, *closure) == stream
    assert xstore_ok("verify", "--store", root, "--check-contents") == b""
    nix_verify_case_hacked(nix, root)
    # Collisions that only a Unicode fold catches were renamed too, in the backing directory.
    tree = backing / case_store.paths["tree"].lstrip("/")
    on_disk = set(os.listdir(os.fsencode(tree)))
    for group in CASE_UNICODE_COLLISIONS:
        first, *later = sorted(group)
        assert first in on_disk
        for n, name in enumerate(later, start=1):
            assert name + CASE_HACK_SUFFIX + str(n).encode() in on_disk


def test_store_import_export_of_a_plain_closure(
    nix: Nix, layer: tuple[Path, Path], plain_store: NixStore
) -> None:
    closure = plain_store.query_requisites(nix, "out")
    stream = plain_store.export(nix, *closure)
    root, _ = fresh(layer, "plain-store")
    xstore_ok("store", "init", "--store", root)
    xstore_ok("import", "--store", root, input=stream)
    assert xstore_ok("export", "--store", root, "-r", plain_store.paths["out"]) == stream
    for path in closure:
        assert xstore_ok("export", "--store", root, path) == plain_store.export(nix, path)
    nix_verify_case_hacked(nix, root)


def test_export_from_a_nix_made_store(nix: Nix, layer: tuple[Path, Path], plain_store: NixStore) -> None:
    """A store that Nix (with its case hack) made on the mount has no xstore settings: xstore must see
    that its filesystem folds case without writing to it, and export the original bytes."""
    closure = plain_store.query_requisites(nix, "out")
    stream = plain_store.export(nix, *closure)
    root, _ = fresh(layer, "nix-made-store")
    nix.nix_store("--store", root, *STORE_OPTIONS, *USE_CASE_HACK, "--import", input=stream)
    nix_verify_case_hacked(nix, root)
    assert xstore_ok("export", "--store", root, "-r", plain_store.paths["out"]) == stream

"""The case hack both ways, against `nix-store --option use-case-hack true`.

For each archive with names colliding under ASCII case folding (Nix's `case.nar`, a generated tree, and the
real `/usr/include/linux`):

- `xstore nar restore --case-hack on` creates exactly the names Nix creates with the case hack on;
- Nix, with the case hack on, dumps xstore's tree back to the original archive;
- xstore dumps Nix's case-hacked tree back to the original archive (the default `auto` strips suffixes).

Plus the failure cases: a suffix that makes two names collide on dump, and a NAR spelling the suffix in
upper case so that a hacked name would land on an existing one (refused like current Nix; Nix 2.8 has no
such check).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.compat.trees import (
    CASE_HACK_ON,
    assert_restored_modes,
    assert_same_bytes,
    describe_tree,
    flat_directory_nar,
    nix_restore_file,
    tree_names,
    xstore_fails,
    xstore_ok,
)
from tests.helpers import CASE_NAR_HACKED, Nix

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "nix-fixtures"
SUFFIX = b"~nix~case~hack~"

# The names `nix-store --restore` gives case.nar with the case hack on (the README's table).


@pytest.fixture(params=["case.nar", "generated", "usr-include-linux"])
def hacked_nar(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """An archive with case collisions, as a file."""
    if request.param == "case.nar":
        return FIXTURES / "case.nar"
    if request.param == "generated":
        nar = tmp_path / "collisions.nar"
        nar.write_bytes(request.getfixturevalue("collision_nar"))
        return nar
    path = request.getfixturevalue("linux_headers_nar")
    assert isinstance(path, Path)
    return path


def _hacked_names(names: list[bytes]) -> list[bytes]:
    return [n for n in names if SUFFIX in n.rsplit(b"/", 1)[-1]]


def test_restore_names_match_nix(nix: Nix, hacked_nar: Path, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "xstore", tmp_path / "nix"
    summary = json.loads(xstore_ok("nar", "restore", ours, "-i", hacked_nar, "--case-hack", "on", "--json"))
    nix_restore_file(nix, theirs, hacked_nar, *CASE_HACK_ON)
    names = tree_names(ours)
    assert names == tree_names(theirs)
    assert describe_tree(ours) == describe_tree(theirs)
    assert_restored_modes(ours)
    hacked = _hacked_names(names)
    assert hacked, "the archive should have needed the case hack"
    assert summary["caseHack"] is True
    assert summary["fold"] == "ascii"
    assert summary["renamed"] == len(hacked)


def test_xstore_tree_dumps_back_with_nix(nix: Nix, hacked_nar: Path, tmp_path: Path) -> None:
    """Nix (case hack on) and xstore (default) both dump xstore's case-hacked tree to the original NAR."""
    ours = tmp_path / "xstore"
    xstore_ok("nar", "restore", ours, "-i", hacked_nar, "--case-hack", "on")
    original = hacked_nar.read_bytes()
    assert_same_bytes(nix.nix_store(*CASE_HACK_ON, "--dump", ours), original)
    assert_same_bytes(xstore_ok("nar", "dump", ours), original)


def test_nix_tree_dumps_back_with_xstore(nix: Nix, hacked_nar: Path, tmp_path: Path) -> None:
    """xstore dumps Nix's case-hacked tree to the original NAR: `auto` (the default) and `on` strip."""
    theirs = tmp_path / "nix"
    nix_restore_file(nix, theirs, hacked_nar, *CASE_HACK_ON)
    original = hacked_nar.read_bytes()
    assert_same_bytes(xstore_ok("nar", "dump", theirs), original)
    assert_same_bytes(xstore_ok("nar", "dump", "--case-hack", "on", theirs), original)
    assert "case-hack suffix" in xstore_fails("nar", "dump", "--case-hack", "off", theirs)


def test_case_nar_names(tmp_path: Path) -> None:
    """The exact names of the README's table."""
    dest = tmp_path / "out"
    xstore_ok("nar", "restore", dest, "-i", FIXTURES / "case.nar", "--case-hack", "on")
    assert tree_names(dest) == CASE_NAR_HACKED


def test_explicit_ascii_fold_is_the_default(tmp_path: Path, collision_nar: bytes) -> None:
    default, ascii_ = tmp_path / "default", tmp_path / "ascii"
    xstore_ok("nar", "restore", default, "--case-hack", "on", input=collision_nar)
    xstore_ok("nar", "restore", ascii_, "--case-hack", "on", "--case-fold", "ascii", input=collision_nar)
    assert describe_tree(default) == describe_tree(ascii_)
    # strcasecmp in the C locale folds ASCII only: e-acute in both cases keeps its name.
    assert b"\xc3\xa9" in tree_names(default)
    assert b"\xc3\x89" in tree_names(default)


def test_linux_headers_real_collision(tmp_path: Path, linux_headers_nar: Path) -> None:
    """/usr/include/linux/netfilter has xt_CONNMARK.h and xt_connmark.h: the later one gets the suffix."""
    dest = tmp_path / "linux"
    xstore_ok("nar", "restore", dest, "-i", linux_headers_nar, "--case-hack", "on")
    names = tree_names(dest)
    assert b"netfilter/xt_CONNMARK.h" in names
    assert b"netfilter/xt_connmark.h~nix~case~hack~1" in names
    assert b"netfilter/xt_connmark.h" not in names


@pytest.mark.parametrize("restored_by", ["xstore", "nix"])
def test_extra_suffix_makes_dump_fail(nix: Nix, tmp_path: Path, restored_by: str) -> None:
    """A file `xt_CONNMARK.h~nix~case~hack~3` added to the restored case.nar un-hacks to a name that is
    already there: both dumps fail with a file name collision, and xstore leaves no output file."""
    tree = tmp_path / "tree"
    if restored_by == "xstore":
        xstore_ok("nar", "restore", tree, "-i", FIXTURES / "case.nar", "--case-hack", "on")
    else:
        nix_restore_file(nix, tree, FIXTURES / "case.nar", *CASE_HACK_ON)
    (tree / "xt_CONNMARK.h~nix~case~hack~3").write_bytes(b"")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    stderr = xstore_fails("nar", "dump", tree, "-o", out_dir / "tree.nar")
    assert "file name collision" in stderr
    assert "xt_CONNMARK.h~nix~case~hack~3" in stderr
    assert os.listdir(out_dir) == []
    assert "file name collision" in nix.nix_store_fails(*CASE_HACK_ON, "--dump", tree)


# Sorted in byte order, as a NAR must be: 'F' < 'f', and 'Foo' is a prefix of the second name.
UPPERCASE_SUFFIX_ENTRIES = [(b"Foo", b"1"), (b"Foo~NIX~CASE~HACK~1", b"2"), (b"foo", b"3")]


def test_uppercase_suffix_collision_refused(tmp_path: Path) -> None:
    """`foo` would be hacked to `foo~nix~case~hack~1`, which folds to the existing `Foo~NIX~CASE~HACK~1`:
    refused with current Nix's message, leaving nothing behind."""
    nar = tmp_path / "upper.nar"
    nar.write_bytes(flat_directory_nar(UPPERCASE_SUFFIX_ENTRIES))
    parent = tmp_path / "parent"
    parent.mkdir()
    stderr = xstore_fails("nar", "restore", parent / "out", "-i", nar, "--case-hack", "on")
    assert (
        "NAR contains file name 'foo' that collides with case-hacked file name 'Foo~NIX~CASE~HACK~1'"
        in stderr
    )
    assert os.listdir(parent) == []


def test_uppercase_suffix_without_case_hack(nix: Nix, tmp_path: Path) -> None:
    """Without the case hack the same archive is valid and restores as it is (Nix agrees)."""
    data = flat_directory_nar(UPPERCASE_SUFFIX_ENTRIES)
    ours, theirs = tmp_path / "xstore", tmp_path / "nix"
    xstore_ok("nar", "restore", ours, "--case-hack", "off", input=data)
    nix.nix_store("--restore", theirs, input=data)
    assert tree_names(ours) == [name for name, _ in UPPERCASE_SUFFIX_ENTRIES]
    assert describe_tree(ours) == describe_tree(theirs)
    assert_same_bytes(nix.nix_store("--dump", ours), data)
    assert_same_bytes(xstore_ok("nar", "dump", ours), data)

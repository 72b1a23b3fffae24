"""`xstore nar dump` and `xstore nar restore` side by side with `nix-store --dump` and `--restore`.

Dumps must be byte-identical to Nix's. Restores are checked in both directions that matter: the tree
xstore restores from a NAR Nix made dumps back (with Nix) to that very NAR, and is the same tree that
`nix-store --restore` makes. Nix's own fixtures are restored as the expectations table in
`tests/data/nix-fixtures/README.md` says: the valid ones as Nix 2.8 restores them, the invalid ones refused
with current Nix's message, leaving nothing behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.compat.trees import (
    BIG_FILE_SIZE,
    File,
    Link,
    Node,
    assert_one_error_line,
    assert_restored_modes,
    assert_same_bytes,
    assert_same_file,
    big_data,
    describe_tree,
    git_tree,
    materialise,
    nix_restore_file,
    nix_store_to_file,
    xstore_fails,
    xstore_inprocess,
    xstore_ok,
)
from tests.helpers import Nix

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "nix-fixtures"

# -- dump ---------------------------------------------------------------------------------------------------


def test_dump_mixed_tree(nix: Nix, mixed_dir: Path, mixed_nar: bytes) -> None:
    """Nested and empty directories, empty/executable/large files, all kinds of symlinks, odd names."""
    assert_same_bytes(xstore_ok("nar", "dump", mixed_dir), mixed_nar)


def test_dump_to_output_file(mixed_dir: Path, mixed_nar: bytes, tmp_path: Path) -> None:
    out = tmp_path / "out.nar"
    assert xstore_ok("nar", "dump", mixed_dir, "-o", out) == b""
    assert_same_file(out, _write(tmp_path / "nix.nar", mixed_nar))
    assert sorted(os.listdir(tmp_path)) == ["nix.nar", "out.nar"]  # no temporary file left


def test_dump_every_case_hack_mode_without_suffixes(mixed_dir: Path, mixed_nar: bytes) -> None:
    """With no suffix in the tree, every case-hack mode dumps the same archive as Nix."""
    for mode in ("on", "off"):
        assert_same_bytes(xstore_ok("nar", "dump", "--case-hack", mode, mixed_dir), mixed_nar)


SINGLE_NODES: dict[str, Node] = {
    "empty-file": File(),
    "one-byte": File(b"x"),
    "eight-bytes": File(b"01234567"),
    "text": File(b"hello, world\n"),
    "executable": File(b"#!/bin/sh\nexit 0\n", executable=True),
    "empty-executable": File(b"", executable=True),
    "big-file": File(big_data(BIG_FILE_SIZE, seed=1)),
    "relative-symlink": Link(b"../some/where"),
    "absolute-symlink": Link(b"/etc/passwd"),
    "dangling-absolute-symlink": Link(b"/nonexistent/xstore"),
    "utf8-symlink": Link("日本語/ü".encode()),
    "non-utf8-symlink": Link(b"\xff\xfe"),
    "empty-directory": {},
}


@pytest.mark.parametrize("kind", sorted(SINGLE_NODES))
def test_dump_single_node(nix: Nix, tmp_path: Path, kind: str) -> None:
    """A NAR whose root is a file, a symlink, or an empty directory."""
    path = tmp_path / "node"
    materialise(path, SINGLE_NODES[kind])
    assert_same_bytes(xstore_ok("nar", "dump", path), nix.nix_store("--dump", path))


def test_dump_nix_fixtures_directory(nix: Nix) -> None:
    """A small real tree: the directory of Nix's fixtures in this repository."""
    assert_same_bytes(xstore_ok("nar", "dump", FIXTURES), nix.nix_store("--dump", FIXTURES))


def test_dump_usr_include(usr_include_nar: Path, tmp_path: Path) -> None:
    """A big real tree: all of /usr/include, some 9000 files."""
    out = tmp_path / "xstore.nar"
    xstore_ok("nar", "dump", "/usr/include", "-o", out)
    assert_same_file(out, usr_include_nar)


def test_dump_exclude_git(nix: Nix, tmp_path: Path) -> None:
    """`--exclude .git` drops `.git` (directory or file) at any depth, and nothing else: the archive is
    the one Nix dumps of a copy of the tree without them."""
    tree = tmp_path / "project"
    materialise(tree, git_tree())
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    assert not (copy / ".git").exists()
    assert not (copy / "src" / "sub" / ".git").exists()
    assert (copy / ".gitignore").exists()
    expected = nix.nix_store("--dump", copy)
    assert_same_bytes(xstore_ok("nar", "dump", "--exclude", ".git", tree), expected)
    assert expected != nix.nix_store("--dump", tree)


def test_dump_exclude_several_globs(nix: Nix, tmp_path: Path) -> None:
    tree = tmp_path / "project"
    materialise(tree, git_tree())
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True, ignore=shutil.ignore_patterns(".git", "*.c"))
    got = xstore_ok("nar", "dump", "--exclude", ".git", "--exclude", "*.c", tree)
    assert_same_bytes(got, nix.nix_store("--dump", copy))


# -- restore ------------------------------------------------------------------------------------------------


def test_restore_mixed_nar_from_stdin(nix: Nix, mixed_nar: bytes, mixed_dir: Path, tmp_path: Path) -> None:
    """The tree xstore restores from Nix's NAR dumps back to it and equals Nix's own restore."""
    ours = tmp_path / "xstore"
    assert xstore_ok("nar", "restore", ours, "--case-hack", "off", input=mixed_nar) == b""
    assert_same_bytes(nix.nix_store("--dump", ours), mixed_nar)
    theirs = tmp_path / "nix"
    nix.nix_store("--restore", theirs, input=mixed_nar)
    assert_same_bytes(nix.nix_store("--dump", theirs), mixed_nar)
    assert describe_tree(ours) == describe_tree(theirs)
    assert describe_tree(ours) == describe_tree(mixed_dir)
    assert_restored_modes(ours)


def test_restore_mixed_nar_from_file_auto(nix: Nix, mixed_nar: bytes, tmp_path: Path) -> None:
    """The default (`--case-hack auto`, probing the destination) restores the same tree here."""
    nar = _write(tmp_path / "in.nar", mixed_nar)
    dest = tmp_path / "out"
    xstore_ok("nar", "restore", dest, "-i", nar)
    assert_same_bytes(nix.nix_store("--dump", dest), mixed_nar)


@pytest.mark.parametrize("kind", ["text", "executable", "empty-file", "big-file", "absolute-symlink"])
def test_restore_single_node(nix: Nix, tmp_path: Path, kind: str) -> None:
    source = tmp_path / "source"
    materialise(source, SINGLE_NODES[kind])
    nar = nix.nix_store("--dump", source)
    ours, theirs = tmp_path / "xstore", tmp_path / "nix"
    xstore_ok("nar", "restore", ours, input=nar)
    nix.nix_store("--restore", theirs, input=nar)
    assert_same_bytes(nix.nix_store("--dump", ours), nar)
    assert describe_tree(ours) == describe_tree(theirs)
    assert_restored_modes(ours)


@pytest.mark.slow
def test_restore_usr_include(nix: Nix, usr_include_nar: Path, tmp_path: Path) -> None:
    """A big real archive: restore /usr/include's NAR and dump it back with Nix."""
    dest = tmp_path / "include"
    xstore_ok("nar", "restore", dest, "-i", usr_include_nar, "--case-hack", "off")
    again = nix_store_to_file(nix, tmp_path / "again.nar", "--dump", dest)
    assert_same_file(again, usr_include_nar)


# -- Nix's fixtures ---------------------------------------------------------------------------------------

# Valid for current Nix and for Nix 2.8 alike.
VALID_FIXTURES = [
    "simple",
    "empty-dir",
    "empty-subdir",
    "regular-one-byte-zero-padding",
    "case",
    "unnormalized",
]


@pytest.mark.parametrize("name", VALID_FIXTURES)
def test_restore_valid_fixture(nix: Nix, tmp_path: Path, name: str) -> None:
    nar = FIXTURES / f"{name}.nar"
    ours, theirs = tmp_path / "xstore", tmp_path / "nix"
    xstore_ok("nar", "restore", ours, "-i", nar, "--case-hack", "off")
    nix_restore_file(nix, theirs, nar)
    assert describe_tree(ours) == describe_tree(theirs)
    assert_same_bytes(nix.nix_store("--dump", ours), nar.read_bytes())
    assert_same_bytes(nix.nix_store("--dump", theirs), nar.read_bytes())
    assert_same_bytes(xstore_ok("nar", "dump", ours), nar.read_bytes())
    assert_restored_modes(ours)


# (fixture, what current Nix says): the table of tests/data/nix-fixtures/README.md.
INVALID_FIXTURES = [
    ("case-collision", "NAR contains file name 'Test~nix~case~hack~1' with the case-hack suffix"),
    ("duplicate", "NAR directory is not sorted"),
    ("dot", "NAR contains invalid file name"),
    ("dotdot", "NAR contains invalid file name"),
    ("empty", "NAR contains invalid file name"),
    ("slash", "NAR contains invalid file name"),
    ("nul-character", "NAR contains invalid file name"),
    ("executable-after-contents", "expected tag ')', got 'executable'"),
    ("name-after-node", "expected tag 'name'"),
    ("invalid-tag-instead-of-contents", "expected tag 'contents', got 'AAAAAAAA'"),
    ("regular-one-byte-non-zero-padding", "non-zero padding"),
    ("regular-truncated-large-contents", "unexpected end of file"),
    ("regular-truncated-padding", "unexpected end of file"),
]


@pytest.mark.parametrize("case_hack", ["on", "off"])
@pytest.mark.parametrize(("name", "message"), INVALID_FIXTURES)
def test_restore_invalid_fixture(tmp_path: Path, name: str, message: str, case_hack: str) -> None:
    """Refused with current Nix's message, exit status 1, and no destination or staging left behind."""
    parent = tmp_path / "parent"
    parent.mkdir()
    stderr = xstore_fails(
        "nar", "restore", parent / "out", "-i", FIXTURES / f"{name}.nar", "--case-hack", case_hack
    )
    assert message in stderr
    assert os.listdir(parent) == []


@pytest.mark.parametrize(("name", "message"), INVALID_FIXTURES)
def test_restore_invalid_fixture_from_stdin(tmp_path: Path, name: str, message: str) -> None:
    """The same from stdin, in-process (the subprocess runs above cover exit status and stderr)."""
    parent = tmp_path / "parent"
    parent.mkdir()
    result = xstore_inprocess("nar", "restore", parent / "out", input=(FIXTURES / f"{name}.nar").read_bytes())
    assert result.exit_code == 1
    stderr = result.stderr.decode()
    assert_one_error_line(stderr)
    assert message in stderr
    assert os.listdir(parent) == []


# Those of the invalid fixtures that even the lenient Nix 2.8 refuses.
REFUSED_BY_NIX_2_8 = [
    "duplicate",
    "dot",
    "dotdot",
    "empty",
    "slash",
    "nul-character",
    "name-after-node",
    "invalid-tag-instead-of-contents",
    "regular-one-byte-non-zero-padding",
    "regular-truncated-large-contents",
    "regular-truncated-padding",
]


@pytest.mark.parametrize("name", REFUSED_BY_NIX_2_8)
def test_nix_also_refuses(nix: Nix, tmp_path: Path, name: str) -> None:
    """Where Nix 2.8 is strict already, it agrees with xstore that the archive is invalid."""
    assert "error" in nix.nix_store_fails(
        "--restore", tmp_path / "out", input=(FIXTURES / f"{name}.nar").read_bytes()
    )


def test_restore_refuses_trailing_data(tmp_path: Path, mixed_nar: bytes) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    stderr = xstore_fails("nar", "restore", parent / "out", input=mixed_nar + b"\0" * 8)
    assert "after the end of the archive" in stderr
    assert os.listdir(parent) == []


def test_restore_never_overwrites(tmp_path: Path) -> None:
    dest = tmp_path / "exists"
    dest.mkdir()
    (dest / "keep").write_bytes(b"keep")
    stderr = xstore_fails("nar", "restore", dest, "-i", FIXTURES / "simple.nar")
    assert "already exists" in stderr
    assert sorted(os.listdir(tmp_path)) == ["exists"]
    assert os.listdir(dest) == ["keep"]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path

"""`xstore hash` side by side with `nix hash path`, `nix hash file` and `nix-hash`, as real processes; and
`xstore casehack scan` on a tree Nix case-hacked.

Both tools take many paths at once and print one hash a line, so each algorithm and format costs one
process per tool whatever the number of trees. The trees: generated ones (every kind of node, odd names,
a file of a few MiB), single files and symlinks, and a real one (/usr/include/linux). Hashing a case-hacked
tree strips the suffixes, as Nix does with `use-case-hack`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.compat.trees import (
    CASE_HACK_ON,
    LINUX_HEADERS,
    File,
    Link,
    Node,
    git_tree,
    materialise,
    nix_restore_file,
    run_xstore,
    xstore_fails,
    xstore_ok,
)
from tests.helpers import Arg, Nix, require_or_skip

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "nix-fixtures"


@pytest.fixture(scope="module")
def hash_paths(mixed_dir: Path, collision_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    require_or_skip(
        LINUX_HEADERS.is_dir(), f"{LINUX_HEADERS} does not exist (apt-get install linux-libc-dev)"
    )
    base = tmp_path_factory.mktemp("hash")
    singles: dict[str, Node] = {
        "file": File(b"hello\n"),
        "empty-file": File(),
        "executable": File(b"#!/bin/sh\n", executable=True),
        "symlink": Link(b"/nonexistent/target"),
        "empty-dir": {},
        "project": git_tree(),
    }
    for name, node in singles.items():
        materialise(base / name, node)
    return [mixed_dir, collision_dir, LINUX_HEADERS, FIXTURES, *(base / name for name in singles)]


def _lines(out: bytes) -> list[str]:
    return out.decode("ascii").splitlines()


# (xstore options, the Nix command printing the same for the paths given)
NixCommand = Callable[[Nix, list[Path]], bytes]


def _case(options: list[str], command: NixCommand) -> tuple[list[str], NixCommand]:
    return options, command


HASH_CASES = [
    _case([], lambda nix, ps: nix.nix_cmd("hash", "path", *ps)),
    _case(["--format", "sri"], lambda nix, ps: nix.nix_cmd("hash", "path", "--sri", *ps)),
    _case(["--format", "nix32"], lambda nix, ps: nix.nix_hash("--type", "sha256", "--base32", *ps)),
    _case(["--format", "base32"], lambda nix, ps: nix.nix_cmd("hash", "path", "--base32", *ps)),
    _case(["--format", "base16"], lambda nix, ps: nix.nix_hash("--type", "sha256", *ps)),
    _case(["--format", "base64"], lambda nix, ps: nix.nix_cmd("hash", "path", "--base64", *ps)),
    _case(["--type", "sha512"], lambda nix, ps: nix.nix_cmd("hash", "path", "--type", "sha512", *ps)),
    _case(["--type", "sha512", "--format", "base16"], lambda nix, ps: nix.nix_hash("--type", "sha512", *ps)),
    _case(
        ["--type", "sha512", "--format", "nix32"],
        lambda nix, ps: nix.nix_hash("--type", "sha512", "--base32", *ps),
    ),
    _case(["--type", "sha1"], lambda nix, ps: nix.nix_cmd("hash", "path", "--type", "sha1", *ps)),
    _case(["--type", "sha1", "--format", "base16"], lambda nix, ps: nix.nix_hash("--type", "sha1", *ps)),
    _case(
        ["--type", "sha1", "--format", "nix32"],
        lambda nix, ps: nix.nix_hash("--type", "sha1", "--base32", *ps),
    ),
    _case(["--type", "md5"], lambda nix, ps: nix.nix_cmd("hash", "path", "--type", "md5", *ps)),
    _case(["--type", "md5", "--format", "base16"], lambda nix, ps: nix.nix_hash("--type", "md5", *ps)),
    _case(
        ["--type", "md5", "--format", "base64"],
        lambda nix, ps: nix.nix_cmd("hash", "path", "--type", "md5", "--base64", *ps),
    ),
]


@pytest.mark.parametrize(
    ("options", "nix_command"), HASH_CASES, ids=[" ".join(options) or "default" for options, _ in HASH_CASES]
)
def test_hash_path(nix: Nix, hash_paths: list[Path], options: list[str], nix_command: NixCommand) -> None:
    expected = _lines(nix_command(nix, hash_paths))
    assert len(expected) == len(hash_paths)
    args: list[Arg] = ["hash", "path", *options, *hash_paths]
    assert _lines(xstore_ok(*args)) == expected


def test_hash_path_is_the_hash_of_the_dump(nix: Nix, mixed_dir: Path, mixed_nar: bytes) -> None:
    """`hash path` is the SHA-256 of the archive `nix-store --dump` prints."""
    digest = base64.b64encode(hashlib.sha256(mixed_nar).digest()).decode()
    assert _lines(xstore_ok("hash", "path", mixed_dir)) == [f"sha256-{digest}"]


def test_hash_file(nix: Nix, tmp_path: Path, mixed_nar: bytes) -> None:
    nar = tmp_path / "mixed.nar"
    nar.write_bytes(mixed_nar)
    files = [nar, *sorted(FIXTURES.glob("*.nar"))]
    assert _lines(xstore_ok("hash", "file", *files)) == _lines(nix.nix_cmd("hash", "file", *files))
    assert _lines(xstore_ok("hash", "file", "--type", "sha1", "--format", "nix32", *files)) == _lines(
        nix.nix_cmd("hash", "file", "--type", "sha1", "--base32", *files)
    )


@pytest.mark.parametrize("source", ["case.nar", "collisions"])
def test_hash_of_case_hacked_tree(nix: Nix, tmp_path: Path, collision_nar: bytes, source: str) -> None:
    """A tree Nix restored with the case hack hashes as its original archive, with xstore's default
    (`--case-hack auto` strips suffixes) and with Nix's `use-case-hack`; `--case-hack off` refuses."""
    if source == "case.nar":
        nar = FIXTURES / "case.nar"
    else:
        nar = tmp_path / "collisions.nar"
        nar.write_bytes(collision_nar)
    tree = tmp_path / "tree"
    nix_restore_file(nix, tree, nar, *CASE_HACK_ON)
    expected = _lines(nix.nix_cmd("hash", "file", "--base32", nar))
    assert _lines(xstore_ok("hash", "path", "--format", "nix32", tree)) == expected
    assert _lines(nix.nix_cmd(*CASE_HACK_ON, "hash", "path", "--base32", tree)) == expected
    assert "case-hack suffix" in xstore_fails("hash", "path", "--case-hack", "off", tree)


def test_hash_errors(tmp_path: Path) -> None:
    assert "unknown hash algorithm" in xstore_fails("hash", "path", "--type", "sha3", FIXTURES, status=2)
    assert "unknown hash format" in xstore_fails("hash", "path", "--format", "hex", FIXTURES, status=2)
    assert "No such file" in xstore_fails("hash", "path", tmp_path / "missing")


# -- casehack scan on trees Nix made ------------------------------------------------------------------------


def test_scan_of_nix_hacked_tree_equals_scan_of_archive(nix: Nix, tmp_path: Path) -> None:
    """`casehack scan` un-hacks names in a tree: a tree Nix restored from case.nar with the case hack
    reports the same collisions as case.nar itself."""
    tree = tmp_path / "tree"
    nix_restore_file(nix, tree, FIXTURES / "case.nar", *CASE_HACK_ON)
    from_tree = _scan(tree)
    from_nar = _scan(FIXTURES / "case.nar")
    del from_tree["path"], from_nar["path"]
    assert from_tree == from_nar
    assert from_nar["clean"] is False


def _scan(path: Path) -> dict[str, object]:
    result = run_xstore("casehack", "scan", "--json", path)
    assert result.returncode == 3, result.stderr  # findings reported
    report = json.loads(result.stdout)
    assert isinstance(report, dict)
    return report

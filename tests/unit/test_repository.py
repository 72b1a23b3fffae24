"""The repository itself must check out on macOS: no two tracked paths that a case-insensitive or
normalisation-insensitive filesystem (APFS, HFS+) takes for one.

A clone on such a filesystem silently keeps only one of two colliding files and shows the other as
modified. Tests that need colliding names build them at run time in a temporary directory instead.

The folds here are written out independently of `xstore.casehack`, so that a mistake there cannot hide a
collision here: Unicode full case folding over canonical decomposition (what APFS approximates), and
canonical equivalence alone (what a case-sensitive APFS volume still folds).
"""

from __future__ import annotations

import shutil
import subprocess
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def caseless(path: str) -> str:
    """Unicode canonical caseless form (NFD of the case folding of the NFD)."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", path).casefold())


def canonical(path: str) -> str:
    """Canonical decomposition only: NFC and NFD spellings of one text are one key."""
    return unicodedata.normalize("NFD", path)


def with_parents(paths: Iterable[str]) -> set[str]:
    """The paths and every directory above them: `Foo/a` and `foo/b` collide through their directory."""
    out: set[str] = set()
    for path in paths:
        parts = path.split("/")
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return out


def collisions(paths: Iterable[str], key: Callable[[str], str]) -> list[list[str]]:
    """Groups (sorted) of distinct paths that share `key`, sorted by their first member."""
    groups: dict[str, set[str]] = defaultdict(set)
    for path in with_parents(paths):
        groups[key(path)].add(path)
    return sorted(sorted(group) for group in groups.values() if len(group) > 1)


def tracked_paths() -> list[bytes]:
    """`git ls-files` of this checkout, as raw bytes; skips (with the reason) when there is none."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git not found on PATH: cannot list the tracked files")
    top = subprocess.run(
        [git, "-C", str(REPO_ROOT), "rev-parse", "--show-toplevel"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    if top.returncode != 0:
        reason = top.stderr.decode("utf-8", "replace").strip()
        pytest.skip(f"{REPO_ROOT} is not a git checkout ({reason})")
    toplevel = top.stdout.decode().strip()
    if Path(toplevel).resolve() != REPO_ROOT:
        pytest.skip(f"{REPO_ROOT} is not the top of a git checkout (it is inside {toplevel})")
    listed = subprocess.run(
        [git, "-C", str(REPO_ROOT), "ls-files", "-z"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=True,
    )
    paths = [p for p in listed.stdout.split(b"\0") if p]
    assert paths, "git ls-files listed nothing"
    return paths


def decoded(paths: list[bytes]) -> list[str]:
    not_utf8 = [p for p in paths if not _is_utf8(p)]
    assert not not_utf8, f"tracked paths that are not UTF-8 (macOS cannot store them): {not_utf8}"
    return [p.decode("utf-8") for p in paths]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_no_tracked_paths_differ_only_in_case() -> None:
    groups = collisions(decoded(tracked_paths()), caseless)
    assert not groups, (
        "tracked paths that differ only in case collide on a case-insensitive filesystem (macOS); "
        "build such names at run time in a temporary directory instead:\n"
        + "\n".join("  " + "  ".join(repr(p) for p in group) for group in groups)
    )


def test_no_tracked_paths_differ_only_in_unicode_normalisation() -> None:
    groups = collisions(decoded(tracked_paths()), canonical)
    assert not groups, (
        "tracked paths that differ only in Unicode normalisation (NFC/NFD) collide on APFS and HFS+:\n"
        + "\n".join("  " + "  ".join(ascii(p) for p in group) for group in groups)
    )


def test_the_checks_find_what_they_look_for() -> None:
    """The detectors themselves, on made-up paths (none of these exist in the repository)."""
    assert collisions(["README.md", "readme.md", "src/a"], caseless) == [["README.md", "readme.md"]]
    assert collisions(["Docs/a", "docs/b"], caseless) == [["Docs", "docs"]]
    assert collisions(["stra\u00dfe", "STRASSE"], caseless) == [["STRASSE", "stra\u00dfe"]]
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    assert collisions([nfc, nfd], canonical) == [sorted([nfc, nfd])]
    assert collisions([nfc, "CAF\u00c9"], canonical) == []  # case alone is not a normalisation difference
    assert collisions(["a/b", "a/c", "b"], caseless) == []

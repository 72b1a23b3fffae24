"""`verify`: check that every registered path exists and still has its registered contents.

Unlike Nix 2.8, which silently drops the rows of missing paths, this only reports: a verify changes
nothing. Nix: local-store.cc (`verifyStore`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from xstore.errors import StoreError, XstoreError
from xstore.hashing import HashAlgorithm, HashFormat, HashSink
from xstore.store import LocalStore


@dataclass(frozen=True, slots=True)
class Problem:
    """Something `verify` found wrong: `path` is the row's path as the database holds it."""

    path: str
    kind: str  # "missing" | "modified" | "unreadable" | "corrupt-row"
    detail: str


def verify(
    store: LocalStore, *, check_contents: bool = False, progress: Callable[[int], None] | None = None
) -> list[Problem]:
    """Check that every valid path exists and, with `check_contents`, that its NAR (dumped with the
    store's case-hack setting) still has the registered hash and size (only the hash where the database
    does not know the size). Changes nothing: unlike Nix 2.8, a missing path's row is reported, never
    deleted. A row that cannot be read is reported, and the others are checked all the same."""
    from xstore.nar.dump import dump_path

    problems = [
        Problem(text, "corrupt-row", f"the database has a row for '{text}', which is not a valid store path")
        for text in store.invalid_rows()
    ]
    case_hack = store.settings.case_hack
    for n, path in enumerate(store.all_paths()):
        if progress is not None:
            progress(n + 1)
        real = store.real_path(path)
        try:
            os.lstat(real)
        except FileNotFoundError:
            problems.append(Problem(path.path, "missing", f"path '{path}' is registered but missing"))
            continue
        if not check_contents:
            continue
        try:
            info = store.require(path)
        except StoreError as e:
            problems.append(Problem(path.path, "corrupt-row", str(e)))
            continue
        hasher = HashSink(HashAlgorithm.SHA256)
        try:
            size = dump_path(real, hasher.update, case_hack=case_hack)
        except (OSError, XstoreError) as e:
            problems.append(Problem(path.path, "unreadable", f"path '{path}' cannot be read: {e}"))
            continue
        if hasher.digest() != info.nar_hash or (info.nar_size and size != info.nar_size):
            problems.append(
                Problem(
                    path.path,
                    "modified",
                    f"path '{path}' was modified: expected {info.nar_hash_sri()} "
                    f"({info.nar_size or 'unknown'} bytes), "
                    f"got {hasher.format(HashFormat.SRI)} ({size} bytes)",
                )
            )
    return problems

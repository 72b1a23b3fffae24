"""`verify`: check that every registered path exists and still has its registered contents.

Unlike Nix 2.8, which silently drops the rows of missing paths, this only reports: a verify changes
nothing. Nix: local-store.cc (`verifyStore`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from xstore.errors import XstoreError
from xstore.hashing import HashAlgorithm, HashFormat, HashSink
from xstore.store import LocalStore
from xstore.storepath import StorePath


@dataclass(frozen=True, slots=True)
class Problem:
    """Something `verify` found wrong with a valid path."""

    path: StorePath
    kind: str  # "missing" | "modified" | "unreadable"
    detail: str


def verify(
    store: LocalStore, *, check_contents: bool = False, progress: Callable[[int], None] | None = None
) -> list[Problem]:
    """Check that every valid path exists and, with `check_contents`, that its NAR (dumped with the
    store's case-hack setting) still has the registered hash and size. Changes nothing: unlike Nix
    2.8, a missing path's row is reported, never deleted."""
    from xstore.nar.dump import dump_path

    problems = []
    case_hack = store.settings.case_hack
    for n, path in enumerate(store.all_paths()):
        real = store.real_path(path)
        try:
            os.lstat(real)
        except FileNotFoundError:
            problems.append(Problem(path, "missing", f"path '{path}' is registered but missing"))
            continue
        if check_contents:
            info = store.require(path)
            hasher = HashSink(HashAlgorithm.SHA256)
            try:
                size = dump_path(real, hasher.update, case_hack=case_hack)
            except (OSError, XstoreError) as e:
                problems.append(Problem(path, "unreadable", f"path '{path}' cannot be read: {e}"))
                continue
            if hasher.digest() != info.nar_hash or size != info.nar_size:
                problems.append(
                    Problem(
                        path,
                        "modified",
                        f"path '{path}' was modified: expected {info.nar_hash_sri()} "
                        f"({info.nar_size} bytes), got {hasher.format(HashFormat.SRI)} ({size} bytes)",
                    )
                )
        if progress is not None:
            progress(n + 1)
    return problems



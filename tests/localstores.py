"""Local stores for tests, built without Nix: synthetic paths written into the store directory,
canonicalised, hashed with xstore's own dump and registered directly (`LocalStore.register`), plus the
views of a store the assertions compare (rows, leftovers, what another process sees) and readers that
split input everywhere. Everything compared with Nix itself uses `tests/nixstores.py` instead."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xstore.casehack import CaseHackMode
from xstore.fsops import canonicalise
from xstore.import_export import export_paths
from xstore.nar.dump import dump_path
from xstore.store import LocalStore
from xstore.storeapi import PathInfo
from xstore.storepath import StorePath, parse_store_path


def sp(hash_prefix: str, name: str) -> StorePath:
    """A store path whose hash part starts with `hash_prefix` (nix32 characters), padded with 0."""
    return parse_store_path(f"/nix/store/{hash_prefix.ljust(32, '0')}-{name}")


def dummy(path: StorePath, *references: StorePath) -> PathInfo:
    """A registration with a made-up hash (for what needs only the database)."""
    return PathInfo(path, hashlib.sha256(path.path.encode()).digest(), 120, tuple(sorted(references)))


def add_path(
    store: LocalStore,
    path: StorePath,
    files: dict[bytes, bytes],
    *references: StorePath,
    deriver: StorePath | None = None,
) -> PathInfo:
    """Write `files` (relative path -> contents; a path ending in `/` is a directory, contents starting
    with `->` a symlink) as `path` in the store, canonicalise, hash and register it."""
    real = store.real_path(path)
    os.mkdir(real)
    for relative, data in sorted(files.items()):
        where = os.path.join(real, relative)
        if relative.endswith(b"/"):
            os.makedirs(where, exist_ok=True)
        elif data.startswith(b"->"):
            os.symlink(data[2:], where)
        else:
            os.makedirs(os.path.dirname(where), exist_ok=True)
            with open(where, "wb") as f:
                f.write(data)
            if data.startswith(b"#!"):
                os.chmod(where, 0o755)  # noqa: S103 (an executable in a tree to be canonicalised)
    canonicalise(real)
    digest = hashlib.sha256()
    size = dump_path(real, digest.update, case_hack=store.settings.case_hack)
    info = PathInfo(path, digest.digest(), size, tuple(sorted(references)), deriver)
    store.register(info)
    return info


def export_bytes(store: LocalStore, paths: list[StorePath]) -> bytes:
    parts: list[bytes] = []
    export_paths(store, paths, parts.append)
    return b"".join(parts)


def reader(data: bytes, chunk: int = 7) -> Iterator[bytes]:
    for at in range(0, len(data), chunk):
        yield data[at : at + chunk]


def read_from(data: bytes) -> Callable[[int], bytes]:
    """A `read(n)` over `data` handing out small chunks (framing split everywhere)."""
    chunks = reader(data)
    return lambda _n: next(chunks, b"")


def rows(store: LocalStore) -> list[tuple[object, ...]]:
    """Registrations without the registration time, and references by path."""
    valid = store.db.execute(
        "select path, hash, deriver, narSize, ultimate, sigs, ca from ValidPaths order by path"
    ).fetchall()
    refs = store.db.execute(
        "select a.path, b.path from Refs join ValidPaths a on referrer = a.id "
        "join ValidPaths b on reference = b.id order by 1, 2"
    ).fetchall()
    return [*valid, *refs]


def store_entries(store: LocalStore) -> list[str]:
    """The store directory's entries, but for this store object's own scratch directory while it is
    empty (it lives, locked, until the store is closed; anything left in it is listed)."""
    scratch = store.scratch_dir
    names = sorted(os.listdir(store.real_store_dir))
    if scratch is not None and not os.listdir(scratch):
        names.remove(os.path.basename(os.fsdecode(scratch)))
    return names


def leftovers(store: LocalStore) -> list[str]:
    return [
        n for n in store_entries(store) if n.startswith(".xstore") or n.endswith((".lock", "-xstore-tmp"))
    ]


def valid_elsewhere(store: LocalStore, paths: list[StorePath]) -> list[StorePath]:
    """Which of `paths` another connection to the store's database sees as valid (committed)."""
    db = sqlite3.connect(store.db_dir / "db.sqlite")
    try:
        query = "select 1 from ValidPaths where path = ?"
        return [p for p in paths if db.execute(query, (p.path,)).fetchone()]
    finally:
        db.close()


def unlocked(store: LocalStore, paths: list[StorePath]) -> bool:
    """Whether another process could take the lock of every one of `paths` now."""
    with LocalStore(store.root) as other:  # another store object: another process, as far as locks go
        for path in paths:
            lock = other.try_lock(path)
            if lock is None:
                return False
            lock.release()
    return True


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore.create(tmp_path / "root", case_hack=CaseHackMode.OFF) as s:
        yield s


@pytest.fixture
def filled(store: LocalStore) -> list[StorePath]:
    """Four real paths in `store`: lib <- app (which refers to itself too), doc, and a file."""
    lib, app_, doc, single = sp("9a", "lib"), sp("3b", "app"), sp("zz", "doc"), sp("00", "file")
    add_path(store, lib, {b"lib/": b"", b"lib/libx.so": b"\x7fELF" + bytes(300)})
    add_path(
        store,
        app_,
        {
            b"bin/app": b"#!/bin/sh\nexec " + store.real_path(lib) + b"\n",
            b"share/": b"",
            b"link": b"->bin/app",
        },
        lib,
        app_,
        deriver=sp("dd", "app.drv"),
    )
    add_path(store, doc, {b"README": b"doc\n", b"Readme": b"other\n"})
    single_real = store.real_path(single)
    with open(single_real, "wb") as f:
        f.write(b"hello\n")
    canonicalise(single_real)
    digest = hashlib.sha256()
    size = dump_path(single_real, digest.update)
    store.register(PathInfo(single, digest.digest(), size, ()))
    return [lib, app_, doc, single]

"""Repair: fetch a missing or modified path of a local store again, from any source, and put it in place.

A source is any store (`stores.open_store`: another local store, a binary cache, an ssh store, the
daemon) or an export file (`exportstore.ExportFileStore`). For each path to repair, the sources are
tried in order: one that does not have the path, or has it with another NAR hash than the one
registered here, is passed over (and said so); from the first that has it, the NAR streams into a private
directory inside the store, unpacked with the store's case hack and hashed on the way, exactly as an
import would (`LocalStore.temp_dir` and `TreeWriter`, as in `store_add.PathAdder`). Only a copy whose
hash and size are the registered ones goes in.

Putting it in place, under the path's lock and with the path held as a temporary root: where Linux
allows, the new tree and the damaged one swap names in one step (`renameat2(RENAME_EXCHANGE)`), so the
path never goes missing; elsewhere the damaged tree is moved aside and the new one renamed in right
after. The registration is not touched: it is the truth the copy was checked against. The repaired path
is then dumped and hashed again, and must verify.

Nix: local-store.cc (`verifyStore` with repair, `repairPath`), which substitutes from its substituters.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from xstore.errors import RepairError, XstoreError
from xstore.fsops import canonicalise, exchange, remove_tree
from xstore.hashing import HashAlgorithm, HashFormat, HashSink, format_digest
from xstore.nar.drive import iter_events
from xstore.nar.parser import NarParser
from xstore.nar.restore import TreeWriter
from xstore.store import LocalStore
from xstore.storeapi import PathInfo, Read, Sink, Store, pipe_nar
from xstore.storepath import StorePath


@dataclass(slots=True)
class Repaired:
    """The outcome for one path: `source` it was fetched from (None when it was intact)."""

    path: StorePath
    source: str | None
    looked: list[str] = field(default_factory=list)  # sources passed over, and why


def open_source(text: str) -> Store:
    """A source named on the command line: an existing file is an export file (compressed or not);
    anything else is a store URL."""
    if os.path.isfile(text):
        from xstore.exportstore import ExportFileStore

        return ExportFileStore(text)
    from xstore.stores import open_store

    return open_store(text)


def intact(store: LocalStore, path: StorePath, info: PathInfo | None = None) -> bool:
    """Whether `path` is present with its registered NAR hash and size."""
    from xstore.nar.dump import dump_path

    info = info or store.require(path)
    real = store.real_path(path)
    if not os.path.lexists(real):
        return False
    hasher = HashSink(HashAlgorithm.SHA256)
    try:
        size = dump_path(real, hasher.update, case_hack=store.settings.case_hack)
    except (OSError, XstoreError):
        return False
    return hasher.digest() == info.nar_hash and size == info.nar_size


def _sri(digest: bytes) -> str:
    return format_digest(HashAlgorithm.SHA256, digest, HashFormat.SRI)


def repair_path(
    store: LocalStore, path: StorePath, sources: Iterable[Store], *, force: bool = False
) -> Repaired:
    """Repair `path` (valid in `store`) from the first of `sources` that has it with its registered NAR
    hash. An intact path is left alone unless `force`. Raises `RepairError` saying where it looked and
    why each source would not do; `InvalidPathError` if the path is not valid."""
    info = store.require(path)
    store.add_temp_root(path)
    if not force and intact(store, path, info):
        return Repaired(path, None)
    looked: list[str] = []
    for source in sources:
        where = source.describe()
        try:
            theirs = source.query_path_info(path)
            if theirs is None:
                looked.append(f"{where} does not have it")
                continue
            if theirs.nar_hash != info.nar_hash:
                looked.append(f"{where} has it with another NAR hash ({theirs.nar_hash_sri()})")
                continue
            _fetch_and_swap(store, info, source)
        except XstoreError as e:
            looked.append(f"{where}: {e}")
            continue
        if not intact(store, path, info):
            raise RepairError(f"'{path}' does not verify after its repair from {where}", path=path.path)
        return Repaired(path, where, looked)
    if not looked:
        raise RepairError(
            f"cannot repair '{path}': no source to fetch it from (give --from with a store URL or an export "
            "file)",
            path=path.path,
        )
    raise RepairError(f"cannot repair '{path}': " + "; ".join(looked), path=path.path)


def _fetch_and_swap(store: LocalStore, info: PathInfo, source: Store) -> None:
    from xstore.casehack import CaseHackMode

    settings = store.settings
    with store.temp_dir() as tmp:
        dest = tmp + b"/nar"
        writer = TreeWriter(
            dest, case_hack=CaseHackMode.ON if settings.case_hack else CaseHackMode.OFF, fold=settings.fold
        )
        hasher = hashlib.sha256()
        parser = NarParser(hasher=hasher)

        def produce(sink: Sink) -> None:
            source.nar_from_path(info.path, sink)

        def consume(read: Read) -> None:
            for event in iter_events(read, parser):
                writer.handle(event)
            if read(1) or parser.unused_data:
                raise RepairError(f"unexpected data after the NAR of '{info.path}'", path=info.path.path)

        try:
            pipe_nar(produce, consume)
            if hasher.digest() != info.nar_hash or parser.offset != info.nar_size:
                raise RepairError(
                    f"the NAR received has hash {_sri(hasher.digest())} ({parser.offset} bytes), not the "
                    f"registered {info.nar_hash_sri()} ({info.nar_size} bytes)",
                    path=info.path.path,
                )
            writer.commit()
        finally:
            writer.abort()
        canonicalise(dest)
        with store.lock(info.path):
            _swap(store.real_path(info.path), dest)


def _writable_top(path: bytes) -> int | None:
    """Give the owner write permission on the directory `path` (a directory moving to another parent
    needs it, to update its ".."); returns its old mode, or None if it was not a directory."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    return stat.S_IMODE(st.st_mode)


def _swap(real: bytes, new: bytes) -> None:
    """Put the tree `new` at `real`, whatever is there now going to `new`'s place (removed after by the
    caller's temporary directory)."""
    _writable_top(new)
    old_mode = _writable_top(real)
    try:
        if os.path.lexists(real):
            if not exchange(new, real):
                aside = new + b".old"
                os.rename(real, aside)
                os.rename(new, real)
        else:
            os.rename(new, real)
    except BaseException:
        if old_mode is not None and os.path.lexists(real):
            with contextlib.suppress(OSError):
                os.chmod(real, old_mode)
        raise
    # Read-only and timeless again (the top directory was opened up for the move).
    canonicalise(real)
    for leftover in (new, new + b".old"):
        remove_tree(leftover)

"""The one way into a local store: a NAR unpacked into a private directory, checked, moved, registered.

Every source of paths goes through `PathAdder`: an export stream (metadata after the NAR), a binary
cache's narinfo, the serve and daemon protocols and `copy` (metadata before it). The steps:

1. A private temporary directory inside the real store directory, locked so that a later clean-up can
   tell it from one a killed process left (`LocalStore.temp_dir`).
2. The NAR's events go into a `TreeWriter` there, with the store's case hack; the caller's parser hashes
   the NAR on the way (one read of every byte).
3. `commit(info, on_registered)`: the NAR hash and size must equal the metadata announced before the
   NAR, when there was any; every reference must be valid or be the path itself. Nothing is valid
   before these checks.
4. The path and its references are held as temporary roots (Nix's protocol, `temproots.py`), so a
   garbage collection running meanwhile keeps them. Under the path's lock: a path that became valid
   meanwhile is left alone (its hash must agree); anything occupying the path's place that is not valid
   is removed (a killed earlier import); the tree is renamed into place and registered in one SQLite
   transaction. It is canonical by then (read-only, mtime 1): the writer made each node so as it was
   completed, all but a root directory, which is made so once moved. A failure after the rename removes
   the tree again. The caller's `on_registered()` is then told, before the lock is released (a
   protocol's confirmation waits for the registration alone).

An error or an interrupt at any point leaves nothing: no temporary directory, no lock file, no row.

Nix: local-store.cc (`addToStore(info, source)`, `registerValidPaths`), export-import.cc.
"""

from __future__ import annotations

import hashlib
import os

from xstore.casehack import CaseHackMode
from xstore.errors import HashMismatchError, InvalidPathError, TrailingDataError
from xstore.fsops import canonicalise
from xstore.hashing import HashAlgorithm, HashFormat, format_digest
from xstore.nar.drive import iter_events
from xstore.nar.events import Event
from xstore.nar.parser import NarParser
from xstore.nar.restore import TreeWriter
from xstore.storeapi import PathInfo, Read

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from xstore.store import LocalStore, StoreSettings


def _sri(digest: bytes) -> str:
    return format_digest(HashAlgorithm.SHA256, digest, HashFormat.SRI)


class PathAdder:
    """One path on its way into `store`.

    Feed the NAR's events to `handle()`, then call `commit(info)` with the path's final metadata (its
    `nar_hash` and `nar_size` as measured), or `abort()`. `expected`, when the metadata came before
    the NAR, is checked against the measured hash and size at commit, and its references up front, so
    a path that cannot be registered fails before its NAR is read. `settings`: the store's, when the
    caller has just read them. Raises `InvalidPathError` for a missing reference, `HashMismatchError`,
    `RestoreError` for filesystem failures.
    """

    def __init__(
        self, store: LocalStore, expected: PathInfo | None = None, settings: StoreSettings | None = None
    ) -> None:
        self.store = store
        self.expected = expected
        if expected is not None:
            # Checked once: the references are temporary roots from here on, so they stay valid.
            self._check_references(expected)
        if settings is None:
            settings = store.settings
        # Built in place in the store's scratch directory (private, locked, a temporary root), then
        # renamed into the store: no directory of its own per path.
        scratch_fd, self._dest = store.scratch_entry()
        self.writer = TreeWriter(
            self._dest,
            case_hack=CaseHackMode.ON if settings.case_hack else CaseHackMode.OFF,
            fold=settings.fold,
            staging=False,
            canonical=True,  # all but a root directory, which is canonicalised once moved
            parent_fd=scratch_fd,
            modes_kept=store.scratch_keeps_modes,
        )

    def handle(self, event: Event) -> None:
        self.writer.handle(event)

    def _check_references(self, info: PathInfo) -> None:
        # Held as temporary roots first, so a garbage collection cannot delete them between this check
        # and the registration.
        if not info.references:
            return
        for ref in info.references:
            if ref != info.path:
                self.store.add_temp_root(ref)
        valid = self.store.registered_or_deferred(info.references)
        missing = sorted(set(info.references) - {info.path} - valid)
        if missing:
            raise InvalidPathError(
                f"cannot add '{info.path}': its reference '{missing[0]}' is not valid in "
                f"{self.store.describe()} (add its closure, dependencies first)",
                path=missing[0].path,
            )

    def _check_same(self, existing: PathInfo, info: PathInfo) -> None:
        if existing.nar_hash != info.nar_hash or (existing.nar_size and existing.nar_size != info.nar_size):
            raise HashMismatchError(
                f"path '{info.path}' is already valid with NAR hash {existing.nar_hash_sri()}, but the "
                f"NAR received has {info.nar_hash_sri()}",
                path=info.path.path,
            )

    def commit(self, info: PathInfo, on_registered: Callable[[], None] | None = None) -> bool:
        """Check `info` (the measured hash and size) against what was announced, then move the path into
        place and register it. Returns False when the path was valid already (its NAR must match), True
        when added. The adder is finished either way.

        `on_registered()` is called once the path is registered, before its lock is released: what it
        tells (a protocol's confirmation) then waits for the registration alone. It is not called for
        a path that was valid already, nor when the registration is deferred (`registering_together`,
        whose `on_commit` tells)."""
        try:
            expected = self.expected
            if expected is not None:
                if expected.path != info.path:
                    raise InvalidPathError(f"the NAR received is for '{info.path}', not '{expected.path}'")
                if expected.nar_hash != info.nar_hash or (
                    expected.nar_size and expected.nar_size != info.nar_size
                ):
                    raise HashMismatchError(
                        f"hash mismatch importing path '{info.path}': expected {expected.nar_hash_sri()} "
                        f"({expected.nar_size} bytes), got {info.nar_hash_sri()} ({info.nar_size} bytes)",
                        path=info.path.path,
                    )
                if expected.nar_size != info.nar_size:  # unknown (0) before
                    info = expected.replace(nar_size=info.nar_size)
                else:
                    info = expected
            self.writer.commit()
            store = self.store
            store.add_temp_root(info.path)
            if expected is None:
                self._check_references(info)
            lock = None
            deferred = False  # the store holds the lock until the registration is committed
            try:
                lock = store.lock_for_add(info.path)
                if store.is_valid(info.path):  # another process may have added it meanwhile
                    self._check_same(store.require(info.path), info)
                    return False
                store.remove_invalid_leftover(info.path)
                real = store.real_path(info.path)
                # Move first, make read-only after: moving a directory to another parent needs write
                # permission on it (to update its ".."), which only root has once it is 0555.
                os.rename(self._dest, real)
                self.writer.moved()
                try:
                    if self.writer.root_is_directory:  # the writer made everything else canonical
                        canonicalise(real, recursive=False)
                    deferred = store.register_or_defer(info, lock)
                except Exception:  # not registered by this process
                    store.remove_unregistered([info.path], ())
                    raise
                except BaseException:  # an interrupt, maybe just after the commit: the database tells
                    store.remove_unregistered([info.path])
                    raise
                if not deferred and on_registered is not None:
                    on_registered()
            finally:
                if lock is not None and not deferred:
                    lock.release()
            return True
        finally:
            self.writer.abort()  # closes what is open; removes the tree unless it was moved

    def abort(self) -> None:
        """Remove everything this adder made. Idempotent."""
        self.writer.abort()


def add_nar(
    store: LocalStore,
    info: PathInfo,
    read: Read,
    *,
    check_sigs: bool = False,
    on_registered: Callable[[], None] | None = None,
) -> bool:
    """Add the path `info` describes from the NAR read with `read(n)` (metadata first). See
    `Store.add_to_store`. A NAR longer than `info.nar_size` is refused as soon as it is. With
    `check_sigs`, a path that is not valid yet must be trusted (`signing.require_trusted`) before a byte
    of its NAR is read. `on_registered`: see `PathAdder.commit`."""
    hasher = hashlib.sha256()
    parser = NarParser(hasher=hasher, whole_files=True)
    limit = info.nar_size or None
    store.add_temp_root(info.path)  # whether added now or valid already, a collection must keep it
    # A valid path is on disk, so a name that is not there needs no query (the usual case when copying,
    # whose plan has just found the path missing); the check under the path's lock is what counts.
    if os.path.lexists(store.real_path(info.path)) and store.is_valid(info.path):
        for _ in iter_events(read, parser, contents=False):
            _check_limit(info, parser, limit)
        _check_end(parser, read)
        existing = store.require(info.path)
        if existing.nar_hash != hasher.digest():
            raise HashMismatchError(
                f"path '{info.path}' is already valid with NAR hash {existing.nar_hash_sri()}, but the NAR "
                f"received has {_sri(hasher.digest())}",
                path=info.path.path,
            )
        return False
    settings = store.settings  # read once for the whole add
    if check_sigs:
        from xstore.signing import require_trusted

        require_trusted(info, store.trusted_keys(settings), store.describe())
    adder = PathAdder(store, info, settings)
    try:
        for event in iter_events(read, parser):
            adder.handle(event)
            _check_limit(info, parser, limit)
        _check_end(parser, read)
    except BaseException:
        adder.abort()
        raise
    return adder.commit(info.replace(nar_hash=hasher.digest(), nar_size=parser.offset), on_registered)


def _check_limit(info: PathInfo, parser: NarParser, limit: int | None) -> None:
    if limit is not None and parser.offset > limit:
        raise HashMismatchError(
            f"the NAR of '{info.path}' is longer than the {limit} bytes announced", path=info.path.path
        )


def _check_end(parser: NarParser, read: Read) -> None:
    if parser.unused_data or read(1):
        raise TrailingDataError(f"unexpected data after the end of the NAR (at byte {parser.offset})")

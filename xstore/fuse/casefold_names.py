"""The casefold layer's name index: which stored name a spelling designates in a backing directory.

Strategy. Names are found in two steps: the exact spelling first (one `fstatat`), then, on a miss, the
directory's listing folded into key -> stored names, cached per directory (the most recently used
`LISTINGS_KEPT` of them), kept up to date by the layer's own changes (`noted`), and read again when the
directory's mtime shows that someone else changed it, or when a name it offers has gone. Where several
stored names share a key (the backing directory was written directly), the smallest in byte order wins.
Keys are `xstore.casehack.fold_key` under the model, so the case hack's predictions and the layer agree
by construction. Under `Fold.APFS` a name that is not UTF-8 is refused with EILSEQ, as APFS does, unless
the directory already holds it under exactly that spelling.

The index knows no pyfuse3 and no object table: a directory is anything with an identity and an open
descriptor (`Directory`); failures are `OSError`s with the errno the kernel is to get. It is not
thread-safe: the operations call it from one trio thread, with no await in between (see `casefold.py`).
"""

from __future__ import annotations

import collections
import errno
import os
from dataclasses import dataclass, field
from typing import Final, Protocol

from xstore.casehack import Fold, fold_key

__all__ = ["LISTINGS_KEPT", "Directory", "Listing", "NameIndex"]

LISTINGS_KEPT: Final = 256  # folded directory listings cached at once


class Directory(Protocol):
    """What the index needs of a backing directory (the object table's directory objects are such)."""

    @property
    def ident(self) -> tuple[int, int]:
        """(st_dev, st_ino) of the directory: the cache key."""

    @property
    def fd(self) -> int | None:
        """A descriptor of the directory (`O_PATH` will do); never None for a directory."""


@dataclass(slots=True)
class Listing:
    """One directory's names grouped by fold key, and the directory mtime they were read at."""

    stamp: int
    by_key: dict[bytes, list[bytes]] = field(default_factory=dict)


class NameIndex:
    """Folded listings of backing directories under `model`, and name resolution through them."""

    def __init__(self, model: Fold) -> None:
        self.model = model
        self._listings: collections.OrderedDict[tuple[int, int], Listing] = collections.OrderedDict()

    def clear(self) -> None:
        self._listings.clear()

    def forget(self, ident: tuple[int, int]) -> None:
        """Drop the cached listing of the directory `ident`, if any (it is gone, or no longer known)."""
        self._listings.pop(ident, None)

    def cached(self, ident: tuple[int, int]) -> Listing | None:
        """The cached listing of the directory `ident`, as it is (not checked, not read)."""
        return self._listings.get(ident)

    def check_new_name(self, name: bytes) -> None:
        """Refuse a name the model cannot store: not UTF-8 under APFS (EILSEQ, as APFS answers)."""
        if self.model is Fold.APFS and not name.isascii():
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                raise OSError(errno.EILSEQ, os.strerror(errno.EILSEQ)) from None

    def listing(self, directory: Directory, *, fresh: bool = False) -> Listing:
        """The folded listing of `directory`: the cached one while the directory's mtime is the one it
        was read at (and not `fresh`), else read again."""
        assert directory.fd is not None
        stamp = os.stat(directory.fd).st_mtime_ns
        listing = self._listings.get(directory.ident)
        if listing is not None and listing.stamp == stamp and not fresh:
            self._listings.move_to_end(directory.ident)
            return listing
        fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory.fd)
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
        listing = Listing(stamp)
        model = self.model
        for name in names:
            encoded = os.fsencode(name)
            listing.by_key.setdefault(fold_key(encoded, model), []).append(encoded)
        self._listings[directory.ident] = listing
        self._listings.move_to_end(directory.ident)
        while len(self._listings) > LISTINGS_KEPT:
            self._listings.popitem(last=False)
        return listing

    def noted(
        self, directory: Directory, *, added: bytes | None = None, removed: bytes | None = None
    ) -> None:
        """Record a change the layer made in `directory` in its cached listing, if there is one."""
        listing = self._listings.get(directory.ident)
        if listing is None:
            return
        if removed is not None:
            key = fold_key(removed, self.model)
            names = listing.by_key.get(key)
            if names is not None and removed in names:
                names.remove(removed)
                if not names:
                    del listing.by_key[key]
        if added is not None:
            listing.by_key.setdefault(fold_key(added, self.model), []).append(added)
        assert directory.fd is not None
        listing.stamp = os.stat(directory.fd).st_mtime_ns

    def resolve(self, directory: Directory, name: bytes) -> bytes | None:
        """The stored name in `directory` that `name` designates, or None. Raises EILSEQ for a name
        the model cannot hold (unless it is stored exactly so)."""
        assert directory.fd is not None
        try:
            os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            return name
        self.check_new_name(name)
        key = fold_key(name, self.model)
        for fresh in (False, True):
            candidates = self.listing(directory, fresh=fresh).by_key.get(key)
            if not candidates:
                return None
            for candidate in sorted(candidates):
                if candidate == name:
                    continue
                try:
                    os.stat(candidate, dir_fd=directory.fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # the listing is stale: read it again
                return candidate
        return None

    def require(self, directory: Directory, name: bytes) -> bytes:
        """The stored name `name` designates in `directory` (ENOENT if there is none)."""
        stored = self.resolve(directory, name)
        if stored is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return stored

    def require_free(self, directory: Directory, name: bytes) -> None:
        """Check that `name` may be created in `directory`: storable (EILSEQ), key free (EEXIST)."""
        self.check_new_name(name)
        if self.resolve(directory, name) is not None:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))

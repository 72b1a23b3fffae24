"""`optimise`: hard-link identical files of a local store through `nix/store/.links`, exactly as Nix does.

Every regular file (and, on Linux, every symlink) of every valid path is hashed as Nix hashes it: the
SHA-256 of the NAR of that one file, so the executable bit counts and a symlink is its target. The
link `.links/<nix32 of that hash>` is the shared copy: made from the first file with those contents,
and every later file with the same contents is replaced by a hard link to it, atomically (a temporary
link in the store directory, renamed over the file). Since the names are Nix's, Nix and xstore share one
`.links` and either can run after the other; the collector removes entries whose link count has fallen
to 1 (`gc.py`).

As in Nix: files already linked (their inode is one of `.links`') are skipped without hashing; a
writable regular file is suspicious (something modified the store) and skipped with a warning; a link
whose size differs from the file's is corrupt and replaced; a file whose link has the most links the
filesystem allows (EMLINK) stays as it is; a full directory index (ENOSPC) skips the file; a link that a
collection removed meanwhile skips it too. The directory holding a replaced file is made writable for
the rename and read-only and timeless again after. Each path is held as a temporary root while it is
worked on, so a collection running meanwhile does not delete it.

Nix: optimise-store.cc (`optimiseStore`, `optimisePath_`, `loadInodeHash`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from xstore.gc import LINKS_DIR
from xstore.hashing import encode_nix32
from xstore.nar.dump import dump_path
from xstore.notices import notice
from xstore.store import LocalStore
from xstore.storepath import StorePath

PLATFORM: str = sys.platform  # a plain string: both branches type-check on every platform
# Nix links symlinks where `ln` can hard-link one (configure's CAN_LINK_SYMLINK): Linux.
LINK_SYMLINKS: Final = PLATFORM.startswith("linux")


@dataclass(slots=True)
class OptimiseStats:
    files_linked: int = 0
    bytes_freed: int = 0
    blocks_freed: int = 0

    def summary(self) -> str:
        """Nix's line: `0.05 MiB freed by hard-linking 12 files`."""
        return f"{self.bytes_freed / (1024 * 1024):.2f} MiB freed by hard-linking {self.files_linked} files"


def link_name(real_path: bytes) -> str:
    """The `.links` name of a file or symlink: nix32 of the SHA-256 of its NAR."""
    digest = hashlib.sha256()
    dump_path(real_path, digest.update, case_hack=False)
    return encode_nix32(digest.digest())


class _Optimiser:
    def __init__(self, store: LocalStore, stats: OptimiseStats) -> None:
        self.store = store
        self.stats = stats
        self.store_dir = os.fsencode(store.real_store_dir)
        self.links = os.path.join(self.store_dir, LINKS_DIR.encode())
        os.makedirs(self.links, exist_ok=True)
        with os.scandir(self.links) as it:
            self.inodes = {entry.inode() for entry in it}

    def path(self, real: bytes) -> None:
        # Directories are walked with an explicit stack; files are linked one at a time.
        stack = [real]
        while stack:
            current = stack.pop()
            st = os.lstat(current)
            if stat.S_ISDIR(st.st_mode):
                with os.scandir(current) as it:
                    children = [os.fsencode(e.path) for e in it if e.inode() not in self.inodes]
                stack.extend(sorted(children, reverse=True))
            else:
                self.file(current, st)

    def file(self, path: bytes, st: os.stat_result) -> None:
        if not (stat.S_ISREG(st.st_mode) or (LINK_SYMLINKS and stat.S_ISLNK(st.st_mode))):
            return
        if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IWUSR:
            notice(f"warning: skipping suspicious writable file '{os.fsdecode(path)}'")
            return
        if st.st_nlink > 1 and st.st_ino in self.inodes:
            return  # linked already
        link = os.path.join(self.links, link_name(path).encode())
        try:
            st_link: os.stat_result | None = os.lstat(link)
        except FileNotFoundError:
            st_link = None
        if st_link is not None and st_link.st_size != st.st_size:
            notice(f"warning: removing corrupted link '{os.fsdecode(link)}'")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            st_link = None
        if st_link is None:
            try:
                os.link(path, link, follow_symlinks=False)
                self.inodes.add(st.st_ino)
                return  # the first file with these contents: it is the link now
            except FileExistsError:
                pass  # another process made it meanwhile
            except OSError as e:
                if e.errno == errno.ENOSPC:  # a full directory index (ext4): no deduplication here
                    notice(f"cannot link '{os.fsdecode(link)}' to '{os.fsdecode(path)}': {e.strerror}")
                    return
                raise
            try:
                st_link = os.lstat(link)
            except FileNotFoundError:
                return  # a collection removed it meanwhile; a later run will link this file
        if st.st_ino == st_link.st_ino:
            return
        self.replace(path, link, st)

    def replace(self, path: bytes, link: bytes, st: os.stat_result) -> None:
        """Replace the file at `path` by a hard link to `link`: a temporary link, renamed over it."""
        parent = os.path.dirname(path)
        toggle = parent != self.store_dir
        if toggle:
            os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IWUSR)
        try:
            token = int.from_bytes(os.urandom(4), "little") >> 1
            temp = os.path.join(self.store_dir, f".tmp-link-{os.getpid()}-{token}".encode())
            try:
                os.link(link, temp, follow_symlinks=False)
            except OSError as e:
                if e.errno == errno.EMLINK:
                    # The most links the filesystem allows (likely an empty file); leave this one be.
                    if st.st_size:
                        notice(f"'{os.fsdecode(link)}' has maximum number of links")
                    return
                if e.errno == errno.ENOENT:
                    return  # a collection removed the link meanwhile
                raise
            self.inodes.add(st.st_ino)
            try:
                os.rename(temp, path)
            except OSError as e:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                if e.errno in (errno.EMLINK, errno.ENOENT):
                    return  # some filesystems count the rename; or a collection removed the temporary
                raise
        finally:
            if toggle:
                # Read-only and timeless again, as canonicalisation left it.
                os.chmod(parent, 0o555)  # noqa: S103 (read-only for everyone, as Nix leaves store directories)
                os.utime(parent, (os.lstat(parent).st_atime, 1), follow_symlinks=False)
        self.stats.files_linked += 1
        self.stats.bytes_freed += st.st_size
        self.stats.blocks_freed += st.st_blocks


def optimise_store(
    store: LocalStore, *, progress: Callable[[int], None] | None = None, paths: list[StorePath] | None = None
) -> OptimiseStats:
    """Hard-link identical files in `store` (all valid paths, or `paths`); returns what it did.
    `progress` is called with the number of paths done. Interrupting it leaves every file either as it
    was or linked, never missing."""
    stats = OptimiseStats()
    optimiser = _Optimiser(store, stats)
    for n, path in enumerate(store.all_paths() if paths is None else paths):
        store.add_temp_root(path)
        if store.is_valid(path):  # not collected meanwhile
            optimiser.path(store.real_path(path))
        if progress is not None:
            progress(n + 1)
    return stats

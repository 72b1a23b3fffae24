"""A read-only FUSE view of a store: its valid paths, with the names they have in their NARs.

The root directory lists the base names of the store's valid paths, asked of the database each time it
is listed or looked up in, so paths registered while the view is mounted appear (and a path that is on
disk but not registered, such as one half-imported, does not). Below that the real files are served as
they are, except for two things: in a store with the case hack on, each directory's names are un-hacked
(`~nix~case~hack~N` removed, entries in archive order, as `dump_path` does), so a Linux closure kept on a
case-insensitive disk reads as it was made; and modes are Nix's read-only ones (0444/0555, directories
0555) whatever the files have. `nix-store --dump MOUNT/<base>` therefore gives the NAR the store
registered for the path.

Inodes are handed out as the kernel learns of entries (lookup, readdirplus) and dropped when it forgets
them, so memory follows what the kernel holds, not the size of the store. A directory's name mapping is
read once per inode: store paths never change once valid. Files are opened `O_RDONLY | O_NOFOLLOW` at
real paths built from on-disk names and read with pread; a small file is put into the page cache whole
when it is first opened (`common.STORE_ON_OPEN_MAX`), which saves its read request. The one database
connection is used only from the trio thread; nothing is ever written to the store.

Nix: archive.cc `dumpPath` (the un-hacking), local-fs-store.cc `LocalFSStoreAccessor`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyfuse3

from xstore.casehack import unhack_entries
from xstore.errors import XstoreError
from xstore.fuse.common import STORE_ON_OPEN_MAX, entry_from_stat, wrap_handlers
from xstore.fuse.narfs import ReadOnlyOperations, check_open_flags, pread_exactly
from xstore.store import LocalStore, store_path_of

log = logging.getLogger("xstore.fuse")

ROOT: Final = pyfuse3.ROOT_INODE
# The root and its entries (the set of valid paths) change; what is below a valid path does not.
ROOT_TIMEOUT: Final = 1.0
CONTENT_TIMEOUT: Final = 300.0


@dataclass(slots=True)
class _Inode:
    path: bytes  # the real path on disk
    lookups: int = 0  # how many times the kernel was told of this inode and has not forgotten
    # For a directory, once listed: (name in the archive, name on disk), in archive order.
    entries: list[tuple[bytes, bytes]] | None = None
    by_name: dict[bytes, bytes] | None = None
    opens: int = 0  # files open on it
    stored: bool = False  # its contents were put into the page cache


def nix_mode(st: os.stat_result) -> int:
    """The mode Nix gives a store object like `st`: 0444/0555 files, 0555 directories, 0777 symlinks.
    Raises `XstoreError` for other file types, which have no place in a store (nor in a NAR)."""
    if stat.S_ISDIR(st.st_mode):
        return stat.S_IFDIR | 0o555
    if stat.S_ISLNK(st.st_mode):
        return stat.S_IFLNK | 0o777
    if stat.S_ISREG(st.st_mode):
        return stat.S_IFREG | (0o555 if st.st_mode & stat.S_IXUSR else 0o444)
    raise XstoreError(f"unsupported file type (mode {st.st_mode:o}) in the store")


@wrap_handlers
class StoreOperations(ReadOnlyOperations):
    """The filesystem of the store rooted at `root` (holding nix/store and nix/var/nix/db), made by xstore
    or by Nix. Opens the store (raising `StoreError` if there is none) and keeps it open, with its big
    lock held shared as every store user does, until `close()`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__()
        self._store = LocalStore.open(Path(root))
        try:
            self._case_hack = self._store.settings.case_hack
        except BaseException:
            self._store.close()
            raise
        self._store_dir = os.fsencode(self._store.real_store_dir)
        self._inodes: dict[int, _Inode] = {ROOT: _Inode(self._store_dir, lookups=1)}
        self._by_path: dict[bytes, int] = {self._store_dir: ROOT}
        self._next_inode = ROOT + 1
        self._dirs: dict[int, tuple[bytes, list[tuple[bytes, bytes]]]] = {}  # handle -> (path, entries)
        self._next_dir_handle = 1
        self._files: dict[int, int] = {}  # descriptors of open files (their handles) -> inode

    def close(self) -> None:
        for fd in self._files:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()
        self._store.close()

    # -- inodes --------------------------------------------------------------------------------------

    def _inode(self, inode: int) -> _Inode:
        found = self._inodes.get(inode)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return found

    def _known(self, path: bytes) -> int:
        """The inode for `path`, made if new (with no lookups yet)."""
        inode = self._by_path.get(path)
        if inode is None:
            inode = self._next_inode
            self._next_inode += 1
            self._inodes[inode] = _Inode(path)
            self._by_path[path] = inode
        return inode

    def _drop_if_unknown(self, inode: int) -> None:
        entry = self._inodes.get(inode)
        if entry is not None and entry.lookups <= 0 and inode != ROOT:
            del self._inodes[inode]
            if self._by_path.get(entry.path) == inode:
                del self._by_path[entry.path]

    def _attributes(self, inode: int, st: os.stat_result) -> pyfuse3.EntryAttributes:
        top_level = os.path.dirname(self._inodes[inode].path) == self._store_dir
        attrs = entry_from_stat(st, inode, timeout=ROOT_TIMEOUT if top_level else CONTENT_TIMEOUT)
        attrs.st_mode = pyfuse3.ModeT(nix_mode(st))
        return attrs

    def _tell(self, path: bytes) -> pyfuse3.EntryAttributes:
        """Attributes of the entry at `path`, counting one more lookup of its inode by the kernel."""
        st = os.lstat(path)
        nix_mode(st)
        inode = self._known(path)
        attrs = self._attributes(inode, st)
        self._inodes[inode].lookups += 1
        return attrs

    # -- names ---------------------------------------------------------------------------------------

    def _is_valid(self, name: bytes) -> bool:
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            return False
        path = store_path_of(text)
        return path is not None and self._store.is_valid(path)

    def _valid_names(self) -> list[tuple[bytes, bytes]]:
        return [(n, n) for n in sorted(os.fsencode(p.base) for p in self._store.all_paths())]

    def _entries(self, inode: int) -> list[tuple[bytes, bytes]]:
        """(archive name, disk name) of a directory's entries, in archive order."""
        if inode == ROOT:
            return self._valid_names()
        entry = self._inode(inode)
        if entry.entries is None:
            names = os.listdir(entry.path)
            entry.entries = unhack_entries(names, hack=self._case_hack, where=entry.path)
            entry.by_name = dict(entry.entries)
        return entry.entries

    def _child_path(self, parent_inode: int, name: bytes) -> bytes:
        parent = self._inode(parent_inode)
        if parent_inode == ROOT:
            if not self._is_valid(name):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return parent.path + b"/" + name
        if parent.by_name is None and not stat.S_ISDIR(os.lstat(parent.path).st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        self._entries(parent_inode)
        assert parent.by_name is not None
        disk_name = parent.by_name.get(name)
        if disk_name is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return parent.path + b"/" + disk_name

    # -- handlers ------------------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        if name == b".":
            return self._tell(parent.path)
        if name == b"..":
            above = os.path.dirname(parent.path) if parent_inode != ROOT else parent.path
            if len(above) < len(self._store_dir):
                above = self._store_dir
            return self._tell(above)
        return self._tell(self._child_path(parent_inode, name))

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for inode, count in inode_list:
            entry = self._inodes.get(inode)
            if entry is not None:
                entry.lookups -= count
                self._drop_if_unknown(inode)
        log.debug("forgot %d inodes; %d known", len(inode_list), len(self._inodes))

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        entry = self._inode(inode)
        st = os.lstat(entry.path)
        if inode == ROOT:
            attrs = entry_from_stat(st, ROOT, timeout=ROOT_TIMEOUT)
            attrs.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o555)
            return attrs
        return self._attributes(inode, st)

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        return os.readlink(self._inode(inode).path)

    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        entry = self._inode(inode)
        if inode != ROOT and not stat.S_ISDIR(os.lstat(entry.path).st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        handle = self._next_dir_handle
        self._next_dir_handle += 1
        # The root's listing is a snapshot per open, so positions stay stable while it is read.
        self._dirs[handle] = (entry.path, self._entries(inode))
        return pyfuse3.FileHandleT(handle)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory, entries = self._dirs[fh]
        for position in range(start_id, len(entries)):
            name, disk_name = entries[position]
            path = directory + b"/" + disk_name
            try:
                st = os.lstat(path)
                nix_mode(st)
            except (OSError, XstoreError) as e:
                # Registered but gone, or not a store object: nothing a dump could serialise.
                log.warning("skipping %r in a listing: %s", path, e)
                continue
            inode = self._known(path)
            if not pyfuse3.readdir_reply(token, name, self._attributes(inode, st), position + 1):
                self._drop_if_unknown(inode)
                return
            self._inodes[inode].lookups += 1

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._dirs.pop(fh, None)

    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        entry = self._inode(inode)
        check_open_flags(flags)
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise pyfuse3.FUSEError(errno.EISDIR)
            if not entry.opens and not entry.stored and 0 < st.st_size <= STORE_ON_OPEN_MAX:
                # No file of this inode is open, so no read of it is in progress (see `notify`).
                data = pread_exactly(fd, st.st_size, 0)
                entry.stored = len(data) == st.st_size and self.notifier.store(inode, data)
        except BaseException:
            os.close(fd)
            raise
        self._files[fd] = inode
        entry.opens += 1
        # Store objects do not change once valid: cached pages stay good across opens.
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fd), keep_cache=True)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        if fh not in self._files:
            raise pyfuse3.FUSEError(errno.EBADF)
        return pread_exactly(fh, size, off)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        inode = self._files.pop(fh, None)
        if inode is not None:
            os.close(fh)
            entry = self._inodes.get(inode)
            if entry is not None:
                entry.opens -= 1

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        vfs = os.statvfs(self._store_dir)
        data = pyfuse3.StatvfsData()
        data.f_bsize = vfs.f_bsize
        data.f_frsize = vfs.f_frsize
        data.f_blocks = vfs.f_blocks
        data.f_bfree = vfs.f_bfree
        data.f_bavail = vfs.f_bavail
        data.f_files = vfs.f_files
        data.f_ffree = vfs.f_ffree
        data.f_favail = vfs.f_favail
        data.f_namemax = vfs.f_namemax
        return data

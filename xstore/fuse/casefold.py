"""A case-insensitive, case-preserving passthrough of a directory: macOS's name semantics on Linux.

`CasefoldOperations(backing, model)` serves the tree under `backing` read-write. Two names are the same
name when their `fold_key` under `model` is equal: `Fold.APFS` folds Unicode case and treats NFC and NFD
spellings as one name (key = NFD(casefold(NFD(name)))), refusing names that are not UTF-8 with EILSEQ
as APFS does; `Fold.ASCII` folds ASCII letters only, like Nix's `strcasecmp`. The backing directory keeps
every name exactly as it was first created (or last renamed to); readdir shows those spellings; a rename
onto another spelling of an existing name replaces that entry and leaves the new spelling, as macOS does.
The model is the one `xstore.casehack.fold_key` defines, so the case hack's predictions and this layer
agree by construction. It is a model, not APFS itself: Python's `casefold()` applies full case folding,
so `ß`, `ẞ`, `ss` and `SS` are one name here, and so are `ﬁ` and `fi`, which APFS may keep apart; the
tests check only what the model claims.

Strategy. Directories are held open with `O_PATH` descriptors (as libfuse's passthrough_ll does) and every
name operation is an `*at` call relative to one, so nothing is resolved by path string and nothing
escapes the backing tree. The handlers here are thin; the state lives in two tables, each with its own
module: the object table (`casefold_objects`) knows backing objects by (st_dev, st_ino), the places and
descriptors they are reached by, their FUSE inodes and the kernel's lookup counts, and detaches an
object whose last name is gone; the name index (`casefold_names`) finds the stored name a spelling
designates, exact spelling first, then through cached folded listings that the directory's mtime keeps
honest. Creating a name whose key is taken fails with EEXIST; opening or creating without O_EXCL opens
the existing entry.

Inode numbers. The kernel's `vfs_rename` does nothing at all when source and target are the same inode,
so if every spelling of a name led to one inode a case-only rename (`foo` -> `FOO`) would never reach the
filesystem. A FUSE inode is therefore a backing object *and* the spelling that reached it: the stored
spelling gets the object's canonical inode (all hard links share it), and each other spelling gets an
alias inode of its own. The price: `stat("FOO").st_ino` differs from `stat("foo").st_ino` when the file
is stored as `foo` (on macOS they are equal), because pyfuse3 reports the FUSE node id as `st_ino`; and
the kernel keeps a page cache per inode, so processes that have one file open under two spellings at once
do not share cached pages.

Kernel caches. The kernel may keep entries and attributes for `timeout` seconds (10 by default): the
layer tells it at once, from the handler that made the change, whatever a change through one spelling
makes untrue under another (`casefold_cache`: the connection's epoch for names, attribute invalidation
for the other inodes of an object). So a change through one spelling shows at once through every other,
and a tree walked or built through one spelling costs one request per name, not one per name per path
component per call. A small file opened for reading is put into the page cache at once
(`common.STORE_ON_OPEN_MAX`). Changes made to the backing directory directly show after the timeout;
`timeout=0` restores the old behaviour (nothing cached, every stat and path component asks the layer).

Concurrency. pyfuse3 runs handlers as trio tasks in one thread. Every handler that reads or changes the
tables runs without an await, so it is atomic with respect to every other request: that is the single
lock the design calls for; the notifications it sends wait for no lock (see `notify`). Only fsync, which
may block for long, runs in a worker thread; it touches no table. Differences from APFS beyond inode
numbers and the model: names the backing directory already holds that are not UTF-8 stay reachable under
their exact spelling (APFS cannot hold them at all), RENAME_EXCHANGE is refused with EINVAL, and there is
no fallocate (pyfuse3 has no such handler; glibc's posix_fallocate falls back to writing).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from typing import Final

import pyfuse3
import trio

from xstore.casehack import Fold
from xstore.fuse.casefold_cache import DEFAULT_TIMEOUT, KernelCache
from xstore.fuse.casefold_names import NameIndex
from xstore.fuse.casefold_objects import (  # type: ignore[attr-defined, unused-ignore]  # Linux only
    BackingObject,
    Node,
    ObjectTable,
)
from xstore.fuse.common import STORE_ON_OPEN_MAX, entry_from_stat, wrap_handlers
from xstore.fuse.notify import KernelNotifier, NullNotifier

# Linux only (O_PATH, xattrs, fdatasync): a Mac's own volumes already fold case. The CLI says so before
# importing this module; type checkers skip the rest on other platforms.
assert sys.platform == "linux"

__all__ = ["CasefoldOperations"]

# Flags the kernel may pass that must not reach the backing open: creation is handled separately,
# O_APPEND would make pwrite ignore the kernel's offsets (which already account for appending), and
# O_DIRECT would need aligned buffers.
_OPEN_STRIP: Final = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND | os.O_DIRECT | os.O_DIRECTORY
_STATVFS_FIELDS: Final = (
    "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail", "f_namemax"
)  # fmt: skip


def _proc(fd: int) -> bytes:
    return b"/proc/self/fd/%d" % fd


@wrap_handlers
class CasefoldOperations(pyfuse3.Operations):
    """pyfuse3 operations serving `backing` case-insensitively under `model` (see the module docstring).

    `backing` must be a directory; it is opened at once (an `OSError` if it cannot be). The kernel may
    cache entries and attributes for `timeout` seconds once mounted (`init()`); never before, so
    handlers driven without a mount see every request. Call `close()` after `pyfuse3.main()` has
    returned to release the descriptors still held.
    """

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, backing: bytes, model: Fold, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.model = model
        self._timeout = timeout
        self._names = NameIndex(model)
        self._table = ObjectTable(backing, on_drop=self._names.forget)
        self._cache = KernelCache(self._table, model, NullNotifier(), 0.0)
        self._as_root = os.geteuid() == 0

    def init(self) -> None:
        # Modes arrive masked by the caller's umask already; the daemon's own must not mask them again.
        os.umask(0)
        self._cache = KernelCache(self._table, self.model, KernelNotifier(), self._timeout)

    def close(self) -> None:
        """Release every descriptor (for after `pyfuse3.main()` returns: an unmount forgets nothing)."""
        self._table.close()
        self._names.clear()

    # -- reaching an object ------------------------------------------------------------------------

    def _locate(self, obj: BackingObject) -> tuple[BackingObject, bytes, os.stat_result] | None:
        """A place where the non-directory `obj` still is (see `ObjectTable.locate`). The handlers ask
        here, so that a test can step in between finding a name and using it (the symlink race)."""
        return self._table.locate(obj)

    def _attributes(self, node: Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
        cache = self._cache
        return entry_from_stat(st, node.inode, timeout=cache.entry_timeout, attr_timeout=cache.attr_timeout)

    def _reply(self, node: Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
        """Attributes for an entry handed to the kernel, which counts one more lookup of `node`."""
        entry = self._attributes(node, st)
        node.lookups += 1
        return entry

    def _entry_for(
        self, directory: BackingObject, parent: Node, stored: bytes, spelling: bytes
    ) -> tuple[pyfuse3.EntryAttributes, Node]:
        """The reply for the dentry `spelling` under `parent` (a node of `directory`), which leads to
        the entry stored as `stored`, and the node it gives."""
        node, st = self._table.node_at(directory, stored, spelling)
        entry = self._reply(node, st)
        self._cache.handed(directory, parent, spelling, stored)
        return entry, node

    def _made(self, directory: BackingObject, parent: Node, name: bytes) -> pyfuse3.EntryAttributes:
        """The reply for a name just made in `directory` through `parent`."""
        self._names.noted(directory, added=name)
        entry, _ = self._entry_for(directory, parent, name, name)
        self._cache.changed(directory, parent)
        return entry

    @contextlib.contextmanager
    def _path(self, obj: BackingObject) -> Iterator[tuple[bytes, bool]]:
        """A path naming `obj` itself, and whether it may be followed (never for symlinks).

        A directory, or a file the layer holds open, is named through its own descriptor. Otherwise a
        name is pinned first: opened with O_PATH|O_NOFOLLOW and checked to be `obj`, then named
        through that descriptor. So a name swapped for a symlink by someone writing the backing
        directory directly, between the check and the operation, can never redirect the operation
        outside the backing tree. A symlink itself is named by directory and name, never followed.
        """
        if obj.fd is not None:
            yield _proc(obj.fd), True
            return
        if obj.handles:  # the object itself, whatever happened to its names (and no lookup needed)
            yield _proc(next(iter(obj.handles))), True
            return
        found = self._locate(obj)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        directory, name, _ = found
        assert directory.fd is not None
        if obj.kind == stat.S_IFLNK:
            yield _proc(directory.fd) + b"/" + name, False
            return
        pinned = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory.fd)
        try:
            st = os.fstat(pinned)
            if (st.st_dev, st.st_ino) != obj.ident:
                raise pyfuse3.FUSEError(errno.ESTALE)
            yield _proc(pinned), True
        finally:
            os.close(pinned)

    # -- lookups and attributes -------------------------------------------------------------------

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._table.node(parent_inode)
        directory = self._table.directory(parent_inode)
        if name == b".":
            return self._reply(parent, self._table.stat(directory))
        if name == b"..":
            if directory is self._table.root.obj:
                return self._reply(self._table.root, self._table.stat(directory))
            node, st = self._table.node_at(directory, b"..", b"..")
            return self._reply(node, st)
        stored = self._names.require(directory, name)
        return self._entry_for(directory, parent, stored, name)[0]

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for inode, count in inode_list:
            self._table.forget(inode, count)

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._table.node(inode)
        return self._attributes(node, self._table.stat(node.obj))

    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._table.node(inode)
        obj = node.obj
        if obj.kind == stat.S_IFLNK and (fields.update_mode or fields.update_size):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        with self._path(obj) as (path, follow):
            if fields.update_size:
                if fh is not None:
                    os.ftruncate(fh, attr.st_size)
                else:
                    os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                os.chown(path, uid, gid, follow_symlinks=follow)
            if fields.update_atime or fields.update_mtime:
                old = os.stat(path, follow_symlinks=follow)
                atime = attr.st_atime_ns if fields.update_atime else old.st_atime_ns
                mtime = attr.st_mtime_ns if fields.update_mtime else old.st_mtime_ns
                os.utime(path, ns=(atime, mtime), follow_symlinks=follow)
            st = os.stat(path, follow_symlinks=follow)
        self._cache.changed(obj, node)
        return self._attributes(node, st)

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        found = self._locate(self._table.node(inode).obj)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        directory, name, _ = found
        return os.readlink(name, dir_fd=directory.fd)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        assert self._table.root.obj.fd is not None
        st = os.statvfs(self._table.root.obj.fd)
        data = pyfuse3.StatvfsData()
        for attr in _STATVFS_FIELDS:
            setattr(data, attr, getattr(st, attr))
        return data

    # -- creating and removing names ---------------------------------------------------------------

    def _own(self, directory: BackingObject, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Give a new entry to the caller, as the kernel would (only possible, and only needed, when
        the daemon runs as root and serves other users)."""
        if self._as_root and (ctx.uid != 0 or ctx.gid != 0):
            os.chown(name, ctx.uid, ctx.gid, dir_fd=directory.fd, follow_symlinks=False)

    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._table.node(parent_inode)
        directory = self._table.directory(parent_inode)
        self._names.check_new_name(name)
        open_flags = (flags & ~_OPEN_STRIP) | os.O_CLOEXEC | os.O_NOFOLLOW
        stored = self._names.resolve(directory, name)
        if stored is not None:
            # The kernel saw no entry, but another request made one since: open it, as open(2) would.
            if flags & os.O_EXCL:
                raise pyfuse3.FUSEError(errno.EEXIST)
            fd = os.open(stored, open_flags, dir_fd=directory.fd)
            created = False
        else:
            created = True
            stored = name
            fd = os.open(name, open_flags | os.O_CREAT | os.O_EXCL, stat.S_IMODE(mode), dir_fd=directory.fd)
            self._names.noted(directory, added=name)
        try:
            if created:
                self._own(directory, name, ctx)
            obj, st = self._table.object_at(directory, stored)
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != obj.ident:
                self._table.release(obj)
                raise pyfuse3.FUSEError(errno.ESTALE)
            node = self._table.get_node(obj, b"" if stored == name else name)
        except BaseException:
            os.close(fd)
            raise
        self._table.opened(obj, fd, node)
        entry = self._reply(node, st)
        self._cache.handed(directory, parent, name, stored)
        if created:
            self._cache.changed(directory, parent)
        elif open_flags & os.O_TRUNC:
            self._cache.changed(obj, node)
        return pyfuse3.FileInfo(fh=fd), entry

    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        parent = self._table.node(parent_inode)
        directory = self._table.directory(parent_inode)
        self._names.require_free(directory, name)
        os.mkdir(name, stat.S_IMODE(mode), dir_fd=directory.fd)
        self._own(directory, name, ctx)
        return self._made(directory, parent, name)

    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        parent = self._table.node(parent_inode)
        directory = self._table.directory(parent_inode)
        self._names.require_free(directory, name)
        os.mknod(name, mode, rdev, dir_fd=directory.fd)
        self._own(directory, name, ctx)
        return self._made(directory, parent, name)

    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        parent = self._table.node(parent_inode)
        directory = self._table.directory(parent_inode)
        self._names.require_free(directory, name)
        os.symlink(target, name, dir_fd=directory.fd)
        self._own(directory, name, ctx)
        return self._made(directory, parent, name)

    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        source = self._table.node(inode)
        obj = source.obj
        if obj.fd is not None:
            raise pyfuse3.FUSEError(errno.EPERM)  # no hard links to directories
        parent = self._table.node(new_parent_inode)
        directory = self._table.directory(new_parent_inode)
        self._names.require_free(directory, new_name)
        found = self._locate(obj)
        if found is not None:
            src_dir, src_name, _ = found
            os.link(src_name, new_name, src_dir_fd=src_dir.fd, dst_dir_fd=directory.fd, follow_symlinks=False)
        elif obj.handles:
            # Open but nameless: only a file made with O_TMPFILE can be linked again (ENOENT otherwise,
            # as linkat answers).
            os.link(_proc(next(iter(obj.handles))), new_name, dst_dir_fd=directory.fd, follow_symlinks=True)
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self._names.noted(directory, added=new_name)
        entry, node = self._entry_for(directory, parent, new_name, new_name)
        self._cache.changed(directory, parent)
        self._cache.changed(obj, source, node)  # its link count and ctime
        return entry

    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        directory = self._table.directory(parent_inode)
        stored = self._names.require(directory, name)
        st = os.stat(stored, dir_fd=directory.fd, follow_symlinks=False)
        os.unlink(stored, dir_fd=directory.fd)
        self._names.noted(directory, removed=stored)
        self._removed(directory, self._table.node(parent_inode), name, stored, (st.st_dev, st.st_ino))

    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        directory = self._table.directory(parent_inode)
        stored = self._names.require(directory, name)
        st = os.stat(stored, dir_fd=directory.fd, follow_symlinks=False)
        os.rmdir(stored, dir_fd=directory.fd)
        self._names.noted(directory, removed=stored)
        self._removed(directory, self._table.node(parent_inode), name, stored, (st.st_dev, st.st_ino))

    def _removed(
        self, directory: BackingObject, parent: Node, spelling: bytes, stored: bytes, ident: tuple[int, int]
    ) -> None:
        """After `stored` (named `spelling` under `parent`) was removed from `directory`."""
        obj = self._table.objects.get(ident)
        self._table.gone(directory, stored, ident)
        self._cache.name_changed(directory, parent, spelling, stored)
        self._cache.changed(directory, parent)
        if obj is not None:  # its link count; the kernel updates the node its entry led to
            self._cache.changed(obj, obj.nodes.get(b"" if spelling == stored else spelling))

    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE, RENAME_WHITEOUT
        old_parent = self._table.node(parent_inode_old)
        new_parent = self._table.node(parent_inode_new)
        old_dir = self._table.directory(parent_inode_old)
        new_dir = self._table.directory(parent_inode_new)
        self._names.check_new_name(name_new)
        src = self._names.require(old_dir, name_old)
        src_st = os.stat(src, dir_fd=old_dir.fd, follow_symlinks=False)
        src_ident = (src_st.st_dev, src_st.st_ino)
        dst = self._names.resolve(new_dir, name_new)
        replaced: BackingObject | None = None
        if dst is None:
            os.rename(src, name_new, src_dir_fd=old_dir.fd, dst_dir_fd=new_dir.fd)
            self._names.noted(old_dir, removed=src)
            self._names.noted(new_dir, added=name_new)
        elif old_dir.ident == new_dir.ident and dst == src:
            # A case-only rename: the entry itself takes the new spelling.
            if name_new != src:
                os.rename(src, name_new, src_dir_fd=old_dir.fd, dst_dir_fd=new_dir.fd)
                self._names.noted(old_dir, removed=src, added=name_new)
            self._table.retire(src_ident, b"" if name_new == dst else name_new)
        else:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            dst_st = os.stat(dst, dir_fd=new_dir.fd, follow_symlinks=False)
            dst_ident = (dst_st.st_dev, dst_st.st_ino)
            if dst_ident == src_ident:
                return  # two links to one file: rename(2) does nothing, successfully
            # Replace the entry, then give it the new spelling: macOS keeps the name the rename gave.
            os.rename(src, dst, src_dir_fd=old_dir.fd, dst_dir_fd=new_dir.fd)
            self._names.noted(old_dir, removed=src)
            if dst != name_new:
                os.rename(dst, name_new, src_dir_fd=new_dir.fd, dst_dir_fd=new_dir.fd)
            self._names.noted(new_dir, removed=dst, added=name_new)
            replaced = self._table.objects.get(dst_ident)
            self._table.gone(new_dir, dst, dst_ident)
            self._cache.name_changed(new_dir, new_parent, name_new, dst)
        moved = self._table.objects.get(src_ident)
        self._table.moved(src_ident, old_dir, src, name_old, new_dir, name_new)
        cache = self._cache
        cache.name_changed(old_dir, old_parent, name_old, src)
        cache.handed(new_dir, new_parent, name_new, name_new)
        cache.changed(old_dir, old_parent)
        if new_dir is not old_dir:
            cache.changed(new_dir, new_parent)
        if moved is not None:  # its ctime; the kernel updates the node it moved, now the canonical one
            cache.changed(moved, moved.nodes.get(b""))
        if replaced is not None:
            cache.changed(replaced)

    # -- directories --------------------------------------------------------------------------------

    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        obj = self._table.directory(inode)
        fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=obj.fd)
        return pyfuse3.FileHandleT(self._table.open_dir_handle(obj, fd, self._table.node(inode)))

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._table.dir_handle(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if start_id == 0 or handle.names is None:
            # A snapshot per pass: entries made or removed meanwhile may be missed, none is repeated.
            handle.names = [os.fsencode(n) for n in os.listdir(handle.fd)]
        names = handle.names
        # Entries listed through another spelling of the directory are dentries under that node.
        parent = handle.node
        if parent is not None and self._table.is_canonical(parent):
            parent = None
        for index in range(start_id, len(names)):
            name = names[index]
            try:
                obj, st = self._table.object_at(handle.obj, name)
            except FileNotFoundError:
                continue
            node = self._table.get_node(obj, b"")
            if not pyfuse3.readdir_reply(token, name, self._attributes(node, st), index + 1):
                self._table.drop_if_unused(node)
                break
            node.lookups += 1
            if parent is not None:
                self._cache.handed(handle.obj, parent, name, name)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._table.close_dir_handle(fh)

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        handle = self._table.dir_handle(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        await trio.to_thread.run_sync(os.fsync, handle.fd)

    # -- open files ----------------------------------------------------------------------------------

    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        node = self._table.node(inode)
        obj = node.obj
        flags = (flags & ~_OPEN_STRIP) | os.O_CLOEXEC
        found = self._locate(obj) if obj.fd is None else None
        if found is not None:
            directory, name, _ = found
            fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=directory.fd)
        else:
            with self._path(obj) as (path, _):  # a directory, or a file open but without a name
                fd = os.open(path, flags)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != obj.ident:
                raise pyfuse3.FUSEError(errno.ESTALE)
            if flags & os.O_TRUNC:
                self._cache.changed(obj, node)
            elif flags & os.O_ACCMODE == os.O_RDONLY:
                self._store(node, fd, st)
        except BaseException:
            os.close(fd)
            raise
        self._table.opened(obj, fd, node)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    def _store(self, node: Node, fd: int, st: os.stat_result) -> None:
        """Put a small file's contents into the page cache of `node` unless they are there already (as
        far as the layer knows). Only while no file of `node` is open: then no read of it is in progress,
        which would hold the pages `store` must lock (see `notify`)."""
        stamp = (st.st_mtime_ns, st.st_size)
        if (
            node.opens
            or node.stored == stamp
            or not 0 < st.st_size <= STORE_ON_OPEN_MAX
            or not stat.S_ISREG(st.st_mode)
        ):
            return
        data = os.pread(fd, st.st_size, 0)
        if len(data) == st.st_size and self._cache.notifier.store(node.inode, data):
            node.stored = stamp

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        view = memoryview(buf)
        done = 0
        while done < len(view):
            done += os.pwrite(fh, view[done:], off + done)
        known = self._table.file(fh)
        if known is not None:
            self._cache.changed(*known)
        return done

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        self._table.close_file(fh)

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)

    # -- extended attributes -------------------------------------------------------------------------

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        with self._path(self._table.node(inode).obj) as (path, follow):
            return os.getxattr(path, name, follow_symlinks=follow)

    async def setxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        node = self._table.node(inode)
        with self._path(node.obj) as (path, follow):
            os.setxattr(path, name, value, follow_symlinks=follow)
        self._cache.changed(node.obj, node)

    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        with self._path(self._table.node(inode).obj) as (path, follow):
            return [os.fsencode(n) for n in os.listxattr(path, follow_symlinks=follow)]

    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        node = self._table.node(inode)
        with self._path(node.obj) as (path, follow):
            os.removexattr(path, name, follow_symlinks=follow)
        self._cache.changed(node.obj, node)

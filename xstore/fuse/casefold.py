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
escapes the backing tree. Other objects are known by the places (directory, stored name) they were seen
at, checked against their (st_dev, st_ino) before each use, and by this layer's open descriptors of them,
which keep an open file usable after its last name is gone. Only directories and open files hold
descriptors, so a tree of any size can be walked with the usual descriptor limit. An object whose last
known name goes away is detached from its inode number, so a new file that the backing filesystem gives
the same number never inherits the kernel's inode of the old one.

Names are found by the name index (`casefold_names`): the exact spelling first, then the directory's
folded listing, cached per directory, kept up to date by this layer's own changes, and read again when
the directory's mtime shows that someone else changed it. Creating a name whose key is taken fails with
EEXIST; opening or creating without O_EXCL opens the existing entry.

Inode numbers. The kernel's `vfs_rename` does nothing at all when source and target are the same inode,
so if every spelling of a name led to one inode a case-only rename (`foo` -> `FOO`) would never reach the
filesystem. A FUSE inode is therefore a backing object *and* the spelling that reached it: the stored
spelling gets the object's canonical inode (all hard links share it), and each other spelling gets an
alias inode of its own. The price: `stat("FOO").st_ino` differs from `stat("foo").st_ino` when the file
is stored as `foo` (on macOS they are equal), because pyfuse3 reports the FUSE node id as `st_ino`; and
the kernel keeps a page cache per inode, so processes that have one file open under two spellings at once
do not share cached pages (every open starts with an empty cache). The kernel caches neither entries nor
attributes (timeouts of 0), since a change made through one spelling must be seen at once through every
other.

Concurrency. pyfuse3 runs handlers as trio tasks in one thread. Every handler that reads or changes the
tables runs without an await, so it is atomic with respect to every other request: that is the single
lock the design calls for. Only fsync, which may block for long, runs in a worker thread; it touches no
table. Differences from APFS beyond inode numbers and the model: names the backing directory already
holds that are not UTF-8 stay reachable under their exact spelling (APFS cannot hold them at all),
RENAME_EXCHANGE is refused with EINVAL, and there is no fallocate (pyfuse3 has no such handler; glibc's
posix_fallocate falls back to writing).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import pyfuse3
import trio

from xstore.casehack import Fold
from xstore.fuse.casefold_names import NameIndex
from xstore.fuse.common import entry_from_stat, wrap_handlers

# Linux only (O_PATH, xattrs, fdatasync): a Mac's own volumes already fold case. The CLI says so before
# importing this module; type checkers skip the rest on other platforms.
assert sys.platform == "linux"

__all__ = ["CasefoldOperations"]

# Flags the kernel may pass that must not reach the backing open: creation is handled separately,
# O_APPEND would make pwrite ignore the kernel's offsets (which already account for appending), and
# O_DIRECT would need aligned buffers.
_OPEN_STRIP: Final = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND | os.O_DIRECT | os.O_DIRECTORY
_DIR_FLAGS: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PLACES_KEPT: Final = 8  # known names of one object (hard links)
_STATVFS_FIELDS: Final = (
    "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail", "f_namemax"
)  # fmt: skip
_TIMEOUT: Final = 0.0  # the kernel caches neither entries nor attributes (see the module docstring)

Ident = tuple[int, int]  # (st_dev, st_ino) of a backing object


def _proc(fd: int) -> bytes:
    return b"/proc/self/fd/%d" % fd


@dataclass(eq=False, slots=True)
class _Object:
    """A backing object the kernel knows (or a directory that objects it knows are in)."""

    ident: Ident
    kind: int  # stat.S_IFMT of its mode
    fd: int | None  # directories: an O_PATH descriptor; other objects: None
    nodes: dict[bytes, _Node] = field(default_factory=dict)  # findable nodes, by alias
    live: int = 0  # nodes the kernel has not forgotten (findable or not)
    refs: int = 0  # directories: places of other objects here, and open directory handles
    places: list[tuple[_Object, bytes]] = field(default_factory=list)  # non-directories: (dir, name)
    handles: set[int] = field(default_factory=set)  # non-directories: our open descriptors of it


@dataclass(eq=False, slots=True)
class _Node:
    """A FUSE inode: a backing object as reached through one spelling (b"" = the stored spelling)."""

    inode: int
    obj: _Object
    alias: bytes
    lookups: int = 0


@dataclass(eq=False, slots=True)
class _DirHandle:
    obj: _Object
    fd: int  # the directory opened for reading
    names: list[bytes] | None = None  # the snapshot being listed


@wrap_handlers
class CasefoldOperations(pyfuse3.Operations):
    """pyfuse3 operations serving `backing` case-insensitively under `model` (see the module docstring).

    `backing` must be a directory; it is opened at once (an `OSError` if it cannot be). Call `close()`
    after `pyfuse3.main()` has returned to release the descriptors still held.
    """

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, backing: bytes, model: Fold) -> None:
        super().__init__()
        self.model = model
        self._names = NameIndex(model)
        self._dir_fds: set[int] = set()
        fd = self._open_dir(backing, follow=True)  # the backing directory may be reached by a symlink
        st = os.fstat(fd)
        root = _Object((st.st_dev, st.st_ino), stat.S_IFDIR, fd, live=1)
        self._root = _Node(pyfuse3.ROOT_INODE, root, b"", lookups=1)
        root.nodes[b""] = self._root
        self._objects: dict[Ident, _Object] = {root.ident: root}
        self._nodes: dict[int, _Node] = {self._root.inode: self._root}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._dirs: dict[int, _DirHandle] = {}
        self._next_dir = 1
        self._files: dict[int, _Object] = {}
        self._as_root = os.geteuid() == 0

    def init(self) -> None:
        # Modes arrive masked by the caller's umask already; the daemon's own must not mask them again.
        os.umask(0)

    def close(self) -> None:
        """Release every descriptor (for after `pyfuse3.main()` returns: an unmount forgets nothing)."""
        for fd in [*self._dir_fds, *self._files, *(h.fd for h in self._dirs.values())]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._dir_fds.clear()
        self._dirs.clear()
        self._files.clear()
        self._objects.clear()
        self._nodes.clear()
        self._names.clear()

    def _open_dir(self, name: bytes, dir_fd: int | None = None, *, follow: bool = False) -> int:
        fd = os.open(name, _DIR_FLAGS & ~os.O_NOFOLLOW if follow else _DIR_FLAGS, dir_fd=dir_fd)
        self._dir_fds.add(fd)
        return fd

    def _close_dir(self, fd: int) -> None:
        self._dir_fds.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    # -- the tables --------------------------------------------------------------------------------
    #
    # An object lives while the kernel knows one of its nodes, an object it knows is in it (directories),
    # a directory handle is open on it, or we hold it open. `_objects` maps (st_dev, st_ino) to the
    # object that currently has that identity; a detached object lives on for the kernel's sake but is
    # never found by identity again.

    def _node(self, inode: int) -> _Node:
        node = self._nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _dir(self, inode: int) -> _Object:
        obj = self._node(inode).obj
        if obj.fd is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return obj

    def _object_at(self, directory: _Object, name: bytes) -> tuple[_Object, os.stat_result]:
        """The object stored as `name` in `directory`, and its attributes."""
        assert directory.fd is not None
        st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        ident = (st.st_dev, st.st_ino)
        kind = stat.S_IFMT(st.st_mode)
        obj = self._objects.get(ident)
        if obj is not None and obj.kind != kind:
            self._detach(obj)  # the number was given to a new object behind our back
            obj = None
        if obj is None:
            fd = None
            if kind == stat.S_IFDIR:
                fd = self._open_dir(name, directory.fd)
                st = os.fstat(fd)
                ident = (st.st_dev, st.st_ino)
            obj = self._objects[ident] = _Object(ident, kind, fd)
        if obj.fd is None:
            self._add_place(obj, directory, name)
        return obj, st

    def _add_place(self, obj: _Object, directory: _Object, name: bytes) -> None:
        for d, n in obj.places:
            if d.ident == directory.ident and n == name:
                return
        obj.places.append((directory, name))
        directory.refs += 1
        if len(obj.places) > _PLACES_KEPT:
            old, _ = obj.places.pop(0)
            old.refs -= 1
            self._release(old)

    def _remove_place(self, obj: _Object, directory: _Object, name: bytes) -> None:
        kept = []
        for d, n in obj.places:
            if d.ident == directory.ident and n == name:
                d.refs -= 1
                self._release(d)
            else:
                kept.append((d, n))
        obj.places = kept

    def _detach(self, obj: _Object) -> None:
        """Make `obj` unfindable by identity (its last name is gone, or its number was reused)."""
        if self._objects.get(obj.ident) is obj:
            del self._objects[obj.ident]
        self._names.forget(obj.ident)
        self._release(obj)

    def _release(self, obj: _Object) -> None:
        """Free `obj` if nothing needs it any more."""
        if obj.live > 0 or obj.refs > 0 or obj.handles or obj is self._root.obj:
            return
        if self._objects.get(obj.ident) is obj:
            del self._objects[obj.ident]
        self._names.forget(obj.ident)
        if obj.fd is not None:
            self._close_dir(obj.fd)
        places, obj.places = obj.places, []
        for d, _ in places:
            d.refs -= 1
            self._release(d)

    def _get_node(self, obj: _Object, alias: bytes) -> _Node:
        node = obj.nodes.get(alias)
        if node is None:
            node = obj.nodes[alias] = _Node(self._next_inode, obj, alias)
            self._next_inode += 1
            self._nodes[node.inode] = node
            obj.live += 1
        return node

    def _drop_if_unused(self, node: _Node) -> None:
        if node.lookups > 0 or node is self._root:
            return
        self._nodes.pop(node.inode, None)
        obj = node.obj
        if obj.nodes.get(node.alias) is node:
            del obj.nodes[node.alias]
        obj.live -= 1
        self._release(obj)

    def _reply(self, node: _Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
        """Attributes for an entry handed to the kernel, which counts one more lookup of `node`."""
        entry = entry_from_stat(st, node.inode, timeout=_TIMEOUT)
        node.lookups += 1
        return entry

    def _entry_for(self, directory: _Object, stored: bytes, spelling: bytes) -> pyfuse3.EntryAttributes:
        obj, st = self._object_at(directory, stored)
        node = self._get_node(obj, b"" if spelling == stored else spelling)
        return self._reply(node, st)

    # -- reaching an object ------------------------------------------------------------------------

    def _locate(self, obj: _Object) -> tuple[_Object, bytes, os.stat_result] | None:
        """A place where the non-directory `obj` still is, with its attributes. Places that no longer
        hold it are forgotten; with none left, `obj` is detached (its number may be given away)."""
        while obj.places:
            directory, name = obj.places[-1]
            assert directory.fd is not None
            try:
                st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == obj.ident:
                return directory, name, st
            self._remove_place(obj, directory, name)
        self._detach(obj)
        return None

    def _stat(self, obj: _Object) -> os.stat_result:
        if obj.fd is not None:
            return os.stat(obj.fd)
        if obj.handles:
            return os.stat(next(iter(obj.handles)))
        found = self._locate(obj)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return found[2]

    @contextlib.contextmanager
    def _path(self, obj: _Object) -> Iterator[tuple[bytes, bool]]:
        """A path naming `obj` itself, and whether it may be followed (never for symlinks).

        A name is pinned first: opened with O_PATH|O_NOFOLLOW and checked to be `obj`, then named
        through that descriptor. So a name swapped for a symlink by someone writing the backing
        directory directly, between the check and the operation, can never redirect the operation
        outside the backing tree. A symlink itself is named by directory and name, never followed.
        """
        if obj.fd is not None:
            yield _proc(obj.fd), True
            return
        found = self._locate(obj)
        if found is not None:
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
            return
        if obj.handles:
            yield _proc(next(iter(obj.handles))), True  # open, but no name left
            return
        raise pyfuse3.FUSEError(errno.ENOENT)

    # -- names -------------------------------------------------------------------------------------

    def _own(self, directory: _Object, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """Give a new entry to the caller, as the kernel would (only possible, and only needed, when
        the daemon runs as root and serves other users)."""
        if self._as_root and (ctx.uid != 0 or ctx.gid != 0):
            os.chown(name, ctx.uid, ctx.gid, dir_fd=directory.fd, follow_symlinks=False)

    def _gone(self, directory: _Object, name: bytes, ident: Ident) -> None:
        """`name` in `directory`, which held the object `ident`, is no more."""
        obj = self._objects.get(ident)
        if obj is None:
            return
        if obj.fd is not None:
            self._detach(obj)  # a directory has one name
            return
        self._remove_place(obj, directory, name)
        if not obj.places:
            self._detach(obj)

    # -- lookups and attributes -------------------------------------------------------------------

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        directory = self._dir(parent_inode)
        if name == b".":
            return self._reply(parent, self._stat(directory))
        if name == b"..":
            if directory is self._root.obj:
                return self._reply(self._root, self._stat(directory))
            return self._entry_for(directory, b"..", b"..")
        stored = self._names.require(directory, name)
        return self._entry_for(directory, stored, name)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for inode, count in inode_list:
            node = self._nodes.get(inode)
            if node is None or node is self._root:
                continue
            node.lookups = max(0, node.lookups - count)
            self._drop_if_unused(node)

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        return entry_from_stat(self._stat(node.obj), node.inode, timeout=_TIMEOUT)

    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
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
                old = self._stat(obj)
                atime = attr.st_atime_ns if fields.update_atime else old.st_atime_ns
                mtime = attr.st_mtime_ns if fields.update_mtime else old.st_mtime_ns
                os.utime(path, ns=(atime, mtime), follow_symlinks=follow)
        return entry_from_stat(self._stat(obj), node.inode, timeout=_TIMEOUT)

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        found = self._locate(self._node(inode).obj)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        directory, name, _ = found
        return os.readlink(name, dir_fd=directory.fd)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        assert self._root.obj.fd is not None
        st = os.statvfs(self._root.obj.fd)
        data = pyfuse3.StatvfsData()
        for attr in _STATVFS_FIELDS:
            setattr(data, attr, getattr(st, attr))
        return data

    # -- creating and removing names ---------------------------------------------------------------

    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        directory = self._dir(parent_inode)
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
            obj, st = self._object_at(directory, stored)
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != obj.ident:
                self._release(obj)
                raise pyfuse3.FUSEError(errno.ESTALE)
            node = self._get_node(obj, b"" if stored == name else name)
        except BaseException:
            os.close(fd)
            raise
        self._opened(obj, fd)
        return pyfuse3.FileInfo(fh=fd), self._reply(node, st)

    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        directory = self._dir(parent_inode)
        self._names.require_free(directory, name)
        os.mkdir(name, stat.S_IMODE(mode), dir_fd=directory.fd)
        self._names.noted(directory, added=name)
        self._own(directory, name, ctx)
        return self._entry_for(directory, name, name)

    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        directory = self._dir(parent_inode)
        self._names.require_free(directory, name)
        os.mknod(name, mode, rdev, dir_fd=directory.fd)
        self._names.noted(directory, added=name)
        self._own(directory, name, ctx)
        return self._entry_for(directory, name, name)

    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        directory = self._dir(parent_inode)
        self._names.require_free(directory, name)
        os.symlink(target, name, dir_fd=directory.fd)
        self._names.noted(directory, added=name)
        self._own(directory, name, ctx)
        return self._entry_for(directory, name, name)

    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        obj = self._node(inode).obj
        if obj.fd is not None:
            raise pyfuse3.FUSEError(errno.EPERM)  # no hard links to directories
        directory = self._dir(new_parent_inode)
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
        return self._entry_for(directory, new_name, new_name)

    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        directory = self._dir(parent_inode)
        stored = self._names.require(directory, name)
        st = os.stat(stored, dir_fd=directory.fd, follow_symlinks=False)
        os.unlink(stored, dir_fd=directory.fd)
        self._names.noted(directory, removed=stored)
        self._gone(directory, stored, (st.st_dev, st.st_ino))

    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        directory = self._dir(parent_inode)
        stored = self._names.require(directory, name)
        st = os.stat(stored, dir_fd=directory.fd, follow_symlinks=False)
        os.rmdir(stored, dir_fd=directory.fd)
        self._names.noted(directory, removed=stored)
        self._gone(directory, stored, (st.st_dev, st.st_ino))

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
        old_dir = self._dir(parent_inode_old)
        new_dir = self._dir(parent_inode_new)
        self._names.check_new_name(name_new)
        src = self._names.require(old_dir, name_old)
        src_st = os.stat(src, dir_fd=old_dir.fd, follow_symlinks=False)
        src_ident = (src_st.st_dev, src_st.st_ino)
        dst = self._names.resolve(new_dir, name_new)
        if dst is None:
            os.rename(src, name_new, src_dir_fd=old_dir.fd, dst_dir_fd=new_dir.fd)
            self._names.noted(old_dir, removed=src)
            self._names.noted(new_dir, added=name_new)
        elif old_dir.ident == new_dir.ident and dst == src:
            # A case-only rename: the entry itself takes the new spelling.
            if name_new != src:
                os.rename(src, name_new, src_dir_fd=old_dir.fd, dst_dir_fd=new_dir.fd)
                self._names.noted(old_dir, removed=src, added=name_new)
            self._retire(src_ident, b"" if name_new == dst else name_new)
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
            self._gone(new_dir, dst, dst_ident)
        self._moved(src_ident, old_dir, src, name_old, new_dir, name_new)

    def _retire(self, ident: Ident, alias: bytes) -> None:
        """Make the node the kernel had for a rename's target unfindable: the kernel now treats it as
        dead (a directory it marks so can never be used again), so no later lookup may return it."""
        obj = self._objects.get(ident)
        if obj is not None:
            obj.nodes.pop(alias, None)

    def _moved(
        self, ident: Ident, old_dir: _Object, src: bytes, name_old: bytes, new_dir: _Object, name_new: bytes
    ) -> None:
        """After a rename: the moved object is at its new place, and the node the kernel moved (the
        one for the spelling the rename named it by) is now its canonical node, as its entry is now
        spelled as stored."""
        obj = self._objects.get(ident)
        if obj is None:
            return
        if obj.fd is None:
            self._remove_place(obj, old_dir, src)
            self._add_place(obj, new_dir, name_new)
        moved = obj.nodes.pop(b"" if name_old == src else name_old, None)
        if moved is not None:
            moved.alias = b""
            obj.nodes[b""] = moved

    # -- directories --------------------------------------------------------------------------------

    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        obj = self._dir(inode)
        fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=obj.fd)
        fh = self._next_dir
        self._next_dir += 1
        self._dirs[fh] = _DirHandle(obj, fd)
        obj.refs += 1
        return pyfuse3.FileHandleT(fh)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if start_id == 0 or handle.names is None:
            # A snapshot per pass: entries made or removed meanwhile may be missed, none is repeated.
            handle.names = [os.fsencode(n) for n in os.listdir(handle.fd)]
        names = handle.names
        for index in range(start_id, len(names)):
            name = names[index]
            try:
                obj, st = self._object_at(handle.obj, name)
            except FileNotFoundError:
                continue
            node = self._get_node(obj, b"")
            entry = entry_from_stat(st, node.inode, timeout=_TIMEOUT)
            if not pyfuse3.readdir_reply(token, name, entry, index + 1):
                self._drop_if_unused(node)
                break
            node.lookups += 1

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self._dirs.pop(fh, None)
        if handle is not None:
            os.close(handle.fd)
            handle.obj.refs -= 1
            self._release(handle.obj)

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        handle = self._dirs.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        await trio.to_thread.run_sync(os.fsync, handle.fd)

    # -- open files ----------------------------------------------------------------------------------

    def _opened(self, obj: _Object, fd: int) -> None:
        obj.handles.add(fd)
        self._files[fd] = obj

    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        obj = self._node(inode).obj
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
        except BaseException:
            os.close(fd)
            raise
        self._opened(obj, fd)
        return pyfuse3.FileInfo(fh=fd)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        view = memoryview(buf)
        done = 0
        while done < len(view):
            done += os.pwrite(fh, view[done:], off + done)
        return done

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        pass

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        obj = self._files.pop(fh, None)
        os.close(fh)
        if obj is not None:
            obj.handles.discard(fh)
            self._release(obj)

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)

    # -- extended attributes -------------------------------------------------------------------------

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        with self._path(self._node(inode).obj) as (path, follow):
            return os.getxattr(path, name, follow_symlinks=follow)

    async def setxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        with self._path(self._node(inode).obj) as (path, follow):
            os.setxattr(path, name, value, follow_symlinks=follow)

    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        with self._path(self._node(inode).obj) as (path, follow):
            return [os.fsencode(n) for n in os.listxattr(path, follow_symlinks=follow)]

    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        with self._path(self._node(inode).obj) as (path, follow):
            os.removexattr(path, name, follow_symlinks=follow)

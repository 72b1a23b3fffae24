"""The casefold layer's object table: which backing objects the kernel knows, and by which FUSE inodes.

Strategy. A backing object is known by its (st_dev, st_ino). Directories are held open with `O_PATH`
descriptors (as libfuse's passthrough_ll does); other objects are known by the places (directory, stored
name) they were seen at, checked against their (st_dev, st_ino) before each use, and by the layer's open
descriptors of them, which keep an open file usable after its last name is gone. Only directories and
open files hold descriptors, so a tree of any size can be walked with the usual descriptor limit. An
object whose last known name goes away is detached from its identity, so a new file that the backing
filesystem gives the same number never inherits the kernel's inode of the old one.

Inode numbers. A FUSE inode (a `Node`) is a backing object *and* the spelling that reached it: the
stored spelling gets the object's canonical node (all hard links share it, alias b""), and each other
spelling gets an alias node of its own. `casefold.py` explains why (the kernel's `vfs_rename` ignores a
rename between two names of one inode, so a case-only rename would never arrive).

A node the kernel still knows but that no lookup may return any more (the old canonical node after a
rename through another spelling, a rename's overwritten target) is kept in the object's `retired`
list, so that every node the kernel may have cached attributes of can still be named when the object
changes. Open files and directory handles remember the node they were opened through.

Lifetimes. An object lives while the kernel knows one of its nodes (lookup counts, dropped by forget),
an object it knows is in it (directories), a directory handle is open on it, or the layer holds it open.
`objects` maps (st_dev, st_ino) to the object that currently has that identity; a detached object lives
on for the kernel's sake but is never found by identity again. When an object is dropped or detached,
`on_drop(ident)` is called, so the name index can forget that directory's listing.

The table knows no pyfuse3: failures are `OSError`s with the errno the kernel is to get (the FUSE
boundary, `common.fuse_errors`, turns them into replies), so it can be tested without a mount. It is not
thread-safe: the operations call it from one trio thread, with no await in between (see `casefold.py`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

# Linux only (O_PATH): a Mac's own volumes already fold case. Type checkers skip the rest on other
# platforms, as for `casefold.py`.
assert sys.platform == "linux"

__all__ = ["PLACES_KEPT", "ROOT_INODE", "BackingObject", "DirHandle", "Ident", "Node", "ObjectTable"]

ROOT_INODE: Final = 1  # FUSE_ROOT_ID, which pyfuse3 calls ROOT_INODE
PLACES_KEPT: Final = 8  # known names of one object (hard links)
_DIR_FLAGS: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Ident = tuple[int, int]  # (st_dev, st_ino) of a backing object


@dataclass(eq=False, slots=True)
class BackingObject:
    """A backing object the kernel knows (or a directory that objects it knows are in)."""

    ident: Ident
    kind: int  # stat.S_IFMT of its mode
    fd: int | None  # directories: an O_PATH descriptor; other objects: None
    nodes: dict[bytes, Node] = field(default_factory=dict)  # findable nodes, by alias
    live: int = 0  # nodes the kernel has not forgotten (findable or not)
    refs: int = 0  # directories: places of other objects here, and open directory handles
    places: list[tuple[BackingObject, bytes]] = field(default_factory=list)  # non-directories: (dir, name)
    handles: set[int] = field(default_factory=set)  # non-directories: our open descriptors of it
    retired: list[Node] | None = None  # live nodes no lookup returns any more


@dataclass(eq=False, slots=True)
class Node:
    """A FUSE inode: a backing object as reached through one spelling (b"" = the stored spelling)."""

    inode: int
    obj: BackingObject
    alias: bytes
    lookups: int = 0
    opens: int = 0  # files open through this node (the kernel's open files of this inode)
    stored: tuple[int, int] | None = None  # (mtime_ns, size) of the contents put into its page cache


@dataclass(eq=False, slots=True)
class DirHandle:
    """An open directory handle: the directory, opened for reading, and the snapshot being listed."""

    obj: BackingObject
    fd: int
    names: list[bytes] | None = None
    node: Node | None = None  # the node it was opened through


class ObjectTable:
    """The objects and nodes of one casefold mount, rooted at the directory `backing`.

    `backing` is opened at once, following a symlink (an `OSError` if it cannot be); its node is
    `ROOT_INODE`, which is never forgotten. `on_drop(ident)` is called whenever an object stops being
    findable by `ident`. Call `close()` to release every descriptor still held.
    """

    def __init__(self, backing: bytes, *, on_drop: Callable[[Ident], None]) -> None:
        self._on_drop = on_drop
        self._dir_fds: set[int] = set()
        fd = self.open_dir(backing, follow=True)  # the backing directory may be reached by a symlink
        st = os.fstat(fd)
        root = BackingObject((st.st_dev, st.st_ino), stat.S_IFDIR, fd, live=1)
        self.root = Node(ROOT_INODE, root, b"", lookups=1)
        root.nodes[b""] = self.root
        self.objects: dict[Ident, BackingObject] = {root.ident: root}
        self.nodes: dict[int, Node] = {self.root.inode: self.root}
        self._next_inode = ROOT_INODE + 1
        self._dirs: dict[int, DirHandle] = {}
        self._next_dir = 1
        self._files: dict[int, tuple[BackingObject, Node | None]] = {}

    def close(self) -> None:
        """Release every descriptor (for after the filesystem stops: an unmount forgets nothing)."""
        for fd in [*self._dir_fds, *self._files, *(h.fd for h in self._dirs.values())]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._dir_fds.clear()
        self._dirs.clear()
        self._files.clear()
        self.objects.clear()
        self.nodes.clear()

    def open_dir(self, name: bytes, dir_fd: int | None = None, *, follow: bool = False) -> int:
        """An `O_PATH` descriptor of the directory `name`, held until `close_dir` or `close`."""
        fd = os.open(name, _DIR_FLAGS & ~os.O_NOFOLLOW if follow else _DIR_FLAGS, dir_fd=dir_fd)
        self._dir_fds.add(fd)
        return fd

    def close_dir(self, fd: int) -> None:
        self._dir_fds.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    # -- finding nodes and objects -------------------------------------------------------------------

    def node(self, inode: int) -> Node:
        """The node `inode` (ESTALE if the kernel asks for one it has forgotten)."""
        node = self.nodes.get(inode)
        if node is None:
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        return node

    def directory(self, inode: int) -> BackingObject:
        """The directory that node `inode` is (ENOTDIR if it is something else)."""
        obj = self.node(inode).obj
        if obj.fd is None:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return obj

    def object_at(self, directory: BackingObject, name: bytes) -> tuple[BackingObject, os.stat_result]:
        """The object stored as `name` in `directory`, and its attributes."""
        assert directory.fd is not None
        st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        ident = (st.st_dev, st.st_ino)
        kind = stat.S_IFMT(st.st_mode)
        obj = self.objects.get(ident)
        if obj is not None and obj.kind != kind:
            self.detach(obj)  # the number was given to a new object behind our back
            obj = None
        if obj is None:
            fd = None
            if kind == stat.S_IFDIR:
                fd = self.open_dir(name, directory.fd)
                st = os.fstat(fd)
                ident = (st.st_dev, st.st_ino)
            obj = self.objects[ident] = BackingObject(ident, kind, fd)
        if obj.fd is None:
            self.add_place(obj, directory, name)
        return obj, st

    def node_at(
        self, directory: BackingObject, stored: bytes, spelling: bytes
    ) -> tuple[Node, os.stat_result]:
        """The node for `spelling` of the entry stored as `stored` in `directory`, and its attributes
        (the caller counts the lookup when it hands the node to the kernel)."""
        obj, st = self.object_at(directory, stored)
        return self.get_node(obj, b"" if spelling == stored else spelling), st

    def is_canonical(self, node: Node) -> bool:
        """Whether `node` is the one lookups of its object's stored spelling return."""
        return node.alias == b"" and node.obj.nodes.get(b"") is node

    def _retire(self, node: Node) -> None:
        if node.obj.retired is None:
            node.obj.retired = []
        node.obj.retired.append(node)

    def get_node(self, obj: BackingObject, alias: bytes) -> Node:
        """The findable node of `obj` for `alias`, made with a new inode number if there is none."""
        node = obj.nodes.get(alias)
        if node is None:
            node = obj.nodes[alias] = Node(self._next_inode, obj, alias)
            self._next_inode += 1
            self.nodes[node.inode] = node
            obj.live += 1
        return node

    # -- places --------------------------------------------------------------------------------------

    def add_place(self, obj: BackingObject, directory: BackingObject, name: bytes) -> None:
        """Remember that `obj` is stored as `name` in `directory` (the oldest of too many is dropped)."""
        for d, n in obj.places:
            if d.ident == directory.ident and n == name:
                return
        obj.places.append((directory, name))
        directory.refs += 1
        if len(obj.places) > PLACES_KEPT:
            old, _ = obj.places.pop(0)
            old.refs -= 1
            self.release(old)

    def remove_place(self, obj: BackingObject, directory: BackingObject, name: bytes) -> None:
        kept = []
        for d, n in obj.places:
            if d.ident == directory.ident and n == name:
                d.refs -= 1
                self.release(d)
            else:
                kept.append((d, n))
        obj.places = kept

    def locate(self, obj: BackingObject) -> tuple[BackingObject, bytes, os.stat_result] | None:
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
            self.remove_place(obj, directory, name)
        self.detach(obj)
        return None

    def stat(self, obj: BackingObject) -> os.stat_result:
        """The attributes of `obj` itself (ENOENT if it has neither a name nor an open descriptor)."""
        if obj.fd is not None:
            return os.stat(obj.fd)
        if obj.handles:
            return os.stat(next(iter(obj.handles)))
        found = self.locate(obj)
        if found is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return found[2]

    # -- lifetimes -----------------------------------------------------------------------------------

    def forget(self, inode: int, count: int) -> None:
        """The kernel forgets `count` lookups of `inode` (the root is never forgotten)."""
        node = self.nodes.get(inode)
        if node is None or node is self.root:
            return
        node.lookups = max(0, node.lookups - count)
        self.drop_if_unused(node)

    def drop_if_unused(self, node: Node) -> None:
        """Free `node` if the kernel holds no lookup of it, and its object if nothing else needs it."""
        if node.lookups > 0 or node is self.root:
            return
        self.nodes.pop(node.inode, None)
        obj = node.obj
        if obj.nodes.get(node.alias) is node:
            del obj.nodes[node.alias]
        elif obj.retired and node in obj.retired:
            obj.retired.remove(node)
            if not obj.retired:
                obj.retired = None
        obj.live -= 1
        self.release(obj)

    def detach(self, obj: BackingObject) -> None:
        """Make `obj` unfindable by identity (its last name is gone, or its number was reused)."""
        if self.objects.get(obj.ident) is obj:
            del self.objects[obj.ident]
        self._on_drop(obj.ident)
        self.release(obj)

    def release(self, obj: BackingObject) -> None:
        """Free `obj` if nothing needs it any more."""
        if obj.live > 0 or obj.refs > 0 or obj.handles or obj is self.root.obj:
            return
        if self.objects.get(obj.ident) is obj:
            del self.objects[obj.ident]
        self._on_drop(obj.ident)
        if obj.fd is not None:
            self.close_dir(obj.fd)
        places, obj.places = obj.places, []
        for d, _ in places:
            d.refs -= 1
            self.release(d)

    # -- names that changed --------------------------------------------------------------------------

    def gone(self, directory: BackingObject, name: bytes, ident: Ident) -> None:
        """`name` in `directory`, which held the object `ident`, is no more."""
        obj = self.objects.get(ident)
        if obj is None:
            return
        if obj.fd is not None:
            self.detach(obj)  # a directory has one name
            return
        self.remove_place(obj, directory, name)
        if not obj.places:
            self.detach(obj)

    def retire(self, ident: Ident, alias: bytes) -> None:
        """Make the node the kernel had for a rename's target unfindable: the kernel now treats it as
        dead (a directory it marks so can never be used again), so no later lookup may return it."""
        obj = self.objects.get(ident)
        if obj is not None:
            node = obj.nodes.pop(alias, None)
            if node is not None:
                self._retire(node)

    def moved(
        self,
        ident: Ident,
        old_dir: BackingObject,
        src: bytes,
        name_old: bytes,
        new_dir: BackingObject,
        name_new: bytes,
    ) -> None:
        """After a rename of `src` (reached as `name_old`) in `old_dir` to `name_new` in `new_dir`: the
        moved object is at its new place, and the node the kernel moved (the one for the spelling the
        rename named it by) is now its canonical node, as its entry is now spelled as stored."""
        obj = self.objects.get(ident)
        if obj is None:
            return
        if obj.fd is None:
            self.remove_place(obj, old_dir, src)
            self.add_place(obj, new_dir, name_new)
        moved = obj.nodes.pop(b"" if name_old == src else name_old, None)
        if moved is not None:
            moved.alias = b""
            replaced = obj.nodes.get(b"")
            if replaced is not None and replaced is not moved:
                self._retire(replaced)
            obj.nodes[b""] = moved

    # -- open descriptors ----------------------------------------------------------------------------

    def opened(self, obj: BackingObject, fd: int, node: Node | None = None) -> None:
        """`fd` is an open descriptor of the non-directory `obj`, opened through `node`, owned by the
        table from now on."""
        obj.handles.add(fd)
        self._files[fd] = (obj, node)
        if node is not None:
            node.opens += 1

    def file(self, fd: int) -> tuple[BackingObject, Node | None] | None:
        """The object an open descriptor is of, and the node it was opened through."""
        return self._files.get(fd)

    def close_file(self, fd: int) -> None:
        """Close `fd` (from `opened`, or not known at all) and free its object if nothing else needs it."""
        known = self._files.pop(fd, None)
        os.close(fd)
        if known is not None:
            obj, node = known
            if node is not None:
                node.opens -= 1
            obj.handles.discard(fd)
            self.release(obj)

    def open_dir_handle(self, obj: BackingObject, fd: int, node: Node | None = None) -> int:
        """A new directory handle number for `fd`, a descriptor of the directory `obj` opened for
        reading (through `node`); the handle keeps `obj` alive and owns `fd`."""
        fh = self._next_dir
        self._next_dir += 1
        self._dirs[fh] = DirHandle(obj, fd, node=node)
        obj.refs += 1
        return fh

    def dir_handle(self, fh: int) -> DirHandle | None:
        return self._dirs.get(fh)

    def close_dir_handle(self, fh: int) -> None:
        """Close the directory handle `fh` (nothing if there is none) and free its directory if unused."""
        handle = self._dirs.pop(fh, None)
        if handle is not None:
            os.close(handle.fd)
            handle.obj.refs -= 1
            self.release(handle.obj)

"""A read-only FUSE view of a NAR file, served from the archive without unpacking it.

The caller builds the archive's `NarIndex` (one streaming pass that validates all of it) before anything
is mounted; this module only numbers its nodes and answers requests from it. Inodes are given by a
breadth-first walk from the root (inode 1), so the children of a directory have consecutive inodes and
`readdir` can resume at any position in constant time. File contents are read with `os.pread` from one
descriptor of the archive, at the offsets the index recorded; a small file is put into the page cache
whole when it is first opened (`common.STORE_ON_OPEN_MAX`), which saves its read request. The kernel may
keep names and attributes for an hour and contents across opens: the archive does not change. Memory is
a few list slots, one dict entry and one byte per node, on top of the index itself; nothing grows with
the archive's size otherwise.

Write requests never reach the handlers (the mount is `ro`, the kernel answers EROFS), but every
write-type handler still answers EROFS, should the filesystem be mounted without it.

Nix: nar-accessor.cc (`NarAccessor`), whose job this is for `nix nar cat`/`ls`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Final

import pyfuse3

from xstore.errors import XstoreError
from xstore.fuse.common import STORE_ON_OPEN_MAX, read_only_entry, wrap_handlers
from xstore.fuse.notify import KernelNotifier, Notifier, NullNotifier
from xstore.nar.listing import DirectoryNode, NarIndex, Node, RegularNode, SymlinkNode

ROOT: Final = pyfuse3.ROOT_INODE


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


@wrap_handlers
class ReadOnlyOperations(pyfuse3.Operations):
    """Every handler that would change the filesystem answers EROFS; extended attributes are empty.

    No handler of a read-only view ever waits (awaits) for anything, so one task serves every request
    (`fuse_tasks`, which the mount lifecycle passes to `pyfuse3.main`): a second one would only cost a
    lock hand-over per request. The kernel is told things through `notifier`, which `init()` (called
    once mounted) sets up."""

    fuse_tasks = 1

    def __init__(self) -> None:
        super().__init__()
        self.notifier: Notifier = NullNotifier()

    def init(self) -> None:
        self.notifier = KernelNotifier()

    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        raise _erofs()

    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        raise _erofs()

    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise _erofs()

    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        raise _erofs()

    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise _erofs()

    async def setxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise _erofs()

    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        raise _erofs()

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return []


def check_open_flags(flags: int) -> None:
    """Refuse an open for writing (or one that would truncate or create) with EROFS."""
    if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_CREAT):
        raise _erofs()


def pread_exactly(fd: int, size: int, offset: int) -> bytes:
    """`size` bytes at `offset` of `fd`, fewer only at end of file.

    Called in the trio thread, not through `trio.to_thread`: the kernel sends reads of at most 128 KiB,
    and one such hop costs more than the read (measured: a 400 MiB file read 1.6 times faster inline,
    cold or warm). The price is that a read waiting on a slow disk holds up the other requests.
    """
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def check_mountable(index: NarIndex) -> None:
    """Raise `XstoreError` unless the archive's root is a directory (a mount's root must be one)."""
    if not isinstance(index.root, DirectoryNode):
        kind = "a single regular file" if isinstance(index.root, RegularNode) else "a single symlink"
        raise XstoreError(
            f"the archive holds {kind}, not a directory: there is nothing to mount "
            "(use 'xstore nar cat' or 'xstore nar restore')"
        )


@wrap_handlers
class NarOperations(ReadOnlyOperations):
    """The filesystem of one indexed NAR file.

    `nar` is the archive's path, or an open file descriptor of it (which is duplicated, so the caller
    keeps its own); `index` its `NarIndex` (from `xstore.nar.listing.index_file`), whose root must be a
    directory. Raises `XstoreError` if it is not, or if the file is shorter than the index says.
    `close()` closes the archive.
    """

    def __init__(
        self, nar: str | bytes | os.PathLike[str] | os.PathLike[bytes] | int, index: NarIndex
    ) -> None:
        super().__init__()
        check_mountable(index)
        self._fd = os.dup(nar) if isinstance(nar, int) else os.open(nar, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(self._fd).st_size < index.nar_size:
                raise XstoreError("the archive is shorter than when it was indexed")
        except BaseException:
            os.close(self._fd)
            raise
        self._index = index
        # Per inode (index 0 unused): the node, its name, its parent's inode.
        self._nodes: list[Node | None] = [None, index.root]
        self._names: list[bytes] = [b"", b""]
        self._parents: list[int] = [0, ROOT]
        self._first_child: dict[int, int] = {}  # directory inode -> inode of its first entry
        self._inode_of: dict[int, int] = {id(index.root): ROOT}  # id(node) -> inode, for lookup
        self._opens: dict[int, int] = {}  # inode -> files open on it
        queue = [ROOT]
        for inode in queue:  # breadth first: the queue grows while it is walked
            node = self._nodes[inode]
            assert isinstance(node, DirectoryNode)
            self._first_child[inode] = len(self._nodes)
            for name, child in node.entries.items():
                child_inode = len(self._nodes)
                self._nodes.append(child)
                self._names.append(name)
                self._parents.append(inode)
                self._inode_of[id(child)] = child_inode
                if isinstance(child, DirectoryNode):
                    queue.append(child_inode)
        self._stored = bytearray(len(self._nodes))  # per inode: 1 once its contents are in the page cache

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def node_count(self) -> int:
        return len(self._nodes) - 1

    # -- helpers -------------------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        if 0 < inode < len(self._nodes):
            node = self._nodes[inode]
            if node is not None:
                return node
        raise pyfuse3.FUSEError(errno.ENOENT)

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if isinstance(node, RegularNode):
            return read_only_entry(inode, kind="regular", size=node.size, executable=node.executable)
        if isinstance(node, SymlinkNode):
            return read_only_entry(inode, kind="symlink", size=len(node.target))
        return read_only_entry(inode, kind="directory")

    # -- handlers ------------------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if not isinstance(parent, DirectoryNode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            return self._attributes(parent_inode)
        if name == b"..":
            return self._attributes(self._parents[parent_inode])
        child = parent.entries.get(name)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(self._inode_of[id(child)])

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(inode)

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        node = self._node(inode)
        if not isinstance(node, SymlinkNode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        if not isinstance(self._node(inode), DirectoryNode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node = self._node(fh)
        assert isinstance(node, DirectoryNode)
        first = self._first_child[fh]
        for position in range(start_id, len(node.entries)):
            inode = first + position
            if not pyfuse3.readdir_reply(token, self._names[inode], self._attributes(inode), position + 1):
                return

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        return

    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        node = self._node(inode)
        check_open_flags(flags)
        if isinstance(node, DirectoryNode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not isinstance(node, RegularNode):
            raise pyfuse3.FUSEError(errno.ELOOP)
        opens = self._opens.get(inode, 0)
        if not opens and not self._stored[inode] and 0 < node.size <= STORE_ON_OPEN_MAX:
            # No file of this inode is open, so no read of it is in progress (see `notify`).
            data = pread_exactly(self._fd, node.size, node.offset)
            if len(data) == node.size and self.notifier.store(inode, data):
                self._stored[inode] = 1
        self._opens[inode] = opens + 1
        # The archive does not change under the mount: the kernel may keep cached pages across opens.
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode), keep_cache=True)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        node = self._node(fh)
        if not isinstance(node, RegularNode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if off >= node.size or size <= 0:
            return b""
        want = min(size, node.size - off)
        data = pread_exactly(self._fd, want, node.offset + off)
        if len(data) != want:
            raise XstoreError(
                f"unexpected end of the archive while reading '{os.fsdecode(self._path_of(fh))}' "
                "(was it truncated after mounting?)"
            )
        return data

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        opens = self._opens.pop(fh, 0) - 1
        if opens > 0:
            self._opens[fh] = opens

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = (self._index.nar_size + 4095) // 4096
        data.f_bfree = data.f_bavail = 0
        data.f_files = self.node_count
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    def _path_of(self, inode: int) -> bytes:
        parts = []
        while inode != ROOT:
            parts.append(self._names[inode])
            inode = self._parents[inode]
        return b"/" + b"/".join(reversed(parts))

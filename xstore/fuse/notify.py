"""Telling the kernel what changed: the FUSE notifications xstore's filesystems send from their handlers.

The kernel caches names (dentries), attributes and file contents of a FUSE filesystem for as long as the
filesystem's replies allow. A filesystem that lets it cache must tell it when what it cached stops being
true, and must do so without deadlocking: pyfuse3 runs every handler on one thread, and a notification
that waits for a lock the kernel holds while it waits for that thread's reply never returns. The three
notifications used here wait for nothing of the kind:

- `invalidate_attributes(inode)` (`FUSE_NOTIFY_INVAL_INODE` without a range, pyfuse3's
  `invalidate_inode(inode, attr_only=True)`): marks the inode's cached attributes stale; the kernel takes
  no inode lock for it (fuse_reverse_inval_inode), so it may be sent from any handler. The next stat, or
  the next read (the kernel checks size and mtime before serving cached pages, and drops them when the
  mtime moved), asks the filesystem again.
- `increment_epoch()` (`FUSE_NOTIFY_INC_EPOCH`, Linux 6.16, FUSE protocol 7.44): every dentry the kernel
  cached before is looked up again at its next use. It is an atomic increment in the kernel, no lock at
  all, and it takes effect before the write returns, so a handler can send it before replying. libfuse 3.14
  and pyfuse3 3.5 do not know it: it is written to the session's /dev/fuse descriptor directly (the
  16-byte `fuse_out_header` with `unique` 0 and the notification code in `error`, as libfuse writes every
  notification). A kernel without it answers EINVAL, found out once when the filesystem starts
  (`probe_epoch`); the filesystems then give dentries no lifetime at all.
  pyfuse3's `invalidate_entry` is the precise alternative, but the kernel takes the parent directory's
  lock for it, which it holds for the very requests (unlink, rename, create, lookup) after which an entry
  must go: sent from their handlers it deadlocks; sent from another thread (`invalidate_entry_async`) it
  arrives after the reply, too late for a process that looks at once.
- `store(inode, data)` (`FUSE_NOTIFY_STORE`, pyfuse3's `notify_store`): puts a small file's contents into
  the page cache when it is opened, which saves the read request that would follow. The kernel locks the
  pages it fills; a read of the same inode in progress holds them locked while it waits for this thread,
  so callers send it only while no file of that inode is open (no open file, no read in progress).

`KernelNotifier` sends them for a mounted filesystem; `NullNotifier` stands in where there is no mount
(handlers driven directly by tests) and makes the filesystems give the kernel nothing to cache.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from typing import Final, Protocol

log = logging.getLogger("xstore.fuse")

__all__ = ["FUSE_NOTIFY_INC_EPOCH", "KernelNotifier", "Notifier", "NullNotifier", "session_descriptor"]

FUSE_NOTIFY_INC_EPOCH: Final = 8  # enum fuse_notify_code, include/uapi/linux/fuse.h (7.44)
_HEADER: Final = struct.Struct("<IiQ")  # struct fuse_out_header: len, error, unique
FUSE_DEVICE: Final = "/dev/fuse"


class Notifier(Protocol):
    """What the filesystems tell the kernel (see the module docstring)."""

    @property
    def mounted(self) -> bool:
        """Whether there is a kernel to tell: without one, nothing may be cached."""

    @property
    def epoch(self) -> bool:
        """Whether `increment_epoch` works here, so that dentries may be cached."""

    def invalidate_attributes(self, inode: int) -> None:
        """Mark the cached attributes of `inode` stale (nothing if the kernel has forgotten it)."""

    def increment_epoch(self) -> None:
        """Make every cached dentry be looked up again at its next use."""

    def store(self, inode: int, data: bytes) -> bool:
        """Put `data` into the page cache of `inode` from offset 0; False if that cannot be done."""


class NullNotifier:
    """No kernel to tell: the filesystems let the kernel cache nothing."""

    mounted = False
    epoch = False

    def invalidate_attributes(self, inode: int) -> None:
        pass

    def increment_epoch(self) -> None:
        pass

    def store(self, inode: int, data: bytes) -> bool:
        return False


def session_descriptor() -> int | None:
    """The descriptor of this process's FUSE session (its /dev/fuse connection), if it has exactly one.

    pyfuse3 keeps it to itself; a process that serves one filesystem holds one such descriptor (opened
    by libfuse, or passed by fusermount3)."""
    found = []
    try:
        entries = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for entry in entries:
        try:
            if os.readlink(f"/proc/self/fd/{entry}") == FUSE_DEVICE:
                found.append(int(entry))
        except OSError:
            continue
    return found[0] if len(found) == 1 else None


class KernelNotifier:
    """Notifications for the filesystem this process serves through pyfuse3 (after `pyfuse3.init`).

    Construct it in the filesystem's `init()` handler, when the session exists: it finds the session's
    descriptor and probes whether the kernel knows `FUSE_NOTIFY_INC_EPOCH`."""

    mounted = True

    def __init__(self) -> None:
        self._fd = session_descriptor()
        self._store_works = True
        self.epoch = self._fd is not None and self.probe_epoch()
        log.info("FUSE notifications: epoch %s", "supported" if self.epoch else "not supported")

    def probe_epoch(self) -> bool:
        """Send one `FUSE_NOTIFY_INC_EPOCH`: True if the kernel took it (harmless: nothing is cached yet)."""
        try:
            self._write_epoch()
        except OSError as e:
            log.info("the kernel refuses FUSE_NOTIFY_INC_EPOCH (%s): dentries are not cached", e.strerror)
            return False
        return True

    def _write_epoch(self) -> None:
        assert self._fd is not None
        header = _HEADER.pack(_HEADER.size, FUSE_NOTIFY_INC_EPOCH, 0)
        if os.write(self._fd, header) != len(header):
            raise OSError(errno.EIO, "short write of a FUSE notification")

    def invalidate_attributes(self, inode: int) -> None:
        import pyfuse3

        try:
            pyfuse3.invalidate_inode(pyfuse3.InodeT(inode), attr_only=True)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the kernel has evicted it, nothing is cached
                log.error("invalidating the attributes of inode %d failed: %s", inode, e)

    def increment_epoch(self) -> None:
        if not self.epoch:
            return
        try:
            self._write_epoch()
        except OSError as e:
            # Cannot happen once the probe worked; if it does, cached names may be stale for a timeout.
            log.error("FUSE_NOTIFY_INC_EPOCH failed: %s", e)

    def store(self, inode: int, data: bytes) -> bool:
        if not self._store_works:
            return False
        import pyfuse3

        try:
            pyfuse3.notify_store(pyfuse3.InodeT(inode), 0, data)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                self._store_works = False
            log.info("FUSE_NOTIFY_STORE for inode %d failed: %s", inode, e)
            return False
        return True

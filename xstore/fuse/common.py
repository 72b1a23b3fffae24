"""What the FUSE filesystems share: the errno boundary, attribute building, and what a first open may
put into the page cache at once.

Every handler of every filesystem is wrapped by `fuse_errors`: `pyfuse3.FUSEError` passes through; an
`OSError` (xstore's `OSError` subclasses included) becomes its errno; any other `XstoreError` becomes
EIO and is logged; anything else is a bug, logged with its traceback and answered with EIO, so a bad
request never brings the daemon down. This module is only imported where pyfuse3 is available.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, Final, ParamSpec, TypeVar

import pyfuse3

from xstore.errors import XstoreError

log = logging.getLogger("xstore.fuse")

P = ParamSpec("P")
R = TypeVar("R")

# Files up to this size are put into the page cache when first opened (`notify.Notifier.store`), which
# saves the read request: the kernel's readahead would ask for 128 KiB in one request anyway.
STORE_ON_OPEN_MAX: Final = 128 * 1024
# The owner the read-only views show, asked once (every entry of a listing carries it).
_OWNER: Final = (os.getuid(), os.getgid())


def fuse_errors(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Translate exceptions escaping an async FUSE handler into errno replies."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except XstoreError as e:
            log.warning("%s: %s", handler.__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("bug in FUSE handler %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def wrap_handlers(cls: type[Any]) -> type[Any]:
    """Class decorator: apply `fuse_errors` to every coroutine method that overrides a
    `pyfuse3.Operations` handler."""
    import inspect

    for name, member in list(vars(cls).items()):
        if inspect.iscoroutinefunction(member) and hasattr(pyfuse3.Operations, name):
            setattr(cls, name, fuse_errors(member))
    return cls


def entry_from_stat(
    st: os.stat_result, inode: int, *, timeout: float = 1.0, attr_timeout: float | None = None
) -> pyfuse3.EntryAttributes:
    """FUSE attributes from a stat result, under the given inode number: the kernel may keep the entry
    for `timeout` seconds, and the attributes for `attr_timeout` (the same by default)."""
    entry = pyfuse3.EntryAttributes()
    # One assignment per field (every entry of a listing comes through here; a loop of getattr/setattr
    # by name costs twice as much).
    entry.st_mode = pyfuse3.ModeT(st.st_mode)
    entry.st_nlink = st.st_nlink
    entry.st_uid = st.st_uid
    entry.st_gid = st.st_gid
    entry.st_rdev = st.st_rdev
    entry.st_size = st.st_size
    entry.st_blksize = st.st_blksize
    entry.st_blocks = st.st_blocks
    entry.st_atime_ns = st.st_atime_ns
    entry.st_mtime_ns = st.st_mtime_ns
    entry.st_ctime_ns = st.st_ctime_ns
    entry.st_ino = pyfuse3.InodeT(inode)
    entry.generation = 0
    entry.entry_timeout = timeout
    entry.attr_timeout = timeout if attr_timeout is None else attr_timeout
    return entry


def read_only_entry(
    inode: int, *, kind: str, size: int = 0, executable: bool = False, timeout: float = 3600.0
) -> pyfuse3.EntryAttributes:
    """Attributes of a node of a read-only view (NAR or store): Nix's modes, mtime 1, owned by the
    mounting user. `kind` is "regular", "directory" or "symlink"."""
    entry = pyfuse3.EntryAttributes()
    if kind == "directory":
        entry.st_mode = stat.S_IFDIR | 0o555
        entry.st_nlink = 2
    elif kind == "symlink":
        entry.st_mode = stat.S_IFLNK | 0o777
        entry.st_nlink = 1
    else:
        entry.st_mode = stat.S_IFREG | (0o555 if executable else 0o444)
        entry.st_nlink = 1
    entry.st_size = size
    entry.st_blksize = 4096
    entry.st_blocks = (size + 511) // 512
    entry.st_uid, entry.st_gid = _OWNER
    entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = 1_000_000_000
    entry.st_ino = pyfuse3.InodeT(inode)
    entry.generation = 0
    entry.entry_timeout = timeout
    entry.attr_timeout = timeout
    return entry

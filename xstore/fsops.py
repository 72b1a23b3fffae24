"""Filesystem operations on store contents: canonicalisation as Nix does it, and removal of read-only trees.

Nix makes everything in the store read-only and timeless once a path is complete: files 0444 (0555 when
the owner could execute them), directories 0555, no setuid, setgid or sticky bits, and an mtime of 1
second after the epoch on everything, symlinks included. Such a tree cannot be deleted as it is, so
removal first gives the owner write permission on every directory. Nix: posix-fs-canonicalise.cc
(`canonicalisePathMetaData`), util.cc (`deletePath`).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys

PLATFORM: str = sys.platform  # a plain string: both branches type-check on every platform


def canonicalise(real_path: bytes) -> None:
    """Make the tree at `real_path` read-only and timeless, as Nix does."""
    st = os.lstat(real_path)
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(real_path) as it:
            children = [os.fsencode(e.path) for e in it]
        for child in children:
            canonicalise(child)
    if not stat.S_ISLNK(st.st_mode):
        mode = 0o555 if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR else 0o444
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(real_path, mode)
    if st.st_mtime != 1:
        os.utime(real_path, (st.st_atime, 1), follow_symlinks=False)


def make_writable(real_path: bytes) -> None:
    """Give the owner write permission on every directory of a tree (so it can be removed)."""
    st = os.lstat(real_path)
    if stat.S_ISDIR(st.st_mode):
        os.chmod(real_path, 0o755)  # noqa: S103 (only to delete it: the tree is being removed)
        with os.scandir(real_path) as it:
            children = [os.fsencode(e.path) for e in it if e.is_dir(follow_symlinks=False)]
        for child in children:
            make_writable(child)


def remove_tree(real_path: bytes) -> None:
    """Delete a (possibly read-only, canonicalised) tree; missing is fine."""
    try:
        st = os.lstat(real_path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        make_writable(real_path)
        shutil.rmtree(real_path)
    else:
        os.unlink(real_path)


# Linux renameat2(2): swap two names in one step. Nix has no equivalent; repair uses it to put a fetched
# copy in place of a damaged path without a moment where the path is missing.
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: bytes, b: bytes) -> bool:
    """Swap the entries `a` and `b` atomically (Linux `renameat2(RENAME_EXCHANGE)`). Returns False where
    the system or the filesystem cannot (then nothing changed); raises `OSError` for other failures."""
    if not PLATFORM.startswith("linux"):
        return False
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fsdecode(a), None, os.fsdecode(b))

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

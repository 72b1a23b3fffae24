"""Opening a store from its URL, and finding the store paths a user names.

`open_store(url)` turns Nix's store URL syntax (`storeurl.py`) into a store object of the right kind;
each kind's module is imported only when a URL names it, so commands that never leave the local store
never load HTTP, S3 or protocol code. A local store named as a destination is created when missing,
deciding its case hack by probing, as `store init` does.

`resolve_path(store, arg)` accepts what Nix accepts for a path argument: a store path (also one inside a
store object, `/nix/store/<hash>-x/bin/y`), a base name (`<hash>-x`), or any filesystem path that leads
into the store, following symlinks such as `./result` whether they point at the logical location
(`/nix/store/...`, which need not exist on this machine) or at the real one (`ROOT/nix/store/...`).
Nix: store-api.cc (`followLinksToStorePath`, `toStorePath`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from xstore.casehack import CaseHackMode, Fold
from xstore.errors import InvalidStorePathError, InvalidStoreUrlError, UnsupportedError
from xstore.storeapi import Store
from xstore.storepath import STORE_DIR, StorePath, parse_base_name, parse_store_path
from xstore.storeurl import StoreUrl, parse_store_url

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from typing import Final

_MAX_LINKS: Final = 40  # as the kernel's limit on symlinks followed in one lookup

# Parameters each kind takes (Nix's names); anything else is refused so a typo does not pass silently.
_LOCAL_PARAMS: Final = frozenset({"root"})
# Binary caches: scheme -> (module, opener, parameters beside the common ones).
_CACHE_OPENERS: Final = {
    "file": ("xstore.cache.file", "open_file_cache", frozenset[str]()),
    "http": ("xstore.cache.http", "open_http_cache", frozenset({"netrc-file"})),
    "https": ("xstore.cache.http", "open_http_cache", frozenset({"netrc-file"})),
    "s3": (
        "xstore.cache.s3",
        "open_s3_cache",
        frozenset(
            {
                "region",
                "aws-region",
                "endpoint",
                "scheme",
                "profile",
                "multipart-upload",
                "buffer-size",
                "multipart-chunk-size",
                "multipart-threshold",
            }
        ),
    ),
}


def _check_params(url: StoreUrl, known: frozenset[str]) -> None:
    unknown = sorted(set(url.params) - known)
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise InvalidStoreUrlError(
            f"store URL '{url.text}': unknown parameter '{unknown[0]}' (this kind of store takes: {accepted})"
        )


def local_root(url: StoreUrl) -> Path:
    """The root directory a local store URL names (the default store when it names none)."""
    from xstore.store import default_store_root

    return Path(url.path) if url.path else default_store_root()


def open_store(
    url: str | StoreUrl | None,
    *,
    create: bool = False,
    read_only: bool = False,
    case_hack: CaseHackMode = CaseHackMode.AUTO,
    fold: Fold | None = None,
) -> Store:
    """Open the store `url` names (None: the default local store).

    With `create`, a local store that does not exist is created (probing its filesystem for the case
    hack unless `case_hack` says otherwise), and a store directory that is a read-only bind mount is made
    writable for this process alone by entering a private mount namespace (Linux; must happen before any
    thread starts). `read_only` is for commands that only read: a local store is then opened without
    writing anything (it works on a full disk and for users who may only read it). Raises
    `InvalidStoreUrlError`, `UnsupportedError` for a kind not supported here, `StoreError` for a store
    that cannot be opened.
    """
    if not isinstance(url, StoreUrl):
        url = parse_store_url(url)
    if url.scheme == "local":
        from xstore.store import LocalStore

        _check_params(url, _LOCAL_PARAMS)
        root = local_root(url)
        if not create:
            return LocalStore.open(root, read_only=read_only)
        ensure_writable(root / "nix" / "store")
        return LocalStore.create(root, case_hack=case_hack, fold=fold)
    if url.scheme == "ssh":
        from xstore.remote.ssh import open_ssh_store

        return open_ssh_store(url)
    if url.scheme in ("ssh-ng", "unix", "daemon"):
        from xstore.remote.daemon import open_daemon_store

        return open_daemon_store(url)
    if url.scheme in _CACHE_OPENERS:
        import importlib

        from xstore.cache.base import CACHE_PARAMS

        module, function, extra = _CACHE_OPENERS[url.scheme]
        _check_params(url, CACHE_PARAMS | extra)
        opener = getattr(importlib.import_module(module), function)
        store: Store = opener(url, create=create)
        return store
    raise UnsupportedError(f"stores of the kind '{url.scheme}' ({url.base()}) are not supported yet")


def ensure_writable(store_dir: Path) -> None:
    """For commands that write to a store: if its directory is a read-only bind mount, continue in a
    private mount namespace where it is writable (NixOS/nix#9705). Must run before any thread starts."""
    if not sys.platform.startswith("linux") or not store_dir.is_dir():
        return
    # A read-only mount shows in statvfs: only then is the mount table read (mountns).
    if os.statvfs(store_dir).f_flag & os.ST_RDONLY:
        from xstore import mountns

        if mountns.status(store_dir).read_only:
            mountns.enter_writable_namespace(store_dir)  # refuses a read-only filesystem clearly


# -- path arguments -----------------------------------------------------------------------------------


def _store_dirs(store: Store) -> list[str]:
    """Directories whose entries are this store's objects: the logical one and, for a local store,
    the real one."""
    dirs = [store.store_dir]
    real = getattr(store, "real_store_dir", None)
    if real is not None:
        dirs.append(os.path.abspath(os.fspath(real)))
    return dirs


def _in_store(path: str, dirs: list[str]) -> StorePath | None:
    for d in dirs:
        if path.startswith(d + "/"):
            base = path[len(d) + 1 :].split("/", 1)[0]
            if base:
                return parse_base_name(base)
    return None


def resolve_path(store: Store, arg: str) -> StorePath:
    """The store path `arg` names (see the module docstring). Raises `InvalidStorePathError` when `arg`
    leads nowhere into the store. Validity is not checked here."""
    dirs = _store_dirs(store)
    if "/" not in arg:
        if not os.path.lexists(arg):
            try:
                return parse_base_name(arg)
            except InvalidStorePathError:
                pass
    elif arg.startswith(STORE_DIR + "/"):
        direct = _in_store(os.path.normpath(arg), dirs)
        if direct is not None:
            return direct
    path = os.path.abspath(arg)
    for _ in range(_MAX_LINKS):
        found = _in_store(path, dirs)
        if found is not None:
            return found
        # Follow the first symlink on the way, then look again.
        parts = path.split("/")
        for i in range(2, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if os.path.islink(prefix):
                target = os.readlink(prefix)
                rest = "/".join(parts[i:])
                joined = os.path.join(os.path.dirname(prefix), target)
                path = os.path.normpath(os.path.join(joined, rest) if rest else joined)
                break
        else:
            break
    else:
        raise InvalidStorePathError(f"'{arg}': too many levels of symbolic links", path=arg, reason="loop")
    raise InvalidStorePathError(
        f"'{arg}' is not in the store ({' or '.join(dirs)}): give a store path, a base name such as "
        "'<hash>-name', or a link into the store",
        path=arg,
        reason="not in the store",
    )


def resolve_paths(store: Store, args: list[str]) -> list[StorePath]:
    return [resolve_path(store, a) for a in args]


__all__ = ["ensure_writable", "local_root", "open_store", "parse_store_path", "resolve_path", "resolve_paths"]

"""Garbage collection and deletion in a local store, with Nix's roots, Nix's locks and a crash-safe order.

Roots, as Nix keeps them (`find_roots`):

- symlinks under `nix/var/nix/gcroots/` and `nix/var/nix/profiles/`, directories followed recursively,
  a link into the store (`/nix/store/...`, or the store's real directory) is a root; a link elsewhere
  is an indirect root if it leads to a symlink into the store (`add_root` makes those: a link LINK to
  the path, and `gcroots/auto/<nix32 of the SHA-1 of LINK>` pointing at LINK); a link in
  `gcroots/auto` whose target is gone is removed; a regular file named like a valid store path is a
  root for it;
- temporary roots of running processes (`temproots.py`), xstore's imports and copies among them;
- on Linux, what running processes use: their executables, working directories, open files, mapped
  files, environments (Nix's "runtime roots", read from /proc).

Liveness is computed over the whole graph at once: everything reachable from a root through references,
and, as with Nix's defaults, from a path to its deriver (`keep_derivations`, on) and from a derivation
to its outputs (`keep_outputs`, off). A path is dead when no live path refers to it; deleting the
dead ones referrers first keeps the database consistent at every step.

The collection (`collect_garbage`) follows Nix's protocol, so that it can run beside Nix or another
xstore adding paths:

1. `gc.lock` is taken exclusively (waiting, and saying so, while another collector runs), and a socket
   `gc-socket/socket` is opened, through which processes that add temporary roots from now on tell the
   collector; the collector answers once the path is safe, and makes a process wait when it is deleting
   that very path. The socket is bound under a temporary name and renamed into place, so a client never
   finds it missing while the lock is held.
2. The roots are found; the temporary roots read from the files; liveness computed.
3. Each dead path, referrers before their references: skipped if it became a temporary root meanwhile
   or its path lock is held; else unregistered in one transaction (which refuses if a valid path refers
   to it, and is the point of no return), then moved into a trash directory inside the store
   (`.xstore-trash`, one rename: the name disappears at once), then removed. A crash leaves either a
   valid path with its contents, or an invalid path (garbage for the next collection), or an entry in
   the trash, which the next collection empties first.
4. Entries of the store directory that are not valid paths are garbage too (partial imports, stale lock
   files, temporary directories of killed processes), as Nix has it, unless a temporary root names
   their hash part or a process holds a lock on them.
5. `.links` entries whose link count fell to 1 (no store file uses them any more) are removed.

Nix: gc.cc (`collectGarbage`, `findRoots`, `findRuntimeRoots`, `addIndirectRoot`, `addPermRoot`),
local-store.cc (`invalidatePathChecked`), nix-store.cc (`opGC`, `opDelete`).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import os
import re
import selectors
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from xstore.errors import InvalidPathError, StoreError, UsageError
from xstore.fsops import make_writable
from xstore.hashing import encode_nix32
from xstore.notices import notice
from xstore.store import LocalStore, temp_token
from xstore.storepath import HASH_PART_LEN, STORE_DIR, StorePath, parse_base_name
from xstore.temproots import GC_SOCKET, open_gc_lock, read_temp_roots, socket_address

GC_ROOTS_DIR: Final = "gcroots"
PROFILES_DIR: Final = "profiles"
LINKS_DIR: Final = ".links"
TRASH_DIR: Final = ".xstore-trash"
MAX_ROOT_LINE: Final = 64 << 10  # longest line a client of the roots socket may send (a store path: far less)
CENSORED: Final = "{censored}"
MIB: Final = 1024 * 1024
PLATFORM: str = sys.platform  # a plain string: both branches type-check on every platform

# A store path inside text (an environment), as Nix's runtime-root scan finds them.
_STORE_PATH_RE: Final = re.compile(rb"/[0-9a-z]{32}-[0-9a-zA-Z+\-._?=]*")
# A line of /proc/PID/maps with a path: the sixth field.
_MAPS_RE: Final = re.compile(rb"^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(/\S+)\s*$")

Roots = dict[StorePath, set[str]]


class Action(enum.Enum):
    DELETE_DEAD = "delete-dead"
    DELETE_SPECIFIC = "delete-specific"
    RETURN_LIVE = "return-live"
    RETURN_DEAD = "return-dead"


@dataclass(frozen=True, slots=True)
class GcOptions:
    """What a collection does. `max_freed` stops it once more bytes than that are freed (0: delete
    nothing). `paths` are the paths to delete for `DELETE_SPECIFIC`; `ignore_liveness` then disregards
    permanent and runtime roots (never temporary ones, nor referrers)."""

    action: Action = Action.DELETE_DEAD
    max_freed: int | None = None
    keep_derivations: bool = True
    keep_outputs: bool = False
    paths: tuple[StorePath, ...] = ()
    ignore_liveness: bool = False
    dry_run: bool = False


@dataclass(slots=True)
class GcResult:
    """What a collection did, or (for the `RETURN_*` actions and dry runs) found."""

    paths: list[str] = field(default_factory=list)  # deleted (or live, or dead), as logical paths
    bytes_freed: int = 0
    links_removed: int = 0
    links_saving: float | None = None  # MiB still saved by hard links, after the links clean-up


# -- roots ------------------------------------------------------------------------------------------------


def _in_store(store: LocalStore, target: str) -> StorePath | None:
    """The store path a path leads into (Nix's `toStorePath`): under the logical store directory, or
    under the store's real directory. None for anything else, or a name that is not a store path."""
    for directory in (STORE_DIR, os.fspath(store.real_store_dir)):
        if target.startswith(directory + "/"):
            base = target[len(directory) + 1 :].split("/", 1)[0]
            try:
                return parse_base_name(base)
            except ValueError:
                return None
    return None


def _in_store_text(store: LocalStore, target: str) -> bool:
    return target.startswith((STORE_DIR + "/", os.fspath(store.real_store_dir) + "/"))


def find_roots(
    store: LocalStore, *, censor: bool = False, temporary: bool = True, runtime: bool = True
) -> Roots:
    """The roots of `store`: each rooted valid path with how it is rooted (link paths, `{temp:PID}`,
    `/proc/...` entries; `{censored}` for the last two with `censor`). Nix: `LocalStore::findRoots`."""
    roots: Roots = {}
    for directory in (GC_ROOTS_DIR, PROFILES_DIR):
        _find_roots_in(store, os.fspath(store.state_dir / directory), roots)
    if runtime:
        for path, links in find_runtime_roots(store).items():
            roots.setdefault(path, set()).update({CENSORED} if censor else links)
    if temporary:
        for path, labels in _temp_roots(store).items():
            if store.is_valid(path):
                roots.setdefault(path, set()).update({CENSORED} if censor else labels)
    return roots


def _temp_roots(store: LocalStore) -> Roots:
    found: Roots = {}
    for text, labels in read_temp_roots(store.state_dir).items():
        path = _in_store(store, text)
        if path is None:
            notice(f"warning: ignoring the temporary root '{text}', which is not a store path")
            continue
        found.setdefault(path, set()).update(labels)
    return found


def _find_roots_in(store: LocalStore, path: str, roots: Roots) -> None:
    def found(link: str, target: str) -> None:
        store_path = _in_store(store, target)
        if store_path is None:
            return
        if store.is_valid(store_path):
            roots.setdefault(store_path, set()).add(link)
        else:
            notice(f"skipping invalid root from '{link}' to '{target}'")

    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                _find_roots_in(store, os.path.join(path, name), roots)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if _in_store_text(store, target):
                found(path, target)
            else:
                # An indirect root: a link to a link into the store.
                target = os.path.normpath(os.path.join(os.path.dirname(path), target))
                try:
                    st2 = os.lstat(target)
                except FileNotFoundError:
                    if os.path.dirname(path) == os.fspath(store.state_dir / GC_ROOTS_DIR / "auto"):
                        notice(f"removing stale link from '{path}' to '{target}'")
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                    return
                if stat.S_ISLNK(st2.st_mode):
                    target2 = os.readlink(target)
                    if _in_store_text(store, target2):
                        found(target, target2)
        elif stat.S_ISREG(st.st_mode):
            try:
                named = parse_base_name(os.path.basename(path))
            except ValueError:
                return
            if store.is_valid(named):
                roots.setdefault(named, set()).add(path)
    except OSError as e:
        # Only permanent failures are passed over, as Nix does.
        if e.errno in (errno.EACCES, errno.ENOENT, errno.ENOTDIR):
            notice(f"cannot read potential root '{path}'")
        else:
            raise


def find_runtime_roots(store: LocalStore) -> Roots:
    """Valid paths that running processes use (Linux: /proc; elsewhere none). Nix: `findRuntimeRoots`."""
    unchecked: dict[str, set[str]] = {}
    if not PLATFORM.startswith("linux"):
        return {}
    real = os.fspath(store.real_store_dir)

    def link(where: str) -> None:
        try:
            target = os.readlink(where)
        except OSError:
            return
        if target.startswith("/"):
            unchecked.setdefault(target, set()).add(where)

    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        base = f"/proc/{pid}"
        link(f"{base}/exe")
        link(f"{base}/cwd")
        try:
            fds = os.listdir(f"{base}/fd")
        except OSError:
            continue
        for fd in fds:
            link(f"{base}/fd/{fd}")
        for what, pattern in (("maps", _MAPS_RE), ("environ", None)):
            try:
                with open(f"{base}/{what}", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if pattern is not None:
                for line in data.splitlines():
                    match = pattern.match(line)
                    if match:
                        unchecked.setdefault(os.fsdecode(match.group(1)), set()).add(f"{base}/{what}")
            else:
                for directory in (STORE_DIR, real):
                    prefix = re.escape(os.fsencode(directory))
                    for match in re.finditer(prefix + _STORE_PATH_RE.pattern, data):
                        unchecked.setdefault(os.fsdecode(match.group(0)), set()).add(f"{base}/{what}")
    for name in ("modprobe", "fbsplash", "poweroff_cmd"):
        where = f"/proc/sys/kernel/{name}"
        try:
            with open(where, "rb") as kernel_file:
                unchecked.setdefault(os.fsdecode(kernel_file.read()), set()).add(where)
        except OSError:
            pass
    roots: Roots = {}
    for target, links in unchecked.items():
        path = _in_store(store, target)
        if path is not None and store.is_valid(path):
            roots.setdefault(path, set()).update(links)
    return roots


def indirect_root_name(store: LocalStore, link: str) -> Path:
    """Where `add_root` records the link `link` (absolute): `gcroots/auto/<nix32 of SHA-1 of LINK>`."""
    digest = hashlib.sha1(link.encode(), usedforsecurity=False).digest()
    return store.state_dir / GC_ROOTS_DIR / "auto" / encode_nix32(digest)


def _make_symlink(link: str, target: str) -> None:
    """Point `link` at `target`, replacing an existing link atomically (a temporary link, renamed)."""
    os.makedirs(os.path.dirname(link), exist_ok=True)
    temp = f"{link}.tmp-{os.getpid()}-{int.from_bytes(os.urandom(4), 'little') >> 1}"
    os.symlink(target, temp)
    try:
        os.replace(temp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def add_root(store: LocalStore, link: str | os.PathLike[str], path: StorePath) -> str:
    """Make `link` a garbage collector root for the valid `path`, as `nix-store --add-root` does: a
    symlink `link` -> `/nix/store/...` (replacing a symlink into the store, never anything else) and
    an indirect root in `gcroots/auto` pointing at `link`. Returns the link's absolute path."""
    absolute = os.path.normpath(os.path.abspath(link))
    if _in_store_text(store, absolute) or absolute == os.fspath(store.real_store_dir):
        raise UsageError(f"creating a garbage collector root ({absolute}) in the store is forbidden")
    store.add_temp_root(path)
    store.require(path)
    if os.path.lexists(absolute) and (
        not os.path.islink(absolute) or not _in_store_text(store, os.readlink(absolute))
    ):
        raise StoreError(f"cannot create symlink '{absolute}'; already exists", path=absolute)
    _make_symlink(absolute, path.path)
    _make_symlink(os.fspath(indirect_root_name(store, absolute)), absolute)
    return absolute


def roots_keeping(
    store: LocalStore, paths: Iterable[StorePath], *, keep: tuple[bool, bool] = (True, False)
) -> list[tuple[str, StorePath]]:
    """`nix-store -q --roots`: the roots (link, path) whose closure holds any of `paths`, sorted; `keep`
    is (keep-derivations, keep-outputs), Nix's defaults."""
    from xstore.query import closure

    keep_derivations, keep_outputs = keep
    wanted = closure(store, paths, flip=True, include_outputs=keep_outputs, include_derivers=keep_derivations)
    found = find_roots(store)
    return sorted((link, path) for path, links in found.items() if path in wanted for link in links)


# -- liveness ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Graph:
    refs: dict[str, list[str]]  # valid path -> references
    derivers: dict[str, str]
    outputs: dict[str, list[str]]  # valid derivation -> its valid outputs

    def live_from(self, roots: Iterable[str], *, keep_derivations: bool, keep_outputs: bool) -> set[str]:
        live: set[str] = set()
        todo = [r for r in roots if r in self.refs]
        while todo:
            path = todo.pop()
            if path in live:
                continue
            live.add(path)
            follow = list(self.refs[path])
            if keep_derivations:
                deriver = self.derivers.get(path)
                if deriver is not None and deriver in self.refs:
                    follow.append(deriver)
            if keep_outputs:
                follow.extend(self.outputs.get(path, ()))
            todo.extend(p for p in follow if p not in live)
        return live

    def referrers_first(self, paths: set[str]) -> list[str]:
        """`paths` ordered so that every path comes before the paths it refers to (within the set)."""
        order: list[str] = []
        done: set[str] = set()
        for start in sorted(paths):
            if start in done:
                continue
            stack: list[tuple[str, int]] = [(start, 0)]
            done.add(start)
            while stack:
                path, i = stack[-1]
                refs = self.refs[path]
                if i < len(refs):
                    stack[-1] = (path, i + 1)
                    ref = refs[i]
                    if ref in paths and ref not in done:
                        done.add(ref)
                        stack.append((ref, 0))
                else:
                    stack.pop()
                    order.append(path)
        order.reverse()
        return order


# -- the collector's socket --------------------------------------------------------------------------------


class _Shared:
    """What the collector and its socket's client threads share: the hash parts of the temporary
    roots, and the hash part of the path being deleted right now."""

    def __init__(self, temp_hashes: set[str]) -> None:
        self.cond = threading.Condition()
        self.temp_hashes = temp_hashes
        self.pending: str | None = None
        self.stopping = False

    @contextlib.contextmanager
    def deleting(self, hash_part: str) -> Iterator[bool]:
        """Mark `hash_part` as being deleted (clients adding it as a root wait until the block ends);
        yields False if it has become a temporary root, which must not be deleted."""
        with self.cond:
            if hash_part in self.temp_hashes:
                yield False
                return
            self.pending = hash_part
        try:
            yield True
        finally:
            with self.cond:
                self.pending = None
                self.cond.notify_all()

    def add(self, hash_part: str) -> None:
        with self.cond:
            self.temp_hashes.add(hash_part)
            while self.pending == hash_part and not self.stopping:
                self.cond.wait()


class _RootsServer:
    """The socket through which processes tell a running collector about new temporary roots: one
    line per store path, answered with "1". Nix: the server thread of `collectGarbage`."""

    def __init__(self, store: LocalStore, shared: _Shared) -> None:
        self.shared = shared
        self.path = store.state_dir / GC_SOCKET
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".socket-{os.getpid()}-{os.urandom(4).hex()}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address, dir_fd = socket_address(temp)
        try:
            self.sock.bind(address)
            os.chmod(temp, 0o666)  # noqa: S103 (any user may add roots, as with Nix's socket)
            self.sock.listen(64)
            os.replace(temp, self.path)  # never missing while the lock is held: clients retry on refusal
        except BaseException:
            self.sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)
        self._wake_r, self._wake_w = os.pipe()
        self._clients: dict[socket.socket, threading.Thread] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="xstore-gc-roots", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                events = sel.select()
                if any(key.fileobj == self._wake_r for key, _ in events):
                    return
                try:
                    client, _ = self.sock.accept()
                except OSError:
                    continue
                thread = threading.Thread(
                    target=self._client, args=(client,), name="xstore-gc-client", daemon=True
                )
                with self._lock:
                    self._clients[client] = thread
                thread.start()

    def _client(self, client: socket.socket) -> None:
        try:
            buffer = b""
            while True:
                data = client.recv(4096)
                if not data:
                    return
                *lines, buffer = (buffer + data).split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace")
                    if text.startswith(STORE_DIR + "/") and len(text) > len(STORE_DIR) + 1 + HASH_PART_LEN:
                        self.shared.add(text[len(STORE_DIR) + 1 :][:HASH_PART_LEN])
                    else:
                        notice("received garbage instead of a root from a client of the garbage collector")
                    client.sendall(b"1")
                if len(buffer) > MAX_ROOT_LINE:
                    # Any local user may connect: a line without end must not fill the collector's memory.
                    notice(
                        f"a client of the garbage collector sent more than {MAX_ROOT_LINE} bytes without a "
                        "line break; closing its connection"
                    )
                    return
        except OSError:
            return
        finally:
            client.close()
            with self._lock:
                self._clients.pop(client, None)

    def stop(self) -> None:
        """Stop answering (the socket file stays, as Nix leaves it: a client then gets "refused" and
        retries, and finds the lock free once the collector has released it)."""
        with self.shared.cond:
            self.shared.stopping = True
            self.shared.cond.notify_all()
        os.write(self._wake_w, b"x")
        self._thread.join()
        with self._lock:
            clients = list(self._clients.items())
        for client, _ in clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        for _, thread in clients:
            thread.join()
        self.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


# -- the collection ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def gc_lock(store: LocalStore) -> Iterator[None]:
    """Hold `gc.lock` exclusively (waiting, with a notice, while another collector runs)."""
    fd = open_gc_lock(store.state_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            notice("waiting for the big garbage collector lock...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _Limit(Exception):  # noqa: N818 (control flow inside a collection, never escapes)
    pass


class Collector:
    """One collection (or deletion) in `store`, holding the collector's lock and socket while it runs.
    Use `run()`; `on_delete(path)` is called as each entry goes, `hook(step, name)` (tests) at each step
    of a deletion."""

    def __init__(
        self,
        store: LocalStore,
        options: GcOptions,
        *,
        on_delete: Callable[[str], None] | None = None,
        hook: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.options = options
        self.on_delete = on_delete or (lambda _path: None)
        self.hook = hook or (lambda _step, _name: None)
        self.result = GcResult()
        self.trash = store.real_store_dir / TRASH_DIR
        self.deleting = options.action in (Action.DELETE_DEAD, Action.DELETE_SPECIFIC) and not options.dry_run

    def run(self) -> GcResult:
        with gc_lock(self.store):
            if self.deleting:
                # Nix keeps a file of reserved space to delete when a full disk must be collected.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.store.db_dir / "reserved")
                self._empty_trash()
                self.store.clean_temp()
            temp = _temp_roots(self.store)
            shared = _Shared({p.hash_part for p in temp})
            server = _RootsServer(self.store, shared)
            try:
                self._collect(shared, temp)
            finally:
                server.stop()
                if self.deleting:
                    self._empty_trash()
        return self.result

    # -- finding what to delete ------------------------------------------------------------------------

    def _collect(self, shared: _Shared, temp: Roots) -> None:
        options = self.options
        store = self.store
        notice("finding garbage collector roots...")
        perm = {} if options.ignore_liveness else find_roots(store, temporary=False)
        refs, derivers, outputs = store.reference_graph()
        graph = _Graph(refs, derivers, outputs)
        specific = options.action is Action.DELETE_SPECIFIC
        keep = {"keep_derivations": options.keep_derivations and not specific,
                "keep_outputs": options.keep_outputs and not specific}  # fmt: skip
        roots = {p.path for p in perm} | {p.path for p in temp}
        live = graph.live_from(roots, **keep)

        if specific:
            wanted = {p.path for p in options.paths}
            self._check_deletable(graph, wanted, live, perm, temp)
            dead = wanted & set(refs)
            others = sorted(p for p in options.paths if p.path not in refs)
            for path in others:
                if not os.path.lexists(store.real_path(path)):
                    raise InvalidPathError(
                        f"path '{path}' is not valid in {store.describe()}", path=path.path
                    )
        else:
            dead = set(refs) - live
            others = []
        entries = self._store_entries()
        invalid = [(n, p) for n, p in entries if p is not None and p.path not in refs]
        junk = [n for n, p in entries if p is None]

        if options.action is Action.RETURN_LIVE:
            shown = set(live)
            shown.update(p.path for n, p in invalid if self._protected(shared, p, n))
            self.result.paths = sorted(shown)
            return
        if options.action is Action.RETURN_DEAD:
            shown = set(dead)
            shown.update(p.path for n, p in invalid if not self._protected(shared, p, n))
            self.result.paths = sorted(shown)
            return
        if options.max_freed == 0:
            return
        if options.dry_run:
            self._dry_run(
                graph, dead, [(n, p) for n, p in invalid if not self._protected(shared, p, n)], junk
            )
            return
        notice("deleting garbage..." if not specific else "deleting specified paths...")
        try:
            for path_text in graph.referrers_first(dead):
                self._delete_valid(shared, graph, live, path_text)
            if specific:
                for path in others:  # present but not valid: leftovers the caller named
                    self._delete_invalid(shared, path.base, path)
            else:
                for name, path in invalid:
                    self._delete_invalid(shared, name, path)
                for name in junk:
                    self._delete_junk(name)
        except _Limit:
            notice(f"deleted more than {options.max_freed} bytes; stopping")
        if self.deleting:
            self._clean_links()

    def _dry_run(
        self,
        graph: _Graph,
        dead: set[str],
        invalid: list[tuple[str, StorePath]],
        junk: list[str],
    ) -> None:
        """What a collection would delete, in the order it would, and the bytes it would free."""
        real = os.fspath(self.store.real_store_dir)
        names = [t[len(STORE_DIR) + 1 :] for t in graph.referrers_first(dead)]
        names += [n for n, _ in invalid]
        names += [n for n in junk if temp_token(n) is None and not self._in_use(n)]
        for name in names:
            self.result.paths.append(f"{STORE_DIR}/{name}")
            self.result.bytes_freed += count_freed(os.path.join(real, name))
            if self.options.max_freed is not None and self.result.bytes_freed > self.options.max_freed:
                return

    def _check_deletable(
        self, graph: _Graph, wanted: set[str], live: set[str], perm: Roots, temp: Roots
    ) -> None:
        """Refuse (before anything is deleted) a path that a path outside the set refers to, or that a
        root keeps alive."""
        referrers: dict[str, list[str]] = {}
        for path, refs in graph.refs.items():
            for ref in refs:
                if ref in wanted and path != ref:
                    referrers.setdefault(ref, []).append(path)
        for text in sorted(wanted):
            outside = sorted(r for r in referrers.get(text, []) if r not in wanted)
            if outside:
                raise StoreError(
                    f"cannot delete '{text}': '{outside[0]}' refers to it "
                    f"(see 'xstore query --referrers {text}')",
                    path=text,
                )
        for text in sorted(wanted):
            if text in live:
                why = self._why_alive(graph, text, wanted, perm, temp)
                raise StoreError(f"cannot delete '{text}' since it is still alive: {why}", path=text)

    @staticmethod
    def _why_alive(graph: _Graph, text: str, wanted: set[str], perm: Roots, temp: Roots) -> str:
        by_text: dict[str, tuple[str, set[str]]] = {}
        for kind, roots in (("root", perm), ("temporary root", temp)):
            for path, links in roots.items():
                by_text.setdefault(path.path, (kind, links))
        # The path itself, or a path in the set that refers to it (the others were refused above).
        todo, seen = [text], {text}
        while todo:
            current = todo.pop(0)
            if current in by_text:
                kind, links = by_text[current]
                link = sorted(links)[0]
                via = "" if current == text else f" through '{current}'"
                return f"it is a garbage collector {kind} ('{link}'){via} (see 'xstore query --roots {text}')"
            for referrer in wanted:
                if referrer not in seen and current in graph.refs.get(referrer, ()):
                    seen.add(referrer)
                    todo.append(referrer)
        return f"see 'xstore query --roots {text}'"

    def _store_entries(self) -> list[tuple[str, StorePath | None]]:
        """The store directory's entries but `.links` and the trash: (name, store path or None)."""
        out: list[tuple[str, StorePath | None]] = []
        with os.scandir(self.store.real_store_dir) as it:
            names = sorted(e.name for e in it)
        for name in names:
            if name in (LINKS_DIR, TRASH_DIR):
                continue
            try:
                path: StorePath | None = parse_base_name(name)
            except ValueError:
                path = None
            out.append((name, path))
        return out

    def _protected(self, shared: _Shared, path: StorePath, name: str) -> bool:
        """An invalid entry that must stay: a temporary root names its hash part, or it is in use."""
        with shared.cond:
            if path.hash_part in shared.temp_hashes:
                return True
        return self._in_use(name)

    def _in_use(self, name: str) -> bool:
        """A process holds a lock on the entry (a lock file, a temporary directory of current Nix's)."""
        with self._claimed(name) as free:
            return not free

    @contextlib.contextmanager
    def _claimed(self, name: str) -> Iterator[bool]:
        """Hold an exclusive lock on the entry `name` for the block (yields False if another process
        holds one: it is in use). A lock file deleted under it is marked "d" at the end, so a process
        that opened it meanwhile takes it for stale, as with Nix's lock files."""
        real = os.path.join(os.fspath(self.store.real_store_dir), name)
        flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = -1
        for mode in (os.O_RDWR, os.O_RDONLY):
            try:
                fd = os.open(real, mode | flags)
                break
            except OSError:
                continue
        if fd < 0:
            yield True  # a symlink, a special file or gone: nothing anybody could lock
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
            if stat.S_ISREG(os.fstat(fd).st_mode) and not os.path.lexists(real):
                with contextlib.suppress(OSError):
                    os.write(fd, b"d")
        finally:
            os.close(fd)

    # -- deleting -------------------------------------------------------------------------------------------

    def _delete_valid(self, shared: _Shared, graph: _Graph, live: set[str], text: str) -> None:
        store = self.store
        path = parse_base_name(text[len(STORE_DIR) + 1 :])
        with shared.deleting(path.hash_part) as allowed:
            if not allowed:
                # It became a temporary root since the roots were read: it and its closure stay.
                live.update(graph.live_from([text], keep_derivations=False, keep_outputs=False))
                return
            if text in live:
                return
            lock = store.try_lock(path)
            if lock is None:
                notice(f"skipping '{text}', which another process is working on")
                return
            try:
                self.hook("unregister", path.base)
                referrer = store.unregister(path)
                if referrer is not None:
                    notice(f"not deleting '{text}': '{referrer}' refers to it now")
                    return
                self.hook("unregistered", path.base)
                trashed = self._to_trash(path.base)
            finally:
                lock.release()
        self._finish(text, trashed)

    def _delete_invalid(self, shared: _Shared, name: str, path: StorePath) -> None:
        with shared.deleting(path.hash_part) as allowed, self._claimed(name) as free:
            if not allowed or not free:
                return
            trashed = self._to_trash(name)
        self._finish(path.path, trashed)

    def _delete_junk(self, name: str) -> None:
        if temp_token(name) is not None:
            return  # a temporary directory of a live xstore (the dead ones went with clean_temp)
        with self._claimed(name) as free:
            if not free:
                return  # in use: a lock file, a temporary directory of current Nix's
            trashed = self._to_trash(name)
        self._finish(f"{STORE_DIR}/{name}", trashed)

    def _to_trash(self, name: str) -> str | None:
        """Move the entry `name` of the store directory into the trash (one rename); its name there, or
        None if it was not there."""
        real = os.path.join(os.fspath(self.store.real_store_dir), name)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return None
        os.makedirs(self.trash, mode=0o700, exist_ok=True)
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IWUSR:
            os.chmod(real, 0o755)  # noqa: S103 (moving a directory to another parent updates its "..")
        trashed = f"{name}-{os.urandom(4).hex()}"
        os.rename(real, os.path.join(self.trash, trashed))
        self.hook("trashed", name)
        return trashed

    def _finish(self, shown: str, trashed: str | None) -> None:
        self.on_delete(shown)
        self.result.paths.append(shown)
        if trashed is not None:
            self.result.bytes_freed += remove_counting(os.path.join(self.trash, trashed), self.hook)
        self.hook("removed", shown)
        limit = self.options.max_freed
        if limit is not None and self.result.bytes_freed > limit:
            raise _Limit

    def _empty_trash(self) -> None:
        """Remove what the trash holds (after a crash: paths unregistered already), then the trash."""
        try:
            names = os.listdir(self.trash)
        except FileNotFoundError:
            return
        for name in names:
            remove_counting(os.path.join(self.trash, name))
        with contextlib.suppress(OSError):
            os.rmdir(self.trash)

    def _clean_links(self) -> None:
        """Remove `.links` entries no store file uses any more (link count 1); note what the remaining
        links save, as Nix does: the sum of (links - 1) * size, less the sum of sizes and the directory's
        own blocks."""
        links = self.store.real_store_dir / LINKS_DIR
        notice("deleting unused links...")
        try:
            entries = os.scandir(links)
        except FileNotFoundError:
            return
        actual = unshared = 0
        with entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if st.st_nlink != 1:
                    actual += st.st_size
                    unshared += (st.st_nlink - 1) * st.st_size
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                self.result.links_removed += 1
        overhead = os.stat(links).st_blocks * 512
        self.result.links_saving = (unshared - actual - overhead) / MIB


def count_freed(path: str) -> int:
    """The bytes deleting the tree at `path` would free, as `remove_counting` counts them."""
    freed = 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if st.st_nlink <= 2 else 0
    for directory, dirs, files in os.walk(path):
        for name in [*files, *dirs]:
            st = os.lstat(os.path.join(directory, name))
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink <= 2:
                freed += st.st_size
    return freed


def remove_counting(path: str, hook: Callable[[str, str], None] | None = None) -> int:
    """Delete the tree at `path` (read-only directories included); return the bytes it freed as Nix
    counts them (the size of each file or symlink with one or two links: the second may be `.links`')."""
    freed = 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        freed += st.st_size if st.st_nlink <= 2 else 0
        os.unlink(path)
        return freed
    make_writable(os.fsencode(path))
    for directory, dirs, files in os.walk(path, topdown=False):
        for name in files:
            where = os.path.join(directory, name)
            st = os.lstat(where)
            freed += st.st_size if st.st_nlink <= 2 else 0
            os.unlink(where)
            if hook is not None:
                hook("unlinked", where)
        for name in dirs:
            where = os.path.join(directory, name)
            if os.path.islink(where):
                st = os.lstat(where)
                freed += st.st_size if st.st_nlink <= 2 else 0
                os.unlink(where)
            else:
                os.rmdir(where)
    os.rmdir(path)
    return freed


def collect_garbage(
    store: LocalStore,
    options: GcOptions,
    *,
    on_delete: Callable[[str], None] | None = None,
    hook: Callable[[str, str], None] | None = None,
) -> GcResult:
    """Collect garbage in `store` as `options` say (see the module docstring). Raises `StoreError` for
    a path `DELETE_SPECIFIC` cannot delete (nothing is deleted then), `InvalidPathError` for one that
    is neither valid nor present. Ctrl-C stops between two steps of a deletion, leaving the store
    consistent."""
    return Collector(store, options, on_delete=on_delete, hook=hook).run()


def delete_paths(
    store: LocalStore,
    paths: Iterable[StorePath],
    *,
    ignore_liveness: bool = False,
    on_delete: Callable[[str], None] | None = None,
) -> GcResult:
    """`nix-store --delete`: delete `paths` if nothing outside them refers to them and no root keeps
    them alive; refuses (deleting nothing) otherwise, naming a referrer or a root."""
    options = GcOptions(
        Action.DELETE_SPECIFIC, paths=tuple(sorted(set(paths))), ignore_liveness=ignore_liveness
    )
    return collect_garbage(store, options, on_delete=on_delete)

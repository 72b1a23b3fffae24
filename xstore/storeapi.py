"""What every kind of store offers: path info, validity, NARs out, paths in.

Nix has one `Store` interface with many kinds behind it (local, binary caches, ssh, the daemon); xstore
follows the same shape so that copying, serving, repairing and the FUSE view work with any of them. A
store here is a small blocking object: it answers queries about store paths, writes a path's NAR to a
sink (with the original names, also from a case-hacked store), and adds a path from its metadata and
a NAR read from a function. Everything else (closures, copying, export streams) is built on these few
operations, once.

NARs move as bytes between two functions: a source writes to `sink(bytes)`, a destination reads with
`read(n)` (up to about n bytes, `b""` at the end). `pipe_nar` joins the two with a thread and a small
bounded queue, so a NAR streams from any store to any other in constant memory.

Nix: store-api.hh (`Store`, `ValidPathInfo`), path-info.cc, store-api.cc (`topoSortPaths`,
`computeFSClosure`).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Iterable, Mapping

from xstore.errors import InvalidPathError, StoreError, XstoreError
from xstore.hashing import HashAlgorithm, HashFormat, format_digest
from xstore.records import FrozenRecord, setfield
from xstore.storepath import STORE_DIR, StorePath, signature_fingerprint

Read = Callable[[int], bytes]
Sink = Callable[[bytes], object]

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    import queue
    from typing import Any, Final, TypeVar

    T = TypeVar("T")

_QUERY_BATCH: Final = 500


class PathInfo(FrozenRecord):
    """What a store knows about one valid path (Nix: `ValidPathInfo`)."""

    __slots__ = (  # noqa: RUF023 (the fields' order)
        "path",
        "nar_hash",
        "nar_size",
        "references",
        "deriver",
        "registration_time",
        "ultimate",
        "sigs",
        "ca",
    )
    path: StorePath
    nar_hash: bytes  # SHA-256 digest of the NAR
    nar_size: int
    references: tuple[StorePath, ...]  # sorted, without duplicates
    deriver: StorePath | None
    registration_time: int  # seconds since the epoch; 0 when unknown
    ultimate: bool  # built locally (trusted without signatures)
    sigs: tuple[str, ...]  # "keyname:base64", sorted
    ca: str | None  # content address ("fixed:r:sha256:...", "text:sha256:..."), if any

    def __init__(
        self,
        path: StorePath,
        nar_hash: bytes,
        nar_size: int,
        references: tuple[StorePath, ...] = (),
        deriver: StorePath | None = None,
        registration_time: int = 0,
        ultimate: bool = False,
        sigs: tuple[str, ...] = (),
        ca: str | None = None,
    ) -> None:
        if len(nar_hash) != HashAlgorithm.SHA256.digest_size:
            raise StoreError(f"NAR hash of '{path}' is not a SHA-256 digest")
        setfield(self, "path", path)
        setfield(self, "nar_hash", nar_hash)
        setfield(self, "nar_size", nar_size)
        setfield(self, "references", references)
        setfield(self, "deriver", deriver)
        setfield(self, "registration_time", registration_time)
        setfield(self, "ultimate", ultimate)
        setfield(self, "sigs", sigs)
        setfield(self, "ca", ca)

    def nar_hash_sri(self) -> str:
        return format_digest(HashAlgorithm.SHA256, self.nar_hash, HashFormat.SRI)

    def nar_hash_nix32(self) -> str:
        """`sha256:<nix32>`, as narinfos and the serve protocol write it."""
        return "sha256:" + format_digest(HashAlgorithm.SHA256, self.nar_hash, HashFormat.NIX32)

    def fingerprint(self) -> str:
        """The text a signature of this path signs (Nix: `ValidPathInfo::fingerprint`)."""
        return signature_fingerprint(self.path, self.nar_hash_nix32(), self.nar_size, self.references)


def path_info_json(
    infos: Iterable[PathInfo], *, closure_sizes: Mapping[StorePath, int] | None = None
) -> dict[str, Any]:
    """`nix path-info --json` as current Nix prints it by default: an object keyed by store path, every
    field present (null when absent)."""
    out: dict[str, Any] = {}
    for info in infos:
        entry: dict[str, Any] = {
            "ca": info.ca,
            "deriver": info.deriver.path if info.deriver else None,
            "narHash": info.nar_hash_sri(),
            "narSize": info.nar_size,
            "references": [r.path for r in info.references],
            "registrationTime": info.registration_time or None,
            "signatures": list(info.sigs),
            "ultimate": info.ultimate,
        }
        if closure_sizes is not None:
            entry["closureSize"] = closure_sizes[info.path]
        out[info.path.path] = entry
    return out


class Store(abc.ABC):
    """A store of any kind. Use as a context manager, or call `close()`.

    Implementations raise `InvalidPathError` for paths they do not have where a path must be valid,
    `StoreError` when the store itself cannot be used, and `InputError`s for bad data they receive.
    """

    url: str = ""
    store_dir: str = STORE_DIR
    # Paths copied out of this store need no signature where they land: a local store the user reads
    # directly vouches for its paths as its owner does. Caches and remote stores leave it False, so
    # their paths must be signed by a trusted key or be content-addressed (see `copy.copy_paths`).
    trusted_as_source: bool = False

    # -- queries ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def query_path_info(self, path: StorePath) -> PathInfo | None:
        """The path's info, or None if the store does not have it."""

    def query_valid_paths(self, paths: Iterable[StorePath]) -> set[StorePath]:
        """Which of `paths` the store has. Stores that can answer many at once override this."""
        return {p for p in paths if self.query_path_info(p) is not None}

    @abc.abstractmethod
    def query_path_from_hash_part(self, hash_part: str) -> StorePath | None:
        """The valid path whose hash part is `hash_part` (32 nix32 characters), or None."""

    def query_info_by_hash_part(self, hash_part: str) -> PathInfo | None:
        """The info of the valid path whose hash part is `hash_part`, or None. Stores that can find it
        in one step override this."""
        path = self.query_path_from_hash_part(hash_part)
        return None if path is None else self.query_path_info(path)

    def require(self, path: StorePath) -> PathInfo:
        info = self.query_path_info(path)
        if info is None:
            raise InvalidPathError(f"path '{path}' is not valid in {self.describe()}", path=path.path)
        return info

    def query_closure(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]:
        """`paths` and everything they refer to, transitively, with their infos. Raises
        `InvalidPathError` for a path the store does not have."""
        infos: dict[StorePath, PathInfo] = {}
        todo = list(paths)
        while todo:
            p = todo.pop()
            if p in infos:
                continue
            info = infos[p] = self.require(p)
            todo.extend(r for r in info.references if r not in infos)
        return infos

    # -- NARs ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def nar_from_path(
        self, path: StorePath, sink: Sink, *, known: PathInfo | None = None, check: bool = True
    ) -> int:
        """Write the path's NAR (original names) to `sink`; return its size. Raises
        `InvalidPathError`, or `HashMismatchError` when the contents no longer match the path's
        registered hash (the sink has then received the mismatching NAR). `known` is the path's info
        as the caller has just read it from this store: a store that checks the NAR against it then
        does not ask for it again (a registration changed in between shows as a mismatch).
        `check=False` lets a store that holds the contents itself (the local store) send them without
        hashing them again, for a receiver that checks every NAR it takes (Nix does, as `nix-store
        --serve` relies on); NARs that a store fetches from elsewhere are checked whatever it says."""

    @abc.abstractmethod
    def add_to_store(self, info: PathInfo, read: Read, *, check_sigs: bool = True) -> bool:
        """Add the path described by `info`, reading its NAR from `read(n)` (to its end: `b""`).

        The NAR must match `info`'s hash and size, or nothing is added (`HashMismatchError`). The
        references must be valid in the store (or be the path itself). A path the store has already is
        not added again: its NAR is read to the end and False returned. Returns True when added.
        """

    def add_temp_root(self, path: StorePath) -> None:  # noqa: B027 (optional: most stores need none)
        """Keep `path` from being garbage-collected while this store object is open (where the store
        has a garbage collector)."""

    # -- the rest --------------------------------------------------------------------------------

    def describe(self) -> str:
        return f"the store '{self.url}'"

    def close(self) -> None:  # noqa: B027 (stores without resources need nothing)
        """Release connections, locks and processes. Idempotent."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def batched(items: Iterable[T], size: int = _QUERY_BATCH) -> Iterable[list[T]]:
    """`items` in lists of at most `size` (a query's placeholders are limited)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- order -------------------------------------------------------------------------------------------


def topo_sort(infos: Mapping[StorePath, PathInfo]) -> list[StorePath]:
    """The paths of `infos` with dependencies first: a depth-first post-order over the set, starting
    points and references visited in order of base name, following only references inside the set.
    This is the order `nix-store --export` writes (Nix: `topoSortPaths`, reversed). Raises
    `XstoreError` for a reference cycle."""
    wanted = sorted(infos)
    refs = {p: [r for r in infos[p].references if r != p and r in infos] for p in wanted}
    order: list[StorePath] = []
    done: set[StorePath] = set()
    for start in wanted:
        if start in done:
            continue
        # An explicit stack (closures can be thousands of paths deep): each frame is a path and the
        # index of the next reference to visit.
        stack: list[tuple[StorePath, int]] = [(start, 0)]
        active = {start}
        while stack:
            p, i = stack[-1]
            if i < len(refs[p]):
                stack[-1] = (p, i + 1)
                r = refs[p][i]
                if r in done:
                    continue
                if r in active:
                    raise XstoreError(f"cycle detected in the references of '{r}' from '{p}'")
                active.add(r)
                stack.append((r, 0))
            else:
                stack.pop()
                active.discard(p)
                done.add(p)
                order.append(p)
    return order


# -- moving NARs between a writer and a reader --------------------------------------------------------

_DONE: Final = object()


class _Pipe:
    __slots__ = ("closed", "ended", "pending", "q")

    def __init__(self, q: queue.Queue[bytes | object]) -> None:
        self.q = q
        self.pending = memoryview(b"")
        self.closed = False  # the reader gave up: the writer must stop
        self.ended = False


class ReaderGone(Exception):  # noqa: N818 (control flow between the two ends of a pipe, never escapes)
    """The reading side of `pipe_nar` stopped; the writing side unwinds with this."""


def pipe_nar(produce: Callable[[Sink], object], consume: Callable[[Read], Any]) -> Any:
    """Run `produce(sink)` in a thread and `consume(read)` here, joined by a bounded queue (at most a few
    megabytes in flight). Returns what `consume` returns.

    If `consume` fails, the producer's next write raises (`ReaderGone`) and the error from `consume` is
    raised here; if `produce` fails, `consume` sees the end of input early and the producer's error is
    raised (it explains the truncation better than the consumer's). Either way both ends have stopped
    when this returns.
    """
    import queue  # here, not at start-up: only a large NAR goes through a pipe

    pipe = _Pipe(queue.Queue(maxsize=8))
    failure: list[BaseException] = []

    def sink(data: bytes) -> None:
        if pipe.closed:
            raise ReaderGone
        while True:
            try:
                pipe.q.put(bytes(data), timeout=0.1)
                return
            except queue.Full:
                if pipe.closed:
                    raise ReaderGone from None

    def run() -> None:
        try:
            produce(sink)
        except ReaderGone:
            pass
        except BaseException as e:  # noqa: BLE001 (handed to the consuming thread, which raises it)
            failure.append(e)
        finally:
            while True:
                try:
                    pipe.q.put(_DONE, timeout=0.1)
                    break
                except queue.Full:
                    if pipe.closed:
                        break

    def read(n: int) -> bytes:
        if not pipe.pending:
            if pipe.ended:
                return b""
            item = pipe.q.get()
            if item is _DONE:
                pipe.ended = True
                return b""
            assert isinstance(item, bytes)
            pipe.pending = memoryview(item)
        data, pipe.pending = pipe.pending[:n], pipe.pending[n:]
        return bytes(data)

    thread = threading.Thread(target=run, name="xstore-nar-pipe", daemon=True)
    thread.start()
    try:
        result = consume(read)
    except BaseException:
        pipe.closed = True
        _drain(pipe)
        thread.join()
        if failure:
            raise failure[0] from None
        raise
    pipe.closed = True
    _drain(pipe)
    thread.join()
    if failure:
        raise failure[0]
    return result


def _drain(pipe: _Pipe) -> None:
    while not pipe.q.empty():  # the only reader: what it finds there stays until taken
        pipe.q.get_nowait()


def closure_of(path: StorePath, infos: Mapping[StorePath, PathInfo]) -> set[StorePath]:
    """`path` and everything it refers to, transitively, from infos that hold its whole closure."""
    seen = {path}
    todo = [path]
    while todo:
        for ref in infos[todo.pop()].references:
            if ref not in seen:
                seen.add(ref)
                todo.append(ref)
    return seen


def closure_sizes(store: Store, paths: Iterable[StorePath]) -> dict[StorePath, int]:
    """Each path's closure size: the sum of the NAR sizes of the path and everything it refers to
    (what `nix path-info -S` prints)."""
    paths = list(paths)
    infos = store.query_closure(paths)
    return {p: sum(infos[q].nar_size for q in closure_of(p, infos)) for p in paths}

"""Binary caches as a store: the cache logic once, over a small file-transfer backend per kind.

A binary cache is a directory of files (`nix-cache-info`, `<hash>.narinfo`, `nar/<filehash>.nar<ext>`,
`<hash>.ls`) behind some way of moving files: a local directory (`file.py`), an HTTP server
(`http.py`), an S3 bucket (`s3.py`). A `Backend` only gets, tests, streams and puts files by name;
`BinaryCacheStore` holds everything else, as Nix's `BinaryCacheStore` does:

- **Opening** reads `nix-cache-info`: its `StoreDir` must be ours; `WantMassQuery` and `Priority` are the
  defaults of the URL's `want-mass-query` and `priority`. A destination cache without the file gets
  one (Nix's `init`); a source without it is not a binary cache.
- **Reading a NAR** streams the file through decompression into the sink, checking on the way the file's
  size and hash (compressed bytes, the narinfo's `FileSize`/`FileHash`) and the NAR's size and hash
  (`NarSize`/`NarHash`). The last chunk is held back until every check has passed, so a consumer that
  stops at the end of the archive (a store adding the path) never sees a complete NAR whose file did
  not check out: it sees the input end early, and the checker's error is what is raised.
- **Adding a path** needs every reference already in the cache (dependencies first), reads the NAR once
  through the NAR parser (validating it, and building the `.ls` listing when asked), hashing and
  compressing on the way into a temporary upload (never memory), then writes the listing, the NAR
  (unless a file of that name is there already) and, last, the signed narinfo: a reader never sees a
  narinfo whose NAR or references are missing.
- **Queries** fan out over the backend's parallel connections: validity by testing narinfo files,
  closures level by level. Narinfos read once are kept for the life of the store object.

Nix: binary-cache-store.cc (`init`, `addToStoreCommon`, `narFromPath`, `queryPathInfoUncached`).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterable, Iterator

from xstore.compression import CHUNK, Method, decompress_whole, open_reader, open_writer
from xstore.errors import (
    BinaryCacheError,
    CompressionError,
    HashMismatchError,
    InvalidPathError,
    InvalidStoreUrlError,
    TrailingDataError,
    UnsupportedError,
)
from xstore.hashing import HashAlgorithm, HashFormat, ParsedHash, format_digest
from xstore.narinfo import (
    CACHE_INFO_FILE,
    LISTING_SUFFIX,
    CacheInfo,
    NarInfo,
    format_cache_info,
    format_narinfo,
    narinfo_name,
    parse_cache_info,
    parse_narinfo,
)
from xstore.storeapi import PathInfo, Read, Sink, Store
from xstore.storepath import STORE_DIR, StorePath
from xstore.storeurl import StoreUrl

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    import concurrent.futures
    from typing import IO, Any, Final

# Small files (narinfos, nix-cache-info, listings) are read whole, up to this size.
MAX_SMALL_FILE: Final = 64 << 20

# Parameters every binary cache takes (Nix's names).
CACHE_PARAMS: Final = frozenset(
    {
        "compression",
        "compression-level",
        "secret-key",
        "write-nar-listing",
        "parallel-compression",
        "want-mass-query",
        "priority",
    }
)

# Read-ahead of small NAR files over parallel connections (see `BinaryCacheStore.prefetch`): at most
# PREFETCH_WINDOW files of at most PREFETCH_FILE bytes each are held at once (16 MiB).
PREFETCH_FILE: Final = 256 << 10
PREFETCH_WINDOW: Final = 64
# A NAR read whole (`BinaryCacheStore.read_small_nar`) is at most this long.
WHOLE_NAR: Final = 4 << 20

MIME_NAR: Final = "application/x-nix-nar"
MIME_NARINFO: Final = "text/x-nix-narinfo"
MIME_CACHE_INFO: Final = "text/x-nix-cache-info"
MIME_JSON: Final = "application/json"


def _thread_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    import concurrent.futures  # only where a backend has parallel connections

    return concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xstore-cache")


class Upload(abc.ABC):
    """A file being written to a cache under a name not known yet (a NAR's name is its hash)."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def commit(self, name: str, content_type: str) -> None:
        """Store what was written as `name`. The upload is finished either way."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop what was written. Idempotent; a no-op after `commit`."""


class SpooledUpload(Upload):
    """An upload written to an anonymous temporary file, then handed to `put_file` at commit."""

    def __init__(self, put_file: Callable[[str, IO[bytes], int, str], None]) -> None:
        self._put_file = put_file
        import tempfile

        self._file: IO[bytes] | None = tempfile.TemporaryFile(prefix="xstore-upload-")  # noqa: SIM115
        self._size = 0

    def write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._size += len(data)

    def commit(self, name: str, content_type: str) -> None:
        assert self._file is not None
        try:
            self._file.flush()
            self._file.seek(0)
            self._put_file(name, self._file, self._size, content_type)
        finally:
            self.abort()

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Backend(abc.ABC):
    """Moves files to and from one cache. Names are relative (`nix-cache-info`, `nar/x.nar.xz`).

    `get` and `exists` answer None/False for a file the cache does not have; every other failure raises
    `BinaryCacheError` with one line saying what went wrong where.
    """

    url: str = ""
    parallel: int = 1  # how many requests may run at once

    @abc.abstractmethod
    def get(self, name: str, limit: int = MAX_SMALL_FILE) -> bytes | None:
        """A small file's contents, or None if it is missing. A file longer than `limit` bytes (at most
        `MAX_SMALL_FILE`) is refused (`BinaryCacheError`) once `limit + 1` bytes have come."""

    @abc.abstractmethod
    def exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def open_read(self, url: str) -> contextlib.AbstractContextManager[Read]:
        """Stream the file a narinfo's URL names (relative to the cache, or absolute where the kind
        allows). Raises `BinaryCacheError` when it is missing or cannot be read."""

    def nar_name(self, url: str) -> str:
        """The name `get` takes for the file a narinfo's relative URL names, as `open_read` would
        resolve it (without its query string); `BinaryCacheError` where this kind refuses it."""
        return url.split("?", 1)[0]

    @abc.abstractmethod
    def put(self, name: str, data: bytes, content_type: str) -> None: ...

    @abc.abstractmethod
    def new_upload(self) -> Upload:
        """An upload of a file whose size is not known yet (a NAR as it is compressed)."""

    def prepare(self) -> None:  # noqa: B027 (most kinds need nothing)
        """Make what a new cache needs beside `nix-cache-info` (directories, for `file://`)."""

    def close(self) -> None:  # noqa: B027
        """Release connections. Idempotent."""


class SpoolingBackend(Backend):
    """A backend that can only send a file whose size it knows (HTTP PUT, S3): an upload is spooled to a
    temporary file first, then sent with `put_file`."""

    @abc.abstractmethod
    def put_file(self, name: str, f: IO[bytes], size: int, content_type: str) -> None:
        """Store the `size` bytes of the open file `f` as `name` (streamed, not read into memory)."""

    def new_upload(self) -> Upload:
        return SpooledUpload(self.put_file)


def _nix32(digest: bytes) -> str:
    return format_digest(HashAlgorithm.SHA256, digest, HashFormat.NIX32)


class _Missing:
    """The narinfo cache's mark for a path the cache does not have."""


_MISSING: Final = _Missing()


class BinaryCacheStore(Store):
    """A binary cache behind `backend`, opened from `url` (see the module docstring).

    With `create`, a cache without `nix-cache-info` gets one (and whatever else the backend needs);
    without it, such a cache is refused. Raises `BinaryCacheError`, `InvalidStoreUrlError`,
    `NarInfoError` (a corrupt `nix-cache-info`).
    """

    def __init__(self, url: StoreUrl, backend: Backend, *, create: bool = False) -> None:
        self.url = url.text or url.base()
        self.store_url = url
        self.backend = backend
        self.store_dir = STORE_DIR
        self._narinfos: dict[str, NarInfo | _Missing] = {}
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._prefetched: dict[StorePath, concurrent.futures.Future[bytes | None]] = {}
        self._prefetch_queue: list[tuple[StorePath, str, int]] = []
        try:
            self.compression = Method.parse(url.param("compression") or "xz")
        except UnsupportedError as e:
            raise InvalidStoreUrlError(f"store URL '{url.text}': {e}") from None
        level = url.integer("compression-level", -1)
        self.compression_level = None if level < 0 else level
        self.parallel_compression = url.flag("parallel-compression")
        self.write_nar_listing = url.flag("write-nar-listing")
        self.secret_key: Any = None
        key_file = url.param("secret-key")
        if key_file:
            from xstore.signing import read_secret_key_file

            self.secret_key = read_secret_key_file(key_file)
        info = self._init_cache_info(create)
        self.want_mass_query = url.flag(
            "want-mass-query", info.want_mass_query if info.want_mass_query is not None else False
        )
        self.priority = url.integer("priority", info.priority if info.priority is not None else 50)

    def _init_cache_info(self, create: bool) -> CacheInfo:
        data = self.backend.get(CACHE_INFO_FILE)
        if data is None:
            if not create:
                raise BinaryCacheError(
                    f"'{self.store_url.base()}' does not appear to be a binary cache (it has no "
                    f"{CACHE_INFO_FILE}); a copy --to it makes one"
                )
            self.backend.prepare()
            self.backend.put(CACHE_INFO_FILE, format_cache_info(self.store_dir), MIME_CACHE_INFO)
            return CacheInfo(self.store_dir)
        info = parse_cache_info(data, f"{self.store_url.base()}/{CACHE_INFO_FILE}")
        if info.store_dir is not None and info.store_dir != self.store_dir:
            raise BinaryCacheError(
                f"binary cache '{self.store_url.base()}' is for Nix stores with prefix '{info.store_dir}', "
                f"not '{self.store_dir}'"
            )
        return info

    def describe(self) -> str:
        return f"the binary cache '{self.store_url.base()}'"

    def close(self) -> None:
        self._prefetch_queue.clear()
        self._prefetched.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.backend.close()

    # -- parallel work ---------------------------------------------------------------------------------

    def _map(self, function: Callable[[StorePath], Any], items: list[StorePath]) -> list[Any]:
        """`function` over `items`, on the backend's parallel connections where there are several."""
        if self.backend.parallel <= 1 or len(items) <= 1:
            return [function(item) for item in items]
        if self._pool is None:
            self._pool = _thread_pool(self.backend.parallel)
        futures = [self._pool.submit(function, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    # -- queries ---------------------------------------------------------------------------------------

    def narinfo(self, path: StorePath) -> NarInfo | None:
        """The path's narinfo, or None if the cache does not have it. Raises `NarInfoError` for a corrupt
        one, or one that describes another path."""
        cached = self._narinfos.get(path.hash_part)
        if cached is not None:
            if isinstance(cached, _Missing) or cached.path != path:
                return None
            return cached
        name = narinfo_name(path)
        data = self.backend.get(name)
        if data is None:
            self._narinfos[path.hash_part] = _MISSING
            return None
        narinfo = parse_narinfo(data, f"{self.store_url.base()}/{name}", self.store_dir)
        self._narinfos[path.hash_part] = narinfo
        if narinfo.path != path:
            return None  # as Nix: a narinfo for another name is not this path's
        return narinfo

    def query_path_info(self, path: StorePath) -> PathInfo | None:
        narinfo = self.narinfo(path)
        return narinfo.info if narinfo is not None else None

    def query_valid_paths(self, paths: Iterable[StorePath]) -> set[StorePath]:
        wanted = list(dict.fromkeys(paths))
        known = {p for p in wanted if isinstance(self._narinfos.get(p.hash_part), NarInfo)}
        todo = [p for p in wanted if p not in known and p.hash_part not in self._narinfos]

        def test(path: StorePath) -> bool:
            return self.backend.exists(narinfo_name(path))

        return known | {p for p, ok in zip(todo, self._map(test, todo), strict=True) if ok}

    def query_closure(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]:
        infos: dict[StorePath, PathInfo] = {}
        frontier = list(dict.fromkeys(paths))
        while frontier:
            for path, narinfo in zip(frontier, self._map(self.narinfo, frontier), strict=True):
                if narinfo is None:
                    raise InvalidPathError(f"path '{path}' is not valid in {self.describe()}", path=path.path)
                infos[path] = narinfo.info
            frontier = list(dict.fromkeys(r for p in frontier for r in infos[p].references if r not in infos))
        return infos

    def query_path_from_hash_part(self, hash_part: str) -> StorePath | None:
        cached = self._narinfos.get(hash_part)
        if isinstance(cached, NarInfo):
            return cached.path
        if isinstance(cached, _Missing):
            return None
        data = self.backend.get(hash_part + ".narinfo")
        if data is None:
            return None
        narinfo = parse_narinfo(data, f"{self.store_url.base()}/{hash_part}.narinfo", self.store_dir)
        if narinfo.path.hash_part != hash_part:
            return None
        self._narinfos[hash_part] = narinfo
        return narinfo.path

    def listing(self, path: StorePath) -> bytes | None:
        """The path's `.ls` listing (JSON text), if the cache has one."""
        return self.backend.get(path.hash_part + LISTING_SUFFIX)

    # -- NARs out ----------------------------------------------------------------------------------------

    def nar_from_path(
        self, path: StorePath, sink: Sink, *, known: PathInfo | None = None, check: bool = True
    ) -> int:
        """See `Store.nar_from_path`. Raises `InvalidPathError`, `HashMismatchError` (file or NAR hash or
        size not as the narinfo says), `CompressionError`, `BinaryCacheError`, `UnsupportedError` (a
        compression method xstore does not read)."""
        size = 0
        with self.open_nar(path) as read:
            while chunk := read(CHUNK):
                size += len(chunk)
                sink(chunk)
        return size

    @contextlib.contextmanager
    def open_nar(self, path: StorePath, *, check_nar_hash: bool = True) -> Iterator[Read]:
        """The path's NAR as a read function, checked on the way (see the module docstring): it gives
        `b""` only once the file's and the NAR's sizes and hashes have matched the narinfo, and raises
        before giving the last bytes when one does not. `check_nar_hash` off leaves the NAR hash (not its
        size) to a reader that checks it anyway: a store's `add_to_store` does, which is how `copy`
        reads a cache."""
        narinfo = self.narinfo(path)
        if narinfo is None:
            raise InvalidPathError(f"path '{path}' is not valid in {self.describe()}", path=path.path)
        method = Method.parse(narinfo.compression)
        where = f"the NAR of '{path}' from {self.describe()} ({narinfo.url})"
        try:
            with self._raw_nar(path, narinfo) as raw:
                yield _CheckedNar(narinfo, raw, method, where, check_nar_hash).read
        except (CompressionError, BinaryCacheError) as e:
            raise type(e)(f"{where}: {e}", path=path.path) from None

    def read_small_nar(self, path: StorePath, *, check_nar_hash: bool = True) -> bytes | None:
        """The path's whole NAR in one piece when its file is small (at most `PREFETCH_FILE` bytes, for
        a NAR of at most `WHOLE_NAR`), checked as `open_nar` checks it: the file's size and hash before
        it is decompressed, then the NAR's size and (with `check_nar_hash`) hash. None when the NAR is
        not small or its file cannot be had in one piece; `open_nar` then reads it, and tells why it
        cannot. One read and one decompression, without the machinery of a stream: most paths of a
        closure are small."""
        narinfo = self.narinfo(path)
        if narinfo is None:
            raise InvalidPathError(f"path '{path}' is not valid in {self.describe()}", path=path.path)
        info = narinfo.info
        if not _small_file(narinfo) or info.nar_size > WHOLE_NAR:
            return None
        method = Method.parse(narinfo.compression)
        future = self._take_prefetched(path)
        data = future.result() if future is not None else self._fetch_small(narinfo.url, narinfo.file_size)
        if data is None:
            return None
        where = f"the NAR of '{path}' from {self.describe()} ({narinfo.url})"
        if len(data) != narinfo.file_size:
            raise _mismatch(where, path, "file size", f"{narinfo.file_size} bytes", f"{len(data)} bytes")
        file_hash = narinfo.file_hash
        if file_hash is not None:
            digest = hashlib.new(file_hash.algorithm.value, data).digest()
            if digest != file_hash.digest:
                got = _show(ParsedHash(file_hash.algorithm, digest))
                raise _mismatch(where, path, "file hash", _show(file_hash), got)
        try:
            nar = decompress_whole(data, method, info.nar_size)
        except CompressionError as e:
            raise CompressionError(f"{where}: {e}", path=path.path) from None
        if len(nar) != info.nar_size:
            got = "more" if len(nar) > info.nar_size else f"{len(nar)} bytes"
            raise _mismatch(where, path, "NAR size", f"{info.nar_size} bytes", got)
        if check_nar_hash:
            digest = hashlib.sha256(nar).digest()
            if digest != info.nar_hash:
                raise _mismatch(where, path, "NAR hash", info.nar_hash_nix32(), "sha256:" + _nix32(digest))
        return nar

    @contextlib.contextmanager
    def _raw_nar(self, path: StorePath, narinfo: NarInfo) -> Iterator[Read]:
        future = self._take_prefetched(path)
        data = future.result() if future is not None else None
        if data is None:
            with self.backend.open_read(narinfo.url) as raw:
                yield raw
            return
        yield io.BytesIO(data).read  # shares `data`: no copy

    def prefetch(self, paths: Iterable[StorePath]) -> None:
        """Say which paths' NARs will be read next, in order: where the backend has parallel connections,
        small NAR files (up to `PREFETCH_FILE` bytes each) are fetched ahead over them, a bounded window
        at a time (`PREFETCH_WINDOW` files), so that a long run of small paths does not wait for one
        round trip after another (Nix copies paths in parallel for the same reason). Checks happen as
        always when the NAR is read."""
        if self.backend.parallel <= 1:
            return
        for path in paths:
            narinfo = self.narinfo(path)
            if narinfo is not None and _small_file(narinfo):
                self._prefetch_queue.append((path, narinfo.url, narinfo.file_size))
        self._prefetch_more()

    def nar_ready(self, path: StorePath) -> bool:
        """Whether the path's NAR can be read without waiting on the network: the backend is local
        (one connection: a `file://` cache), or its file has been read ahead, successfully."""
        if self.backend.parallel <= 1:
            return True
        future = self._prefetched.get(path)
        # A read ahead that failed (None, or an error) is read again, over the network.
        return (
            future is not None
            and future.done()
            and future.exception() is None
            and future.result() is not None
        )

    def _take_prefetched(self, path: StorePath) -> concurrent.futures.Future[bytes | None] | None:
        """The read ahead of the path's NAR file, if there is one (its result None when it failed),
        taken out of the window, which the next file then fills."""
        future = self._prefetched.pop(path, None)
        self._prefetch_more()
        return future

    def _prefetch_more(self) -> None:
        while self._prefetch_queue and len(self._prefetched) < PREFETCH_WINDOW:
            path, url, size = self._prefetch_queue.pop(0)
            if self._pool is None:
                self._pool = _thread_pool(self.backend.parallel)
            self._prefetched[path] = self._pool.submit(self._fetch_small, url, size)

    def _fetch_small(self, url: str, size: int) -> bytes | None:
        """The NAR file a narinfo's relative URL names, read whole, never more than one byte beyond the
        `size` the narinfo gives; None when it cannot be (missing, longer, or refused: a `file://`
        cache's URL that leaves the cache), to be read the usual way then, which reports why."""
        try:
            return self.backend.get(self.backend.nar_name(url), limit=size)
        except BinaryCacheError:
            return None

    # -- paths in ----------------------------------------------------------------------------------------

    def add_to_store(self, info: PathInfo, read: Read, *, check_sigs: bool = True) -> bool:
        """See `Store.add_to_store`. Signatures are not checked (a cache holds what it is given, as in
        Nix); the cache's `secret-key` signs the narinfo. Raises `InvalidPathError` for a reference the
        cache lacks, `HashMismatchError`, `NarError`, `BinaryCacheError`."""
        from xstore.nar.drive import iter_events
        from xstore.nar.listing import build_index, dump_json, listing_json
        from xstore.nar.parser import NarParser

        if self.narinfo(info.path) is not None:
            while read(CHUNK):
                pass
            return False
        refs = [r for r in info.references if r != info.path]
        have = self.query_valid_paths(refs)
        missing = sorted(set(refs) - have)
        if missing:
            raise InvalidPathError(
                f"cannot add '{info.path}' to {self.describe()} because the reference '{missing[0]}' is not "
                "valid (add its closure, dependencies first)",
                path=missing[0].path,
            )
        method = self.compression
        upload = self.backend.new_upload()
        try:
            file_hasher = hashlib.sha256()
            nar_hasher = hashlib.sha256()
            sizes = [0, 0]  # file, NAR
            shared = method is Method.NONE

            def out(data: bytes) -> None:
                sizes[0] += len(data)
                if not shared:
                    file_hasher.update(data)
                upload.write(data)

            writer = open_writer(out, method, self.compression_level, threads=self.parallel_compression)

            def tee(n: int) -> bytes:
                data = read(n)
                if data:
                    sizes[1] += len(data)
                    nar_hasher.update(data)
                    writer(data)
                return data

            listing: str | None = None
            if self.write_nar_listing:
                index = build_index(tee)
                listing = dump_json({"version": 1, "root": listing_json(index.root, recursive=True)})
            else:
                parser = NarParser()
                for _ in iter_events(tee, parser, contents=False):
                    pass
                if parser.unused_data or tee(1):
                    raise TrailingDataError(f"unexpected data after the end of the NAR of '{info.path}'")
            writer.finish()
            nar_digest = nar_hasher.digest()
            if nar_digest != info.nar_hash or (info.nar_size and sizes[1] != info.nar_size):
                raise HashMismatchError(
                    f"hash mismatch adding '{info.path}' to {self.describe()}: expected "
                    f"{info.nar_hash_nix32()} ({info.nar_size} bytes), got sha256:{_nix32(nar_digest)} "
                    f"({sizes[1]} bytes)",
                    path=info.path.path,
                )
            file_digest = nar_digest if shared else file_hasher.digest()
            url = f"nar/{_nix32(file_digest)}.nar{method.suffix}"
            if listing is not None:
                self.backend.put(info.path.hash_part + LISTING_SUFFIX, listing.encode(), MIME_JSON)
            if self.backend.exists(url):
                upload.abort()
            else:
                upload.commit(url, MIME_NAR)
        except BaseException:
            upload.abort()
            raise
        final = info.replace(nar_size=sizes[1], ultimate=False, registration_time=0)
        if self.secret_key is not None:
            from xstore.signing import sign_path

            final = sign_path(final, self.secret_key)
        narinfo = NarInfo(final, url, method.value, ParsedHash(HashAlgorithm.SHA256, file_digest), sizes[0])
        self.backend.put(
            narinfo_name(info.path), format_narinfo(narinfo, self.store_dir).encode(), MIME_NARINFO
        )
        self._narinfos[info.path.hash_part] = narinfo
        return True


def _small_file(narinfo: NarInfo) -> bool:
    """Whether a narinfo names a NAR file small enough to read whole (read ahead, or at once), relative
    to the cache."""
    return 0 < narinfo.file_size <= PREFETCH_FILE and "://" not in narinfo.url


def _mismatch(where: str, path: StorePath, what: str, expected: str, got: str) -> HashMismatchError:
    return HashMismatchError(
        f"{where}: {what} mismatch: the narinfo says {expected}, the file has {got}", path=path.path
    )


def _show(h: ParsedHash) -> str:
    return f"{h.algorithm.value}:{format_digest(h.algorithm, h.digest, HashFormat.NIX32)}"


def relative_name(url: str, base: str) -> str:
    """A narinfo's relative URL as a name inside the cache: any query string dropped, `.` and `..`
    resolved, and refused (`BinaryCacheError`) if it leaves the cache."""
    name = url.split("?", 1)[0]
    norm = os.path.normpath(name)
    if name.startswith("/") or norm == ".." or norm.startswith("../") or norm in (".", ""):
        raise BinaryCacheError(f"the NAR URL '{url}' in {base} points outside the cache")
    return norm


@contextlib.contextmanager
def read_file(f: IO[bytes]) -> Iterator[Read]:
    """A read function over an open file, closed after the block."""
    with f:
        yield f.read


class _CheckedNar:
    """A NAR read through decompression from a cache file, checked against its narinfo while it passes.

    One decompressed chunk is always held back: it is given out only after the next read showed more
    data, or, at the end, after every check passed. So a reader that stops at the end of the archive (a
    store adding the path) cannot finish with a NAR whose file did not check out."""

    def __init__(self, narinfo: NarInfo, raw: Read, method: Method, where: str, check_nar_hash: bool) -> None:
        self.narinfo = narinfo
        self.where = where
        self.raw = raw
        file_hash = narinfo.file_hash
        self.file_hasher = hashlib.new(file_hash.algorithm.value) if file_hash is not None else None
        # With no compression and a SHA-256 file hash, the file is the NAR: hash it once.
        self.shared = (
            method is Method.NONE and file_hash is not None and file_hash.algorithm is HashAlgorithm.SHA256
        )
        nar_hasher = self.file_hasher if self.shared else hashlib.sha256() if check_nar_hash else None
        self.nar_hasher = nar_hasher
        self.file_size = 0
        self.nar_size = 0
        self.decompressed = open_reader(self._counted, method)
        self.held = b""
        self.pending = memoryview(b"")
        self.ended = False

    def _mismatch(self, what: str, expected: str, got: str) -> HashMismatchError:
        return _mismatch(self.where, self.narinfo.path, what, expected, got)

    def _counted(self, n: int) -> bytes:
        data = self.raw(n)
        self.file_size += len(data)
        limit = self.narinfo.file_size
        if limit and self.file_size > limit:
            raise self._mismatch("file size", f"{limit} bytes", "more")
        if self.file_hasher is not None:
            self.file_hasher.update(data)
        return data

    def _check(self) -> None:
        narinfo, info = self.narinfo, self.narinfo.info
        if narinfo.file_size and self.file_size != narinfo.file_size:
            raise self._mismatch("file size", f"{narinfo.file_size} bytes", f"{self.file_size} bytes")
        file_hash = narinfo.file_hash
        if file_hash is not None and self.file_hasher is not None:
            digest = self.file_hasher.digest()
            if digest != file_hash.digest:
                raise self._mismatch(
                    "file hash", _show(file_hash), _show(ParsedHash(file_hash.algorithm, digest))
                )
        if self.nar_size != info.nar_size:
            raise self._mismatch("NAR size", f"{info.nar_size} bytes", f"{self.nar_size} bytes")
        if self.nar_hasher is not None and self.nar_hasher.digest() != info.nar_hash:
            got = "sha256:" + _nix32(self.nar_hasher.digest())
            raise self._mismatch("NAR hash", info.nar_hash_nix32(), got)

    def _next(self) -> bytes:
        """The next chunk to give out, or b"" at the (checked) end."""
        while not self.ended:
            chunk = self.decompressed(CHUNK)
            if not chunk:
                self.ended = True
                self._check()
                break
            self.nar_size += len(chunk)
            if self.nar_size > self.narinfo.info.nar_size:
                raise self._mismatch("NAR size", f"{self.narinfo.info.nar_size} bytes", "more")
            if self.nar_hasher is not None and not self.shared:
                self.nar_hasher.update(chunk)
            out, self.held = self.held, chunk
            if out:
                return out
        out, self.held = self.held, b""
        return out

    def read(self, n: int) -> bytes:
        if not self.pending:
            self.pending = memoryview(self._next())
            if not self.pending:
                return b""
        out, self.pending = self.pending[:n], self.pending[n:]
        return bytes(out)

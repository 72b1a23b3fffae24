"""`file://DIR` binary caches: a directory on a local (or mounted) filesystem.

Every file is written atomically, as Nix's `LocalBinaryCacheStore::upsertFile` does: into a temporary
file beside its final name (`<name>.tmp.<pid>.<counter>`), then renamed, so a reader sees either the old
file or the whole new one. A NAR being uploaded is compressed straight into such a temporary file inside
`nar/` and renamed once its hash, which is its name, is known. A new cache gets `nar/`, `log/` and
`realisations/`, as Nix makes them.

Nix: local-binary-cache-store.cc.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from xstore.cache.base import MAX_SMALL_FILE, Backend, BinaryCacheStore, Upload, relative_name
from xstore.errors import BinaryCacheError
from xstore.storeapi import Read
from xstore.storeurl import StoreUrl

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from typing import IO, Final

_COUNTER: Final = itertools.count()


def _describe(e: OSError) -> str:
    return e.strerror or str(e)


def _sized_reads(f: IO[bytes]) -> Read:
    """`f.read`, asking for no more than the file holds (plus one byte, to see the end): a request for a
    whole chunk would allocate that much for a NAR file of a few hundred bytes."""
    left = os.fstat(f.fileno()).st_size

    def read(n: int) -> bytes:
        nonlocal left
        data = f.read(min(n, left + 1) if left >= 0 else n)
        left -= len(data)
        return data

    return read


class FileBackend(Backend):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    def _path(self, name: str) -> Path:
        return self.root / name

    def _fail(self, what: str, name: str, e: OSError) -> BinaryCacheError:
        return BinaryCacheError(f"cannot {what} '{self._path(name)}' in {self.url}: {_describe(e)}")

    def get(self, name: str, limit: int = MAX_SMALL_FILE) -> bytes | None:
        try:
            fd = os.open(f"{self.root}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._fail("read", name, e) from None
        try:
            # Sized by the file (a read of `limit` bytes would allocate that much every time); one byte
            # more than it says shows a file that grew.
            limit = min(limit, MAX_SMALL_FILE)
            size = os.fstat(fd).st_size
            data = os.read(fd, min(size, limit) + 1)
            if size < len(data) <= limit:
                data += os.read(fd, limit + 1 - len(data))
        except OSError as e:
            raise self._fail("read", name, e) from None
        finally:
            os.close(fd)
        if len(data) > limit:
            raise BinaryCacheError(f"'{self._path(name)}' is larger than {limit} bytes")
        return data

    def nar_name(self, url: str) -> str:
        return relative_name(url, self.url)  # never a file outside the cache

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    @contextlib.contextmanager
    def open_read(self, url: str) -> Iterator[Read]:
        if "://" in url:
            if not url.startswith("file://"):
                raise BinaryCacheError(f"the NAR URL '{url}' in {self.url} is not a file:// URL")
            path = Path(url[len("file://") :].split("?", 1)[0])
        else:
            path = self._path(relative_name(url, self.url))
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            raise BinaryCacheError(f"the NAR file '{path}' is missing from {self.url}") from None
        except OSError as e:
            raise BinaryCacheError(f"cannot read '{path}': {_describe(e)}") from None
        with f:
            yield _sized_reads(f)

    def _temp_name(self, path: Path) -> Path:
        return path.with_name(f"{path.name}.tmp.{os.getpid()}.{next(_COUNTER)}")

    def put(self, name: str, data: bytes, content_type: str) -> None:
        path = self._path(name)
        tmp = self._temp_name(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise self._fail("write", name, e) from None

    def new_upload(self) -> Upload:
        return _FileUpload(self)

    def prepare(self) -> None:
        try:
            for sub in ("nar", "realisations", "log"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BinaryCacheError(f"cannot create the binary cache {self.url}: {_describe(e)}") from None


class _FileUpload(Upload):
    """Written straight into a temporary file in `nar/`; renamed to its name at commit."""

    def __init__(self, backend: FileBackend) -> None:
        self._backend = backend
        nar_dir = backend.root / "nar"
        self._tmp: Path | None = backend._temp_name(nar_dir / ".upload")
        try:
            nar_dir.mkdir(parents=True, exist_ok=True)
            self._file: IO[bytes] | None = open(self._tmp, "xb")  # noqa: SIM115 (closed at commit/abort)
        except OSError as e:
            raise BinaryCacheError(f"cannot write to {backend.url}: {_describe(e)}") from None

    def write(self, data: bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as e:
            raise BinaryCacheError(f"cannot write '{self._tmp}': {_describe(e)}") from None

    def commit(self, name: str, content_type: str) -> None:
        assert self._file is not None
        assert self._tmp is not None
        try:
            self._file.close()
            self._file = None
            os.replace(self._tmp, self._backend._path(name))
            self._tmp = None
        except OSError as e:
            raise BinaryCacheError(f"cannot write '{self._backend._path(name)}': {_describe(e)}") from None
        finally:
            self.abort()

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None


def open_file_cache(url: StoreUrl, *, create: bool) -> BinaryCacheStore:
    root = Path(url.path)
    if not create and not root.is_dir():
        raise BinaryCacheError(f"binary cache '{url.base()}' does not exist (no directory '{root}')")
    return BinaryCacheStore(url, FileBackend(root), create=create)

"""An export file (`nix-store --export` output, compressed or not) seen as a read-only store.

So that whatever takes a store as a source (`repair --from`, and any pipeline built on the store
interface) can take an export file too. Opening it reads the whole stream once, checking every NAR and
noting each path's trailer, NAR hash and size, and where its record starts; `nar_from_path` then reads
the file again up to that record (seeking straight there when the file is not compressed) and passes the
NAR's bytes on, in blocks. Nothing is held in memory but the index.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Final

from xstore import sniff
from xstore.compression import Method
from xstore.errors import ExportStreamError, UnsupportedError
from xstore.import_export import list_stream
from xstore.storeapi import PathInfo, Read, Sink, Store
from xstore.storepath import StorePath
from xstore.wire import encode_u64

CHUNK: Final = 1 << 20
_MARKER_SIZE: Final = len(encode_u64(1))


class ExportFileStore(Store):
    """The paths of the export file at `path`. Raises `WrongFormatError` if it is not an export stream,
    `ExportStreamError`/`NarError` if it is a broken one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.url = str(self.path)
        self._index: dict[StorePath, tuple[PathInfo, int]] = {}
        with open(self.path, "rb") as f:
            kind, method, read = sniff.open_input(f.read1)
            sniff.expect(kind, sniff.Kind.EXPORT, f"'{self.path}'")
            self._compressed = method is not Method.NONE
            for end in list_stream(read):
                info = PathInfo(end.path, end.nar_hash, end.nar_size, end.references, end.deriver)
                self._index[end.path] = (info, end.start + _MARKER_SIZE)

    def describe(self) -> str:
        return f"the export file '{self.path}'"

    def query_path_info(self, path: StorePath) -> PathInfo | None:
        found = self._index.get(path)
        return found[0] if found is not None else None

    def query_path_from_hash_part(self, hash_part: str) -> StorePath | None:
        return next((p for p in self._index if p.hash_part == hash_part), None)

    def nar_from_path(
        self, path: StorePath, sink: Sink, *, known: PathInfo | None = None, check: bool = True
    ) -> int:
        info, offset = self._index.get(path) or (None, 0)
        if info is None:
            self.require(path)
            raise AssertionError  # require raised
        with open(self.path, "rb") as f:
            read = self._positioned(f, offset)
            left = info.nar_size
            while left:
                block = read(min(CHUNK, left))
                if not block:
                    raise ExportStreamError(f"'{self.path}' ended inside the NAR of '{path}' (it changed?)")
                sink(block)
                left -= len(block)
        return info.nar_size

    def _positioned(self, f: io.BufferedReader, offset: int) -> Read:
        """A read function over the (decompressed) stream from `offset` on."""
        if not self._compressed:
            f.seek(offset)
            return f.read
        _kind, _method, read = sniff.open_input(f.read1)
        skip = offset
        while skip:
            got = read(min(CHUNK, skip))
            if not got:
                raise ExportStreamError(f"'{self.path}' ended before the NAR of a path (it changed?)")
            skip -= len(got)
        return read

    def add_to_store(self, info: PathInfo, read: Read, *, check_sigs: bool = True) -> bool:
        raise UnsupportedError(f"{self.describe()} is read-only")

"""`nix-store --export` streams, both directions, and the import/export/copy pipelines.

The stream: for each path, the number 1, the path's NAR, the magic "NIXE" (0x4558494e), the path, its
references (count, then each, sorted), its deriver ("" for none) and 0 (no legacy signature); after the
last path, 0. Integers are u64 little endian, strings framed as in NARs (`wire.py`).
Nix: export-import.cc (`exportPath`, `importPaths`), store-api.cc (`topoSortPaths`).

Import streams: each NAR goes through the one NAR parser straight into a private temporary directory
inside the store (with the store's case hack), hashed on the way, so memory stays constant whatever the
size (Nix buffers each NAR in memory). Only the trailer after the NAR names the path; then the path is
locked, checked, canonicalised, renamed into place and registered in one transaction. A bad stream
leaves nothing of the path being imported: no directory, no lock file, no temporary files; paths
completed before it stay valid.

Export dumps each path with the store's case-hack setting (so original names come out), hashing it on
the way; a path whose contents no longer match its registered hash is refused.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from xstore.casehack import CaseHackMode, Fold
from xstore.errors import XstoreError
from xstore.hashing import HashAlgorithm, HashFormat, HashSink, format_digest
from xstore.nar.dump import BufferedSink, dump_path, write_all
from xstore.nar.events import NEED_DATA, ArchiveEnd
from xstore.nar.parser import NarParser, show
from xstore.nar.restore import TreeWriter
from xstore.store import InvalidPathError, PathInfo, Store, canonicalise, remove_tree
from xstore.storepath import StorePath, parse_store_path
from xstore.wire import U64, encode_strings, encode_u64

EXPORT_MAGIC: Final = 0x4558494E
CHUNK: Final = 1 << 20
MAX_PATH_STRING: Final = 4096
MAX_REFERENCES: Final = 1 << 20


class ExportStreamError(XstoreError, ValueError):
    """The export stream's framing is wrong (outside the NARs, which raise `NarError`)."""


class HashMismatchError(XstoreError, ValueError):
    """A path's contents do not match its registered NAR hash."""


# -- order ---------------------------------------------------------------------------------------------


def export_order(store: Store, paths: Iterable[StorePath]) -> list[StorePath]:
    """The order `nix-store --export` writes `paths` in: a depth-first post-order over the set (in
    order of base name), following references inside the set, so dependencies come first. Raises
    `InvalidPathError` for an invalid path, `XstoreError` for a reference cycle."""
    wanted = sorted(set(paths))
    member = set(wanted)
    refs = {p: [r for r in store.require(p).references if r != p and r in member] for p in wanted}
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


# -- export --------------------------------------------------------------------------------------------


def trailer(path: StorePath, references: Iterable[StorePath], deriver: StorePath | None) -> bytes:
    refs = sorted(references)
    return b"".join(
        (
            encode_u64(EXPORT_MAGIC),
            encode_strings(path.path.encode()),
            encode_u64(len(refs)),
            encode_strings(*(r.path.encode() for r in refs)),
            encode_strings(deriver.path.encode() if deriver else b""),
            encode_u64(0),
        )
    )


def export_paths(
    store: Store,
    paths: Iterable[StorePath],
    sink: Callable[[bytes], object],
    *,
    progress: Callable[[int], None] | None = None,
) -> list[StorePath]:
    """Write the export stream of `paths` (dependencies first, in Nix's order) to `sink`.

    Returns the paths in the order written. Raises `InvalidPathError`, or `HashMismatchError` when a
    path's contents changed since it was registered (the sink has then received part of the stream).
    """
    order = export_order(store, paths)
    case_hack = store.settings.case_hack
    done = 0
    for path in order:
        info = store.require(path)
        sink(encode_u64(1))
        hasher = HashSink(HashAlgorithm.SHA256)

        def write(block: bytes, hasher: HashSink = hasher) -> None:
            hasher.update(block)
            sink(block)

        size = dump_path(store.real_path(path), write, case_hack=case_hack)
        if hasher.digest() != info.nar_hash or size != info.nar_size:
            raise HashMismatchError(
                f"path '{path}' was modified: registered NAR hash {info.nar_hash_sri()} "
                f"({info.nar_size} bytes), now {hasher.format(HashFormat.SRI)} ({size} bytes)",
                path=path.path,
            )
        sink(trailer(path, info.references, info.deriver))
        done += size
        if progress is not None:
            progress(done)
    sink(encode_u64(0))
    return order


# -- import --------------------------------------------------------------------------------------------


class _Input:
    """A blocking byte source with one-level push-back, for the framing around the NARs."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._buf = b""
        self.offset = 0  # stream offset of the next byte handed out

    def chunk(self) -> bytes:
        if self._buf:
            data, self._buf = self._buf, b""
        else:
            data = self._read(CHUNK)
        self.offset += len(data)
        return data

    def unread(self, data: bytes) -> None:
        self._buf = data + self._buf
        self.offset -= len(data)

    def exact(self, n: int, what: str) -> bytes:
        parts = []
        while n:
            data = self.chunk()
            if not data:
                raise ExportStreamError(
                    f"unexpected end of file while reading {what} "
                    f"(at byte {self.offset} of the export stream)"
                )
            if len(data) > n:
                self.unread(data[n:])
                data = data[:n]
            parts.append(data)
            n -= len(data)
        return b"".join(parts)

    def u64(self, what: str) -> int:
        (n,) = U64.unpack(self.exact(8, what))
        return int(n)

    def string(self, max_len: int, what: str) -> bytes:
        at = self.offset
        n = self.u64(what)
        if n > max_len:
            raise ExportStreamError(f"{what} of {n} bytes is too long (at byte {at} of the export stream)")
        data = self.exact(n + (-n & 7), what)
        if data[n:].strip(b"\0"):
            raise ExportStreamError(f"non-zero padding after {what} (at byte {at} of the export stream)")
        return data[:n]


@dataclass(frozen=True, slots=True)
class ImportResult:
    path: StorePath
    imported: bool  # False: it was valid already (its NAR matched)


def _parse_path(raw: bytes, what: str, at: int) -> StorePath:
    try:
        return parse_store_path(raw)
    except ValueError as e:
        raise ExportStreamError(f"{what} '{show(raw)}' is not a valid store path: {e} (at byte {at})") from e


def import_stream(
    store: Store,
    read: Callable[[int], bytes],
    *,
    on_path: Callable[[ImportResult], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[ImportResult]:
    """Import every path of the export stream read from `read(n)` into `store`.

    Each path's references must be valid in the store or come earlier in the stream. Paths already
    valid are skipped after their NAR is checked against the registered hash (`HashMismatchError`
    otherwise). On an error the path being imported leaves nothing behind; earlier paths stay
    valid. `on_path` is called after each path. Raises `ExportStreamError`, `NarError`,
    `InvalidPathError`, `HashMismatchError`, `RestoreError` (a full disk, for one).
    """
    settings = store.settings
    mode = CaseHackMode.ON if settings.case_hack else CaseHackMode.OFF
    inp = _Input(read)
    results: list[ImportResult] = []
    while True:
        at = inp.offset
        marker = inp.u64("the next path marker")
        if marker == 0:
            break
        if marker != 1:
            raise ExportStreamError(
                f"input doesn't look like something created by 'nix-store --export' "
                f"(marker {marker} at byte {at})"
            )
        result = _import_one(store, inp, mode, settings.fold, progress)
        results.append(result)
        if on_path is not None:
            on_path(result)
    return results


def _import_one(
    store: Store, inp: _Input, mode: CaseHackMode, fold: Fold, progress: Callable[[int], None] | None
) -> ImportResult:
    with store.temp_dir() as tmp:
        dest = tmp + b"/nar"
        writer = TreeWriter(dest, case_hack=mode, fold=fold)
        hasher = HashSink(HashAlgorithm.SHA256)
        parser = NarParser()
        try:
            pending = b""
            while True:
                event = parser.next_event()
                if event is NEED_DATA:
                    hasher.update(pending)
                    pending = inp.chunk()
                    parser.receive_data(pending)
                    if progress is not None:
                        progress(inp.offset)
                    continue
                if type(event) is ArchiveEnd:
                    break
                writer.handle(event)
            unused = parser.unused_data
            hasher.update(pending[: len(pending) - len(unused)])
            inp.unread(unused)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        nar_size = parser.offset
        nar_hash = hasher.digest()

        path, refs, deriver = _read_trailer(inp)
        info = PathInfo(path, nar_hash, nar_size, refs, deriver)
        existing = store.query(path)
        if existing is not None:
            _check_same(existing, info)
            return ImportResult(path, False)
        for ref in info.references:
            if ref != path and not store.is_valid(ref):
                raise InvalidPathError(
                    f"cannot import '{path}': its reference '{ref}' is not valid "
                    "(import its closure, dependencies first)",
                    path=ref.path,
                )
        with store.lock(path):
            existing = store.query(path)  # another process may have added it meanwhile
            if existing is not None:
                _check_same(existing, info)
                return ImportResult(path, False)
            store.remove_invalid_leftover(path)
            real = store.real_path(path)
            # Move first, make read-only after: moving a directory to another parent needs write
            # permission on it (to update its ".."), which only root has once it is 0555.
            os.rename(dest, real)
            try:
                canonicalise(real)
                store.register(info)
            except BaseException:
                remove_tree(real)
                raise
        return ImportResult(path, True)


def _read_trailer(inp: _Input) -> tuple[StorePath, tuple[StorePath, ...], StorePath | None]:
    """What follows a NAR in the stream: magic, path, references, deriver, signature flag."""
    at = inp.offset
    if inp.u64("the export magic") != EXPORT_MAGIC:
        raise ExportStreamError(
            f"Nix archive cannot be imported; wrong format (no 'NIXE' magic at byte {at})"
        )
    at = inp.offset
    path = _parse_path(inp.string(MAX_PATH_STRING, "store path"), "store path", at)
    count = inp.u64("the number of references")
    if count > MAX_REFERENCES:
        raise ExportStreamError(f"'{path}' claims {count} references")
    refs = []
    for _ in range(count):
        at = inp.offset
        refs.append(_parse_path(inp.string(MAX_PATH_STRING, "reference"), "reference", at))
    at = inp.offset
    raw_deriver = inp.string(MAX_PATH_STRING, "deriver")
    deriver = _parse_path(raw_deriver, "deriver", at) if raw_deriver else None
    if inp.u64("the signature flag") == 1:
        inp.string(MAX_PATH_STRING, "legacy signature")
    return path, tuple(sorted(set(refs))), deriver


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One path of an export stream, as `list_stream` reports it."""

    path: StorePath
    references: tuple[StorePath, ...]
    deriver: StorePath | None
    nar_size: int
    start: int  # stream offset of the record's marker
    end: int  # stream offset just after the record


def list_stream(read: Callable[[int], bytes]) -> list[StreamEntry]:
    """The paths of an export stream, in order, validating every NAR but writing nothing."""
    inp = _Input(read)
    entries: list[StreamEntry] = []
    while True:
        at = inp.offset
        marker = inp.u64("the next path marker")
        if marker == 0:
            return entries
        if marker != 1:
            raise ExportStreamError(
                "input doesn't look like something created by 'nix-store --export' "
                f"(marker {marker} at byte {at})"
            )
        parser = NarParser()
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                parser.receive_data(inp.chunk())
            elif type(event) is ArchiveEnd:
                break
        inp.unread(parser.unused_data)
        path, refs, deriver = _read_trailer(inp)
        entries.append(StreamEntry(path, refs, deriver, parser.offset, at, inp.offset))


def _check_same(existing: PathInfo, new: PathInfo) -> None:
    if existing.nar_hash != new.nar_hash or existing.nar_size != new.nar_size:
        raise HashMismatchError(
            f"path '{new.path}' is already valid with NAR hash {existing.nar_hash_sri()}, but the stream "
            f"has {format_digest(HashAlgorithm.SHA256, new.nar_hash, HashFormat.SRI)}",
            path=new.path.path,
        )


# -- copy ----------------------------------------------------------------------------------------------


def copy_paths(
    source_root: Path | str,
    dest: Store,
    paths: Iterable[StorePath],
    *,
    on_path: Callable[[ImportResult], None] | None = None,
) -> list[ImportResult]:
    """Export `paths` from the store at `source_root` and import them into `dest` as one stream, in
    constant memory: the export runs in a thread (with its own connection to the source store) writing
    into a pipe that the import reads. If the import fails, the pipe closes and the export stops."""
    order = list(paths)
    r, w = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with Store.open(source_root) as source:
                out = BufferedSink(write_all(w))
                export_paths(source, order, out)
                out.flush()
        except BrokenPipeError:
            pass  # the importer stopped reading: its error is the one to report
        except BaseException as e:  # noqa: BLE001 (handed to the importing thread, which raises it)
            failure.append(e)
        finally:
            os.close(w)

    thread = threading.Thread(target=produce, name="xstore-export", daemon=True)
    thread.start()
    try:
        with os.fdopen(r, "rb", buffering=0) as f:
            results = import_stream(dest, f.read, on_path=on_path)
    except BaseException:
        thread.join()
        if failure:
            raise failure[0] from None
        raise
    thread.join()
    if failure:
        raise failure[0]
    return results

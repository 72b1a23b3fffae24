"""The `nix-store --export` stream, both directions, sans-IO.

The stream: for each path, the number 1, the path's NAR, the magic "NIXE" (0x4558494e), the path, its
references (count, then each, sorted), its deriver ("" for none) and 0 (no legacy signature; a 1 is
followed by one, which is read and ignored); after the last path, 0. Integers and strings are framed as
in `wire.py`. The metadata comes after the NAR, so a reader learns which path it is unpacking only at
the end. Nix: export-import.cc (`exportPath`, `importPaths`).

`ExportParser` is a machine of the same kind as the NAR parser: `receive_data()` bytes in, events out
of `next_event()`. Each path gives `PathStart`, the NAR's own events (from an inner `NarParser`, so NAR
contents pass through without a copy), then `PathEnd` with the trailer and the NAR's SHA-256 and size,
computed on the way. The stream ends with `StreamEnd`; bytes after it stay in `unused_data`. Writing is
`path_header()`, the NAR, `trailer()` for each path, and `STREAM_END`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from xstore.errors import ExportStreamError, InvalidStorePathError
from xstore.nar.events import ArchiveEnd, Event
from xstore.nar.parser import NarParser
from xstore.nar.rules import show
from xstore.records import FrozenRecord, setfield
from xstore.storepath import HASH_PART_LEN, MAX_NAME_LEN, STORE_DIR, StorePath, parse_store_path
from xstore.wire import NEED_DATA, Signal, WireBuffer, encode_strings, encode_u64

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    import hashlib
    from typing import Final

EXPORT_MAGIC: Final = 0x4558494E
PATH_MARKER: Final = encode_u64(1)
STREAM_END: Final = encode_u64(0)


def _sha256() -> hashlib._Hash:
    import hashlib  # here: a server that never reads an export stream starts without OpenSSL

    return hashlib.sha256()


# Bounds on the trailer, so a hostile one cannot make the reader hold much: a store path is at most
# `/nix/store/` + 32 + `-` + a 211-character name (current Nix refuses longer ones when it parses them),
# and no real path has more than a few thousand references. Current Nix reads the count unbounded and
# keeps every reference; here the count is bounded and each reference is checked as it arrives, so a
# trailer holds at most about 17 MiB of references.
MAX_PATH_STRING: Final = len(STORE_DIR) + 1 + HASH_PART_LEN + 1 + MAX_NAME_LEN
MAX_REFERENCES: Final = 1 << 16
MAX_LEGACY_SIGNATURE: Final = 4096


class PathStart(FrozenRecord):
    """A path's record begins; its NAR follows. `offset` is the stream offset of the marker."""

    __slots__ = ("offset",)
    offset: int

    def __init__(self, offset: int) -> None:
        setfield(self, "offset", offset)


class PathEnd(FrozenRecord):
    """A path's record is complete: the trailer, and the NAR's SHA-256 digest and size."""

    __slots__ = ("path", "references", "deriver", "nar_hash", "nar_size", "start", "end")  # noqa: RUF023 (the fields' order)
    path: StorePath
    references: tuple[StorePath, ...]  # sorted, without duplicates
    deriver: StorePath | None
    nar_hash: bytes
    nar_size: int
    start: int  # stream offset of the record's marker
    end: int  # stream offset just after the record

    def __init__(
        self,
        path: StorePath,
        references: tuple[StorePath, ...],
        deriver: StorePath | None,
        nar_hash: bytes,
        nar_size: int,
        start: int,
        end: int,
    ) -> None:
        setfield(self, "path", path)
        setfield(self, "references", references)
        setfield(self, "deriver", deriver)
        setfield(self, "nar_hash", nar_hash)
        setfield(self, "nar_size", nar_size)
        setfield(self, "start", start)
        setfield(self, "end", end)


class StreamEnd(FrozenRecord):
    """The closing 0; `size` is the stream's length."""

    __slots__ = ("size",)
    size: int

    def __init__(self, size: int) -> None:
        setfield(self, "size", size)


ExportEvent = PathStart | PathEnd | StreamEnd | Event


class _State(enum.Enum):
    MARKER = enum.auto()
    NAR = enum.auto()
    MAGIC = enum.auto()  # the trailer, one item at a time
    PATH = enum.auto()
    REF_COUNT = enum.auto()
    REFS = enum.auto()
    DERIVER = enum.auto()
    SIG_FLAG = enum.auto()
    SIG = enum.auto()
    DONE = enum.auto()


class ExportParser:
    """Incremental export stream parser; see the module docstring for the events.

    Raises `ExportStreamError` for framing outside the NARs, `NarError` inside them (offsets there are
    relative to the NAR), `InvalidStorePathError`-derived `ExportStreamError`s for bad paths. The
    parser holds no resources: abandoning it needs no cleanup. `whole_files` is passed to the NARs'
    parsers (`NarParser`): small files as single `WholeFile` events.
    """

    def __init__(self, *, whole_files: bool = False) -> None:
        self._whole_files = whole_files
        self._buf = WireBuffer(error=ExportStreamError, where="export stream")
        self._state = _State.MARKER
        self._nar: NarParser | None = None
        self._hasher = _sha256()
        self._start = 0
        self._nar_start = 0
        self._nar_size = 0
        self._eof = False
        self._trailer_at = 0
        self._path: StorePath | None = None
        self._refs: set[StorePath] = set()
        self._ref_count = 0
        self._deriver: StorePath | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append input; `b""` marks its end."""
        if not data:
            self._eof = True
        if self._state is _State.NAR:
            assert self._nar is not None
            self._nar.receive_data(data)
        else:
            self._buf.feed(data)

    @property
    def offset(self) -> int:
        """Stream offset of the next byte the parser will look at."""
        if self._state is _State.NAR:
            assert self._nar is not None
            return self._nar_start + self._nar.offset
        return self._buf.offset

    @property
    def unused_data(self) -> bytes:
        """Bytes received after the stream's end (empty before it)."""
        return self._buf.peek_buffered() if self._state is _State.DONE else b""

    def next_event(self) -> ExportEvent | Signal:
        state = self._state
        if state is _State.NAR:
            return self._next_nar_event()
        if state is _State.MARKER:
            return self._marker()
        if state is _State.DONE:
            return StreamEnd(self._buf.offset)
        return self._trailer()

    def _marker(self) -> ExportEvent | Signal:
        buf = self._buf
        at = buf.offset
        marker = buf.attempt(buf.u64, "the next path marker")
        if marker is NEED_DATA:
            return NEED_DATA
        if marker == 0:
            self._state = _State.DONE
            return StreamEnd(buf.offset)
        if marker != 1:
            raise buf.fail(
                "input doesn't look like something created by 'nix-store --export' "
                f"(expected a path marker 0 or 1, got {marker})",
                at,
            )
        self._start = at
        self._nar_start = buf.offset
        self._hasher = _sha256()
        nar = self._nar = NarParser(hasher=self._hasher, whole_files=self._whole_files)
        self._state = _State.NAR
        rest = buf.take_buffered()
        if rest:
            nar.receive_data(rest)
        if buf.eof:
            nar.receive_data(b"")
        return PathStart(at)

    def _next_nar_event(self) -> ExportEvent | Signal:
        nar = self._nar
        assert nar is not None
        event = nar.next_event()
        if type(event) is ArchiveEnd:
            assert isinstance(event, ArchiveEnd)
            self._nar_size = event.size
            buf = self._buf = WireBuffer(error=ExportStreamError, where="export stream")
            buf.base = self._nar_start + event.size
            unused = nar.unused_data
            if unused:
                buf.feed(unused)
            if self._eof:
                buf.feed(b"")
            self._nar = None
            self._state = _State.MAGIC
            self._trailer_at = buf.offset
        return event

    def _trailer(self) -> ExportEvent | Signal:
        """What follows a NAR, read one item at a time (memory stays bounded by the limits above)."""
        buf = self._buf
        while True:
            state = self._state
            at = buf.offset
            if state is _State.MAGIC:
                magic = buf.attempt(buf.u64, "the export magic after the NAR")
                if magic is NEED_DATA:
                    return NEED_DATA
                if magic != EXPORT_MAGIC:
                    raise buf.fail(
                        "Nix archive cannot be imported; wrong format (no 'NIXE' magic after the NAR)", at
                    )
                self._state = _State.PATH
            elif state is _State.PATH:
                raw = buf.attempt(lambda: buf.string(MAX_PATH_STRING, "store path"), "the store path")
                if raw is NEED_DATA:
                    return NEED_DATA
                assert isinstance(raw, bytes)
                self._path = _parse(raw, "store path", buf, at)
                self._state = _State.REF_COUNT
            elif state is _State.REF_COUNT:
                count = buf.attempt(
                    lambda: buf.bounded(MAX_REFERENCES, "the number of references"), "the references"
                )
                if count is NEED_DATA:
                    return NEED_DATA
                assert isinstance(count, int)
                self._ref_count = count
                self._refs = set()
                self._state = _State.REFS if count else _State.DERIVER
            elif state is _State.REFS:
                raw = buf.attempt(lambda: buf.string(MAX_PATH_STRING, "reference"), "a reference")
                if raw is NEED_DATA:
                    return NEED_DATA
                assert isinstance(raw, bytes)
                self._refs.add(_parse(raw, "reference", buf, at))
                self._ref_count -= 1
                if not self._ref_count:
                    self._state = _State.DERIVER
            elif state is _State.DERIVER:
                raw = buf.attempt(lambda: buf.string(MAX_PATH_STRING, "deriver"), "the deriver")
                if raw is NEED_DATA:
                    return NEED_DATA
                assert isinstance(raw, bytes)
                self._deriver = _parse(raw, "deriver", buf, at) if raw else None
                self._state = _State.SIG_FLAG
            elif state is _State.SIG_FLAG:
                flag = buf.attempt(buf.u64, "the signature flag")
                if flag is NEED_DATA:
                    return NEED_DATA
                if flag != 1:
                    return self._path_end()
                self._state = _State.SIG
            else:
                assert state is _State.SIG
                sig = buf.attempt(
                    lambda: buf.string(MAX_LEGACY_SIGNATURE, "legacy signature"), "the legacy signature"
                )
                if sig is NEED_DATA:
                    return NEED_DATA
                return self._path_end()

    def _path_end(self) -> PathEnd:
        assert self._path is not None
        self._state = _State.MARKER
        return PathEnd(
            self._path,
            tuple(sorted(self._refs)),
            self._deriver,
            self._hasher.digest(),
            self._nar_size,
            self._start,
            self._buf.offset,
        )


def _parse(raw: bytes, what: str, buf: WireBuffer, at: int) -> StorePath:
    try:
        return parse_store_path(raw)
    except InvalidStorePathError as e:
        raise buf.fail(f"{what} '{show(raw)}' is not a valid store path: {e.reason}", at) from e


# -- writing -----------------------------------------------------------------------------------------


def trailer(path: StorePath, references: Iterable[StorePath], deriver: StorePath | None) -> bytes:
    """What follows a path's NAR: the magic, the path, its references (sorted), its deriver, and 0."""
    refs = sorted(set(references))
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

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
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from xstore.errors import ExportStreamError, InvalidStorePathError
from xstore.nar.events import ArchiveEnd, Event
from xstore.nar.parser import NarParser
from xstore.nar.rules import show
from xstore.storepath import StorePath, parse_store_path
from xstore.wire import NEED_DATA, Signal, WireBuffer, encode_strings, encode_u64

EXPORT_MAGIC: Final = 0x4558494E
PATH_MARKER: Final = encode_u64(1)
STREAM_END: Final = encode_u64(0)

# Bounds on the trailer, so a hostile one cannot make the reader buffer without limit: a store path is
# at most a few hundred bytes (a 211-character name), and no real path has more than a few thousand
# references.
MAX_PATH_STRING: Final = 4096
MAX_REFERENCES: Final = 1 << 16
MAX_LEGACY_SIGNATURE: Final = 4096


@dataclass(frozen=True, slots=True)
class PathStart:
    """A path's record begins; its NAR follows. `offset` is the stream offset of the marker."""

    offset: int


@dataclass(frozen=True, slots=True)
class PathEnd:
    """A path's record is complete: the trailer, and the NAR's SHA-256 digest and size."""

    path: StorePath
    references: tuple[StorePath, ...]  # sorted, without duplicates
    deriver: StorePath | None
    nar_hash: bytes
    nar_size: int
    start: int  # stream offset of the record's marker
    end: int  # stream offset just after the record


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The closing 0; `size` is the stream's length."""

    size: int


ExportEvent = PathStart | PathEnd | StreamEnd | Event


class _State(enum.Enum):
    MARKER = enum.auto()
    NAR = enum.auto()
    TRAILER = enum.auto()
    DONE = enum.auto()


class ExportParser:
    """Incremental export stream parser; see the module docstring for the events.

    Raises `ExportStreamError` for framing outside the NARs, `NarError` inside them (offsets there are
    relative to the NAR), `InvalidStorePathError`-derived `ExportStreamError`s for bad paths. The
    parser holds no resources: abandoning it needs no cleanup.
    """

    def __init__(self) -> None:
        self._buf = WireBuffer(error=ExportStreamError, where="export stream")
        self._state = _State.MARKER
        self._nar: NarParser | None = None
        self._hasher = hashlib.sha256()
        self._start = 0
        self._nar_start = 0
        self._nar_size = 0
        self._eof = False

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
        if state is _State.TRAILER:
            return self._trailer()
        return StreamEnd(self._buf.offset)

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
        self._hasher = hashlib.sha256()
        nar = self._nar = NarParser(hasher=self._hasher)
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
            self._state = _State.TRAILER
        return event

    def _trailer(self) -> ExportEvent | Signal:
        buf = self._buf
        at = buf.offset

        def read() -> tuple[int, bytes, list[bytes], bytes]:
            magic = buf.u64()
            if magic != EXPORT_MAGIC:
                raise buf.fail(
                    "Nix archive cannot be imported; wrong format (no 'NIXE' magic after the NAR)", at
                )
            path = buf.string(MAX_PATH_STRING, "store path")
            refs = buf.strings(MAX_REFERENCES, MAX_PATH_STRING, "references")
            deriver = buf.string(MAX_PATH_STRING, "deriver")
            if buf.u64() == 1:
                buf.string(MAX_LEGACY_SIGNATURE, "legacy signature")
            return magic, path, refs, deriver

        got = buf.attempt(read, "the path's metadata after its NAR")
        if got is NEED_DATA:
            return NEED_DATA
        assert isinstance(got, tuple)
        _, raw_path, raw_refs, raw_deriver = got
        path = _parse(raw_path, "store path", buf, at)
        refs = tuple(sorted({_parse(r, "reference", buf, at) for r in raw_refs}))
        deriver = _parse(raw_deriver, "deriver", buf, at) if raw_deriver else None
        self._state = _State.MARKER
        return PathEnd(path, refs, deriver, self._hasher.digest(), self._nar_size, self._start, buf.offset)


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

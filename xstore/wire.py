"""Nix's wire framing, both directions: the building blocks of NARs, export streams and Nix's protocols.

Integers are unsigned 64-bit little endian. A string is its length as such an integer, its bytes, and
zero bytes up to the next multiple of 8. A list of strings is a count and the strings. A framed stream
(the daemon protocol from 1.23) is any number of frames, each a length and that many bytes without
padding, closed by an empty frame.

Writing is a handful of pure functions. Reading is `WireBuffer`, a sans-IO buffer every protocol machine
(export stream, serve, daemon) shares: it takes bytes with `feed()` and hands out whole items. A read of
an item that has not fully arrived raises the internal `Incomplete`; `attempt()` wraps a group of reads
so that either all of them succeed or none consumed anything, and turns `Incomplete` into `NEED_DATA`
(or, after end of input, into the caller's truncation error). Machines therefore read whole messages
and never keep half-parsed state. Every string and list has a caller-given bound, so a hostile length
never makes a reader buffer more than the bound.

The NAR parser keeps its own buffer (contents pass through it without a copy) but reads its strings
with the same `parse_string`. Nix: serialise.hh / serialise.cc (`readNum`, `readString`,
`readPadding`, `FramedSource`, `FramedSink`).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable

from xstore.errors import InputError, WireError

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Any, Final, TypeVar

    T = TypeVar("T")

U64: Final = struct.Struct("<Q")
ZEROS: Final = bytes(8)

# Bounds of current Nix's NAR parser (archive.cc `parse`): format-defined, independent of the host's
# NAME_MAX/PATH_MAX.
NAR_MAX_TAG: Final = 32
NAR_MAX_NAME: Final = 255
NAR_MAX_TARGET: Final = 4095
NAR_MAX_DEPTH: Final = 64


class Signal(enum.Enum):
    """Sentinels a sans-IO machine returns instead of an event."""

    NEED_DATA = enum.auto()


NEED_DATA: Final = Signal.NEED_DATA


# -- writing -----------------------------------------------------------------------------------------


def encode_u64(n: int) -> bytes:
    return U64.pack(n)


def encode_bytes(data: bytes) -> bytes:
    """Frame `data` as a Nix string: length, bytes, zero padding."""
    return U64.pack(len(data)) + data + ZEROS[: -len(data) & 7]


def encode_strings(*items: bytes) -> bytes:
    """Several framed strings back to back (one allocation instead of many)."""
    return b"".join([U64.pack(len(s)) + s + ZEROS[: -len(s) & 7] for s in items])


def encode_string_list(items: Iterable[bytes]) -> bytes:
    """A count, then each string framed (Nix: `writeStrings`; a StorePathSet is sent sorted)."""
    items = list(items)
    return U64.pack(len(items)) + encode_strings(*items)


def encode_frame(data: bytes) -> bytes:
    """One frame of a framed stream: its length and the bytes, unpadded. `b""` ends the stream."""
    return U64.pack(len(data)) + data


# -- reading -----------------------------------------------------------------------------------------


class Incomplete(Exception):  # noqa: N818 (a control-flow signal inside this module's readers, not an error)
    """The item being read has not fully arrived. Never escapes `WireBuffer.attempt`."""


def parse_string(buf: bytes, pos: int, max_len: int, what: str = "string") -> tuple[bytes, int] | None:
    """The string framed at `buf[pos:]` and the position after its padding; None if it has not fully
    arrived. Raises `WireError` (its offset relative to `buf`) when the length exceeds `max_len` or the
    padding is not zero; `what` names the item in the message."""
    if len(buf) - pos < 8:
        return None
    (n,) = U64.unpack_from(buf, pos)
    if n > max_len:
        raise WireError(f"{what} of {n} bytes is too long (at most {max_len} allowed)", offset=pos)
    end = pos + 8 + n
    padded = end + (-n & 7)
    if len(buf) < padded:
        return None
    if buf[end:padded] != ZEROS[: padded - end]:
        raise WireError("non-zero padding", offset=pos)
    return buf[pos + 8 : end], padded


class WireBuffer:
    """Received bytes of one stream, read as Nix's wire items.

    `feed(data)` appends; `b""` marks the end of input. The typed readers (`u64`, `string`,
    `strings`, `exact`) raise `Incomplete` when the item has not fully arrived; call them inside
    `attempt()`. `offset` is the stream offset of the next unread byte. Errors are raised as `error`
    (a subclass of `InputError` taking `offset=`), with "(at byte N of the <where>)" appended.

    A message that arrives in many pieces costs time in proportion to its size, not to its size times
    the number of pieces: unread bytes are kept in a buffer that grows in place (bytes already read
    are dropped from its front once they are most of it), and a counted list of strings is scanned
    only once, however often the group it is part of is tried again (the scan resumes where the last
    piece ended, and a list that arrived whole is kept until its group has been read). Nix's messages
    are short, but a client may send a list of 100,000 paths or a derivation of 64 MiB in 64 KiB
    pieces: tried again from the start with every piece, each would take minutes.
    """

    __slots__ = ("_buf", "_error", "_lists", "_pos", "_scan", "_where", "base", "eof")

    def __init__(self, *, error: type[InputError] = WireError, where: str = "stream") -> None:
        # bytes while it holds one piece as it came (no copy); a bytearray once unread bytes meet the next
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self.base = 0  # stream offset of self._buf[0]
        self.eof = False
        self._error = error
        self._where = where
        # A list whose strings have not all arrived: (stream offset of its first string, the strings
        # read so far, stream offset after the last of them). Lists read whole in a group that was then
        # found incomplete, by the offset of their first string: (offset after the list, the strings).
        self._scan: tuple[int, list[Any], int] | None = None
        self._lists: dict[int, tuple[int, list[Any]]] = {}

    # -- input ---------------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            self.eof = True
            return
        if self.eof:
            raise RuntimeError("feed() after end of input")
        buf, pos = self._buf, self._pos
        if pos >= len(buf):  # everything read: hold the new piece as it is
            self.base += len(buf)
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
            return
        if isinstance(buf, bytes):
            self.base += pos
            buf = self._buf = bytearray(memoryview(buf)[pos:])
            self._pos = 0
        elif pos > len(buf) >> 1:
            del buf[:pos]  # a bytearray drops its front without moving the rest
            self.base += pos
            self._pos = 0
        buf += data

    def _slice(self, start: int, end: int) -> bytes:
        buf = self._buf
        if type(buf) is bytes:
            return buf[start:end]
        with memoryview(buf) as view:
            return bytes(view[start:end])

    @property
    def offset(self) -> int:
        return self.base + self._pos

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read."""
        return len(self._buf) - self._pos

    def peek_buffered(self) -> bytes:
        """The received, unread bytes, left unread."""
        return self._slice(self._pos, len(self._buf))

    def take_buffered(self, limit: int | None = None) -> bytes:
        """Up to `limit` (default: all) of the received, unread bytes, consumed."""
        end = len(self._buf) if limit is None else min(len(self._buf), self._pos + limit)
        data = self._slice(self._pos, end)
        self._pos = end
        return data

    def push_back(self, data: bytes) -> None:
        """Put bytes that another reader received beyond its end (a NAR parser's `unused_data`) back in
        front of what is buffered."""
        if data:
            self.base += self._pos - len(data)
            self._buf = data + self.peek_buffered()
            self._pos = 0

    # -- errors --------------------------------------------------------------------------------------

    def fail(self, reason: str, offset: int | None = None) -> InputError:
        """The error to raise for `reason` at `offset` (default: the next unread byte)."""
        at = self.offset if offset is None else offset
        return self._error(f"{reason} (at byte {at} of the {self._where})", offset=at)

    def attempt(self, read: Callable[[], T], what: str) -> T | Signal:
        """Run `read()`, a group of item reads: its result, or `NEED_DATA` with nothing consumed when
        the items have not all arrived. After end of input an incomplete group raises the truncation
        error, naming `what`."""
        mark = self._pos
        try:
            result = read()
        except Incomplete:
            self._pos = mark
            if self.eof:
                raise self.fail(f"unexpected end of file while reading {what}") from None
            return NEED_DATA
        if self._lists:
            self._lists = {}
        return result

    # -- items ---------------------------------------------------------------------------------------

    def exact(self, n: int) -> bytes:
        pos = self._pos
        if len(self._buf) - pos < n:
            raise Incomplete
        self._pos = pos + n
        return self._slice(pos, pos + n)

    def u64(self) -> int:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 8:
            raise Incomplete
        self._pos = pos + 8
        return int(U64.unpack_from(buf, pos)[0])

    def bounded(self, limit: int, what: str) -> int:
        """A u64 that must not exceed `limit` (a count or a size)."""
        at = self.offset
        n = self.u64()
        if n > limit:
            raise self.fail(f"{what} {n} is out of range (at most {limit} allowed)", at)
        return n

    def string(self, max_len: int, what: str = "string") -> bytes:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 8:
            raise Incomplete
        (n,) = U64.unpack_from(buf, pos)
        if n > max_len:
            raise self.fail(f"{what} of {n} bytes is too long (at most {max_len} allowed)", self.base + pos)
        end = pos + 8 + n
        padded = end + (-n & 7)
        if len(buf) < padded:
            raise Incomplete
        if padded > end and buf[end:padded] != ZEROS[: padded - end]:
            raise self.fail(f"non-zero padding after {what}", self.base + pos)
        self._pos = padded
        if type(buf) is bytes:
            return buf[pos + 8 : end]
        return self._slice(pos + 8, end)

    def strings(self, max_count: int, max_len: int, what: str = "string list") -> list[bytes]:
        count = self.bounded(max_count, f"the number of items in {what}")
        return self.items(count, max_len, what)

    def items(self, count: int, max_len: int, what: str = "string list") -> list[bytes]:
        """`count` strings in a row (a list whose count has been read, or `count // 2` pairs), each
        checked as `string` checks it, in order. Scanned once however often the group is tried again
        (see the class docstring)."""
        return self.converted_items(count, max_len, what, None)

    def converted_items(
        self, count: int, max_len: int, what: str, convert: Callable[[bytes, int], T] | None
    ) -> list[T]:
        """`items`, each string given to `convert(string, stream offset of its length)` as it is read,
        in order, so that its error (a path that is not one) comes before those of later strings, as
        from a reader that takes one string at a time. `convert` None keeps the strings."""
        if not count:
            return []
        start = self.base + self._pos
        done = self._lists.get(start)
        if done is not None:
            self._pos = done[0] - self.base
            return done[1]
        buf, base = self._buf, self.base
        scan = self._scan
        if scan is not None and scan[0] == start:
            found, pos = scan[1], scan[2] - base
        else:
            found, pos = [], self._pos
        append = found.append
        size = len(buf)
        unpack = U64.unpack_from
        whole = type(buf) is bytes
        scanned = len(found)
        while scanned < count:
            if size - pos < 8:
                break
            (n,) = unpack(buf, pos)
            if n > max_len:
                raise self.fail(f"{what} of {n} bytes is too long (at most {max_len} allowed)", base + pos)
            end = pos + 8 + n
            padded = end + (-n & 7)
            if padded > size:
                break
            if padded > end and buf[end:padded] != ZEROS[: padded - end]:
                raise self.fail(f"non-zero padding after {what}", base + pos)
            item = buf[pos + 8 : end] if whole else self._slice(pos + 8, end)
            append(item if convert is None else convert(item, base + pos))  # type: ignore[arg-type]
            pos = padded
            scanned += 1
        if scanned < count:
            self._scan = (start, found, base + pos)
            raise Incomplete
        if scan is not None and scan[0] == start:
            self._scan = None  # (another list's scan, one further on in the group, is kept)
        self._pos = pos
        if count > 16:  # a short list costs less to read again than to keep
            self._lists[start] = (base + pos, found)
        return found


class FrameDecoder:
    """The reading side of a framed stream over a `WireBuffer`: `next_chunk()` gives the bytes of the
    frames in order (up to `limit` at a time), `b""` once the closing empty frame has been read, or
    `NEED_DATA`. Nix: `FramedSource`."""

    __slots__ = ("_buf", "_left", "done")

    def __init__(self, buf: WireBuffer) -> None:
        self._buf = buf
        self._left = 0  # bytes of the current frame still to come
        self.done = False

    def next_chunk(self, limit: int = 1 << 20) -> bytes | Signal:
        buf = self._buf
        while True:
            if self.done:
                return b""
            if self._left:
                if not buf.buffered:
                    if buf.eof:
                        raise buf.fail("unexpected end of file inside a frame")
                    return NEED_DATA
                data = buf.take_buffered(min(self._left, limit))
                self._left -= len(data)
                return data
            n = buf.attempt(buf.u64, "a frame's length")
            if n is NEED_DATA:
                return NEED_DATA
            assert isinstance(n, int)
            if n == 0:
                self.done = True
            self._left = n

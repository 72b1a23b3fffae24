"""What a file or stream is, from its first bytes: so a command can say "this is a NAR: use ..." instead
of a parser's complaint about a magic number.

`identify(head)` recognises NARs, export streams, the compressed forms Nix writes (xz, zstd, bzip2,
gzip), narinfos and `nix-cache-info` files, JSON, and empty input. `open_input(read)` looks at the head
of a stream without losing it, unwraps compression (so `nar ls`, `nar cat`, `nar restore` and `import`
read compressed input transparently), and tells what is inside.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from xstore.compression import Method, detect, open_reader
from xstore.errors import WrongFormatError
from xstore.nar.tokens import MAGIC as NAR_HEAD
from xstore.wire import encode_u64

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Final

Read = Callable[[int], bytes]

HEAD_SIZE: Final = 64
_EXPORT_HEAD: Final = encode_u64(1) + NAR_HEAD
_EMPTY_EXPORT: Final = encode_u64(0)


class Kind(enum.Enum):
    NAR = "a NAR"
    EXPORT = "an export stream ('nix-store --export')"
    COMPRESSED = "compressed data"
    NARINFO = "a narinfo"
    CACHE_INFO = "a binary cache's nix-cache-info"
    JSON = "JSON"
    EMPTY = "empty"
    UNKNOWN = "unknown"


# What to use instead, for each kind a command does not read.
_ADVICE: Final = {
    Kind.NAR: "use 'xstore nar restore' (or 'xstore nar ls')",
    Kind.EXPORT: "use 'xstore import'",
    Kind.NARINFO: "it describes a path in a binary cache; use 'xstore copy --from' with the cache's URL",
    Kind.CACHE_INFO: "it marks a binary cache; use 'xstore copy --from' with the cache's URL",
    Kind.JSON: "a NAR listing ('.ls') describes a NAR but holds none of its contents",
}


def identify(head: bytes) -> Kind:
    """The kind of data that starts with `head` (give at least `HEAD_SIZE` bytes when there are)."""
    if not head:
        return Kind.EMPTY
    if head.startswith(NAR_HEAD) or (len(head) < len(NAR_HEAD) and NAR_HEAD.startswith(head)):
        return Kind.NAR
    if head.startswith(_EXPORT_HEAD) or head == _EMPTY_EXPORT:
        return Kind.EXPORT
    if detect(head) is not None:
        return Kind.COMPRESSED
    if head.startswith(b"StorePath: "):
        return Kind.NARINFO
    if head.startswith(b"StoreDir: "):
        return Kind.CACHE_INFO
    if head.lstrip()[:1] in (b"{", b"["):
        return Kind.JSON
    return Kind.UNKNOWN


class Peeked:
    """A read function with its first bytes already read (and given out again first)."""

    def __init__(self, read: Read, head: bytes) -> None:
        self._read = read
        self._head = head

    def __call__(self, n: int) -> bytes:
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._read(n)


def peek(read: Read, size: int = HEAD_SIZE) -> tuple[bytes, Read]:
    """The first `size` bytes of the stream (fewer at its end), and a read function that still gives
    the whole stream."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        data = read(size - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    head = b"".join(parts)
    return head, Peeked(read, head)


def open_input(read: Read) -> tuple[Kind, Method, Read]:
    """What the stream holds once decompressed, the compression found, and a read function giving the
    decompressed stream from its first byte."""
    head, read = peek(read)
    method = detect(head)
    if method is None:
        return identify(head), Method.NONE, read
    inner, read = peek(open_reader(read, method))
    return identify(inner), method, read


def expect(kind: Kind, wanted: Kind, what: str) -> None:
    """Raise `WrongFormatError` unless `kind` is `wanted` (unknown or empty input passes: the parser
    then says what is wrong with it)."""
    if kind in (wanted, Kind.UNKNOWN, Kind.EMPTY):
        return
    advice = _ADVICE.get(kind)
    raise WrongFormatError(f"{what} is {kind.value}, not {wanted.value}" + (f": {advice}" if advice else ""))

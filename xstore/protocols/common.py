"""What the serve and daemon protocols share: store paths and path sets on the wire, hashes in any of
Nix's forms, bounds on what a peer may make us buffer, and finding the end of an unframed NAR or export
stream inside a byte stream.

Both protocols send NARs without a length in places (the serve protocol's DumpStorePath, the daemon's
NarFromPath): the only way to know where the archive ends is to parse it. `NarSpan` does that with the
one NAR parser and hands the archive's bytes through unchanged, so a caller can write them to a sink
as they arrive; whatever followed the archive in the last chunk is handed back for the next message.
`ExportSpan` does the same for an export stream (the serve protocol's ExportPaths and ImportPaths).

Every reader runs inside `WireBuffer.attempt()` (whole messages or nothing) and bounds every length and
count, so a hostile peer cannot make a machine buffer more than a message's bound.
Nix: worker-protocol.cc / serve-protocol.cc (`StorePath`, `StorePathSet`), hash.cc (`Hash::parseAny`).
"""

from __future__ import annotations

from collections.abc import Iterable

from xstore.errors import InvalidHashError, InvalidStorePathError
from xstore.hashing import HashAlgorithm, parse_hash
from xstore.nar.events import NEED_DATA, ArchiveEnd
from xstore.nar.parser import NarParser
from xstore.records import FrozenRecord, setfield
from xstore.storepath import StorePath, parse_store_path
from xstore.wire import WireBuffer, encode_bytes, encode_u64

TYPE_CHECKING = False  # not `from typing import`: the serve and daemon routes run without loading typing
if TYPE_CHECKING:
    from typing import Final

    from xstore.exportstream import ExportParser, StreamEnd

# A store path is at most /nix/store + 1 + 32 + 1 + 211 characters; other stores' directories are longer,
# but never kilobytes.
MAX_PATH: Final = 1024
# Paths in one message (a closure of a whole NixOS system is a few thousand).
MAX_PATHS: Final = 1 << 17
MAX_HASH: Final = 256  # "sha512:" + base16 is 135
MAX_SIGS: Final = 1 << 10
MAX_SIG: Final = 1 << 10
MAX_CA: Final = 1 << 10
MAX_MESSAGE: Final = 1 << 16  # log lines, error messages, version strings
MAX_SETTINGS: Final = 1 << 12
# Derivations sent with BuildDerivation: environment values can be large (a few MiB at most in practice).
MAX_DRV_STRING: Final = 1 << 24
MAX_DRV_ITEMS: Final = 1 << 16


class NarData(FrozenRecord):
    """Bytes of a NAR, in order (a NAR sent in reply, or the payload of a request that adds a path)."""

    __slots__ = ("data",)
    data: bytes

    def __init__(self, data: bytes) -> None:
        setfield(self, "data", data)


class NarEnd(FrozenRecord):
    """The NAR is complete; `size` is its length."""

    __slots__ = ("size",)
    size: int

    def __init__(self, size: int) -> None:
        setfield(self, "size", size)


def version_text(version: int) -> str:
    """`major.minor` of a protocol version (`0x208` is `2.8`)."""
    return f"{version >> 8}.{version & 0xFF}"


def show_received(data: bytes, limit: int = 80) -> str:
    """Bytes a peer sent where a greeting was expected, shown readably on one line (a shell banner or a
    'command not found' tells the user more than a hex dump)."""
    text = data[:limit].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text + ("..." if len(data) > limit else "")


# -- writing -----------------------------------------------------------------------------------------


def encode_path(path: StorePath | None) -> bytes:
    """A store path as a string (`""` for none, as Nix writes an absent deriver)."""
    return encode_bytes(path.path.encode() if path is not None else b"")


def encode_path_set(paths: Iterable[StorePath]) -> bytes:
    """A `StorePathSet`: the count, then the paths sorted (Nix's set order) without duplicates."""
    unique = sorted(set(paths))
    return encode_u64(len(unique)) + b"".join(encode_bytes(p.path.encode()) for p in unique)


def encode_string_set(items: Iterable[str]) -> bytes:
    unique = sorted(set(items))
    return encode_u64(len(unique)) + b"".join(encode_bytes(s.encode()) for s in unique)


# -- reading (inside WireBuffer.attempt) -------------------------------------------------------------


def path_from(buf: WireBuffer, raw: bytes, at: int, what: str = "store path") -> StorePath:
    """`raw`, read at stream offset `at`, as a store path; a `buf.fail` error if it is not one."""
    try:
        return parse_store_path(raw)
    except InvalidStorePathError as e:
        raise buf.fail(f"{what} {e.path} is not a valid store path: {e.reason}", at) from None


def read_path(buf: WireBuffer, what: str = "store path") -> StorePath:
    at = buf.offset
    return path_from(buf, buf.string(MAX_PATH, what), at, what)


def read_optional_path(buf: WireBuffer, what: str) -> StorePath | None:
    at = buf.offset
    raw = buf.string(MAX_PATH, what)
    return path_from(buf, raw, at, what) if raw else None


def read_path_set(buf: WireBuffer, what: str = "store paths") -> frozenset[StorePath]:
    count = buf.bounded(MAX_PATHS, f"the number of {what}")
    paths = buf.converted_items(count, MAX_PATH, what, lambda raw, at: path_from(buf, raw, at, what))
    return frozenset(paths)


def read_strings(buf: WireBuffer, max_count: int, max_len: int, what: str) -> list[str]:
    return [s.decode("utf-8", "replace") for s in buf.strings(max_count, max_len, what)]


def nar_hash_from(buf: WireBuffer, raw: bytes, at: int, what: str = "NAR hash") -> bytes:
    """A SHA-256 NAR hash in any form Nix accepts (`Hash::parseAny`): base16 without a prefix (the
    daemon protocol), `sha256:<nix32>` (the serve protocol), SRI."""
    try:
        return parse_hash(raw.decode("ascii", "replace"), HashAlgorithm.SHA256).digest
    except InvalidHashError as e:
        raise buf.fail(f"bad {what}: {e}", at) from None


def read_nar_hash(buf: WireBuffer, what: str = "NAR hash") -> bytes:
    at = buf.offset
    return nar_hash_from(buf, buf.string(MAX_HASH, what), at, what)


def read_optional_text(buf: WireBuffer, max_len: int, what: str) -> str | None:
    raw = buf.string(max_len, what)
    return raw.decode("utf-8", "replace") if raw else None


# -- unframed archives inside a stream ---------------------------------------------------------------


class _Span:
    """Finds where one archive or stream ends in a byte stream, passing its bytes through unchanged.

    `feed(data)` returns `(part, rest)`: the part of `data` that belongs to it, and `None` while it goes
    on, or the bytes that followed its end once it has ended. `feed(b"")` marks the end of the input (the
    parser then raises `TruncatedError` if what it read was incomplete). `size` counts its bytes so far.
    It is checked as fully as any other input of its kind.
    """

    __slots__ = ("_end", "_parser", "done", "size")

    def __init__(self, parser: NarParser | ExportParser, end: type[ArchiveEnd] | type[StreamEnd]) -> None:
        self._parser = parser
        self._end = end
        self.size = 0
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        parser = self._parser
        parser.receive_data(data)
        end = self._end
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                self.size += len(data)
                return data, None
            if type(event) is end:
                # It ended inside `data`: what the parser has not used is a suffix of it.
                rest = parser.unused_data
                part = data[: len(data) - len(rest)]
                self.size += len(part)
                self.done = True
                return part, rest


class NarSpan(_Span):
    """One NAR (current Nix's rules) in a byte stream."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(NarParser(), ArchiveEnd)


class ExportSpan(_Span):
    """One whole `nix-store --export` stream (paths, NARs, trailers, the closing 0) in a byte stream."""

    __slots__ = ()

    def __init__(self) -> None:
        from xstore.exportstream import ExportParser, StreamEnd  # a large module only ImportPaths needs

        super().__init__(ExportParser(), StreamEnd)

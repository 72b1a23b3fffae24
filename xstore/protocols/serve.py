"""The `nix-store --serve` protocol (Nix's legacy `ssh://` store), both ends, sans-IO.

A client writes `SERVE_MAGIC_1` and its version; the server answers `SERVE_MAGIC_2` and its version, and
both then use the lower of the two (current Nix; 2.8 used each side's own, which agrees whenever the
client is not newer than the server). After that the client sends commands, each a number followed by
its fields, and the server answers each in turn. There are no error frames: a server that fails prints
the error on stderr and exits, so the client sees the end of the stream.

Two objects, in the manner of h11's `Connection`: `ServeClient` (requests out, replies in) and
`ServeServer` (requests in, replies out). Bytes received go in with `receive_data()` (`b""` at the end
of the stream); `next_event()` returns the next event or `NEED_DATA`; methods that make a message return
the bytes to send. Neither knows anything of pipes, sockets or ssh. NARs are never held: DumpStorePath's
reply (an unframed NAR, whose end is found by parsing it) and AddToStoreNar's payload (exactly `narSize`
raw bytes) come out as `NarData` chunks closed by `NarEnd`, the export streams of ExportPaths and
ImportPaths as `ExportData` chunks closed by `ExportEnd`.

Versions: Nix 2.8 speaks 2.7 (`0x207`), current Nix 2.8 (`0x208`); both are spoken here. The server
refuses builds through the protocol's own failure replies (xstore builds nothing), so a client shows the
reason instead of a dropped connection.

Nix: serve-protocol.hh; nix-store.cc `opServe` (server); legacy-ssh-store.cc (client);
serve-protocol-connection.cc and serve-protocol.cc in current Nix (version negotiation, path infos).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable

from xstore.errors import CallerError, HashMismatchError, ProtocolError
from xstore.protocols.common import (
    MAX_CA,
    MAX_DRV_ITEMS,
    MAX_DRV_STRING,
    MAX_HASH,
    MAX_PATH,
    MAX_PATHS,
    MAX_SIG,
    MAX_SIGS,
    ExportSpan,
    NarData,
    NarEnd,
    NarSpan,
    encode_path,
    encode_path_set,
    encode_string_set,
    nar_hash_from,
    path_from,
    read_nar_hash,
    read_optional_path,
    read_optional_text,
    read_path,
    read_path_set,
    read_strings,
    show_received,
    version_text,
)
from xstore.records import FrozenRecord, setfield
from xstore.storeapi import PathInfo
from xstore.storepath import StorePath
from xstore.wire import NEED_DATA, Signal, WireBuffer, encode_bytes, encode_strings, encode_u64

TYPE_CHECKING = False  # not `from typing import`: the serve and daemon routes run without loading typing
if TYPE_CHECKING:
    from typing import Final

SERVE_MAGIC_1: Final = 0x390C9DEB
SERVE_MAGIC_2: Final = 0x5452EECB
VERSION_NIX_2_8: Final = 0x207  # what Nix 2.8 speaks
PROTOCOL_VERSION: Final = 0x208  # current Nix
# The oldest server a client here talks to: 2.5 brought AddToStoreNar, 2.4 the NAR hash in path infos
# (current Nix refuses older servers too).
MIN_SERVER_VERSION: Final = 0x205

# BuildResult status values on the wire (Nix: build-result.hh, in the order of the old enum).
BUILD_MISC_FAILURE: Final = 9


class Command(enum.IntEnum):
    QUERY_VALID_PATHS = 1
    QUERY_PATH_INFOS = 2
    DUMP_STORE_PATH = 3
    IMPORT_PATHS = 4
    EXPORT_PATHS = 5
    BUILD_PATHS = 6
    QUERY_CLOSURE = 7
    BUILD_DERIVATION = 8
    ADD_TO_STORE_NAR = 9


def _major(version: int) -> int:
    return version & 0xFF00


def _minor(version: int) -> int:
    return version & 0xFF


# -- events both ends share ---------------------------------------------------------------------------


class ExportData(FrozenRecord):
    """Bytes of an export stream, in order (ExportPaths' reply; ImportPaths' payload)."""

    __slots__ = ("data",)
    data: bytes

    def __init__(self, data: bytes) -> None:
        setfield(self, "data", data)


class ExportEnd(FrozenRecord):
    __slots__ = ("size",)
    size: int

    def __init__(self, size: int) -> None:
        setfield(self, "size", size)


# -- client side --------------------------------------------------------------------------------------


class ServerHello(FrozenRecord):
    """The server's greeting: its version, and the version both now speak."""

    __slots__ = ("server_version", "version")
    server_version: int
    version: int

    def __init__(self, server_version: int, version: int) -> None:
        setfield(self, "server_version", server_version)
        setfield(self, "version", version)


class ValidPaths(FrozenRecord):
    """Reply to QueryValidPaths, or to QueryClosure."""

    __slots__ = ("paths",)
    paths: frozenset[StorePath]

    def __init__(self, paths: frozenset[StorePath]) -> None:
        setfield(self, "paths", paths)


class PathInfos(FrozenRecord):
    """Reply to QueryPathInfos: the infos of the paths the server has (others are left out)."""

    __slots__ = ("infos",)
    infos: tuple[PathInfo, ...]

    def __init__(self, infos: tuple[PathInfo, ...]) -> None:
        setfield(self, "infos", infos)


class Added(FrozenRecord):
    """Reply to AddToStoreNar or ImportPaths: the server added the paths."""

    __slots__ = ()


ClientEvent = ServerHello | ValidPaths | PathInfos | NarData | NarEnd | ExportData | ExportEnd | Added


class _Reply(enum.Enum):
    HELLO = enum.auto()
    VALID_PATHS = enum.auto()
    PATH_INFOS = enum.auto()
    NAR = enum.auto()
    EXPORT = enum.auto()
    ADDED = enum.auto()


class ServeClient:
    """The client end: make requests with the methods, read replies as events.

    Replies come in the order of the requests; the object remembers what it asked. Call `hello()`
    first; requests may be made once `ServerHello` has been received (their format depends on the
    version). `peer` names the server in messages. Raises `ProtocolError` for a reply that breaks the
    protocol (a wrong magic, an unsupported version, a malformed message, the stream ending in the
    middle of a reply), `HashMismatchError` when an AddToStoreNar payload is not `narSize` bytes; after
    either the connection cannot be used.
    """

    def __init__(self, *, version: int = PROTOCOL_VERSION, peer: str = "the server") -> None:
        self.local_version = version
        self.peer = peer
        self.version = 0  # agreed on at the server's greeting
        self.server_version = 0
        self._buf = WireBuffer(error=ProtocolError, where="stream from the server")
        self._pending: deque[_Reply] = deque()
        self._span: NarSpan | ExportSpan | None = None
        self._upload_left: int | None = None  # bytes of an AddToStoreNar payload still to send
        self._upload_path: StorePath | None = None
        self._infos: list[PathInfo] = []  # of a path infos reply, read so far

    # -- input -------------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes from the server; `b""` when its stream has ended."""
        self._buf.feed(data)

    @property
    def idle(self) -> bool:
        """No reply is outstanding."""
        return not self._pending

    @property
    def waiting_for(self) -> str:
        """What the next reply is, for messages about waiting."""
        if not self._pending:
            return "nothing"
        return {
            _Reply.HELLO: "its greeting",
            _Reply.VALID_PATHS: "a list of paths",
            _Reply.PATH_INFOS: "path infos",
            _Reply.NAR: "a NAR",
            _Reply.EXPORT: "an export stream",
            _Reply.ADDED: "confirmation that it added the path",
        }[self._pending[0]]

    def next_event(self) -> ClientEvent | Signal:
        if not self._pending:
            if self._buf.buffered:
                raise self._buf.fail(f"{self.peer} sent data nobody asked for")
            return NEED_DATA
        reply = self._pending[0]
        buf = self._buf
        if reply is _Reply.NAR or reply is _Reply.EXPORT:
            return self._span_event(reply)
        if reply is _Reply.HELLO:
            event: ClientEvent | Signal = self._hello()
        elif reply is _Reply.VALID_PATHS:
            paths = buf.attempt(lambda: read_path_set(buf), "a list of store paths")
            event = paths if isinstance(paths, Signal) else ValidPaths(paths)
        elif reply is _Reply.PATH_INFOS:
            event = self._path_infos()
        else:
            event = self._added()
        if event is not NEED_DATA:
            self._pending.popleft()
        return event

    def _hello(self) -> ServerHello | Signal:
        buf = self._buf
        if buf.buffered >= 8 and buf.peek_buffered()[:8] != encode_u64(SERVE_MAGIC_2):
            got = buf.peek_buffered()
            raise ProtocolError(
                f"'nix-store --serve' protocol mismatch from {self.peer}, got '{show_received(got)}'",
                offset=0,
            )
        if buf.eof and buf.buffered < 8:
            early = buf.peek_buffered()
            shown = f", got '{show_received(early)}'" if early else " (it closed the connection)"
            raise ProtocolError(f"'nix-store --serve' protocol mismatch from {self.peer}{shown}", offset=0)

        def read() -> int:
            buf.u64()
            return buf.u64()

        version = buf.attempt(read, "the server's greeting")
        if isinstance(version, Signal):
            return version
        if _major(version) != 0x200 or version < MIN_SERVER_VERSION:
            raise ProtocolError(
                f"unsupported 'nix-store --serve' protocol version {version_text(version)} on {self.peer} "
                f"(xstore speaks {version_text(MIN_SERVER_VERSION)} to {version_text(PROTOCOL_VERSION)})",
                offset=8,
            )
        self.server_version = version
        self.version = min(version, self.local_version)
        return ServerHello(version, self.version)

    def _path_infos(self) -> PathInfos | Signal:
        """The infos one at a time, each kept once read: a reply of thousands arriving in pieces is read
        once, not again from its start with every piece."""
        buf, infos = self._buf, self._infos
        while True:
            at = buf.offset
            got = buf.attempt(self._path_info, "path infos")
            if got is NEED_DATA:
                return NEED_DATA
            if got is None:
                self._infos = []
                return PathInfos(tuple(infos))
            if len(infos) >= MAX_PATHS:
                raise buf.fail(f"{self.peer} sent more than {MAX_PATHS} path infos", at)
            assert isinstance(got, PathInfo)
            infos.append(got)

    def _path_info(self) -> PathInfo | None:
        """One info of a path infos reply, or None at its end."""
        buf = self._buf
        at = buf.offset
        raw = buf.string(MAX_PATH, "store path")
        if not raw:
            return None
        path = path_from(buf, raw, at)
        deriver = read_optional_path(buf, "deriver")
        refs = read_path_set(buf, "references")
        buf.u64()  # download size (= NAR size)
        nar_size = buf.u64()
        at = buf.offset
        raw = buf.string(MAX_HASH, "NAR hash")
        if not raw:
            raise buf.fail(f"{self.peer} sent no NAR hash for '{path}'", at)
        nar_hash = nar_hash_from(buf, raw, at)
        ca = read_optional_text(buf, MAX_CA, "content address")
        sigs = read_strings(buf, MAX_SIGS, MAX_SIG, "signatures")
        refs_sorted, sigs_sorted = tuple(sorted(refs)), tuple(sorted(sigs))
        return PathInfo(path, nar_hash, nar_size, refs_sorted, deriver, sigs=sigs_sorted, ca=ca)

    def _added(self) -> Added | Signal:
        buf = self._buf
        at = buf.offset
        got = buf.attempt(buf.u64, "the server's confirmation")
        if got is NEED_DATA:
            return NEED_DATA
        if got != 1:
            raise buf.fail(f"{self.peer} failed to add the path (it answered {got}, not 1)", at)
        return Added()

    def _span_event(self, reply: _Reply) -> ClientEvent | Signal:
        buf = self._buf
        span = self._span
        if span is None:
            span = self._span = NarSpan() if reply is _Reply.NAR else ExportSpan()
        if span.done:
            self._span = None
            self._pending.popleft()
            return NarEnd(span.size) if reply is _Reply.NAR else ExportEnd(span.size)
        if not buf.buffered:
            if not buf.eof:
                return NEED_DATA
            what = "a NAR" if reply is _Reply.NAR else "an export stream"
            raise ProtocolError(
                f"{self.peer} closed the connection in the middle of {what} (after {span.size} bytes)",
                offset=buf.offset,
            )
        part, rest = span.feed(buf.take_buffered())
        if rest:
            buf.push_back(rest)
        if not part:
            return self._span_event(reply)
        return NarData(part) if reply is _Reply.NAR else ExportData(part)

    # -- requests ----------------------------------------------------------------------------------

    def hello(self) -> bytes:
        """The greeting; the server's `ServerHello` answers it."""
        self._pending.append(_Reply.HELLO)
        return encode_u64(SERVE_MAGIC_1) + encode_u64(self.local_version)

    def _command(self, reply: _Reply | None) -> None:
        if not self.version:
            raise CallerError("no request before the server's greeting has been received")
        if self._upload_left is not None:
            raise CallerError("an AddToStoreNar payload is still being sent")
        if reply is not None:
            self._pending.append(reply)

    def query_valid_paths(
        self, paths: Iterable[StorePath], *, lock: bool = False, substitute: bool = False
    ) -> bytes:
        """Which of `paths` the server has (`ValidPaths`). With `lock` (and a server started with
        `--write`), the server keeps every one of them from garbage collection until the connection
        ends, valid yet or not."""
        self._command(_Reply.VALID_PATHS)
        return (
            encode_u64(Command.QUERY_VALID_PATHS)
            + encode_u64(lock)
            + encode_u64(substitute)
            + encode_path_set(paths)
        )

    def query_path_infos(self, paths: Iterable[StorePath]) -> bytes:
        """The infos of those of `paths` the server has (`PathInfos`)."""
        self._command(_Reply.PATH_INFOS)
        return encode_u64(Command.QUERY_PATH_INFOS) + encode_path_set(paths)

    def query_closure(self, paths: Iterable[StorePath], *, include_outputs: bool = False) -> bytes:
        """The closure of `paths` on the server (`ValidPaths`)."""
        self._command(_Reply.VALID_PATHS)
        return encode_u64(Command.QUERY_CLOSURE) + encode_u64(include_outputs) + encode_path_set(paths)

    def dump_store_path(self, path: StorePath) -> bytes:
        """The NAR of `path` (`NarData`..., `NarEnd`). A server without the path exits."""
        self._command(_Reply.NAR)
        return encode_u64(Command.DUMP_STORE_PATH) + encode_path(path)

    def export_paths(self, paths: Iterable[StorePath]) -> bytes:
        """The export stream of `paths` (`ExportData`..., `ExportEnd`)."""
        self._command(_Reply.EXPORT)
        return encode_u64(Command.EXPORT_PATHS) + encode_u64(0) + encode_path_set(paths)

    def import_paths(self) -> bytes:
        """Start ImportPaths: send an export stream after these bytes; `Added` answers it."""
        self._command(_Reply.ADDED)
        return encode_u64(Command.IMPORT_PATHS)

    def add_to_store_nar(self, info: PathInfo) -> bytes:
        """Start AddToStoreNar for `info`: then send the NAR through `nar_data()` and `nar_end()`
        (exactly `info.nar_size` bytes); `Added` answers it."""
        if info.nar_size <= 0:
            raise CallerError(f"the NAR size of '{info.path}' is unknown; the serve protocol needs it")
        self._command(_Reply.ADDED)
        self._upload_left = info.nar_size
        self._upload_path = info.path
        return b"".join(
            (
                encode_u64(Command.ADD_TO_STORE_NAR),
                encode_path(info.path),
                encode_path(info.deriver),
                encode_bytes(info.nar_hash.hex().encode()),
                encode_path_set(info.references),
                encode_u64(info.registration_time),
                encode_u64(info.nar_size),
                encode_u64(info.ultimate),
                encode_string_set(info.sigs),
                encode_bytes((info.ca or "").encode()),
            )
        )

    def nar_data(self, data: bytes) -> bytes:
        """A chunk of the AddToStoreNar payload. Raises `HashMismatchError` (the connection is then
        unusable) if the NAR grows beyond the size announced."""
        left = self._upload_left
        if left is None:
            raise CallerError("nar_data() outside an AddToStoreNar request")
        if len(data) > left:
            self._upload_left = -1
            raise HashMismatchError(
                f"the NAR of '{self._upload_path}' is longer than the size announced",
                path=str(self._upload_path),
            )
        self._upload_left = left - len(data)
        return data

    def nar_end(self) -> bytes:
        """The payload is complete. Raises `HashMismatchError` if it was shorter than announced."""
        left = self._upload_left
        if left is None:
            raise CallerError("nar_end() outside an AddToStoreNar request")
        if left:
            raise HashMismatchError(
                f"the NAR of '{self._upload_path}' ended {left} bytes short of the size announced",
                path=str(self._upload_path),
            )
        self._upload_left = None
        return b""


# -- server side --------------------------------------------------------------------------------------


class ClientMagic(FrozenRecord):
    """The client's magic arrived: send `hello()` now (a client may wait for it before its version)."""

    __slots__ = ()


class ClientVersion(FrozenRecord):
    """The client's version, and the version both now speak."""

    __slots__ = ("client_version", "version")
    client_version: int
    version: int

    def __init__(self, client_version: int, version: int) -> None:
        setfield(self, "client_version", client_version)
        setfield(self, "version", version)


class QueryValidPaths(FrozenRecord):
    __slots__ = ("paths", "lock", "substitute")  # noqa: RUF023 (the fields' order)
    paths: frozenset[StorePath]
    lock: bool
    substitute: bool

    def __init__(self, paths: frozenset[StorePath], lock: bool, substitute: bool) -> None:
        setfield(self, "paths", paths)
        setfield(self, "lock", lock)
        setfield(self, "substitute", substitute)


class QueryPathInfos(FrozenRecord):
    __slots__ = ("paths",)
    paths: frozenset[StorePath]

    def __init__(self, paths: frozenset[StorePath]) -> None:
        setfield(self, "paths", paths)


class DumpStorePath(FrozenRecord):
    __slots__ = ("path",)
    path: StorePath

    def __init__(self, path: StorePath) -> None:
        setfield(self, "path", path)


class ImportPaths(FrozenRecord):
    """An export stream follows as `ExportData`..., `ExportEnd`; answer with `added()`."""

    __slots__ = ()


class ExportPaths(FrozenRecord):
    __slots__ = ("paths",)
    paths: frozenset[StorePath]

    def __init__(self, paths: frozenset[StorePath]) -> None:
        setfield(self, "paths", paths)


class QueryClosure(FrozenRecord):
    __slots__ = ("paths", "include_outputs")  # noqa: RUF023 (the fields' order)
    paths: frozenset[StorePath]
    include_outputs: bool

    def __init__(self, paths: frozenset[StorePath], include_outputs: bool) -> None:
        setfield(self, "paths", paths)
        setfield(self, "include_outputs", include_outputs)


class BuildPaths(FrozenRecord):
    """A build request (`path` or `drv!out1,out2` each); answer with `build_paths_refused()` or
    `build_paths_done()`."""

    __slots__ = ("paths",)
    paths: tuple[str, ...]

    def __init__(self, paths: tuple[str, ...]) -> None:
        setfield(self, "paths", paths)


class BuildDerivation(FrozenRecord):
    """A build of a derivation sent whole; answer with `build_derivation_refused()`."""

    __slots__ = ("drv_path",)
    drv_path: StorePath

    def __init__(self, drv_path: StorePath) -> None:
        setfield(self, "drv_path", drv_path)


class AddToStoreNar(FrozenRecord):
    """A path follows as `NarData`... (exactly `info.nar_size` bytes), `NarEnd`; answer with
    `added()`."""

    __slots__ = ("info",)
    info: PathInfo

    def __init__(self, info: PathInfo) -> None:
        setfield(self, "info", info)


class ClientClosed(FrozenRecord):
    """The client's stream ended between requests: the session is over."""

    __slots__ = ()


ServerEvent = (
    ClientMagic
    | ClientVersion
    | QueryValidPaths
    | QueryPathInfos
    | DumpStorePath
    | ImportPaths
    | ExportPaths
    | QueryClosure
    | BuildPaths
    | BuildDerivation
    | AddToStoreNar
    | NarData
    | NarEnd
    | ExportData
    | ExportEnd
    | ClientClosed
)


class _ServerState(enum.Enum):
    MAGIC = enum.auto()
    VERSION = enum.auto()
    COMMAND = enum.auto()
    NAR = enum.auto()  # an AddToStoreNar payload
    EXPORT = enum.auto()  # an ImportPaths stream
    CLOSED = enum.auto()


class ServeServer:
    """The server end: requests in as events, replies out from the methods.

    Raises `ProtocolError` for a request that breaks the protocol: a wrong magic ("protocol mismatch",
    as Nix says), an unknown command, a malformed message, the stream ending inside a request. Nothing
    here decides what is allowed (`--write`); the driver does.
    """

    def __init__(self, *, version: int = PROTOCOL_VERSION, peer: str = "the client") -> None:
        self.local_version = version
        self.peer = peer
        self.version = 0
        self.client_version = 0
        self._buf = WireBuffer(error=ProtocolError, where="stream from the client")
        self._state = _ServerState.MAGIC
        self._nar_left = 0
        self._nar_size = 0
        self._export: ExportSpan | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes from the client; `b""` when its stream has ended."""
        self._buf.feed(data)

    @property
    def between_requests(self) -> bool:
        """Nothing of a next request has arrived (waiting here is the client's choice, not a stall)."""
        return self._state is _ServerState.COMMAND and not self._buf.buffered

    def next_event(self) -> ServerEvent | Signal:
        state = self._state
        buf = self._buf
        if state is _ServerState.COMMAND:
            return self._command()
        if state is _ServerState.NAR:
            return self._nar()
        if state is _ServerState.EXPORT:
            return self._import()
        if state is _ServerState.MAGIC:
            at = buf.offset
            magic = buf.attempt(buf.u64, "the client's greeting")
            if magic is NEED_DATA:
                return NEED_DATA
            if magic != SERVE_MAGIC_1:
                raise ProtocolError("protocol mismatch", offset=at)
            self._state = _ServerState.VERSION
            return ClientMagic()
        if state is _ServerState.VERSION:
            got = buf.attempt(buf.u64, "the client's version")
            if got is NEED_DATA:
                return NEED_DATA
            assert isinstance(got, int)
            if _major(got) != 0x200:
                raise ProtocolError(
                    f"unsupported 'nix-store --serve' protocol version {version_text(got)} from {self.peer}",
                    offset=8,
                )
            self.client_version = got
            self.version = min(got, self.local_version)
            self._state = _ServerState.COMMAND
            return ClientVersion(got, self.version)
        return ClientClosed()

    def _command(self) -> ServerEvent | Signal:
        buf = self._buf
        if buf.eof and not buf.buffered:
            self._state = _ServerState.CLOSED
            return ClientClosed()
        at = buf.offset

        def read() -> ServerEvent:
            cmd = buf.u64()
            if cmd == Command.QUERY_VALID_PATHS:
                lock = bool(buf.u64())
                substitute = bool(buf.u64())
                return QueryValidPaths(read_path_set(buf), lock, substitute)
            if cmd == Command.QUERY_PATH_INFOS:
                return QueryPathInfos(read_path_set(buf))
            if cmd == Command.DUMP_STORE_PATH:
                return DumpStorePath(read_path(buf))
            if cmd == Command.IMPORT_PATHS:
                return ImportPaths()
            if cmd == Command.EXPORT_PATHS:
                buf.u64()  # obsolete: sign
                return ExportPaths(read_path_set(buf))
            if cmd == Command.BUILD_PATHS:
                paths = read_strings(buf, MAX_PATHS, MAX_PATH * 4, "paths to build")
                self._build_options()
                return BuildPaths(tuple(paths))
            if cmd == Command.QUERY_CLOSURE:
                include_outputs = bool(buf.u64())
                return QueryClosure(read_path_set(buf), include_outputs)
            if cmd == Command.BUILD_DERIVATION:
                drv_path = read_path(buf, "derivation")
                self._basic_derivation()
                self._build_options()
                return BuildDerivation(drv_path)
            if cmd == Command.ADD_TO_STORE_NAR:
                return AddToStoreNar(self._add_to_store_nar())
            raise buf.fail(f"unknown serve command {cmd}", at)

        event = buf.attempt(read, "a request")
        if event is NEED_DATA:
            return NEED_DATA
        assert not isinstance(event, Signal)
        if isinstance(event, AddToStoreNar):
            self._state = _ServerState.NAR
            self._nar_left = self._nar_size = event.info.nar_size
        elif isinstance(event, ImportPaths):
            self._state = _ServerState.EXPORT
            self._export = ExportSpan()
        return event

    def _add_to_store_nar(self) -> PathInfo:
        buf = self._buf
        path = read_path(buf)
        deriver = read_optional_path(buf, "deriver")
        nar_hash = read_nar_hash(buf)
        refs = read_path_set(buf, "references")
        registration_time = buf.u64()
        size_at = buf.offset
        nar_size = buf.u64()
        ultimate = bool(buf.u64())
        sigs = read_strings(buf, MAX_SIGS, MAX_SIG, "signatures")
        ca = read_optional_text(buf, MAX_CA, "content address")
        if nar_size == 0:
            raise buf.fail("narInfo is too old and missing the narSize field", size_at)
        return PathInfo(
            path,
            nar_hash,
            nar_size,
            tuple(sorted(refs)),
            deriver,
            registration_time,
            ultimate,
            tuple(sorted(set(sigs))),
            ca,
        )

    def _build_options(self) -> None:
        # Read and ignored: nothing is built here (Nix: nix-store.cc `getBuildSettings`).
        buf = self._buf
        buf.u64()  # maxSilentTime
        buf.u64()  # buildTimeout
        if _minor(self.version) >= 2:
            buf.u64()  # maxLogSize
        if _minor(self.version) >= 3:
            buf.u64()  # buildRepeat
            buf.u64()  # enforceDeterminism
        if _minor(self.version) >= 7:
            buf.u64()  # keepFailed

    def _basic_derivation(self) -> None:
        # Nix: derivations.cc `readDerivation` (outputs, inputSrcs, platform, builder, args, env).
        buf = self._buf
        outputs = buf.bounded(MAX_DRV_ITEMS, "the number of outputs")
        buf.items(4 * outputs, MAX_PATH, "output")  # name, path, hash algorithm, hash; four per output
        read_path_set(buf, "input sources")
        buf.string(MAX_PATH, "platform")
        buf.string(MAX_DRV_STRING, "builder")
        buf.strings(MAX_DRV_ITEMS, MAX_DRV_STRING, "arguments")
        env = buf.bounded(MAX_DRV_ITEMS, "the number of environment variables")
        buf.items(2 * env, MAX_DRV_STRING, "environment variable")  # name, value, name, value, ...

    def _nar(self) -> ServerEvent | Signal:
        buf = self._buf
        if not self._nar_left:
            self._state = _ServerState.COMMAND
            return NarEnd(self._nar_size)
        if not buf.buffered:
            if buf.eof:
                raise buf.fail(
                    f"unexpected end of file in a NAR ({self._nar_size - self._nar_left} of "
                    f"{self._nar_size} bytes received)"
                )
            return NEED_DATA
        data = buf.take_buffered(self._nar_left)
        self._nar_left -= len(data)
        return NarData(data)

    def _import(self) -> ServerEvent | Signal:
        buf = self._buf
        span = self._export
        assert span is not None
        if span.done:
            self._export = None
            self._state = _ServerState.COMMAND
            return ExportEnd(span.size)
        if not buf.buffered:
            if not buf.eof:
                return NEED_DATA
            span.feed(b"")
            raise AssertionError("unreachable: a span fed the end of input must fail")
        part, rest = span.feed(buf.take_buffered())
        if rest:
            buf.push_back(rest)
        if not part:
            return self._import()
        return ExportData(part)

    # -- replies -----------------------------------------------------------------------------------

    def hello(self) -> bytes:
        """The server's greeting, sent once the client's magic has arrived."""
        return encode_u64(SERVE_MAGIC_2) + encode_u64(self.local_version)

    def valid_paths(self, paths: Iterable[StorePath]) -> bytes:
        """Reply to QueryValidPaths or QueryClosure."""
        return encode_path_set(paths)

    def path_infos(self, infos: Iterable[PathInfo]) -> bytes:
        """Reply to QueryPathInfos: the infos of the valid paths asked about, in path order."""
        parts = []
        for info in sorted(infos, key=lambda i: i.path):
            parts.append(encode_path(info.path))
            parts.append(encode_path(info.deriver))
            parts.append(encode_path_set(info.references))
            parts.append(encode_u64(info.nar_size))  # download size: the NAR, uncompressed
            parts.append(encode_u64(info.nar_size))
            if _minor(self.version) >= 4:
                parts.append(encode_strings(info.nar_hash_nix32().encode(), (info.ca or "").encode()))
                parts.append(encode_string_set(info.sigs))
        parts.append(encode_bytes(b""))
        return b"".join(parts)

    def added(self) -> bytes:
        """Reply to AddToStoreNar or ImportPaths: success."""
        return encode_u64(1)

    def build_paths_refused(self, message: str) -> bytes:
        """Reply to BuildPaths: a failed build with `message`, which the client shows."""
        return encode_u64(BUILD_MISC_FAILURE) + encode_bytes(message.encode())

    def build_derivation_refused(self, message: str) -> bytes:
        """Reply to BuildDerivation: a failed build result with `message` (the client's version
        decides the fields)."""
        parts = [encode_u64(BUILD_MISC_FAILURE), encode_bytes(message.encode())]
        if _minor(self.version) >= 3:
            parts.append(encode_u64(0) * 4)  # timesBuilt, isNonDeterministic, startTime, stopTime
        if _minor(self.version) >= 6:
            parts.append(encode_u64(0))  # no built outputs (an empty map in both of its forms)
        return b"".join(parts)

"""The Nix daemon's worker protocol (`unix://`, `daemon`, `ssh-ng://`), sans-IO.

The client writes `WORKER_MAGIC_1` and its version; the daemon answers `WORKER_MAGIC_2` and its version,
and both use the lower one. From 1.38 each side then sends the set of features it knows (the result is
their intersection). The client sends two obsolete numbers (CPU affinity, reserve space); the daemon
sends its Nix version (from 1.33) and whether it trusts the client (from 1.35), then the first stream
of log messages, closed by `STDERR_LAST`.

Every operation is then the same dance: the client sends the op number and its fields (and for
AddToStoreNar and AddMultipleToStore a framed stream: frames of any size, then an empty one); the daemon
sends log messages (`STDERR_NEXT` lines, activities starting and stopping, their results) and ends
with `STDERR_LAST` followed by the op's reply, or with `STDERR_ERROR` and a message, after which the
connection stays usable. NarFromPath's reply is an unframed NAR after `STDERR_LAST`, whose end is found
by parsing it. Path infos carry the NAR hash in base16 without a prefix.

`WorkerClient` makes requests and turns the daemon's bytes into events; `WorkerServer` reads requests and
makes replies (the daemon's side, as far as the ops here go: it serves the tests as a daemon that can
be made to misbehave). Versions 1.34 (Nix 2.8) to 1.38 (current Nix) are spoken.

Nix: worker-protocol.hh, daemon.cc (`processConnection`, `performOp`), remote-store.cc (`initConnection`,
`processStderr`); current Nix: worker-protocol-connection.cc (negotiation, features), worker-protocol.cc
(`ValidPathInfo`, `BuildResult`), serialise.cc (`readError`).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable

from xstore.errors import CallerError, ProtocolError
from xstore.protocols.common import (
    MAX_CA,
    MAX_MESSAGE,
    MAX_PATH,
    MAX_PATHS,
    MAX_SETTINGS,
    MAX_SIG,
    MAX_SIGS,
    NarData,
    NarEnd,
    NarSpan,
    encode_path,
    encode_path_set,
    encode_string_set,
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
from xstore.wire import NEED_DATA, FrameDecoder, Signal, WireBuffer, encode_bytes, encode_frame, encode_u64

TYPE_CHECKING = False  # not `from typing import`: the daemon routes run without loading typing
if TYPE_CHECKING:
    from typing import Final

WORKER_MAGIC_1: Final = 0x6E697863
WORKER_MAGIC_2: Final = 0x6478696F
VERSION_NIX_2_8: Final = 0x122  # 1.34
PROTOCOL_VERSION: Final = 0x126  # 1.38, current Nix
MIN_VERSION: Final = 0x122

STDERR_NEXT: Final = 0x6F6C6D67
STDERR_READ: Final = 0x64617461
STDERR_WRITE: Final = 0x64617416
STDERR_LAST: Final = 0x616C7473
STDERR_ERROR: Final = 0x63787470
STDERR_START_ACTIVITY: Final = 0x53545254
STDERR_STOP_ACTIVITY: Final = 0x53544F50
STDERR_RESULT: Final = 0x52534C54

# Verbosity levels (Nix: logging.hh).
LVL_ERROR: Final = 0
LVL_INFO: Final = 3

MAX_FIELDS: Final = 1 << 10
MAX_TRACES: Final = 1 << 10
MAX_FEATURES: Final = 1 << 8
MAX_RESULTS: Final = MAX_PATHS


class Op(enum.IntEnum):
    IS_VALID_PATH = 1
    ADD_TEMP_ROOT = 11
    SET_OPTIONS = 19
    QUERY_PATH_INFO = 26
    QUERY_PATH_FROM_HASH_PART = 29
    QUERY_VALID_PATHS = 31
    NAR_FROM_PATH = 38
    ADD_TO_STORE_NAR = 39
    ADD_MULTIPLE_TO_STORE = 44
    BUILD_PATHS_WITH_RESULTS = 46


def _minor(version: int) -> int:
    return version & 0xFF


# -- encodings both ends share ------------------------------------------------------------------------


def encode_path_info(info: PathInfo, version: int) -> bytes:
    """A path info without its path, as the daemon sends it (base16 NAR hash, no prefix)."""
    parts = [
        encode_path(info.deriver),
        encode_bytes(info.nar_hash.hex().encode()),
        encode_path_set(info.references),
        encode_u64(info.registration_time),
        encode_u64(info.nar_size),
    ]
    if _minor(version) >= 16:
        parts += [
            encode_u64(info.ultimate),
            encode_string_set(info.sigs),
            encode_bytes((info.ca or "").encode()),
        ]
    return b"".join(parts)


def read_path_info(buf: WireBuffer, path: StorePath, version: int) -> PathInfo:
    deriver = read_optional_path(buf, "deriver")
    nar_hash = read_nar_hash(buf)
    refs = read_path_set(buf, "references")
    registration_time = buf.u64()
    nar_size = buf.u64()
    ultimate = False
    sigs: list[str] = []
    ca = None
    if _minor(version) >= 16:
        ultimate = bool(buf.u64())
        sigs = read_strings(buf, MAX_SIGS, MAX_SIG, "signatures")
        ca = read_optional_text(buf, MAX_CA, "content address")
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


def _read_fields(buf: WireBuffer) -> tuple[int | str, ...]:
    count = buf.bounded(MAX_FIELDS, "the number of fields")
    fields: list[int | str] = []
    for _ in range(count):
        at = buf.offset
        kind = buf.u64()
        if kind == 0:
            fields.append(buf.u64())
        elif kind == 1:
            fields.append(buf.string(MAX_MESSAGE, "field").decode("utf-8", "replace"))
        else:
            raise buf.fail(f"unsupported field type {kind}", at)
    return tuple(fields)


def _encode_fields(fields: Iterable[int | str]) -> bytes:
    items = list(fields)
    parts = [encode_u64(len(items))]
    parts.extend(
        encode_u64(0) + encode_u64(f) if isinstance(f, int) else encode_u64(1) + encode_bytes(f.encode())
        for f in items
    )
    return b"".join(parts)


# -- client side --------------------------------------------------------------------------------------


class DaemonHello(FrozenRecord):
    """The daemon's magic and version, and the version both now speak: send `handshake()`."""

    __slots__ = ("daemon_version", "version")
    daemon_version: int
    version: int

    def __init__(self, daemon_version: int, version: int) -> None:
        setfield(self, "daemon_version", daemon_version)
        setfield(self, "version", version)


class Handshake(FrozenRecord):
    """The handshake is complete. `trusted` (1.35+): True, False, or None when unknown."""

    __slots__ = ("nix_version", "trusted", "features")  # noqa: RUF023 (the fields' order)
    nix_version: str | None
    trusted: bool | None
    features: frozenset[str]

    def __init__(self, nix_version: str | None, trusted: bool | None, features: frozenset[str]) -> None:
        setfield(self, "nix_version", nix_version)
        setfield(self, "trusted", trusted)
        setfield(self, "features", features)


class LogLine(FrozenRecord):
    """A line the daemon logged (`STDERR_NEXT`), without its newline."""

    __slots__ = ("text",)
    text: str

    def __init__(self, text: str) -> None:
        setfield(self, "text", text)


class ActivityStart(FrozenRecord):
    __slots__ = ("id", "level", "type", "text", "fields", "parent")  # noqa: RUF023 (the fields' order)
    id: int
    level: int
    type: int
    text: str
    fields: tuple[int | str, ...]
    parent: int

    def __init__(
        self, id: int, level: int, type: int, text: str, fields: tuple[int | str, ...], parent: int
    ) -> None:
        setfield(self, "id", id)
        setfield(self, "level", level)
        setfield(self, "type", type)
        setfield(self, "text", text)
        setfield(self, "fields", fields)
        setfield(self, "parent", parent)


class ActivityStop(FrozenRecord):
    __slots__ = ("id",)
    id: int

    def __init__(self, id: int) -> None:
        setfield(self, "id", id)


class ActivityResult(FrozenRecord):
    __slots__ = ("id", "type", "fields")  # noqa: RUF023 (the fields' order)
    id: int
    type: int
    fields: tuple[int | str, ...]

    def __init__(self, id: int, type: int, fields: tuple[int | str, ...]) -> None:
        setfield(self, "id", id)
        setfield(self, "type", type)
        setfield(self, "fields", fields)


class OpFailed(FrozenRecord):
    """The daemon reported an error (`STDERR_ERROR`): the operation is over, the connection usable."""

    __slots__ = ("message", "level", "traces")  # noqa: RUF023 (the fields' order)
    message: str
    level: int
    traces: tuple[str, ...]

    def __init__(self, message: str, level: int = LVL_ERROR, traces: tuple[str, ...] = ()) -> None:
        setfield(self, "message", message)
        setfield(self, "level", level)
        setfield(self, "traces", traces)


class Valid(FrozenRecord):
    """Reply to IsValidPath."""

    __slots__ = ("valid",)
    valid: bool

    def __init__(self, valid: bool) -> None:
        setfield(self, "valid", valid)


class ValidPaths(FrozenRecord):
    """Reply to QueryValidPaths."""

    __slots__ = ("paths",)
    paths: frozenset[StorePath]

    def __init__(self, paths: frozenset[StorePath]) -> None:
        setfield(self, "paths", paths)


class PathInfoReply(FrozenRecord):
    """Reply to QueryPathInfo: the info, or None when the daemon does not have the path."""

    __slots__ = ("path", "info")  # noqa: RUF023 (the fields' order)
    path: StorePath
    info: PathInfo | None

    def __init__(self, path: StorePath, info: PathInfo | None) -> None:
        setfield(self, "path", path)
        setfield(self, "info", info)


class PathFromHashPart(FrozenRecord):
    __slots__ = ("path",)
    path: StorePath | None

    def __init__(self, path: StorePath | None) -> None:
        setfield(self, "path", path)


class Done(FrozenRecord):
    """An operation without a reply of its own finished (SetOptions, AddTempRoot, AddToStoreNar,
    AddMultipleToStore)."""

    __slots__ = ("op",)
    op: Op

    def __init__(self, op: Op) -> None:
        setfield(self, "op", op)


class BuildResult(FrozenRecord):
    """One result of BuildPathsWithResults (status 0-2 and 13 are successes)."""

    __slots__ = ("path", "status", "message", "times", "built_outputs")  # noqa: RUF023 (the fields' order)
    path: str
    status: int
    message: str
    times: tuple[int, ...]  # timesBuilt, isNonDeterministic, startTime, stopTime (1.29+)
    built_outputs: tuple[tuple[str, str], ...]

    def __init__(
        self,
        path: str,
        status: int,
        message: str,
        times: tuple[int, ...] = (),
        built_outputs: tuple[tuple[str, str], ...] = (),
    ) -> None:
        setfield(self, "path", path)
        setfield(self, "status", status)
        setfield(self, "message", message)
        setfield(self, "times", times)
        setfield(self, "built_outputs", built_outputs)


class BuildResults(FrozenRecord):
    __slots__ = ("results",)
    results: tuple[BuildResult, ...]

    def __init__(self, results: tuple[BuildResult, ...]) -> None:
        setfield(self, "results", results)


LogEvent = LogLine | ActivityStart | ActivityStop | ActivityResult
ClientEvent = (
    DaemonHello
    | Handshake
    | LogEvent
    | OpFailed
    | Valid
    | ValidPaths
    | PathInfoReply
    | PathFromHashPart
    | Done
    | NarData
    | NarEnd
    | BuildResults
)


class _Reply(enum.Enum):
    HELLO = enum.auto()
    HANDSHAKE = enum.auto()
    OP = enum.auto()


class _Pending:
    """A request whose reply has not been read yet."""

    __slots__ = ("kind", "op", "path", "logs_done", "features", "nix_version", "trusted")  # noqa: RUF023

    def __init__(self, kind: _Reply, op: Op | None = None, path: StorePath | None = None) -> None:
        self.kind = kind
        self.op = op
        self.path = path
        self.logs_done = False  # STDERR_LAST seen: the reply proper follows
        self.features: frozenset[str] = frozenset()
        self.nix_version: str | None = None
        self.trusted: bool | None = None


class WorkerClient:
    """The client end. Call `hello()`, then `handshake()` at `DaemonHello`; after `Handshake`, make
    requests with the methods and read their events. Each operation yields any number of log events,
    then its reply event, or `OpFailed`. `peer` names the daemon in messages. Raises `ProtocolError`
    for bytes that break the protocol (a wrong magic, an unsupported version, an unknown message, the
    stream ending inside a message); the connection is then unusable."""

    def __init__(
        self, *, version: int = PROTOCOL_VERSION, features: Iterable[str] = (), peer: str = "the daemon"
    ) -> None:
        self.local_version = version
        self.local_features = frozenset(features)
        self.peer = peer
        self.version = 0
        self.daemon_version = 0
        self._buf = WireBuffer(error=ProtocolError, where="stream from the daemon")
        self._pending: deque[_Pending] = deque()
        self._nar: NarSpan | None = None
        self._framing = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf.feed(data)

    @property
    def idle(self) -> bool:
        return not self._pending

    @property
    def in_handshake(self) -> bool:
        return any(p.op is None for p in self._pending)

    # -- events --------------------------------------------------------------------------------------

    def next_event(self) -> ClientEvent | Signal:
        if not self._pending:
            if self._buf.buffered:
                raise self._buf.fail(f"{self.peer} sent data nobody asked for")
            return NEED_DATA
        head = self._pending[0]
        if head.kind is _Reply.HELLO:
            return self._hello()
        if head.kind is _Reply.HANDSHAKE:
            return self._handshake(head)
        if not head.logs_done:
            return self._stderr(head)
        return self._reply(head)

    def _hello(self) -> DaemonHello | Signal:
        buf = self._buf
        got = buf.peek_buffered()
        if (len(got) >= 8 and got[:8] != encode_u64(WORKER_MAGIC_2)) or (buf.eof and len(got) < 8):
            shown = f", got '{show_received(got)}'" if got else " (it closed the connection)"
            raise ProtocolError(f"Nix daemon protocol mismatch from {self.peer}{shown}", offset=0)

        def read() -> int:
            buf.u64()
            return buf.u64()

        version = buf.attempt(read, "the daemon's greeting")
        if isinstance(version, Signal):
            return version
        if version >> 8 != 1 or version < MIN_VERSION:
            raise ProtocolError(
                f"{self.peer} speaks Nix daemon protocol {version_text(version)}; xstore speaks "
                f"{version_text(MIN_VERSION)} (Nix 2.8) to {version_text(PROTOCOL_VERSION)}",
                offset=8,
            )
        self.daemon_version = version
        self.version = min(version, self.local_version)
        self._pending.popleft()
        return DaemonHello(version, self.version)

    def _handshake(self, head: _Pending) -> ClientEvent | Signal:
        buf = self._buf
        version = self.version

        def read() -> tuple[frozenset[str], str | None, bool | None]:
            features: frozenset[str] = frozenset()
            if _minor(version) >= 38:
                features = frozenset(read_strings(buf, MAX_FEATURES, MAX_MESSAGE, "features"))
            nix_version = None
            if _minor(version) >= 33:
                nix_version = buf.string(MAX_MESSAGE, "Nix version").decode("utf-8", "replace")
            trusted = None
            if _minor(version) >= 35:
                at = buf.offset
                flag = buf.u64()
                if flag > 2:
                    raise buf.fail(f"bad trust flag {flag}", at)
                trusted = {0: None, 1: True, 2: False}[flag]
            return features, nix_version, trusted

        got = buf.attempt(read, "the daemon's handshake")
        if isinstance(got, Signal):
            return got
        head.features = got[0] & self.local_features
        head.nix_version = got[1]
        head.trusted = got[2]
        head.kind = _Reply.OP  # the log stream closing the handshake is read as an op's (op None)
        return self._stderr(head)

    def _stderr(self, head: _Pending) -> ClientEvent | Signal:
        buf = self._buf
        at = buf.offset

        def read() -> ClientEvent | None:
            msg = buf.u64()
            if msg == STDERR_LAST:
                return None
            if msg == STDERR_NEXT:
                return LogLine(buf.string(MAX_MESSAGE, "log line").decode("utf-8", "replace").rstrip("\n"))
            if msg == STDERR_ERROR:  # the structured form (1.26 and later)
                error_type = buf.string(MAX_MESSAGE, "error type")
                if error_type != b"Error":
                    raise buf.fail(f"unexpected error type '{show_received(error_type)}'", at)
                level = buf.u64()
                buf.string(MAX_MESSAGE, "error name")
                message = buf.string(MAX_MESSAGE, "error message").decode("utf-8", "replace")
                if buf.u64() != 0:
                    raise buf.fail("error positions are not supported", at)
                traces = []
                for _ in range(buf.bounded(MAX_TRACES, "the number of traces")):
                    if buf.u64() != 0:
                        raise buf.fail("error positions are not supported", at)
                    traces.append(buf.string(MAX_MESSAGE, "trace").decode("utf-8", "replace"))
                return OpFailed(message, level, tuple(traces))
            if msg == STDERR_START_ACTIVITY:
                act, level, kind = buf.u64(), buf.u64(), buf.u64()
                text = buf.string(MAX_MESSAGE, "activity").decode("utf-8", "replace")
                return ActivityStart(act, level, kind, text, _read_fields(buf), buf.u64())
            if msg == STDERR_STOP_ACTIVITY:
                return ActivityStop(buf.u64())
            if msg == STDERR_RESULT:
                act, kind = buf.u64(), buf.u64()
                return ActivityResult(act, kind, _read_fields(buf))
            if msg in (STDERR_READ, STDERR_WRITE):
                raise buf.fail(
                    f"{self.peer} asked for a data exchange (0x{msg:x}) that no operation here uses", at
                )
            raise buf.fail(f"got unknown message type 0x{msg:x} from {self.peer}", at)

        got = buf.attempt(read, "a message from the daemon")
        if isinstance(got, Signal):
            return got
        if got is None:
            head.logs_done = True
            if head.op is None:
                self._pending.popleft()
                return Handshake(head.nix_version, head.trusted, head.features)
            return self._reply(head)
        if isinstance(got, OpFailed):
            self._pending.popleft()
            if head.op is None:
                raise ProtocolError(f"{self.peer} refused the connection: {got.message}", offset=at)
        return got

    def _reply(self, head: _Pending) -> ClientEvent | Signal:
        buf = self._buf
        op = head.op
        if op is Op.NAR_FROM_PATH:
            return self._nar_event()
        if op in (Op.SET_OPTIONS, Op.ADD_TO_STORE_NAR, Op.ADD_MULTIPLE_TO_STORE):
            self._pending.popleft()
            return Done(op)

        def read() -> ClientEvent:
            if op is Op.IS_VALID_PATH:
                return Valid(bool(buf.u64()))
            if op is Op.ADD_TEMP_ROOT:
                buf.u64()
                return Done(op)
            if op is Op.QUERY_VALID_PATHS:
                return ValidPaths(read_path_set(buf))
            if op is Op.QUERY_PATH_INFO:
                assert head.path is not None
                if not buf.u64():
                    return PathInfoReply(head.path, None)
                return PathInfoReply(head.path, read_path_info(buf, head.path, self.version))
            if op is Op.QUERY_PATH_FROM_HASH_PART:
                at = buf.offset
                raw = buf.string(MAX_PATH, "store path")
                return PathFromHashPart(path_from(buf, raw, at) if raw else None)
            if op is Op.BUILD_PATHS_WITH_RESULTS:
                return BuildResults(
                    tuple(self._build_result() for _ in range(buf.bounded(MAX_RESULTS, "results")))
                )
            raise AssertionError(op)

        got = buf.attempt(read, "the reply of an operation")
        if isinstance(got, Signal):
            return got
        self._pending.popleft()
        return got

    def _build_result(self) -> BuildResult:
        buf = self._buf
        path = buf.string(MAX_PATH * 4, "derived path").decode("utf-8", "replace")
        status = buf.u64()
        message = buf.string(MAX_MESSAGE, "error message").decode("utf-8", "replace")
        version = self.version
        times: tuple[int, ...] = ()
        if _minor(version) >= 29:
            times = (buf.u64(), buf.u64(), buf.u64(), buf.u64())
        if _minor(version) >= 37:
            for _ in range(2):  # cpuUser, cpuSystem: optional microseconds
                if buf.u64():
                    buf.u64()
        outputs = []
        if _minor(version) >= 28:
            for _ in range(buf.bounded(MAX_PATHS, "the number of built outputs")):
                key = buf.string(MAX_MESSAGE, "output").decode("utf-8", "replace")
                outputs.append((key, buf.string(MAX_MESSAGE, "realisation").decode("utf-8", "replace")))
        return BuildResult(path, status, message, times, tuple(outputs))

    def _nar_event(self) -> ClientEvent | Signal:
        buf = self._buf
        span = self._nar
        if span is None:
            span = self._nar = NarSpan()
        if span.done:
            self._nar = None
            self._pending.popleft()
            return NarEnd(span.size)
        if not buf.buffered:
            if not buf.eof:
                return NEED_DATA
            raise ProtocolError(
                f"{self.peer} closed the connection in the middle of a NAR (after {span.size} bytes)",
                offset=buf.offset,
            )
        part, rest = span.feed(buf.take_buffered())
        if rest:
            buf.push_back(rest)
        if not part:
            return self._nar_event()
        return NarData(part)

    # -- requests ------------------------------------------------------------------------------------

    def hello(self) -> bytes:
        self._pending.append(_Pending(_Reply.HELLO))
        return encode_u64(WORKER_MAGIC_1) + encode_u64(self.local_version)

    def handshake(self) -> bytes:
        """The rest of the client's handshake, once `DaemonHello` has arrived."""
        if not self.version:
            raise CallerError("handshake() before the daemon's greeting")
        parts = []
        if _minor(self.version) >= 38:
            parts.append(encode_u64(len(self.local_features)))
            parts += [encode_bytes(f.encode()) for f in sorted(self.local_features)]
        parts.append(encode_u64(0))  # obsolete: CPU affinity
        parts.append(encode_u64(0))  # obsolete: reserve space
        self._pending.append(_Pending(_Reply.HANDSHAKE))
        return b"".join(parts)

    def _op(self, op: Op, path: StorePath | None = None) -> None:
        if not self.version or self.in_handshake:
            raise CallerError("no operation before the handshake is complete")
        if self._framing:
            raise CallerError("a framed upload is still being sent")
        self._pending.append(_Pending(_Reply.OP, op, path))

    def set_options(self, *, verbosity: int = LVL_INFO, settings: dict[str, str] | None = None) -> bytes:
        """SetOptions with Nix's defaults (no building: one job, substitutes off) and `settings`."""
        self._op(Op.SET_OPTIONS)
        numbers = [
            0,  # keepFailed
            0,  # keepGoing
            0,  # tryFallback
            verbosity,
            1,  # maxBuildJobs
            0,  # maxSilentTime
            1,  # obsolete: useBuildHook
            LVL_ERROR,  # verboseBuild: lvlError means verbose
            0,  # obsolete: logType
            0,  # obsolete: printBuildTrace
            0,  # buildCores: all
            0,  # useSubstitutes
        ]
        items = sorted((settings or {}).items())
        overrides = encode_u64(len(items)) + b"".join(
            encode_bytes(k.encode()) + encode_bytes(v.encode()) for k, v in items
        )
        return encode_u64(Op.SET_OPTIONS) + b"".join(encode_u64(n) for n in numbers) + overrides

    def is_valid_path(self, path: StorePath) -> bytes:
        self._op(Op.IS_VALID_PATH)
        return encode_u64(Op.IS_VALID_PATH) + encode_path(path)

    def query_valid_paths(self, paths: Iterable[StorePath], *, substitute: bool = False) -> bytes:
        self._op(Op.QUERY_VALID_PATHS)
        return encode_u64(Op.QUERY_VALID_PATHS) + encode_path_set(paths) + encode_u64(substitute)

    def query_path_info(self, path: StorePath) -> bytes:
        self._op(Op.QUERY_PATH_INFO, path)
        return encode_u64(Op.QUERY_PATH_INFO) + encode_path(path)

    def query_path_from_hash_part(self, hash_part: str) -> bytes:
        self._op(Op.QUERY_PATH_FROM_HASH_PART)
        return encode_u64(Op.QUERY_PATH_FROM_HASH_PART) + encode_bytes(hash_part.encode())

    def add_temp_root(self, path: StorePath) -> bytes:
        self._op(Op.ADD_TEMP_ROOT)
        return encode_u64(Op.ADD_TEMP_ROOT) + encode_path(path)

    def nar_from_path(self, path: StorePath) -> bytes:
        self._op(Op.NAR_FROM_PATH, path)
        return encode_u64(Op.NAR_FROM_PATH) + encode_path(path)

    def build_paths_with_results(self, paths: Iterable[str], *, mode: int = 0) -> bytes:
        self._op(Op.BUILD_PATHS_WITH_RESULTS)
        items = list(paths)
        return (
            encode_u64(Op.BUILD_PATHS_WITH_RESULTS)
            + encode_u64(len(items))
            + b"".join(encode_bytes(p.encode()) for p in items)
            + encode_u64(mode)
        )

    def add_to_store_nar(
        self, info: PathInfo, *, repair: bool = False, dont_check_sigs: bool = False
    ) -> bytes:
        """AddToStoreNar's fields; then send the NAR with `frame()` and close with `end_frames()`."""
        self._op(Op.ADD_TO_STORE_NAR, info.path)
        self._framing = True
        return b"".join(
            (
                encode_u64(Op.ADD_TO_STORE_NAR),
                encode_path(info.path),
                encode_path_info(info, self.version),
                encode_u64(repair),
                encode_u64(dont_check_sigs),
            )
        )

    def add_multiple_to_store(self, *, repair: bool = False, dont_check_sigs: bool = False) -> bytes:
        """AddMultipleToStore's fields; then frames carrying `multiple_count()`, and for each path
        `multiple_entry()` and its NAR; close with `end_frames()`."""
        self._op(Op.ADD_MULTIPLE_TO_STORE)
        self._framing = True
        return encode_u64(Op.ADD_MULTIPLE_TO_STORE) + encode_u64(repair) + encode_u64(dont_check_sigs)

    def multiple_count(self, count: int) -> bytes:
        return encode_u64(count)

    def multiple_entry(self, info: PathInfo) -> bytes:
        """A path's header inside AddMultipleToStore's stream (its NAR follows it)."""
        return encode_path(info.path) + encode_path_info(info, 16)

    def frame(self, data: bytes) -> bytes:
        if not self._framing:
            raise CallerError("frame() outside a framed upload")
        return encode_frame(data) if data else b""

    def frame_header(self, size: int) -> bytes:
        """The header of a frame of `size` bytes (> 0), for a caller that sends the bytes themselves
        next without joining them to it (no copy of a large chunk)."""
        if not self._framing:
            raise CallerError("frame_header() outside a framed upload")
        if size <= 0:
            raise CallerError("a frame of no bytes would end the stream")
        return encode_u64(size)

    def end_frames(self) -> bytes:
        if not self._framing:
            raise CallerError("end_frames() outside a framed upload")
        self._framing = False
        return encode_frame(b"")


# -- server side --------------------------------------------------------------------------------------


class ClientHello(FrozenRecord):
    """The client's magic and version arrived: send `hello()`."""

    __slots__ = ("client_version", "version")
    client_version: int
    version: int

    def __init__(self, client_version: int, version: int) -> None:
        setfield(self, "client_version", client_version)
        setfield(self, "version", version)


class ClientHandshake(FrozenRecord):
    """The client's handshake is complete: send `handshake_info()` and the first `last()`."""

    __slots__ = ("features",)
    features: frozenset[str]

    def __init__(self, features: frozenset[str]) -> None:
        setfield(self, "features", features)


class Request(FrozenRecord):
    """An operation with its fields (`args`: path, paths, info, flags..., as the op has them). For the
    framed ops, `FrameData` events and `FramesEnd` follow."""

    __slots__ = ("op", "args")  # noqa: RUF023 (the fields' order)
    op: int
    args: tuple[object, ...]

    def __init__(self, op: int, args: tuple[object, ...] = ()) -> None:
        setfield(self, "op", op)
        setfield(self, "args", args)


class FrameData(FrozenRecord):
    __slots__ = ("data",)
    data: bytes

    def __init__(self, data: bytes) -> None:
        setfield(self, "data", data)


class FramesEnd(FrozenRecord):
    __slots__ = ()


class ClientClosed(FrozenRecord):
    __slots__ = ()


ServerEvent = ClientHello | ClientHandshake | Request | FrameData | FramesEnd | ClientClosed


class _ServerState(enum.Enum):
    HELLO = enum.auto()
    HANDSHAKE = enum.auto()
    OP = enum.auto()
    FRAMES = enum.auto()
    CLOSED = enum.auto()


class WorkerServer:
    """The daemon's end, for the operations of `WorkerClient`: requests in, replies out. Unknown ops
    raise `ProtocolError` ("invalid operation N", as the daemon says)."""

    def __init__(
        self, *, version: int = PROTOCOL_VERSION, features: Iterable[str] = (), peer: str = "the client"
    ) -> None:
        self.local_version = version
        self.local_features = frozenset(features)
        self.version = 0
        self._buf = WireBuffer(error=ProtocolError, where="stream from the client")
        self._state = _ServerState.HELLO
        self._frames: FrameDecoder | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf.feed(data)

    def next_event(self) -> ServerEvent | Signal:
        buf = self._buf
        state = self._state
        if state is _ServerState.FRAMES:
            assert self._frames is not None
            chunk = self._frames.next_chunk()
            if isinstance(chunk, Signal):
                return chunk
            if not chunk:
                self._frames = None
                self._state = _ServerState.OP
                return FramesEnd()
            return FrameData(chunk)
        if state is _ServerState.HELLO:
            at = buf.offset

            def hello() -> int:
                if buf.u64() != WORKER_MAGIC_1:
                    raise buf.fail("protocol mismatch", at)
                return buf.u64()

            got = buf.attempt(hello, "the client's greeting")
            if isinstance(got, Signal):
                return got
            self.version = min(got, self.local_version)
            self._state = _ServerState.HANDSHAKE
            return ClientHello(got, self.version)
        if state is _ServerState.HANDSHAKE:
            version = self.version

            def handshake() -> frozenset[str]:
                features: frozenset[str] = frozenset()
                if _minor(version) >= 38:
                    features = frozenset(read_strings(buf, MAX_FEATURES, MAX_MESSAGE, "features"))
                if _minor(version) >= 14 and buf.u64():
                    buf.u64()
                if _minor(version) >= 11:
                    buf.u64()
                return features

            feats = buf.attempt(handshake, "the client's handshake")
            if isinstance(feats, Signal):
                return feats
            self._state = _ServerState.OP
            return ClientHandshake(feats & self.local_features)
        if state is _ServerState.CLOSED:
            return ClientClosed()
        if buf.eof and not buf.buffered:
            self._state = _ServerState.CLOSED
            return ClientClosed()
        request = buf.attempt(self._request, "a request")
        if isinstance(request, Signal):
            return request
        if request.op in (Op.ADD_TO_STORE_NAR, Op.ADD_MULTIPLE_TO_STORE):
            self._state = _ServerState.FRAMES
            self._frames = FrameDecoder(buf)
        return request

    def _request(self) -> Request:
        buf = self._buf
        at = buf.offset
        op = buf.u64()
        if op in (Op.IS_VALID_PATH, Op.ADD_TEMP_ROOT, Op.QUERY_PATH_INFO, Op.NAR_FROM_PATH):
            return Request(op, (read_path(buf),))
        if op == Op.QUERY_VALID_PATHS:
            paths = read_path_set(buf)
            return Request(op, (paths, bool(buf.u64()) if _minor(self.version) >= 27 else False))
        if op == Op.QUERY_PATH_FROM_HASH_PART:
            return Request(op, (buf.string(MAX_PATH, "hash part").decode("ascii", "replace"),))
        if op == Op.SET_OPTIONS:
            numbers = tuple(buf.u64() for _ in range(12))
            count = buf.bounded(MAX_SETTINGS, "the number of settings")
            texts = [raw.decode("utf-8", "replace") for raw in buf.items(2 * count, MAX_MESSAGE, "setting")]
            settings = tuple(zip(texts[::2], texts[1::2], strict=True))  # name, value, name, value, ...
            return Request(op, (numbers, settings))
        if op == Op.ADD_TO_STORE_NAR:
            path = read_path(buf)
            info = read_path_info(buf, path, self.version)
            return Request(op, (info, bool(buf.u64()), bool(buf.u64())))
        if op == Op.ADD_MULTIPLE_TO_STORE:
            return Request(op, (bool(buf.u64()), bool(buf.u64())))
        if op == Op.BUILD_PATHS_WITH_RESULTS:
            derived = tuple(read_strings(buf, MAX_PATHS, MAX_PATH * 4, "derived paths"))
            return Request(op, (derived, buf.u64()))
        raise buf.fail(f"invalid operation {op}", at)

    # -- replies -------------------------------------------------------------------------------------

    def hello(self) -> bytes:
        return encode_u64(WORKER_MAGIC_2) + encode_u64(self.local_version)

    def features(self) -> bytes:
        """From 1.38, the daemon's features, sent after reading the client's."""
        if _minor(self.version) < 38:
            return b""
        return encode_u64(len(self.local_features)) + b"".join(
            encode_bytes(f.encode()) for f in sorted(self.local_features)
        )

    def handshake_info(self, nix_version: str, trusted: bool | None = None) -> bytes:
        parts = []
        if _minor(self.version) >= 33:
            parts.append(encode_bytes(nix_version.encode()))
        if _minor(self.version) >= 35:
            parts.append(encode_u64({None: 0, True: 1, False: 2}[trusted]))
        return b"".join(parts)

    def last(self) -> bytes:
        return encode_u64(STDERR_LAST)

    def log(self, line: str) -> bytes:
        return encode_u64(STDERR_NEXT) + encode_bytes(line.encode())

    def start_activity(
        self, act: int, level: int, kind: int, text: str, fields: Iterable[int | str] = (), parent: int = 0
    ) -> bytes:
        return (
            encode_u64(STDERR_START_ACTIVITY)
            + encode_u64(act)
            + encode_u64(level)
            + encode_u64(kind)
            + encode_bytes(text.encode())
            + _encode_fields(fields)
            + encode_u64(parent)
        )

    def stop_activity(self, act: int) -> bytes:
        return encode_u64(STDERR_STOP_ACTIVITY) + encode_u64(act)

    def result(self, act: int, kind: int, fields: Iterable[int | str] = ()) -> bytes:
        return encode_u64(STDERR_RESULT) + encode_u64(act) + encode_u64(kind) + _encode_fields(fields)

    def error(self, message: str, traces: Iterable[str] = ()) -> bytes:
        items = list(traces)
        return b"".join(
            [
                encode_u64(STDERR_ERROR),
                encode_bytes(b"Error"),
                encode_u64(LVL_ERROR),
                encode_bytes(b"Error"),
                encode_bytes(message.encode()),
                encode_u64(0),
                encode_u64(len(items)),
                *(encode_u64(0) + encode_bytes(t.encode()) for t in items),
            ]
        )

    def u64(self, n: int) -> bytes:
        return encode_u64(n)

    def path_set(self, paths: Iterable[StorePath]) -> bytes:
        return encode_path_set(paths)

    def path_info(self, info: PathInfo | None) -> bytes:
        if info is None:
            return encode_u64(0)
        return encode_u64(1) + encode_path_info(info, self.version)

    def optional_path(self, path: StorePath | None) -> bytes:
        return encode_path(path)

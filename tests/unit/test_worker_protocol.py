"""The daemon (worker) protocol machines against the byte streams of real Nix 2.8 sessions.

- The server machine reads what Nix 2.8's client sent (whole, byte by byte, in random chunks) and finds
  its handshake and operations; the NARs inside AddMultipleToStore's framed stream hash to the NAR hashes
  sent with them.
- The client machine, asked the same operations, writes exactly the bytes Nix 2.8 wrote, and reads what
  `nix-daemon --stdio` answered: its version, activities, path infos with the values Nix's binary cache
  has, build results, and NARs that hash to the infos' NAR hashes.
- The server machine, given those answers, writes exactly the bytes of `nix-daemon`.
- Versions 1.34 to 1.38 (features, the trust flag), error frames (the connection stays usable), and bad
  input of every kind.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.helpers import CountingU64
from tests.transcripts import (
    MANIFEST,
    NAR_SIZES,
    PKG,
    USER_ENV,
    USER_ENV_DRV,
    USER_ENV_NAR_HASH,
    chunkings,
    events,
    load,
)
from xstore import wire
from xstore.errors import CallerError, ProtocolError
from xstore.protocols import worker as proto
from xstore.protocols.common import NarData, NarEnd, NarSpan, read_path
from xstore.storeapi import PathInfo
from xstore.storepath import parse_store_path
from xstore.wire import NEED_DATA, WireBuffer, encode_bytes, encode_u64

P = parse_store_path
SESSIONS = ("daemon-ping", "daemon-copy-to", "daemon-copy-from", "daemon-copy-from-nosig")
HANDSHAKE: list[tuple[Any, ...]] = [("hello", 0x122, 0x122), ("handshake", frozenset())]
EXPECTED = {
    "daemon-ping": [*HANDSHAKE, ("closed",)],
    "daemon-copy-to": [
        *HANDSHAKE,
        ("op", proto.Op.QUERY_VALID_PATHS, (sorted([USER_ENV, PKG, MANIFEST]), False)),
        ("op", proto.Op.ADD_MULTIPLE_TO_STORE, (False, True)),
        ("frames-end",),
        ("closed",),
    ],
    "daemon-copy-from": [
        *HANDSHAKE,
        ("op", proto.Op.BUILD_PATHS_WITH_RESULTS, ((USER_ENV,), 0)),
        *[("op", proto.Op.QUERY_PATH_INFO, (p,)) for p in (USER_ENV, PKG, MANIFEST)],
        ("op", proto.Op.NAR_FROM_PATH, (PKG,)),
        ("op", proto.Op.NAR_FROM_PATH, (MANIFEST,)),
        ("closed",),
    ],
    "daemon-copy-from-nosig": [
        *HANDSHAKE,
        ("op", proto.Op.BUILD_PATHS_WITH_RESULTS, ((USER_ENV,), 0)),
        *[("op", proto.Op.QUERY_PATH_INFO, (p,)) for p in (USER_ENV, PKG, MANIFEST)],
        ("op", proto.Op.NAR_FROM_PATH, (USER_ENV,)),
        ("closed",),
    ],
}


def show(value: Any) -> Any:
    if isinstance(value, (frozenset, set)):
        return sorted(show(v) for v in value)
    if hasattr(value, "hash_part"):
        return value.path
    return value


def summary(event: Any) -> tuple[Any, ...]:
    if isinstance(event, proto.ClientHello):
        return ("hello", event.client_version, event.version)
    if isinstance(event, proto.ClientHandshake):
        return ("handshake", event.features)
    if isinstance(event, proto.Request):
        return ("op", event.op, tuple(show(a) for a in event.args))
    if isinstance(event, proto.FramesEnd):
        return ("frames-end",)
    return ("closed",)


def server_events(chunks: list[bytes]) -> list[proto.ServerEvent]:
    return events(proto.WorkerServer(version=0x122), chunks, stop=proto.ClientClosed)


def parse_multiple(stream: bytes) -> list[tuple[PathInfo, bytes]]:
    """The paths of an AddMultipleToStore stream: a count, then per path its store path, its info and
    its NAR."""
    buf = WireBuffer()
    buf.feed(stream)
    buf.feed(b"")
    out = []
    for _ in range(buf.u64()):
        path = read_path(buf)
        info = proto.read_path_info(buf, path, 16)
        span = NarSpan()
        nar, rest = span.feed(buf.take_buffered())
        assert rest is not None
        buf = WireBuffer()
        buf.feed(rest)
        buf.feed(b"")
        out.append((info, nar))
    assert not buf.buffered
    return out


# -- the server machine reads Nix's requests ----------------------------------------------------------


@pytest.mark.parametrize("session", SESSIONS)
def test_server_reads_the_requests_of_nix(session: str) -> None:
    c2s, _ = load(session)
    for how, chunks in chunkings(c2s):
        got = [summary(e) for e in server_events(chunks) if not isinstance(e, proto.FrameData)]
        assert got == EXPECTED[session], how


def test_add_multiple_to_store_carries_the_closure_dependencies_first() -> None:
    c2s, _ = load("daemon-copy-to")
    for how, chunks in chunkings(c2s, seed=2):
        frames = [e.data for e in server_events(chunks) if isinstance(e, proto.FrameData)]
        assert sum(map(len, frames)) == 3424, how
        paths = parse_multiple(b"".join(frames))
        assert [(i.path.path, len(nar)) for i, nar in paths] == [
            (p, NAR_SIZES[p]) for p in (PKG, MANIFEST, USER_ENV)
        ]
        for info, nar in paths:
            assert info.nar_size == len(nar)
            assert hashlib.sha256(nar).digest() == info.nar_hash
        user_env = paths[2][0]
        assert user_env.nar_hash_nix32() == USER_ENV_NAR_HASH
        assert user_env.deriver == P(USER_ENV_DRV)
        assert user_env.references == (P(PKG), P(MANIFEST))
        assert user_env.registration_time > 1_600_000_000


# -- the client machine writes Nix's bytes and reads the daemon's --------------------------------------


def replay_client(session: str, s2c_chunks: list[bytes] | None = None) -> tuple[bytes, list[Any]]:
    """The operations of `session` made by a client machine at 1.34 (as Nix 2.8), reading the recorded
    answers: the bytes it wrote and every event it read."""
    c2s, s2c = load(session)
    requests = server_events([c2s])
    client = proto.WorkerClient(version=0x122, peer="'fakehost'")
    pending = [*(s2c_chunks if s2c_chunks is not None else [s2c]), b""]
    seen: list[Any] = []

    def until(kinds: tuple[type, ...]) -> Any:
        while True:
            event = client.next_event()
            if event is NEED_DATA:
                client.receive_data(pending.pop(0))
                continue
            seen.append(event)
            if isinstance(event, kinds):
                return event

    wrote = client.hello()
    until((proto.DaemonHello,))
    wrote += client.handshake()
    until((proto.Handshake,))
    frames = b"".join(e.data for e in requests if isinstance(e, proto.FrameData))
    for event in requests:
        if not isinstance(event, proto.Request):
            continue
        op, args = event.op, event.args
        if op == proto.Op.QUERY_VALID_PATHS:
            wrote += client.query_valid_paths(args[0], substitute=args[1])  # type: ignore[arg-type]
            until((proto.ValidPaths,))
        elif op == proto.Op.QUERY_PATH_INFO:
            wrote += client.query_path_info(args[0])  # type: ignore[arg-type]
            until((proto.PathInfoReply,))
        elif op == proto.Op.NAR_FROM_PATH:
            wrote += client.nar_from_path(args[0])  # type: ignore[arg-type]
            until((NarEnd,))
        elif op == proto.Op.BUILD_PATHS_WITH_RESULTS:
            wrote += client.build_paths_with_results(args[0], mode=args[1])  # type: ignore[arg-type]
            until((proto.BuildResults,))
        elif op == proto.Op.ADD_MULTIPLE_TO_STORE:
            wrote += client.add_multiple_to_store(repair=bool(args[0]), dont_check_sigs=bool(args[1]))
            paths = parse_multiple(frames)
            stream = client.multiple_count(len(paths))
            for info, nar in paths:
                stream += client.multiple_entry(info) + nar
            wrote += client.frame(stream) + client.end_frames()
            until((proto.Done,))
    assert client.idle
    return wrote, seen


@pytest.mark.parametrize("session", SESSIONS)
def test_client_writes_the_bytes_of_nix(session: str) -> None:
    c2s, _ = load(session)
    wrote, _ = replay_client(session)
    assert wrote == c2s


def test_client_reads_the_handshake() -> None:
    _, s2c = load("daemon-ping")
    for how, chunks in chunkings(s2c):
        _, seen = replay_client("daemon-ping", chunks)
        assert seen == [proto.DaemonHello(0x122, 0x122), proto.Handshake("2.8.0", None, frozenset())], how


@pytest.mark.parametrize("session", ["daemon-copy-from", "daemon-copy-from-nosig"])
def test_client_reads_activities_infos_build_results_and_nars(session: str) -> None:
    _, s2c = load(session)
    for how, chunks in chunkings(s2c, seed=4):
        _, seen = replay_client(session, chunks)
        starts = [e for e in seen if isinstance(e, proto.ActivityStart)]
        stops = [e for e in seen if isinstance(e, proto.ActivityStop)]
        assert "querying info about missing paths" in [s.text for s in starts], how
        assert sorted(s.id for s in starts) == sorted(s.id for s in stops)
        (results,) = [e for e in seen if isinstance(e, proto.BuildResults)]
        assert [(r.path, r.status) for r in results.results] == [(USER_ENV, 2)]  # AlreadyValid
        infos = {e.path.path: e.info for e in seen if isinstance(e, proto.PathInfoReply)}
        assert sorted(infos) == sorted([USER_ENV, PKG, MANIFEST])
        user_env = infos[USER_ENV]
        assert user_env is not None
        assert user_env.nar_hash_nix32() == USER_ENV_NAR_HASH
        assert user_env.nar_size == NAR_SIZES[USER_ENV]
        assert user_env.deriver == P(USER_ENV_DRV)
        assert user_env.references == (P(PKG), P(MANIFEST))
        assert user_env.registration_time > 1_600_000_000


@pytest.mark.parametrize("session", ["daemon-copy-from", "daemon-copy-from-nosig"])
def test_client_delimits_each_nar_exactly(session: str) -> None:
    _, s2c = load(session)
    for how, chunks in chunkings(s2c, seed=8):
        _, seen = replay_client(session, chunks)
        infos = {e.path: e.info for e in seen if isinstance(e, proto.PathInfoReply)}
        by_hash = {i.nar_hash: i for i in infos.values() if i is not None}
        nar = b""
        count = 0
        for event in seen:
            if isinstance(event, NarData):
                nar += event.data
            elif isinstance(event, NarEnd):
                info = by_hash[hashlib.sha256(nar).digest()]
                assert info.nar_size == event.size == len(nar), how
                nar = b""
                count += 1
        assert count == (2 if session == "daemon-copy-from" else 1)


def test_client_reads_the_replies_to_copy_to() -> None:
    _, seen = replay_client("daemon-copy-to")
    assert seen[2:] == [proto.ValidPaths(frozenset()), proto.Done(proto.Op.ADD_MULTIPLE_TO_STORE)]


# -- the server machine writes the bytes of nix-daemon ------------------------------------------------


@pytest.mark.parametrize("session", SESSIONS)
def test_server_writes_the_bytes_of_nix_daemon(session: str) -> None:
    c2s, s2c = load(session)
    _, seen = replay_client(session)
    server = proto.WorkerServer(version=0x122)
    events(server, [c2s[:32]], end=False)
    wrote = server.hello() + server.handshake_info("2.8.0") + server.last()
    nar = b""
    for event in seen[2:]:
        if isinstance(event, proto.ActivityStart):
            wrote += server.start_activity(
                event.id, event.level, event.type, event.text, event.fields, event.parent
            )
        elif isinstance(event, proto.ActivityStop):
            wrote += server.stop_activity(event.id)
        elif isinstance(event, proto.ActivityResult):
            wrote += server.result(event.id, event.type, event.fields)
        elif isinstance(event, proto.ValidPaths):
            wrote += server.last() + server.path_set(event.paths)
        elif isinstance(event, proto.PathInfoReply):
            wrote += server.last() + server.path_info(event.info)
        elif isinstance(event, proto.Done):
            wrote += server.last()
        elif isinstance(event, proto.BuildResults):
            wrote += server.last() + encode_u64(len(event.results))
            for r in event.results:
                wrote += (
                    encode_bytes(r.path.encode()) + encode_u64(r.status) + encode_bytes(r.message.encode())
                )
                wrote += b"".join(encode_u64(n) for n in r.times)
                wrote += encode_u64(len(r.built_outputs))
                for key, value in r.built_outputs:
                    wrote += encode_bytes(key.encode()) + encode_bytes(value.encode())
        elif isinstance(event, NarData):
            if not nar:
                wrote += server.last()
            nar += event.data
            wrote += event.data
        elif isinstance(event, NarEnd):
            nar = b""
    assert wrote == s2c


# -- versions, trust, features ----------------------------------------------------------------------------


def connect(
    client_version: int,
    server_version: int,
    *,
    trusted: bool | None = True,
    client_features: tuple[str, ...] = (),
    server_features: tuple[str, ...] = (),
) -> tuple[proto.WorkerClient, proto.WorkerServer, list[Any]]:
    client = proto.WorkerClient(version=client_version, features=client_features)
    server = proto.WorkerServer(version=server_version, features=server_features)
    got = events(server, [client.hello()], end=False)
    seen = events(client, [server.hello()], end=False)
    got += events(server, [client.handshake()], end=False)
    seen += events(
        client,
        [
            server.features()
            + server.handshake_info("2.35.1", trusted)
            + server.log("welcome\n")
            + server.last()
        ],
        end=False,
    )
    return client, server, got + seen


@pytest.mark.parametrize(
    ("client_version", "server_version", "agreed"),
    [
        (0x126, 0x122, 0x122),
        (0x122, 0x126, 0x122),
        (0x126, 0x126, 0x126),
        (0x126, 0x127, 0x126),
        (0x124, 0x125, 0x124),
    ],
)
def test_both_ends_agree_on_the_lower_version(client_version: int, server_version: int, agreed: int) -> None:
    client, server, seen = connect(client_version, server_version)
    assert client.version == server.version == agreed
    assert seen[0] == proto.ClientHello(client_version, agreed)
    assert seen[2] == proto.DaemonHello(server_version, agreed)
    trusted = True if agreed >= 0x123 else None
    assert seen[-2:] == [proto.LogLine("welcome"), proto.Handshake("2.35.1", trusted, frozenset())]


def test_features_are_exchanged_from_1_38_and_intersected() -> None:
    _client, _server, seen = connect(0x126, 0x126, client_features=("a", "b"), server_features=("b", "c"))
    assert seen[1] == proto.ClientHandshake(frozenset({"b"}))
    assert seen[-1] == proto.Handshake("2.35.1", True, frozenset({"b"}))


@pytest.mark.parametrize(("flag", "trusted"), [(None, None), (True, True), (False, False)])
def test_the_trust_flag_of_1_35(flag: bool | None, trusted: bool | None) -> None:
    _, _, seen = connect(0x126, 0x125, trusted=flag)
    assert seen[-1] == proto.Handshake("2.35.1", trusted, frozenset())


def test_errors_end_an_operation_and_the_connection_goes_on() -> None:
    client, server, _ = connect(0x126, 0x126)
    client.query_path_info(P(PKG))
    client.add_temp_root(P(PKG))
    reply = server.log("checking\n") + server.error(
        "path '\x1b[35;1m/nix/store/x\x1b[0m' is not valid", ["while doing it"]
    )
    reply += server.last() + server.u64(1)
    assert events(client, [reply], end=False) == [
        proto.LogLine("checking"),
        proto.OpFailed("path '\x1b[35;1m/nix/store/x\x1b[0m' is not valid", 0, ("while doing it",)),
        proto.Done(proto.Op.ADD_TEMP_ROOT),
    ]
    assert client.idle


def test_framed_upload_and_its_end() -> None:
    client, server, _ = connect(0x122, 0x122)
    info = PathInfo(P(PKG), bytes(32), 5, (), None, 7, False, ("k:s",), "fixed:r:sha256:x")
    request = (
        client.add_to_store_nar(info, dont_check_sigs=True)
        + client.frame(b"ab")
        + client.frame(b"")
        + client.frame(b"cde")
    )
    with pytest.raises(CallerError):
        client.query_path_info(P(PKG))
    request += client.end_frames()
    got = events(server, [request], end=False)
    assert got == [
        proto.Request(proto.Op.ADD_TO_STORE_NAR, (info, False, True)),
        proto.FrameData(b"ab"),
        proto.FrameData(b"cde"),
        proto.FramesEnd(),
    ]
    assert events(client, [server.last()], end=False) == [proto.Done(proto.Op.ADD_TO_STORE_NAR)]


def test_set_options_with_bytes_that_are_not_utf8() -> None:
    # A client may send any bytes as a setting's name or value: they are read, not a crash.
    client, server, _ = connect(0x122, 0x122)
    pad = bytes(7)
    request = client.set_options(settings={"a": "1"})
    request = request.replace(b"a" + pad, b"\xff" + pad).replace(b"1" + pad, b"\xfe" + pad)
    got = events(server, [request], end=False)
    assert got == [
        proto.Request(proto.Op.SET_OPTIONS, ((0, 0, 0, 3, 1, 0, 1, 0, 0, 0, 0, 0), (("\ufffd", "\ufffd"),)))
    ]


def test_set_options_with_many_settings_in_small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4,000 settings in 256-byte pieces: each name and value is looked at about twice.
    client, server, _ = connect(0x122, 0x122)
    settings = {f"setting-{i:04}": f"value {i}" for i in range(4000)}
    request = client.set_options(settings=settings)
    counter = CountingU64()
    monkeypatch.setattr(wire, "U64", counter)
    got = events(server, [request[i : i + 256] for i in range(0, len(request), 256)], end=False)
    assert got == [
        proto.Request(
            proto.Op.SET_OPTIONS, ((0, 0, 0, 3, 1, 0, 1, 0, 0, 0, 0, 0), tuple(sorted(settings.items())))
        )
    ]
    assert counter.reads < 3 * 2 * len(settings) + len(request) // 256 * 20


def test_set_options_and_the_small_queries() -> None:
    client, server, _ = connect(0x122, 0x122)
    request = client.set_options(settings={"b": "2", "a": "1"})
    request += client.is_valid_path(P(PKG)) + client.query_path_from_hash_part(P(PKG).hash_part)
    request += client.query_path_from_hash_part("0" * 32)
    got = events(server, [request], end=False)
    assert got[0] == proto.Request(
        proto.Op.SET_OPTIONS, ((0, 0, 0, 3, 1, 0, 1, 0, 0, 0, 0, 0), (("a", "1"), ("b", "2")))
    )
    assert got[1:] == [
        proto.Request(proto.Op.IS_VALID_PATH, (P(PKG),)),
        proto.Request(proto.Op.QUERY_PATH_FROM_HASH_PART, (P(PKG).hash_part,)),
        proto.Request(proto.Op.QUERY_PATH_FROM_HASH_PART, ("0" * 32,)),
    ]
    reply = server.last() + server.last() + server.u64(1) + server.last() + server.optional_path(P(PKG))
    reply += server.last() + server.optional_path(None)
    assert events(client, [reply], end=False) == [
        proto.Done(proto.Op.SET_OPTIONS),
        proto.Valid(True),
        proto.PathFromHashPart(P(PKG)),
        proto.PathFromHashPart(None),
    ]


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("received", "shown"),
    [
        (b"", "it closed the connection"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "got 'SSH-2.0-OpenSSH_9.2'"),
        (b"oixd", "got 'oixd'"),
    ],
)
def test_client_shows_what_came_instead_of_the_greeting(received: bytes, shown: str) -> None:
    client = proto.WorkerClient(peer="'host'")
    client.hello()
    with pytest.raises(ProtocolError, match=f"Nix daemon protocol mismatch from 'host'.*{shown}"):
        events(client, [received])


@pytest.mark.parametrize("version", [0x121, 0x10A, 0x222])
def test_client_refuses_versions_it_does_not_speak(version: int) -> None:
    client = proto.WorkerClient(peer="'host'")
    client.hello()
    with pytest.raises(
        ProtocolError,
        match=r"'host' speaks Nix daemon protocol .*; xstore speaks 1\.34 \(Nix 2\.8\) to 1\.38",
    ):
        events(client, [encode_u64(proto.WORKER_MAGIC_2) + encode_u64(version)], end=False)


def test_client_reports_a_refused_connection() -> None:
    client = proto.WorkerClient(peer="'host'")
    server = proto.WorkerServer(version=0x122)
    events(server, [client.hello()], end=False)
    events(client, [server.hello()], end=False)
    client.handshake()
    with pytest.raises(
        ProtocolError, match="'host' refused the connection: user 'x' is not allowed to connect"
    ):
        events(
            client,
            [server.handshake_info("2.8.0") + server.error("user 'x' is not allowed to connect")],
            end=False,
        )


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (encode_u64(0x12345678), "unknown message type 0x12345678"),
        (encode_u64(proto.STDERR_READ) + encode_u64(10), "asked for a data exchange"),
        (encode_u64(proto.STDERR_ERROR) + encode_bytes(b"Oops"), "unexpected error type 'Oops'"),
        (
            encode_u64(proto.STDERR_START_ACTIVITY)
            + encode_u64(1) * 3
            + encode_bytes(b"x")
            + encode_u64(1)
            + encode_u64(7),
            "unsupported field type 7",
        ),
        (encode_u64(proto.STDERR_NEXT) + encode_u64(1 << 40), "too long"),
        (
            encode_u64(proto.STDERR_LAST) + encode_u64(1) + encode_bytes(b"/nix/store/x"),
            "not a valid store path",
        ),
        (encode_u64(proto.STDERR_LAST) + encode_u64(1), "unexpected end of file"),
    ],
)
def test_client_refuses_replies_that_break_the_protocol(reply: bytes, message: str) -> None:
    client, _, _ = connect(0x122, 0x122)
    client.query_path_info(P(PKG))
    with pytest.raises(ProtocolError, match=message):
        events(client, [reply])


def test_client_reports_a_nar_cut_short_and_a_corrupt_one() -> None:
    client, server, _ = connect(0x122, 0x122)
    client.nar_from_path(P(PKG))
    with pytest.raises(
        ProtocolError, match=r"closed the connection in the middle of a NAR \(after 24 bytes\)"
    ):
        events(client, [server.last() + encode_bytes(b"nix-archive-1")])
    client, server, _ = connect(0x122, 0x122)
    client.nar_from_path(P(PKG))
    with pytest.raises(Exception, match="bad archive"):
        events(client, [server.last() + encode_bytes(b"nix-archive-1") + encode_bytes(b"garbage")], end=False)


def test_server_refuses_unknown_operations_as_the_daemon_does() -> None:
    _client, server, _ = connect(0x122, 0x122)
    with pytest.raises(ProtocolError, match="invalid operation 99"):
        events(server, [encode_u64(99)], end=False)

"""The `nix-store --serve` protocol machines against the byte streams of real Nix 2.8 sessions.

- The server machine reads what Nix 2.8's client sent (`*.c2s`) whole, byte by byte and in random
  chunks, and finds Nix's requests in it; each AddToStoreNar payload it delimits hashes to the NAR hash
  announced with it.
- The client machine, asked the same requests, writes exactly the bytes Nix 2.8 wrote; it reads what
  `nix-store --serve` answered (`*.s2c`) into the values Nix's binary cache has for the same paths, and
  every DumpStorePath NAR it delimits hashes to the hash `nix-store --serve` reported for that path.
- The server machine, given those answers, writes exactly the bytes `nix-store --serve` wrote.
- Versions, build refusals, ExportPaths/ImportPaths framing, and every kind of bad input.
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
from xstore.errors import CallerError, HashMismatchError, ProtocolError
from xstore.exportstream import PATH_MARKER, STREAM_END, trailer
from xstore.hashing import parse_hash
from xstore.protocols import serve as proto
from xstore.protocols.common import NarData, NarEnd
from xstore.storeapi import PathInfo
from xstore.storepath import StorePath, make_text_path, parse_store_path
from xstore.wire import NEED_DATA, encode_bytes, encode_string_list, encode_u64

P = parse_store_path
SESSIONS = ("serve-pathinfo", "serve-copy-from", "serve-copy-from2", "serve-copy-to")


def summary(event: Any) -> tuple[Any, ...]:
    """A request event as a comparable tuple (payload chunks left out)."""
    if isinstance(event, proto.ClientVersion):
        return ("version", event.client_version, event.version)
    if isinstance(event, proto.QueryValidPaths):
        return ("valid", sorted(p.path for p in event.paths), event.lock, event.substitute)
    if isinstance(event, proto.QueryPathInfos):
        return ("infos", sorted(p.path for p in event.paths))
    if isinstance(event, proto.QueryClosure):
        return ("closure", sorted(p.path for p in event.paths), event.include_outputs)
    if isinstance(event, proto.DumpStorePath):
        return ("dump", event.path.path)
    if isinstance(event, proto.AddToStoreNar):
        return ("add", event.info.path.path, event.info.nar_size)
    if isinstance(event, NarEnd):
        return ("nar-end", event.size)
    return (type(event).__name__,)


QUERIES = [
    ("ClientMagic",),
    ("version", 0x207, 0x207),
    ("infos", [USER_ENV]),
    ("closure", [USER_ENV], False),
    ("infos", [PKG]),
    ("infos", [MANIFEST]),
]
EXPECTED_REQUESTS = {
    "serve-pathinfo": [*QUERIES, ("ClientClosed",)],
    "serve-copy-from": [*QUERIES, ("dump", PKG), ("dump", MANIFEST), ("ClientClosed",)],
    "serve-copy-from2": [*QUERIES[:4], ("dump", USER_ENV), ("ClientClosed",)],
    "serve-copy-to": [
        ("ClientMagic",),
        ("version", 0x207, 0x207),
        ("valid", sorted([USER_ENV, PKG, MANIFEST]), False, False),
        ("add", PKG, NAR_SIZES[PKG]),
        ("nar-end", NAR_SIZES[PKG]),
        ("add", MANIFEST, NAR_SIZES[MANIFEST]),
        ("nar-end", NAR_SIZES[MANIFEST]),
        ("add", USER_ENV, NAR_SIZES[USER_ENV]),
        ("nar-end", NAR_SIZES[USER_ENV]),
        ("ClientClosed",),
    ],
}


def server_events(c2s_chunks: list[bytes], version: int = 0x207) -> list[proto.ServerEvent]:
    return events(proto.ServeServer(version=version), c2s_chunks, stop=proto.ClientClosed)


# -- the server machine reads Nix's requests -----------------------------------------------------------


@pytest.mark.parametrize("session", SESSIONS)
def test_server_reads_the_requests_of_nix(session: str) -> None:
    c2s, _ = load(session)
    for how, chunks in chunkings(c2s):
        got = server_events(chunks)
        requests = [summary(e) for e in got if not isinstance(e, NarData)]
        assert requests == EXPECTED_REQUESTS[session], how


def test_server_delimits_each_nar_payload_exactly() -> None:
    c2s, _ = load("serve-copy-to")
    for how, chunks in chunkings(c2s, seed=7):
        got = server_events(chunks)
        added: list[tuple[PathInfo, bytes]] = []
        nar = b""
        for event in got:
            if isinstance(event, proto.AddToStoreNar):
                info, nar = event.info, b""
            elif isinstance(event, NarData):
                nar += event.data
            elif isinstance(event, NarEnd):
                added.append((info, nar))
        assert [i.path.path for i, _ in added] == [PKG, MANIFEST, USER_ENV], how
        for info, nar in added:
            assert len(nar) == info.nar_size
            assert hashlib.sha256(nar).digest() == info.nar_hash, (how, info.path)
            assert nar.startswith(encode_bytes(b"nix-archive-1"))
        user_env = added[2][0]
        assert user_env.nar_hash == parse_hash(USER_ENV_NAR_HASH).digest
        assert user_env.deriver == P(USER_ENV_DRV)
        assert user_env.references == (P(PKG), P(MANIFEST))
        assert added[0][0].ca is not None
        assert added[0][0].ca.startswith("fixed:r:sha256:")
        assert not user_env.ultimate


# -- the client machine writes Nix's requests and reads its answers -------------------------------------


def replay_client(session: str, s2c_chunks: list[bytes] | None = None) -> tuple[bytes, list[Any]]:
    """Make the requests of `session` with a client machine (version 2.7, as Nix 2.8) and read the
    recorded answers: the bytes it wrote, and the replies it read, in order."""
    c2s, s2c = load(session)
    requests = server_events([c2s])
    payloads: dict[StorePath, bytes] = {}
    current: StorePath | None = None
    for event in requests:
        if isinstance(event, proto.AddToStoreNar):
            current = event.info.path
            payloads[current] = b""
        elif isinstance(event, NarData):
            assert current is not None
            payloads[current] += event.data
    client = proto.ServeClient(version=0x207, peer="'fakehost'")
    wrote = client.hello()
    pending = [*(s2c_chunks if s2c_chunks is not None else [s2c]), b""]

    def pull() -> Any:
        while True:
            event = client.next_event()
            if event is not NEED_DATA:
                return event
            client.receive_data(pending.pop(0))

    replies: list[Any] = [pull()]
    for event in requests:
        if isinstance(event, proto.QueryValidPaths):
            wrote += client.query_valid_paths(event.paths, lock=event.lock, substitute=event.substitute)
        elif isinstance(event, proto.QueryPathInfos):
            wrote += client.query_path_infos(event.paths)
        elif isinstance(event, proto.QueryClosure):
            wrote += client.query_closure(event.paths, include_outputs=event.include_outputs)
        elif isinstance(event, proto.DumpStorePath):
            wrote += client.dump_store_path(event.path)
            nar = b""
            while not isinstance(reply := pull(), NarEnd):
                nar += reply.data
            replies.append((event.path, nar, reply.size))
            continue
        elif isinstance(event, proto.AddToStoreNar):
            wrote += client.add_to_store_nar(event.info)
            payload = payloads[event.info.path]
            for i in range(0, len(payload), 100):
                wrote += client.nar_data(payload[i : i + 100])
            wrote += client.nar_end()
        else:
            continue
        replies.append(pull())
    assert client.idle
    assert client.next_event() is NEED_DATA
    return wrote, replies


@pytest.mark.parametrize("session", SESSIONS)
def test_client_writes_the_bytes_of_nix(session: str) -> None:
    c2s, _ = load(session)
    wrote, _ = replay_client(session)
    assert wrote == c2s


@pytest.mark.parametrize("session", ["serve-pathinfo", "serve-copy-from"])
def test_client_reads_path_infos_and_closures(session: str) -> None:
    _, s2c = load(session)
    for how, chunks in chunkings(s2c, seed=3):
        _, replies = replay_client(session, chunks)
        hello, user_env_infos, closure, pkg_infos, manifest_infos = replies[:5]
        assert hello == proto.ServerHello(0x207, 0x207), how
        assert closure == proto.ValidPaths(frozenset({P(USER_ENV), P(PKG), P(MANIFEST)}))
        (info,) = user_env_infos.infos
        assert info.path == P(USER_ENV)
        assert info.nar_hash_nix32() == USER_ENV_NAR_HASH
        assert info.nar_size == NAR_SIZES[USER_ENV]
        assert info.deriver == P(USER_ENV_DRV)
        assert info.references == (P(PKG), P(MANIFEST))
        assert info.ca is None
        assert info.sigs == ()
        (pkg,) = pkg_infos.infos
        assert pkg.ca is not None
        assert pkg.ca == "fixed:r:" + pkg.nar_hash_nix32()  # a NAR-hashed path: its address is its NAR hash
        (manifest,) = manifest_infos.infos
        assert manifest.ca is not None
        assert manifest.ca.startswith("text:sha256:")
        assert manifest.references == (P(PKG),)


@pytest.mark.parametrize("session", ["serve-copy-from", "serve-copy-from2"])
def test_client_delimits_each_dumped_nar_exactly(session: str) -> None:
    _, s2c = load(session)
    for how, chunks in chunkings(s2c, seed=11):
        _, replies = replay_client(session, chunks)
        infos = {i.path: i for r in replies if isinstance(r, proto.PathInfos) for i in r.infos}
        dumps = [r for r in replies if isinstance(r, tuple)]
        assert dumps, how
        for path, nar, size in dumps:
            assert size == len(nar) == infos[path].nar_size, how
            assert hashlib.sha256(nar).digest() == infos[path].nar_hash, (how, path)


def test_client_reads_the_confirmations_of_adds() -> None:
    _, replies = replay_client("serve-copy-to")
    assert replies == [proto.ServerHello(0x207, 0x207), proto.ValidPaths(frozenset()), *[proto.Added()] * 3]


# -- the server machine writes the answers of nix-store --serve ----------------------------------------


@pytest.mark.parametrize("session", SESSIONS)
def test_server_writes_the_bytes_of_nix_store_serve(session: str) -> None:
    c2s, s2c = load(session)
    _, replies = replay_client(session)
    server = proto.ServeServer(version=0x207)
    greeting_events = events(server, [c2s[:16]], end=False)
    assert greeting_events == [proto.ClientMagic(), proto.ClientVersion(0x207, 0x207)]
    wrote = server.hello()
    answers = iter(replies[1:])
    for event in server_events([c2s]):
        if isinstance(event, (proto.ClientMagic, proto.ClientVersion)):
            continue
        elif isinstance(event, (proto.QueryValidPaths, proto.QueryClosure)):
            wrote += server.valid_paths(next(answers).paths)
        elif isinstance(event, proto.QueryPathInfos):
            wrote += server.path_infos(next(answers).infos)
        elif isinstance(event, proto.DumpStorePath):
            wrote += next(answers)[1]
        elif isinstance(event, NarEnd):
            assert isinstance(next(answers), proto.Added)
            wrote += server.added()
    assert wrote == s2c


# -- versions ---------------------------------------------------------------------------------------------


def greeting(version: int) -> bytes:
    return encode_u64(proto.SERVE_MAGIC_2) + encode_u64(version)


@pytest.mark.parametrize(
    ("client", "server", "agreed"),
    [(0x207, 0x208, 0x207), (0x208, 0x208, 0x208), (0x208, 0x207, 0x207), (0x209, 0x208, 0x208)],
)
def test_both_ends_agree_on_the_lower_version(client: int, server: int, agreed: int) -> None:
    s = proto.ServeServer(version=server)
    got = events(s, [encode_u64(proto.SERVE_MAGIC_1) + encode_u64(client)], end=False)
    assert got == [proto.ClientMagic(), proto.ClientVersion(client, agreed)]
    c = proto.ServeClient(version=client)
    c.hello()
    assert events(c, [s.hello()], end=False) == [proto.ServerHello(server, agreed)]


def test_path_infos_leave_out_hash_ca_and_sigs_for_clients_before_2_4() -> None:
    info = PathInfo(P(PKG), bytes(32), 1056, (), None, ca="fixed:r:sha256:x", sigs=("k:s",))
    old = proto.ServeServer()
    events(old, [encode_u64(proto.SERVE_MAGIC_1) + encode_u64(0x203)], end=False)
    new = proto.ServeServer()
    events(new, [encode_u64(proto.SERVE_MAGIC_1) + encode_u64(0x204)], end=False)
    head = encode_bytes(PKG.encode()) + encode_bytes(b"") + encode_u64(0) + encode_u64(1056) * 2
    assert old.path_infos([info]) == head + encode_bytes(b"")
    tail = encode_string_list([b"sha256:" + b"0" * 52, b"fixed:r:sha256:x"])[8:] + encode_string_list(
        [b"k:s"]
    )
    assert new.path_infos([info]) == head + tail + encode_bytes(b"")


@pytest.mark.parametrize("version", [0x204, 0x105, 0x300])
def test_client_refuses_servers_it_cannot_work_with(version: int) -> None:
    c = proto.ServeClient(peer="'host'")
    c.hello()
    with pytest.raises(ProtocolError, match=r"unsupported 'nix-store --serve' protocol version .* on 'host'"):
        events(c, [greeting(version)], end=False)


@pytest.mark.parametrize(
    ("received", "shown"),
    [
        (b"bash: line 1: xstore: command not found\n", "got 'bash: line 1: xstore: command not found'"),
        (b"Welcome!", "got 'Welcome!'"),
        (b"", "it closed the connection"),
        (b"abc", "got 'abc'"),
    ],
)
def test_client_shows_what_a_server_said_instead_of_its_greeting(received: bytes, shown: str) -> None:
    c = proto.ServeClient(peer="'host'")
    c.hello()
    with pytest.raises(ProtocolError, match=f"'nix-store --serve' protocol mismatch from 'host'.*{shown}"):
        events(c, [received])


def test_requests_wait_for_the_greeting() -> None:
    c = proto.ServeClient()
    c.hello()
    with pytest.raises(CallerError):
        c.query_path_infos([P(PKG)])


# -- builds are refused in the protocol's own terms ----------------------------------------------------


def started_server(version: int) -> proto.ServeServer:
    s = proto.ServeServer()
    events(s, [encode_u64(proto.SERVE_MAGIC_1) + encode_u64(version)], end=False)
    return s


def build_options(version: int) -> bytes:
    fields = 2 + (version & 0xFF >= 2) + 2 * (version & 0xFF >= 3) + (version & 0xFF >= 7)
    return encode_u64(0) * fields


@pytest.mark.parametrize("version", [0x202, 0x203, 0x207, 0x208])
def test_build_paths_is_parsed_and_refused(version: int) -> None:
    s = started_server(version)
    request = encode_u64(6) + encode_string_list([USER_ENV_DRV.encode() + b"!out", PKG.encode()])
    following = encode_u64(3) + encode_bytes(PKG.encode())
    got = events(s, [request + build_options(version) + following], end=False)
    assert got == [proto.BuildPaths((USER_ENV_DRV + "!out", PKG)), proto.DumpStorePath(P(PKG))]
    assert s.build_paths_refused("no") == encode_u64(9) + encode_bytes(b"no")


@pytest.mark.parametrize("version", [0x202, 0x203, 0x206, 0x207, 0x208])
def test_build_derivation_is_parsed_and_refused_with_the_fields_of_the_version(version: int) -> None:
    s = started_server(version)
    drv = b"".join(
        [
            encode_u64(1),
            encode_bytes(b"out"),
            encode_bytes(USER_ENV.encode()),
            encode_bytes(b""),
            encode_bytes(b""),
            encode_string_list([PKG.encode()]),
            encode_bytes(b"x86_64-linux"),
            encode_bytes(b"/bin/sh"),
            encode_string_list([b"-c", b"echo"]),
            encode_u64(1),
            encode_bytes(b"out"),
            encode_bytes(USER_ENV.encode()),
        ]
    )
    request = encode_u64(8) + encode_bytes(USER_ENV_DRV.encode()) + drv + build_options(version)
    got = events(s, [request + encode_u64(3) + encode_bytes(PKG.encode())], end=False)
    assert got == [proto.BuildDerivation(P(USER_ENV_DRV)), proto.DumpStorePath(P(PKG))]
    reply = s.build_derivation_refused("no")
    minor = version & 0xFF
    assert reply == encode_u64(9) + encode_bytes(b"no") + encode_u64(0) * (4 * (minor >= 3) + (minor >= 6))


def _many_paths(n: int) -> list[StorePath]:
    return [make_text_path(f"p{i}", hashlib.sha256(b"%d" % i).digest(), []) for i in range(n)]


def test_server_reads_a_long_request_in_small_pieces_item_by_item(monkeypatch: pytest.MonkeyPatch) -> None:
    # 5,000 paths, then a derivation with 5,000 outputs, 5,000 arguments and 5,000 variables, in 512-byte
    # pieces: each string is looked at about twice, not again with every piece (millions of looks before).
    paths = _many_paths(5000)
    query = (
        encode_u64(1)
        + encode_u64(0)
        + encode_u64(0)
        + encode_string_list(sorted(p.path.encode() for p in paths))
    )
    args = [b"argument %d" % i for i in range(5000)]
    env = b"".join(encode_bytes(b"NAME%d" % i) + encode_bytes(b"value %d" % i) for i in range(5000))
    drv = b"".join(
        [
            encode_u64(8),
            encode_bytes(USER_ENV_DRV.encode()),
            encode_u64(5000),
            *(
                encode_bytes(b"out%d" % i) + encode_bytes(USER_ENV.encode()) + encode_bytes(b"") * 2
                for i in range(5000)
            ),
            encode_string_list([PKG.encode()]),
            encode_bytes(b"x86_64-linux"),
            encode_bytes(b"/bin/sh"),
            encode_string_list(args),
            encode_u64(5000),
            env,
            build_options(0x207),
        ]
    )
    s = started_server(0x207)
    counter = CountingU64()
    monkeypatch.setattr(wire, "U64", counter)
    data = query + drv
    got = events(s, [data[i : i + 512] for i in range(0, len(data), 512)], end=False)
    assert got == [
        proto.QueryValidPaths(frozenset(paths), False, False),
        proto.BuildDerivation(P(USER_ENV_DRV)),
    ]
    assert counter.reads < 3 * (5000 + 4 * 5000 + 5000 + 2 * 5000) + len(data) // 512 * 10


@pytest.mark.parametrize("piece", [7, 100, 1 << 20])
def test_server_names_the_first_bad_path_of_a_set_where_it_is(piece: int) -> None:
    paths = sorted(p.path.encode() for p in _many_paths(50))
    paths[30] = b"/nix/store/not-a-path"
    request = encode_u64(1) + encode_u64(0) + encode_u64(0) + encode_string_list(paths)
    at = 16 + 4 * 8 + sum(len(encode_bytes(p)) for p in paths[:30])  # after the greeting and the count
    s = started_server(0x207)
    with pytest.raises(
        ProtocolError,
        match=rf"store paths /nix/store/not-a-path is not a valid store path: .* \(at byte {at} ",
    ):
        events(s, [request[i : i + piece] for i in range(0, len(request), piece)], end=False)


@pytest.mark.parametrize("piece", [5, 1 << 20])
def test_server_reports_the_first_error_of_a_set_in_order(piece: int) -> None:
    # As Nix reads a set, one path at a time: a string that is not a path is reported before a framing
    # error further on, however the bytes arrive.
    paths = [p.path.encode() for p in _many_paths(20)]
    paths[3] = b"/nix/store/not-a-path"
    bad_padding = encode_bytes(b"x" * 9)[:-1] + b"\1"
    request = encode_u64(1) + encode_u64(0) + encode_u64(0) + encode_u64(21)
    request += b"".join(encode_bytes(p) for p in paths) + bad_padding
    s = started_server(0x207)
    with pytest.raises(ProtocolError, match="not-a-path is not a valid store path"):
        events(s, [request[i : i + piece] for i in range(0, len(request), piece)], end=False)


# -- export streams inside the protocol ------------------------------------------------------------------


def recorded_nars() -> dict[str, bytes]:
    c2s, _ = load("serve-copy-to")
    nars: dict[str, bytes] = {}
    path = ""
    for event in server_events([c2s]):
        if isinstance(event, proto.AddToStoreNar):
            path = event.info.path.path
            nars[path] = b""
        elif isinstance(event, NarData):
            nars[path] += event.data
    return nars


def test_import_paths_payload_ends_with_its_export_stream() -> None:
    nars = recorded_nars()
    stream = b"".join(
        [
            PATH_MARKER,
            nars[PKG],
            trailer(P(PKG), [], None),
            PATH_MARKER,
            nars[MANIFEST],
            trailer(P(MANIFEST), [P(PKG)], None),
            STREAM_END,
        ]
    )
    c = proto.ServeClient()
    c.hello()
    events(c, [greeting(0x208)], end=False)
    request = c.import_paths() + stream + c.dump_store_path(P(PKG))
    for how, chunks in chunkings(request, seed=5):
        s = started_server(0x208)
        got = events(s, chunks, stop=proto.ClientClosed)
        assert isinstance(got[0], proto.ImportPaths), how
        data = b"".join(e.data for e in got if isinstance(e, proto.ExportData))
        assert data == stream, how
        assert got[-3:] == [proto.ExportEnd(len(stream)), proto.DumpStorePath(P(PKG)), proto.ClientClosed()]
    assert events(c, [encode_u64(1)], end=False) == [proto.Added()]


def test_export_paths_reply_is_delimited_by_its_stream() -> None:
    nars = recorded_nars()
    stream = PATH_MARKER + nars[PKG] + trailer(P(PKG), [], None) + STREAM_END
    c = proto.ServeClient()
    c.hello()
    events(c, [greeting(0x208)], end=False)
    request = c.export_paths([P(PKG)]) + c.query_valid_paths([P(PKG)])
    s = started_server(0x208)
    assert events(s, [request], end=False) == [
        proto.ExportPaths(frozenset({P(PKG)})),
        proto.QueryValidPaths(frozenset({P(PKG)}), False, False),
    ]
    for how, chunks in chunkings(stream + s.valid_paths([P(PKG)]), seed=9):
        got = events(_fresh_exporting_client(), chunks, end=False)
        assert b"".join(e.data for e in got if isinstance(e, proto.ExportData)) == stream, how
        assert got[-2:] == [proto.ExportEnd(len(stream)), proto.ValidPaths(frozenset({P(PKG)}))], how


def _fresh_exporting_client() -> proto.ServeClient:
    c = proto.ServeClient()
    c.hello()
    events(c, [greeting(0x208)], end=False)
    c.export_paths([P(PKG)])
    c.query_valid_paths([P(PKG)])
    return c


# -- bad input -----------------------------------------------------------------------------------------


def test_server_refuses_a_wrong_magic_as_nix_does() -> None:
    with pytest.raises(ProtocolError, match=r"^protocol mismatch$"):
        events(proto.ServeServer(), [b"GET / HTTP/1.1\r\n\r\n"])


@pytest.mark.parametrize(
    ("request_bytes", "message"),
    [
        (encode_u64(42), "unknown serve command 42"),
        (encode_u64(2) + encode_u64(1) + encode_bytes(b"/nix/store/garbage"), "is not a valid store path"),
        (encode_u64(2) + encode_u64(1 << 40), "out of range"),
        (encode_u64(3) + encode_u64(5000) + b"x" * 5000, "too long"),
        (encode_u64(3) + encode_u64(3) + b"abc\x00\x00\x00\x00\x01", "non-zero padding"),
        (encode_u64(2) + encode_u64(1), "unexpected end of file while reading a request"),
    ],
)
def test_server_refuses_malformed_requests(request_bytes: bytes, message: str) -> None:
    s = started_server(0x207)
    with pytest.raises(ProtocolError, match=message):
        events(s, [request_bytes])


def add_request(nar_size: int, nar_hash: str = "00" * 32) -> bytes:
    return b"".join(
        [
            encode_u64(9),
            encode_bytes(PKG.encode()),
            encode_bytes(b""),
            encode_bytes(nar_hash.encode()),
            encode_u64(0),
            encode_u64(0),
            encode_u64(nar_size),
            encode_u64(0),
            encode_u64(0),
            encode_bytes(b""),
        ]
    )


def test_server_refuses_an_add_without_nar_size() -> None:
    with pytest.raises(ProtocolError, match="narInfo is too old and missing the narSize field"):
        events(started_server(0x207), [add_request(0)])


def test_server_refuses_an_add_with_a_bad_hash() -> None:
    with pytest.raises(ProtocolError, match="bad NAR hash"):
        events(started_server(0x207), [add_request(8, "sha256:nothex")])


def test_server_reports_a_payload_cut_short() -> None:
    with pytest.raises(ProtocolError, match=r"unexpected end of file in a NAR \(5 of 100 bytes received\)"):
        events(started_server(0x207), [add_request(100) + b"12345"])


def test_server_reports_the_end_inside_an_import_stream() -> None:
    with pytest.raises(Exception, match="unexpected end of file"):
        events(started_server(0x207), [encode_u64(4) + PATH_MARKER + encode_bytes(b"nix-archive-1")])


def test_client_reports_a_nar_cut_short() -> None:
    nar = recorded_nars()[PKG]
    c = proto.ServeClient(peer="'host'")
    c.hello()
    events(c, [greeting(0x207)], end=False)
    c.dump_store_path(P(PKG))
    with pytest.raises(
        ProtocolError, match=r"'host' closed the connection in the middle of a NAR \(after 500 bytes\)"
    ):
        events(c, [nar[:500]])


def test_client_reports_a_corrupt_nar() -> None:
    c = proto.ServeClient(peer="'host'")
    c.hello()
    events(c, [greeting(0x207)], end=False)
    c.dump_store_path(P(PKG))
    with pytest.raises(Exception, match="bad archive"):
        events(c, [encode_bytes(b"nix-archive-1") + encode_bytes(b"junk")])


def infos_reply(count: int) -> tuple[list[PathInfo], bytes]:
    server = proto.ServeServer()
    events(server, [encode_u64(proto.SERVE_MAGIC_1) + encode_u64(0x207)], end=False)
    infos = [PathInfo(P(f"/nix/store/{i:032d}-p"), bytes(32), 100 + i, (), None) for i in range(count)]
    return infos, server.path_infos(infos)


def test_client_reads_a_long_path_infos_reply_in_pieces() -> None:
    # Each info is read once, whatever the pieces (the whole reply was read again with every piece).
    infos, reply = infos_reply(2000)
    c = proto.ServeClient()
    c.hello()
    events(c, [greeting(0x207)], end=False)
    c.query_path_infos([info.path for info in infos])
    pieces = [reply[i : i + 1000] for i in range(0, len(reply), 1000)]
    assert events(c, pieces, end=False) == [proto.PathInfos(tuple(infos))]
    c.query_path_infos([infos[0].path])  # and the next reply starts afresh
    assert events(c, [infos_reply(1)[1]], end=False) == [proto.PathInfos((infos[0],))]


def test_client_refuses_more_path_infos_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proto, "MAX_PATHS", 10)
    _, reply = infos_reply(11)
    c = proto.ServeClient(peer="'host'")
    c.hello()
    events(c, [greeting(0x207)], end=False)
    c.query_path_infos([P(PKG)])
    with pytest.raises(ProtocolError, match="'host' sent more than 10 path infos"):
        events(c, [reply], end=False)


def test_client_refuses_data_nobody_asked_for() -> None:
    c = proto.ServeClient(peer="'host'")
    c.hello()
    with pytest.raises(ProtocolError, match="sent data nobody asked for"):
        events(c, [greeting(0x207) + b"surprise"], end=False)


def test_client_refuses_a_failed_add() -> None:
    c = proto.ServeClient(peer="'host'")
    c.hello()
    events(c, [greeting(0x207)], end=False)
    info = PathInfo(P(PKG), bytes(32), 3)
    c.add_to_store_nar(info)
    c.nar_data(b"abc")
    c.nar_end()
    with pytest.raises(ProtocolError, match="'host' failed to add the path"):
        events(c, [encode_u64(0)], end=False)


def test_client_keeps_an_add_to_the_size_announced() -> None:
    c = proto.ServeClient()
    c.hello()
    events(c, [greeting(0x207)], end=False)
    info = PathInfo(P(PKG), bytes(32), 10)
    c.add_to_store_nar(info)
    assert c.nar_data(b"12345") == b"12345"
    with pytest.raises(HashMismatchError, match="longer than the size announced"):
        c.nar_data(b"123456")
    c2 = proto.ServeClient()
    c2.hello()
    events(c2, [greeting(0x207)], end=False)
    c2.add_to_store_nar(info)
    c2.nar_data(b"1234")
    with pytest.raises(HashMismatchError, match="ended 6 bytes short"):
        c2.nar_end()
    with pytest.raises(CallerError):
        c2.query_path_infos([P(PKG)])

"""`xstore serve ssh` in process, over a socket pair: what a session asks of the store, and when it
answers. Nix's client (`nix copy --from ssh://`) asks for a closure, then each path's info, then each
NAR; the server keeps the infos it has looked up for the session, as Nix's server does, so each path is
looked up once. Pushing (`nix copy --to ssh://`), it sends a path and waits for its confirmation."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.localstores import filled, leftovers, store, unlocked, valid_elsewhere  # noqa: F401 (fixtures)
from xstore.casehack import CaseHackMode
from xstore.protocols import serve as proto
from xstore.protocols.common import NarData, NarEnd
from xstore.remote.channel import Channel
from xstore.remote.pump import next_event
from xstore.serve.ssh import serve_ssh
from xstore.store import LocalStore
from xstore.storeapi import Store
from xstore.storepath import StorePath


@contextlib.contextmanager
def session(
    served: Store, *, write: bool = False, server_channel: type[Channel] = Channel
) -> Iterator[tuple[Channel, proto.ServeClient]]:
    """`serve_ssh(served)` in a thread over a socket pair, greeted: the client's channel and protocol.
    Leaving the block ends the client's stream, and then the server, which must have sent nothing more."""
    ours, theirs = socket.socketpair()
    server = threading.Thread(
        target=serve_ssh,
        args=(served, server_channel(theirs.fileno(), theirs.fileno(), peer="the client")),
        kwargs={"write": write},
    )
    channel = Channel(ours.fileno(), ours.fileno(), peer="the server", timeout=30)
    client = proto.ServeClient()
    try:
        server.start()
        channel.send(client.hello(), "the greeting")
        next_event(client, channel, "the greeting")
        yield channel, client
        ours.shutdown(socket.SHUT_WR)
        server.join(30)
        assert not server.is_alive()
        theirs.shutdown(socket.SHUT_WR)
        assert channel.recv("the end") == b""
    finally:
        with contextlib.suppress(OSError):
            ours.shutdown(socket.SHUT_WR)
        server.join(30)
        ours.close()
        theirs.close()


def test_a_copy_looks_each_path_up_once(store: LocalStore, filled: list[StorePath]) -> None:  # noqa: F811
    statements: list[str] = []
    with session(store) as (channel, client):
        store.db.set_trace_callback(statements.append)  # from here on (the server opened nothing new)
        channel.send(client.query_closure(filled), "a request")
        closure = next_event(client, channel, "a closure")
        assert isinstance(closure, proto.ValidPaths)
        assert closure.paths == frozenset(store.query_closure(filled))
        statements.clear()
        nars: dict[StorePath, bytes] = {}
        for path in sorted(closure.paths):
            channel.send(client.query_path_infos([path]) + client.dump_store_path(path), "requests")
            infos = next_event(client, channel, "path infos")
            assert isinstance(infos, proto.PathInfos)
            ((got, want),) = zip(infos.infos, [store.require(path)], strict=True)
            assert (got.path, got.nar_hash, got.nar_size, got.references) == (
                want.path,
                want.nar_hash,
                want.nar_size,
                want.references,
            )
            parts = []
            while not isinstance(event := next_event(client, channel, "a NAR"), NarEnd):
                assert isinstance(event, NarData)
                parts.append(event.data)
            nars[path] = b"".join(parts)
    # Only the test's own `require` calls reached the database once the closure had been read.
    assert len(statements) == len(closure.paths), statements
    for path, nar in nars.items():
        sent: list[bytes] = []
        store.nar_from_path(path, sent.append)
        assert nar == b"".join(sent)


def test_each_path_added_is_confirmed_once_registered_while_still_locked(
    store: LocalStore,  # noqa: F811
    filled: list[StorePath],  # noqa: F811
    tmp_path: Path,
) -> None:
    # Nix's client (`nix copy --to ssh://`) sends a path, then waits for its confirmation before the
    # next: one per path, sent as soon as the path is registered (its lock still held, released only
    # after), and one for a path that was valid already.
    paths = sorted(store.query_closure(filled), key=lambda p: len(store.query_closure([p])))
    paths.append(paths[0])  # valid by then
    dest = LocalStore.create(tmp_path / "dest", case_hack=CaseHackMode.OFF)
    sending: list[StorePath] = []  # the path the client has sent last
    seen: list[tuple[list[StorePath], bool]] = []  # at each confirmation: the valid paths, and
    # whether the path confirmed was locked (its own lock: others may share a byte of the lock file)

    class Watched(Channel):
        def send(self, data: bytes, what: str) -> None:
            if what == "a confirmation":
                seen.append((valid_elsewhere(dest, sorted(set(paths))), not unlocked(dest, [sending[-1]])))
            super().send(data, what)

    try:
        with session(dest, write=True, server_channel=Watched) as (channel, client):
            for path in paths:
                nar: list[bytes] = []
                store.nar_from_path(path, nar.append)
                request = client.add_to_store_nar(store.require(path))
                sending.append(path)
                channel.send(request + client.nar_data(b"".join(nar)) + client.nar_end(), "a path")
                assert isinstance(next_event(client, channel, "a confirmation"), proto.Added)
    finally:
        dest.close()
    expected = [(sorted(paths[: i + 1]), True) for i in range(len(paths) - 1)]
    assert seen == [*expected, (sorted(set(paths)), False)]
    with LocalStore(dest.root) as after:
        assert after.all_paths() == sorted(set(paths))
        assert leftovers(after) == []

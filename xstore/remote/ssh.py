"""The `ssh://HOST` store: a remote `nix-store --serve --write` (or `xstore serve ssh`) reached over ssh.

Opening the store starts one process, `ssh HOST -x -a <NIX_SSHOPTS> [-i KEY] [-C] "<remote-program>
--serve --write [--store <remote-store>]"` (for `localhost`, `bash -c "<command>"`, as Nix 2.8 does), and
every operation of this store object goes through that one session: queries, locks and NARs. Paths
this store is asked about are locked on the far end as they are queried (QueryValidPaths with its lock
flag, which makes them temporary GC roots of the remote process), so a remote garbage collection
cannot remove a path between the query and the copy, in either direction.

Each operation is a blocking exchange around the sans-IO `protocols.serve.ServeClient`. NARs stream:
DumpStorePath's NAR goes to the caller's sink chunk by chunk (hashed on the way and checked against the
remote's path info), an added path's NAR goes from the caller's `read` straight to ssh's stdin, exactly
`narSize` bytes. The protocol has no error messages: when the far end fails it prints on stderr and
exits, so a broken exchange reports the last thing it printed. After such a break (or a timeout, or an
interruption) the session is out of step and the store object refuses further work.

Store URL parameters (Nix's): `ssh-key`, `base64-ssh-public-host-key`, `compress`, `remote-program`
(default `nix-store`), `remote-store`, and xstore's `timeout` (seconds a read or write may wait,
default 300). `max-connections` is accepted and ignored: one session is the point.

Nix: legacy-ssh-store.cc, ssh.cc.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable

from xstore.errors import (
    InvalidPathError,
    InvalidStoreUrlError,
    ProtocolError,
    RemoteConnectionError,
    RemoteTimeoutError,
    UnsupportedError,
    XstoreError,
)
from xstore.protocols import serve as proto
from xstore.remote.channel import (
    CHUNK,
    PARAMS,
    check_host,
    shell_escape,
    start_remote,
    timeout_param,
)
from xstore.remote.session import AheadReads, Session
from xstore.storeapi import PathInfo, Read, Sink, Store
from xstore.storepath import StorePath
from xstore.storeurl import StoreUrl
from xstore.wire import NEED_DATA

TYPE_CHECKING = False  # not `from typing import`: copies over ssh or to a daemon start without typing
if TYPE_CHECKING:
    from typing import Final, TypeVar

    T = TypeVar("T")

AHEAD: Final = 256  # paths sent before their confirmation (8 bytes each: far less than a pipe holds)


class ServeStore(Store):
    """An open `ssh://` store: one remote `nix-store --serve --write` session. See the module
    docstring. Raises `RemoteConnectionError` when the session cannot be started or breaks,
    `ProtocolError` when the far end speaks something else, `RemoteTimeoutError` when it stops
    answering."""

    def __init__(self, url: StoreUrl) -> None:
        self.url = url.text
        self.host = check_host(url)
        remote_store = url.param("remote-store", "")
        command = f"{url.param('remote-program') or 'nix-store'} --serve --write"
        if remote_store:
            command += " --store " + shell_escape(remote_store)
        proc = start_remote(url, command, timeout=timeout_param(url))
        self._session = Session(proc.channel, f"'{self.host}'", proc=proc)
        self._conn = proto.ServeClient(peer=f"'{self.host}'")
        self._infos: dict[StorePath, PathInfo] = {}
        self._valid: set[StorePath] = set()
        self._locked: set[StorePath] = set()
        self._reads = AheadReads(
            self._session,
            self._conn.dump_store_path,
            lambda info, sink: self._session.receive_nar(self._conn, info, sink, "DumpStorePath"),
        )
        try:
            with self._session.exchange():
                self._session.greet(self._conn, self._conn.hello())
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        return f"the store 'ssh://{self.host}'"

    def _exchange(self, request: bytes, what: str, reply: type[T]) -> T:
        session = self._session
        with session.exchange():
            self._reads.drain()
            session.send(request, what)
            event = session.next_event(self._conn, what)
            if not isinstance(event, reply):
                raise ProtocolError(
                    f"'{self.host}' answered {type(event).__name__} where {reply.__name__} was expected",
                    offset=0,
                )
        return event

    # -- queries -----------------------------------------------------------------------------------

    def _lock(self, paths: Iterable[StorePath]) -> set[StorePath]:
        """QueryValidPaths with the lock flag: which of `paths` are valid; all of them are temporary
        roots on the far end from now on."""
        paths = set(paths)
        reply = self._exchange(
            self._conn.query_valid_paths(paths, lock=True), "a list of valid paths", proto.ValidPaths
        )
        self._locked |= paths
        self._valid |= reply.paths & paths
        return set(reply.paths & paths)

    def _fetch_infos(self, paths: Iterable[StorePath]) -> None:
        wanted = {p for p in paths if p not in self._infos}
        if not wanted:
            return
        reply = self._exchange(self._conn.query_path_infos(wanted), "path infos", proto.PathInfos)
        for info in reply.infos:
            if info.path not in wanted:
                self._session.break_("an answer about a path not asked for")
                raise ProtocolError(
                    f"'{self.host}' sent the info of '{info.path}', which xstore did not ask for", offset=0
                )
            self._infos[info.path] = info
            self._valid.add(info.path)

    def query_path_info(self, path: StorePath) -> PathInfo | None:
        if path not in self._locked:
            self._lock([path])
        self._fetch_infos([path])
        return self._infos.get(path)

    def query_valid_paths(self, paths: Iterable[StorePath]) -> set[StorePath]:
        paths = set(paths)
        unknown = paths - self._locked
        if unknown:
            self._lock(unknown)
        return paths & self._valid

    def query_path_from_hash_part(self, hash_part: str) -> StorePath | None:
        raise UnsupportedError(
            f"{self.describe()} cannot look up a path by its hash part (the protocol has no such query)"
        )

    def query_closure(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]:
        """The closure in four exchanges, whatever its size: lock and check the paths, ask for the
        closure, lock it, fetch the infos."""
        wanted = set(paths)
        missing = sorted(wanted - self.query_valid_paths(wanted))
        if missing:
            raise InvalidPathError(
                f"path '{missing[0]}' is not valid in {self.describe()}", path=missing[0].path
            )
        if not wanted:
            return {}
        reply = self._exchange(self._conn.query_closure(wanted), "a closure", proto.ValidPaths)
        closure = set(reply.paths) | wanted
        self.query_valid_paths(closure)
        self._fetch_infos(closure)
        gone = sorted(p for p in closure if p not in self._infos)
        if gone:
            raise InvalidPathError(f"path '{gone[0]}' is not valid in {self.describe()}", path=gone[0].path)
        return {p: self._infos[p] for p in closure}

    def add_temp_root(self, path: StorePath) -> None:
        if path not in self._locked:
            self._lock([path])

    # -- NARs --------------------------------------------------------------------------------------

    def nar_from_path(
        self, path: StorePath, sink: Sink, *, known: PathInfo | None = None, check: bool = True
    ) -> int:
        info = known if known is not None and known.path == path else self.require(path)
        with self._session.exchange():
            return self._reads.read(info, sink)

    def prefetch(self, paths: Iterable[StorePath]) -> None:
        """Say which NARs will be read next, in order (as `copy` does): see `AheadReads`."""
        self._reads.plan(info for p in paths if (info := self._infos.get(p)) is not None)

    def add_to_store(self, info: PathInfo, read: Read, *, check_sigs: bool = True) -> bool:
        """Send the path with AddToStoreNar (the far end does not check signatures in this protocol).
        A path the far end is known to have is not sent again: its NAR is read to the end."""
        if info.path in self._valid:
            while read(CHUNK):
                pass
            return False
        session = self._session
        conn = self._conn
        with session.exchange():
            self._reads.drain()
            session.send(conn.add_to_store_nar(info), "a path's metadata")
            while chunk := read(CHUNK):
                session.send(conn.nar_data(chunk), f"the NAR of '{info.path}'")
            conn.nar_end()
            event = session.next_event(conn, f"confirmation that '{info.path}' was added")
            if not isinstance(event, proto.Added):
                raise ProtocolError(
                    f"'{self.host}' answered {type(event).__name__} to AddToStoreNar", offset=0
                )
        self._valid.add(info.path)
        self._infos[info.path] = info
        return True

    def add_many(
        self,
        entries: Iterable[tuple[PathInfo, Callable[[Sink], object]]],
        count: int,
        *,
        check_sigs: bool = True,
        on_sent: Callable[[PathInfo], None] | None = None,
    ) -> None:
        """AddToStoreNar for each path, one after another without waiting for the far end's
        confirmation of the path before: it reads and adds them in order while the next arrive, and
        its confirmations, which come in the order of the requests, are read as they come in. Paths are
        given dependencies first, so each one's references are valid on the far end by the time it is
        added there. `on_sent(info)` is told once a path has gone out. At most `AHEAD` paths are sent
        ahead of their confirmations.

        On a failure on our side (a source NAR that breaks off), the paths sent whole are confirmed
        first, then the error is raised and the session broken (the far end never gets the rest of the
        path it was reading, and adds nothing of it). When the far end fails it exits, as it does for a
        single path: the error says what it printed last, and the paths it confirmed stay added."""
        session = self._session
        conn = self._conn
        channel = session.channel
        sent: deque[PathInfo] = deque()  # gone out whole, not yet confirmed
        what = "the paths"

        def confirmed(event: object) -> None:
            if not isinstance(event, proto.Added):
                raise ProtocolError(
                    f"'{self.host}' answered {type(event).__name__} to AddToStoreNar", offset=0
                )
            info = sent.popleft()
            self._valid.add(info.path)
            self._infos[info.path] = info

        def watch(data: bytes) -> bool:
            conn.receive_data(data)
            if not data:
                return False  # the far end has gone: said below, with what it printed
            while sent and (event := conn.next_event()) is not NEED_DATA:
                confirmed(event)
            return True

        def await_one() -> None:
            confirmed(session.next_event(conn, f"confirmation that '{sent[0].path}' was added"))

        pending = bytearray()

        def flush() -> None:
            if pending:
                data = bytes(pending)
                pending.clear()
                try:
                    going = channel.send_watching(data, what, watch)
                except RemoteConnectionError as e:
                    raise RemoteConnectionError(session.word(str(e))) from None
                if not going:
                    raise RemoteConnectionError(
                        session.word(f"{session.peer} closed the connection while xstore was sending {what}")
                    )

        def sink(data: bytes) -> None:
            pending.extend(conn.nar_data(data))
            if len(pending) >= CHUNK:
                flush()

        with session.exchange():
            self._reads.drain()
            for info, produce in entries:
                if info.path in self._valid:
                    continue
                while len(sent) >= AHEAD:
                    await_one()
                what = f"the NAR of '{info.path}'"
                pending.extend(conn.add_to_store_nar(info))
                try:
                    produce(sink)
                    conn.nar_end()
                except (RemoteConnectionError, RemoteTimeoutError, ProtocolError):
                    raise  # the far end is gone or out of step: nothing more to read from it
                except Exception:
                    # Our side failed (the source): the paths sent whole are added by the far end before
                    # it waits for the rest of this one, so their confirmations are there to read.
                    with contextlib.suppress(XstoreError):
                        while sent:
                            await_one()
                    raise
                flush()
                sent.append(info)
                if on_sent is not None:
                    on_sent(info)
            while sent:
                await_one()

    def close(self) -> None:
        self._session.close()


def open_ssh_store(url: StoreUrl) -> ServeStore:
    unknown = sorted(set(url.params) - PARAMS)
    if unknown:
        raise InvalidStoreUrlError(
            f"store URL '{url.text}': unknown parameter '{unknown[0]}' (this kind of store takes: "
            f"{', '.join(sorted(PARAMS))})"
        )
    return ServeStore(url)

"""One session with a remote store, as both protocol clients (`ssh.py`, `daemon.py`) drive it.

A session is a sans-IO connection, the `Channel` its bytes travel on, and the process carrying them when
there is one (ssh, or `bash -c` for `localhost`). It knows how to wait for the connection's next event
(the one blocking loop of the clients), how to word a failure (with what the far end printed last on
stderr, since the serve protocol has no error messages of its own), and when it is broken: after a
connection error, a protocol error, a timeout or an interruption in the middle of an exchange, the two
ends are out of step and every later call refuses at once, with the first reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import Callable, Iterator

from xstore.errors import HashMismatchError, ProtocolError, RemoteConnectionError
from xstore.hashing import HashAlgorithm, HashFormat, format_digest
from xstore.protocols.common import NarData, NarEnd
from xstore.remote.channel import Channel, RemoteProcess
from xstore.storeapi import PathInfo, Sink
from xstore.wire import NEED_DATA, Signal

TYPE_CHECKING = False  # not `from typing import`: a copy over ssh starts without loading typing
if TYPE_CHECKING:
    from typing import TypeVar

    from xstore.remote.pump import Connection

    E = TypeVar("E")


class Session:
    """A connection to `peer` over `channel`, carried by `proc` (a process) or `sock` (a socket)."""

    def __init__(
        self,
        channel: Channel,
        peer: str,
        *,
        proc: RemoteProcess | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.channel = channel
        self.peer = peer
        self.proc = proc
        self.sock = sock
        self.broken: str | None = None

    def check(self) -> None:
        """Refuse to start an exchange on a broken session."""
        if self.broken is not None:
            raise RemoteConnectionError(
                f"the connection to {self.peer} broke earlier ({self.broken}); open the store again"
            )

    def word(self, reason: str) -> str:
        """`reason`, with what the far end printed last when a process carries the session."""
        return self.proc.failure(reason) if self.proc is not None else reason

    def break_(self, reason: str) -> None:
        """Mark the session broken (the first reason stays) and end the process or socket."""
        if self.broken is not None:
            return
        self.broken = reason
        if self.proc is not None:
            self.proc.kill()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def exchange(self) -> Iterator[None]:
        """Around one request and its reply: anything escaping (an error, Ctrl-C) breaks the session,
        except what the far end reported in the protocol's own terms (`RemoteError`), after which the
        two ends are still in step."""
        from xstore.errors import RemoteError

        self.check()
        try:
            yield
        except RemoteError:
            raise
        except BaseException as e:
            self.break_(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            raise

    def send(self, data: bytes, what: str) -> None:
        try:
            self.channel.send(data, what)
        except RemoteConnectionError as e:
            raise type(e)(self.word(str(e))) from None

    def greet(self, conn: Connection[E], hello: bytes) -> E:
        """Send `hello` and return the far end's greeting. A far end that is gone before the greeting
        is written (a missing program, a login banner and exit) is judged by what it sent instead, as
        if it had read the greeting: the race between its exit and the write decides nothing."""
        try:
            self.send(hello, "the greeting")
        except RemoteConnectionError as sending:
            self.next_event(conn, "its greeting", greeting=True)
            raise sending from None
        return self.next_event(conn, "its greeting", greeting=True)

    def receive_nar(
        self,
        conn: Connection[E],
        info: PathInfo,
        sink: Sink,
        request: str,
        *,
        aside: Callable[[E], bool] = lambda event: False,
    ) -> int:
        """The NAR of `info.path`, as the reply to `request` already sent: its bytes go to `sink` as they
        arrive (`NarData`... `NarEnd`), and are checked against `info`'s hash and size at the end (see
        `check_nar`). Events for which `aside` returns True (log lines the caller shows) are passed
        over. Returns the NAR's size."""
        hasher = hashlib.sha256()
        size = 0
        while True:
            event = self.next_event(conn, f"the NAR of '{info.path}'")
            if aside(event):
                continue
            if isinstance(event, NarEnd):
                break
            if not isinstance(event, NarData):
                raise ProtocolError(f"{self.peer} answered {type(event).__name__} to {request}", offset=0)
            hasher.update(event.data)
            size += len(event.data)
            sink(event.data)
        check_nar(info, hasher.digest(), size, self.peer)
        return size

    def next_event(self, conn: Connection[E], what: str, *, greeting: bool = False) -> E:
        """The connection's next event, receiving as needed. At the end of the far end's stream, a
        connection still in its greeting words the error itself (it shows what came instead); anywhere
        else the far end 'closed the connection while xstore waited for `what`'."""
        closed = False
        while True:
            try:
                event = conn.next_event()
            except ProtocolError as e:
                if closed and not greeting:
                    reason = (
                        e.message
                        if "closed the connection" in e.message
                        else (f"{self.peer} closed the connection while xstore waited for {what}")
                    )
                    raise RemoteConnectionError(self.word(reason)) from None
                raise ProtocolError(self.word(e.message), offset=e.context.get("offset", 0)) from None
            if event is not NEED_DATA:
                assert not isinstance(event, Signal)
                return event
            data = self.channel.recv(what)
            if not data:
                if closed:
                    raise RemoteConnectionError(
                        self.word(f"{self.peer} closed the connection while xstore waited for {what}")
                    )
                closed = True
            conn.receive_data(data)

    def close(self) -> None:
        """End the session: the far end sees the end of its input (a process is given time to exit);
        a process's stderr is passed on as notices when the session went well."""
        if self.proc is not None:
            self.proc.close(forward=self.broken is None)
        if self.sock is not None:
            self.sock.close()


def check_nar(info: PathInfo, digest: bytes, size: int, peer: str) -> None:
    """Raise `HashMismatchError` unless a NAR received from `peer` matches `info`."""
    if digest != info.nar_hash or size != info.nar_size:
        got = format_digest(HashAlgorithm.SHA256, digest, HashFormat.SRI)
        raise HashMismatchError(
            f"the NAR of '{info.path}' from {peer} does not match its path info: expected "
            f"{info.nar_hash_sri()} ({info.nar_size} bytes), got {got} ({size} bytes)",
            path=info.path.path,
        )

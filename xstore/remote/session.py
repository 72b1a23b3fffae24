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
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from xstore.errors import HashMismatchError, ProtocolError, RemoteConnectionError, RemoteError
from xstore.hashing import HashAlgorithm, HashFormat, format_digest
from xstore.protocols.common import NarData, NarEnd
from xstore.remote.channel import Channel, RemoteProcess
from xstore.storeapi import PathInfo, Sink
from xstore.storepath import StorePath
from xstore.wire import NEED_DATA, Signal

TYPE_CHECKING = False  # not `from typing import`: a copy over ssh starts without loading typing
if TYPE_CHECKING:
    from typing import Final, TypeVar

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
        """Send `hello` and return the far end's greeting (`send_greeting`, then the answer)."""
        self.send_greeting(conn, hello)
        return self.next_event(conn, "its greeting", greeting=True)

    def send_greeting(self, conn: Connection[E], hello: bytes) -> None:
        """Send `hello`. A far end that is gone before the greeting is written (a missing program, a
        login banner and exit) is judged by what it sent instead, as if it had read the greeting: the
        race between its exit and the write decides nothing."""
        try:
            self.send(hello, "the greeting")
        except RemoteConnectionError as sending:
            self.next_event(conn, "its greeting", greeting=True)
            raise sending from None

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
        import hashlib  # here: a session that only sends NARs starts without OpenSSL

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


PREFETCH: Final = 64  # NARs asked for before they are read (see `AheadReads`)
PREFETCH_NAR: Final = 64 << 10  # larger NARs are asked for only in their turn: at most 4 MiB ever kept


class AheadReads:
    """NARs asked for before they are read, for a store whose protocol answers requests in order.

    `plan(infos)` says which NARs will be read next, in order (as `copy` does). From then on each
    `read` also asks for the next ones, up to `PREFETCH` ahead, so that the far end dumps them while this
    side adds the ones before. A NAR of more than `PREFETCH_NAR` bytes is asked for only once all before
    it have been read, and nothing after it until it has been. A read out of that order, or any other
    request (`drain` first), reads what was asked for: small NARs are kept for their turn, a large one is
    dropped (asked for again in its turn), and a failure the far end reported for one (`RemoteError`) is
    raised when that path is read. Call everything inside the session's exchange.
    """

    def __init__(
        self,
        session: Session,
        request: Callable[[StorePath], bytes],
        receive: Callable[[PathInfo, Sink], int],
    ) -> None:
        self._session = session
        self._request = request
        self._receive = receive
        self._queue: deque[PathInfo] = deque()  # to ask for, in the order they will be read
        self._ahead: deque[PathInfo] = deque()  # asked for, in the order the far end answers
        self._stash: dict[StorePath, bytes | RemoteError] = {}  # read out of turn

    def plan(self, infos: Iterable[PathInfo]) -> None:
        self._queue.extend(infos)

    def read(self, info: PathInfo, sink: Sink) -> int:
        """The NAR of `info.path` to `sink`, checked as `Session.receive_nar` checks it; its size."""
        path = info.path
        if path not in self._stash:
            self._ask()
            if self._ahead and self._ahead[0].path == path:
                self._ahead.popleft()
                return self._receive(info, sink)
            self.drain()
        stashed = self._stash.pop(path, None)
        if isinstance(stashed, RemoteError):
            raise stashed
        if stashed is not None:  # read out of turn, and checked then
            sink(stashed)
            return len(stashed)
        if any(queued.path == path for queued in self._queue):
            self._queue = deque(queued for queued in self._queue if queued.path != path)
        self._session.send(self._request(path), "a request for a NAR")
        return self._receive(info, sink)

    def _ask(self) -> None:
        ahead, queue = self._ahead, self._queue
        requests = []
        # (A batch of requests, about 100 bytes each, fits in an empty pipe or socket buffer: the send
        # cannot block on a far end that is itself blocked writing answers not yet read.)
        while queue and len(ahead) < PREFETCH:
            large = queue[0].nar_size > PREFETCH_NAR
            if ahead and (large or ahead[-1].nar_size > PREFETCH_NAR):
                break
            requests.append(self._request(queue[0].path))
            ahead.append(queue.popleft())
        if requests:
            self._session.send(b"".join(requests), "requests for NARs")

    def drain(self) -> None:
        """Read every NAR asked for, so that the next answer is the next request's."""
        while self._ahead:
            info = self._ahead.popleft()
            parts: list[bytes] = []
            large = info.nar_size > PREFETCH_NAR
            try:
                self._receive(info, (lambda _data: None) if large else parts.append)
            except RemoteError as e:
                self._stash[info.path] = e
                continue
            if not large:
                self._stash[info.path] = b"".join(parts)


def check_nar(info: PathInfo, digest: bytes, size: int, peer: str) -> None:
    """Raise `HashMismatchError` unless a NAR received from `peer` matches `info`."""
    if digest != info.nar_hash or size != info.nar_size:
        got = format_digest(HashAlgorithm.SHA256, digest, HashFormat.SRI)
        raise HashMismatchError(
            f"the NAR of '{info.path}' from {peer} does not match its path info: expected "
            f"{info.nar_hash_sri()} ({info.nar_size} bytes), got {got} ({size} bytes)",
            path=info.path.path,
        )

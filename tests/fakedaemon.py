"""A daemon that misbehaves on purpose: the worker protocol's server machine on a unix socket, in a thread.

`FakeDaemon(socket_path, answer)` accepts connections one after another; for each it completes the
handshake (or not: `greeting` replaces the daemon's greeting bytes) and then calls `answer(server,
request, send)` for every request, where `send(bytes)` writes to the client and `server` makes replies.
An `answer` may send partial replies, garbage, log lines and errors, close the connection (return
False), or stall (sleep). Stopped by `close()`, which also ends stalls.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from xstore.protocols import worker as proto
from xstore.wire import NEED_DATA

Answer = Callable[[proto.WorkerServer, proto.Request, Callable[[bytes], None]], bool]


class FakeDaemon:
    def __init__(
        self,
        path: Path,
        answer: Answer,
        *,
        version: int = proto.VERSION_NIX_2_8,
        greeting: bytes | None = None,
    ) -> None:
        self.path = path
        self.answer = answer
        self.version = version
        self.greeting = greeting
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.requests: list[proto.Request] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.listener.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    self._serve(conn)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                except BaseException as e:  # noqa: BLE001 (kept for the test to see)
                    self.errors.append(e)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        server = proto.WorkerServer(version=self.version)

        def send(data: bytes) -> None:
            conn.sendall(data)

        while not self.stop.is_set():
            event = server.next_event()
            if event is NEED_DATA:
                try:
                    data = conn.recv(1 << 16)
                except TimeoutError:
                    continue
                server.receive_data(data)
                continue
            if isinstance(event, proto.ClientHello):
                if self.greeting is not None:
                    send(self.greeting)
                    return
                send(server.hello())
            elif isinstance(event, proto.ClientHandshake):
                send(server.features() + server.handshake_info("2.8.0") + server.last())
            elif isinstance(event, proto.Request):
                self.requests.append(event)
                if event.op in (proto.Op.ADD_TO_STORE_NAR, proto.Op.ADD_MULTIPLE_TO_STORE):
                    while not isinstance(frame := server.next_event(), proto.FramesEnd):
                        if frame is NEED_DATA:
                            with contextlib.suppress(TimeoutError):
                                server.receive_data(conn.recv(1 << 16))
                if not self.answer(server, event, send):
                    return
            elif isinstance(event, proto.ClientClosed):
                return

    def stall(self, seconds: float) -> None:
        """Sleep inside an answer, waking early when the daemon is closed."""
        self.stop.wait(seconds)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(10)

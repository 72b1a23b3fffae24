"""`xstore serve http`: a store served over HTTP as a binary cache that Nix substitutes from.

hypercorn (the `serve` extra, imported only here) runs a small hand-written ASGI application on its trio
worker; `serve.routes` decides what each request names. Every answer is built per request from the
store, so paths added while the server runs are served at once:

- narinfos and `nix-cache-info` are small texts from the database, signed on the fly with
  `--secret-key`. A local store is queried on the event loop itself: its read-only connection sees every
  new commit and, in WAL mode, never waits for a writer, and a query costs less than the hand-over to a
  worker thread and back (which cut the time Nix takes to copy many small paths by a sixth). Any other
  store (a cache, a daemon) is queried in a worker thread;
- a NAR is dumped live with its original names (a case-hacked store gives the NARs of the paths as they
  were added) by the store's `nar_from_path` in a worker thread, optionally compressed there, and handed
  to the trio thread through a channel without buffer, a dump's block (about 1 MiB) at a time: a NAR
  never sits in memory, however large, and each transfer holds about two blocks whatever its client's
  speed;
- a listing (`.ls`) is built by the NAR parser from the same live dump.

**Integrity.** The store checks the NAR's hash as it dumps and raises at the end when it no longer
matches the registered one (`HashMismatchError`); the NAR's size is checked against the registration on
the way. The block holding the response's last byte is held back until that check has passed (and only
then compressed), and a failed check aborts the response: the connection is closed with the body short
of its `Content-Length`, or without the final chunk of a chunked body (and without the end of the
compressed stream), so no client ever takes a complete response for a NAR that is not the registered
one; the log says why. A range of a NAR is checked the same way: the whole NAR is dumped and hashed, the
range's last block held until then. A small NAR (up to `SMALL_NAR` bytes, most store paths) is read whole
and checked before anything is sent, in the same trip to a worker thread as the database query (from a
local store, up to `INLINE_NAR` bytes, on the event loop with the query); one that fails the check
gets 500.

**Concurrency.** Each request is a trio task; a slow client slows only its own transfer (the producer
thread waits on the channel). A client that disconnects is noticed (`http.disconnect`, or the failed
write) and its task cancelled, which closes the channel: the producer's next hand-over fails and the
dump stops, closing its files. Dumps run on a thread limiter of their own, so queries never wait behind
large downloads. On Linux, connections time out after `USER_TIMEOUT` seconds without the client
acknowledging data (`TCP_USER_TIMEOUT`), so a client that vanished cannot hold a transfer for ever.

**Stopping.** SIGINT, SIGTERM or SIGHUP stop accepting connections and give open transfers `GRACE`
seconds to finish, then cut them; a second signal cuts them at once. Either way the process logs what it
did and exits 0 without a traceback.

**Logging.** One line per request on the log: client, method, target, status, body bytes sent, duration,
and for a transfer that did not complete, why (`client went away`, `cut: server stopping`, the integrity
failure).

HTTP/1.1 only (and 1.0): Nix speaks HTTP/2 only over TLS, and this server has no TLS; an HTTP/2 request
(prior knowledge or `Upgrade: h2c`) gets 505.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import trio

from xstore import __version__
from xstore.compression import Method, open_writer
from xstore.errors import HashMismatchError, ServeError, UnsupportedError, XstoreError
from xstore.serve.routes import (
    Kind,
    Refusal,
    Route,
    Unsatisfiable,
    byte_range,
    cache_info,
    etag,
    nar_hash_nix32,
    narinfo_text,
    route,
)
from xstore.storeapi import PathInfo, Store

try:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve
except ImportError:  # this module is imported only by `xstore serve http`
    raise UnsupportedError(
        "serving over HTTP needs the Python package 'hypercorn': pip install 'xstore[serve]'"
    ) from None

if TYPE_CHECKING:
    from xstore.signing import SecretKey

Log = Callable[[str], None]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]

PIECE: Final = 1 << 20  # at most this many bytes go to the connection at a time (a dump's block)
AHEAD: Final = 1  # pieces of a NAR queued and not yet sent, while the worker makes the next
GRACE: Final = 5.0  # seconds open transfers get to finish once the server is asked to stop
FORCED_EXIT: Final = 10.0  # seconds after the grace when the process exits even with a stuck connection
USER_TIMEOUT: Final = 300  # seconds without acknowledgement before the kernel drops a connection (Linux)
NAR_THREADS: Final = 64  # dumps at once; more transfers wait for a thread
SMALL_NAR: Final = 128 << 10  # NARs up to this size are read whole, checked, then sent in one piece
INLINE_NAR: Final = 64 << 10  # from a local store, read on the event loop up to this size
DB_THREADS: Final = 4
DEFAULT_LISTEN: Final = "127.0.0.1:5000"

MIME_TEXT: Final = b"text/plain; charset=utf-8"
SERVER: Final = f"xstore/{__version__}".encode()


@dataclass(frozen=True, slots=True)
class ServeOptions:
    compression: Method = Method.NONE
    secret_key: SecretKey | None = None
    priority: int = 30


class _End:
    """The producer's mark after the last piece: the NAR checked out."""


_END: Final = _End()


class _Exchange:
    """One request and its answer, with what the log line reports."""

    def __init__(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self._send = send
        self.method: str = scope.get("method", "?")
        self.head = self.method == "HEAD"
        self.status = 0
        self.sent = 0
        self.started = time.monotonic()
        self.note = ""
        self.completed = False
        self.disconnected = False
        headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
        self.headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in headers}

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        headers = [*headers, (b"server", SERVER)]
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes) -> None:
        if not self.head:
            self.sent += len(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        if not self.head:
            self.sent += len(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": False})
        self.completed = True

    async def whole(
        self, status: int, content_type: bytes, data: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(data)), *extra]
        await self.start(status, headers)
        await self.end(b"" if self.head else data)

    async def error(self, status: int, reason: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.note = reason
        await self.whole(status, MIME_TEXT, f"{reason}\n".encode(), extra)


def _cancelled(e: BaseException) -> bool:
    """Whether `e` is a cancellation, alone or in a group (a nursery's)."""
    if isinstance(e, BaseExceptionGroup):
        return e.split(trio.Cancelled)[1] is None
    return isinstance(e, trio.Cancelled)


def _shown_target(scope: Mapping[str, Any]) -> str:
    raw: bytes = scope.get("raw_path", b"") or b""
    query: bytes = scope.get("query_string", b"") or b""
    target = raw + (b"?" + query if query else b"")
    shown = target[:300].decode("ascii", "backslashreplace")
    return "".join(c if c.isprintable() and c != " " else f"\\x{ord(c):02x}" for c in shown) + (
        "..." if len(target) > 300 else ""
    )


class CacheApp:
    """The ASGI application serving `store` as a binary cache (see the module docstring)."""

    def __init__(self, store: Store, options: ServeOptions, log: Log) -> None:
        self.store = store
        self.options = options
        self.log = log
        self.cache_info = cache_info(options.priority, store.store_dir)
        self.nar_threads = trio.CapacityLimiter(NAR_THREADS)
        self.db_threads = trio.CapacityLimiter(DB_THREADS)
        from xstore.store import LocalStore

        self.inline_queries = isinstance(store, LocalStore)  # see the module docstring

    async def __call__(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1003})
        elif kind == "http":
            await self._http(_Exchange(scope, receive, send))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, ex: _Exchange) -> None:
        try:
            await self._answer(ex)
        except BaseException as e:
            if not _cancelled(e):
                if not isinstance(e, Exception):
                    raise
                self._failed(ex, e)
                if not ex.status:
                    with contextlib.suppress(Exception):
                        await ex.error(500, "internal error")
                        self._failed(ex, e)
                return
            ex.note = ex.note or ("client went away" if ex.disconnected else "cut: server stopping")
            raise
        finally:
            self._log(ex)

    def _failed(self, ex: _Exchange, e: Exception) -> None:
        """A failure answers this request only; the server goes on."""
        ex.note = f"error: {e}" if isinstance(e, XstoreError | OSError) else f"bug: {type(e).__name__}: {e}"
        if os.environ.get("XSTORE_DEBUG") == "1":
            import traceback

            self.log("".join(traceback.format_exception(e)).rstrip())

    def _log(self, ex: _Exchange) -> None:
        client = ex.scope.get("client")
        who = f"{client[0]}:{client[1]}" if client else "-"
        if ex.status and not ex.completed and not ex.note:
            ex.note = "client went away" if ex.disconnected else "incomplete"
        line = (
            f"{who} {ex.method} {_shown_target(ex.scope)} {ex.status or '-'} {ex.sent} "
            f"{time.monotonic() - ex.started:.3f}s"
        )
        self.log(line + (f" ({ex.note})" if ex.note else ""))

    async def _answer(self, ex: _Exchange) -> None:
        if ex.scope.get("http_version") not in ("1.0", "1.1"):
            await ex.error(505, "HTTP/1.1 only")
            return
        if ex.method not in ("GET", "HEAD"):
            await ex.error(405, "only GET and HEAD", [(b"allow", b"GET, HEAD")])
            return
        target = route(ex.scope.get("raw_path") or b"", ex.scope.get("query_string") or b"")
        if isinstance(target, Refusal):
            await ex.error(target.status, target.reason)
        elif target.kind is Kind.CACHE_INFO:
            await ex.whole(200, b"text/x-nix-cache-info", self.cache_info)
        elif target.kind is Kind.NARINFO:
            text = await self._db(self._narinfo, target.hash_part)
            if text is None:
                await ex.error(404, "no such path")
            else:
                await ex.whole(200, b"text/x-nix-narinfo", text.encode())
        elif target.kind is Kind.LISTING:
            await self._listing(ex, target)
        else:
            await self._nar(ex, target)

    # -- queries ---------------------------------------------------------------------------------------

    async def _db(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.inline_queries:
            return function(*args)
        return await trio.to_thread.run_sync(function, *args, limiter=self.db_threads)

    def _info(self, hash_part: str) -> PathInfo | None:
        """The registration of the valid path with this hash part; None if there is none, or if its NAR
        size is unknown (a NULL narSize, which Nix's schema allows but no narinfo can carry)."""
        info = self.store.query_info_by_hash_part(hash_part)
        if info is None or info.nar_size <= 0:
            return None
        return info

    def _narinfo(self, hash_part: str) -> str | None:
        info = self._info(hash_part)
        if info is None:
            return None
        return narinfo_text(info, self.options.compression, self.options.secret_key, self.store.store_dir)

    # -- listings --------------------------------------------------------------------------------------

    async def _listing(self, ex: _Exchange, target: Route) -> None:
        info = await self._db(self._info, target.hash_part)
        if info is None:
            await ex.error(404, "no such path")
            return
        if ex.head:
            await ex.start(200, [(b"content-type", b"application/json")])
            await ex.end()
            return
        try:
            text = await trio.to_thread.run_sync(self._build_listing, info, limiter=self.nar_threads)
        except HashMismatchError as e:
            self.log(f"error: {e}")
            await ex.error(500, "the path's contents no longer match its registered hash")
            return
        await ex.whole(200, b"application/json", text.encode())

    def _build_listing(self, info: PathInfo) -> str:
        from xstore.nar.listing import build_index, dump_json, listing_json
        from xstore.storeapi import pipe_nar

        index = pipe_nar(lambda sink: self.store.nar_from_path(info.path, sink, known=info), build_index)
        return dump_json({"version": 1, "root": listing_json(index.root, recursive=True)})

    # -- NARs ------------------------------------------------------------------------------------------

    def _lookup_nar(self, target: Route, want_body: bool) -> tuple[PathInfo | None, bytes | Exception | None]:
        """The path's registration and `_small_body`, in one trip to a worker thread: most paths are
        small, and a request for one then costs no more thread hops than a narinfo's."""
        info = self._info(target.hash_part)
        return info, self._small_body(info, target, want_body)

    def _small_body(self, info: PathInfo | None, target: Route, want_body: bool) -> bytes | Exception | None:
        """For a small NAR (at most `SMALL_NAR` bytes) its whole body, compressed as asked and checked
        against the registration (or the `HashMismatchError` saying why not); None otherwise."""
        if (
            info is None
            or nar_hash_nix32(info) != target.nar_hash
            or not want_body
            or info.nar_size > SMALL_NAR
        ):
            return None
        nar = bytearray()

        def sink(block: bytes) -> None:
            nar.extend(block)
            if len(nar) > info.nar_size:
                raise HashMismatchError(
                    f"path '{info.path}' was modified: its NAR is now longer than the registered "
                    f"{info.nar_size} bytes",
                    path=info.path.path,
                )

        try:
            self.store.nar_from_path(info.path, sink, known=info)
        except HashMismatchError as e:
            return e
        if target.compression is Method.NONE:
            return bytes(nar)
        out = bytearray()
        writer = open_writer(out.extend, target.compression, level=_LEVELS.get(target.compression))
        writer(bytes(nar))
        writer.finish()
        return bytes(out)

    async def _nar(self, ex: _Exchange, target: Route) -> None:
        body: bytes | Exception | None
        if self.inline_queries:
            # A local store is queried on the event loop (see the module docstring), and a NAR of at
            # most `INLINE_NAR` bytes is read there too: less time than the hand-over to a thread.
            info = self._info(target.hash_part)
            if info is None or info.nar_size <= INLINE_NAR:
                body = self._small_body(info, target, not ex.head)
            else:
                body = await trio.to_thread.run_sync(
                    self._small_body, info, target, not ex.head, limiter=self.nar_threads
                )
        else:
            info, body = await trio.to_thread.run_sync(
                self._lookup_nar, target, not ex.head, limiter=self.nar_threads
            )
        if isinstance(body, Exception):
            self.log(f"error: {body}")
            await ex.error(500, "the path's contents no longer match its registered hash")
            return
        if info is None or nar_hash_nix32(info) != target.nar_hash:
            await ex.error(404, "no such NAR" if info is None else "the path's NAR hash is not this one")
            return
        method = target.compression
        headers = [(b"content-type", b"application/x-nix-nar")]
        span: tuple[int, int] | None = None
        if method is Method.NONE:
            validator = etag(info)
            headers += [(b"accept-ranges", b"bytes"), (b"etag", validator.encode())]
            if not ex.head:
                wanted = byte_range(
                    ex.headers.get("range"), info.nar_size, ex.headers.get("if-range"), validator
                )
                if isinstance(wanted, Unsatisfiable):
                    await ex.error(
                        416, "range not satisfiable", [(b"content-range", b"bytes */%d" % info.nar_size)]
                    )
                    return
                span = wanted
            if span is not None:
                first, last = span
                headers += [
                    (b"content-range", b"bytes %d-%d/%d" % (first, last, info.nar_size)),
                    (b"content-length", b"%d" % (last - first + 1)),
                ]
            else:
                headers.append((b"content-length", b"%d" % info.nar_size))
        if ex.head:
            await ex.start(200, headers)
            await ex.end()
            return
        if body is not None:
            if span is not None:
                body = body[span[0] : span[1] + 1]
            elif method is not Method.NONE:
                headers.append((b"content-length", b"%d" % len(body)))
            await ex.start(206 if span is not None else 200, headers)
            await ex.end(body)
            return
        await ex.start(206 if span is not None else 200, headers)
        await self._stream_nar(ex, info, method, span)

    async def _stream_nar(
        self, ex: _Exchange, info: PathInfo, method: Method, span: tuple[int, int] | None
    ) -> None:
        # The worker thread dumps (and compresses) the NAR and queues its pieces for this task without a
        # round trip through it: a piece is queued once the one before it has gone out (`room`), so the
        # worker makes the next piece while this task sends the last, and no more is held than that.
        send_channel, receive_channel = trio.open_memory_channel[bytes | _End](math.inf)
        room = threading.Semaphore(AHEAD)
        stopped = threading.Event()  # set once this task takes no more pieces
        token = trio.lowlevel.current_trio_token()
        failure: list[BaseException] = []
        store = self.store

        def put(piece: bytes | _End) -> None:  # runs in the trio thread
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                send_channel.send_nowait(piece)

        def queue(piece: bytes | _End) -> None:
            room.acquire()
            if stopped.is_set():
                raise trio.BrokenResourceError
            token.run_sync_soon(put, piece)

        def hand_over(data: bytes) -> None:
            if len(data) < 2 * PIECE:  # a compressor's piece: a block and a few bytes
                queue(data)
                return
            for at in range(0, len(data), PIECE):
                queue(data[at : at + PIECE])

        def produce() -> None:
            position = 0
            first, last = span if span is not None else (0, info.nar_size - 1)
            # The part of the NAR holding the response's last byte, kept until the whole NAR has checked
            # out: only then does it go out (or, compressed, into the compressor), with the end.
            withheld: list[bytes] = []

            def sink(block: bytes) -> None:
                nonlocal position
                start = position
                position += len(block)
                if position > info.nar_size:
                    raise HashMismatchError(
                        f"path '{info.path}' was modified: its NAR is now longer than the registered "
                        f"{info.nar_size} bytes",
                        path=info.path.path,
                    )
                if position <= first or start > last:
                    return
                part = block[max(0, first - start) : last + 1 - start] if span is not None else block
                if position > last:
                    withheld.append(part)
                else:
                    writer(part)

            try:
                writer = open_writer(hand_over, method, level=_LEVELS.get(method))
                store.nar_from_path(info.path, sink, known=info)  # raises on a modified NAR
                for part in withheld:
                    writer(part)
                writer.finish()
                queue(_END)
            except (trio.BrokenResourceError, trio.RunFinishedError):
                pass  # the transfer stopped first: nothing left to tell
            except BaseException as e:  # noqa: BLE001 (reported by the trio side)
                failure.append(e)
            finally:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(send_channel.close)

        async def watch_disconnect(cancel: trio.CancelScope) -> None:
            while True:
                message = await ex.receive()
                if message.get("type") == "http.disconnect":
                    ex.disconnected = True
                    cancel.cancel()
                    return

        checked = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, nursery.cancel_scope)
            nursery.start_soon(functools.partial(trio.to_thread.run_sync, produce, limiter=self.nar_threads))
            try:
                with receive_channel:
                    async for piece in receive_channel:
                        if isinstance(piece, _End):
                            checked = True
                            break
                        await ex.body(piece)
                        del piece  # not kept while the next one is awaited
                        room.release()
            finally:
                # Wake a worker waiting for room: it stops at its next piece.
                stopped.set()
                room.release(AHEAD)
            if checked:
                # Shielded: the end of a response runs through hypercorn's connection bookkeeping, which
                # must not be cut half-way (it reports `http.disconnect` to the watcher on the way).
                with trio.CancelScope(shield=True):
                    await ex.end()
            nursery.cancel_scope.cancel()
        if not checked:
            if failure:
                ex.note = f"aborted: {failure[0]}"
            elif ex.disconnected:
                ex.note = "client went away"
            else:
                ex.note = "aborted"
            # Returning without the end of the body makes hypercorn close the connection: the client
            # sees a short or unterminated body, never a complete one.


# Compression levels for NARs compressed while they are sent, chosen for memory (every transfer has its own
# compressor): zstd's default level 3 (about 3 MiB); xz's preset 1 (about 9 MiB, where preset 6, Nix's
# default for caches it writes, takes about 94 MiB).
_LEVELS: Final = {Method.ZSTD: 3, Method.XZ: 1}


# -- the server ----------------------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` as (host, port). Raises `ValueError` with the reason."""
    host, colon, port_text = text.rpartition(":")
    # ASCII digits only (str.isdigit() also takes '²', which int() refuses), and never thousands of them
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not (colon and digits) or int(port_text) > 65535:
        raise ValueError(f"'{text}' is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"'{text}' names no host")
    return host, int(port_text)


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port). Raises `ServeError`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux; accepted connections inherit it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT * 1000)
        sock.bind(address)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def _url_of(sock: socket.socket) -> str:
    address = sock.getsockname()
    host = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
    return f"http://{host}:{address[1]}"


class _LogHandler(logging.Handler):
    """hypercorn's own messages (warnings and errors only) as lines of the server's log."""

    def __init__(self, log: Log) -> None:
        super().__init__(logging.WARNING)
        self._write = log

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self._write(f"hypercorn: {message}")


def serve_http(store: Store, listen: str, options: ServeOptions, log: Log) -> None:
    """Serve `store` on `listen` (`HOST:PORT`; port 0 picks a free one) until SIGINT, SIGTERM or SIGHUP
    (see the module docstring). Logs `listening on URL` once ready, one line per request, and `stopped`.
    Raises `ServeError` when the address cannot be listened on, `ValueError` for a bad `listen`."""
    host, port = parse_listen(listen)
    sock = listen_socket(host, port)
    url = _url_of(sock)
    fd = sock.detach()  # hypercorn's socket object owns the descriptor from now on
    logger = logging.getLogger("xstore.serve.hypercorn")
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    handler = _LogHandler(log)
    logger.addHandler(handler)
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.accesslog = None
    config.errorlog = logger
    config.graceful_timeout = GRACE
    config.include_server_header = False  # `SERVER` instead
    app = CacheApp(store, options, log)
    try:
        trio.run(_run, app, config, url, log)
    finally:
        logger.removeHandler(handler)


async def _run(app: CacheApp, config: Config, url: str, log: Log) -> None:
    stopping = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            app_cancel = trio.CancelScope()

            async def server(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                with app_cancel:
                    await hypercorn_serve(
                        app,  # type: ignore[arg-type]
                        config,
                        shutdown_trigger=stopping.wait,
                        task_status=task_status,
                        mode="asgi",
                    )
                nursery.cancel_scope.cancel()

            await nursery.start(server)
            log(f"listening on {url}")
            async for signum in signals:
                name = signal.Signals(signum).name
                if not stopping.is_set():
                    log(f"stopping ({name}): no new connections; open transfers have {GRACE:g} s to finish")
                    stopping.set()
                    nursery.start_soon(_forced_exit, log, GRACE + FORCED_EXIT)
                else:
                    log(f"stopping ({name} again): cutting open transfers")
                    app_cancel.cancel()
                    nursery.start_soon(_forced_exit, log, 1.0)
    log("stopped")


async def _forced_exit(log: Log, delay: float) -> None:
    """The last resort, for a connection stuck in a write the client never reads (hypercorn shields its
    writes from cancellation): exit without waiting for it after `delay` seconds."""
    await trio.sleep(delay)
    log("stopped (a connection did not close; exiting without it)")
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(0)

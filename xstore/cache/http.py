"""`http://` and `https://` binary caches, through httpx (the `cache` extra).

One `httpx.Client` per store: connections are kept alive and reused, up to 25 at once (Nix's
`http-connections`), and the cache logic fans its queries out over them. As Nix's file transfer does:

- GET reads, HEAD tests, PUT uploads (with the file's MIME type), following redirects;
- 404, 410, 401, 403 and 407 mean "not in this cache" (S3 answers 403 for a missing key);
- 5xx (but 501, 505, 511), 408, 429, timeouts and dropped connections are retried up to 5 times with an
  exponential back-off from 0.1 s; other 4xx are errors at once; a download that drops part way resumes
  with a Range request when the server offers ranges, else fails;
- refused connections, names that do not resolve and TLS failures are one-line errors;
- HTTPS checks certificates against the system's CA store (`ssl.create_default_context()`, which honours
  `SSL_CERT_FILE`);
- credentials come from a netrc file: the URL's `netrc-file=`, else `$NETRC`, else Nix's
  `$NIX_CONF_DIR/netrc` (`/etc/nix/netrc`), else `~/.netrc`, the first that exists.

Every network read has a timeout (30 s to connect, 300 s without a byte, as Nix's stalled-download
timeout), and every wait can be interrupted with Ctrl-C.

Nix: http-binary-cache-store.cc, filetransfer.cc.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import ssl
import time
from collections.abc import Iterator
from typing import IO, Any, Final

from xstore.cache.base import MAX_SMALL_FILE, BinaryCacheStore, SpoolingBackend
from xstore.errors import BinaryCacheError, UnsupportedError
from xstore.storeapi import Read
from xstore.storeurl import StoreUrl

try:
    import httpx
except ImportError:  # this module is imported only for an http(s):// URL
    raise UnsupportedError(
        "http(s):// binary caches need the Python package 'httpx': pip install 'xstore[cache]'"
    ) from None

HTTP_CONNECTIONS: Final = 25
STREAM_CONNECTIONS: Final = 2
ATTEMPTS: Final = 5
RETRY_DELAY: Final = 0.1  # seconds before the first retry; doubled each time
CONNECT_TIMEOUT: Final = 30.0
STALL_TIMEOUT: Final = 300.0
MISSING: Final = frozenset({404, 410, 401, 403, 407})
NOT_TRANSIENT_5XX: Final = frozenset({501, 505, 511})
CHUNK: Final = 1 << 20


def _transient(status: int) -> bool:
    return (status >= 500 and status not in NOT_TRANSIENT_5XX) or status in (408, 429)


def netrc_file(url: StoreUrl) -> str | None:
    """The netrc file to take credentials from (see the module docstring), or None."""
    given = url.param("netrc-file")
    if given:
        return given
    candidates = [
        os.environ.get("NETRC"),
        os.path.join(os.environ.get("NIX_CONF_DIR", "/etc/nix"), "netrc"),
        os.path.expanduser("~/.netrc"),
    ]
    return next((c for c in candidates if c and os.path.isfile(c)), None)


def _cause(e: BaseException) -> BaseException:
    """The innermost cause of an httpx error (the socket or TLS error that started it)."""
    seen = e
    while seen.__cause__ is not None or seen.__context__ is not None:
        nxt = seen.__cause__ or seen.__context__
        assert nxt is not None
        seen = nxt
    return seen


class HttpBackend(SpoolingBackend):
    parallel = HTTP_CONNECTIONS

    def __init__(self, url: StoreUrl) -> None:
        self.base = f"{url.scheme}://{url.authority}{url.path}".rstrip("/")
        self.url = self.base
        self.host = url.authority
        auth = None
        netrc = netrc_file(url)
        if netrc is not None:
            try:
                auth = httpx.NetRCAuth(netrc)
            except (OSError, ValueError) as e:
                raise BinaryCacheError(f"cannot read the netrc file '{netrc}': {e}") from None
        from xstore import __version__

        settings: dict[str, Any] = {
            "verify": ssl.create_default_context(),
            "timeout": httpx.Timeout(STALL_TIMEOUT, connect=CONNECT_TIMEOUT),
            "auth": auth,
            "follow_redirects": True,
            "trust_env": False,
            "headers": {"User-Agent": f"xstore/{__version__}"},
        }
        # Queries fan out over many connections; NARs stream one or two at a time over a pool of their
        # own (each request scans its pool, so a small one keeps a long run of sequential requests cheap).
        self.client = httpx.Client(
            limits=httpx.Limits(max_connections=HTTP_CONNECTIONS, max_keepalive_connections=HTTP_CONNECTIONS),
            **settings,
        )
        self.stream_client = httpx.Client(
            limits=httpx.Limits(
                max_connections=STREAM_CONNECTIONS, max_keepalive_connections=STREAM_CONNECTIONS
            ),
            **settings,
        )

    def close(self) -> None:
        self.client.close()
        self.stream_client.close()

    def _url(self, name: str) -> str:
        if "://" in name:
            if not name.startswith(("http://", "https://")):
                raise BinaryCacheError(f"the URL '{name}' in {self.base} is not an http(s) URL")
            return name
        return f"{self.base}/{name}"

    # -- errors and retries ----------------------------------------------------------------------------

    def _failure(self, e: Exception, url: str) -> BinaryCacheError:
        cause = _cause(e)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return BinaryCacheError(
                f"TLS certificate check failed for {self.host} ({url}): {cause.verify_message}"
            )
        if isinstance(cause, ssl.SSLError):
            return BinaryCacheError(f"TLS failure talking to {self.host} ({url}): {cause.reason or cause}")
        if isinstance(cause, socket.gaierror):
            return BinaryCacheError(f"cannot resolve the host name of {url}: {cause.strerror or cause}")
        if isinstance(cause, ConnectionRefusedError):
            return BinaryCacheError(f"cannot connect to {self.host} ({url}): connection refused")
        if isinstance(e, httpx.TimeoutException):
            return BinaryCacheError(f"timed out talking to {self.host} ({url})")
        reason = str(cause) or str(e) or type(e).__name__
        return BinaryCacheError(f"failure talking to {self.host} ({url}): {reason}")

    @staticmethod
    def _permanent(e: Exception) -> bool:
        cause = _cause(e)
        return isinstance(cause, ssl.SSLError | socket.gaierror)

    def _wait(self, attempt: int) -> None:
        time.sleep(RETRY_DELAY * (2**attempt) * (0.5 + random.random()))  # noqa: S311 (jitter)

    def _send(self, method: str, name: str, *, bulk: bool = False, **kwargs: Any) -> httpx.Response:
        """One request with Nix's retries; the response's body is not read (`stream`). `bulk` requests
        (NARs, uploads) go over the small pool."""
        url = self._url(name)
        rewind = kwargs.pop("rewind", None)
        client = self.stream_client if bulk else self.client
        for attempt in range(ATTEMPTS):
            try:
                request = client.build_request(method, url, **kwargs)
                response = client.send(request, stream=True)
            except httpx.TransportError as e:
                if self._permanent(e) or attempt == ATTEMPTS - 1:
                    raise self._failure(e, url) from None
            else:
                if not _transient(response.status_code) or attempt == ATTEMPTS - 1:
                    return response
                response.close()
            self._wait(attempt)
            if rewind is not None:
                rewind()
        raise AssertionError("unreachable")

    def _unexpected(self, response: httpx.Response, what: str) -> BinaryCacheError:
        return BinaryCacheError(
            f"{what} {response.request.url}: HTTP {response.status_code} {response.reason_phrase}".rstrip()
        )

    # -- the backend -----------------------------------------------------------------------------------

    def get(self, name: str) -> bytes | None:
        response = self._send("GET", name)
        with contextlib.closing(response):
            if response.status_code in MISSING:
                return None
            if response.status_code != 200:
                raise self._unexpected(response, "cannot download")
            out = bytearray()
            try:
                for chunk in response.iter_bytes():
                    out += chunk
                    if len(out) > MAX_SMALL_FILE:
                        raise BinaryCacheError(f"{response.request.url} is over {MAX_SMALL_FILE} bytes")
            except httpx.TransportError as e:
                raise self._failure(e, str(response.request.url)) from None
            return bytes(out)

    def exists(self, name: str) -> bool:
        response = self._send("HEAD", name)
        with contextlib.closing(response):
            if response.status_code in MISSING:
                return False
            if 200 <= response.status_code < 300:
                return True
            raise self._unexpected(response, "cannot check")

    @contextlib.contextmanager
    def open_read(self, url: str) -> Iterator[Read]:
        reader = _Download(self, url)
        try:
            yield reader.read
        finally:
            reader.close()

    def put(self, name: str, data: bytes, content_type: str) -> None:
        response = self._send("PUT", name, content=data, headers={"Content-Type": content_type})
        with contextlib.closing(response):
            if not 200 <= response.status_code < 300:
                raise self._unexpected(response, "cannot upload to")

    def put_file(self, name: str, f: IO[bytes], size: int, content_type: str) -> None:
        def body() -> Iterator[bytes]:
            while chunk := f.read(CHUNK):
                yield chunk

        headers = {"Content-Type": content_type, "Content-Length": str(size)}
        response = self._send(
            "PUT", name, bulk=True, content=body(), headers=headers, rewind=lambda: f.seek(0)
        )
        with contextlib.closing(response):
            if not 200 <= response.status_code < 300:
                raise self._unexpected(response, "cannot upload to")


class _Download:
    """A streamed GET, read in pieces; resumed with a Range request after a drop when the server allows."""

    def __init__(self, backend: HttpBackend, name: str) -> None:
        self.backend = backend
        self.url = backend._url(name)
        self.name = name
        self.offset = 0
        self.pending = b""
        self.done = False
        self.response: httpx.Response | None = None
        self.chunks: Iterator[bytes] | None = None
        self.resumable = False
        self._open({})

    def _open(self, headers: dict[str, str]) -> None:
        response = self.backend._send("GET", self.name, bulk=True, headers=headers)
        expected = 206 if headers else 200
        if response.status_code != expected:
            response.close()
            if response.status_code in MISSING:
                raise BinaryCacheError(f"the NAR file {self.url} is missing (HTTP {response.status_code})")
            raise self.backend._unexpected(response, "cannot download")
        self.resumable = (
            response.headers.get("accept-ranges", "").lower() == "bytes"
            and "content-encoding" not in response.headers
        )
        self.response = response
        self.chunks = response.iter_bytes()

    def read(self, n: int) -> bytes:
        attempt = 0
        while not self.pending and not self.done:
            assert self.chunks is not None
            try:
                self.pending = next(self.chunks, b"")
                if not self.pending:
                    self.done = True
            except httpx.TransportError as e:
                self.close()
                if not self.resumable or attempt >= ATTEMPTS - 1:
                    raise self.backend._failure(e, self.url) from None
                self.backend._wait(attempt)
                attempt += 1
                self._open({"Range": f"bytes={self.offset}-"})
        out, self.pending = self.pending[:n], self.pending[n:]
        self.offset += len(out)
        return out

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None


def open_http_cache(url: StoreUrl, *, create: bool) -> BinaryCacheStore:
    backend = HttpBackend(url)
    try:
        return BinaryCacheStore(url, backend, create=create)
    except BaseException:
        backend.close()
        raise

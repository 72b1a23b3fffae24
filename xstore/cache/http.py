"""`http://` and `https://` binary caches, through urllib3, and libcurl for small GETs (the `cache`
extra).

One `urllib3.PoolManager` per store: connections are kept alive and reused, up to 25 at once (Nix's
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
  `$NIX_CONF_DIR/netrc` (`/etc/nix/netrc`), else `~/.netrc`, the first that exists. They are sent to the
  cache's host only (a redirect to another host drops them).

Every network read has a timeout (30 s to connect, 300 s without a byte, as Nix's stalled-download
timeout), and every wait can be interrupted with Ctrl-C.

urllib3 rather than httpx: a request costs less than half the CPU time, and importing it does not import
trio and anyio (httpcore does when they are installed, as they are here), which matters for a run of
small paths (bench/README.md). The worker threads' GETs of small files (a closure's narinfos and the
NAR files read ahead: two requests per path) go through libcurl (pycurl) where it is installed, for
about a third of urllib3's CPU time each: see `_CurlGets`, which hands every request that is not plain
(an error, a redirect, an encoded body) back to the urllib3 path, so the rules above hold unchanged.

Nix: http-binary-cache-store.cc, filetransfer.cc.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Final

from xstore.cache.base import MAX_SMALL_FILE, BinaryCacheStore, SpoolingBackend
from xstore.errors import BinaryCacheError, UnsupportedError
from xstore.storeapi import Read
from xstore.storeurl import StoreUrl

try:
    import urllib3
    from urllib3.exceptions import HTTPError as TransportError
except ImportError:  # this module is imported only for an http(s):// URL
    raise UnsupportedError(
        "http(s):// binary caches need the Python package 'urllib3': pip install 'xstore[cache]'"
    ) from None

try:
    import pycurl  # the many small GETs of a closure go through libcurl when it is there (`_CurlGets`)
except ImportError:
    pycurl = None

HTTP_CONNECTIONS: Final = 25
OPENING_AT_ONCE: Final = 4  # libcurl's connections being opened at once (`_CurlGets`)
# libcurl's errors that are not the network's: the body over the limit (the write callback ended it, or
# its announced length), a URL it refuses. The request goes to urllib3 at once, without a retry's wait.
_NOT_TRANSPORT: Final = frozenset({3, 23, 63})  # URL_MALFORMAT, WRITE_ERROR, FILESIZE_EXCEEDED
ATTEMPTS: Final = 5
RETRY_DELAY: Final = 0.1  # seconds before the first retry; doubled each time
CONNECT_TIMEOUT: Final = 30.0
STALL_TIMEOUT: Final = 300.0
MAX_REDIRECTS: Final = 10
MISSING: Final = frozenset({404, 410, 401, 403, 407})
NOT_TRANSIENT_5XX: Final = frozenset({501, 505, 511})
CHUNK: Final = 1 << 20
DRAIN_LIMIT: Final = 64 << 10  # an error's body up to this size is read, to keep the connection

Body = bytes | Callable[[], Iterable[bytes]]  # a factory: called again for every attempt


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


def _netrc_auth(file: str, host: str) -> str | None:
    """The `Authorization` header for `host` from the netrc file, or None if it has no entry."""
    import netrc

    try:
        entry = netrc.netrc(file).authenticators(host)
    except (OSError, netrc.NetrcParseError) as e:
        raise BinaryCacheError(f"cannot read the netrc file '{file}': {e}") from None
    if entry is None:
        return None
    login, _account, password = entry
    return urllib3.util.make_headers(basic_auth=f"{login}:{password}")["authorization"]


def _cause(e: BaseException) -> BaseException:
    """The innermost cause of a transport error (the socket or TLS error that started it)."""
    seen = e
    while seen.__cause__ is not None or seen.__context__ is not None:
        nxt = seen.__cause__ or seen.__context__
        assert nxt is not None
        seen = nxt
    return seen


def _finish(response: urllib3.BaseHTTPResponse) -> None:
    """Done with a response whose body is not wanted: a small one is read so that its connection can
    be reused, a large or unknown one closes its connection."""
    remaining = response.length_remaining
    if remaining is not None and remaining <= DRAIN_LIMIT:
        response.drain_conn()  # returns the connection to the pool, or closes it after a failure
    else:
        response.close()


class _Fallback:
    """`_CurlGets.get`'s answer when the urllib3 path must take the request (see there)."""


_FALLBACK: Final = _Fallback()
_RETRY: Final = _Fallback()  # the same, after a failure urllib3 would retry (see `_CurlGets.get`)


class _CurlGets:
    """Plain GETs of small files through libcurl (pycurl): a closure's narinfos and small NAR files,
    1,002 requests for 501 paths, cost about a third of urllib3's CPU time per request this way
    (bench/README.md). Handles are kept in a pool shared by the threads, each keeping its connection
    alive, the most recently used taken first.

    Only the plain outcomes are handled here: a whole 200 response without a `Content-Encoding`, within
    the size limit, or a status that means "not in this cache". Anything else (a failure to connect,
    TLS, a timeout or a dropped connection, a redirect, another status, an encoded or oversized body)
    is `_FALLBACK` or `_RETRY`: the request is made again through urllib3, whose path has the retries,
    redirects and one-line errors (`HttpBackend._send`). Certificates are checked against the same CA
    file and directory as `ssl.create_default_context()` (`_ca_locations`). At most
    `OPENING_AT_ONCE` new handles make their first request (open their connection) at a time.

    Used from worker threads only (`HttpBackend.get`): a transfer in libcurl cannot be interrupted, and
    Ctrl-C reaches the main thread, whose requests go through urllib3, as its waits for the workers
    do."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = [f"{k}: {v}" for k, v in headers.items()]
        self.cafile, self.capath = _ca_locations()
        self._lock = threading.Lock()
        self._free: list[Any] = []  # idle handles, the most recently used last
        self._all: list[Any] = []
        # New connections are opened a few at a time: 25 threads connecting at once overflow the listen
        # queue of a small server (5 in Python's `http.server`), and a dropped SYN costs a second.
        self._opening = threading.BoundedSemaphore(OPENING_AT_ONCE)

    def _new_handle(self) -> Any:
        assert pycurl is not None
        handle = pycurl.Curl()
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.CONNECTTIMEOUT, int(CONNECT_TIMEOUT))
        handle.setopt(pycurl.LOW_SPEED_LIMIT, 1)  # a stalled transfer ends after STALL_TIMEOUT
        handle.setopt(pycurl.LOW_SPEED_TIME, int(STALL_TIMEOUT))
        handle.setopt(pycurl.FOLLOWLOCATION, 0)
        handle.setopt(pycurl.HTTPHEADER, self.headers)
        handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        handle.setopt(pycurl.PROXY, "")  # as urllib3's PoolManager: no proxy from the environment
        if self.cafile:
            handle.setopt(pycurl.CAINFO, self.cafile)
        if self.capath:
            handle.setopt(pycurl.CAPATH, self.capath)
        return handle

    def get(self, url: str, limit: int) -> bytes | _Fallback | None:
        """The file at `url` (at most `limit` bytes), None when the cache does not have it, `_RETRY`
        after a failure that urllib3 might retry (a transport error or a transient status: retried
        after the usual wait, as the first attempt's successor), `_FALLBACK` for the rest."""
        assert pycurl is not None
        parts: list[bytes] = []
        size = 0
        encoded = False

        def write(data: bytes) -> int:
            nonlocal size
            size += len(data)
            if size > limit:
                return 0  # ends the transfer: the urllib3 path says why
            parts.append(data)
            return len(data)

        def header(line: bytes) -> None:
            nonlocal encoded
            if line[:17].lower() == b"content-encoding:":
                encoded = True

        with self._lock:
            handle = self._free.pop() if self._free else None
        new = handle is None
        try:
            if handle is None:
                handle = self._new_handle()
                with self._lock:
                    self._all.append(handle)
            handle.setopt(pycurl.URL, url)
            handle.setopt(pycurl.WRITEFUNCTION, write)
            handle.setopt(pycurl.HEADERFUNCTION, header)
            handle.setopt(pycurl.MAXFILESIZE_LARGE, limit)
            try:
                if new:
                    with self._opening:
                        handle.perform()
                else:
                    handle.perform()
            except pycurl.error as e:
                return _FALLBACK if e.args and e.args[0] in _NOT_TRANSPORT else _RETRY
            status = handle.getinfo(pycurl.RESPONSE_CODE)
        except (pycurl.error, UnicodeError, ValueError):  # a URL or file name libcurl cannot take
            return _FALLBACK
        finally:
            if handle is not None:
                with self._lock:
                    if handle in self._all:  # not closed meanwhile
                        self._free.append(handle)
        if status in MISSING:
            return None
        if status != 200 or encoded:
            return _RETRY if _transient(status) else _FALLBACK
        body = b"".join(parts)
        parts.clear()  # the handle keeps `write` until its next request, not the body
        return body

    def close(self) -> None:
        with self._lock:
            handles, self._all, self._free = self._all, [], []
        for handle in handles:
            with contextlib.suppress(pycurl.error):  # one still in a transfer (not when closed by the store)
                handle.close()


def _curl_fits(url: StoreUrl) -> bool:
    """Whether libcurl can take this cache's small GETs exactly as urllib3 would: pycurl is installed,
    the URL carries no credentials (urllib3 does not send them; libcurl would), and for HTTPS the CA file
    that `ssl.create_default_context()` loads is known (else libcurl would trust its own)."""
    if pycurl is None or "@" in url.authority:
        return False
    return url.scheme != "https" or _ca_locations()[0] is not None


def _ca_locations() -> tuple[str | None, str | None]:
    """The CA file and directory `ssl.create_default_context()` loads (`SSL_CERT_FILE` and
    `SSL_CERT_DIR` first), None where there is none."""
    paths = ssl.get_default_verify_paths()
    cafile = os.environ.get(paths.openssl_cafile_env) or paths.cafile
    capath = os.environ.get(paths.openssl_capath_env) or paths.capath
    return cafile or None, capath or None


class HttpBackend(SpoolingBackend):
    parallel = HTTP_CONNECTIONS

    def __init__(self, url: StoreUrl) -> None:
        self.base = f"{url.scheme}://{url.authority}{url.path}".rstrip("/")
        self.url = self.base
        self.host = url.authority
        from xstore import __version__

        self.headers = {"User-Agent": f"xstore/{__version__}"}
        netrc = netrc_file(url)
        if netrc is not None:
            auth = _netrc_auth(netrc, urllib3.util.parse_url(self.base).host or "")
            if auth is not None:
                self.headers["Authorization"] = auth
        # Connections beyond the pool's size (never more than the parallel requests) are closed after
        # use; a response dropped part way closes its connection instead of returning it.
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=HTTP_CONNECTIONS,
            block=False,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=STALL_TIMEOUT),
            retries=urllib3.Retry(
                total=None,
                connect=0,
                read=0,
                status=0,
                other=0,
                redirect=MAX_REDIRECTS,
                raise_on_status=False,
                respect_retry_after_header=False,
            ),  # our own retries (`_send`); urllib3 follows redirects
            ssl_context=ssl.create_default_context() if url.scheme == "https" else None,
        )
        self._curl = _CurlGets(self.headers) if _curl_fits(url) else None

    def close(self) -> None:
        if self._curl is not None:
            self._curl.close()
        self.pool.clear()

    def _url(self, name: str) -> str:
        if "://" in name:
            if not name.startswith(("http://", "https://")):
                raise BinaryCacheError(f"the URL '{name}' in {self.base} is not an http(s) URL")
            return name
        return f"{self.base}/{name}"

    # -- errors and retries ----------------------------------------------------------------------------

    def _failure(self, e: BaseException, url: str) -> BinaryCacheError:
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
        if isinstance(cause, TimeoutError):
            return BinaryCacheError(f"timed out talking to {self.host} ({url})")
        if isinstance(cause, http.client.IncompleteRead):
            return BinaryCacheError(f"the connection to {self.host} closed before the end of {url}")
        reason = str(cause) or str(e) or type(cause).__name__
        return BinaryCacheError(f"failure talking to {self.host} ({url}): {reason}")

    @staticmethod
    def _permanent(e: BaseException) -> bool:
        cause = _cause(e)
        # TLS failures, unknown hosts, too many redirects
        return isinstance(cause, ssl.SSLError | socket.gaierror | urllib3.exceptions.ResponseError)

    def _wait(self, attempt: int) -> None:
        time.sleep(RETRY_DELAY * (2**attempt) * (0.5 + random.random()))  # noqa: S311 (jitter)

    def _send(
        self,
        method: str,
        name: str,
        *,
        headers: dict[str, str] | None = None,
        body: Body | None = None,
        first_attempt: int = 0,
    ) -> urllib3.BaseHTTPResponse:
        """One request with Nix's retries (from `first_attempt` on, when attempts were made elsewhere);
        the response's body is not read yet."""
        url = self._url(name)
        sent = {**self.headers, **headers} if headers else self.headers
        for attempt in range(first_attempt, ATTEMPTS):
            try:
                response = self.pool.urlopen(
                    method, url, body=body() if callable(body) else body, headers=sent, preload_content=False
                )
            except TransportError as e:
                if self._permanent(e) or attempt == ATTEMPTS - 1:
                    raise self._failure(e, url) from None
            else:
                if not _transient(response.status) or attempt == ATTEMPTS - 1:
                    return response
                _finish(response)
            self._wait(attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _unexpected(response: urllib3.BaseHTTPResponse, what: str, url: str) -> BinaryCacheError:
        return BinaryCacheError(f"{what} {url}: HTTP {response.status} {response.reason or ''}".rstrip())

    # -- the backend -----------------------------------------------------------------------------------

    def get(self, name: str, limit: int = MAX_SMALL_FILE) -> bytes | None:
        limit = min(limit, MAX_SMALL_FILE)
        url = self._url(name)
        first = 0
        if self._curl is not None and threading.current_thread() is not threading.main_thread():
            got = self._curl.get(url, limit)
            if not isinstance(got, _Fallback):
                return got
            if got is _RETRY:
                self._wait(0)
                first = 1  # libcurl's was the first attempt
        response = self._send("GET", name, first_attempt=first)
        if response.status in MISSING:
            _finish(response)
            return None
        if response.status != 200:
            _finish(response)
            raise self._unexpected(response, "cannot download", url)
        try:
            size = response.length_remaining
            if size is not None and size > limit:
                raise BinaryCacheError(f"{url} is over {limit} bytes")
            if size is not None and "content-encoding" not in response.headers:
                return response.read()  # the whole body, checked against its length by urllib3
            out = bytearray()
            while chunk := response.read1(CHUNK):
                out += chunk
                if len(out) > limit:
                    raise BinaryCacheError(f"{url} is over {limit} bytes")
            return bytes(out)
        except TransportError as e:
            raise self._failure(e, url) from None
        finally:
            response.close()  # after the whole body a no-op: its connection is back in the pool

    def exists(self, name: str) -> bool:
        response = self._send("HEAD", name)
        _finish(response)
        if response.status in MISSING:
            return False
        if 200 <= response.status < 300:
            return True
        raise self._unexpected(response, "cannot check", self._url(name))

    @contextlib.contextmanager
    def open_read(self, url: str) -> Iterator[Read]:
        reader = _Download(self, url)
        try:
            yield reader.read
        finally:
            reader.close()

    def put(self, name: str, data: bytes, content_type: str) -> None:
        self._upload(name, data, {"Content-Type": content_type})

    def put_file(self, name: str, f: IO[bytes], size: int, content_type: str) -> None:
        def body() -> Iterator[bytes]:
            f.seek(0)
            while chunk := f.read(CHUNK):
                yield chunk

        self._upload(name, body, {"Content-Type": content_type, "Content-Length": str(size)})

    def _upload(self, name: str, body: Body, headers: dict[str, str]) -> None:
        response = self._send("PUT", name, body=body, headers=headers)
        _finish(response)
        if not 200 <= response.status < 300:
            raise self._unexpected(response, "cannot upload to", self._url(name))


class _Download:
    """A streamed GET, read in pieces; resumed with a Range request after a drop when the server allows."""

    def __init__(self, backend: HttpBackend, name: str) -> None:
        self.backend = backend
        self.url = backend._url(name)
        self.name = name
        self.offset = 0
        self.pending = b""
        self.done = False
        self.response: urllib3.BaseHTTPResponse | None = None
        self.resumable = False
        self._open({})

    def _open(self, headers: dict[str, str]) -> None:
        response = self.backend._send("GET", self.name, headers=headers)
        expected = 206 if headers else 200
        if response.status != expected:
            _finish(response)
            if response.status in MISSING:
                raise BinaryCacheError(f"the NAR file {self.url} is missing (HTTP {response.status})")
            raise self.backend._unexpected(response, "cannot download", self.url)
        self.resumable = (
            response.headers.get("accept-ranges", "").lower() == "bytes"
            and "content-encoding" not in response.headers
        )
        self.response = response

    def read(self, n: int) -> bytes:
        attempt = 0
        while not self.pending and not self.done:
            assert self.response is not None
            try:
                self.pending = self.response.read1(CHUNK)  # what has come, not a full chunk
                if not self.pending:
                    self.done = True
            except TransportError as e:
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
            if not self.done:
                self.response.close()  # part read: the connection cannot be reused
            self.response = None


def open_http_cache(url: StoreUrl, *, create: bool) -> BinaryCacheStore:
    backend = HttpBackend(url)
    try:
        return BinaryCacheStore(url, backend, create=create)
    except BaseException:
        backend.close()
        raise

"""Servers the cache tests start on 127.0.0.1 and stop again: a static HTTP file server (GET and HEAD,
as `python -m http.server`, what Nix and xstore read caches from), the same with PUT (what they upload
to), with switches to misbehave, and moto's standalone S3 server as a subprocess.

Only the server side is hand-made here; the clients under test are Nix and xstore's libcurl, urllib3 and
boto3.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tests.helpers import require_or_skip


class StaticServer(http.server.ThreadingHTTPServer):
    """Serves a directory. `requests` logs `(method, path, client port)`; `drop_after` maps paths to a
    byte count after which the connection is cut mid-body (every time, or only the first time with
    `drop_once`); `fail` maps paths to a number of 500 answers to give first; `forbid` holds paths
    answered with 403; `ranges` offers and serves `Range: bytes=N-`; `auth` ("user", "password")
    requires HTTP basic authentication for everything; `gzip` holds paths sent gzip-compressed with
    `Content-Encoding: gzip`. `headers_log` has each request's headers, in the order of `requests`."""

    daemon_threads = True
    writable = False

    def __init__(self, root: Path, **switches: Any) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []
        self.drop_after: dict[str, int] = dict(switches.get("drop_after", {}))
        self.fail: dict[str, int] = dict(switches.get("fail", {}))
        self.forbid: set[str] = set(switches.get("forbid", ()))
        self.drop_once: bool = switches.get("drop_once", False)
        self.ranges: bool = switches.get("ranges", False)
        self.auth: tuple[str, str] | None = switches.get("auth")
        self.gzip: set[str] = set(switches.get("gzip", ()))
        self.headers_log: list[dict[str, str]] = []
        self.requests_log: list[tuple[str, str, int]] = []
        self.ranges_served: list[int] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))


class UploadServer(StaticServer):
    """A `StaticServer` that also takes PUT, writing each file atomically."""

    writable = True


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server: StaticServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _intercept(self) -> bool:
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.requests.append((self.command, path))
            self.server.headers_log.append(dict(self.headers.items()))
            self.server.requests_log.append((self.command, path, self.client_address[1]))
            if self.server.auth is not None:
                expected = "Basic " + base64.b64encode(":".join(self.server.auth).encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_error(401)
                    return True
            if path in self.server.forbid:
                self.send_error(403)
                return True
            if self.server.fail.get(path, 0) > 0:
                self.server.fail[path] -= 1
                self.send_error(500)
                return True
        return False

    def do_GET(self) -> None:
        if self._intercept():
            return
        path = self.path.split("?", 1)[0]
        if path in self.server.gzip:
            self._send_gzip(Path(self.translate_path(path)))
            return
        wanted = self.headers.get("Range", "")
        if self.server.ranges and wanted.startswith("bytes=") and wanted.endswith("-"):
            self._send_range(int(wanted[6:-1]))
            return
        super().do_GET()

    def _send_gzip(self, path: Path) -> None:
        import gzip

        body = gzip.compress(path.read_bytes())
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_range(self, start: int) -> None:
        with self.server.lock:
            self.server.ranges_served.append(start)
        path = Path(self.translate_path(self.path))
        size = path.stat().st_size
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            shutil.copyfileobj(f, self.wfile)

    def end_headers(self) -> None:
        if self.server.ranges:
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_HEAD(self) -> None:
        if not self._intercept():
            super().do_HEAD()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        with self.server.lock:
            limit = self.server.drop_after.get(self.path.split("?", 1)[0])
            if limit is not None and self.server.drop_once:
                del self.server.drop_after[self.path.split("?", 1)[0]]
        if limit is None:
            shutil.copyfileobj(source, outputfile)
            return
        outputfile.write(source.read(limit))
        outputfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_PUT(self) -> None:
        if self._intercept():
            return
        if not self.server.writable:
            self.send_error(405)
            return
        relative = self.path.split("?", 1)[0].lstrip("/")
        target = self.server.root / relative
        if ".." in Path(relative).parts:
            self.send_error(403)
            return
        size = int(self.headers.get("Content-Length", "0"))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}")
        with open(tmp, "wb") as f:
            _copy_exactly(self.rfile, f, size)
        os.replace(tmp, target)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _copy_exactly(source: Any, target: BinaryIO, size: int) -> None:
    while size:
        chunk = source.read(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("the upload ended early")
        target.write(chunk)
        size -= len(chunk)


@contextlib.contextmanager
def serve(kind: type[StaticServer], root: Path, **switches: Any) -> Iterator[str]:
    """Run `kind` over `root` on 127.0.0.1 while the block runs; yields its base URL. The server object
    is the yielded URL's `.server` attribute's home: use `serving()` to get both."""
    with serving(kind, root, **switches) as (url, _server):
        yield url


@contextlib.contextmanager
def serving(kind: type[StaticServer], root: Path, **switches: Any) -> Iterator[tuple[str, StaticServer]]:
    server = kind(root, **switches)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- S3 ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's standalone S3 server, as a subprocess on 127.0.0.1; yields its endpoint `127.0.0.1:PORT`.
    Stopped (and waited for) afterwards."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        require_or_skip(False, "moto[server] is not installed (pip install 'xstore[test]')")
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's server did not start (exit status {proc.poll()})")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- TLS -------------------------------------------------------------------------------------------------


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A fresh self-signed certificate for `host` (an IP address) and its key, as PEM files in
    `directory`: (certificate, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xstore test cache")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@contextlib.contextmanager
def serving_tls(root: Path, cert_file: Path, key_file: Path) -> Iterator[str]:
    """A `StaticServer` over HTTPS with the given certificate; yields its base URL."""
    import ssl

    server = StaticServer(root)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="test-https", daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

"""`xstore serve http` as a real server on 127.0.0.1, from the outside: httpx and raw sockets as clients,
xstore's own cache client, and /proc readings of the server process.

- What it serves: `nix-cache-info` with the priority asked for, narinfos built from the database and
  signed on the fly, listings, NARs equal to the store's dump (plain, zstd, xz), byte ranges of plain
  NARs (206, 416, several ranges and a stale If-Range ignored), HEAD with GET's headers and no body.
- What it refuses: malformed targets (400: `..`, escapes, absolute form, a query), other methods (405),
  and everything that is not a valid path (404: unknown hashes, temporary directories, lock files,
  `.links`, stale NAR URLs), while it keeps serving.
- Integrity: a path whose contents no longer match its registration is never served whole: plain, as a
  range, or compressed, the body ends short and the log says why.
- Live: a path added while it runs is served at once; `xstore copy --from http://...` copies a closure
  that exports as the original.
- Resources: a client that stops reading holds up no one else; a client killed mid-NAR frees the dump
  (its file closed); SIGINT and SIGTERM stop it cleanly, also with a transfer open; 8 concurrent
  downloads of a 300 MB NAR arrive intact with the server's peak RSS at most 64 MiB (slow).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

if sys.version_info >= (3, 14):
    from compression.zstd import decompress as zstd_decompress
else:
    from backports.zstd import decompress as zstd_decompress

from tests.localstores import add_path, export_bytes, sp
from tests.serving import XSTORE, Server, get_status, raw_request, serving
from xstore.casehack import CaseHackMode
from xstore.fsops import canonicalise
from xstore.nar.dump import dump_path
from xstore.nar.listing import build_index, dump_json, listing_json
from xstore.narinfo import parse_narinfo
from xstore.serve.routes import nar_hash_nix32
from xstore.signing import generate_secret_key, parse_public_keys, signature_valid
from xstore.store import LocalStore
from xstore.storeapi import PathInfo
from xstore.storepath import StorePath

DEP, TOP, BIG = sp("9a", "dep"), sp("3b", "top"), sp("zz", "big")
BIG_SIZE = 64 << 20


def add_sparse(store: LocalStore, path: StorePath, size: int) -> PathInfo:
    """`path` holding one sparse file of `size` zero bytes (quick to make, read and hash)."""
    real = store.real_path(path)
    os.mkdir(real)
    with open(os.path.join(real, b"big.bin"), "wb") as f:
        f.truncate(size)
    canonicalise(real)
    digest = hashlib.sha256()
    nar_size = dump_path(real, digest.update, case_hack=store.settings.case_hack)
    info = PathInfo(path, digest.digest(), nar_size)
    store.register(info)
    return info


def make_store(root: Path) -> dict[StorePath, PathInfo]:
    with LocalStore.create(root, case_hack=CaseHackMode.OFF) as store:
        dep = add_path(store, DEP, {b"lib/": b"", b"lib/libdep.so": b"\x7fELF" + bytes(3000)})
        top = add_path(
            store,
            TOP,
            {
                b"bin/top": b"#!/bin/sh\nexec " + store.real_path(DEP) + b"/lib\n",
                b"link": b"->bin/top",
                b"share/data": os.urandom(300_000),
            },
            DEP,
        )
        big = add_sparse(store, BIG, BIG_SIZE)
    return {DEP: dep, TOP: top, BIG: big}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[StorePath, PathInfo]]:
    """A store no test changes: dep <- top, and big (a 64 MiB sparse file)."""
    root = tmp_path_factory.mktemp("serve-store") / "root"
    return root, make_store(root)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    secret = generate_secret_key("serve-test-1")
    path = tmp_path_factory.mktemp("serve-key") / "sk"
    path.write_text(secret.to_text())
    return path, secret.public_key().to_text()


def nar_of(root: Path, path: StorePath) -> bytes:
    out = bytearray()
    dump_path(root / "nix" / "store" / path.base, out.extend, case_hack=False)
    return bytes(out)


def narinfo(client: httpx.Client, path: StorePath) -> tuple[httpx.Response, str]:
    response = client.get(f"/{path.hash_part}.narinfo")
    assert response.status_code == 200, response.text
    url = next(line[5:] for line in response.text.splitlines() if line.startswith("URL: "))
    return response, url


@contextlib.contextmanager
def client_for(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


# -- what it serves --------------------------------------------------------------------------------------


def test_cache_info_narinfos_listings(
    shared: tuple[Path, dict[StorePath, PathInfo]], key: tuple[Path, str], tmp_path: Path
) -> None:
    root, infos = shared
    with (
        serving(root, tmp_path, "--secret-key", key[0], "--priority", "7") as server,
        client_for(server) as client,
    ):
        info_response = client.get("/nix-cache-info")
        assert info_response.content == b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 7\n"
        assert info_response.headers["content-type"] == "text/x-nix-cache-info"
        keys = parse_public_keys([key[1]])
        for path, info in infos.items():
            response, url = narinfo(client, path)
            assert response.headers["content-type"] == "text/x-nix-narinfo"
            read = parse_narinfo(response.content, "served")
            assert read.info.path == path
            assert read.info.nar_hash == info.nar_hash
            assert read.info.nar_size == info.nar_size
            assert read.info.references == info.references
            assert read.compression == "none"
            assert read.file_hash is not None
            assert read.file_hash.digest == info.nar_hash
            assert url == f"nar/{path.hash_part}-{nar_hash_nix32(info)}.nar"
            (sig,) = read.info.sigs
            assert signature_valid(info.fingerprint(), sig, keys)
            listing = client.get(f"/{path.hash_part}.ls")
            assert listing.headers["content-type"] == "application/json"
            index = build_index(io.BytesIO(nar_of(root, path)).read)
            assert listing.text == dump_json({"version": 1, "root": listing_json(index.root, recursive=True)})
            assert json.loads(listing.text)["version"] == 1
        # HEAD: GET's headers, no body.
        for target in ("/nix-cache-info", f"/{TOP.hash_part}.narinfo", "/" + narinfo(client, TOP)[1]):
            got, head = client.get(target), client.head(target)
            assert head.status_code == 200
            assert head.content == b""
            assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
        assert client.head(f"/{TOP.hash_part}.ls").status_code == 200
        assert client.get(f"/{'1' * 32}.narinfo").status_code == 404
        assert client.head(f"/{'1' * 32}.narinfo").status_code == 404
    log = server.log_lines()
    assert any(" GET /nix-cache-info 200 50 " in line for line in log), log
    assert any(f"HEAD /{TOP.hash_part}.narinfo 200 0 " in line for line in log), log
    assert any(f"GET /{'1' * 32}.narinfo 404 " in line and "(no such path)" in line for line in log), log


def test_nars_plain_and_ranges(shared: tuple[Path, dict[StorePath, PathInfo]], tmp_path: Path) -> None:
    root, infos = shared
    nar = nar_of(root, TOP)
    with serving(root, tmp_path) as server, client_for(server) as client:
        _, url = narinfo(client, TOP)
        whole = client.get(url)
        assert whole.status_code == 200
        assert whole.content == nar
        assert whole.headers["content-length"] == str(len(nar))
        assert whole.headers["content-type"] == "application/x-nix-nar"
        assert whole.headers["accept-ranges"] == "bytes"
        tag = whole.headers["etag"]
        size = len(nar)
        for spec, first, last in [
            ("bytes=0-99", 0, 99),
            ("bytes=1000-", 1000, size - 1),
            ("bytes=-77", size - 77, size - 1),
            (f"bytes={size - 1}-{size + 100}", size - 1, size - 1),
        ]:
            part = client.get(url, headers={"Range": spec})
            assert part.status_code == 206, spec
            assert part.content == nar[first : last + 1], spec
            assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
            assert part.headers["content-length"] == str(last - first + 1)
        assert client.get(url, headers={"Range": "bytes=5-9", "If-Range": tag}).content == nar[5:10]
        unsatisfiable = client.get(url, headers={"Range": f"bytes={size}-"})
        assert unsatisfiable.status_code == 416
        assert unsatisfiable.headers["content-range"] == f"bytes */{size}"
        assert client.get(url, headers={"Range": "bytes=9-2"}).status_code == 416
        for ignored in ({"Range": "bytes=0-1,4-5"}, {"Range": "bytes=0-1", "If-Range": '"stale"'}):
            full = client.get(url, headers=ignored)
            assert full.status_code == 200
            assert full.content == nar
        head = client.head(url, headers={"Range": "bytes=0-1"})
        assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", str(size))
        # A URL naming another NAR hash (a stale narinfo's) is not served.
        stale = url.replace(nar_hash_nix32(infos[TOP]), nar_hash_nix32(infos[DEP]))
        assert client.get(stale).status_code == 404


@pytest.mark.parametrize("method", ["zstd", "xz"])
def test_nars_compressed(shared: tuple[Path, dict[StorePath, PathInfo]], method: str, tmp_path: Path) -> None:
    import lzma

    root, _ = shared
    with serving(root, tmp_path, "--compression", method) as server, client_for(server) as client:
        for path in (DEP, TOP):
            response, url = narinfo(client, path)
            assert f"Compression: {method}\n" in response.text
            assert "FileHash" not in response.text
            assert url.endswith(".nar.zst" if method == "zstd" else ".nar.xz")
            got = client.get(url, headers={"Range": "bytes=0-10"})  # ignored: compressed on the fly
            assert got.status_code == 200
            if path == TOP:  # streamed as it is compressed
                assert "content-length" not in got.headers
                assert got.headers["transfer-encoding"] == "chunked"
            else:  # small: compressed whole, then sent
                assert got.headers["content-length"] == str(len(got.content))
            data = zstd_decompress(got.content) if method == "zstd" else lzma.decompress(got.content)
            assert data == nar_of(root, path)
        # The plain form of the same NAR is served too (a narinfo read before a restart still works).
        _, url = narinfo(client, TOP)
        assert client.get(url.rsplit(".", 1)[0]).content == nar_of(root, TOP)


# -- what it refuses ---------------------------------------------------------------------------------------


def test_refuses_malformed_and_everything_else(
    shared: tuple[Path, dict[StorePath, PathInfo]], tmp_path: Path
) -> None:
    root, infos = shared
    store_dir = root / "nix" / "store"
    # Things in the store directory that are not valid paths: never reachable.
    temp = "1" * 32 + "-xstore-tmp"
    (store_dir / temp).mkdir(exist_ok=True)
    (store_dir / (TOP.base + ".lock")).touch()
    (store_dir / ".links").mkdir(exist_ok=True)
    unregistered = sp("2c", "unregistered")
    (store_dir / unregistered.base).mkdir(exist_ok=True)
    top_nar = f"/nar/{TOP.hash_part}-{nar_hash_nix32(infos[TOP])}.nar"
    with serving(root, tmp_path) as server:
        for target in [
            b"/../nix/var/nix/db/db.sqlite",
            b"/nar/../../nix/var/nix/db/db.sqlite",
            b"/nar/..%2f..%2fdb.sqlite",
            b"/%2e%2e/nix-cache-info",
            b"/./nix-cache-info",
            b"//nix-cache-info",
            b"http://127.0.0.1/nix-cache-info",
            b"*",
            b"/nix-cache-info?x=1",
            top_nar.encode() + b"?hash=" + TOP.hash_part.encode(),
        ]:
            assert get_status(server, target) == 400, target
        for name in [
            f"/{'1' * 32}.narinfo",
            f"/{'1' * 32}.ls",
            f"/nar/{'1' * 32}-{nar_hash_nix32(infos[TOP])}.nar",
            f"/{unregistered.hash_part}.narinfo",
            f"/nar/{unregistered.hash_part}-{nar_hash_nix32(infos[TOP])}.nar",
            f"/nix/store/{TOP.base}",
            f"/nix/store/{TOP.base}.lock",
            f"/nix/store/{temp}",
            "/nix/store/.links",
            "/nix/var/nix/db/db.sqlite",
            "/nar/",
            "/index.html",
        ]:
            assert get_status(server, name.encode()) == (400 if name.endswith("/") else 404), name
        assert get_status(server, b"/nix-cache-info", b"PUT") == 405
        assert get_status(server, b"/nix-cache-info", b"DELETE") == 405
        garbage = raw_request(server, b"\x16\x03\x01 not http at all\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400"), garbage
        # And it goes on serving.
        with client_for(server) as client:
            assert client.get("/nix-cache-info").status_code == 200
            assert client.get(top_nar).content == nar_of(root, TOP)
    log = server.log()
    assert "db.sqlite" in log
    assert "Traceback" not in log


# -- integrity ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["none", "zstd"])
def test_modified_path_is_never_served_whole(method: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    infos = make_store(root)
    victim = root / "nix" / "store" / TOP.base / "share" / "data"
    with serving(root, tmp_path, "--compression", method) as server, client_for(server) as client:
        _, url = narinfo(client, TOP)
        registered = client.get(url).content
        os.chmod(victim.parent, 0o700)
        os.chmod(victim, 0o600)
        with open(victim, "r+b") as f:  # same size, one byte changed
            f.seek(1234)
            byte = f.read(1)
            f.seek(1234)
            f.write(bytes([byte[0] ^ 1]))
        requests: list[dict[str, str]] = [{}]
        if method == "none":
            requests += [{"Range": "bytes=0-99"}, {"Range": "bytes=-5"}]
        for headers in requests:
            got = bytearray()
            with pytest.raises(httpx.RemoteProtocolError):
                _read_into(client, url, headers, got)
            # Less arrived than was asked for, and the connection was closed.
            assert len(got) < (len(registered) if not headers else 100)
        # A path that grew: refused as soon as it passes the registered size.
        with open(victim, "ab") as f:
            f.write(b"more")
        with pytest.raises(httpx.RemoteProtocolError):
            _read_into(client, url, {}, bytearray())
        # Other paths are unaffected.
        _, dep_url = narinfo(client, DEP)
        assert client.get(dep_url).status_code == 200
        assert client.get(f"/{TOP.hash_part}.ls").status_code == 500
        # A small NAR is checked whole before it is sent: 500, nothing of it.
        small = root / "nix" / "store" / DEP.base / "lib" / "libdep.so"
        os.chmod(small.parent, 0o700)
        os.chmod(small, 0o600)
        small.write_bytes(small.read_bytes()[:-1] + b"!")
        refused = client.get(dep_url)
        assert refused.status_code == 500
        assert b"ELF" not in refused.content
    log = server.log()
    assert log.count("was modified") == len(requests) + 3, log
    assert infos[TOP].nar_hash_sri() in log


def _read_into(client: httpx.Client, url: str, headers: dict[str, str], out: bytearray) -> None:
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code in (200, 206)
        for chunk in response.iter_raw():
            out += chunk


# -- live ----------------------------------------------------------------------------------------------------


def test_new_paths_are_served_without_restart(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_store(root)
    late = sp("4d", "late")
    with serving(root, tmp_path) as server, client_for(server) as client:
        assert client.get(f"/{late.hash_part}.narinfo").status_code == 404
        with LocalStore.open(root) as store:
            info = add_path(store, late, {b"hello": b"hello, world\n"}, DEP)
        assert info.nar_size > 0
        response, url = narinfo(client, late)
        assert parse_narinfo(response.content, "x").info.references == (DEP,)
        assert client.get(url).content == nar_of(root, late)


@pytest.mark.parametrize("method", ["none", "zstd"])
def test_xstore_copies_from_it(
    shared: tuple[Path, dict[StorePath, PathInfo]], key: tuple[Path, str], method: str, tmp_path: Path
) -> None:
    root, _ = shared
    dest = tmp_path / "dest"
    with serving(root, tmp_path, "--secret-key", key[0], "--compression", method) as server:
        result = subprocess.run(
            [*XSTORE, "copy", "--from", server.url, "--to", str(dest), "--trusted-public-keys", key[1], "-r",
             TOP.path],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.decode().split()) == sorted([DEP.path, TOP.path])
    with LocalStore.open(root, read_only=True) as source, LocalStore.open(dest, read_only=True) as copied:
        assert export_bytes(copied, [DEP, TOP]) == export_bytes(source, [DEP, TOP])


# -- resources -----------------------------------------------------------------------------------------------


def _start_nar_request(server: Server, url: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET /{url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def _wait_until(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def test_stalled_client_holds_up_no_one(
    shared: tuple[Path, dict[StorePath, PathInfo]], tmp_path: Path
) -> None:
    root, _ = shared
    big_file = str(root / "nix" / "store" / BIG.base / "big.bin")
    with serving(root, tmp_path) as server, client_for(server) as client:
        _, big_url = narinfo(client, BIG)
        stalled = [_start_nar_request(server, big_url) for _ in range(3)]  # never read
        try:
            _wait_until(lambda: big_file in server.open_files(), "the server dumps the big path")
            _, top_url = narinfo(client, TOP)
            for _ in range(5):
                assert client.get(top_url).content == nar_of(root, TOP)
                assert client.get(f"/{DEP.hash_part}.ls").status_code == 200
            full = hashlib.sha256()
            with client.stream("GET", big_url) as response:
                for chunk in response.iter_bytes():
                    full.update(chunk)
            assert full.digest() == shared[1][BIG].nar_hash
        finally:
            for sock in stalled:
                sock.close()
        _wait_until(lambda: big_file not in server.open_files(), "the stalled dumps stop")


def test_client_killed_mid_nar_frees_everything(
    shared: tuple[Path, dict[StorePath, PathInfo]], tmp_path: Path
) -> None:
    root, _ = shared
    big_file = str(root / "nix" / "store" / BIG.base / "big.bin")
    with serving(root, tmp_path) as server, client_for(server) as client:
        _, big_url = narinfo(client, BIG)
        reader = (
            "import socket, sys, time\n"
            "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
            "s.sendall(sys.argv[2].encode())\n"
            "s.recv(65536)\n"
            "print('reading', flush=True)\n"
            "while True:\n"
            "    s.recv(4096)\n"
            "    time.sleep(0.01)\n"
        )
        request = f"GET /{big_url} HTTP/1.1\r\nHost: x\r\n\r\n"
        with subprocess.Popen(
            [sys.executable, "-c", reader, str(server.port), request], stdout=subprocess.PIPE
        ) as proc:
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline() == b"reading\n"
                _wait_until(lambda: big_file in server.open_files(), "the server dumps the big path")
            finally:
                proc.kill()
        _wait_until(lambda: big_file not in server.open_files(), "the dump of the killed client's NAR stops")
        line = server.wait_for_log(f"GET /{big_url} 200 ")
        assert line.endswith("(client went away)"), line
        assert int(line.split()[4]) < BIG_SIZE
        assert client.get(f"/{TOP.hash_part}.narinfo").status_code == 200


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stops_cleanly(shared: tuple[Path, dict[StorePath, PathInfo]], signum: int, tmp_path: Path) -> None:
    root, _ = shared
    with serving(root, tmp_path) as server, client_for(server) as client:
        assert client.get("/nix-cache-info").status_code == 200
        status, log = server.stop(signum)
    assert status == 0
    assert f"stopping ({signal.Signals(signum).name})" in log


def test_stop_with_open_transfers(shared: tuple[Path, dict[StorePath, PathInfo]], tmp_path: Path) -> None:
    """SIGTERM with a slow reader: it gets the grace period, then is cut; a client that does not read at
    all is cut by a second signal (the forced exit, since hypercorn's write to it cannot be cancelled)."""
    root, _ = shared
    with serving(root, tmp_path) as server, client_for(server) as client:
        _, big_url = narinfo(client, BIG)
        stalled = _start_nar_request(server, big_url)
        slow_done = threading.Event()

        def slow_reader() -> None:
            with contextlib.suppress(httpx.HTTPError), client.stream("GET", big_url) as response:
                for _ in response.iter_raw(1 << 16):
                    time.sleep(0.05)
            slow_done.set()

        thread = threading.Thread(target=slow_reader, daemon=True)
        thread.start()
        try:
            server.wait_for_log("^listening")
            time.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for_log(r"^stopping \(SIGTERM\)")
            assert slow_done.wait(30), "the slow transfer was not cut after the grace period"
            server.wait_for_log(r"\(cut: server stopping\)")
            status, log = server.stop(signal.SIGINT)
        finally:
            stalled.close()
            thread.join(30)
    assert status == 0
    assert "Traceback" not in log
    assert log.splitlines()[-1].startswith("stopped"), log


@pytest.mark.slow
def test_memory_with_8_downloads_of_300_mb(tmp_path: Path) -> None:
    """8 clients at once download a 300 MB NAR (a sparse file), each checking its hash; the server's peak
    RSS (VmHWM) stays at or below 64 MiB. The server runs as an installed xstore does (no -X dev,
    whose debug allocator alone adds megabytes)."""
    root = tmp_path / "root"
    with LocalStore.create(root, case_hack=CaseHackMode.OFF) as store:
        info = add_sparse(store, BIG, 300_000_000)
    with serving(root, tmp_path, dev=False) as server, client_for(server) as client:
        _, url = narinfo(client, BIG)
        results: list[bytes] = []
        failures: list[BaseException] = []

        def download() -> None:
            try:
                digest = hashlib.sha256()
                with httpx.stream("GET", f"{server.url}/{url}", timeout=120) as response:
                    assert response.status_code == 200
                    for chunk in response.iter_raw(1 << 20):
                        digest.update(chunk)
                results.append(digest.digest())
            except BaseException as e:  # noqa: BLE001 (reported below)
                failures.append(e)

        threads = [threading.Thread(target=download) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        peak_kib = server.status("VmHWM")
    assert not failures, failures
    assert results == [info.nar_hash] * 8
    assert peak_kib <= 64 * 1024, f"peak RSS {peak_kib} KiB"

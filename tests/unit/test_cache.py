"""Binary caches without Nix: file:// and http:// caches written and read by xstore alone.

The stores are small and made here: a content-addressed source path with colliding names, and an
input-addressed path that refers to it and to itself. HTTP runs against real servers on 127.0.0.1 that
the tests start (`tests/cacheservers.py`): xstore's client is urllib3. What Nix thinks of these caches is in
`tests/compat/test_cache_compat.py`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from tests.cacheservers import StaticServer, UploadServer, serve, serving
from tests.localstores import store_entries
from xstore.cache.base import BinaryCacheStore
from xstore.cache.file import FileBackend
from xstore.cache.http import HttpBackend
from xstore.casehack import CaseHackMode
from xstore.copy import copy_paths
from xstore.errors import (
    BinaryCacheError,
    HashMismatchError,
    InvalidPathError,
    InvalidStoreUrlError,
    SignatureError,
)
from xstore.fsops import remove_tree
from xstore.import_export import export_paths
from xstore.nar.dump import dump_path
from xstore.narinfo import parse_narinfo
from xstore.signing import SecretKey, generate_secret_key, valid_signatures
from xstore.store import LocalStore
from xstore.storeapi import PathInfo
from xstore.storepath import StorePath, make_source_path, make_store_path
from xstore.stores import open_store
from xstore.storeurl import parse_store_url

XSTORE = [sys.executable, "-X", "dev", "-bb", "-W", "error", "-m", "xstore"]


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    root.mkdir()
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def nar_of(tree: Path) -> bytes:
    out = io.BytesIO()
    dump_path(os.fsencode(tree), out.write)
    return out.getvalue()


class Closure:
    """`app` refers to `lib` (content-addressed) and to itself."""

    def __init__(self, tmp: Path) -> None:
        lib_tree, app_tree = tmp / "lib-tree", tmp / "app-tree"
        write_tree(lib_tree, {"README": b"upper\n", "readme": b"lower\n", "sub/x.h": b"#define X\n" * 500})
        self.lib_nar = nar_of(lib_tree)
        digest = hashlib.sha256(self.lib_nar).digest()
        self.lib = make_source_path("lib", digest)
        self.lib_info = PathInfo(self.lib, digest, len(self.lib_nar), (), ca="fixed:r:sha256:" + digest.hex())
        self.app = make_store_path("output:out", hashlib.sha256(b"app").digest(), "app")
        write_tree(
            app_tree,
            {"bin/app": b"#!/bin/sh\nexec " + self.lib.path.encode() + b" " + self.app.path.encode()},
        )
        self.app_nar = nar_of(app_tree)
        self.app_info = PathInfo(
            self.app,
            hashlib.sha256(self.app_nar).digest(),
            len(self.app_nar),
            tuple(sorted((self.lib, self.app))),
            deriver=make_store_path("output:out", bytes(32), "app.drv"),
        )

    def fill(self, store: LocalStore) -> None:
        for info, nar in ((self.lib_info, self.lib_nar), (self.app_info, self.app_nar)):
            store.add_to_store(info, io.BytesIO(nar).read, check_sigs=False)


T = TypeVar("T")


@pytest.fixture
def closure(tmp_path: Path) -> Closure:
    return Closure(tmp_path)


@pytest.fixture
def source(tmp_path: Path, closure: Closure) -> Iterator[LocalStore]:
    with LocalStore.create(tmp_path / "source", case_hack=CaseHackMode.OFF) as store:
        closure.fill(store)
        yield store


@pytest.fixture
def key() -> SecretKey:
    return generate_secret_key("unit-1")


def key_file(tmp_path: Path, key: SecretKey) -> Path:
    path = tmp_path / "sk"
    path.write_text(key.to_text())
    return path


def export_of(store: LocalStore, paths: list[StorePath]) -> bytes:
    out = io.BytesIO()
    export_paths(store, paths, out.write)
    return out.getvalue()


def no_temporaries(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".tmp." in p.name or p.name.startswith(".upload")]


# -- file:// --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["none", "xz", "zstd", "bzip2", "br"])
def test_file_cache_round_trip(
    source: LocalStore, closure: Closure, key: SecretKey, method: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    url = f"file://{cache}?compression={method}&secret-key={key_file(tmp_path, key)}&write-nar-listing=1"
    with open_store(url, create=True) as dst:
        results = copy_paths(source, dst, [closure.app])
        assert [r.path for r in results] == [closure.lib, closure.app]
    assert (cache / "nix-cache-info").read_bytes() == b"StoreDir: /nix/store\n"
    assert no_temporaries(cache)
    narinfo = parse_narinfo((cache / f"{closure.app.hash_part}.narinfo").read_bytes(), "x")
    assert narinfo.compression == method
    assert valid_signatures(narinfo.info, {"unit-1": key.public_key()}) == 1
    assert narinfo.url == f"nar/{narinfo.file_hash and _nix32(narinfo.file_hash.digest)}.nar" + {
        "none": "", "xz": ".xz", "zstd": ".zst", "bzip2": ".bz2", "br": ".br"
    }[method]  # fmt: skip
    nar_file = cache / narinfo.url
    assert nar_file.stat().st_size == narinfo.file_size
    listing = json.loads((cache / f"{closure.lib.hash_part}.ls").read_bytes())
    assert sorted(listing["root"]["entries"]) == ["README", "readme", "sub"]
    with LocalStore.create(tmp_path / "dest") as dest, open_store(f"file://{cache}") as src:
        dest.trust_keys([key.public_key().to_text()])
        copy_paths(src, dest, [closure.app])
        assert export_of(dest, [closure.lib, closure.app]) == export_of(source, [closure.lib, closure.app])
        assert dest.require(closure.app).sigs == narinfo.info.sigs
        assert dest.require(closure.lib).ca == closure.lib_info.ca


def _nix32(digest: bytes) -> str:
    from xstore.hashing import encode_nix32

    return encode_nix32(digest)


def test_signatures_required_from_caches_not_from_local_stores(
    source: LocalStore, closure: Closure, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with open_store(f"file://{cache}?compression=none", create=True) as dst:
        copy_paths(source, dst, [closure.app])  # unsigned
    with LocalStore.create(tmp_path / "dest") as dest, open_store(f"file://{cache}") as src:
        with pytest.raises(SignatureError, match=closure.app.hash_part):
            copy_paths(src, dest, [closure.app])
        assert dest.is_valid(closure.lib)  # content-addressed: no signature needed
        assert not dest.is_valid(closure.app)
        copy_paths(src, dest, [closure.app], check_sigs=False)
        assert dest.is_valid(closure.app)
    with LocalStore.create(tmp_path / "local") as local:
        copy_paths(source, local, [closure.app])  # local to local: trusted
        assert local.is_valid(closure.app)


def test_case_hacked_store_gives_original_names(closure: Closure, tmp_path: Path) -> None:
    with LocalStore.create(tmp_path / "hacked", case_hack=CaseHackMode.ON) as hacked:
        closure.fill(hacked)
        assert sorted(os.listdir(hacked.real_path(closure.lib))) == [
            b"README",
            b"readme~nix~case~hack~1",
            b"sub",
        ]
        with open_store(
            f"file://{tmp_path / 'cache'}?compression=none&write-nar-listing=1", create=True
        ) as dst:
            copy_paths(hacked, dst, [closure.lib])
    nar_files = list((tmp_path / "cache" / "nar").iterdir())
    assert [f.read_bytes() for f in nar_files] == [closure.lib_nar]
    # And into a case-hacked store, the hack is applied as its settings say.
    with LocalStore.create(tmp_path / "again", case_hack=CaseHackMode.ON) as again:
        with open_store(f"file://{tmp_path / 'cache'}") as src:
            copy_paths(src, again, [closure.lib])
        assert sorted(os.listdir(again.real_path(closure.lib))) == [
            b"README",
            b"readme~nix~case~hack~1",
            b"sub",
        ]


def test_cache_to_cache(source: LocalStore, closure: Closure, key: SecretKey, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    with open_store(
        f"file://{first}?compression=xz&secret-key={key_file(tmp_path, key)}", create=True
    ) as dst:
        copy_paths(source, dst, [closure.app])
    with (
        open_store(f"file://{first}") as src,
        open_store(f"file://{second}?compression=xz", create=True) as dst,
    ):
        copy_paths(src, dst, [closure.app])
    for name in (f"{closure.app.hash_part}.narinfo", f"{closure.lib.hash_part}.narinfo"):
        assert (first / name).read_bytes() == (second / name).read_bytes()  # signatures travel too
    assert sorted(p.name for p in (first / "nar").iterdir()) == sorted(
        p.name for p in (second / "nar").iterdir()
    )


def test_upload_needs_references_first(source: LocalStore, closure: Closure, tmp_path: Path) -> None:
    with open_store(f"file://{tmp_path / 'cache'}", create=True) as dst:
        with pytest.raises(InvalidPathError, match="because the reference"):
            dst.add_to_store(closure.app_info, io.BytesIO(closure.app_nar).read)
        with pytest.raises(HashMismatchError):
            dst.add_to_store(closure.lib_info, io.BytesIO(closure.app_nar).read)
        assert dst.query_valid_paths([closure.lib, closure.app]) == set()
    assert no_temporaries(tmp_path / "cache")
    assert list((tmp_path / "cache" / "nar").iterdir()) == []


def test_narinfo_lying_about_sizes(source: LocalStore, closure: Closure, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with open_store(f"file://{cache}?compression=xz", create=True) as dst:
        copy_paths(source, dst, [closure.lib])
    narinfo_file = cache / f"{closure.lib.hash_part}.narinfo"
    original = narinfo_file.read_text()
    file_size = next(line for line in original.splitlines() if line.startswith("FileSize: "))
    for lie, expected in (
        (file_size, f"FileSize: {int(file_size[10:]) - 1}"),
        (f"NarSize: {len(closure.lib_nar)}", f"NarSize: {len(closure.lib_nar) - 8}"),
        (f"NarSize: {len(closure.lib_nar)}", f"NarSize: {len(closure.lib_nar) + 8}"),
    ):
        narinfo_file.write_text(original.replace(lie, expected))
        with LocalStore.create(tmp_path / "dest") as dest, open_store(f"file://{cache}") as src:
            with pytest.raises(HashMismatchError, match=closure.lib.hash_part):
                copy_paths(src, dest, [closure.lib])
            assert not dest.is_valid(closure.lib)
            assert [n for n in store_entries(dest) if not n.startswith(".links")] == []


def _read_both_ways(cache: Path, path: StorePath) -> tuple[object, object]:
    """What reading `path`'s NAR gives whole (`read_small_nar`) and streamed (`nar_from_path`): the bytes,
    or the exception raised."""
    results: list[object] = []
    with open_store(f"file://{cache}") as src:
        assert isinstance(src, BinaryCacheStore)
        try:
            results.append(src.read_small_nar(path))
        except Exception as e:  # noqa: BLE001 (compared below)
            results.append(e)
        parts: list[bytes] = []
        try:
            src.nar_from_path(path, parts.append)
            results.append(b"".join(parts))
        except Exception as e:  # noqa: BLE001
            results.append(e)
    return results[0], results[1]


@pytest.mark.parametrize("method", ["none", "xz", "zstd", "bzip2", "br"])
def test_small_nars_read_whole_as_streamed(
    source: LocalStore, closure: Closure, method: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with open_store(f"file://{cache}?compression={method}", create=True) as dst:
        copy_paths(source, dst, [closure.app])
    for path, nar in ((closure.lib, closure.lib_nar), (closure.app, closure.app_nar)):
        assert _read_both_ways(cache, path) == (nar, nar)


@pytest.mark.parametrize(
    "damage", ["file-size", "file-hash", "nar-size-less", "nar-size-more", "nar-hash", "corrupt", "truncated"]
)
def test_damaged_small_nars_refused_whole_as_streamed(
    source: LocalStore, closure: Closure, damage: str, tmp_path: Path
) -> None:
    """Every lie of a narinfo and every damage to a NAR file is refused by the whole read of a small NAR
    as by the stream, with the same kind of error naming the path; nothing half-checked comes out."""
    cache = tmp_path / "cache"
    with open_store(f"file://{cache}?compression=xz", create=True) as dst:
        copy_paths(source, dst, [closure.lib])
    narinfo_file = cache / f"{closure.lib.hash_part}.narinfo"
    text = narinfo_file.read_text()
    fields = dict(line.split(": ", 1) for line in text.splitlines())
    nar_file = cache / fields["URL"]
    data = bytearray(nar_file.read_bytes())

    def set_field(name: str, value: str) -> None:
        narinfo_file.write_text(text.replace(f"{name}: {fields[name]}", f"{name}: {value}"))

    other = "sha256:" + "1" * 52
    if damage == "file-size":
        set_field("FileSize", str(len(data) + 1))
    elif damage == "file-hash":
        set_field("FileHash", other)
    elif damage == "nar-size-less":
        set_field("NarSize", str(len(closure.lib_nar) - 8))
    elif damage == "nar-size-more":
        set_field("NarSize", str(len(closure.lib_nar) + 8))
    elif damage == "nar-hash":
        set_field("NarHash", other)
    else:  # the file itself, with a narinfo that matches the damaged file: decompression must fail
        if damage == "corrupt":
            data[len(data) // 2] ^= 0x40
        else:
            del data[len(data) * 2 // 3 :]
        nar_file.write_bytes(bytes(data))
        text = text.replace(f"FileSize: {fields['FileSize']}", f"FileSize: {len(data)}")
        set_field("FileHash", "sha256:" + hashlib.sha256(bytes(data)).hexdigest())
    whole, streamed = _read_both_ways(cache, closure.lib)
    assert isinstance(whole, Exception), whole
    assert type(whole) is type(streamed)
    assert closure.lib.hash_part in str(whole)
    assert closure.lib.hash_part in str(streamed)
    # And a copy refuses it, leaving nothing.
    with LocalStore.create(tmp_path / "dest") as dest, open_store(f"file://{cache}") as src:
        with pytest.raises(type(whole), match=closure.lib.hash_part):
            copy_paths(src, dest, [closure.lib])
        assert not dest.is_valid(closure.lib)
        assert [n for n in store_entries(dest) if not n.startswith(".links")] == []


def test_not_a_cache(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BinaryCacheError, match="does not appear to be a binary cache"):
        open_store(f"file://{tmp_path / 'empty'}")
    with pytest.raises(BinaryCacheError, match="does not exist"):
        open_store(f"file://{tmp_path / 'nothing'}")
    with pytest.raises(InvalidStoreUrlError, match="unknown parameter 'compresion'"):
        open_store(f"file://{tmp_path}?compresion=xz")
    with pytest.raises(InvalidStoreUrlError, match="unknown compression method 'lz5'"):
        open_store(f"file://{tmp_path}?compression=lz5", create=True)


def test_cache_info_settings(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "nix-cache-info").write_text("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")
    with open_store(f"file://{cache}") as store:
        assert isinstance(store, BinaryCacheStore)
        assert (store.want_mass_query, store.priority) == (True, 30)
    with open_store(f"file://{cache}?priority=10&want-mass-query=false") as store:
        assert isinstance(store, BinaryCacheStore)
        assert (store.want_mass_query, store.priority) == (False, 10)


def test_narinfo_url_outside_the_cache(source: LocalStore, closure: Closure, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with open_store(f"file://{cache}?compression=none", create=True) as dst:
        copy_paths(source, dst, [closure.lib])
    narinfo_file = cache / f"{closure.lib.hash_part}.narinfo"
    original = narinfo_file.read_text()
    # A copy of the very NAR file outside the cache, with the hash and size the narinfo gives: only the
    # name refuses it, on every route (the whole read of a small NAR included).
    nar_name = next(line[5:] for line in original.splitlines() if line.startswith("URL: "))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.nar").write_bytes((cache / nar_name).read_bytes())
    for url in ("../../etc/passwd", "../outside/x.nar", "nar/../../outside/x.nar"):
        narinfo_file.write_text(original.replace(f"URL: {nar_name}", f"URL: {url}"))
        with (
            LocalStore.create(tmp_path / "dest") as dest,
            open_store(f"file://{cache}") as src,
            pytest.raises(BinaryCacheError, match="points outside the cache"),
        ):
            copy_paths(src, dest, [closure.lib])
        remove_tree(os.fsencode(tmp_path / "dest"))


# -- http:// ----------------------------------------------------------------------------------------------


def test_http_upload_order_and_read_back(
    source: LocalStore, closure: Closure, key: SecretKey, tmp_path: Path
) -> None:
    root = tmp_path / "served"
    root.mkdir()
    with serving(UploadServer, root) as (url, server):
        with open_store(
            f"{url}?compression=zstd&write-nar-listing=1&secret-key={key_file(tmp_path, key)}", create=True
        ) as dst:
            copy_paths(source, dst, [closure.app])
        puts = [path for method, path in server.requests if method == "PUT"]
        assert puts[0] == "/nix-cache-info"
        lib_narinfo, app_narinfo = f"/{closure.lib.hash_part}.narinfo", f"/{closure.app.hash_part}.narinfo"
        nar_puts = [i for i, p in enumerate(puts) if p.startswith("/nar/")]
        assert len(nar_puts) == 2
        # Per path: listing, NAR, narinfo last; the dependency's narinfo before the dependent's NAR.
        assert (
            puts.index(f"/{closure.lib.hash_part}.ls") < nar_puts[0] < puts.index(lib_narinfo) < nar_puts[1]
        )
        assert nar_puts[1] < puts.index(app_narinfo) == len(puts) - 1
        first = len(server.requests_log)
        with LocalStore.create(tmp_path / "dest") as dest, open_store(url) as src:
            dest.trust_keys([key.public_key().to_text()])
            copy_paths(src, dest, [closure.app])
            assert export_of(dest, [closure.lib, closure.app]) == export_of(
                source, [closure.lib, closure.app]
            )
        # Connections were reused: the read-back's five requests (nix-cache-info, two narinfos, two NARs)
        # came over at most three connections: the main thread's (the first three, one after another)
        # and at most two for the NARs, read ahead in parallel by the workers.
        reads = server.requests_log[first:]
        assert len(reads) == 5
        assert len({port for _, _, port in reads[:3]}) == 1
        assert len({port for _, _, port in reads}) <= 3


@pytest.fixture
def served_cache(source: LocalStore, closure: Closure, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    with open_store(f"file://{cache}?compression=none", create=True) as dst:
        copy_paths(source, dst, [closure.app])
    return cache


@pytest.mark.parametrize("status", ["forbid", "missing"])
def test_http_403_and_404_mean_missing(
    served_cache: Path, closure: Closure, status: str, tmp_path: Path
) -> None:
    narinfo = f"/{closure.lib.hash_part}.narinfo"
    if status == "missing":
        (served_cache / narinfo[1:]).unlink()
    forbid = [narinfo] if status == "forbid" else []
    with serve(StaticServer, served_cache, forbid=forbid) as url, open_store(url) as src:
        assert src.query_valid_paths([closure.lib, closure.app]) == {closure.app}
        with pytest.raises(InvalidPathError, match=f"path '{closure.lib}' is not valid"):
            src.query_closure([closure.app])


def test_http_retries_transient_failures(served_cache: Path, closure: Closure, tmp_path: Path) -> None:
    narinfo = f"/{closure.app.hash_part}.narinfo"
    with serving(StaticServer, served_cache, fail={narinfo: 2, "/nix-cache-info": 1}) as (url, server):
        with LocalStore.create(tmp_path / "dest") as dest, open_store(url) as src:
            copy_paths(src, dest, [closure.app], check_sigs=False)
            assert dest.is_valid(closure.app)
        assert [p for m, p in server.requests if p == narinfo].count(narinfo) == 3


def test_small_http_gets_go_through_libcurl(served_cache: Path, closure: Closure, tmp_path: Path) -> None:
    """With pycurl installed, the small files the worker threads read (here the NARs, read ahead) go
    through libcurl, which sends no `Accept-Encoding` (urllib3's `http.client` sends `identity`); the
    main thread's requests (nix-cache-info, and the narinfos of a closure walked one path at a time)
    through urllib3, where Ctrl-C can interrupt them."""
    pytest.importorskip("pycurl")
    with serving(StaticServer, served_cache) as (url, server):
        with LocalStore.create(tmp_path / "dest") as dest, open_store(url) as src:
            copy_paths(src, dest, [closure.app], check_sigs=False)
            assert dest.is_valid(closure.app)
        gets = [(p, h) for (m, p), h in zip(server.requests, server.headers_log, strict=True) if m == "GET"]
        assert len(gets) == 5  # nix-cache-info, two narinfos, two NARs
        assert all(h["User-Agent"].startswith("xstore/") for _, h in gets)
        clients = {p: "urllib3" if h.get("Accept-Encoding") == "identity" else "libcurl" for p, h in gets}
        assert {p: c for p, c in clients.items() if c == "libcurl"} == {
            p: "libcurl" for p in clients if p.startswith("/nar/")
        }
        assert len([p for p in clients if p.startswith("/nar/")]) == 2


def test_an_encoded_narinfo_is_read_through_urllib3(
    served_cache: Path, closure: Closure, tmp_path: Path
) -> None:
    """A narinfo sent with `Content-Encoding: gzip` (as an S3 cache written with Nix's
    `narinfo-compression` serves it) is decoded, also when a worker thread reads it: libcurl's plain
    GET hands it to urllib3's path, and a copy reads the closure."""
    import threading

    narinfo = f"{closure.app.hash_part}.narinfo"
    with serving(StaticServer, served_cache, gzip={f"/{narinfo}"}) as (url, server):
        backend = HttpBackend(parse_store_url(url))
        got: list[bytes | None] = []
        try:
            worker = threading.Thread(target=lambda: got.append(backend.get(narinfo)))
            worker.start()
            worker.join(60)
        finally:
            backend.close()
        assert got == [(served_cache / narinfo).read_bytes()]
        assert [p for _, p in server.requests].count(f"/{narinfo}") == (2 if pycurl_installed() else 1)
        with LocalStore.create(tmp_path / "dest") as dest, open_store(url) as src:
            copy_paths(src, dest, [closure.app], check_sigs=False)
            assert dest.is_valid(closure.app)


def in_worker(call: Callable[[], T]) -> T:
    """`call()` on a thread of its own (where `HttpBackend.get` takes libcurl's path), its result or
    its exception."""
    import threading

    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            outcome.append((False, e))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(120)
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


def test_libcurl_gets_answer_as_urllib3_does(served_cache: Path, closure: Closure) -> None:
    """On libcurl's path (a worker thread): a missing file is None after one request; a transient
    failure is retried through urllib3 after the usual wait, libcurl's attempt counting as the first;
    a file over the limit is refused with urllib3's error, at once."""
    pytest.importorskip("pycurl")
    narinfo = f"{closure.app.hash_part}.narinfo"
    nar = next(p for p in (served_cache / "nar").iterdir() if p.read_bytes() == closure.lib_nar)
    with serving(StaticServer, served_cache, fail={f"/{narinfo}": 2}) as (url, server):
        backend = HttpBackend(parse_store_url(url))
        try:
            assert in_worker(lambda: backend.get("0" * 32 + ".narinfo")) is None
            assert [p for _, p in server.requests] == ["/" + "0" * 32 + ".narinfo"]
            assert in_worker(lambda: backend.get(narinfo)) == (served_cache / narinfo).read_bytes()
            assert [p for _, p in server.requests].count(f"/{narinfo}") == 3  # 500, 500, 200
            with pytest.raises(BinaryCacheError, match="over 100 bytes"):
                in_worker(lambda: backend.get(f"nar/{nar.name}", limit=100))
            assert [p for _, p in server.requests].count(f"/nar/{nar.name}") == 2
        finally:
            backend.close()


def test_ctrl_c_interrupts_a_stalled_http_get(tmp_path: Path) -> None:
    """A GET on the main thread that gets no answer gives way to Ctrl-C at once (it goes through
    urllib3, whose waits Python can interrupt, never through libcurl), not after the 300 s stall
    timeout."""
    import signal
    import socket
    import threading

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        backend = HttpBackend(parse_store_url(f"http://127.0.0.1:{port}"))
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        started = time.monotonic()

        def interrupted_get() -> bytes | None:
            timer.start()  # within `pytest.raises`: the interrupt cannot land outside it
            return backend.get("nix-cache-info")

        try:
            with pytest.raises(KeyboardInterrupt):
                interrupted_get()
        finally:
            timer.cancel()
            backend.close()
        assert time.monotonic() - started < 10


def pycurl_installed() -> bool:
    try:
        import pycurl  # noqa: F401
    except ImportError:
        return False
    return True


def test_http_resumes_a_dropped_download(served_cache: Path, closure: Closure) -> None:
    nar = next(p for p in (served_cache / "nar").iterdir() if p.read_bytes() == closure.lib_nar)
    path = f"/nar/{nar.name}"
    with serving(StaticServer, served_cache, drop_after={path: 100}, drop_once=True, ranges=True) as (
        url,
        server,
    ):
        with open_store(url) as src:  # streamed (a copy would read this small NAR ahead, whole)
            out = io.BytesIO()
            assert src.nar_from_path(closure.lib, out.write) == len(closure.lib_nar)
            assert out.getvalue() == closure.lib_nar
        assert [m for m, p in server.requests if p == path] == ["GET", "GET"]
        assert server.ranges_served == [100]


def test_http_reads_small_nars_ahead(served_cache: Path, closure: Closure, tmp_path: Path) -> None:
    with serving(StaticServer, served_cache) as (url, server):
        with LocalStore.create(tmp_path / "dest") as dest, open_store(url) as src:
            copy_paths(src, dest, [closure.app], check_sigs=False)
            assert dest.is_valid(closure.app)
        nar_gets = [p for m, p in server.requests if m == "GET" and p.startswith("/nar/")]
        assert len(nar_gets) == 2  # each NAR once: read ahead, then used


def test_an_http_nar_is_ready_once_read_ahead(served_cache: Path, closure: Closure, tmp_path: Path) -> None:
    """`nar_ready` (a copy into a local store commits its waiting registrations before a NAR that is
    not): a file:// cache's NARs always are; over HTTP only a NAR file read ahead successfully."""
    with open_store(f"file://{served_cache}") as local:
        assert isinstance(local, BinaryCacheStore)
        assert local.nar_ready(closure.lib)
    app_nar = next(p for p in (served_cache / "nar").iterdir() if p.read_bytes() == closure.app_nar)
    with serving(StaticServer, served_cache) as (url, _), open_store(url) as src:
        assert isinstance(src, BinaryCacheStore)
        assert not src.nar_ready(closure.lib)
        app_nar.unlink()  # its read ahead fails
        src.prefetch([closure.lib, closure.app])
        futures = [src._prefetched[closure.lib], src._prefetched[closure.app]]
        concurrent.futures.wait(futures, timeout=30)
        assert src.nar_ready(closure.lib)
        assert not src.nar_ready(closure.app)


def test_a_nar_file_longer_than_its_narinfo_says_is_not_read_whole(
    served_cache: Path, closure: Closure, tmp_path: Path
) -> None:
    """A cache whose NAR file is far longer than its narinfo's `FileSize` gets no more than that size
    and a byte read into memory, over HTTP (read ahead) and from file:// (read whole): the copy is
    refused with the size mismatch, naming the path, and nothing is added."""
    nar = next(p for p in (served_cache / "nar").iterdir() if p.read_bytes() == closure.lib_nar)
    with nar.open("ab") as f:
        f.write(b"\0" * (8 << 20))
    for backend in (FileBackend(served_cache), None):
        if backend is not None:
            with pytest.raises(BinaryCacheError, match="larger than 100 bytes"):
                backend.get(f"nar/{nar.name}", limit=100)
            assert backend.get(f"nar/{nar.name}", limit=len(closure.lib_nar) + (8 << 20)) == nar.read_bytes()
        with contextlib.ExitStack() as stack:
            url = f"file://{served_cache}"
            if backend is None:
                url, _ = stack.enter_context(serving(StaticServer, served_cache))
                http = HttpBackend(parse_store_url(url))
                stack.callback(http.close)
                with pytest.raises(BinaryCacheError, match="over 100 bytes"):
                    http.get(f"nar/{nar.name}", limit=100)
            dest = stack.enter_context(LocalStore.create(tmp_path / "dest"))
            src = stack.enter_context(open_store(url))
            with pytest.raises(HashMismatchError, match=f"{closure.lib.hash_part}.*file size"):
                copy_paths(src, dest, [closure.lib], check_sigs=False)
            assert not dest.is_valid(closure.lib)
        remove_tree(os.fsencode(tmp_path / "dest"))


def test_http_drop_without_ranges_fails_cleanly(served_cache: Path, closure: Closure, tmp_path: Path) -> None:
    nar = next(p for p in (served_cache / "nar").iterdir() if p.read_bytes() == closure.lib_nar)
    with (
        serve(StaticServer, served_cache, drop_after={f"/nar/{nar.name}": 100}) as url,
        LocalStore.create(tmp_path / "dest") as dest,
        open_store(url) as src,
    ):
        with pytest.raises(BinaryCacheError, match="closed before the end of") as caught:
            copy_paths(src, dest, [closure.lib])
        assert str(closure.lib) in str(caught.value)
        assert not dest.is_valid(closure.lib)
        assert store_entries(dest) == []


def test_http_netrc(served_cache: Path, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password s3cret\n")
    netrc.chmod(0o600)
    with serve(StaticServer, served_cache, auth=("alice", "s3cret")) as url:
        with pytest.raises(BinaryCacheError, match="does not appear to be a binary cache"):
            open_store(url)  # 401 counts as missing, as in Nix
        with open_store(f"{url}?netrc-file={netrc}") as store:
            assert isinstance(store, BinaryCacheStore)


def test_http_errors_are_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [*XSTORE, "copy", "--from", f"http://127.0.0.1:{port}", "--to", str(tmp_path / "dest"), "-r",
         "/nix/store/00000000000000000000000000000000-x"],
        capture_output=True,
        check=False,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    where = f"127.0.0.1:{port} (http://127.0.0.1:{port}/nix-cache-info)"
    assert result.stderr.decode() == f"error: cannot connect to {where}: connection refused\n"
    result = subprocess.run(
        [
            *XSTORE,
            "path-info",
            "--store",
            "http://no-such-host.invalid",
            "/nix/store/00000000000000000000000000000000-x",
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "error: cannot resolve the host name of http://no-such-host.invalid/nix-cache-info"
    )


# -- casehack scan of a cache -----------------------------------------------------------------------------


def test_casehack_scan_of_a_cache_reads_listings_not_nars(
    source: LocalStore, closure: Closure, tmp_path: Path
) -> None:
    with_ls, without_ls = tmp_path / "with-ls", tmp_path / "without-ls"
    with open_store(f"file://{with_ls}?compression=xz&write-nar-listing=1", create=True) as dst:
        copy_paths(source, dst, [closure.app])
    with open_store(f"file://{without_ls}?compression=zstd", create=True) as dst:
        copy_paths(source, dst, [closure.app])
    reports = {}
    for cache in (with_ls, without_ls):
        with serving(StaticServer, cache) as (url, server):
            result = subprocess.run(
                [*XSTORE, "casehack", "scan", url, "-r", closure.app.path, "--json"],
                capture_output=True,
                check=False,
                timeout=60,
            )
            nar_requests = [p for _, p in server.requests if p.startswith("/nar/")]
        assert result.returncode == 3, result.stderr  # README/readme collide
        report = json.loads(result.stdout)
        sources = {info["source"] for info in report["storePaths"].values()}
        if cache == with_ls:
            assert nar_requests == []  # not a byte of NAR
            assert sources == {"listing"}
        else:
            assert len(nar_requests) == 2
            assert sources == {"nar"}
        for info in report["storePaths"].values():
            del info["source"]
        del report["store"]
        reports[cache] = report
    assert reports[with_ls] == reports[without_ls]
    lib = reports[with_ls]["storePaths"][closure.lib.path]
    assert lib["collisions"]["ascii"] == [{"directory": "/", "names": ["README", "readme"]}]
    assert reports[with_ls]["storePaths"][closure.app.path]["collisions"]["ascii"] == []


@pytest.mark.parametrize(
    ("listing", "reason"),
    [
        (b"{", "is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "is nested too deeply"),
        (b'{"version": 2, "root": {}}', "is not a version 1 NAR listing"),
        (b'{"version": 1, "root": {"type": "directory"}}', "has a directory without entries"),
        (b'{"version": 1, "root": {"type": "directory", "entries": {"a": 1}}}', "is not an object"),
        (b'{"version": 1, "root": {"type": "directory", "entries": {"\\ud800": {}}}}', "is not text"),
    ],
)
def test_casehack_scan_of_a_bad_listing_is_one_error(
    source: LocalStore, closure: Closure, tmp_path: Path, listing: bytes, reason: str
) -> None:
    cache = tmp_path / "cache"
    with open_store(f"file://{cache}?write-nar-listing=1", create=True) as dst:
        copy_paths(source, dst, [closure.lib])
    (cache / f"{closure.lib.hash_part}.ls").write_bytes(listing)
    result = subprocess.run(
        [*XSTORE, "casehack", "scan", f"file://{cache}", closure.lib.path],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"error: the listing '{closure.lib.hash_part}.ls' in the binary cache 'file://{cache}' "
    )
    assert reason in lines[0]


def test_copy_reports_bytes_as_they_pass(source: LocalStore, closure: Closure, tmp_path: Path) -> None:
    seen: list[int] = []
    with open_store(f"file://{tmp_path / 'cache'}?compression=xz", create=True) as dst:
        copy_paths(source, dst, [closure.app], on_bytes=seen.append)
    assert sum(seen) == len(closure.lib_nar) + len(closure.app_nar)
    seen.clear()
    with LocalStore.create(tmp_path / "dest") as dest, open_store(f"file://{tmp_path / 'cache'}") as src:
        copy_paths(src, dest, [closure.app], on_bytes=seen.append, check_sigs=False)
    assert sum(seen) == len(closure.lib_nar) + len(closure.app_nar)


def test_https_checks_certificates_against_the_system_store(served_cache: Path, tmp_path: Path) -> None:
    from tests.cacheservers import self_signed_certificate, serving_tls

    cert, key = self_signed_certificate(tmp_path)
    with serving_tls(served_cache, cert, key) as url:
        result = subprocess.run(
            [*XSTORE, "path-info", "--store", url, "/nix/store/00000000000000000000000000000000-x"],
            capture_output=True, check=False, timeout=60,
            env={**os.environ, "SSL_CERT_FILE": "/nonexistent"},
        )  # fmt: skip
        assert result.returncode == 1
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(
            f"error: TLS certificate check failed for 127.0.0.1:{url.rsplit(':', 1)[1]}"
        )
        # Trusted through the system's CA configuration (SSL_CERT_FILE), the same cache opens.
        result = subprocess.run(
            [*XSTORE, "path-info", "--store", url, "/nix/store/00000000000000000000000000000000-x"],
            capture_output=True, check=False, timeout=60, env={**os.environ, "SSL_CERT_FILE": str(cert)},
        )  # fmt: skip
        assert result.returncode == 1
        assert "is not valid in the binary cache" in result.stderr.decode()

"""What `xstore serve http` answers, decided without I/O (`xstore.serve.routes`): which requests name which
file, which are malformed (400) or unknown (404), the narinfo served for a path (read back by the parser
every cache client here uses, signatures checked), and the byte ranges of RFC 9110."""

from __future__ import annotations

import hashlib

import pytest

from xstore.compression import Method
from xstore.narinfo import parse_narinfo
from xstore.serve.http import parse_listen
from xstore.serve.routes import (
    UNSATISFIABLE,
    Kind,
    Refusal,
    Route,
    byte_range,
    cache_info,
    etag,
    nar_hash_nix32,
    narinfo_text,
    route,
)
from xstore.signing import generate_secret_key, parse_public_keys, signature_valid
from xstore.storeapi import PathInfo
from xstore.storepath import parse_store_path

H = "0a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r"  # 32 nix32 characters
NH = "1iyhdy7pffqifk86s59m0bamm7v70sl495hkq84x53rhf6i79fhw"  # 52


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/nix-cache-info", Route(Kind.CACHE_INFO)),
        (f"/{H}.narinfo".encode(), Route(Kind.NARINFO, H)),
        (f"/{H}.ls".encode(), Route(Kind.LISTING, H)),
        (f"/nar/{H}-{NH}.nar".encode(), Route(Kind.NAR, H, NH, Method.NONE)),
        (f"/nar/{H}-{NH}.nar.zst".encode(), Route(Kind.NAR, H, NH, Method.ZSTD)),
        (f"/nar/{H}-{NH}.nar.xz".encode(), Route(Kind.NAR, H, NH, Method.XZ)),
    ],
)
def test_routes(target: bytes, expected: Route) -> None:
    assert route(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        b"/",
        b"/index.html",
        b"/nix-cache-info2",
        f"/{H[:-1]}.narinfo".encode(),  # 31 characters
        f"/{H}e.narinfo".encode(),
        f"/{H[:-1]}e.narinfo".encode(),  # 'e' is not a nix32 character
        f"/{H.upper()}.narinfo".encode(),
        f"/{H}.narinfo.bak".encode(),
        f"/{H}-name.narinfo".encode(),
        f"/nar/{H}-{NH}.nar.bz2".encode(),
        f"/nar/{H}-{NH}.nar.br".encode(),
        f"/nar/{H}.nar".encode(),
        f"/nar/{NH}.nar".encode(),  # a Nix-written cache's name: not one this server gives out
        f"/nar/{H}-{NH[:-1]}.nar".encode(),
        f"/nix/store/{H}-name".encode(),
        b"/nix/var/nix/db/db.sqlite",
        f"/{H}-xstore-tmp".encode(),
        f"/{H}-name.lock".encode(),
        b"/.links/" + NH.encode(),
        b"/log/x.drv",
        b"/realisations/x.doi",
    ],
)
def test_unknown_is_404(target: bytes) -> None:
    refusal = route(target)
    assert isinstance(refusal, Refusal)
    assert refusal.status == 404


@pytest.mark.parametrize(
    ("target", "query"),
    [
        (b"/../nix-cache-info", b""),
        (b"/nar/../nix-cache-info", b""),
        (b"/./nix-cache-info", b""),
        (b"//nix-cache-info", b""),
        (b"/nar//x", b""),
        (b"/nar/", b""),
        (b"/..", b""),
        (b"/%2e%2e/nix-cache-info", b""),
        (b"/nix%2dcache-info", b""),
        (b"/nar\\..\\x", b""),
        (b"/nix-cache-info\x00", b""),
        (b"/a b", b""),
        (b"/\xc3\xa9", b""),
        (b"nix-cache-info", b""),
        (b"http://127.0.0.1/nix-cache-info", b""),
        (b"*", b""),
        (b"", b""),
        (b"/nix-cache-info", b"x=1"),
        (f"/nar/{H}-{NH}.nar".encode(), b"hash=" + H.encode()),
    ],
)
def test_malformed_is_400(target: bytes, query: bytes) -> None:
    refusal = route(target, query)
    assert isinstance(refusal, Refusal)
    assert refusal.status == 400


SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, SIZE - 1)),
        ("bytes=-10", (SIZE - 10, SIZE - 1)),
        ("bytes=-5000", (0, SIZE - 1)),
        ("bytes=990-5000", (990, SIZE - 1)),
        ("bytes=999-999", (999, 999)),
        (" Bytes = 5 - 6 ", (5, 6)),
        ("bytes=1000-", UNSATISFIABLE),
        ("bytes=1000-2000", UNSATISFIABLE),
        ("bytes=-0", UNSATISFIABLE),
        ("bytes=9-5", UNSATISFIABLE),
        ("bytes=x-5", UNSATISFIABLE),
        ("bytes=-", UNSATISFIABLE),
        ("bytes=5", UNSATISFIABLE),
        ("bytes=+5-6", UNSATISFIABLE),
        ("bytes=0-1,5-6", None),  # several ranges: the whole body
        ("items=0-1", None),  # another unit: ignored
        ("bytes", None),
        # More digits than Python converts (4,300): past the end, not an error.
        ("bytes=0-" + "9" * 5000, (0, SIZE - 1)),
        ("bytes=-" + "9" * 5000, (0, SIZE - 1)),
        ("bytes=" + "9" * 5000 + "-", UNSATISFIABLE),
    ],
)
def test_byte_range(header: str | None, expected: object) -> None:
    assert byte_range(header, SIZE) == expected


def test_byte_range_if_range() -> None:
    assert byte_range("bytes=0-9", SIZE, '"abc"', '"abc"') == (0, 9)
    assert byte_range("bytes=0-9", SIZE, '"other"', '"abc"') is None
    assert byte_range("bytes=0-9", SIZE, "Tue, 01 Dec 2026 04:41:08 GMT", '"abc"') is None


def info() -> PathInfo:
    dep = parse_store_path(f"/nix/store/{H}-dep")
    return PathInfo(
        parse_store_path("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello"),
        hashlib.sha256(b"nar").digest(),
        4242,
        (dep,),
        deriver=parse_store_path("/nix/store/11bgd045z0d4icpbc2yyz4gx48ak44la-hello.drv"),
        sigs=("other-1:" + "A" * 86 + "==",),
    )


def test_narinfo_uncompressed_is_nix_none_form() -> None:
    path_info = info()
    text = narinfo_text(path_info, Method.NONE)
    lines = text.splitlines()
    assert lines[:3] == [
        f"StorePath: {path_info.path}",
        f"URL: nar/00bgd045z0d4icpbc2yyz4gx48ak44la-{nar_hash_nix32(path_info)}.nar",
        "Compression: none",
    ]
    assert lines[3] == f"FileHash: sha256:{nar_hash_nix32(path_info)}"
    assert lines[4] == "FileSize: 4242"
    read = parse_narinfo(text.encode(), "x")
    assert read.info == path_info.replace(registration_time=0, ultimate=False)
    assert read.file_hash is not None
    assert read.file_hash.digest == path_info.nar_hash
    assert read.file_size == path_info.nar_size
    assert route(b"/" + read.url.encode()) == Route(
        Kind.NAR, path_info.path.hash_part, nar_hash_nix32(path_info)
    )


@pytest.mark.parametrize("method", [Method.ZSTD, Method.XZ])
def test_narinfo_compressed_has_no_file_hash(method: Method) -> None:
    path_info = info()
    text = narinfo_text(path_info, method)
    assert "FileHash" not in text
    assert "FileSize" not in text
    read = parse_narinfo(text.encode(), "x")
    assert read.compression == method.value
    assert read.url.endswith(".nar" + method.suffix)
    assert read.file_hash is None
    assert read.file_size == 0
    assert route(b"/" + read.url.encode()) == Route(
        Kind.NAR, path_info.path.hash_part, nar_hash_nix32(path_info), method
    )


def test_narinfo_signed_on_the_fly() -> None:
    key = generate_secret_key("serve-test-1")
    path_info = info()
    read = parse_narinfo(narinfo_text(path_info, Method.NONE, key).encode(), "x")
    mine = [s for s in read.info.sigs if s.startswith("serve-test-1:")]
    assert len(mine) == 1
    assert set(read.info.sigs) == {*path_info.sigs, *mine}  # the store's own signatures stay
    keys = parse_public_keys([key.public_key().to_text()])
    assert signature_valid(path_info.fingerprint(), mine[0], keys)
    # A different NAR hash would not verify: the signature covers what the narinfo says.
    assert not signature_valid(path_info.replace(nar_size=1).fingerprint(), mine[0], keys)


def test_cache_info_and_etag() -> None:
    assert cache_info(30) == b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"
    assert cache_info(7, "/gnu/store") == b"StoreDir: /gnu/store\nWantMassQuery: 1\nPriority: 7\n"
    assert etag(info()) == f'"{nar_hash_nix32(info())}"'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "h:123456", "h:\u00b2", "h:" + "9" * 5000, ":80"],
)
def test_listen_addresses_refused_with_our_message(text: str) -> None:
    # Never int()'s own message ('invalid literal', 'Exceeds the limit (4300 digits)'): the CLI shows it.
    with pytest.raises(ValueError, match=r"^'.*' (is not HOST:PORT|names no host)$"):
        parse_listen(text)

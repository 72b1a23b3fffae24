"""narinfo and nix-cache-info, read and written as Nix does, and content addresses.

The golden narinfos are Nix 2.8's own (`nix copy --to file://...`, from the protocol notes and from
Nix-written caches in this suite's compat tests); formatting one parsed from Nix must give Nix's bytes
back. Nix-side byte equality for narinfos xstore writes is in `tests/compat/test_cache_compat.py`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from xstore.contentaddress import is_content_addressed, parse_content_address
from xstore.errors import NarInfoError
from xstore.hashing import HashAlgorithm, decode_nix32
from xstore.narinfo import (
    CacheInfo,
    format_cache_info,
    format_narinfo,
    parse_cache_info,
    parse_narinfo,
)
from xstore.storeapi import PathInfo
from xstore.storepath import (
    StorePath,
    make_fixed_output_path,
    make_source_path,
    make_text_path,
    parse_store_path,
)

# Written by Nix 2.8 (`nix copy --to file://...?compression=xz&secret-key=...`).
NIX_XZ = (Path(__file__).parents[1] / "data" / "narinfo" / "user-environment-xz.narinfo").read_bytes()

# A content-addressed text path without references (compression none: FileHash = NarHash).
TEXT_A = "/nix/store/12wigjpizrn8axaqxj288q1b751qmwya-a"


def text_a_narinfo(extra: bytes = b"") -> bytes:
    nar_hash = "sha256:1s0l8dhpx9bq9rjxxqvssnzh2ybb0c5m1ljn5gvjvszmzm8z2bd1"
    return (
        f"StorePath: {TEXT_A}\n"
        f"URL: nar/{nar_hash[7:]}.nar\n"
        "Compression: none\n"
        f"FileHash: {nar_hash}\n"
        "FileSize: 120\n"
        f"NarHash: {nar_hash}\n"
        "NarSize: 120\n"
        "References: \n"
    ).encode() + extra


def test_nix_narinfo_round_trips_byte_for_byte() -> None:
    narinfo = parse_narinfo(NIX_XZ, "x.narinfo")
    info = narinfo.info
    assert info.path == parse_store_path("/nix/store/awvaiqhp0w783q3lxcrlsh60nwax5303-user-environment")
    assert narinfo.url.endswith(".nar.xz")
    assert narinfo.compression == "xz"
    assert narinfo.file_size == 292
    assert info.nar_size == 1072
    assert [r.name for r in info.references] == ["pkg", "env-manifest.nix"]
    assert info.deriver is not None
    assert info.deriver.name == "user-environment.drv"
    assert info.sigs[0].startswith("test-cache-1:")
    assert format_narinfo(narinfo).encode() == NIX_XZ


def test_empty_references_keep_their_trailing_space() -> None:
    sig = b"Sig: k-1:" + b"A" * 86 + b"==\n"
    data = text_a_narinfo(sig + b"CA: text:sha256:0z4k9ck0mll1pcz3rbvsqljq4jqpxp8nrfpbajcmfz0w3kx8dq0k\n")
    narinfo = parse_narinfo(data, "a.narinfo")
    assert narinfo.info.references == ()
    text = format_narinfo(narinfo)
    assert "\nReferences: \nSig: " in text
    assert text.encode() == data


def test_fields_in_nix_order_and_optional_ones_left_out() -> None:
    narinfo = parse_narinfo(text_a_narinfo(), "a.narinfo")
    lines = [line.split(":")[0] for line in format_narinfo(narinfo).splitlines()]
    assert lines == [
        "StorePath",
        "URL",
        "Compression",
        "FileHash",
        "FileSize",
        "NarHash",
        "NarSize",
        "References",
    ]
    signed = narinfo.info.replace(
        sigs=("b-1:x", "a-1:y"), deriver=parse_store_path(TEXT_A.replace("-a", "-a.drv"))
    )
    text = format_narinfo(type(narinfo)(signed, narinfo.url, "none", narinfo.file_hash, narinfo.file_size))
    assert text.splitlines()[-3:] == [f"Deriver: {TEXT_A[11:]}.drv", "Sig: a-1:y", "Sig: b-1:x"]


@pytest.mark.parametrize(
    ("change", "check"),
    [
        # harmonia leaves References out when empty
        (lambda d: d.replace(b"References: \n", b""), lambda n: n.info.references == ()),
        # a missing Compression means bzip2
        (lambda d: d.replace(b"Compression: none\n", b""), lambda n: n.compression == "bzip2"),
        (lambda d: d + b"Deriver: unknown-deriver\n", lambda n: n.info.deriver is None),
        # unknown names (and 2.8's System) are ignored
        (lambda d: d + b"System: x86_64-linux\nFancy: yes\n", lambda n: n.info.nar_size == 120),
        # an empty References line may be followed by another (Nix checks only for a non-empty first)
        (lambda d: d + b"References: \n", lambda n: n.info.references == ()),
        # sizes with leading zeros, as Nix's number parsing takes them
        (
            lambda d: d.replace(b"NarSize: 120", b"NarSize: " + b"0" * 5000 + b"120"),
            lambda n: n.info.nar_size == 120,
        ),
        # harmonia's relative URL with a query string
        (lambda d: d.replace(b"URL: nar/", b"URL: nar/x.nar?hash=1&u=nar/"), lambda n: "?hash=" in n.url),
        # hashes in any prefixed form
        (
            lambda d: d.replace(
                b"FileHash: sha256:1s0l8dhpx9bq9rjxxqvssnzh2ybb0c5m1ljn5gvjvszmzm8z2bd1",
                b"FileHash: sha256-" + b"A" * 43 + b"=",
            ),
            lambda n: n.file_hash is not None and n.file_hash.digest == bytes(32),
        ),
    ],
)
def test_lenient_reading(change: object, check: object) -> None:
    assert callable(change)
    assert callable(check)
    assert check(parse_narinfo(change(text_a_narinfo()), "a.narinfo"))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"StorePath /nix/store/x\n", "expecting ':' at line 1"),
        (text_a_narinfo().rstrip(b"\n"), "expecting '\\n' at line 8"),
        (
            text_a_narinfo(b"References: 12wigjpizrn8axaqxj288q1b751qmwya-a\nReferences: \n"),
            "extra References at line 10",
        ),
        (
            text_a_narinfo(b"CA: text:sha256:" + b"0" * 52 + b"\nCA: text:sha256:" + b"0" * 52 + b"\n"),
            "extra CA at line 10",
        ),
        (text_a_narinfo().replace(b"StorePath: ", b"Store: "), "StorePath missing"),
        (text_a_narinfo().replace(b"NarHash: ", b"NarHashX: "), "NarHash missing"),
        (text_a_narinfo().replace(b"URL: ", b"U: "), "URL missing"),
        (text_a_narinfo().replace(b"NarSize: 120", b"NarSize: 0"), "NarSize missing or zero"),
        (text_a_narinfo().replace(b"NarSize: 120", b"NarSize: -1"), "invalid NarSize at line 7"),
        (text_a_narinfo().replace(b"FileSize: 120", b"FileSize: 1e3"), "invalid FileSize at line 5"),
        (
            text_a_narinfo().replace(b"FileSize: 120", b"FileSize: " + b"9" * 5000),
            "invalid FileSize at line 5",
        ),
        (text_a_narinfo().replace(b"NarSize: 120", b"NarSize: " + b"9" * 5000), "invalid NarSize at line 7"),
        (text_a_narinfo().replace(b"FileHash: sha256:", b"FileHash: sha257:"), "bad hash at line 4"),
        (text_a_narinfo().replace(b"NarHash: sha256:1", b"NarHash: sha256:e"), "bad hash at line 6"),
        (text_a_narinfo().replace(b"StorePath: /nix/store/", b"StorePath: /gnu/store/"), "at line 1"),
        (text_a_narinfo(b"Deriver: not-a-path\n"), "at line 9"),
        (text_a_narinfo(b"CA: nonsense\n"), "is not a content address"),
        (text_a_narinfo().replace(b"URL: nar/", b"URL: nar/\0"), "URL holds a control character at line 2"),
        (text_a_narinfo().replace(b"URL: nar/", b"URL: nar/\x7f"), "URL holds a control character at line 2"),
        (text_a_narinfo().replace(b"URL: nar/", b"URL: nar/\t"), "URL holds a control character at line 2"),
        (b"\xff: x\n", "not UTF-8"),
    ],
)
def test_corrupt_narinfos(data: bytes, reason: str) -> None:
    with pytest.raises(NarInfoError) as caught:
        parse_narinfo(data, "cache/x.narinfo")
    message = str(caught.value)
    assert message.startswith("NAR info file 'cache/x.narinfo' is corrupt: ")
    assert reason in message
    assert "\n" not in message


def test_narinfo_in_another_store_dir() -> None:
    data = text_a_narinfo().replace(b"/nix/store/", b"/gnu/store/")
    assert parse_narinfo(data, "x", store_dir="/gnu/store").info.path.path == TEXT_A
    assert format_narinfo(parse_narinfo(data, "x", store_dir="/gnu/store"), "/gnu/store").encode() == data


def test_cache_info() -> None:
    assert format_cache_info() == b"StoreDir: /nix/store\n"
    assert parse_cache_info(b"StoreDir: /nix/store\n", "x") == CacheInfo("/nix/store", None, None)
    text = b"junk line\nStoreDir:   /nix/store  \nWantMassQuery: 1\nPriority: 40\nOther: x\n"
    assert parse_cache_info(text, "x") == CacheInfo("/nix/store", True, 40)
    assert parse_cache_info(b"WantMassQuery: 0\n", "x").want_mass_query is False
    with pytest.raises(NarInfoError, match="Priority 'high' is not a number"):
        parse_cache_info(b"Priority: high\n", "x")


# -- content addresses ---------------------------------------------------------------------------------


def test_text_path_content_address() -> None:
    contents = b"x"
    digest = hashlib.sha256(contents).digest()
    path = make_text_path("a", digest)
    assert path.path == TEXT_A  # builtins.toFile "a" "x", as tests/nixstores.py has it
    ca = f"text:sha256:{digest.hex()}"
    info = PathInfo(path, bytes(32), 120, (), ca=ca)
    assert is_content_addressed(info)
    assert not is_content_addressed(info.replace(ca=None))
    other = make_text_path("b", digest)
    assert not is_content_addressed(info.replace(path=StorePath(other.hash_part, "a")))
    assert not is_content_addressed(info.replace(references=(other,)))  # changes the path
    assert not is_content_addressed(info.replace(references=(path,)))  # text cannot refer to itself


def test_fixed_output_content_addresses() -> None:
    nar = hashlib.sha256(b"nar").digest()
    source = make_source_path("src", nar)
    info = PathInfo(source, nar, 100, (), ca="fixed:r:sha256:" + nar.hex())
    assert is_content_addressed(info)
    ref = make_text_path("r", hashlib.sha256(b"r").digest())
    with_refs = make_source_path("src", nar, [ref], self_reference=True)
    assert is_content_addressed(info.replace(path=with_refs, references=(ref, with_refs)))
    flat = make_fixed_output_path("f", HashAlgorithm.SHA1, bytes(20), recursive=False)
    flat_info = PathInfo(flat, nar, 10, (), ca="fixed:sha1:" + "0" * 40)
    assert is_content_addressed(flat_info)
    assert not is_content_addressed(flat_info.replace(references=(ref,)))  # flat paths have no refs
    assert not is_content_addressed(flat_info.replace(ca="fixed:git:sha1:" + "0" * 40))


def test_content_address_forms() -> None:
    digest = decode_nix32("1s0l8dhpx9bq9rjxxqvssnzh2ybb0c5m1ljn5gvjvszmzm8z2bd1")
    parsed = parse_content_address("fixed:r:sha256:1s0l8dhpx9bq9rjxxqvssnzh2ybb0c5m1ljn5gvjvszmzm8z2bd1")
    assert (parsed.method, parsed.algorithm, parsed.digest) == ("fixed:r", HashAlgorithm.SHA256, digest)
    assert parse_content_address("fixed:r:sha256:" + digest.hex()).digest == digest
    for bad in ("nonsense", "text:md5:" + "0" * 32, "fixed:r:sha256:zz", "source:sha256:x"):
        with pytest.raises(NarInfoError):
            parse_content_address(bad)

"""xstore.storepath: every validation rule with its message, ordering, round trips, and store path hashes.

The known store paths were computed by Nix 2.8 (`nix-store --add`, `--add-fixed`, `builtins.toFile`);
tests/compat/test_storepath_compat.py checks random contents and names against it. The rules are current
Nix's (path.cc `StorePath::StorePath`, `checkName`), stricter than 2.8 in a few places noted below.
"""

from __future__ import annotations

import hashlib
import pickle
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xstore.errors import InvalidArgumentError, InvalidHashError, XstoreError
from xstore.hashing import NIX32_ALPHABET, HashAlgorithm, decode_nix32, encode_nix32
from xstore.storepath import (
    HASH_PART_LEN,
    MAX_NAME_LEN,
    InvalidStorePathError,
    StorePath,
    check_name,
    compress_hash,
    make_fixed_output_path,
    make_source_path,
    make_store_path,
    make_text_path,
    parse_base_name,
    parse_store_path,
    signature_fingerprint,
)

H = "kc6j97s74i9f7h7lb31bmqzb2r7jfdil"  # the hash part of `nix-store --add` of "hello\n" as f1.txt
NAME_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-._?="
ALLOWED_HINT = "(allowed: letters, digits and + - . _ ? =)"

# Nix 2.8's results for the fact sheet's inputs (f1.txt holds "hello\n", a = toFile "a" "x",
# b = toFile "b" "ref ${a}", c = toFile "c" "ref ${b} ${a}").
F1_NAR_SHA256 = bytes.fromhex("1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13")
F1_SOURCE = "/nix/store/kc6j97s74i9f7h7lb31bmqzb2r7jfdil-f1.txt"
F1_FLAT_SHA256 = "/nix/store/14y6k41ag3zv5l5f1sl00pmz0shzyhpf-f1.txt"
F1_FLAT_SHA1 = "/nix/store/icf8y9crdzdwdddbvyyhcdvfmxbf02ya-f1.txt"
TEXT_A = "/nix/store/12wigjpizrn8axaqxj288q1b751qmwya-a"
TEXT_B = "/nix/store/kbnsdqvza4r1hzcr5vs2bhx8kv150g37-b"
TEXT_C = "/nix/store/kg18idcagfmr66qabqpqii5l02ghh86g-c"
# The same with `--store 'local?root=ROOT&store=/foo/store'`.
FOO_F1_SOURCE = "/foo/store/mqqk3fb5167mjmskcxdpi3m7a8s2njq3-f1.txt"
FOO_TEXT_A = "/foo/store/pih3w5f444614n4vr1cxzzmnjx6nvi9d-a"
FOO_TEXT_B = "/foo/store/zhgp98sry95jaj37c7jhwrs368169rm7-b"


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ---------------------------------------------------------------------------------------------------
# strategies (local: nothing else in the suite needs store paths yet)

hash_parts = st.text(NIX32_ALPHABET, min_size=HASH_PART_LEN, max_size=HASH_PART_LEN)


def _valid_name(name: str) -> bool:
    return name not in (".", "..") and not name.startswith((".-", "..-"))


names = st.one_of(
    st.text(NAME_CHARS, min_size=1, max_size=MAX_NAME_LEN),
    st.sampled_from(["a", "-", "...", ".a", "..a", ".hidden", "a-b", "a-", "foo", "foo-bar", "foo.bar"]),
).filter(_valid_name)
store_paths = st.builds(StorePath, hash_parts, names)


# ---------------------------------------------------------------------------------------------------
# valid paths


@pytest.mark.parametrize(
    "name",
    [
        "f1.txt",
        "a",
        "-",
        "--",
        "...",  # only "." and ".." (alone or before a dash) are refused
        ".a",
        "..a",
        ".hidden",
        "..x-y",
        "a.-b",
        "+-._?=",
        "hello-2.12.1",
        "UPPER-lower-0123",
        "x" * MAX_NAME_LEN,
    ],
)
def test_valid_paths_parse(name: str) -> None:
    text = f"/nix/store/{H}-{name}"
    path = parse_store_path(text)
    assert path == StorePath(H, name)
    assert (path.hash_part, path.name) == (H, name)
    assert path.base == f"{H}-{name}"
    assert path.path == text == str(path)
    assert parse_store_path(text.encode()) == path
    assert parse_base_name(path.base) == path
    assert parse_base_name(path.base.encode()) == path
    check_name(name)


def test_longest_path_is_255_characters() -> None:
    path = StorePath(H, "n" * MAX_NAME_LEN)
    assert len(path.path) == 255


def test_other_store_dir() -> None:
    path = parse_store_path(f"/foo/store/{H}-x", store_dir="/foo/store")
    assert path == StorePath(H, "x")
    # A StorePath carries no store directory: `path` is always the logical /nix/store one.
    assert path.path == f"/nix/store/{H}-x"
    assert path.path_in("/foo/store") == f"/foo/store/{H}-x"
    with pytest.raises(InvalidStorePathError, match="not in the store directory '/foo/store'"):
        parse_store_path(f"/nix/store/{H}-x", store_dir="/foo/store")


@pytest.mark.parametrize("store_dir", ["", "nix/store", "/nix/store/", "//nix/store", "/nix//store"])
def test_bad_store_dir_is_a_usage_error(store_dir: str) -> None:
    with pytest.raises(InvalidArgumentError, match="must be an absolute path without a trailing '/'"):
        parse_store_path(f"/nix/store/{H}-x", store_dir=store_dir)
    with pytest.raises(InvalidArgumentError, match="must be an absolute path"):
        make_store_path("source", bytes(32), "x", store_dir=store_dir)


# ---------------------------------------------------------------------------------------------------
# invalid paths: every rule, with its message

LONG = "n" * (MAX_NAME_LEN + 1)

# (text, the message after "store path <repr(text)> is invalid: ")
INVALID_PATHS = [
    # where it is
    ("", "it is empty"),
    (f"/tmp/{H}-x", "it is not in the store directory '/nix/store'"),
    (f"nix/store/{H}-x", "it is not in the store directory '/nix/store'"),
    (f"/nix/storex/{H}-x", "it is not in the store directory '/nix/store'"),
    ("/nix/store", "it is not in the store directory '/nix/store'"),
    # no canonicalisation (Nix's parseStorePath would canonicalise these first)
    (f"/nix/store/{H}-x/", "it ends with '/'"),
    (f"/nix/store/{H}-x/bin/sh", "it is not directly inside the store directory '/nix/store'"),
    (f"/nix/store//{H}-x", "it is not directly inside the store directory '/nix/store'"),
    (f"/nix/store/./{H}-x", "it is not directly inside the store directory '/nix/store'"),
    (f"/nix/store/../store/{H}-x", "it is not directly inside the store directory '/nix/store'"),
    # the base name
    (
        "/nix/store/",
        "the base name '' is too short (a store path needs 32 hash characters, '-' and a name)",
    ),
    (
        "/nix/store/abc",
        "the base name 'abc' is too short (a store path needs 32 hash characters, '-' and a name)",
    ),
    (
        "/nix/store/..",
        "the base name '..' is too short (a store path needs 32 hash characters, '-' and a name)",
    ),
    (
        f"/nix/store/{H}",
        f"the base name '{H}' is too short (a store path needs 32 hash characters, '-' and a name)",
    ),
    # current Nix; 2.8 does not look at the 33rd character
    (f"/nix/store/{H}_x", "the 32-character hash part is not followed by '-'"),
    (f"/nix/store/{H}x-y", "the 32-character hash part is not followed by '-'"),
    # the hash part
    *(
        (
            f"/nix/store/{c}{H[1:]}-x",
            f"the hash part contains illegal nix32 character {c!r} (the alphabet is {NIX32_ALPHABET})",
        )
        for c in ["e", "o", "u", "t", "A", "K", "-", "_", ".", " "]
    ),
    (
        f"/nix/store/{H[:31]}e-x",
        f"the hash part contains illegal nix32 character 'e' (the alphabet is {NIX32_ALPHABET})",
    ),
    # the name
    (f"/nix/store/{H}-", "the name is empty"),
    (f"/nix/store/{H}-{LONG}", "the name is 212 characters long (at most 211 are allowed)"),
    # current Nix; 2.8 accepts these four
    (f"/nix/store/{H}-.", "the name must not be '.'"),
    (f"/nix/store/{H}-..", "the name must not be '..'"),
    (f"/nix/store/{H}-.-x", "the name must not start with '.-'"),
    (f"/nix/store/{H}-.-", "the name must not start with '.-'"),
    (f"/nix/store/{H}-..-x", "the name must not start with '..-'"),
    *(
        (f"/nix/store/{H}-a{c}b", f"the name contains illegal character {c!r} {ALLOWED_HINT}")
        for c in [" ", "@", "~", "!", "*", ":", ",", ";", "%", "\\", "'", '"', "\n", "\t", "\0", "é", "ß"]
    ),
    (f"/nix/store/{H}-a b c", f"the name contains illegal character ' ' {ALLOWED_HINT}"),
    # a name too long is reported as such even with illegal characters (Nix's order)
    (f"/nix/store/{H}-{LONG[:-1]} ", "the name is 212 characters long (at most 211 are allowed)"),
]


@pytest.mark.parametrize(("text", "reason"), INVALID_PATHS)
def test_invalid_path(text: str, reason: str) -> None:
    with pytest.raises(InvalidStorePathError) as info:
        parse_store_path(text)
    assert str(info.value) == f"store path {text!r} is invalid: {reason}"
    assert info.value.path == text
    assert info.value.reason == reason
    assert isinstance(info.value, XstoreError)
    assert isinstance(info.value, ValueError)
    if text.isascii():
        with pytest.raises(InvalidStorePathError, match=re.escape(reason)):
            parse_store_path(text.encode())


@pytest.mark.parametrize(
    ("text", "reason"),
    [(text.removeprefix("/nix/store/"), reason) for text, reason in INVALID_PATHS if "base name" in reason]
    + [
        (text.removeprefix("/nix/store/"), reason)
        for text, reason in INVALID_PATHS
        if text.startswith(f"/nix/store/{H}") or "hash part" in reason
        if "/" not in text.removeprefix("/nix/store/")
    ],
)
def test_invalid_base_name(text: str, reason: str) -> None:
    with pytest.raises(InvalidStorePathError) as info:
        parse_base_name(text)
    assert str(info.value) == f"store path {text!r} is invalid: {reason}"


def test_slash_in_base_name_is_an_illegal_character() -> None:
    with pytest.raises(InvalidStorePathError, match=re.escape(f"illegal character '/' {ALLOWED_HINT}")):
        parse_base_name(f"{H}-x/y")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (f"/nix/store/{H}-caf".encode() + b"\xe9", "byte 0xe9 at offset 47 is not ASCII"),
        (f"/nix/store/{H}-café".encode(), "byte 0xc3 at offset 47 is not ASCII"),
        (b"\xff", "byte 0xff at offset 0 is not ASCII"),
    ],
)
def test_bytes_must_be_ascii(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidStorePathError) as info:
        parse_store_path(raw)
    assert str(info.value) == f"store path {raw!r} is invalid: {reason}"
    assert info.value.path == raw.decode("ascii", "backslashreplace")
    with pytest.raises(InvalidStorePathError, match=re.escape(reason)):
        parse_base_name(raw)


def test_long_input_is_shortened_in_the_message() -> None:
    text = "/tmp/" + "x" * 10_000
    with pytest.raises(InvalidStorePathError) as info:
        parse_store_path(text)
    message = str(info.value)
    assert len(message) < 400
    assert message.startswith("store path '/tmp/xxx")
    assert "...' is invalid: it is not in the store directory '/nix/store'" in message
    assert info.value.path == text


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "it is empty"),
        (LONG, "it is 212 characters long (at most 211 are allowed)"),
        (".", "it must not be '.'"),
        ("..", "it must not be '..'"),
        (".-x", "it must not start with '.-'"),
        ("..-x", "it must not start with '..-'"),
        ("a b", f"it contains illegal character ' ' {ALLOWED_HINT}"),
        ("a/b", f"it contains illegal character '/' {ALLOWED_HINT}"),
        ("ünïcode", f"it contains illegal character 'ü' {ALLOWED_HINT}"),
    ],
)
def test_invalid_name(name: str, reason: str) -> None:
    expected = f"store path name {name!r} is invalid: {reason}"
    with pytest.raises(InvalidStorePathError) as info:
        check_name(name)
    assert str(info.value) == expected
    assert info.value.path == name
    with pytest.raises(InvalidStorePathError) as info:
        make_store_path("source", bytes(32), name)
    assert str(info.value) == expected
    with pytest.raises(InvalidStorePathError, match=re.escape(reason.removeprefix("it "))):
        StorePath(H, name)


@pytest.mark.parametrize(
    ("hash_part", "reason"),
    [
        ("", "the hash part is 0 characters long, not 32"),
        (H[:31], "the hash part is 31 characters long, not 32"),
        (H + "0", "the hash part is 33 characters long, not 32"),
        (H.upper(), "the hash part contains illegal nix32 character 'K'"),
        (H[:5] + "-" + H[6:], "the hash part contains illegal nix32 character '-'"),
    ],
)
def test_constructor_checks_hash_part(hash_part: str, reason: str) -> None:
    with pytest.raises(InvalidStorePathError) as info:
        StorePath(hash_part, "x")
    assert str(info.value).startswith(f"store path '{hash_part}-x' is invalid: {reason}")


def test_error_pickles() -> None:
    with pytest.raises(InvalidStorePathError) as info:
        parse_store_path(f"/nix/store/{H}-a b")
    copy = pickle.loads(pickle.dumps(info.value))  # noqa: S301 (our own bytes, just made)
    assert type(copy) is InvalidStorePathError
    assert str(copy) == str(info.value)
    assert copy.path == info.value.path
    assert copy.reason == info.value.reason


# ---------------------------------------------------------------------------------------------------
# the value type


def test_frozen_hashable_slotted() -> None:
    path = StorePath(H, "x")
    with pytest.raises(AttributeError, match="cannot assign"):
        path.name = "y"  # type: ignore[misc]
    assert not hasattr(path, "__dict__")
    assert {path, StorePath(H, "x")} == {path}
    assert repr(path) == f"StorePath(hash_part='{H}', name='x')"


def test_order_is_base_name_order() -> None:
    # Names where a plain field order and the base order could plausibly disagree: prefixes, '-'
    # (0x2d) against '.' (0x2e) and letters, upper case before lower case.
    hashes = ["0" * 32, H, "z" * 32]
    suffixes = ["a", "a-b", "a.b", "a-", "aa", "A", "-", "0", "_", "a+b"]
    paths = [StorePath(h, n) for h in hashes for n in suffixes]
    assert sorted(paths) == sorted(paths, key=lambda p: p.base)
    assert [p.base for p in sorted(paths)] == sorted(p.base for p in paths)


@given(store_paths, store_paths)
def test_order_agrees_with_base_names(a: StorePath, b: StorePath) -> None:
    assert (a < b) == (a.base < b.base)
    assert (a <= b) == (a.base <= b.base)
    assert (a == b) == (a.base == b.base)


@given(hash_parts, names, names)
def test_order_same_hash_part(hash_part: str, x: str, y: str) -> None:
    a, b = StorePath(hash_part, x), StorePath(hash_part, y)
    assert (a < b) == (a.base < b.base)


@given(store_paths)
def test_round_trip(path: StorePath) -> None:
    assert parse_store_path(path.path) == path
    assert parse_store_path(str(path).encode()) == path
    assert parse_base_name(path.base) == path
    assert parse_store_path(path.path_in("/gnu/store"), store_dir="/gnu/store") == path


@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_raises_invalid(text: str) -> None:
    for candidate in (text, f"/nix/store/{H}-{text}", f"/nix/store/{text}"):
        try:
            path = parse_store_path(candidate)
        except InvalidStorePathError:
            continue
        assert path.path == candidate


# ---------------------------------------------------------------------------------------------------
# hashing


def ref_compress_hash(digest: bytes, size: int) -> bytes:
    out = [0] * size
    for i in range(len(digest)):
        out[i % size] ^= digest[i]
    return bytes(out)


@given(st.binary(max_size=80), st.integers(1, 40))
def test_compress_hash_matches_reference(digest: bytes, size: int) -> None:
    assert compress_hash(digest, size) == ref_compress_hash(digest, size)


def test_compress_hash_examples() -> None:
    assert compress_hash(bytes(range(32)), 20) == bytes(i ^ (i + 20) if i < 12 else i for i in range(20))
    assert compress_hash(b"\x01\x02", 4) == b"\x01\x02\x00\x00"
    assert compress_hash(b"", 3) == bytes(3)
    with pytest.raises(InvalidArgumentError, match="cannot compress a hash to 0 bytes"):
        compress_hash(b"x", 0)


def test_make_store_path_by_hand() -> None:
    # The definition spelled out (Nix: makeStorePath), for the path `nix-store --add` gave f1.txt.
    text = f"source:sha256:{F1_NAR_SHA256.hex()}:/nix/store:f1.txt"
    digest = hashlib.sha256(text.encode()).digest()
    folded = bytes(a ^ b for a, b in zip(digest[:20], digest[20:] + bytes(8), strict=True))
    assert make_store_path("source", F1_NAR_SHA256, "f1.txt") == StorePath(encode_nix32(folded), "f1.txt")
    assert make_store_path("source", F1_NAR_SHA256, "f1.txt").path == F1_SOURCE
    assert decode_nix32(H) == folded


def test_known_paths_from_nix_2_8() -> None:
    assert make_source_path("f1.txt", F1_NAR_SHA256).path == F1_SOURCE
    assert make_fixed_output_path("f1.txt", HashAlgorithm.SHA256, F1_NAR_SHA256, True).path == F1_SOURCE
    flat = sha256(b"hello\n")
    assert make_fixed_output_path("f1.txt", HashAlgorithm.SHA256, flat, False).path == F1_FLAT_SHA256
    sha1 = hashlib.sha1(b"hello\n").digest()
    assert make_fixed_output_path("f1.txt", HashAlgorithm.SHA1, sha1, False).path == F1_FLAT_SHA1
    a = make_text_path("a", sha256(b"x"))
    assert a.path == TEXT_A
    b = make_text_path("b", sha256(f"ref {a}".encode()), [a])
    assert b.path == TEXT_B
    # References in any order and repeated: the type lists each once, sorted.
    c = make_text_path("c", sha256(f"ref {b} {a}".encode()), [b, a, b])
    assert c.path == TEXT_C
    assert make_store_path(f"text:{TEXT_A}:{TEXT_B}", sha256(f"ref {b} {a}".encode()), "c").path == TEXT_C


def test_known_paths_in_another_store_dir() -> None:
    foo = "/foo/store"
    assert make_source_path("f1.txt", F1_NAR_SHA256, store_dir=foo).path_in(foo) == FOO_F1_SOURCE
    a = make_text_path("a", sha256(b"x"), store_dir=foo)
    assert a.path_in(foo) == FOO_TEXT_A
    b = make_text_path("b", sha256(f"ref {a.path_in(foo)}".encode()), [a], store_dir=foo)
    assert b.path_in(foo) == FOO_TEXT_B


def test_source_path_types() -> None:
    nar = sha256(b"some nar")
    a, b = parse_store_path(TEXT_A), parse_store_path(TEXT_B)
    assert make_source_path("s", nar) == make_store_path("source", nar, "s")
    assert make_source_path("s", nar, [b, a]) == make_store_path(f"source:{TEXT_A}:{TEXT_B}", nar, "s")
    assert make_source_path("s", nar, [a], self_reference=True) == make_store_path(
        f"source:{TEXT_A}:self", nar, "s"
    )
    assert make_source_path("s", nar, self_reference=True) == make_store_path("source:self", nar, "s")


@pytest.mark.parametrize("algo", list(HashAlgorithm))
@pytest.mark.parametrize("recursive", [False, True])
def test_fixed_output_path_types(algo: HashAlgorithm, recursive: bool) -> None:
    digest = hashlib.new(algo.value, b"contents").digest()
    got = make_fixed_output_path("out", algo, digest, recursive)
    if algo is HashAlgorithm.SHA256 and recursive:
        assert got == make_store_path("source", digest, "out")
    else:
        inner = f"fixed:out:{'r:' if recursive else ''}{algo.value}:{digest.hex()}:"
        assert got == make_store_path("output:out", sha256(inner.encode()), "out")
    # The algorithm may be given by name.
    assert make_fixed_output_path("out", algo.value, digest, recursive) == got  # type: ignore[arg-type]


def test_store_dir_enters_the_hash() -> None:
    assert make_store_path("source", bytes(32), "x") != make_store_path(
        "source", bytes(32), "x", store_dir="/gnu/store"
    )


@pytest.mark.parametrize("size", [0, 20, 31, 33, 64])
def test_digest_size_is_checked(size: int) -> None:
    with pytest.raises(InvalidArgumentError, match=f"must be a 32-byte SHA-256 digest, not {size} bytes"):
        make_store_path("source", bytes(size), "x")
    with pytest.raises(InvalidArgumentError, match=f"not {size} bytes"):
        make_text_path("x", bytes(size))
    with pytest.raises(InvalidArgumentError, match=f"not {size} bytes"):
        make_source_path("x", bytes(size))
    with pytest.raises(InvalidArgumentError, match=f"sha256 digest must be 32 bytes, not {size}"):
        make_fixed_output_path("x", HashAlgorithm.SHA256, bytes(size), True)


def test_fixed_output_unknown_algorithm() -> None:
    with pytest.raises(InvalidHashError, match="unknown hash algorithm 'sha3'"):
        make_fixed_output_path("x", "sha3", bytes(32), False)  # type: ignore[arg-type]


def test_invalid_name_is_refused_before_hashing() -> None:
    with pytest.raises(InvalidStorePathError, match=r"store path name 'a b' is invalid"):
        make_text_path("a b", bytes(32))
    with pytest.raises(InvalidStorePathError, match=r"store path name '\.\.' is invalid"):
        make_fixed_output_path("..", HashAlgorithm.MD5, bytes(16), False)


# ---------------------------------------------------------------------------------------------------
# signature fingerprints


def test_signature_fingerprint() -> None:
    # b from the fact sheet: NAR sha256 2b91...6e30, 168 bytes, one reference.
    nar_hex = "2b91bcc2a5d02abc4bb17f3edcbd1d543f95989f3cccacfb8fd986e1d2546e30"
    nar = bytes.fromhex(nar_hex)
    b = parse_store_path(TEXT_B)
    a = parse_store_path(TEXT_A)
    expected = f"1;{TEXT_B};sha256:{encode_nix32(nar)};168;{TEXT_A}"
    assert signature_fingerprint(b, f"sha256:{nar_hex}", 168, [a]) == expected
    assert signature_fingerprint(b, f"sha256:{encode_nix32(nar)}", 168, [a]) == expected
    sri = "sha256-K5G8wqXQKrxLsX8+3L0dVD+VmJ88zKz7j9mG4dJUbjA="
    assert signature_fingerprint(b, sri, 168, [a]) == expected
    # No references: empty last field. Several: sorted, comma-joined, duplicates dropped.
    assert signature_fingerprint(a, f"sha256:{nar_hex}", 120, []).endswith(";120;")
    c = parse_store_path(TEXT_C)
    assert signature_fingerprint(c, f"sha256:{nar_hex}", 208, [b, a, b, c]).endswith(
        f";208;{TEXT_A},{TEXT_B},{TEXT_C}"
    )
    assert signature_fingerprint(a, f"sha256:{nar_hex}", 1, [b], store_dir="/foo/store") == (
        f"1;/foo/store/{a.base};sha256:{encode_nix32(nar)};1;/foo/store/{b.base}"
    )


def test_signature_fingerprint_errors() -> None:
    a = parse_store_path(TEXT_A)
    with pytest.raises(InvalidArgumentError, match="its NAR size 0 is not known"):
        signature_fingerprint(a, "sha256:" + "00" * 32, 0, [])
    with pytest.raises(InvalidHashError, match="does not say its algorithm"):
        signature_fingerprint(a, "00" * 32, 1, [])

"""xstore.hashing: nix32 against a reference written from Nix's hash.cc, the other forms, parsing, the sink.

The known vectors were printed by Nix 2.8 (`nix-hash --type ALGO --to-base32 HEX`,
`nix hash to-sri --type ALGO HEX`); tests/compat/test_hash_formats.py checks random digests against it.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import pickle

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from xstore.errors import InvalidHashError, XstoreError
from xstore.hashing import (
    NIX32_ALPHABET,
    HashAlgorithm,
    HashFormat,
    HashSink,
    ParsedHash,
    decode_nix32,
    encode_nix32,
    format_digest,
    format_nix_hash,
    nix32_len,
    parse_digest,
    parse_hash,
)

ALGORITHMS = list(HashAlgorithm)

# ---------------------------------------------------------------------------------------------------
# A slow reference, transcribed from Nix's hash.cc (printHash32 and the base-32 branch of Hash::Hash).


def ref_nix32_len(size: int) -> int:
    return (size * 8 - 1) // 5 + 1


def ref_print_hash32(data: bytes) -> str:
    out = []
    for n in range(ref_nix32_len(len(data)) - 1, -1, -1):
        b = n * 5
        i = b // 8
        j = b % 8
        c = (data[i] >> j) | (0 if i >= len(data) - 1 else data[i + 1] << (8 - j))
        out.append(NIX32_ALPHABET[c & 0x1F])
    return "".join(out)


def ref_parse_hash32(text: str, size: int) -> bytes | None:
    """Nix's decoder; None where Nix throws BadHash."""
    if len(text) != ref_nix32_len(size):
        return None
    digest = bytearray(size)
    for n in range(len(text)):
        c = text[len(text) - n - 1]
        digit = NIX32_ALPHABET.find(c)
        if digit < 0:
            return None
        b = n * 5
        i = b // 8
        j = b % 8
        digest[i] |= (digit << j) & 0xFF
        if i < size - 1:
            digest[i + 1] |= digit >> (8 - j)
        elif digit >> (8 - j):
            return None
    return bytes(digest)


# ---------------------------------------------------------------------------------------------------
# Known vectors: (algorithm, base16, nix32, SRI) of b"" and b"abc".

VECTORS = [
    ("md5", "d41d8cd98f00b204e9800998ecf8427e", "3y8bwfr609h3lh9ch0izcqq7fl", "md5-1B2M2Y8AsgTpgAmY7PhCfg=="),
    ("md5", "900150983cd24fb0d6963f7d28e17f72", "3jgzhjhz9zjvbb0kyj7jc500ch", "md5-kAFQmDzST7DWlj99KOF/cg=="),
    (
        "sha1",
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "143xibwh31h9bvxzalr0sjvbbvpa6ffs",
        "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
    ),
    (
        "sha1",
        "a9993e364706816aba3e25717850c26c9cd0d89d",
        "kpcd173cq987hw957sx6m0868wv3x6d9",
        "sha1-qZk+NkcGgWq6PiVxeFDCbJzQ2J0=",
    ),
    (
        "sha256",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    ),
    (
        "sha256",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
    ),
    (
        "sha512",
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
        "0zdl9zrg8r3i9c1g90lgg9ip5ijzv3yhz91i0zzn3r8ap9ws784gkp9dk9j3aglhgf1amqb0pj21mh7h1nxcl18akqvvf7ggqsy30yg",
        "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==",
    ),
    (
        "sha512",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1ai7xac99vxfc4ii84hawjbk876blyk1jfhkbbyx",
        "sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==",
    ),
]


@pytest.mark.parametrize(("name", "hex_digest", "nix32", "sri"), VECTORS)
def test_known_vectors(name: str, hex_digest: str, nix32: str, sri: str) -> None:
    algo = HashAlgorithm.parse(name)
    digest = bytes.fromhex(hex_digest)
    assert digest in (hashlib.new(name, b"").digest(), hashlib.new(name, b"abc").digest())
    b64 = sri.split("-", 1)[1]
    assert encode_nix32(digest) == nix32
    assert decode_nix32(nix32, algo.digest_size) == digest
    assert decode_nix32(nix32) == digest
    assert format_digest(algo, digest, HashFormat.NIX32) == nix32
    assert format_digest(algo, digest, HashFormat.BASE16) == hex_digest
    assert format_digest(algo, digest, HashFormat.BASE64) == b64
    assert format_digest(algo, digest, HashFormat.SRI) == sri
    assert format_nix_hash(algo, digest) == f"{name}:{hex_digest}"
    for text in (
        sri,
        f"{name}:{hex_digest}",
        f"{name}:{nix32}",
        f"{name}:{b64}",
        f"{name}:{hex_digest.upper()}",
    ):
        assert parse_hash(text) == (algo, digest)
    for bare in (hex_digest, nix32, b64):
        assert parse_digest(algo, bare) == digest
        assert parse_hash(bare, algo) == (algo, digest)


def test_nix32_alphabet_is_nixs() -> None:
    # Nix: hash.cc base32Chars, "omitted: E O U T".
    assert len(NIX32_ALPHABET) == 32
    assert len(set(NIX32_ALPHABET)) == 32
    assert set(NIX32_ALPHABET) == set("0123456789abcdefghijklmnopqrstuvwxyz") - set("eout")
    assert list(NIX32_ALPHABET) == sorted(NIX32_ALPHABET)


def test_sizes() -> None:
    assert [a.digest_size for a in ALGORITHMS] == [16, 20, 32, 64]
    assert [nix32_len(a.digest_size) for a in ALGORITHMS] == [26, 32, 52, 103]
    assert nix32_len(0) == 0
    assert encode_nix32(b"") == ""
    assert decode_nix32("", 0) == b""
    for size in range(1, 200):
        assert nix32_len(size) == ref_nix32_len(size)
    for algo in ALGORITHMS:
        assert hashlib.new(algo.value).digest_size == algo.digest_size


# ---------------------------------------------------------------------------------------------------
# nix32 against the reference


@given(st.binary(min_size=1, max_size=130))
@example(b"\x00")
@example(b"\xff")
@example(b"\x00" * 32)
@example(b"\xff" * 32)
@example(b"\xff" * 64)
@example(b"\x80" + b"\x00" * 19)
def test_encode_matches_reference(data: bytes) -> None:
    text = encode_nix32(data)
    assert text == ref_print_hash32(data)
    assert len(text) == nix32_len(len(data))
    assert decode_nix32(text, len(data)) == data
    assert decode_nix32(text) == data


@pytest.mark.parametrize("algo", ALGORITHMS)
@given(data=st.data())
def test_digest_round_trip(algo: HashAlgorithm, data: st.DataObject) -> None:
    digest = data.draw(st.binary(min_size=algo.digest_size, max_size=algo.digest_size))
    for fmt in HashFormat:
        text = format_digest(algo, digest, fmt)
        if fmt is HashFormat.SRI:
            assert parse_hash(text) == ParsedHash(algo, digest)
        else:
            assert parse_digest(algo, text) == digest
            assert parse_hash(f"{algo.value}:{text}") == ParsedHash(algo, digest)
            assert parse_hash(text, algo) == ParsedHash(algo, digest)


@pytest.mark.parametrize("algo", ALGORITHMS)
@given(data=st.data())
def test_decode_matches_reference(algo: HashAlgorithm, data: st.DataObject) -> None:
    # Any string of the right length over the alphabet: we accept exactly what Nix accepts (the first
    # character decides overflow), with the same result.
    size = algo.digest_size
    text = data.draw(st.text(alphabet=NIX32_ALPHABET, min_size=nix32_len(size), max_size=nix32_len(size)))
    expected = ref_parse_hash32(text, size)
    if expected is None:
        with pytest.raises(InvalidHashError, match="sets bits beyond"):
            decode_nix32(text, size)
    else:
        assert decode_nix32(text, size) == expected


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_overflow_first_character(algo: HashAlgorithm) -> None:
    size = algo.digest_size
    spare = nix32_len(size) * 5 - size * 8  # bits of the first character beyond the digest
    tail = "0" * (nix32_len(size) - 1)
    for digit, char in enumerate(NIX32_ALPHABET):
        text = char + tail
        assert (ref_parse_hash32(text, size) is None) == (digit >= 1 << (5 - spare))
        if digit >= 1 << (5 - spare):
            with pytest.raises(InvalidHashError) as info:
                decode_nix32(text, size)
            assert str(info.value) == (
                f"invalid nix32 hash {text!r}: its first character {char!r} sets bits beyond a "
                f"{size}-byte digest"
            )
        else:
            assert decode_nix32(text, size) == ref_parse_hash32(text, size)
    # The largest digest is all ones, and its first character is the largest allowed.
    assert encode_nix32(b"\xff" * size)[0] == NIX32_ALPHABET[(1 << (5 - spare)) - 1]


SHA256_EMPTY = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"


@pytest.mark.parametrize(
    ("text", "size", "message"),
    [
        (
            "e" + SHA256_EMPTY[1:],
            32,
            f"invalid nix32 hash {'e' + SHA256_EMPTY[1:]!r}: character 'e' at position 0 is not in the "
            f"nix32 alphabet {NIX32_ALPHABET}",
        ),
        (
            SHA256_EMPTY[:51] + "t",
            32,
            f"invalid nix32 hash {SHA256_EMPTY[:51] + 't'!r}: character 't' at position 51 is not in the "
            f"nix32 alphabet {NIX32_ALPHABET}",
        ),
        (
            SHA256_EMPTY.upper(),
            32,
            f"invalid nix32 hash {SHA256_EMPTY.upper()!r}: character 'M' at position 1 is not in the "
            f"nix32 alphabet {NIX32_ALPHABET}",
        ),
        (
            SHA256_EMPTY[:10] + "é" + SHA256_EMPTY[11:],
            32,
            f"invalid nix32 hash {SHA256_EMPTY[:10] + 'é' + SHA256_EMPTY[11:]!r}: character 'é' at "
            f"position 10 is not in the nix32 alphabet {NIX32_ALPHABET}",
        ),
        (
            SHA256_EMPTY[:51],
            32,
            f"invalid nix32 hash {SHA256_EMPTY[:51]!r}: 51 characters, expected 52 for 32 bytes",
        ),
        (
            SHA256_EMPTY + "0",
            32,
            f"invalid nix32 hash {SHA256_EMPTY + '0'!r}: 53 characters, expected 52 for 32 bytes",
        ),
        (
            "1" * 51,
            None,
            f"invalid nix32 hash {'1' * 51!r}: no digest has a nix32 form of 51 characters",
        ),
        (
            "z" * 52,
            32,
            f"invalid nix32 hash {'z' * 52!r}: its first character 'z' sets bits beyond a 32-byte digest",
        ),
        (
            "-1",
            None,
            "invalid nix32 hash '-1': character '-' at position 0 is not in the nix32 alphabet "
            f"{NIX32_ALPHABET}",
        ),
        (
            "1_",
            None,
            "invalid nix32 hash '1_': character '_' at position 1 is not in the nix32 alphabet "
            f"{NIX32_ALPHABET}",
        ),
        (
            " 1",
            None,
            "invalid nix32 hash ' 1': character ' ' at position 0 is not in the nix32 alphabet "
            f"{NIX32_ALPHABET}",
        ),
    ],
)
def test_decode_nix32_invalid(text: str, size: int | None, message: str) -> None:
    with pytest.raises(InvalidHashError) as info:
        decode_nix32(text, size)
    assert str(info.value) == message
    assert info.value.context == {"value": text}


def test_long_input_is_shortened_in_messages() -> None:
    with pytest.raises(InvalidHashError) as info:
        decode_nix32("x" * 10_000, 32)
    assert len(str(info.value)) < 300
    assert "..." in str(info.value)


# ---------------------------------------------------------------------------------------------------
# Enums


def test_algorithm_parse() -> None:
    assert HashAlgorithm.parse("sha256") is HashAlgorithm.SHA256
    assert [HashAlgorithm.parse(a.value) for a in ALGORITHMS] == ALGORITHMS
    assert f"{HashAlgorithm.SHA1}" == "sha1"
    for bad in ("SHA256", "sha-256", "", "blake3", "sha256 "):
        with pytest.raises(InvalidHashError) as info:
            HashAlgorithm.parse(bad)
        assert str(info.value) == (
            f"unknown hash algorithm {bad!r} (expected one of: md5, sha1, sha256, sha512)"
        )


def test_format_parse() -> None:
    assert HashFormat.parse("base32") is HashFormat.NIX32
    assert HashFormat.parse("nix32") is HashFormat.NIX32
    assert [HashFormat.parse(f.value) for f in HashFormat] == list(HashFormat)
    with pytest.raises(InvalidHashError) as info:
        HashFormat.parse("hex")
    assert (
        str(info.value) == "unknown hash format 'hex' (expected one of: sri, nix32, base16, base64, base32)"
    )


def test_errors_are_value_errors_and_pickle() -> None:
    with pytest.raises(InvalidHashError) as info:
        parse_hash("sha256:nope")
    err = info.value
    assert isinstance(err, XstoreError)
    assert isinstance(err, ValueError)
    # Errors cross process boundaries (FUSE daemons, namespace children) by pickle.
    again = pickle.loads(pickle.dumps(err))  # noqa: S301 (our own bytes)
    assert type(again) is InvalidHashError
    assert str(again) == str(err)
    assert again.context == err.context


# ---------------------------------------------------------------------------------------------------
# Formatting and parsing errors

DIGEST = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
HEX = DIGEST.hex()
B64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_format_checks_digest_size() -> None:
    with pytest.raises(InvalidHashError, match=r"^sha256 digest must be 32 bytes, not 20$"):
        format_digest(HashAlgorithm.SHA256, bytes(20), HashFormat.SRI)
    with pytest.raises(InvalidHashError, match=r"^md5 digest must be 16 bytes, not 0$"):
        format_nix_hash(HashAlgorithm.MD5, b"")


def test_format_accepts_plain_strings() -> None:
    # HashFormat is a StrEnum: a CLI layer may pass the value through.
    assert format_digest(HashAlgorithm.SHA256, DIGEST, "nix32") == SHA256_EMPTY  # type: ignore[arg-type]
    with pytest.raises(InvalidHashError, match=r"^unknown hash format 'hex'$"):
        format_digest(HashAlgorithm.SHA256, DIGEST, "hex")  # type: ignore[arg-type]


def test_sri_padding_optional() -> None:
    # Nix accepts an SRI hash without its '=' padding (only in SRI form).
    assert parse_hash("sha256-" + B64.rstrip("=")) == (HashAlgorithm.SHA256, DIGEST)
    with pytest.raises(InvalidHashError):
        parse_hash("sha256:" + B64.rstrip("="))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEX, f"hash {HEX!r} does not say its algorithm (expected 'algo:...' or SRI 'algo-...')"),
        ("", "hash '' does not say its algorithm (expected 'algo:...' or SRI 'algo-...')"),
        (f"sha3:{HEX}", "unknown hash algorithm 'sha3' (expected one of: md5, sha1, sha256, sha512)"),
        (f"SHA256:{HEX}", "unknown hash algorithm 'SHA256' (expected one of: md5, sha1, sha256, sha512)"),
        (f"blake3-{B64}", "unknown hash algorithm 'blake3' (expected one of: md5, sha1, sha256, sha512)"),
        (f"sha256:{HEX[:-1]}z", f"invalid base16 sha256 hash {HEX[:-1] + 'z'!r}"),
        (f"sha256:{HEX[:-2]} 5", f"invalid base16 sha256 hash {HEX[:-2] + ' 5'!r}"),
        (f"sha256:{HEX[:-2]}\t5", f"invalid base16 sha256 hash {HEX[:-2] + chr(9) + '5'!r}"),
        (
            f"sha256:{HEX}0",
            f"invalid sha256 hash {HEX + '0'!r}: 65 characters, expected 64 (base16), 52 (nix32) "
            "or 44 (base64)",
        ),
        ("sha256:", "invalid sha256 hash '': 0 characters, expected 64 (base16), 52 (nix32) or 44 (base64)"),
        (f"sha256:{B64[:-2]}!=", f"invalid base64 sha256 hash {B64[:-2] + '!='!r}"),
        (f"sha256-{B64[:-2]}!=", f"invalid base64 sha256 hash {'sha256-' + B64[:-2] + '!='!r}"),
        (f"sha1-{B64}", f"invalid base64 sha1 hash {'sha1-' + B64!r}: 32 bytes, expected 20"),
        ("sha256-", f"invalid base64 sha256 hash {'sha256-'!r}: 0 bytes, expected 32"),
        (f"sha256-{B64}A", f"invalid base64 sha256 hash {'sha256-' + B64 + 'A'!r}"),
        (
            f"sha256-{HEX}",
            f"invalid base64 sha256 hash {'sha256-' + HEX!r}: 48 bytes, expected 32",
        ),
        (
            f"sha256:{'2' + SHA256_EMPTY[1:]}",
            f"invalid nix32 hash {'2' + SHA256_EMPTY[1:]!r}: its first character '2' sets bits beyond a "
            "32-byte digest",
        ),
    ],
)
def test_parse_hash_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidHashError) as info:
        parse_hash(text)
    assert str(info.value) == message


def test_parse_hash_expected_algorithm() -> None:
    sha256 = HashAlgorithm.SHA256
    assert parse_hash(f"sha256:{HEX}", sha256) == (sha256, DIGEST)
    with pytest.raises(InvalidHashError) as info:
        parse_hash(f"sha256:{HEX}", HashAlgorithm.SHA512)
    assert str(info.value) == f"hash {'sha256:' + HEX!r} should have type 'sha512', not 'sha256'"
    with pytest.raises(InvalidHashError, match="should have type 'md5', not 'sha256'"):
        parse_hash(f"sha256-{B64}", HashAlgorithm.MD5)
    # A bare digest is read in the expected algorithm's sizes.
    expected = r"^invalid sha1 hash .*: 64 characters, expected 40 \(base16\)"
    with pytest.raises(InvalidHashError, match=expected):
        parse_hash(HEX, HashAlgorithm.SHA1)


# ---------------------------------------------------------------------------------------------------
# HashSink


@pytest.mark.parametrize("algo", ALGORITHMS)
@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=8))
def test_sink_any_chunking(algo: HashAlgorithm, data: bytes, cuts: list[int]) -> None:
    sink = HashSink(algo)
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    for start, end in itertools.pairwise(bounds):
        sink.update(memoryview(data)[start:end] if start % 2 else data[start:end])
    expected = hashlib.new(algo.value, data)
    assert sink.size == len(data)
    assert sink.digest() == expected.digest()
    assert sink.hexdigest() == expected.hexdigest()
    for fmt in HashFormat:
        assert sink.format(fmt) == format_digest(algo, expected.digest(), fmt)
    assert sink.nix_hash() == format_nix_hash(algo, expected.digest())


def test_sink_state() -> None:
    sink = HashSink(HashAlgorithm.SHA256)
    assert sink.algorithm is HashAlgorithm.SHA256
    assert sink.size == 0
    assert sink.format(HashFormat.NIX32) == SHA256_EMPTY
    assert repr(sink) == "HashSink(sha256, size=0)"
    sink.update(b"ab")
    fork = sink.copy()
    sink.update(bytearray(b"c"))
    # digest() does not finalise: asking twice, or between updates, is fine.
    assert sink.digest() == sink.digest() == hashlib.sha256(b"abc").digest()
    assert fork.size == 2
    assert fork.digest() == hashlib.sha256(b"ab").digest()
    fork.update(b"d")
    assert sink.size == 3
    assert fork.digest() == hashlib.sha256(b"abd").digest()


def test_sink_counts_bytes_of_wide_memoryviews() -> None:
    words = array.array("I", [1, 2, 3, 4])
    view = memoryview(words)
    assert len(view) == 4
    sink = HashSink(HashAlgorithm.SHA1)
    sink.update(view)
    assert sink.size == view.nbytes == 4 * words.itemsize
    assert sink.digest() == hashlib.sha1(words.tobytes()).digest()

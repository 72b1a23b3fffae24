"""Hash forms side by side with the real Nix: nix-hash and `nix hash` print what we print, and read it.

Each Nix command takes many hashes at once, so every algorithm costs a handful of subprocesses whatever
the number of digests. The digests are fixed edge cases plus seeded random ones (reproducible).
"""

from __future__ import annotations

import random

import pytest

from tests.helpers import Nix
from xstore.hashing import (
    NIX32_ALPHABET,
    HashAlgorithm,
    HashFormat,
    decode_nix32,
    format_digest,
    nix32_len,
    parse_hash,
)

pytestmark = pytest.mark.compat

RANDOM_DIGESTS = 20


def digests(algo: HashAlgorithm) -> list[bytes]:
    size = algo.digest_size
    rng = random.Random(f"xstore-hash-formats-{algo.value}")
    edges = [
        bytes(size),
        b"\xff" * size,
        b"\x01" + bytes(size - 1),
        bytes(size - 1) + b"\x80",
        bytes(range(size)),
    ]
    return edges + [rng.randbytes(size) for _ in range(RANDOM_DIGESTS)]


def lines(output: bytes) -> list[str]:
    return output.decode("ascii").splitlines()


@pytest.mark.parametrize("algo", list(HashAlgorithm))
def test_we_print_what_nix_prints(nix: Nix, algo: HashAlgorithm) -> None:
    ds = digests(algo)
    hexes = [d.hex() for d in ds]
    assert lines(nix.nix_hash("--type", algo.value, "--to-base32", *hexes)) == [
        format_digest(algo, d, HashFormat.NIX32) for d in ds
    ]
    assert lines(nix.nix_cmd("hash", "to-sri", "--type", algo.value, *hexes)) == [
        format_digest(algo, d, HashFormat.SRI) for d in ds
    ]
    assert lines(nix.nix_cmd("hash", "to-base64", "--type", algo.value, *hexes)) == [
        format_digest(algo, d, HashFormat.BASE64) for d in ds
    ]
    nix32s = [format_digest(algo, d, HashFormat.NIX32) for d in ds]
    assert lines(nix.nix_hash("--type", algo.value, "--to-base16", *nix32s)) == [
        format_digest(algo, d, HashFormat.BASE16) for d in ds
    ]


@pytest.mark.parametrize("algo", list(HashAlgorithm))
def test_nix_reads_what_we_print_and_we_read_what_nix_prints(nix: Nix, algo: HashAlgorithm) -> None:
    ds = digests(algo)
    hexes = [d.hex() for d in ds]
    # Nix parses our SRI and prefixed base64 forms back to the digest.
    ours = [format_digest(algo, d, HashFormat.SRI) for d in ds]
    ours += [f"{algo.value}:{format_digest(algo, d, HashFormat.BASE64)}" for d in ds]
    assert lines(nix.nix_cmd("hash", "to-base16", *ours)) == hexes * 2
    # We parse Nix's output in every form, prefixed as Nix prefixes them.
    theirs = lines(nix.nix_cmd("hash", "to-base32", "--type", algo.value, *hexes))
    theirs += lines(nix.nix_cmd("hash", "to-sri", "--type", algo.value, *hexes))
    parsed = [parse_hash(f"{algo.value}:{t}") for t in theirs[: len(ds)]]
    parsed += [parse_hash(t) for t in theirs[len(ds) :]]
    assert parsed == [(algo, d) for d in ds] * 2


# sha1's 160 bits fill 32 characters exactly: nothing can overflow.
@pytest.mark.parametrize(
    "algo", [a for a in HashAlgorithm if nix32_len(a.digest_size) * 5 > a.digest_size * 8]
)
def test_nix32_overflow_agrees_with_nix(nix: Nix, algo: HashAlgorithm) -> None:
    # The first character carries bits beyond the digest: the largest valid one must be accepted by
    # both, the next one rejected by both.
    size = algo.digest_size
    spare = nix32_len(size) * 5 - size * 8
    tail = "0" * (nix32_len(size) - 1)
    largest = NIX32_ALPHABET[(1 << (5 - spare)) - 1] + tail
    too_big = NIX32_ALPHABET[1 << (5 - spare)] + tail
    assert lines(nix.nix_hash("--type", algo.value, "--to-base16", largest)) == [
        decode_nix32(largest, size).hex()
    ]
    stderr = nix.run([nix.nix_hash_exe, "--type", algo.value, "--to-base16", too_big], expect_success=False)
    assert b"invalid base-32 hash" in stderr.stderr
    with pytest.raises(ValueError, match="sets bits beyond"):
        decode_nix32(too_big, size)

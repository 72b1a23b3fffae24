"""Hash algorithms, Nix's textual hash forms, and a hashing sink for streamed bytes.

Nix writes a digest in four forms: base16 (lower-case hex), nix32 (Nix's own base-32), base64
(standard alphabet, padded), and SRI (`sha256-<base64>`). The store database keeps `sha256:<base16>`;
store path names use nix32. Everything here is pure computation on `bytes` and `str`: no I/O.

nix32 is not RFC 4648 base-32. Nix: hash.cc `printHash32` (`base32Chars`, `base32Len`) and the base-32
branch of `Hash::Hash(std::string_view, ...)`. The alphabet drops `e o u t`; the digest is read as one
little-endian number and its 5-bit groups are written most significant first, so character `k` from
the right holds bits `5k .. 5k+4` of that number. `printHash32` gets there byte by byte; we get the same
groups from `int.from_bytes(digest, "little")`, ten bits at a time through a 1024-entry table of
character pairs (about twice as fast as one group at a time). Decoding maps the alphabet onto Python's
`int(text, 32)` digits and checks that nothing overflows the digest: the top character carries a few bits
beyond the digest's size, and Nix rejects a hash that sets them, as we do.

Parsing accepts what Nix's `Hash::parseAny` accepts: `algo:<base16|nix32|base64>` told apart by length,
and SRI `algo-<base64>` (where Nix also takes a missing `=` padding). Upper-case hex is accepted, as Nix
does; output is always lower case. Every bad input raises `InvalidHashError` (a `ValueError`) saying what was
wrong with which text.
"""

from __future__ import annotations

import base64
import binascii
import enum

from xstore.errors import InvalidHashError

__all__ = [
    "NIX32_ALPHABET",
    "HashAlgorithm",
    "HashFormat",
    "HashSink",
    "ParsedHash",
    "decode_nix32",
    "encode_nix32",
    "format_digest",
    "format_nix_hash",
    "nix32_len",
    "parse_digest",
    "parse_hash",
]

NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"


class HashAlgorithm(enum.StrEnum):
    """A hash algorithm Nix knows. The value is Nix's (and hashlib's) name for it."""

    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA512 = "sha512"

    @property
    def digest_size(self) -> int:
        """Digest length in bytes."""
        return _DIGEST_SIZES[self]

    @classmethod
    def parse(cls, name: str) -> HashAlgorithm:
        """The algorithm called `name` (exact, lower case as Nix spells it); `InvalidHashError` otherwise."""
        found = _BY_NAME.get(name)
        if found is not None:
            return found
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(a.value for a in cls)
            raise InvalidHashError(
                f"unknown hash algorithm {_show(name)} (expected one of: {choices})", value=name
            ) from None


_BY_NAME: dict[str, HashAlgorithm] = {a.value: a for a in HashAlgorithm}

_DIGEST_SIZES: dict[HashAlgorithm, int] = {
    HashAlgorithm.MD5: 16,
    HashAlgorithm.SHA1: 20,
    HashAlgorithm.SHA256: 32,
    HashAlgorithm.SHA512: 64,
}


class HashFormat(enum.StrEnum):
    """A textual form of a digest. `parse` also takes Nix's older name `base32` for nix32."""

    SRI = "sri"
    NIX32 = "nix32"
    BASE16 = "base16"
    BASE64 = "base64"

    @classmethod
    def parse(cls, name: str) -> HashFormat:
        """The format called `name` (`base32` means nix32); `InvalidHashError` otherwise."""
        if name == "base32":
            return cls.NIX32
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join([*(f.value for f in cls), "base32"])
            raise InvalidHashError(
                f"unknown hash format {_show(name)} (expected one of: {choices})", value=name
            ) from None


class ParsedHash(tuple[HashAlgorithm, bytes]):
    """An algorithm and a digest of exactly its size (unpacks as `(algorithm, digest)`). A tuple, as a
    `typing.NamedTuple` would be, written out: `typing` is not loaded by the commands that need this."""

    __slots__ = ()

    def __new__(cls, algorithm: HashAlgorithm, digest: bytes) -> ParsedHash:
        return tuple.__new__(cls, (algorithm, digest))

    @property
    def algorithm(self) -> HashAlgorithm:
        return self[0]

    @property
    def digest(self) -> bytes:
        return self[1]

    def __repr__(self) -> str:
        return f"ParsedHash(algorithm={self[0]!r}, digest={self[1]!r})"

    def __getnewargs__(self) -> tuple[HashAlgorithm, bytes]:  # copies and pickles
        return (self[0], self[1])


# ---------------------------------------------------------------------------------------------------
# nix32

_PAIRS = [NIX32_ALPHABET[i >> 5] + NIX32_ALPHABET[i & 31] for i in range(1024)]
_NIX32_CHARS = frozenset(NIX32_ALPHABET)
_HEX_CHARS = frozenset("0123456789abcdefABCDEF")
# nix32 character -> the digit of the same value for int(text, 32).
_TO_INT32 = str.maketrans(NIX32_ALPHABET, "0123456789abcdefghijklmnopqrstuv")


def nix32_len(size: int) -> int:
    """Length of the nix32 form of `size` bytes (Nix: `base32Len`); 0 for 0."""
    return (size * 8 - 1) // 5 + 1 if size > 0 else 0


def _size_for_nix32_len(length: int) -> int | None:
    # 8 bits per byte against 5 per character: each length fits at most one size.
    size = length * 5 // 8
    return size if nix32_len(size) == length else None


def encode_nix32(data: bytes) -> str:
    """`data` in nix32, exactly as Nix's `printHash32` writes it (empty for empty input)."""
    if not data:
        return ""
    n = (len(data) * 8 - 1) // 5 + 1
    x = int.from_bytes(data, "little")
    pairs = _PAIRS
    if n & 1:
        # An odd count: the top group alone, then pairs down to bit 0.
        return NIX32_ALPHABET[x >> (5 * (n - 1))] + "".join(
            [pairs[(x >> s) & 1023] for s in range(5 * (n - 3), -1, -10)]
        )
    return "".join([pairs[(x >> s) & 1023] for s in range(5 * (n - 2), -1, -10)])


def decode_nix32(text: str, size: int | None = None) -> bytes:
    """The bytes whose nix32 form is `text`.

    `size` is the expected length in bytes; without it, the one size whose nix32 form has `text`'s
    length. Raises `InvalidHashError` for a character outside the alphabet, a length that does not fit
    `size` (or no size), and bits set beyond the digest in the first character (which Nix rejects).
    """
    if size is None:
        found = _size_for_nix32_len(len(text))
        if found is None:
            raise InvalidHashError(
                f"invalid nix32 hash {_show(text)}: no digest has a nix32 form of {len(text)} characters",
                value=text,
            )
        size = found
    elif size < 0:
        raise InvalidHashError(f"invalid digest size {size}", value=text)
    expected = nix32_len(size)
    if len(text) != expected:
        raise InvalidHashError(
            f"invalid nix32 hash {_show(text)}: {len(text)} characters, expected {expected} for {size} bytes",
            value=text,
        )
    if not _NIX32_CHARS.issuperset(text):
        pos, char = next((i, c) for i, c in enumerate(text) if c not in _NIX32_CHARS)
        raise InvalidHashError(
            f"invalid nix32 hash {_show(text)}: character {char!r} at position {pos} is not in the "
            f"nix32 alphabet {NIX32_ALPHABET}",
            value=text,
        )
    if size == 0:
        return b""
    x = int(text.translate(_TO_INT32), 32)
    if x >> (8 * size):
        raise InvalidHashError(
            f"invalid nix32 hash {_show(text)}: its first character {text[0]!r} sets bits beyond "
            f"a {size}-byte digest",
            value=text,
        )
    return x.to_bytes(size, "little")


# ---------------------------------------------------------------------------------------------------
# formatting and parsing


def _check_digest(algorithm: HashAlgorithm, digest: bytes) -> None:
    if len(digest) != algorithm.digest_size:
        raise InvalidHashError(
            f"{algorithm.value} digest must be {algorithm.digest_size} bytes, not {len(digest)}",
            algorithm=algorithm,
        )


def format_digest(algorithm: HashAlgorithm, digest: bytes, fmt: HashFormat) -> str:
    """`digest` as text in `fmt`.

    SRI carries the algorithm (`sha256-<base64>`); nix32, base16 and base64 are bare, as
    `nix hash path --base32` and friends print them. Raises `InvalidHashError` if `digest` is not
    `algorithm`'s size.
    """
    _check_digest(algorithm, digest)
    # `==`, not `is`: a plain string equal to a member's value works too (HashFormat is a StrEnum).
    if fmt == HashFormat.NIX32:
        return encode_nix32(digest)
    if fmt == HashFormat.BASE16:
        return digest.hex()
    if fmt == HashFormat.BASE64:
        return base64.b64encode(digest).decode("ascii")
    if fmt == HashFormat.SRI:
        return f"{algorithm.value}-{base64.b64encode(digest).decode('ascii')}"
    raise InvalidHashError(f"unknown hash format {fmt!r}", value=fmt)


def format_nix_hash(algorithm: HashAlgorithm, digest: bytes) -> str:
    """`algo:<base16>`, the form of the store database's `hash` column (`sha256:e3b0...`)."""
    _check_digest(algorithm, digest)
    return f"{algorithm.value}:{digest.hex()}"


def parse_digest(algorithm: HashAlgorithm, text: str) -> bytes:
    """A bare digest of `algorithm` in base16, nix32 or base64, told apart by length as Nix does.

    Raises `InvalidHashError` if the length fits no form or the text is not valid in the form it fits.
    """
    size = algorithm.digest_size
    if len(text) == 2 * size:
        # bytes.fromhex would also skip whitespace; a hash has none.
        if _HEX_CHARS.issuperset(text):
            return bytes.fromhex(text)
        raise InvalidHashError(f"invalid base16 {algorithm.value} hash {_show(text)}", value=text)
    if len(text) == nix32_len(size):
        return decode_nix32(text, size)
    if len(text) == _base64_len(size):
        return _decode_base64(algorithm, text, text)
    raise InvalidHashError(
        f"invalid {algorithm.value} hash {_show(text)}: {len(text)} characters, expected "
        f"{2 * size} (base16), {nix32_len(size)} (nix32) or {_base64_len(size)} (base64)",
        value=text,
    )


def parse_hash(text: str, algorithm: HashAlgorithm | None = None) -> ParsedHash:
    """The algorithm and digest written in `text`.

    Accepts `algo:<base16|nix32|base64>` and SRI `algo-<base64>` (padding optional, as in Nix). With
    `algorithm` given, a bare digest is accepted too, and a prefixed one must name that algorithm.
    Raises `InvalidHashError` for an unknown algorithm, a mismatch, a missing prefix, or a bad digest.
    """
    if len(text) == 59 and text.startswith("sha256:") and algorithm in (None, HashAlgorithm.SHA256):
        # The common form (narinfos, content addresses): SHA-256 in nix32.
        return ParsedHash(HashAlgorithm.SHA256, decode_nix32(text[7:], 32))
    name, sep, rest = text.partition(":")
    sri = False
    if not sep:
        name, sep, rest = text.partition("-")
        sri = bool(sep)
    if not sep:
        if algorithm is None:
            raise InvalidHashError(
                f"hash {_show(text)} does not say its algorithm (expected 'algo:...' or SRI 'algo-...')",
                value=text,
            )
        return ParsedHash(algorithm, parse_digest(algorithm, text))
    found = HashAlgorithm.parse(name)
    if algorithm is not None and found is not algorithm:
        raise InvalidHashError(
            f"hash {_show(text)} should have type {algorithm.value!r}, not {found.value!r}", value=text
        )
    if sri:
        return ParsedHash(found, _decode_base64(found, rest + "=" * (-len(rest) % 4), text))
    return ParsedHash(found, parse_digest(found, rest))


def _base64_len(size: int) -> int:
    return (size + 2) // 3 * 4


def _decode_base64(algorithm: HashAlgorithm, b64: str, text: str) -> bytes:
    try:
        digest = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidHashError(f"invalid base64 {algorithm.value} hash {_show(text)}", value=text) from None
    if len(digest) != algorithm.digest_size:
        raise InvalidHashError(
            f"invalid base64 {algorithm.value} hash {_show(text)}: {len(digest)} bytes, expected "
            f"{algorithm.digest_size}",
            value=text,
        )
    return digest


def _show(text: str) -> str:
    # Input can be anything a user typed; keep messages one readable line.
    return repr(text if len(text) <= 160 else text[:160] + "...")


# ---------------------------------------------------------------------------------------------------
# streaming


class HashSink:
    """Hashes bytes as they stream past and counts them.

    `update` takes any chunking; `digest()` may be called at any time and again later (it does not
    finalise). There is no end-of-input signal: the digest is of everything fed so far. Nothing
    blocks, so there is nothing to cancel; a sink abandoned half way is simply dropped.
    """

    __slots__ = ("_hash", "algorithm", "size")

    algorithm: HashAlgorithm
    size: int
    """Bytes fed so far."""

    def __init__(self, algorithm: HashAlgorithm) -> None:
        self.algorithm = algorithm
        self.size = 0
        import hashlib  # here: commands that hash nothing start without OpenSSL

        # Nix uses md5 and sha1 for naming, not for security; this keeps FIPS builds working.
        self._hash = hashlib.new(algorithm.value, usedforsecurity=False)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed `data` (a contiguous buffer; a memoryview counts its bytes, not its items)."""
        self._hash.update(data)
        self.size += data.nbytes if isinstance(data, memoryview) else len(data)

    def digest(self) -> bytes:
        return self._hash.digest()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def format(self, fmt: HashFormat) -> str:
        """The digest so far in `fmt` (see `format_digest`)."""
        return format_digest(self.algorithm, self._hash.digest(), fmt)

    def nix_hash(self) -> str:
        """The digest so far as `algo:<base16>` (see `format_nix_hash`)."""
        return f"{self.algorithm.value}:{self._hash.hexdigest()}"

    def copy(self) -> HashSink:
        """An independent sink with the same state (to hash a common prefix once)."""
        other = HashSink.__new__(HashSink)
        other.algorithm = self.algorithm
        other.size = self.size
        other._hash = self._hash.copy()
        return other

    def __repr__(self) -> str:
        return f"HashSink({self.algorithm.value}, size={self.size})"

"""Store path syntax, validation, and the computation of content-addressed store paths.

A store path is `<store dir>/<hash part>-<name>`: 32 nix32 characters (a 160-bit digest), a dash, and a
name of 1 to 211 characters from `[0-9a-zA-Z+-._?=]`. Validation follows current Nix (2.35), which is
stricter than the 2.8 the compat tests run: it also requires the dash after the hash part, and refuses
the names `.` and `..` and names starting `.-` or `..-`. Checks run in Nix's order, so a path breaking
two rules is reported for the same one. Nix: path.cc `StorePath::StorePath` and `checkName`.

Parsing a full path does not canonicalise it, where Nix's `parseStorePath` runs `canonPath` first: the
text must be exactly the store directory, one `/` and a base name, so a trailing `/`, `//`, `.` or `..`
components or a path inside a store object are refused rather than quietly mapped to a store path.
A store path that xstore writes or reads from a database, an export stream or a NAR is always in that
form already.

Store paths are computed as Nix's `makeStorePath` does (store-dir-config.cc): the SHA-256 of the text
`<type>:sha256:<base16 digest>:<store dir>:<name>`, XOR-folded to 20 bytes and written in nix32. The
store directory in that text is the logical one (`/nix/store` for a chroot store too), which is why
`STORE_DIR` and not the real location is the default everywhere. The helpers below build `type` for
the kinds of store object xstore meets: text (`builtins.toFile`), source (`nix-store --add`) and
fixed-output paths. Everything here is pure computation on `str` and `bytes`: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from xstore.errors import InvalidArgumentError, InvalidStorePathError
from xstore.hashing import NIX32_ALPHABET, HashAlgorithm, encode_nix32, parse_hash
from xstore.records import FrozenRecord, setfield

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "HASH_PART_LEN",
    "MAX_NAME_LEN",
    "STORE_DIR",
    "InvalidStorePathError",
    "StorePath",
    "check_name",
    "compress_hash",
    "make_fixed_output_path",
    "make_source_path",
    "make_store_path",
    "make_text_path",
    "parse_base_name",
    "parse_store_path",
    "signature_fingerprint",
]

STORE_DIR: Final = "/nix/store"
"""The logical store directory: written into every store path hash, even for a chroot store."""

HASH_PART_LEN: Final = 32
"""Length of the hash part in nix32 characters (20 bytes). Nix: `StorePath::HashLen`."""

MAX_NAME_LEN: Final = 211
"""Longest name Nix allows, so that `/nix/store/<hash>-<name>` fits in 255 bytes. Nix: `MaxPathLen`."""

_NIX32_CHARS = frozenset(NIX32_ALPHABET)
_NAME_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-._?=")
_NAME_CHARS_HINT = "letters, digits and + - . _ ? ="


def _show(text: str | bytes) -> str:
    # Input can be anything (a whole file, control characters): keep messages one readable line.
    if len(text) > 300:
        text = text[:300]
        return repr(text)[:-1] + "...'"
    return repr(text)


def _invalid(text: str | bytes, reason: str) -> InvalidStorePathError:
    return InvalidStorePathError(
        f"store path {_show(text)} is invalid: {reason}",
        path=text if isinstance(text, str) else text.decode("ascii", "backslashreplace"),
        reason=reason,
    )


def _name_problem(name: str) -> str | None:
    """What is wrong with `name` as a store path name, or None. Nix: path.cc `checkName`, same order."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_LEN:
        return f"is {len(name)} characters long (at most {MAX_NAME_LEN} are allowed)"
    if name[0] == ".":
        # Nix refuses "." and ".." as names and as first dash-separated component.
        if name in (".", ".."):
            return f"must not be {name!r}"
        if name.startswith((".-", "..-")):
            return f"must not start with {name[: name.index('-') + 1]!r}"
    if not _NAME_CHARS.issuperset(name):
        bad = next(c for c in name if c not in _NAME_CHARS)
        return f"contains illegal character {bad!r} (allowed: {_NAME_CHARS_HINT})"
    return None


def _hash_part_problem(hash_part: str) -> str | None:
    if len(hash_part) != HASH_PART_LEN:
        return f"is {len(hash_part)} characters long, not {HASH_PART_LEN}"
    if not _NIX32_CHARS.issuperset(hash_part):
        bad = next(c for c in hash_part if c not in _NIX32_CHARS)
        return f"contains illegal nix32 character {bad!r} (the alphabet is {NIX32_ALPHABET})"
    return None


def check_name(name: str) -> None:
    """Raise `InvalidStorePathError` unless `name` is a valid store path name (Nix: `checkName`)."""
    problem = _name_problem(name)
    if problem is not None:
        raise InvalidStorePathError(
            f"store path name {_show(name)} is invalid: it {problem}", path=name, reason=f"name {problem}"
        )


class StorePath(FrozenRecord):
    """A valid store path, without its store directory: `hash_part` (32 nix32 characters) and `name`.

    Construction validates both and raises `InvalidStorePathError`. Ordering is the ordering of
    `base` (`<hash>-<name>`) as strings, which is how Nix sorts store path sets (and so references in
    export streams, fingerprints and path types): the fields compare as the tuple
    `(hash_part, name)`, and since every hash part is 32 characters long and followed by the same `-`,
    that tuple order is the order of the base names. Keep the fields in this order.
    """

    __slots__ = ("hash_part", "name")
    hash_part: str
    name: str

    def __init__(self, hash_part: str, name: str) -> None:
        problem = _hash_part_problem(hash_part)
        if problem is not None:
            raise _invalid(f"{hash_part}-{name}", f"the hash part {problem}")
        problem = _name_problem(name)
        if problem is not None:
            raise _invalid(f"{hash_part}-{name}", f"the name {problem}")
        setfield(self, "hash_part", hash_part)
        setfield(self, "name", name)

    @classmethod
    def _checked(cls, hash_part: str, name: str) -> StorePath:
        """A store path from parts the caller has validated (`_split_base`): not checked again."""
        path = object.__new__(cls)
        setfield(path, "hash_part", hash_part)
        setfield(path, "name", name)
        return path

    # Written out rather than the generic `Record` ones: store paths are the keys of every set and
    # dict of paths.
    def __eq__(self, other: object) -> bool:
        if type(other) is not StorePath:
            return NotImplemented
        return self.hash_part == other.hash_part and self.name == other.name

    def __hash__(self) -> int:
        return hash(self.hash_part)  # (a string's hash is kept with it; equal paths share hash parts)

    def __lt__(self, other: StorePath) -> bool:
        if type(other) is not StorePath:
            return NotImplemented
        if self.hash_part != other.hash_part:
            return self.hash_part < other.hash_part
        return self.name < other.name

    def __le__(self, other: StorePath) -> bool:
        if type(other) is not StorePath:
            return NotImplemented
        return (self.hash_part, self.name) <= (other.hash_part, other.name)

    def __gt__(self, other: StorePath) -> bool:
        if type(other) is not StorePath:
            return NotImplemented
        return (self.hash_part, self.name) > (other.hash_part, other.name)

    def __ge__(self, other: StorePath) -> bool:
        if type(other) is not StorePath:
            return NotImplemented
        return (self.hash_part, self.name) >= (other.hash_part, other.name)

    @property
    def base(self) -> str:
        """The base name, `<hash part>-<name>`: the entry in the store directory."""
        return f"{self.hash_part}-{self.name}"

    @property
    def path(self) -> str:
        """The full path in the logical store directory: `/nix/store/<hash part>-<name>`."""
        return f"{STORE_DIR}/{self.hash_part}-{self.name}"

    def path_in(self, store_dir: str) -> str:
        """The full path in `store_dir` (Nix: `printStorePath`)."""
        return f"{store_dir}/{self.hash_part}-{self.name}"

    def __str__(self) -> str:
        return self.path


def _check_store_dir(store_dir: str) -> None:
    if not store_dir.startswith("/") or store_dir.endswith("/") or "//" in store_dir:
        raise InvalidArgumentError(
            f"store directory {store_dir!r} must be an absolute path without a trailing '/'",
            store_dir=store_dir,
        )


def _split_base(base: str, shown: str | bytes) -> StorePath:
    # Nix: StorePath::StorePath(std::string_view), checks in its order.
    if len(base) < HASH_PART_LEN + 1:
        raise _invalid(
            shown,
            f"the base name {_show(base)} is too short (a store path needs {HASH_PART_LEN} hash "
            "characters, '-' and a name)",
        )
    if base[HASH_PART_LEN] != "-":
        raise _invalid(shown, f"the {HASH_PART_LEN}-character hash part is not followed by '-'")
    hash_part = base[:HASH_PART_LEN]
    name = base[HASH_PART_LEN + 1 :]
    problem = _hash_part_problem(hash_part)
    if problem is not None:
        raise _invalid(shown, f"the hash part {problem}")
    problem = _name_problem(name)
    if problem is not None:
        raise _invalid(shown, f"the name {problem}")
    return StorePath._checked(hash_part, name)


def _decode(text: str | bytes) -> str:
    if isinstance(text, str):
        return text
    try:
        return text.decode("ascii")
    except UnicodeDecodeError as e:
        raise _invalid(text, f"byte {text[e.start]:#04x} at offset {e.start} is not ASCII") from None


def parse_base_name(base: str | bytes) -> StorePath:
    """The store path whose base name (`<hash part>-<name>`, no directory) is `base`.

    Bytes must be ASCII. Raises `InvalidStorePathError` saying which rule `base` breaks.
    """
    return _split_base(_decode(base), base)


def parse_store_path(text: str | bytes, store_dir: str = STORE_DIR) -> StorePath:
    """The store path written as `text`: exactly `<store_dir>/<hash part>-<name>`.

    Bytes must be ASCII (decoded strictly). Nothing is canonicalised: a trailing `/`, a doubled `/`
    or a path below a store object is refused. Raises `InvalidStorePathError` saying which rule the
    text breaks (for the name: current Nix's rules, see the module docstring), and `InvalidArgumentError` if
    `store_dir` is not an absolute path without a trailing `/`.
    """
    _check_store_dir(store_dir)
    decoded = _decode(text)
    if not decoded:
        raise _invalid(text, "it is empty")
    prefix = store_dir + "/"
    if not decoded.startswith(prefix):
        raise _invalid(text, f"it is not in the store directory {store_dir!r}")
    base = decoded[len(prefix) :]
    if "/" in base:
        if base.index("/") == len(base) - 1:
            raise _invalid(text, "it ends with '/'")
        raise _invalid(text, f"it is not directly inside the store directory {store_dir!r}")
    return _split_base(base, text)


def compress_hash(digest: bytes, size: int) -> bytes:
    """`digest` XOR-folded to `size` bytes: byte `i` goes into `i % size` (Nix: `compressHash`).

    Raises `InvalidArgumentError` if `size` is not positive.
    """
    if size <= 0:
        raise InvalidArgumentError(f"cannot compress a hash to {size} bytes", size=size)
    # Each run of `size` bytes XORed onto the start, as whole numbers (little-endian: byte i onto
    # byte i) rather than byte by byte.
    folded = 0
    for start in range(0, len(digest), size):
        folded ^= int.from_bytes(digest[start : start + size], "little")
    return folded.to_bytes(size, "little")


def _check_sha256(digest: bytes, what: str) -> None:
    if len(digest) != HashAlgorithm.SHA256.digest_size:
        raise InvalidArgumentError(
            f"{what} must be a {HashAlgorithm.SHA256.digest_size}-byte SHA-256 digest, not "
            f"{len(digest)} bytes"
        )


def make_store_path(kind: str, digest: bytes, name: str, store_dir: str = STORE_DIR) -> StorePath:
    """The store path Nix's `makeStorePath(kind, digest, name)` computes.

    `kind` is the path type (`"source"`, `"text:/nix/store/...-a"`, `"output:out"`), `digest` a
    SHA-256 digest. The hash part is the nix32 form of the SHA-256 of
    `<kind>:sha256:<base16 digest>:<store_dir>:<name>`, folded to 20 bytes. Raises
    `InvalidStorePathError` for an invalid name, `InvalidArgumentError` for a digest that is not 32 bytes or a
    bad `store_dir`.
    """
    check_name(name)
    _check_sha256(digest, "the digest of a store path")
    _check_store_dir(store_dir)
    import hashlib  # here, as in `hashing`: commands that hash nothing start without OpenSSL

    fingerprint = f"{kind}:sha256:{digest.hex()}:{store_dir}:{name}"
    folded = compress_hash(hashlib.sha256(fingerprint.encode()).digest(), 20)
    return StorePath._checked(encode_nix32(folded), name)  # a checked name, a hash part of 20 bytes


def _with_references(kind: str, references: Iterable[StorePath], store_dir: str) -> str:
    # Nix: makeType; references are a set, ordered by base name.
    return "".join([kind, *(":" + ref.path_in(store_dir) for ref in sorted(set(references)))])


def make_text_path(
    name: str, contents_sha256: bytes, references: Iterable[StorePath] = (), store_dir: str = STORE_DIR
) -> StorePath:
    """The path of a text store object (`builtins.toFile`, `addTextToStore`).

    `contents_sha256` is the SHA-256 of the file's contents; `references` the store paths it refers to
    (duplicates ignored). The type is `text` followed by `:<path>` for each reference in order.
    Errors as for `make_store_path`.
    """
    _check_sha256(contents_sha256, "the hash of a text path's contents")
    return make_store_path(_with_references("text", references, store_dir), contents_sha256, name, store_dir)


def make_source_path(
    name: str,
    nar_sha256: bytes,
    references: Iterable[StorePath] = (),
    self_reference: bool = False,
    store_dir: str = STORE_DIR,
) -> StorePath:
    """The path `nix-store --add` (recursive SHA-256) gives a tree whose NAR has SHA-256 `nar_sha256`.

    The type is `source`, then `:<path>` for each reference in order, then `:self` if the object refers
    to itself. Errors as for `make_store_path`.
    """
    _check_sha256(nar_sha256, "the NAR hash of a source path")
    kind = _with_references("source", references, store_dir)
    if self_reference:
        kind += ":self"
    return make_store_path(kind, nar_sha256, name, store_dir)


def make_fixed_output_path(
    name: str, algo: HashAlgorithm, digest: bytes, recursive: bool, store_dir: str = STORE_DIR
) -> StorePath:
    """The path of a fixed-output store object without references (Nix: `makeFixedOutputPath`).

    `digest` is the `algo` hash of the NAR (`recursive`) or of the file's bytes (flat). Recursive
    SHA-256 is a source path (`nix-store --add`); anything else has type `output:out` and, as digest,
    the SHA-256 of `fixed:out:[r:]<algo>:<base16 digest>:` (`nix-store --add-fixed`). Raises
    `InvalidArgumentError` if `digest` is not `algo`'s size, else errors as for `make_store_path`.
    """
    algo = HashAlgorithm.parse(algo)
    if len(digest) != algo.digest_size:
        raise InvalidArgumentError(
            f"{algo.value} digest must be {algo.digest_size} bytes, not {len(digest)}", algorithm=algo
        )
    if algo is HashAlgorithm.SHA256 and recursive:
        return make_store_path("source", digest, name, store_dir)
    import hashlib

    inner = f"fixed:out:{'r:' if recursive else ''}{algo.value}:{digest.hex()}:"
    return make_store_path("output:out", hashlib.sha256(inner.encode()).digest(), name, store_dir)


def signature_fingerprint(
    path: StorePath,
    nar_hash: str,
    nar_size: int,
    references: Iterable[StorePath],
    store_dir: str = STORE_DIR,
) -> str:
    """The text a store path signature signs (Nix: `ValidPathInfo::fingerprint`).

    `1;<path>;<algo>:<nix32 NAR hash>;<NAR size>;<references, comma-separated, in order>`.
    `nar_hash` may be in any form Nix reads (`sha256:<base16>` as in the database, `sha256:<nix32>`,
    SRI); the fingerprint always has the nix32 form. Raises `InvalidArgumentError` for an unreadable hash or a
    size that is not positive (Nix cannot fingerprint a path whose size it does not know).
    """
    algo, digest = parse_hash(nar_hash)
    if nar_size <= 0:
        raise InvalidArgumentError(
            f"cannot compute the fingerprint of {path.path_in(store_dir)!r}: its NAR size {nar_size} "
            "is not known",
            nar_size=nar_size,
        )
    refs = ",".join(ref.path_in(store_dir) for ref in sorted(set(references)))
    return f"1;{path.path_in(store_dir)};{algo.value}:{encode_nix32(digest)};{nar_size};{refs}"

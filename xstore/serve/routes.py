"""What a store served as a binary cache answers, decided without any I/O: which file a request names,
the narinfo text of a path, and the part of a NAR a `Range` header asks for.

The server offers exactly the files Nix reads from an HTTP binary cache and no others:

- `/nix-cache-info`: `StoreDir`, `WantMassQuery: 1`, `Priority`;
- `/<hash part>.narinfo`: the narinfo of the valid path with that hash part, built from the store;
- `/<hash part>.ls`: the path's listing, as `write-nar-listing=1` writes it;
- `/nar/<hash part>-<NAR hash>.nar[.zst|.xz]`: the path's NAR, dumped live, compressed as the suffix
  says.

A NAR's URL names the store path's hash part, so the server finds the path with one indexed query (no
scan), and its NAR hash (nix32), so a URL from an old narinfo stops working once the path has changed
(404, never another NAR under the old name). Every such name is built from 32 or 52 nix32 characters,
which cannot spell a way out of the store, and names nothing but a valid path of the store's database:
no temporary directory, lock file or `.links` entry can be reached.

A request target that could only be an attempt to reach something else, or that no client following
these URLs sends, is malformed (400): not starting with `/`, a dot or empty path segment, a
percent-escape, a backslash, a control or non-ASCII character, or a query string. Any other unknown name
is not found (404).

Narinfos follow `NarInfo::to_string` (see `xstore.narinfo`). Served uncompressed, the NAR is the file, so
`FileHash`/`FileSize` are the NAR's hash and size and the text equals what `nix copy --to
file://...?compression=none` writes for the same path and key, but for the URL. Compressed on the fly,
the compressed file's hash and size are not known before it is sent, and Nix does not need them: 2.8
reads `FileHash` only to print it (`nix path-info --json`) and `FileSize` only for progress, and checks
the NAR hash after decompressing (`BinaryCacheStore::narFromPath`, the substitution goal); current Nix
leaves both lines out when they are unknown, and so does this server (harmonia answers the same question
by serving only `Compression: none`).

Ranges follow RFC 9110 §14: one `bytes=` range (`a-b`, `a-`, `-n`) of an uncompressed NAR is served as
206; a range starting at or after the end, or a `bytes=` value that does not parse, is 416; several
ranges, another unit, or an `If-Range` that is not the NAR's ETag get the whole NAR (the RFC lets a server
ignore what it does not support).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from xstore.compression import Method
from xstore.hashing import NIX32_ALPHABET, HashAlgorithm, HashFormat, ParsedHash, format_digest
from xstore.narinfo import NarInfo, format_narinfo
from xstore.signing import SecretKey, sign_path
from xstore.storeapi import PathInfo
from xstore.storepath import STORE_DIR

CACHE_INFO_PATH: Final = "/nix-cache-info"
SERVED_COMPRESSIONS: Final = (Method.NONE, Method.ZSTD, Method.XZ)

_N32: Final = f"[{NIX32_ALPHABET}]"
_NARINFO: Final = re.compile(rf"/({_N32}{{32}})\.narinfo")
_LISTING: Final = re.compile(rf"/({_N32}{{32}})\.ls")
_NAR: Final = re.compile(rf"/nar/({_N32}{{32}})-({_N32}{{52}})\.nar(\.zst|\.xz)?")
_SUFFIX_METHOD: Final = {"": Method.NONE, ".zst": Method.ZSTD, ".xz": Method.XZ}
# Characters a request target may hold at all; anything else (`%`, `\`, spaces, controls, non-ASCII) is
# malformed. Unreserved characters and sub-delimiters of RFC 3986, `:`, `@` and `/`.
_TARGET_CHARS: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/"
)


class Kind(enum.Enum):
    CACHE_INFO = "nix-cache-info"
    NARINFO = "narinfo"
    LISTING = "listing"
    NAR = "nar"


@dataclass(frozen=True, slots=True)
class Route:
    """A file the cache offers: its kind, the store path's hash part, and for a NAR the NAR hash its URL
    names (nix32) and the compression its suffix asks for."""

    kind: Kind
    hash_part: str = ""
    nar_hash: str = ""
    compression: Method = Method.NONE


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the cache answers with an error: `status` (400 or 404) and why, for the log."""

    status: int
    reason: str


def route(raw_path: bytes, query: bytes = b"") -> Route | Refusal:
    """What the request target `raw_path` (as sent, without its query string `query`) names."""
    if not raw_path.startswith(b"/"):
        return Refusal(400, "the target is not a path")
    if not _TARGET_CHARS.issuperset(raw_path):
        return Refusal(400, "the path has characters no cache URL has")
    segments = raw_path[1:].split(b"/")
    if any(s in (b"", b".", b"..") for s in segments) and raw_path != b"/":
        return Refusal(400, "the path has an empty, '.' or '..' segment")
    if query:
        return Refusal(400, "cache URLs take no query")
    path = raw_path.decode("ascii")
    if path == CACHE_INFO_PATH:
        return Route(Kind.CACHE_INFO)
    if m := _NARINFO.fullmatch(path):
        return Route(Kind.NARINFO, m[1])
    if m := _LISTING.fullmatch(path):
        return Route(Kind.LISTING, m[1])
    if m := _NAR.fullmatch(path):
        return Route(Kind.NAR, m[1], m[2], _SUFFIX_METHOD[m[3] or ""])
    return Refusal(404, "no such file")


def cache_info(priority: int, store_dir: str = STORE_DIR) -> bytes:
    """`nix-cache-info` of the served store: mass queries welcome, the given priority."""
    return f"StoreDir: {store_dir}\nWantMassQuery: 1\nPriority: {priority}\n".encode()


def nar_hash_nix32(info: PathInfo) -> str:
    return format_digest(HashAlgorithm.SHA256, info.nar_hash, HashFormat.NIX32)


def nar_url(info: PathInfo, compression: Method) -> str:
    """The NAR's URL relative to the cache, as the narinfo names it."""
    return f"nar/{info.path.hash_part}-{nar_hash_nix32(info)}.nar{compression.suffix}"


def narinfo_text(
    info: PathInfo, compression: Method, key: SecretKey | None = None, store_dir: str = STORE_DIR
) -> str:
    """The narinfo served for `info` (see the module docstring), signed with `key` beside the signatures
    the store has; `info.nar_size` must be known (not 0), as Nix requires of a narinfo."""
    if key is not None:
        info = sign_path(info, key)
    if compression is Method.NONE:
        narinfo = NarInfo(
            info,
            nar_url(info, compression),
            "none",
            ParsedHash(HashAlgorithm.SHA256, info.nar_hash),
            info.nar_size,
        )
    else:
        narinfo = NarInfo(info, nar_url(info, compression), compression.value)
    return format_narinfo(narinfo, store_dir)


def etag(info: PathInfo) -> str:
    """A strong validator for the uncompressed NAR: its hash, which names its bytes."""
    return f'"{nar_hash_nix32(info)}"'


class Unsatisfiable:
    """The range asked for is outside the NAR or does not parse: 416."""


UNSATISFIABLE: Final = Unsatisfiable()


def byte_range(
    header: str | None, size: int, if_range: str | None = None, validator: str = ""
) -> tuple[int, int] | Unsatisfiable | None:
    """The part of a `size`-byte body a `Range` header asks for, as (first, last) byte positions
    (inclusive), `UNSATISFIABLE`, or None for the whole body (no header, another unit, several ranges,
    or an `If-Range` other than `validator`)."""
    if header is None:
        return None
    if if_range is not None and if_range.strip() != validator:
        return None
    unit, eq, spec = header.strip().partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    parts = spec.split(",")
    if len(parts) > 1:
        return None
    first_text, dash, last_text = parts[0].strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text or last_text) or not _digits(first_text) or not _digits(last_text):
        return UNSATISFIABLE
    if not first_text:  # the last n bytes
        n = _number(last_text)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - n), size - 1
    first = _number(first_text)
    last = _number(last_text) if last_text else size - 1
    if last < first or first >= size:
        return UNSATISFIABLE
    return first, min(last, size - 1)


def _digits(text: str) -> bool:
    return text == "" or (text.isascii() and text.isdigit())


def _number(digits: str) -> int:
    """ASCII digits as a number; more than 20 of them (past any file size) as 2**64, since Python refuses
    to convert more than 4,300 digits and a client may send any number of them."""
    return int(digits) if len(digits) <= 20 else 1 << 64

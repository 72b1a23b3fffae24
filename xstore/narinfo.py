"""The text files of a binary cache: `<hash>.narinfo` and `nix-cache-info`, read and written as Nix does.

Sans-IO: bytes in, objects out, and back. A narinfo is lines `Name: value\\n`; Nix splits each line at
its first `:` and takes the value from two characters later up to the newline, so the `": "` and the
final newline are required, unknown names are ignored, `Compression` defaults to bzip2, `Deriver:
unknown-deriver` means none, and `References` may be missing (harmonia leaves it out when empty). A
second `References` (after a non-empty one) or a second `CA` is corrupt, as are a missing StorePath,
NarHash or URL, a URL with a control character (a NUL, which no file name, key or URL can hold) and
a NarSize of zero. Errors name the file and the line, as current Nix's do.

Writing follows `NarInfo::to_string` exactly: StorePath, URL, Compression, FileHash, FileSize, NarHash,
NarSize, References (always, so an empty list leaves a trailing space), Deriver when known, one Sig per
signature in sorted order, CA when known. With `compression=none` and the same key the text equals
Nix's byte for byte.

`nix-cache-info` holds `StoreDir`, and optionally `WantMassQuery` and `Priority`; Nix writes only
`StoreDir`. Lines without a colon and unknown names are skipped, values are trimmed.

Nix: nar-info.cc (`NarInfo::NarInfo`, `NarInfo::to_string`), binary-cache-store.cc (`init`).
"""

from __future__ import annotations

from xstore.contentaddress import parse_content_address
from xstore.errors import InvalidHashError, InvalidStorePathError, NarInfoError, StoreError
from xstore.hashing import HashAlgorithm, HashFormat, ParsedHash, format_digest, parse_hash
from xstore.records import FrozenRecord, setfield
from xstore.storeapi import PathInfo
from xstore.storepath import STORE_DIR, StorePath, parse_base_name, parse_store_path

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from typing import Final

CACHE_INFO_FILE: Final = "nix-cache-info"
NARINFO_SUFFIX: Final = ".narinfo"
LISTING_SUFFIX: Final = ".ls"
_MAX_U64: Final = (1 << 64) - 1


class NarInfo(FrozenRecord):
    """A path's entry in a binary cache: what a store knows about it (`info`) plus where its NAR file is
    and how it is compressed. `file_hash` and `file_size` describe the file as stored (compressed);
    `file_size` 0 means unknown."""

    __slots__ = ("info", "url", "compression", "file_hash", "file_size")  # noqa: RUF023 (the fields' order)
    info: PathInfo
    url: str
    compression: str
    file_hash: ParsedHash | None
    file_size: int

    def __init__(
        self,
        info: PathInfo,
        url: str,
        compression: str,
        file_hash: ParsedHash | None = None,
        file_size: int = 0,
    ) -> None:
        setfield(self, "info", info)
        setfield(self, "url", url)
        setfield(self, "compression", compression)
        setfield(self, "file_hash", file_hash)
        setfield(self, "file_size", file_size)

    @property
    def path(self) -> StorePath:
        return self.info.path


def narinfo_name(path: StorePath) -> str:
    """The file a cache keeps `path`'s narinfo in."""
    return path.hash_part + NARINFO_SUFFIX


def _nix32(digest: bytes) -> str:
    return "sha256:" + format_digest(HashAlgorithm.SHA256, digest, HashFormat.NIX32)


def format_narinfo(narinfo: NarInfo, store_dir: str = STORE_DIR) -> str:
    """The narinfo text, as `NarInfo::to_string` writes it. A file hash that is not known (a NAR
    compressed while it is served) is left out, as current Nix leaves it out, and so is a FileSize of 0
    then; with a file hash, FileSize is always written, as 2.8 does. Raises `StoreError` for a file hash
    that is not SHA-256, which Nix cannot write either."""
    info = narinfo.info
    file_hash = narinfo.file_hash
    if file_hash is not None and file_hash.algorithm is not HashAlgorithm.SHA256:
        raise StoreError(f"cannot write the narinfo of '{info.path}' with a file hash that is not SHA-256")
    lines = [
        f"StorePath: {info.path.path_in(store_dir)}",
        f"URL: {narinfo.url}",
        f"Compression: {narinfo.compression}",
    ]
    if file_hash is not None:
        lines.append(f"FileHash: {_nix32(file_hash.digest)}")
    if file_hash is not None or narinfo.file_size:
        lines.append(f"FileSize: {narinfo.file_size}")
    lines += [
        f"NarHash: {_nix32(info.nar_hash)}",
        f"NarSize: {info.nar_size}",
        "References: " + " ".join(ref.base for ref in sorted(set(info.references))),
    ]
    if info.deriver is not None:
        lines.append(f"Deriver: {info.deriver.base}")
    lines.extend(f"Sig: {sig}" for sig in sorted(set(info.sigs)))
    if info.ca:
        lines.append(f"CA: {info.ca}")
    return "\n".join(lines) + "\n"


def _size(value: str) -> int | None:
    # At most 20 digits after leading zeros (2**64 - 1 has 20): Python refuses to convert more than 4,300.
    digits = value.lstrip("0") or "0"
    if not value.isascii() or not value.isdigit() or len(digits) > 20:
        return None
    n = int(digits)
    return n if n <= _MAX_U64 else None


def parse_narinfo(data: bytes | str, whence: str, store_dir: str = STORE_DIR) -> NarInfo:
    """Read a narinfo (`whence` names it in errors). Raises `NarInfoError` for anything Nix finds
    corrupt, also a NarHash that is not SHA-256 (which no store can check)."""
    line = 1

    def corrupt(reason: str, at_line: bool = True) -> NarInfoError:
        where = f" at line {line}" if at_line else ""
        return NarInfoError(f"NAR info file '{whence}' is corrupt: {reason}{where}", whence=whence)

    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise corrupt("not UTF-8 text", at_line=False) from None
    else:
        text = data

    def hash_field(value: str) -> ParsedHash:
        try:
            return parse_hash(value)
        except InvalidHashError:
            raise corrupt("bad hash") from None

    path: StorePath | None = None
    url = ""
    compression = ""
    file_hash: ParsedHash | None = None
    file_size = 0
    nar_hash: ParsedHash | None = None
    nar_size = 0
    references: list[StorePath] = []
    deriver: StorePath | None = None
    sigs: set[str] = set()
    ca: str | None = None
    pos = 0
    try:
        while pos < len(text):
            colon = text.find(":", pos)
            if colon < 0:
                raise corrupt("expecting ':'")
            name = text[pos:colon]
            eol = text.find("\n", colon + 2)
            if eol < 0:
                raise corrupt("expecting '\\n'")
            value = text[colon + 2 : eol]
            if name == "StorePath":
                path = parse_store_path(value, store_dir)
            elif name == "URL":
                if not value.isprintable() and any(c < " " or c == "\x7f" for c in value):
                    raise corrupt("URL holds a control character")  # no file, key or URL has one
                url = value
            elif name == "Compression":
                compression = value
            elif name == "FileHash":
                file_hash = hash_field(value)
            elif name == "FileSize":
                size = _size(value)
                if size is None:
                    raise corrupt("invalid FileSize")
                file_size = size
            elif name == "NarHash":
                nar_hash = hash_field(value)
            elif name == "NarSize":
                size = _size(value)
                if size is None:
                    raise corrupt("invalid NarSize")
                nar_size = size
            elif name == "References":
                if references:
                    raise corrupt("extra References")
                references = [parse_base_name(r) for r in value.split(" ") if r]
            elif name == "Deriver":
                if value != "unknown-deriver":
                    deriver = parse_base_name(value)
            elif name == "Sig":
                sigs.add(value)
            elif name == "CA":
                if ca is not None:
                    raise corrupt("extra CA")
                if value:
                    parse_content_address(value)
                    ca = value
            pos = eol + 1
            line += 1
    except (InvalidStorePathError, NarInfoError) as e:
        if isinstance(e, NarInfoError) and e.message.startswith("NAR info file"):
            raise
        raise corrupt(str(e)) from None
    missing = (
        "StorePath missing"
        if path is None
        else "NarHash missing"
        if nar_hash is None
        else "URL missing"
        if not url
        else "NarSize missing or zero"
        if nar_size == 0
        else None
    )
    if missing is not None:
        raise corrupt(missing, at_line=False)
    assert path is not None
    assert nar_hash is not None
    if nar_hash.algorithm is not HashAlgorithm.SHA256:
        raise corrupt(f"NarHash is {nar_hash.algorithm.value}, not sha256", at_line=False)
    info = PathInfo(
        path=path,
        nar_hash=nar_hash.digest,
        nar_size=nar_size,
        references=tuple(sorted(set(references))),
        deriver=deriver,
        sigs=tuple(sorted(sigs)),
        ca=ca,
    )
    return NarInfo(info, url, compression or "bzip2", file_hash, file_size)


# -- nix-cache-info -----------------------------------------------------------------------------------


class CacheInfo(FrozenRecord):
    """What `nix-cache-info` says; None where it says nothing."""

    __slots__ = ("store_dir", "want_mass_query", "priority")  # noqa: RUF023 (the fields' order)
    store_dir: str | None
    want_mass_query: bool | None
    priority: int | None

    def __init__(
        self,
        store_dir: str | None = None,
        want_mass_query: bool | None = None,
        priority: int | None = None,
    ) -> None:
        setfield(self, "store_dir", store_dir)
        setfield(self, "want_mass_query", want_mass_query)
        setfield(self, "priority", priority)


def parse_cache_info(data: bytes, whence: str) -> CacheInfo:
    """Read `nix-cache-info`. Raises `NarInfoError` for text that is not UTF-8 or a Priority that is not
    a number."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NarInfoError(f"'{whence}' is not UTF-8 text") from None
    store_dir: str | None = None
    want: bool | None = None
    priority: int | None = None
    for line in text.split("\n"):
        name, colon, value = line.partition(":")
        if not colon:
            continue
        value = value.strip(" \t\r")
        if name == "StoreDir":
            store_dir = value
        elif name == "WantMassQuery":
            want = value == "1"
        elif name == "Priority":
            try:
                priority = int(value)
            except ValueError:
                raise NarInfoError(f"'{whence}': Priority '{value}' is not a number") from None
    return CacheInfo(store_dir, want, priority)


def format_cache_info(store_dir: str = STORE_DIR) -> bytes:
    """`nix-cache-info` as Nix writes it for a new cache."""
    return f"StoreDir: {store_dir}\n".encode()

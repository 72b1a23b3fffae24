"""Content addresses: the `ca` of a store path, and whether the path really is what it claims.

A content-addressed path's name is computed from its contents, so it needs no signature: anyone can
recompute the path from the `ca` field and the references, and a path that checks out is trusted as if
built locally (Nix: path-info.cc `ValidPathInfo::isContentAddressed`, content-address.cc
`parseContentAddress`). The forms:

- `text:sha256:<hash>`: a text file (`builtins.toFile`); its references are other paths, never itself;
- `fixed:r:<algo>:<hash>`: a tree hashed as a NAR (`nix-store --add`, recursive fixed outputs);
- `fixed:<algo>:<hash>`: a flat file hashed as its bytes (`nix-store --add-fixed`, `fetchurl`).

The hash may be in any form Nix reads without a prefix of its own (nix32, base16, base64). Forms this
module does not know (`fixed:git:`, newer Nix) parse, but never check out: such a path needs a
signature. Everything here is pure computation.
"""

from __future__ import annotations

from xstore.errors import InvalidArgumentError, InvalidHashError, NarInfoError
from xstore.hashing import HashAlgorithm, parse_hash
from xstore.records import FrozenRecord, setfield
from xstore.storepath import make_fixed_output_path, make_source_path, make_text_path

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from xstore.storeapi import PathInfo
    from xstore.storepath import StorePath


class ContentAddress(FrozenRecord):
    """A parsed `ca`: `method` is `text`, `fixed` (flat) or `fixed:r` (recursive), or None for a form this
    module cannot recompute."""

    __slots__ = ("method", "algorithm", "digest")  # noqa: RUF023 (the fields' order)
    method: str | None
    algorithm: HashAlgorithm | None
    digest: bytes

    def __init__(self, method: str | None, algorithm: HashAlgorithm | None, digest: bytes) -> None:
        setfield(self, "method", method)
        setfield(self, "algorithm", algorithm)
        setfield(self, "digest", digest)


def parse_content_address(text: str) -> ContentAddress:
    """Parse a `ca` field. Raises `NarInfoError` for text that is not a content address at all."""
    prefix, sep, rest = text.partition(":")
    if not sep or prefix not in ("text", "fixed"):
        raise NarInfoError(f"'{text}' is not a content address (text:... or fixed:...)")
    method = prefix
    if prefix == "fixed":
        if rest.startswith("r:"):
            method, rest = "fixed:r", rest[2:]
        elif rest.startswith("git:"):
            return ContentAddress(None, None, b"")
    try:
        algorithm, digest = parse_hash(rest)
    except InvalidHashError as e:
        raise NarInfoError(f"content address '{text}': {e}") from None
    if method == "text" and algorithm is not HashAlgorithm.SHA256:
        raise NarInfoError(f"content address '{text}': text hashes are SHA-256")
    return ContentAddress(method, algorithm, digest)


def path_from_content_address(
    ca: ContentAddress, name: str, references: tuple[StorePath, ...], self_path: StorePath
) -> StorePath | None:
    """The store path `ca` and the references give a path named `name`, or None when they cannot (an
    unknown method, a text path referring to itself, a flat or non-SHA-256 path with references)."""
    self_reference = self_path in references
    others = tuple(r for r in references if r != self_path)
    try:
        if ca.method == "text":
            if self_reference:
                return None
            return make_text_path(name, ca.digest, others)
        if ca.method == "fixed:r" and ca.algorithm is HashAlgorithm.SHA256:
            return make_source_path(name, ca.digest, others, self_reference)
        if ca.method in ("fixed", "fixed:r") and ca.algorithm is not None:
            if references:
                return None
            return make_fixed_output_path(name, ca.algorithm, ca.digest, ca.method == "fixed:r")
    except InvalidArgumentError:
        return None
    return None


def is_content_addressed(info: PathInfo) -> bool:
    """Whether `info.ca` is set and recomputes to `info.path` (Nix: `isContentAddressed`)."""
    if not info.ca:
        return False
    try:
        ca = parse_content_address(info.ca)
    except NarInfoError:
        return False
    return path_from_content_address(ca, info.path.name, info.references, info.path) == info.path

"""Ed25519 keys and store path signatures, in Nix's formats.

- A secret key is `name:` + base64 of libsodium's 64-byte secret key (the 32-byte seed, then the 32-byte
  public key); a public key is `name:` + base64 of the 32-byte public key. Keys are split at the first
  `:`; an empty name or key is corrupt, a wrong length not valid. Base64 is read as Nix reads it:
  newlines are skipped and decoding stops at the first `=`, so a key file ending in a newline is fine.
- A signature is `keyname:` + base64 of the 64-byte Ed25519 signature of the path's fingerprint
  `1;PATH;NARHASH;NARSIZE;REFS` (`PathInfo.fingerprint()`). Ed25519 is deterministic, so a signature
  made here is byte-identical to Nix's for the same key and path.
- A signature counts when a trusted key of its name verifies it; a key name nobody trusts is simply
  not valid; a trusted name with a signature that is not 64 bytes is an error, as in Nix.

The cryptography comes from the `cryptography` package (the `cache` extra), imported on first use.

Nix: crypto.cc (`SecretKey`, `PublicKey`, `verifyDetached`), path-info.cc (`sign`, `checkSignatures`),
nix/sigs.cc (`nix key`, `nix store sign`).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Iterable, Mapping

from xstore.errors import SigningKeyError, UnsupportedError
from xstore.records import FrozenRecord, setfield

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from typing import Any, Final

    from xstore.storeapi import PathInfo

SECRET_KEY_BYTES: Final = 64
PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
_B64_CHARS: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise UnsupportedError(
            "signing and checking signatures needs the Python package 'cryptography': "
            "pip install 'xstore[cache]'"
        ) from None
    return ed25519


def _b64decode(text: str, what: str) -> bytes:
    """Base64 as Nix's `base64Decode` reads it: newlines skipped, the first `=` ends the data."""
    raw = text.replace("\n", "").split("=", 1)[0].encode("ascii", "replace")
    bad = next((c for c in raw if c not in _B64_CHARS), None)
    if bad is not None:
        raise SigningKeyError(f"{what}: invalid character in Base64 string: '{chr(bad)}'")
    try:
        return base64.b64decode(raw + b"=" * (-len(raw) % 4))
    except binascii.Error as e:
        raise SigningKeyError(f"{what}: {e}") from None


def _split(text: str) -> tuple[str, str]:
    name, sep, rest = text.partition(":")
    if not sep or not name:
        return "", ""
    return name, rest


class PublicKey(FrozenRecord):
    __slots__ = ("name", "key")  # noqa: RUF023 (the fields' order)
    name: str
    key: bytes  # 32 bytes

    def __init__(self, name: str, key: bytes) -> None:
        setfield(self, "name", name)
        setfield(self, "key", key)

    def to_text(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode()}"

    def verify(self, fingerprint: str, signature: bytes) -> bool:
        """Whether `signature` (64 bytes) is this key's signature of `fingerprint`."""
        from cryptography.exceptions import InvalidSignature

        try:
            _loaded_public(self.key).verify(signature, fingerprint.encode())
        except InvalidSignature:
            return False
        return True


@functools.lru_cache(maxsize=64)
def _loaded_public(key: bytes) -> Any:
    return _ed25519().Ed25519PublicKey.from_public_bytes(key)


@functools.lru_cache(maxsize=8)
def _loaded_private(seed: bytes) -> Any:
    # Loading a key costs as much as a signature: a server signing every narinfo loads it once.
    return _ed25519().Ed25519PrivateKey.from_private_bytes(seed)


class SecretKey(FrozenRecord):
    __slots__ = ("name", "key")  # noqa: RUF023 (the fields' order)
    name: str
    key: bytes  # 64 bytes: seed, then public key

    def __init__(self, name: str, key: bytes) -> None:
        setfield(self, "name", name)
        setfield(self, "key", key)

    def to_text(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode()}"

    def public_key(self) -> PublicKey:
        """The matching public key (the last 32 bytes, as libsodium keeps them)."""
        return PublicKey(self.name, self.key[32:])

    def sign_text(self, text: str) -> str:
        """`name:base64(signature)` of `text`."""
        signature = _loaded_private(self.key[:32]).sign(text.encode())
        return f"{self.name}:{base64.b64encode(signature).decode()}"

    def __repr__(self) -> str:  # never show the secret in a traceback
        return f"SecretKey(name={self.name!r})"


def parse_secret_key(text: str) -> SecretKey:
    """A secret key from its text form (a trailing newline is fine). Raises `SigningKeyError`."""
    name, rest = _split(text)
    if not name or not rest:
        raise SigningKeyError("secret key is corrupt (expected NAME:BASE64)")
    key = _b64decode(rest, "secret key")
    if len(key) != SECRET_KEY_BYTES:
        raise SigningKeyError(f"secret key '{name}' is not valid ({len(key)} bytes, not {SECRET_KEY_BYTES})")
    return SecretKey(name, key)


def parse_public_key(text: str) -> PublicKey:
    """A public key from its text form. Raises `SigningKeyError`."""
    name, rest = _split(text.strip())
    if not name or not rest:
        raise SigningKeyError(f"public key '{text.strip()}' is corrupt (expected NAME:BASE64)")
    key = _b64decode(rest, f"public key '{name}'")
    if len(key) != PUBLIC_KEY_BYTES:
        raise SigningKeyError(f"public key '{name}' is not valid ({len(key)} bytes, not {PUBLIC_KEY_BYTES})")
    return PublicKey(name, key)


def parse_public_keys(texts: Iterable[str]) -> dict[str, PublicKey]:
    """Public keys by name, from texts that may each hold several separated by whitespace (as Nix's
    `trusted-public-keys`). A later key of the same name replaces an earlier one."""
    keys: dict[str, PublicKey] = {}
    for text in texts:
        for word in text.split():
            key = parse_public_key(word)
            keys[key.name] = key
    return keys


def generate_secret_key(name: str) -> SecretKey:
    """A fresh key pair named `name`. Raises `SigningKeyError` for an empty name or one with a `:`."""
    if not name or ":" in name or any(c.isspace() for c in name):
        raise SigningKeyError(f"key name {name!r} must be non-empty, without ':' or white space")
    from cryptography.hazmat.primitives import serialization

    private = _ed25519().Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return SecretKey(name, seed + public)


def read_secret_key_file(path: str) -> SecretKey:
    """The secret key in the file at `path`. Raises `SigningKeyError`, `OSError`."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(4096)
    try:
        return parse_secret_key(text)
    except SigningKeyError as e:
        raise SigningKeyError(f"'{path}': {e}") from None


# -- path signatures ----------------------------------------------------------------------------------


def sign_path(info: PathInfo, key: SecretKey) -> PathInfo:
    """`info` with `key`'s signature of its fingerprint added (Nix: `ValidPathInfo::sign`)."""
    sig = key.sign_text(info.fingerprint())
    return info.replace(sigs=tuple(sorted({*info.sigs, sig})))


def signature_valid(fingerprint: str, sig: str, keys: Mapping[str, PublicKey]) -> bool:
    """Whether `sig` (`name:base64`) is valid for the key of its name among `keys` (Nix:
    `verifyDetached`). Raises `SigningKeyError` for a trusted name whose signature is not 64 bytes."""
    name, rest = _split(sig)
    key = keys.get(name)
    if key is None:
        return False
    raw = _b64decode(rest, f"signature by '{name}'")
    if len(raw) != SIGNATURE_BYTES:
        raise SigningKeyError(f"signature by '{name}' is not valid ({len(raw)} bytes, not {SIGNATURE_BYTES})")
    return key.verify(fingerprint, raw)


def valid_signatures(info: PathInfo, keys: Mapping[str, PublicKey]) -> int:
    """How many of `info`'s signatures are valid for `keys` (Nix: `checkSignatures`, without the
    content-address shortcut, which `trust.py` adds)."""
    if not keys or not info.sigs or info.nar_size <= 0:
        return 0
    fingerprint = info.fingerprint()
    return sum(signature_valid(fingerprint, sig, keys) for sig in set(info.sigs))


def require_trusted(info: PathInfo, keys: Mapping[str, PublicKey], where: str) -> None:
    """Refuse `info` unless it is content-addressed and checks out, or carries a signature valid for one
    of `keys` (Nix's `require-sigs`: `LocalStore::addToStore`). Raises `SignatureError` naming the path,
    the store (`where`) and what would make it acceptable."""
    from xstore.contentaddress import is_content_addressed
    from xstore.errors import SignatureError

    if is_content_addressed(info) or valid_signatures(info, keys):
        return
    have = ", ".join(sorted({s.partition(":")[0] for s in info.sigs})) or "none"
    trusted = ", ".join(sorted(keys)) or "none"
    raise SignatureError(
        f"cannot add path '{info.path}' to {where} because it lacks a valid signature (signed by: {have}; "
        f"trusted keys: {trusted}); trust the signer's key with --trusted-public-keys or "
        "'xstore store trust', or pass --no-check-sigs",
        path=info.path.path,
    )

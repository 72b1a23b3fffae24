"""Signing keys and path signatures in Nix's formats, the trust rule, and the key/sign/trust commands.

Byte equality with Nix's own `nix key` and `nix store sign` is in `tests/compat/test_cache_compat.py`;
here: RFC 8032's test vector (so the Ed25519 is the standard, deterministic one libsodium implements),
Nix's key parsing rules, and the require-sigs policy of a local store.
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xstore.cli.app import app
from xstore.errors import SignatureError, SigningKeyError
from xstore.nar.encoder import NarEncoder
from xstore.nar.events import ArchiveEnd, FileChunk, FileEnd, RegularFile
from xstore.signing import (
    SecretKey,
    generate_secret_key,
    parse_public_key,
    parse_public_keys,
    parse_secret_key,
    require_trusted,
    sign_path,
    signature_valid,
    valid_signatures,
)
from xstore.store import LocalStore
from xstore.storeapi import PathInfo
from xstore.storepath import make_source_path, make_store_path

runner = CliRunner()

# RFC 8032, section 7.1, TEST 1.
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIG_OF_EMPTY = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def rfc_key() -> SecretKey:
    return SecretKey("rfc-1", RFC_SEED + RFC_PUBLIC)


def test_standard_ed25519() -> None:
    key = rfc_key()
    assert key.sign_text("") == "rfc-1:" + base64.b64encode(RFC_SIG_OF_EMPTY).decode()
    assert key.public_key().key == RFC_PUBLIC
    assert key.public_key().verify("", RFC_SIG_OF_EMPTY)
    assert not key.public_key().verify("x", RFC_SIG_OF_EMPTY)


def test_key_text_forms() -> None:
    key = generate_secret_key("cache.example.org-1")
    text = key.to_text()
    assert text.startswith("cache.example.org-1:")
    assert len(base64.b64decode(text.split(":", 1)[1])) == 64
    assert parse_secret_key(text) == key
    assert parse_secret_key(text + "\n") == key  # Nix's base64Decode skips newlines
    public = key.public_key()
    assert public.key == key.key[32:]
    assert parse_public_key(public.to_text()) == public
    assert "secret" not in repr(key).lower().replace("secretkey", "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bad", "secret key is corrupt"),
        (":AAAA", "secret key is corrupt"),
        ("name:", "secret key is corrupt"),
        ("x:AAAA", "secret key 'x' is not valid (3 bytes, not 64)"),
        ("x:A*AA", "invalid character in Base64 string: '*'"),
    ],
)
def test_bad_secret_keys(text: str, message: str) -> None:
    with pytest.raises(SigningKeyError) as caught:
        parse_secret_key(text)
    assert message in str(caught.value)


def test_bad_public_keys_and_names() -> None:
    with pytest.raises(SigningKeyError, match="is not valid"):
        parse_public_key("k:" + base64.b64encode(bytes(31)).decode())
    with pytest.raises(SigningKeyError, match="is corrupt"):
        parse_public_key("nokey")
    for name in ("", "a:b", "a b"):
        with pytest.raises(SigningKeyError):
            generate_secret_key(name)
    a, b = generate_secret_key("a-1").public_key(), generate_secret_key("b-1").public_key()
    assert parse_public_keys([f"{a.to_text()}  {b.to_text()}\n"]) == {"a-1": a, "b-1": b}


def a_path(name: str = "hello", refs: tuple[str, ...] = ()) -> PathInfo:
    path = make_store_path("output:out", hashlib.sha256(name.encode()).digest(), name)
    references = tuple(
        sorted(make_store_path("output:out", hashlib.sha256(r.encode()).digest(), r) for r in refs)
    )
    return PathInfo(path, hashlib.sha256(b"nar of " + name.encode()).digest(), 1234, references)


def test_path_signatures() -> None:
    key = rfc_key()
    info = a_path("hello", ("dep",))
    signed = sign_path(info, key)
    (sig,) = signed.sigs
    keys = {"rfc-1": key.public_key()}
    assert signature_valid(info.fingerprint(), sig, keys)
    assert valid_signatures(signed, keys) == 1
    assert sign_path(signed, key) == signed  # deterministic: signing twice adds nothing
    # Anything in the fingerprint changed: no longer valid.
    for changed in (
        signed.replace(nar_size=1235),
        signed.replace(nar_hash=bytes(32)),
        signed.replace(references=()),
        signed.replace(path=a_path("other").path),
    ):
        assert valid_signatures(changed, keys) == 0
    # Not in the fingerprint: deriver, registration time, ca.
    assert valid_signatures(signed.replace(deriver=a_path("x.drv").path, registration_time=5), keys) == 1
    # An unknown key name is simply not valid; a trusted name with a short signature is an error.
    assert valid_signatures(signed, {"other-1": generate_secret_key("other-1").public_key()}) == 0
    with pytest.raises(SigningKeyError, match="not valid"):
        valid_signatures(signed.replace(sigs=("rfc-1:AAAA",)), keys)


def test_require_trusted() -> None:
    key = rfc_key()
    keys = {"rfc-1": key.public_key()}
    info = a_path()
    with pytest.raises(SignatureError) as caught:
        require_trusted(info, keys, "the store at 'X'")
    assert "lacks a valid signature" in str(caught.value)
    assert str(info.path) in str(caught.value)
    require_trusted(sign_path(info, key), keys, "x")
    with pytest.raises(SignatureError, match="signed by: other-1"):
        require_trusted(sign_path(info, generate_secret_key("other-1")), keys, "x")
    # A content-addressed path that checks out needs no signature; one that does not, does.
    nar = hashlib.sha256(b"tree").digest()
    ca = PathInfo(make_source_path("src", nar), nar, 10, (), ca="fixed:r:sha256:" + nar.hex())
    require_trusted(ca, {}, "x")
    with pytest.raises(SignatureError):
        require_trusted(ca.replace(ca="fixed:r:sha256:" + bytes(32).hex()), {}, "x")


# -- the local store's require-sigs ----------------------------------------------------------------------


def one_file_nar(contents: bytes) -> bytes:
    encoder = NarEncoder()
    events = (RegularFile((), False, len(contents), 0), FileChunk(contents), FileEnd(()), ArchiveEnd(0))
    return b"".join(encoder.send(event) for event in events)


def test_local_store_requires_signatures(tmp_path: Path) -> None:
    nar = one_file_nar(b"hi\n")
    key = generate_secret_key("k-1")
    path = make_store_path("output:out", bytes(32), "file")
    info = PathInfo(path, hashlib.sha256(nar).digest(), len(nar))
    with LocalStore.create(tmp_path / "root") as store:
        with pytest.raises(SignatureError):
            store.add_to_store(info, io.BytesIO(nar).read)
        assert not store.is_valid(path)
        with pytest.raises(SignatureError):  # signed, but by nobody it trusts
            store.add_to_store(sign_path(info, key), io.BytesIO(nar).read)
        store.trust_keys([key.public_key().to_text()])
        assert store.add_to_store(sign_path(info, key), io.BytesIO(nar).read)
        assert store.require(path).sigs == sign_path(info, key).sigs
    with LocalStore.open(tmp_path / "root") as store:
        assert store.trusted_keys() == {}  # trust_keys lasts as long as the store object
        other = info.replace(path=make_store_path("output:out", bytes(31) + b"\1", "file"))
        assert store.add_to_store(other, io.BytesIO(nar).read, check_sigs=False)


def test_trust_setting_and_commands(tmp_path: Path) -> None:
    root = tmp_path / "root"
    key_file = tmp_path / "sk"
    result = runner.invoke(app, ["key", "generate-secret", "--key-name", "t-1"])
    assert result.exit_code == 0, result.output
    assert not result.output.endswith("\n")
    key_file.write_text(result.output)
    result = runner.invoke(app, ["key", "convert-secret-to-public"], input=result.output)
    assert result.exit_code == 0
    public = result.output
    assert public == parse_secret_key(key_file.read_text()).public_key().to_text()
    assert runner.invoke(app, ["store", "init", "--store", str(root)]).exit_code == 0
    result = runner.invoke(app, ["store", "trust", "--store", str(root), public])
    assert result.exit_code == 0, result.output
    assert result.output == public + "\n"
    with LocalStore.open(root) as store:
        assert store.settings.trusted_public_keys == (public,)
        assert set(store.trusted_keys()) == {"t-1"}
    result = runner.invoke(app, ["store", "trust", "--store", str(root), "--remove", "t-1"])
    assert result.exit_code == 0
    assert result.output == ""
    result = runner.invoke(app, ["store", "trust", "--store", str(root), "t-1:AAAA"])
    assert result.exit_code == 1
    result = runner.invoke(app, ["key", "convert-secret-to-public"], input="garbage")
    assert result.exit_code == 1

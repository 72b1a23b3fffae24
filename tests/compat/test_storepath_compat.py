"""Store paths side by side with Nix 2.8: the paths it gives what it adds, and the paths it refuses.

Nix adds seeded random files and trees with random names to a chroot store in a temporary directory
(`nix-store --add`, `--add-fixed [--recursive] ALGO`, `builtins.toFile` with references between the
files), and xstore must compute the same paths: source paths from the NAR hash of `dump_path`, fixed
outputs from the file's or the NAR's hash, text paths from the contents and the references. Signature
fingerprints are checked through signatures: Ed25519 is deterministic, so signing our fingerprint with
the key Nix signed with must give Nix's signature byte for byte.

For validation, `nix-store -q --hash` on a malformed path shows whether 2.8's parser refuses it. Where
2.8 is more lenient than current Nix (no '-' after the hash, the names `.`, `..`, `.-x`, `..-x`) or
canonicalises first (trailing '/', '//', a path inside a store object), 2.8 parses the path and then
reports it as not valid in the store; xstore refuses all of these, as current Nix does the former.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import Nix, require_or_skip
from xstore.hashing import HashAlgorithm
from xstore.nar.dump import dump_path
from xstore.storepath import (
    MAX_NAME_LEN,
    InvalidStorePathError,
    StorePath,
    make_fixed_output_path,
    make_source_path,
    make_text_path,
    parse_base_name,
    parse_store_path,
    signature_fingerprint,
)

pytestmark = pytest.mark.compat

ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
NAME_CHARS = ALNUM + "+-._?="
H = "kc6j97s74i9f7h7lb31bmqzb2r7jfdil"
FOO_STORE = "/foo/store"


# ---------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chroot store shared by this module's tests (created by Nix on first use)."""
    return tmp_path_factory.mktemp("storepath") / "root"


def nix_instantiate(nix: Nix, store: str | Path, expr: str) -> object:
    """`nix-instantiate --eval --strict --json -E EXPR` in `store`, writes allowed; the parsed JSON."""
    exe = Path(nix.nix_store_exe).with_name("nix-instantiate")
    require_or_skip(exe.is_file(), f"{exe} not found (apt-get install nix-bin)")
    out = nix.run(
        [exe, "--store", store, "--read-write-mode", "--eval", "--strict", "--json", "-E", expr]
    ).stdout
    return json.loads(out)


def lines(output: bytes) -> list[str]:
    return output.decode("ascii").splitlines()


def random_name(rng: random.Random, length: int | None = None) -> str:
    # A letter or digit first keeps clear of the names current Nix refuses (".", ".-x", ...).
    length = rng.randint(1, 24) if length is None else length
    return rng.choice(ALNUM) + "".join(rng.choices(NAME_CHARS, k=length - 1))


def make_tree(path: Path, rng: random.Random, depth: int = 0) -> None:
    path.mkdir()
    for _ in range(rng.randint(0, 4)):
        child = path / random_name(rng, rng.randint(1, 8))
        if child.exists() or child.is_symlink():
            continue
        kind = rng.choice(["file", "file", "exec", "symlink", "dir"] if depth < 2 else ["file", "symlink"])
        if kind == "dir":
            make_tree(child, rng, depth + 1)
        elif kind == "symlink":
            child.symlink_to(random_name(rng))
        else:
            child.write_bytes(rng.randbytes(rng.randint(0, 200)))
            child.chmod(0o755 if kind == "exec" else 0o644)


def make_items(base: Path, rng: random.Random, count: int) -> list[Path]:
    """`count` files and trees with random names (the first one as long as a name may be)."""
    items = []
    for i in range(count):
        holder = base / str(i)
        holder.mkdir(parents=True)
        item = holder / random_name(rng, MAX_NAME_LEN if i == 0 else None)
        if i % 3 == 2:
            make_tree(item, rng)
        else:
            item.write_bytes(rng.randbytes(rng.randint(0, 300)))
        items.append(item)
    return items


def nar_hash(path: Path, algo: str = "sha256") -> bytes:
    h = hashlib.new(algo)
    dump_path(path, h.update)
    return h.digest()


# ---------------------------------------------------------------------------------------------------
# paths Nix computes


def test_add_source_paths(nix: Nix, root: Path, tmp_path: Path) -> None:
    items = make_items(tmp_path, random.Random("xstore-storepath-add"), 8)
    got = lines(nix.nix_store("--store", root, "--add", *items))
    assert got == [make_source_path(item.name, nar_hash(item)).path for item in items]
    assert [parse_store_path(p).name for p in got] == [item.name for item in items]


@pytest.mark.parametrize("algo", list(HashAlgorithm))
@pytest.mark.parametrize("recursive", [False, True], ids=["flat", "recursive"])
def test_add_fixed_paths(nix: Nix, root: Path, tmp_path: Path, algo: HashAlgorithm, recursive: bool) -> None:
    rng = random.Random(f"xstore-storepath-fixed-{algo.value}-{recursive}")
    items = make_items(tmp_path, rng, 4)
    if not recursive:
        items = [item for item in items if item.is_file()]
    flags = ["--recursive"] if recursive else []
    got = lines(nix.nix_store("--store", root, "--add-fixed", *flags, algo.value, *items))
    expected = [
        make_fixed_output_path(
            item.name,
            algo,
            nar_hash(item, algo.value) if recursive else hashlib.new(algo.value, item.read_bytes()).digest(),
            recursive,
        ).path
        for item in items
    ]
    assert got == expected


@dataclass
class TextFile:
    """A `builtins.toFile` call: `pieces` are literal text and indices of earlier files to interpolate."""

    name: str
    pieces: list[str | int]


def nix_escape(text: str) -> str:
    """`text` for the inside of a Nix string literal: `\\` escapes itself, `"`, `$` (so `${` stays text)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def random_text(rng: random.Random) -> str:
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\t", "\r", "é", "→", "${", "\\"]
    return "".join(rng.choices(alphabet, k=rng.randint(0, 60)))


def text_files(rng: random.Random) -> list[TextFile]:
    # The fact sheet's a and b first, then random ones; later files refer to earlier ones, in any
    # order and more than once.
    files = [TextFile("a", ["x"]), TextFile("b", ["ref ", 0])]
    files += [TextFile(random_name(rng), [random_text(rng)]) for _ in range(4)]
    for _ in range(5):
        pieces: list[str | int] = [random_text(rng)]
        for _ in range(rng.randint(1, 3)):
            pieces += [rng.randrange(len(files)), random_text(rng)]
        files.append(TextFile(random_name(rng), pieces))
    return files


def text_expression(files: Sequence[TextFile]) -> str:
    bindings = []
    for i, f in enumerate(files):
        body = "".join(nix_escape(p) if isinstance(p, str) else f"${{t{p}}}" for p in f.pieces)
        bindings.append(f't{i} = builtins.toFile "{nix_escape(f.name)}" "{body}";')
    return f"let {' '.join(bindings)} in [ {' '.join(f't{i}' for i in range(len(files)))} ]"


def expected_text_paths(files: Sequence[TextFile], store_dir: str = "/nix/store") -> list[StorePath]:
    paths: list[StorePath] = []
    for f in files:
        contents = "".join(p if isinstance(p, str) else paths[p].path_in(store_dir) for p in f.pieces)
        refs = [paths[p] for p in f.pieces if isinstance(p, int)]
        digest = hashlib.sha256(contents.encode()).digest()
        paths.append(make_text_path(f.name, digest, refs, store_dir=store_dir))
    return paths


def test_text_paths_with_references(nix: Nix, root: Path) -> None:
    files = text_files(random.Random("xstore-storepath-text"))
    got = nix_instantiate(nix, root, text_expression(files))
    assert got == [p.path for p in expected_text_paths(files)]
    assert isinstance(got, list)
    assert got[:2] == [
        "/nix/store/12wigjpizrn8axaqxj288q1b751qmwya-a",
        "/nix/store/kbnsdqvza4r1hzcr5vs2bhx8kv150g37-b",
    ]
    # Nix recorded the references we hashed.
    last = parse_store_path(got[-1])
    refs = lines(nix.nix_store("--store", root, "-q", "--references", last.path))
    assert refs == sorted({got[p] for p in files[-1].pieces if isinstance(p, int)})


def test_other_store_dir(nix: Nix, tmp_path: Path) -> None:
    store = f"local?root={tmp_path / 'root'}&store={FOO_STORE}"
    items = make_items(tmp_path / "items", random.Random("xstore-storepath-foo"), 3)
    got = lines(nix.nix_store("--store", store, "--add", *items))
    assert got == [
        make_source_path(item.name, nar_hash(item), store_dir=FOO_STORE).path_in(FOO_STORE) for item in items
    ]
    files = text_files(random.Random("xstore-storepath-foo-text"))
    got_text = nix_instantiate(nix, store, text_expression(files))
    assert got_text == [p.path_in(FOO_STORE) for p in expected_text_paths(files, FOO_STORE)]
    for path in got:
        assert parse_store_path(path, store_dir=FOO_STORE).path_in(FOO_STORE) == path


# ---------------------------------------------------------------------------------------------------
# signature fingerprints, through Ed25519 signatures (RFC 8032; deterministic, so equal messages and
# keys give equal signatures). Slow pure-Python arithmetic, fine for a handful of signatures.

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z


def _add(p: _Point, q: _Point) -> _Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, p: _Point) -> _Point:
    q: _Point = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _base_point() -> _Point:
    y = 4 * pow(5, _P - 2, _P) % _P
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if x & 1:
        x = _P - x
    return (x, y, 1, x * y % _P)


def _encode(p: _Point) -> bytes:
    zi = pow(p[2], _P - 2, _P)
    x, y = p[0] * zi % _P, p[1] * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def ed25519_sign(seed: bytes, message: bytes) -> tuple[bytes, bytes]:
    """(public key, signature) for `message` under the 32-byte secret `seed`."""
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    base = _base_point()
    public = _encode(_mul(a, base))
    r = int.from_bytes(hashlib.sha512(h[32:] + message).digest(), "little") % _L
    big_r = _encode(_mul(r, base))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % _L
    return public, big_r + ((r + k * a) % _L).to_bytes(32, "little")


def test_signature_fingerprints(nix: Nix, tmp_path: Path) -> None:
    root = tmp_path / "root"
    files = text_files(random.Random("xstore-storepath-sign"))
    text = nix_instantiate(nix, root, text_expression(files))
    assert isinstance(text, list)
    items = make_items(tmp_path / "items", random.Random("xstore-storepath-sign-add"), 3)
    source = lines(nix.nix_store("--store", root, "--add", *items))
    paths = [*text, *source]

    key_file = tmp_path / "secret-key"
    key_file.write_bytes(nix.nix_cmd("key", "generate-secret", "--key-name", "xstore-test-1"))
    key_name, _, key = key_file.read_text().strip().partition(":")
    secret = base64.b64decode(key)  # libsodium's form: seed, then the public key
    nix.nix_cmd("store", "sign", "--store", root, "--key-file", key_file, *paths)
    infos = json.loads(nix.nix_cmd("path-info", "--store", root, "--json", *paths))

    assert sorted(info["path"] for info in infos) == sorted(paths)
    for info in infos:
        fingerprint = signature_fingerprint(
            parse_store_path(info["path"]),
            info["narHash"],
            info["narSize"],
            [parse_store_path(ref) for ref in info["references"]],
        )
        public, signature = ed25519_sign(secret[:32], fingerprint.encode())
        assert public == secret[32:], "the Ed25519 test implementation is wrong"
        assert info["signatures"] == [f"{key_name}:{base64.b64encode(signature).decode()}"], fingerprint


# ---------------------------------------------------------------------------------------------------
# paths Nix refuses

# (base name, what 2.8 says): 2.8 refuses these as current Nix and xstore do.
REFUSED_BY_2_8 = [
    (f"{H}-a b", "contains illegal character ' '"),
    (f"{H}-a@b", "contains illegal character '@'"),
    (f"{H}-a~b", "contains illegal character '~'"),
    (f"{H}-a:b", "contains illegal character ':'"),
    (f"{H}-café", "contains illegal character"),
    (f"{H}-", "has an empty name"),
    (f"{H}-" + "n" * (MAX_NAME_LEN + 1), "has a name longer than 211 characters"),
    (f"e{H[1:]}-x", "contains illegal base-32 character 'e'"),
    (f"{H[:31]}A-x", "contains illegal base-32 character 'A'"),
    ("abc", "is too short to be a valid store path"),
    (H, "is too short to be a valid store path"),
]

# Full paths 2.8 parses (after canonicalising, and `-q` maps a path inside a store object to that
# object), then looks up: it says "path '<canonical>' is not valid". xstore refuses them.
ACCEPTED_BY_2_8 = [
    (f"/nix/store/{H}_x", f"/nix/store/{H}_x"),
    (f"/nix/store/{H}-.", f"/nix/store/{H}-."),
    (f"/nix/store/{H}-..", f"/nix/store/{H}-.."),
    (f"/nix/store/{H}-.-x", f"/nix/store/{H}-.-x"),
    (f"/nix/store/{H}-..-x", f"/nix/store/{H}-..-x"),
    (f"/nix/store/{H}-x/", f"/nix/store/{H}-x"),
    (f"/nix/store/{H}-x/bin/sh", f"/nix/store/{H}-x"),
    (f"/nix/store//{H}-x", f"/nix/store/{H}-x"),
]


@pytest.mark.parametrize(("base", "message"), REFUSED_BY_2_8)
def test_nix_refuses_what_we_refuse(nix: Nix, root: Path, base: str, message: str) -> None:
    stderr = nix.nix_store_fails("--store", root, "-q", "--hash", f"/nix/store/{base}")
    assert message in stderr
    assert "is not valid" not in stderr
    with pytest.raises(InvalidStorePathError):
        parse_store_path(f"/nix/store/{base}")
    with pytest.raises(InvalidStorePathError):
        parse_base_name(base)


@pytest.mark.parametrize(("text", "canonical"), ACCEPTED_BY_2_8)
def test_nix_2_8_is_more_lenient(nix: Nix, root: Path, text: str, canonical: str) -> None:
    stderr = nix.nix_store_fails("--store", root, "-q", "--hash", text)
    assert f"path '{canonical}' is not valid" in stderr
    with pytest.raises(InvalidStorePathError):
        parse_store_path(text)


@pytest.mark.parametrize("name", ["x", ".hidden", "...", "..a", "-", "n" * MAX_NAME_LEN])
def test_valid_absent_paths_are_looked_up(nix: Nix, root: Path, name: str) -> None:
    # The control for the tests above: a well-formed path gets as far as the lookup.
    path = parse_store_path(f"/nix/store/{H}-{name}")
    stderr = nix.nix_store_fails("--store", root, "-q", "--hash", path.path)
    assert f"path '{path}' is not valid" in stderr

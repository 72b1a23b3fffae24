"""Binary caches, keys and signatures side by side with Nix 2.8.

- Keys: a secret key made by either tool gives the same public key in both; `xstore sign` records the
  signatures `nix store sign` records, byte for byte.
- Nix writes caches with every compression it has (`nix copy --to file://...?compression=..&secret-key=
  ..&write-nar-listing=1`); xstore copies the closure out of each into a new store, and the export of
  what it copied equals Nix's export of the original.
- xstore writes caches with every compression; with `compression=none` its narinfos are byte-identical
  to Nix's and its listings the same JSON; `nix copy --from file://...` and `--from http://127.0.0.1:PORT`
  (a static file server this test starts) accept them with the key trusted, and Nix verifies the result.
- Refused cleanly, with nothing registered and nothing left in the store: a wrong key, a tampered NAR, a
  truncated NAR, a missing path, a wrong StoreDir, a server that drops the connection mid-NAR.

xstore runs as a real subprocess (`python -X dev -bb -W error -m xstore`) wherever exit codes and
messages matter.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.cacheservers import StaticServer, serve
from tests.compat.test_store_compat import leftovers, rows, xstore, xstore_fails, xstore_ok
from tests.helpers import Nix
from tests.nixstores import NixStore, build_nix_store

CLOSURE_LABELS = ("text_a", "text_b", "text_c", "dep", "out")
NIX_COMPRESSIONS = ("none", "xz", "zstd", "bzip2", "br", "gzip")
XSTORE_COMPRESSIONS = ("none", "xz", "zstd", "bzip2", "br")


@pytest.fixture(scope="module")
def source(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    """A store made by Nix (read-only for tests)."""
    return build_nix_store(nix, tmp_path_factory.mktemp("cache-compat-nix") / "root")


@pytest.fixture(scope="module")
def keys(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """A key pair made by Nix: `sk` (file), `pk` (text), and a second, untrusted pair `other_sk`."""
    base = tmp_path_factory.mktemp("keys")
    sk, other = base / "sk", base / "other-sk"
    sk.write_bytes(nix.nix_cmd("key", "generate-secret", "--key-name", "test-cache-1"))
    other.write_bytes(nix.nix_cmd("key", "generate-secret", "--key-name", "test-cache-1"))
    pk = nix.nix_cmd("key", "convert-secret-to-public", input=sk.read_bytes()).decode()
    return {"sk": sk, "pk": pk, "other_sk": other}


def closure(store: NixStore) -> list[str]:
    return [store.paths[label] for label in CLOSURE_LABELS]


def nix_store_args(root: Path) -> list[str]:
    return ["--store", str(root), "--option", "substituters", "", "--option", "build-users-group", ""]


@pytest.fixture(scope="module")
def nix_caches(
    nix: Nix, source: NixStore, keys: dict[str, Path | str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """`nix copy --to file://DIR?compression=C&secret-key=..&write-nar-listing=1` of `out`'s closure, one
    cache per compression."""
    base = tmp_path_factory.mktemp("nix-caches")
    caches = {}
    for method in NIX_COMPRESSIONS:
        cache = base / method
        url = f"file://{cache}?compression={method}&secret-key={keys['sk']}&write-nar-listing=1"
        nix.nix_cmd("copy", *nix_store_args(source.root), "--to", url, source.paths["out"])
        caches[method] = cache
    return caches


# -- keys and signatures -----------------------------------------------------------------------------


def test_keys_agree_with_nix(nix: Nix, keys: dict[str, Path | str], tmp_path: Path) -> None:
    mine = xstore_ok("key", "generate-secret", "--key-name", "xs-1")
    assert mine.startswith(b"xs-1:")
    assert not mine.endswith(b"\n")
    nix_public = nix.nix_cmd("key", "convert-secret-to-public", input=mine)
    assert xstore_ok("key", "convert-secret-to-public", input=mine) == nix_public
    nix_secret = Path(keys["sk"]).read_bytes()
    assert xstore_ok("key", "convert-secret-to-public", input=nix_secret).decode() == keys["pk"]
    assert xstore_ok("key", "convert-secret-to-public", input=nix_secret + b"\n").decode() == keys["pk"]
    assert "secret key" in xstore_fails("key", "convert-secret-to-public", input=b"test-cache-1:AAAA")


def test_sign_records_what_nix_records(
    nix: Nix, source: NixStore, keys: dict[str, Path | str], tmp_path: Path
) -> None:
    nix_root = Path(shutil.copytree(source.root, tmp_path / "nix-root", symlinks=True))
    x_root = Path(shutil.copytree(source.root, tmp_path / "x-root", symlinks=True))
    nix.nix_cmd(
        "store", "sign", *nix_store_args(nix_root), "--key-file", keys["sk"], "-r", source.paths["out"]
    )
    result = xstore("sign", "--store", x_root, "--key-file", keys["sk"], "-r", source.paths["out"])
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode() == "added 5 signatures\n"
    signed = {row[0]: row[5] for row in rows(nix_root)[0]}
    assert {row[0]: row[5] for row in rows(x_root)[0]} == signed
    assert all(signed[p] for p in closure(source))
    # Signing again adds nothing.
    assert xstore("sign", "--store", x_root, "--key-file", keys["sk"], "-r", source.paths["out"]).stderr == (
        b"added 0 signatures\n"
    )


# -- Nix writes, xstore reads --------------------------------------------------------------------------


@pytest.mark.parametrize("method", NIX_COMPRESSIONS)
def test_copy_from_nix_caches(
    nix: Nix,
    source: NixStore,
    nix_caches: dict[str, Path],
    keys: dict[str, Path | str],
    method: str,
    tmp_path: Path,
) -> None:
    dest = tmp_path / "root"
    printed = xstore_ok(
        "copy", "--from", f"file://{nix_caches[method]}", "--to", dest, "-r", source.paths["out"],
        "--trusted-public-keys", keys["pk"],
    ).decode()  # fmt: skip
    assert sorted(printed.split()) == sorted(closure(source))
    exported = xstore_ok("export", "--store", dest, *closure(source))
    assert exported == nix.nix_store(*source.store_args(), "--export", *closure(source))
    assert leftovers(dest) == []
    # The signatures and content addresses came along, into the database.
    theirs = {row[0]: row[5:] for row in rows(source.root)[0] if row[0] in closure(source)}
    mine = {row[0]: row[5:] for row in rows(dest)[0]}
    for path, (sigs, ca) in mine.items():
        assert ca == theirs[path][1]
        assert sigs is not None
        assert sigs.startswith("test-cache-1:")


def test_copy_from_nix_cache_needs_trust(
    source: NixStore, nix_caches: dict[str, Path], tmp_path: Path
) -> None:
    dest = tmp_path / "root"
    message = xstore_fails(
        "copy", "--from", f"file://{nix_caches['zstd']}", "--to", dest, "-r", source.paths["out"]
    )
    assert "lacks a valid signature" in message
    # As Nix: the content-addressed text paths came in, the first input-addressed one was refused.
    valid = [row[0] for row in rows(dest)[0]]
    assert source.paths["dep"] not in valid
    assert source.paths["text_a"] in valid
    assert leftovers(dest) == []
    xstore_ok(
        "copy",
        "--from",
        f"file://{nix_caches['zstd']}",
        "--to",
        dest,
        "-r",
        source.paths["out"],
        "--no-check-sigs",
    )
    assert len(rows(dest)[0]) == len(CLOSURE_LABELS)


# -- xstore writes, Nix reads --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xstore_caches(
    source: NixStore, keys: dict[str, Path | str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("xstore-caches")
    caches = {}
    for method in XSTORE_COMPRESSIONS:
        cache = base / method
        url = f"file://{cache}?compression={method}&secret-key={keys['sk']}&write-nar-listing=1"
        xstore_ok("copy", "--from", source.root, "--to", url, "-r", source.paths["out"])
        caches[method] = cache
    return caches


def test_narinfos_are_nix_bytes(
    source: NixStore, nix_caches: dict[str, Path], xstore_caches: dict[str, Path]
) -> None:
    import json

    theirs, mine = nix_caches["none"], xstore_caches["none"]
    names = sorted(p.name for p in theirs.glob("*.narinfo"))
    assert len(names) == len(CLOSURE_LABELS)
    assert sorted(p.name for p in mine.glob("*.narinfo")) == names
    for name in names:
        assert (mine / name).read_bytes() == (theirs / name).read_bytes(), name
    # Listings: the same JSON (2.8 writes keys in insertion order; current Nix and xstore sorted).
    for listing in theirs.glob("*.ls"):
        assert json.loads((mine / listing.name).read_bytes()) == json.loads(listing.read_bytes())
    assert (mine / "nix-cache-info").read_bytes() == (theirs / "nix-cache-info").read_bytes()
    assert sorted(p.name for p in (mine / "nar").iterdir()) == sorted(
        p.name for p in (theirs / "nar").iterdir()
    )
    assert {p.name for p in mine.iterdir() if p.is_dir()} == {"nar", "log", "realisations"}


@pytest.mark.parametrize("method", XSTORE_COMPRESSIONS)
def test_nix_copies_from_xstore_caches(
    nix: Nix,
    source: NixStore,
    xstore_caches: dict[str, Path],
    keys: dict[str, Path | str],
    method: str,
    tmp_path: Path,
) -> None:
    dest = tmp_path / "root"
    args = [*nix_store_args(dest), "--option", "trusted-public-keys", keys["pk"]]
    nix.nix_cmd("copy", *args, "--from", f"file://{xstore_caches[method]}", source.paths["out"])
    verified = nix.run([nix.nix_store_exe, *nix_store_args(dest), "--verify", "--check-contents"])
    assert b"error" not in verified.stderr
    assert nix.nix_store(*nix_store_args(dest), "--export", *closure(source)) == nix.nix_store(
        *source.store_args(), "--export", *closure(source)
    )
    # Without the key, Nix refuses the input-addressed paths: the signatures are what let them in.
    refused = nix.nix_cmd_fails(
        "copy",
        *nix_store_args(tmp_path / "other"),
        "--from",
        f"file://{xstore_caches[method]}",
        source.paths["out"],
    )
    assert "lacks a valid signature" in refused


def test_nix_copies_from_xstore_cache_over_http(
    nix: Nix, source: NixStore, xstore_caches: dict[str, Path], keys: dict[str, Path | str], tmp_path: Path
) -> None:
    with serve(StaticServer, xstore_caches["zstd"]) as url:
        dest = tmp_path / "root"
        args = [*nix_store_args(dest), "--option", "trusted-public-keys", keys["pk"]]
        nix.nix_cmd("copy", *args, "--from", url, source.paths["out"])
    nix.run([nix.nix_store_exe, *nix_store_args(dest), "--verify", "--check-contents"])
    assert len(rows(dest)[0]) == len(CLOSURE_LABELS)


# -- refusals ----------------------------------------------------------------------------------------------


@pytest.fixture
def cache_copy(nix_caches: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of Nix's zstd cache, for a test to damage."""
    return Path(shutil.copytree(nix_caches["zstd"], tmp_path / "cache"))


def refused(source: NixStore, url: str, tmp_path: Path, *extra: str) -> tuple[str, Path]:
    """Copy `out`'s closure from `url` into a store that already holds text_a; the copy must fail with one
    line, leaving the store as it was. Returns the line and the store."""
    dest = tmp_path / "dest"
    xstore_ok("copy", "--from", source.root, "--to", dest, source.paths["text_a"])
    before = rows(dest)
    message = xstore_fails("copy", "--from", url, "--to", dest, "-r", source.paths["out"], *extra)
    after = rows(dest)
    # Only content-addressed paths before the refused one may have come in; nothing of the refused one.
    assert set(after[0]) >= set(before[0])
    assert leftovers(dest) == []
    return message, dest


def registered(dest: Path) -> set[str]:
    return {row[0] for row in rows(dest)[0]}


def test_refuses_wrong_key(
    source: NixStore, cache_copy: Path, keys: dict[str, Path | str], tmp_path: Path
) -> None:
    other = xstore_ok("key", "convert-secret-to-public", input=Path(keys["other_sk"]).read_bytes()).decode()
    message, dest = refused(source, f"file://{cache_copy}", tmp_path, "--trusted-public-keys", other)
    assert "lacks a valid signature" in message
    assert source.paths["dep"] in message
    assert source.paths["dep"] not in registered(dest)


def nar_file_of(cache: Path, path: str) -> Path:
    narinfo = (cache / (Path(path).name[:32] + ".narinfo")).read_text()
    url = next(line[5:] for line in narinfo.splitlines() if line.startswith("URL: "))
    return cache / url


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_refuses_damaged_nar(
    source: NixStore, cache_copy: Path, keys: dict[str, Path | str], damage: str, tmp_path: Path
) -> None:
    nar = nar_file_of(cache_copy, source.paths["out"])
    data = bytearray(nar.read_bytes())
    if damage == "tampered":
        data[len(data) // 2] ^= 0x40
    else:
        del data[len(data) * 2 // 3 :]
    nar.write_bytes(bytes(data))
    message, dest = refused(
        source, f"file://{cache_copy}", tmp_path, "--trusted-public-keys", str(keys["pk"])
    )
    assert source.paths["out"] in message
    assert source.paths["out"] not in registered(dest)
    assert source.paths["dep"] in registered(dest)  # the dependencies before it are in


def test_refuses_missing_path(
    source: NixStore, cache_copy: Path, keys: dict[str, Path | str], tmp_path: Path
) -> None:
    (cache_copy / (Path(source.paths["dep"]).name[:32] + ".narinfo")).unlink()
    message, dest = refused(
        source, f"file://{cache_copy}", tmp_path, "--trusted-public-keys", str(keys["pk"])
    )
    assert f"path '{source.paths['dep']}' is not valid" in message
    assert registered(dest) == {source.paths["text_a"]}


def test_refuses_missing_nar_file(
    source: NixStore, cache_copy: Path, keys: dict[str, Path | str], tmp_path: Path
) -> None:
    nar_file_of(cache_copy, source.paths["dep"]).unlink()
    message, dest = refused(
        source, f"file://{cache_copy}", tmp_path, "--trusted-public-keys", str(keys["pk"])
    )
    assert "missing" in message
    assert source.paths["dep"] not in registered(dest)


def test_refuses_wrong_store_dir(source: NixStore, cache_copy: Path, tmp_path: Path) -> None:
    (cache_copy / "nix-cache-info").write_text("StoreDir: /gnu/store\n")
    message, dest = refused(source, f"file://{cache_copy}", tmp_path)
    assert message == (
        f"error: binary cache 'file://{cache_copy}' is for Nix stores with prefix '/gnu/store', "
        "not '/nix/store'"
    )
    assert registered(dest) == {source.paths["text_a"]}


def test_refuses_connection_dropped_mid_nar(
    source: NixStore, nix_caches: dict[str, Path], keys: dict[str, Path | str], tmp_path: Path
) -> None:
    nar = nar_file_of(nix_caches["none"], source.paths["out"]).relative_to(nix_caches["none"])
    with serve(StaticServer, nix_caches["none"], drop_after={"/" + str(nar): 300}) as url:
        message, dest = refused(source, url, tmp_path, "--trusted-public-keys", str(keys["pk"]))
    assert source.paths["out"] in message or str(nar) in message
    assert source.paths["out"] not in registered(dest)
    assert source.paths["dep"] in registered(dest)


def test_database_untouched_by_refusals_is_nix_readable(
    nix: Nix, source: NixStore, cache_copy: Path, tmp_path: Path
) -> None:
    nar = nar_file_of(cache_copy, source.paths["text_b"])
    nar.write_bytes(nar.read_bytes()[:-5])
    _, dest = refused(source, f"file://{cache_copy}", tmp_path, "--no-check-sigs")
    nix.run([nix.nix_store_exe, *nix_store_args(dest), "--verify", "--check-contents"])
    with sqlite3.connect(dest / "nix/var/nix/db/db.sqlite") as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)

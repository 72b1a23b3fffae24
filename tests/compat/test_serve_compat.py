"""`xstore serve http` against Nix 2.8 as the client.

The served store is case-hacked: a closure full of names that collide under case folding
(`build_case_closure`, made by Nix) copied into a store made with `xstore store init --case-hack on`, so
its files carry `~nix~case~hack~N` on disk. Served, it must give the original names:

- `nix copy --from http://127.0.0.1:PORT --option trusted-public-keys KEY` gets the closure, for every
  compression the server offers, and Nix's export of what it copied equals Nix's export of the original;
  `nix-store --verify --check-contents` accepts it;
- `nix-store -r PATH --option substituters http://127.0.0.1:PORT` substitutes it the same way;
- the narinfos are Nix's own bytes: equal, line for line but the URL, to what `nix copy --to
  file://...?compression=none&secret-key=..&write-nar-listing=1` writes from the original store, and
  the listings the same JSON; without the key trusted, Nix refuses the input-addressed path;
- a client killed mid-download, a malformed URL and a URL that tries `..` leave the server serving: Nix
  copies from it afterwards.

Every Nix client run gets a fresh `XDG_CACHE_HOME` (Nix 2.8 keeps narinfos and `nix-cache-info` of http
caches in its disk cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.compat.test_store_compat import xstore_ok
from tests.helpers import NIX_TIMEOUT, Arg, Nix, NixCommandError
from tests.nixstores import NixStore, build_case_closure
from tests.serving import get_status, serving

CASE_HACK = b"~nix~case~hack~"


@pytest.fixture(scope="module")
def source(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    """A store made by Nix, full of case collisions (read-only for tests)."""
    return build_case_closure(nix, tmp_path_factory.mktemp("serve-compat-nix") / "root")


@pytest.fixture(scope="module")
def closure(nix: Nix, source: NixStore) -> list[str]:
    return source.query_requisites(nix, "out")


@pytest.fixture(scope="module")
def original_export(nix: Nix, source: NixStore, closure: list[str]) -> bytes:
    return source.export(nix, *closure)


@pytest.fixture(scope="module")
def hacked(source: NixStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The closure copied into a case-hacked store (content addresses and all): the store served."""
    root = tmp_path_factory.mktemp("serve-compat-hacked") / "root"
    settings = json.loads(xstore_ok("store", "init", "--store", root, "--case-hack", "on", "--json"))
    assert settings["caseHack"] is True
    xstore_ok("copy", "--from", source.root, "--to", root, "-r", source.paths["out"])
    names = [name for _, dirs, files in os.walk(os.fsencode(root / "nix" / "store")) for name in dirs + files]
    assert any(CASE_HACK in name for name in names), "the served store should be case-hacked on disk"
    return root


@pytest.fixture(scope="module")
def keys(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    sk = tmp_path_factory.mktemp("serve-keys") / "sk"
    sk.write_bytes(nix.nix_cmd("key", "generate-secret", "--key-name", "serve-compat-1"))
    return sk, nix.nix_cmd("key", "convert-secret-to-public", input=sk.read_bytes()).decode()


def nix_client(nix: Nix, tmp_path: Path, *argv: Arg, expect_success: bool = True) -> str:
    """Run a Nix client command with a fresh narinfo disk cache; returns stderr (raises
    `NixCommandError` unless it exits as expected)."""
    cache = tmp_path / f"xdg-cache-{len(list(tmp_path.glob('xdg-cache-*')))}"
    env = {**nix.env, "XDG_CACHE_HOME": str(cache)}
    args = list(argv)
    result = subprocess.run(
        args, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=NIX_TIMEOUT, check=False
    )
    if (result.returncode == 0) != expect_success:
        raise NixCommandError(args, result.returncode, result.stderr)
    return result.stderr.decode("utf-8", "replace")


def store_args(root: Path) -> list[Arg]:
    return ["--store", root, "--option", "build-users-group", ""]


def nix_copy(nix: Nix, tmp_path: Path, url: str, dest: Path, path: str, *extra: Arg, ok: bool = True) -> str:
    argv: list[Arg] = [nix.nix_exe, "--extra-experimental-features", "nix-command", "copy", *store_args(dest)]
    return nix_client(
        nix, tmp_path, *argv, "--option", "substituters", "", *extra, "--from", url, path, expect_success=ok
    )


def assert_same_closure(nix: Nix, dest: Path, closure: list[str], original_export: bytes) -> None:
    nix.run(
        [nix.nix_store_exe, *store_args(dest), "--option", "substituters", "", "--verify", "--check-contents"]
    )
    exported = nix.nix_store(*store_args(dest), "--option", "substituters", "", "--export", *closure)
    assert exported == original_export


@pytest.mark.parametrize("method", ["none", "zstd", "xz"])
def test_nix_copies_original_closure(
    nix: Nix,
    source: NixStore,
    closure: list[str],
    original_export: bytes,
    hacked: Path,
    keys: tuple[Path, str],
    method: str,
    tmp_path: Path,
) -> None:
    dest = tmp_path / "dest"
    with serving(hacked, tmp_path, "--secret-key", keys[0], "--compression", method) as server:
        nix_copy(
            nix, tmp_path, server.url, dest, source.paths["out"], "--option", "trusted-public-keys", keys[1]
        )
    assert_same_closure(nix, dest, closure, original_export)
    nar_lines = [line for line in server.log_lines() if " GET /nar/" in line]
    assert len(nar_lines) == len(closure)
    assert all(
        f".nar{'' if method == 'none' else '.zst' if method == 'zstd' else '.xz'} 200 " in line
        for line in nar_lines
    )


def test_nix_store_realise_substitutes(
    nix: Nix,
    source: NixStore,
    closure: list[str],
    original_export: bytes,
    hacked: Path,
    keys: tuple[Path, str],
    tmp_path: Path,
) -> None:
    dest = tmp_path / "dest"
    with serving(hacked, tmp_path, "--secret-key", keys[0], "--compression", "zstd") as server:
        nix_client(
            nix, tmp_path, nix.nix_store_exe, *store_args(dest), "-r", source.paths["out"],
            "--option", "substituters", server.url, "--option", "trusted-public-keys", keys[1],
        )  # fmt: skip
    assert_same_closure(nix, dest, closure, original_export)


def test_unsigned_input_addressed_path_is_refused(
    nix: Nix, source: NixStore, hacked: Path, keys: tuple[Path, str], tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    with serving(hacked, tmp_path) as server:
        message = nix_copy(
            nix, tmp_path, server.url, dest, source.paths["out"], "--option", "trusted-public-keys", keys[1],
            ok=False,
        )  # fmt: skip
    assert "lacks a valid signature" in message
    assert source.paths["out"] in message


def test_narinfos_and_listings_are_nix_bytes(
    nix: Nix, source: NixStore, closure: list[str], hacked: Path, keys: tuple[Path, str], tmp_path: Path
) -> None:
    import httpx

    cache = tmp_path / "nix-cache"
    url = f"file://{cache}?compression=none&secret-key={keys[0]}&write-nar-listing=1"
    nix.nix_cmd("copy", *source.store_args(), "--to", url, source.paths["out"])
    with (
        serving(hacked, tmp_path, "--secret-key", keys[0]) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        for path in closure:
            hash_part = Path(path).name[:32]
            theirs = (cache / f"{hash_part}.narinfo").read_text().splitlines()
            mine = client.get(f"/{hash_part}.narinfo").text.splitlines()
            assert [line for line in mine if not line.startswith("URL: ")] == [
                line for line in theirs if not line.startswith("URL: ")
            ], path
            served_nar = client.get("/" + next(line[5:] for line in mine if line.startswith("URL: ")))
            nar_file = cache / next(line[5:] for line in theirs if line.startswith("URL: "))
            assert served_nar.content == nar_file.read_bytes(), path
            listing = client.get(f"/{hash_part}.ls")
            assert json.loads(listing.content) == json.loads((cache / f"{hash_part}.ls").read_bytes()), path


def test_keeps_serving_through_abuse(
    nix: Nix,
    source: NixStore,
    closure: list[str],
    original_export: bytes,
    hacked: Path,
    keys: tuple[Path, str],
    tmp_path: Path,
) -> None:
    from tests.integration.test_serve_http import add_sparse
    from tests.localstores import sp
    from xstore.store import LocalStore

    root = Path(shutil.copytree(hacked, tmp_path / "root", symlinks=True))
    big = sp("zz", "big")
    with LocalStore.open(root) as store:
        add_sparse(store, big, 64 << 20)
    big_file = str(root / "nix" / "store" / big.base / "big.bin")
    dest = tmp_path / "dest"
    with serving(root, tmp_path, "--secret-key", keys[0]) as server:
        narinfo = subprocess.run(
            ["curl", "-sf", f"{server.url}/{big.hash_part}.narinfo"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
        nar_url = next(line[5:] for line in narinfo.splitlines() if line.startswith("URL: "))
        with subprocess.Popen(
            ["curl", "-s", "--limit-rate", "100k", "-o", os.devnull, f"{server.url}/{nar_url}"]
        ) as curl:
            try:
                deadline = time.monotonic() + 30
                while big_file not in server.open_files() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert big_file in server.open_files()
            finally:
                curl.kill()
        server.wait_for_log(r"/nar/zz0+-.* \(client went away\)")
        for target in (b"/nar/../../nix/var/nix/db/db.sqlite", b"/%2e%2e/%2e%2e/etc/passwd", b"/\x01bad"):
            assert get_status(server, target) == 400
        assert get_status(server, b"/" + b"x" * 5000) == 404
        nix_copy(
            nix, tmp_path, server.url, dest, source.paths["out"], "--option", "trusted-public-keys", keys[1]
        )
    assert_same_closure(nix, dest, closure, original_export)

"""Store URLs: every form Nix reads, parameters, and the mistakes that must be refused, not taken for a
directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xstore.cli.app import app
from xstore.errors import InvalidStoreUrlError
from xstore.stores import open_store
from xstore.storeurl import parse_store_url

runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "scheme", "authority", "path", "params"),
    [
        (None, "local", "", "", {}),
        ("", "local", "", "", {}),
        ("auto", "local", "", "", {}),
        ("local", "local", "", "", {}),
        ("local?root=/mnt/root", "local", "", "/mnt/root", {}),
        ("/mnt/root", "local", "", "/mnt/root", {}),
        ("/mnt/root/", "local", "", "/mnt/root", {}),
        ("file:///srv/cache", "file", "", "/srv/cache", {}),
        (
            "file:///srv/cache?compression=zstd&secret-key=/k%20ey&write-nar-listing=1",
            "file",
            "",
            "/srv/cache",
            {"compression": "zstd", "secret-key": "/k ey", "write-nar-listing": "1"},
        ),
        ("http://127.0.0.1:5000", "http", "127.0.0.1:5000", "", {}),
        ("https://cache.example.org/sub/", "https", "cache.example.org", "/sub", {}),
        ("HTTPS://cache.example.org", "https", "cache.example.org", "", {}),
        (
            "s3://bucket?region=eu-west-1&endpoint=127.0.0.1:9000&scheme=http&profile=p",
            "s3",
            "bucket",
            "",
            {"region": "eu-west-1", "endpoint": "127.0.0.1:9000", "scheme": "http", "profile": "p"},
        ),
        ("ssh://alice@builder", "ssh", "alice@builder", "", {}),
        (
            "ssh://builder?remote-store=/r&ssh-key=/k",
            "ssh",
            "builder",
            "",
            {"remote-store": "/r", "ssh-key": "/k"},
        ),
        ("ssh-ng://builder", "ssh-ng", "builder", "", {}),
        ("unix:///run/nix/socket", "unix", "", "/run/nix/socket", {}),
        ("daemon", "daemon", "", "", {}),
        ("daemon?trusted=1", "daemon", "", "", {"trusted": "1"}),
    ],
)
def test_forms(text: str | None, scheme: str, authority: str, path: str, params: dict[str, str]) -> None:
    url = parse_store_url(text)
    assert (url.scheme, url.authority, url.path, url.params) == (scheme, authority, path, params)


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_store_url("./root").path == str(tmp_path / "root")
    assert parse_store_url("a/b").path == str(tmp_path / "a" / "b")
    assert parse_store_url("file://cache").path == str(tmp_path / "cache")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("store", "not a store URL: a directory needs a '/'"),
        ("foo://x", "unsupported store URL scheme 'foo://'"),
        ("local://x", "unsupported store URL scheme 'local://'"),
        ("file://", "names no path"),
        ("http://", "names no host"),
        ("http://:80", "names no host"),
        ("http://host:port", "Port could not be cast"),
        ("s3://", "names no bucket"),
        ("s3://bucket/key", "takes no path"),
        ("ssh://", "names no host"),
        ("ssh://host/path", "takes no path"),
        ("/root?compression", "is not name=value"),
        ("/root?=x", "is not name=value"),
        ("/ro\not", "control character"),
    ],
)
def test_bad_urls(text: str, message: str) -> None:
    with pytest.raises(InvalidStoreUrlError, match=message):
        parse_store_url(text)


def test_params() -> None:
    url = parse_store_url("file:///c?write-nar-listing=1&parallel-compression=false&priority=30&x=y")
    assert url.flag("write-nar-listing") is True
    assert url.flag("parallel-compression") is False
    assert url.flag("absent", default=True) is True
    assert url.integer("priority", 50) == 30
    assert url.integer("absent", 50) == 50
    with pytest.raises(InvalidStoreUrlError, match="must be true or false, not 'y'"):
        url.flag("x")
    with pytest.raises(InvalidStoreUrlError, match="must be a whole number, not 'y'"):
        url.integer("x", 0)


def test_base_hides_parameters() -> None:
    assert parse_store_url("file:///c?secret-key=/k").base() == "file:///c"
    assert parse_store_url("http://h:1/p?x=1").base() == "http://h:1/p"
    assert parse_store_url("local").base() == "local"
    assert parse_store_url("/r?root=/x").base() == "/r"


def test_unknown_local_parameter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidStoreUrlError, match="unknown parameter 'rot'"):
        open_store(f"{tmp_path}?rot=/x")


def test_cli_never_takes_a_url_for_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`copy --to file:///x` once made `./file:`; any URL xstore cannot open now gives one line and exit
    status 1, and the current directory stays empty."""
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "src"
    for to in ("foo:///x", "store", "unix:///nowhere"):
        result = runner.invoke(
            app, ["copy", "--from", str(source), "--to", to, "/nix/store/" + "0" * 32 + "-x"]
        )
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1, (to, result.output)
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: ")
        assert os.listdir(tmp_path) == [], to

"""s3:// binary caches against a real S3 HTTP API: moto's standalone server, started as a subprocess on
127.0.0.1 for this module and stopped afterwards (`tests/cacheservers.py`). xstore's client is boto3.

Uploads and downloads in every compression, signatures, a multipart upload of a NAR larger than the
part size (moto reports the part count in the ETag, as S3 does), missing keys, a missing bucket, and the
copy command as a user runs it, credentials from the environment.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cacheservers import moto_server
from tests.unit.test_cache import Closure, export_of, key_file, nar_of
from xstore.cache.base import BinaryCacheStore
from xstore.casehack import CaseHackMode
from xstore.copy import copy_paths
from xstore.errors import BinaryCacheError, InvalidPathError
from xstore.narinfo import parse_narinfo
from xstore.signing import generate_secret_key, valid_signatures
from xstore.store import LocalStore
from xstore.storeapi import PathInfo
from xstore.storepath import make_source_path
from xstore.stores import open_store

XSTORE = [sys.executable, "-X", "dev", "-bb", "-W", "error", "-m", "xstore"]
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as found:
        yield found


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    # No configuration files of the machine's user.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))


_buckets = iter(range(1_000_000))


@pytest.fixture
def bucket(endpoint: str) -> str:
    import boto3

    name = f"cache{next(_buckets)}"
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    client.create_bucket(Bucket=name)
    client.close()
    return name


def s3_url(bucket: str, endpoint: str, extra: str = "") -> str:
    return f"s3://{bucket}?region=us-east-1&endpoint={endpoint}&scheme=http{extra}"


@pytest.fixture
def closure(tmp_path: Path) -> Closure:
    return Closure(tmp_path)


@pytest.fixture
def source(tmp_path: Path, closure: Closure) -> Iterator[LocalStore]:
    with LocalStore.create(tmp_path / "source", case_hack=CaseHackMode.OFF) as store:
        closure.fill(store)
        yield store


@pytest.mark.parametrize("method", ["none", "xz", "zstd", "br"])
def test_s3_round_trip(
    source: LocalStore, closure: Closure, bucket: str, endpoint: str, method: str, tmp_path: Path
) -> None:
    key = generate_secret_key("s3-1")
    url = s3_url(
        bucket, endpoint, f"&compression={method}&secret-key={key_file(tmp_path, key)}&write-nar-listing=1"
    )
    with open_store(url, create=True) as dst:
        copy_paths(source, dst, [closure.app])
    with open_store(s3_url(bucket, endpoint)) as src:
        assert isinstance(src, BinaryCacheStore)
        assert src.backend.get("nix-cache-info") == b"StoreDir: /nix/store\n"
        data = src.backend.get(f"{closure.app.hash_part}.narinfo")
        assert data is not None
        narinfo = parse_narinfo(data, "x")
        assert narinfo.compression == method
        assert valid_signatures(narinfo.info, {"s3-1": key.public_key()}) == 1
        assert src.backend.get(f"{closure.lib.hash_part}.ls") is not None
        with LocalStore.create(tmp_path / "dest") as dest:
            dest.trust_keys([key.public_key().to_text()])
            copy_paths(src, dest, [closure.app])
            assert export_of(dest, [closure.lib, closure.app]) == export_of(
                source, [closure.lib, closure.app]
            )


def test_s3_multipart_upload(bucket: str, endpoint: str, tmp_path: Path) -> None:
    import boto3

    tree = tmp_path / "big"
    tree.mkdir()
    (tree / "data").write_bytes(os.urandom(6 << 20) + bytes(1 << 20))
    nar = nar_of(tree)
    digest = hashlib.sha256(nar).digest()
    path = make_source_path("big", digest)
    info = PathInfo(path, digest, len(nar), (), ca="fixed:r:sha256:" + digest.hex())
    url = s3_url(bucket, endpoint, "&compression=none&multipart-upload=true&buffer-size=5242880")
    with open_store(url, create=True) as dst:
        assert dst.add_to_store(info, io.BytesIO(nar).read)
        assert isinstance(dst, BinaryCacheStore)
        narinfo = dst.narinfo(path)
        assert narinfo is not None
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    head = client.head_object(Bucket=bucket, Key=narinfo.url)
    client.close()
    assert head["ContentLength"] == len(nar)
    assert head["ETag"].strip('"').endswith("-2")  # two parts: 5 MiB and the rest
    assert head["ContentType"] == "application/x-nix-nar"
    with LocalStore.create(tmp_path / "dest") as dest, open_store(s3_url(bucket, endpoint)) as src:
        copy_paths(src, dest, [path])
        assert dest.require(path).nar_hash == digest


def test_s3_missing(source: LocalStore, closure: Closure, bucket: str, endpoint: str, tmp_path: Path) -> None:
    with open_store(s3_url(bucket, endpoint), create=True) as dst:
        copy_paths(source, dst, [closure.lib])
    with open_store(s3_url(bucket, endpoint)) as src:
        assert src.query_valid_paths([closure.lib, closure.app]) == {closure.lib}
        with pytest.raises(InvalidPathError, match="is not valid"):
            src.query_closure([closure.app])
    with pytest.raises(BinaryCacheError, match="does not appear to be a binary cache"):
        open_store(s3_url("no-such-bucket", endpoint))


def test_s3_copy_command(
    source: LocalStore, closure: Closure, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    env = {**os.environ, **CREDENTIALS}
    result = subprocess.run(
        [*XSTORE, "copy", "--from", str(source.root), "--to", s3_url(bucket, endpoint, "&compression=zstd"),
         "-r", closure.app.path],
        capture_output=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == [closure.lib.path, closure.app.path]
    result = subprocess.run(
        [*XSTORE, "copy", "--from", s3_url(bucket, endpoint), "--to", str(tmp_path / "dest"),
         "--no-check-sigs", "-r", closure.app.path],
        capture_output=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with LocalStore.open(tmp_path / "dest") as dest:
        assert export_of(dest, [closure.lib, closure.app]) == export_of(source, [closure.lib, closure.app])
    # Without credentials: one line saying so.
    bare = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    bare.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    result = subprocess.run(
        [*XSTORE, "path-info", "--store", s3_url(bucket, endpoint), closure.app.path],
        capture_output=True, env=bare, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert "no AWS credentials" in lines[0]

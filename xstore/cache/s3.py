"""`s3://BUCKET` binary caches, through boto3 (the `s3` extra): AWS S3 and S3-compatible servers (MinIO,
Ceph, moto).

Parameters, as Nix has them:

- `region=` (default us-east-1), `profile=` (a profile of the AWS configuration files; credentials
  otherwise come from the environment, the files or the instance, as boto3 finds them);
- `endpoint=HOST[:PORT]` or a full URL, and `scheme=http|https` (default https) for S3-compatible
  servers, addressed path-style (`endpoint/bucket/key`), as MinIO wants;
- `multipart-upload=true`, `buffer-size=` (alias `multipart-chunk-size=`, at least 5 MiB) and
  `multipart-threshold=` (default 100 MiB): a NAR at least the threshold long (the chunk size, with
  `multipart-upload=true`) goes up in parts, streamed from the temporary file it was compressed into;
  memory holds a few parts at most.

Downloads stream the object's body; a missing key (404, NoSuchKey) or a refused one (403, AccessDenied,
as S3 answers for a missing key in a bucket one cannot list) means "not in this cache". Requests are
retried by botocore's standard mode (5 attempts); connections are pooled, 25 at once.

Nix: s3-binary-cache-store.cc (2.8), s3-url.cc and http-binary-cache-store.cc (current Nix).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO, Any, Final

from xstore.cache.base import MAX_SMALL_FILE, BinaryCacheStore, SpoolingBackend
from xstore.errors import BinaryCacheError, InvalidStoreUrlError, UnsupportedError
from xstore.storeapi import Read
from xstore.storeurl import StoreUrl

try:
    import boto3
    import botocore.config
    import botocore.exceptions
except ImportError:  # this module is imported only for an s3:// URL
    raise UnsupportedError(
        "s3:// binary caches need the Python package 'boto3': pip install 'xstore[s3]'"
    ) from None

CONNECTIONS: Final = 25
MIN_PART: Final = 5 << 20
DEFAULT_THRESHOLD: Final = 100 << 20
MISSING_CODES: Final = frozenset({"404", "403", "NoSuchKey", "NotFound", "AccessDenied", "NoSuchBucket"})


def _code(e: botocore.exceptions.ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class S3Backend(SpoolingBackend):
    parallel = CONNECTIONS

    def __init__(self, url: StoreUrl) -> None:
        self.bucket = url.authority
        self.url = f"s3://{self.bucket}"
        region = url.param("region") or url.param("aws-region") or "us-east-1"
        scheme = url.param("scheme") or "https"
        if scheme not in ("http", "https"):
            raise InvalidStoreUrlError(
                f"store URL '{url.text}': scheme must be http or https, not '{scheme}'"
            )
        endpoint = url.param("endpoint")
        endpoint_url = None
        if endpoint:
            endpoint_url = endpoint if "://" in endpoint else f"{scheme}://{endpoint}"
        chunk = url.integer("buffer-size", url.integer("multipart-chunk-size", MIN_PART))
        if chunk < MIN_PART:
            raise InvalidStoreUrlError(
                f"store URL '{url.text}': the multipart chunk size must be at least 5 MiB"
            )
        self.chunk_size = chunk
        self.threshold = (
            chunk if url.flag("multipart-upload") else url.integer("multipart-threshold", DEFAULT_THRESHOLD)
        )
        config = botocore.config.Config(
            region_name=region,
            max_pool_connections=CONNECTIONS,
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=30,
            read_timeout=300,
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        try:
            session = boto3.session.Session(profile_name=url.param("profile") or None)
            self.client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)
        except (botocore.exceptions.BotoCoreError, ValueError) as e:
            raise BinaryCacheError(f"cannot use {self.url}: {e}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def _failure(self, e: Exception, what: str, key: str) -> BinaryCacheError:
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            return BinaryCacheError(
                f"cannot {what} s3://{self.bucket}/{key}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or give profile=)"
            )
        if isinstance(e, botocore.exceptions.ClientError):
            error = e.response.get("Error", {})
            detail = f"{error.get('Code', '?')} {error.get('Message', '')}".rstrip()
            return BinaryCacheError(f"cannot {what} s3://{self.bucket}/{key}: {detail}")
        return BinaryCacheError(f"cannot {what} s3://{self.bucket}/{key}: {e}")

    def _missing(self, e: Exception) -> bool:
        return isinstance(e, botocore.exceptions.ClientError) and _code(e) in MISSING_CODES

    def get(self, name: str, limit: int = MAX_SMALL_FILE) -> bytes | None:
        limit = min(limit, MAX_SMALL_FILE)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=name)
            body = response["Body"]
            try:
                data: bytes = body.read(limit + 1)
            finally:
                body.close()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            if self._missing(e):
                return None
            raise self._failure(e, "read", name) from None
        if len(data) > limit:
            raise BinaryCacheError(f"s3://{self.bucket}/{name} is over {limit} bytes")
        return data

    def exists(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=name)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            if self._missing(e):
                return False
            raise self._failure(e, "check", name) from None
        return True

    @contextlib.contextmanager
    def open_read(self, url: str) -> Iterator[Read]:
        if "://" in url:
            raise BinaryCacheError(f"the NAR URL '{url}' in {self.url} is not relative to the bucket")
        key = url.split("?", 1)[0]
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            if self._missing(e):
                raise BinaryCacheError(f"the NAR file s3://{self.bucket}/{key} is missing") from None
            raise self._failure(e, "read", key) from None

        def read(n: int) -> bytes:
            try:
                data: bytes = body.read(n)
            except (botocore.exceptions.BotoCoreError, OSError) as e:
                raise self._failure(e, "read", key) from None
            return data

        try:
            yield read
        finally:
            body.close()

    def put(self, name: str, data: bytes, content_type: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data, ContentType=content_type)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise self._failure(e, "upload", name) from None

    def put_file(self, name: str, f: IO[bytes], size: int, content_type: str) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.threshold,
            multipart_chunksize=self.chunk_size,
            max_concurrency=4,
            use_threads=True,
        )
        try:
            self.client.upload_fileobj(
                f, self.bucket, name, ExtraArgs={"ContentType": content_type}, Config=config
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise self._failure(e, "upload", name) from None
        except boto3.exceptions.S3UploadFailedError as e:
            raise BinaryCacheError(f"cannot upload s3://{self.bucket}/{name}: {e}") from None


def open_s3_cache(url: StoreUrl, *, create: bool) -> BinaryCacheStore:
    backend = S3Backend(url)
    try:
        return BinaryCacheStore(url, backend, create=create)
    except BaseException:
        backend.close()
        raise

"""S3 backend (boto3): AWS S3 or any endpoint with conditional writes (MinIO, moto, ...).

Configuration comes from the standard AWS environment, which is what a Kubernetes Secret mounted with
``envFrom`` provides: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``/``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (read by boto3
itself). ``DYNAMICLORA_S3_ADDRESSING_STYLE`` overrides the addressing style (default ``path`` when a
custom endpoint is set, since such endpoints rarely serve virtual-hosted buckets).

Create-if-absent uses ``PutObject`` with ``If-None-Match: *`` (S3 conditional writes): the server
answers 412 when the key exists, so exactly one writer creates a manifest or a version claim.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynamiclora.storage.base import (
    READ_CHUNK,
    RECORDS_SUFFIX,
    BlobInfo,
    BlobNotFoundError,
    ObjectChanged,
    RecordCountError,
    RecordObject,
    StoreError,
    sha256_file,
)

_LOST_RACE_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def s3_client_from_env(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client configured from the environment (see module docstring)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return build_s3_client(endpoint_url, region)


def build_s3_client(
    endpoint_url: str | None, region: str, access_key_id: str | None = None, secret_access_key: str | None = None
) -> Any:
    """A boto3 S3 client for one storage; without keys boto3's default chain (env, workload identity) applies.

    An unset ``endpoint_url`` falls back to ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, as the Jobs do.
    """
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    style = os.environ.get("DYNAMICLORA_S3_ADDRESSING_STYLE") or ("path" if endpoint else "auto")
    cfg = Config(
        s3={"addressing_style": style},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=cfg,
                        aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key)  # fmt: skip


def _code(err: Exception) -> str:
    resp = getattr(err, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


class S3Backend:
    """Objects under ``s3://bucket/prefix``."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        if not bucket:
            raise ValueError("an S3 store URI needs a bucket: s3://BUCKET/PREFIX")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else s3_client_from_env()
        self.root_uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self, key: str) -> str:
        """``s3://`` URI of a key."""
        return f"s3://{self.bucket}/{self._full(key)}"

    def put_file(self, key: str, src: Path) -> None:
        """Upload ``src`` with its sha256 as S3 checksum, then verify the stored object."""
        from botocore.exceptions import ClientError

        digest, size = sha256_file(src)
        b64 = base64.b64encode(bytes.fromhex(digest)).decode()
        try:
            with src.open("rb") as body:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._full(key), Body=body, ChecksumSHA256=b64,
                    Metadata={"sha256": digest},
                )
        except ClientError as e:
            raise StoreError(f"upload of {src} to {self.describe(key)} failed: {e}") from e
        self._verify(key, digest, b64, size)

    def _verify(self, key: str, digest: str, b64: str, size: int) -> None:
        head = self.client.head_object(Bucket=self.bucket, Key=self._full(key), ChecksumMode="ENABLED")
        if int(head.get("ContentLength", -1)) != size:
            raise StoreError(f"verification of {self.describe(key)} failed: size "
                             f"{head.get('ContentLength')} != {size}")
        stored = head.get("ChecksumSHA256")
        if stored is not None and "-" not in stored:
            if stored != b64:
                raise StoreError(f"verification of {self.describe(key)} failed: server sha256 differs")
            return
        # The endpoint does not report a full-object sha256: read the object back and hash it.
        h = hashlib.sha256()
        body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            h.update(chunk)
        if h.hexdigest() != digest:
            raise StoreError(f"verification of {self.describe(key)} failed: read-back sha256 differs")

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Conditional create (``If-None-Match: *``); ``False`` when the key exists."""
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, IfNoneMatch="*")
        except ClientError as e:
            if _code(e) in _LOST_RACE_CODES:
                return False
            raise StoreError(f"conditional put of {self.describe(key)} failed: {e}") from e
        return True

    def get_bytes(self, key: str) -> bytes:
        """Read a key."""
        from botocore.exceptions import ClientError

        try:
            data: bytes = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except ClientError as e:
            if _code(e) in _MISSING_CODES:
                raise BlobNotFoundError(f"{self.describe(key)} does not exist") from e
            raise StoreError(f"reading {self.describe(key)} failed: {e}") from e
        return data

    def get_to_file(self, key: str, dest: Path) -> None:
        """Download a key to a local file."""
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as e:
            if _code(e) in _MISSING_CODES:
                raise BlobNotFoundError(f"{self.describe(key)} does not exist") from e
            raise StoreError(f"reading {self.describe(key)} failed: {e}") from e
        with dest.open("wb") as f:
            for chunk in iter(lambda: resp["Body"].read(1 << 20), b""):
                f.write(chunk)

    def list(self, prefix: str) -> list[BlobInfo]:
        """Every object under ``prefix`` (paginated)."""
        full = self._full(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: list[BlobInfo] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                out.append(BlobInfo(obj["Key"][strip:], int(obj["Size"]), obj["LastModified"]))
        return out

    def delete(self, key: str) -> None:
        """Delete a key (S3 ignores missing keys)."""
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))


class S3RecordSource:
    """Records objects below ``s3://bucket/prefix/``."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        key = prefix.lstrip("/")
        self.single = key.endswith(RECORDS_SUFFIX)  # one object; anything else is a prefix
        self.prefix = key if self.single else (key.rstrip("/") + "/" if key.strip("/") else "")
        self.client = client

    def objects(self) -> list[RecordObject]:
        out = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for o in page.get("Contents", []):
                    if o["Key"] == self.prefix if self.single else o["Key"].endswith(RECORDS_SUFFIX):
                        uri = f"s3://{self.bucket}/{o['Key']}"
                        out.append(RecordObject(uri, o["Key"], int(o["Size"]), f"{o.get('ETag', '')}:{o['Size']}"))
        except Exception as e:  # botocore's ClientError and BotoCoreError (endpoint, credentials)
            raise RecordCountError(f"listing s3://{self.bucket}/{self.prefix} failed: {e}") from e
        return sorted(out, key=lambda o: o.key)

    def chunks(self, obj: RecordObject) -> Iterator[bytes]:
        try:
            # IfMatch: the count is cached under the listed ETag, so it must be the count of that content.
            etag = obj.version.rpartition(":")[0]
            body = self.client.get_object(Bucket=self.bucket, Key=obj.key, **({"IfMatch": etag} if etag else {}))
        except Exception as e:
            if _code(e) in {"NoSuchKey", "404", "PreconditionFailed", "412"}:
                raise ObjectChanged(obj.uri) from e
            raise RecordCountError(f"reading {obj.uri} failed: {e}") from e
        yield from iter(lambda: body["Body"].read(READ_CHUNK), b"")

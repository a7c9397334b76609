"""Counting interaction records where agents write them: a folder (PVC) or an S3 prefix.

The operator counts an agent's records on every resync of its context tier to decide when to train. A
record is a non-empty line of a ``*.jsonl`` file below the agent's records location, as the trainer
reads them (:func:`dynamiclora.training.records.iter_sources`). Both kinds of location are a
:class:`RecordSource`; :func:`count_records` picks one from the URI, so callers never branch on the scheme.

Counts are cached per object version (size and mtime of a file, ETag and size of an S3 object): records
are appended as new objects or to the end of files, so a resync reads only what changed since the last
one, and an S3 prefix whose objects did not change costs one listing and no downloads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from dynamiclora.storage.base import StoreError

RECORDS_SUFFIX = ".jsonl"
MAX_OBJECT_BYTES = 256 << 20  # the trainer reads a records object whole; larger ones are refused
_CHUNK = 1 << 20


class RecordCountError(StoreError):
    """The records cannot be counted; the message names the location or object and why."""


@dataclass(frozen=True)
class RecordObject:
    """One records file or object, as listed."""

    uri: str  # for messages
    key: str  # what the source opens it by
    size: int
    version: str  # changes whenever the content does (mtime, ETag)


class RecordSource(Protocol):
    """The ``*.jsonl`` objects below one records location, and their content."""

    def objects(self) -> list[RecordObject]:
        """Every records object below the location (none when the location does not exist)."""
        ...

    def chunks(self, obj: RecordObject) -> Iterator[bytes]:
        """The content of ``obj`` in pieces (bounded memory whatever its size)."""
        ...


class FsRecordSource:
    """Records files below a folder (the operator mounts the storage PVCs where the Jobs do)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def objects(self) -> list[RecordObject]:
        out = []
        for p in sorted(self.root.rglob(f"*{RECORDS_SUFFIX}")) if self.root.is_dir() else []:
            try:
                st = p.stat()
            except FileNotFoundError:
                continue  # deleted while listing
            if p.is_file():
                out.append(RecordObject(str(p), str(p), st.st_size, f"{st.st_size}:{st.st_mtime_ns}"))
        return out

    def chunks(self, obj: RecordObject) -> Iterator[bytes]:
        try:
            with open(obj.key, "rb") as f:
                while chunk := f.read(_CHUNK):
                    yield chunk
        except FileNotFoundError:
            return  # deleted since listed: it has no records any more


class S3RecordSource:
    """Records objects below ``s3://bucket/prefix/``."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client

    def objects(self) -> list[RecordObject]:
        out = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for o in page.get("Contents", []):
                    if o["Key"].endswith(RECORDS_SUFFIX):
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
                raise _Changed from e
            raise RecordCountError(f"reading {obj.uri} failed: {e}") from e
        yield from iter(lambda: body["Body"].read(_CHUNK), b"")


class _Changed(Exception):
    """The object changed or disappeared between listing and reading: count it on the next pass."""


def _code(err: Exception) -> str:
    resp = getattr(err, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


class LineCounts:
    """A bounded, thread-safe cache: object version -> its number of records."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, obj: RecordObject) -> int | None:
        with self._lock:
            n = self._data.get((obj.uri, obj.version))
            if n is not None:
                self._data.move_to_end((obj.uri, obj.version))
            return n

    def put(self, obj: RecordObject, count: int) -> None:
        with self._lock:
            self._data[(obj.uri, obj.version)] = count
            self._data.move_to_end((obj.uri, obj.version))
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)


LINE_COUNTS = LineCounts()


def count_lines(chunks: Iterable[bytes]) -> int:
    """Non-empty lines (``\\n``-separated, whitespace-only ones are empty) of content given in pieces."""
    total = 0
    tail = b""
    for chunk in chunks:
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        total += sum(1 for line in lines if line.strip())
    return total + (1 if tail.strip() else 0)


def record_source(location: str, *, s3_client: Any = None) -> RecordSource:
    """The source of a records location: a folder (``file://`` or a plain path) or ``s3://bucket/prefix``.

    Args:
        location: the records location.
        s3_client: the boto3 client of the storage (default: one from the AWS_* environment).

    Raises:
        ValueError: an unsupported scheme or an S3 URI without a bucket.
    """
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return FsRecordSource(unquote(parsed.path) if parsed.scheme else location)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"records location {location!r}: missing bucket (s3://BUCKET/PREFIX)")
        if s3_client is None:
            from dynamiclora.storage.s3 import s3_client_from_env

            s3_client = s3_client_from_env()
        return S3RecordSource(parsed.netloc, parsed.path, s3_client)
    raise ValueError(f"records location {location!r}: unsupported scheme {parsed.scheme!r} (use file:// or s3://)")


def count_records(
    location: str, *, s3_client: Any = None, max_object_bytes: int | None = None, cache: LineCounts | None = None
) -> int:
    """Records (non-empty lines of every ``*.jsonl`` object) below ``location``; 0 when it does not exist.

    Raises:
        RecordCountError: the location cannot be listed or read, or an object exceeds ``max_object_bytes``.
    """
    source = record_source(location, s3_client=s3_client)
    cache = LINE_COUNTS if cache is None else cache
    limit = MAX_OBJECT_BYTES if max_object_bytes is None else max_object_bytes
    total = 0
    for obj in source.objects():
        cached = cache.get(obj)
        if cached is None:
            cached = _count_object(source, obj, limit, cache)
        total += cached
    return total


def _count_object(source: RecordSource, obj: RecordObject, max_bytes: int, cache: LineCounts) -> int:
    if obj.size > max_bytes:
        raise RecordCountError(f"records object {obj.uri} has {obj.size} bytes, more than the {max_bytes} the "
                               "operator reads: split it into smaller .jsonl objects")  # fmt: skip
    try:
        n = count_lines(_bounded(source.chunks(obj), obj, max_bytes))
    except _Changed:
        return 0  # replaced or deleted meanwhile: the next pass counts what is there then
    cache.put(obj, n)
    return n


def _bounded(chunks: Iterator[bytes], obj: RecordObject, max_bytes: int) -> Iterator[bytes]:
    """``chunks``, refusing content that grew past the limit after it was listed (a file being appended)."""
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > max_bytes:
            raise RecordCountError(f"records object {obj.uri} grew past {max_bytes} bytes while being read")
        yield chunk

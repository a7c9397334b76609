"""Counting interaction records where agents write them: a folder (PVC) or an S3 prefix.

The operator counts an agent's records on every resync of its context tier to decide when to train. A
record is a non-empty line of a ``*.jsonl`` file below the agent's records location, as the trainer
reads them (:func:`dynamiclora.training.records.iter_sources`). Both kinds of location are a
:class:`RecordSource` (one per storage scheme, ``storage/schemes.py``), so callers never branch on the scheme.

Counts are cached per object version (size and mtime of a file, ETag and size of an S3 object): records
are appended as new objects or to the end of files, so a resync reads only what changed since the last
one, and an S3 prefix whose objects did not change costs one listing and no downloads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from dynamiclora.storage.base import ObjectChanged, RecordCountError, RecordObject, RecordSource
from dynamiclora.storage.schemes import record_source

__all__ = ["LINE_COUNTS", "MAX_OBJECT_BYTES", "LineCounts", "RecordCountError", "count_lines", "count_records"]

MAX_OBJECT_BYTES = 256 << 20  # the trainer reads a records object whole; larger ones are refused


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


def count_records(
    location: str, *, s3_client: Any = None, max_object_bytes: int | None = None, cache: LineCounts | None = None
) -> int:
    """Records (non-empty lines of every ``*.jsonl`` object) below ``location``; 0 when it does not exist.

    Raises:
        RecordCountError: the location cannot be listed or read, or an object exceeds ``max_object_bytes``.
    """
    source = record_source(location, client=s3_client)
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
    except ObjectChanged:
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

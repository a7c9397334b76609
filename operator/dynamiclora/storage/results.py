"""Results of consolidation Jobs, handed back to the operator through the checkpoint store.

A Job's result (what it migrated, its gate verdict) must reach the operator wherever the store is: a
file on the shared volume, or an object in the bucket. Both sides name it by URI,
``<store>/_jobs/<namespace>/<job>.json``; each write replaces the whole object atomically (a retried pod
overwrites the failed attempt's error with its own result), so the operator never reads half of one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

RESULTS_DIR = "_jobs"


def result_uri(store: str, namespace: str, job: str) -> str:
    """Where the Job ``job`` of ``namespace`` leaves its result in the store at ``store``."""
    return f"{store.rstrip('/')}/{RESULTS_DIR}/{namespace}/{job}.json"


def _local(uri: str) -> Path | None:
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme == "file" else uri) if parsed.scheme in ("", "file") else None


def _bucket(uri: str, client: Any) -> tuple[Any, str]:
    from dynamiclora.storage.s3 import S3Backend

    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"result URI {uri!r}: use file:// or s3://BUCKET/KEY")
    return S3Backend(parsed.netloc, "", client=client), parsed.path.lstrip("/")


def write_result(uri: str, text: str, client: Any = None) -> None:
    """Write (or replace) the result at ``uri`` in one atomic step."""
    local = _local(uri)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.tmp")
        partial.write_text(text)
        partial.replace(local)
        return
    backend, key = _bucket(uri, client)
    with tempfile.TemporaryDirectory(prefix="dynamiclora-result-") as tmp:
        staged = Path(tmp) / "result.json"
        staged.write_text(text)
        backend.put_file(key, staged)


def read_result(uri: str, client: Any = None) -> bytes:
    """The result at ``uri``; raises ``OSError`` (a file) or the store's not-found error (a bucket) when absent."""
    local = _local(uri)
    if local is not None:
        return local.read_bytes()
    backend, key = _bucket(uri, client)
    data: bytes = backend.get_bytes(key)
    return data

"""Results of consolidation Jobs, handed back to the operator through the checkpoint store.

A Job's result (what it migrated, its gate verdict) must reach the operator wherever the store is: a
file on the shared volume, or an object in the bucket. Both sides name it by URI,
``<store>/_jobs/<namespace>/<job>.json``; each write replaces the whole object atomically (a retried pod
overwrites the failed attempt's error with its own result), so the operator never reads half of one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from dynamiclora.storage.base import BlobBackend, parse_version_dir
from dynamiclora.storage.schemes import blob_backend

RESULTS_DIR = "_jobs"
WORK_DIR = "_work"  # training attempts' mirrored checkpoints and published markers, per version produced


def result_uri(store: str, namespace: str, job: str) -> str:
    """Where the Job ``job`` of ``namespace`` leaves its result in the store at ``store``."""
    return f"{store.rstrip('/')}/{RESULTS_DIR}/{namespace}/{job}.json"


def _split(uri: str, client: Any) -> tuple[BlobBackend, str]:
    folder, _, name = uri.rstrip("/").rpartition("/")
    if not name or not folder:
        raise ValueError(f"result URI {uri!r}: expected <store>/{RESULTS_DIR}/<namespace>/<job>.json")
    return blob_backend(folder, client), name


def write_result(uri: str, text: str, client: Any = None) -> None:
    """Write (or replace) the result at ``uri`` in one atomic step (every backend's ``put_file`` is)."""
    backend, name = _split(uri, client)
    with tempfile.TemporaryDirectory(prefix="dynamiclora-result-") as tmp:
        staged = Path(tmp) / "result.json"
        staged.write_text(text)
        backend.put_file(name, staged)


def read_result(uri: str, client: Any = None) -> bytes:
    """The result at ``uri``; raises the store's ``BlobNotFoundError`` when there is none."""
    backend, name = _split(uri, client)
    data: bytes = backend.get_bytes(name)
    return data


def work_uri(store: str, namespace: str, tier: str, version: int) -> str:
    """Where the attempts at producing ``version`` of a tier mirror their work (``training/work_mirror.py``)."""
    return f"{store.rstrip('/')}/{WORK_DIR}/{namespace}/{tier}/v{version:06d}"


def prune_work(backend: BlobBackend, namespace: str, tier: str, versions: Collection[int]) -> int:
    """Delete the work areas of ``versions`` (those retention deleted); returns the objects deleted.

    A version's area holds its published marker once it is published (an unpublished one is reused, then
    emptied, by the next attempt at that number), so retention bounds it as it bounds the versions.
    """
    prefix = f"{WORK_DIR}/{namespace}/{tier}/"
    doomed = [info.key for info in backend.list(prefix)
              if parse_version_dir(info.key[len(prefix):].split("/")[0]) in versions]  # fmt: skip
    for key in doomed:
        backend.delete(key)
    return len(doomed)

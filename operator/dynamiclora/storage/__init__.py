"""Checkpoint store: versioned, verified tier checkpoints on a filesystem (PVC) or S3.

Use :func:`open_store` with ``file:///path`` or ``s3://bucket/prefix`` and program against
:class:`CheckpointStore`. See docs/storage.md for the layout and the atomicity guarantees.
"""

from dynamiclora.storage.base import (
    CheckpointStore,
    ChecksumMismatchError,
    Manifest,
    PublishConflictError,
    RetentionReport,
    StoreError,
    VersionNotFoundError,
    VersionRef,
)
from dynamiclora.storage.uri import TierRef, open_store, parse_tier_ref

__all__ = [
    "CheckpointStore",
    "ChecksumMismatchError",
    "Manifest",
    "PublishConflictError",
    "RetentionReport",
    "StoreError",
    "TierRef",
    "VersionNotFoundError",
    "VersionRef",
    "open_store",
    "parse_tier_ref",
]

"""Store and tier-reference URIs.

* A store URI names the root: ``file:///data/checkpoints`` or ``s3://bucket/prefix``.
* A tier reference appends ``<namespace>/<tier>`` and optionally ``v000007`` (or ``@latest``):
  ``s3://bucket/prefix/team-a/alice-context/v000007``. Without a version it means the latest one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from dynamiclora.storage.base import CheckpointStore, parse_version_dir, validate_name
from dynamiclora.storage.schemes import blob_backend, location, scheme_of
from dynamiclora.storage.store import BlobCheckpointStore


def open_store(uri: str, *, s3_client: Any = None) -> CheckpointStore:
    """Open the checkpoint store at ``uri``.

    Args:
        uri: ``file:///abs/path`` (or a plain absolute path) or ``s3://bucket[/prefix]``; any scheme of
            :mod:`dynamiclora.storage.schemes`.
        s3_client: a preconfigured boto3 client (default: one built from the AWS_* environment).

    Raises:
        ValueError: an unsupported scheme or a malformed URI (named in the message).
    """
    if scheme_of(uri).local:
        return _open_local(uri)
    return BlobCheckpointStore(blob_backend(uri, s3_client))


@dataclass(frozen=True)
class TierRef:
    """A parsed tier reference: store root, namespace, tier and optional version."""

    store_uri: str
    namespace: str
    tier: str
    version: int | None = None

    def __str__(self) -> str:
        base = f"{self.store_uri.rstrip('/')}/{self.namespace}/{self.tier}"
        return f"{base}/v{self.version:06d}" if self.version is not None else base


def parse_tier_ref(ref: str) -> TierRef:
    """Split ``<store>/<namespace>/<tier>[/vNNNNNN|@latest]`` into its parts.

    Raises:
        ValueError: when fewer than two path components follow the store root.
    """
    text = ref.rstrip("/")
    version: int | None = None
    if text.endswith("@latest"):
        text = text[: -len("@latest")]
    head, _, last = text.rpartition("/")
    parsed_version = parse_version_dir(last)
    if parsed_version is not None:
        version, text = parsed_version, head
    rest, _, tier = text.rpartition("/")
    store, _, namespace = rest.rpartition("/")
    try:
        root_ok = bool(location(store))
    except ValueError:
        root_ok = False
    if not tier or not namespace or not root_ok:
        raise ValueError(f"tier reference {ref!r}: expected <store-uri>/<namespace>/<tier>[/v000007] "
                         "with a store URI like file:///path or s3://bucket/prefix")
    try:
        validate_name("namespace", namespace)
        validate_name("tier", tier)
    except ValueError as e:
        raise ValueError(f"tier reference {ref!r}: {e}") from None
    return TierRef(store, namespace, tier, version)


@functools.lru_cache(maxsize=64)
def _open_local(uri: str) -> CheckpointStore:
    """Filesystem stores are stateless, so one per URI is shared (the operator opens them per reconcile)."""
    return BlobCheckpointStore(blob_backend(uri))

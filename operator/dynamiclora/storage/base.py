"""The checkpoint store interface, its data types and errors.

A checkpoint store holds immutable, monotonically numbered versions of every tier of every stack. Two
backends (filesystem for a PVC mount, S3) implement the small :class:`BlobBackend` protocol; the
versioning, verification and retention logic above it lives once in
:class:`dynamiclora.storage.store.BlobCheckpointStore`. Callers depend only on :class:`CheckpointStore`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

MANIFEST_NAME = "MANIFEST.json"
CLAIM_NAME = "CLAIM.json"
MANIFEST_FORMAT = "dynamiclora.checkpoint/v1"
VERSION_WIDTH = 6
# ``<namespace>/_feed/<tier>@v000007``: the newest version of each tier of a namespace, one small object a
# tier, so a watcher learns of every publish with one listing (a namespace or tier name never starts with "_").
FEED_DIR = "_feed"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_CHUNK = 1 << 20


class StoreError(Exception):
    """Base class of every checkpoint-store error; the message names the object involved."""


class VersionNotFoundError(StoreError):
    """The requested version has no published manifest (never written, unfinished, or deleted)."""


class ChecksumMismatchError(StoreError):
    """An object's content does not match the sha256 recorded in its manifest."""


class PublishConflictError(StoreError):
    """Another writer published the version this writer claimed (should not happen with claims)."""


class BlobNotFoundError(StoreError):
    """A backend object does not exist."""


def validate_name(kind: str, value: str) -> str:
    """Check a namespace or tier name: it becomes a path/key component.

    Raises:
        ValueError: naming ``kind`` when the value is empty or has characters outside ``[A-Za-z0-9._-]``.
    """
    if not _NAME_RE.match(value) or value in {".", ".."}:
        raise ValueError(f"invalid {kind} {value!r}: use letters, digits, '.', '_' or '-' (max 253)")
    return value


def validate_file_name(value: str) -> str:
    """Check a checkpoint file name (flat: no directories)."""
    if not _FILE_RE.match(value) or value in {MANIFEST_NAME, CLAIM_NAME}:
        raise ValueError(f"invalid checkpoint file name {value!r}")
    return value


def version_dir(version: int) -> str:
    """The key component of a version, e.g. ``v000007``."""
    if version < 1:
        raise ValueError(f"versions start at 1, got {version}")
    return f"v{version:0{VERSION_WIDTH}d}"


def parse_version_dir(component: str) -> int | None:
    """Inverse of :func:`version_dir`; ``None`` for anything else."""
    m = re.fullmatch(rf"v(\d{{{VERSION_WIDTH},}})", component)
    return int(m.group(1)) if m else None


def sha256_file(path: Path) -> tuple[str, int]:
    """The hex sha256 and size of a local file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


@dataclass(frozen=True)
class FileEntry:
    """One file of a version as recorded in its manifest."""

    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """The record that makes a version visible; published last, never modified."""

    namespace: str
    tier: str
    version: int
    created: str
    files: dict[str, FileEntry]
    metadata: dict[str, Any] = field(default_factory=dict)
    writer: str = ""

    @property
    def digest(self) -> str:
        """sha256 over the sorted file list: one checksum for the whole version (for status)."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name} {self.files[name].sha256} {self.files[name].size}\n".encode())
        return h.hexdigest()

    def to_json(self) -> bytes:
        """Canonical JSON bytes."""
        doc = {
            "format": MANIFEST_FORMAT,
            "namespace": self.namespace,
            "tier": self.tier,
            "version": self.version,
            "created": self.created,
            "writer": self.writer,
            "digest": self.digest,
            "files": {n: {"sha256": e.sha256, "size": e.size} for n, e in sorted(self.files.items())},
            "metadata": self.metadata,
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parse and validate manifest bytes read from ``where`` (named in errors)."""
        try:
            doc = json.loads(data)
            if doc.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            files = {str(n): FileEntry(str(e["sha256"]), int(e["size"])) for n, e in doc["files"].items()}
            m = cls(
                namespace=str(doc["namespace"]),
                tier=str(doc["tier"]),
                version=int(doc["version"]),
                created=str(doc["created"]),
                files=files,
                metadata=dict(doc.get("metadata") or {}),
                writer=str(doc.get("writer", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StoreError(f"invalid manifest {where}: {e}") from e
        if doc.get("digest") not in (None, m.digest):
            raise ChecksumMismatchError(f"manifest {where} digest does not match its file list")
        return m


@dataclass(frozen=True)
class VersionRef:
    """A published version: where it is and what it contains."""

    namespace: str
    tier: str
    version: int
    uri: str
    manifest: Manifest

    @property
    def digest(self) -> str:
        """The manifest digest (see :attr:`Manifest.digest`)."""
        return self.manifest.digest


@dataclass(frozen=True)
class RetentionReport:
    """What a retention pass kept and deleted."""

    kept: list[int]
    deleted: list[int]
    garbage_deleted: list[int]
    garbage_kept: list[int]


@dataclass(frozen=True)
class BlobInfo:
    """One backend object, as listed."""

    key: str
    size: int
    modified: datetime


class BlobBackend(Protocol):
    """The minimal object operations a store backend provides; keys are '/'-separated and relative."""

    root_uri: str

    def describe(self, key: str) -> str:
        """A full URI for ``key`` (used in messages)."""
        ...

    def put_file(self, key: str, src: Path) -> None:
        """Write ``src`` at ``key`` and verify the stored content matches ``src``'s sha256."""
        ...

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Atomically create ``key`` with ``data``; ``False`` (and no change) when it already exists."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Read ``key``; raises :class:`BlobNotFoundError`."""
        ...

    def get_to_file(self, key: str, dest: Path) -> None:
        """Copy ``key`` to the local file ``dest``; raises :class:`BlobNotFoundError`."""
        ...

    def list(self, prefix: str) -> list[BlobInfo]:
        """Every object whose key starts with ``prefix`` (recursive)."""
        ...

    def delete(self, key: str) -> None:
        """Delete ``key``; missing keys are ignored."""
        ...


ProgressFn = Callable[[str], None]


@runtime_checkable
class CheckpointStore(Protocol):
    """Versioned, verified checkpoint storage for tiers (see docs/storage.md)."""

    root_uri: str

    def tier_uri(self, namespace: str, tier: str) -> str:
        """The URI of a tier (``<root>/<namespace>/<tier>``)."""
        ...

    def version_uri(self, namespace: str, tier: str, version: int) -> str:
        """The URI of one version (``<root>/<namespace>/<tier>/v000007``)."""
        ...

    def publish(
        self,
        namespace: str,
        tier: str,
        files: Mapping[str, Path],
        metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
    ) -> VersionRef:
        """Upload ``files`` as the next version and publish its manifest last."""
        ...

    def list_versions(self, namespace: str, tier: str) -> list[int]:
        """Published versions, ascending (unfinished ones are invisible)."""
        ...

    def heads(self, namespace: str) -> dict[str, int]:
        """Each tier of the namespace with the newest version its feed marks (a hint: the manifests rule)."""
        ...

    def latest(self, namespace: str, tier: str) -> VersionRef | None:
        """The highest published version, or ``None``."""
        ...

    def get(self, namespace: str, tier: str, version: int) -> VersionRef:
        """A published version; raises :class:`VersionNotFoundError`."""
        ...

    def read_file(self, namespace: str, tier: str, version: int, name: str, max_bytes: int | None = None) -> bytes:
        """One file of a version, verified against the manifest; ``StoreError`` beyond ``max_bytes``."""
        ...

    def download(self, namespace: str, tier: str, version: int, dest: Path) -> VersionRef:
        """Every file of a version into ``dest``, verified; the manifest is written last."""
        ...

    def retain(
        self,
        namespace: str,
        tier: str,
        keep_last: int,
        protected: frozenset[int] = frozenset(),
        stale_after: timedelta = timedelta(hours=1),
        now: datetime | None = None,
        is_stale: Callable[[int, datetime], bool] | None = None,
    ) -> RetentionReport:
        """Delete old versions and stale unfinished writes, keeping protected ones and the latest."""
        ...


RECORDS_SUFFIX = ".jsonl"
READ_CHUNK = 1 << 20


class RecordCountError(StoreError):
    """The records cannot be counted; the message names the location or object and why."""


class ObjectChanged(StoreError):
    """The object changed or disappeared between listing and reading: count it on the next pass."""


@dataclass(frozen=True)
class RecordObject:
    """One records file or object, as listed."""

    uri: str  # for messages
    key: str  # what the source opens it by
    size: int
    version: str  # changes whenever the content does (mtime, ETag)


class RecordSource(Protocol):
    """The records objects at one location, and their content.

    A location names one object (a file, or a key ending in ``.jsonl``), read whatever its name, or a
    folder / key prefix, of which every ``*.jsonl`` object below counts.
    """

    def objects(self) -> list[RecordObject]:
        """Every records object at the location, sorted (none when the location does not exist)."""
        ...

    def chunks(self, obj: RecordObject) -> Iterator[bytes]:
        """The content of ``obj`` in pieces (bounded memory whatever its size)."""
        ...

"""Versioning, verification and retention over any :class:`BlobBackend`.

Layout under the store root (see docs/storage.md)::

    <namespace>/<tier>/v000007/CLAIM.json       written first, create-if-absent: reserves the number
    <namespace>/<tier>/v000007/<files>          uploaded and verified one by one
    <namespace>/<tier>/v000007/MANIFEST.json    create-if-absent, LAST: makes the version visible
    <namespace>/_feed/<tier>@v000007            after the manifest: tells watchers (the operator) at once

Claiming the number before uploading means two writers never upload into the same version, and a
crashed writer's number is never reused (the next writer skips past every claimed number), so its
garbage cannot be mistaken for part of a later version. Retention removes that garbage once stale.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dynamiclora.storage.base import (
    CLAIM_NAME,
    FEED_DIR,
    MANIFEST_NAME,
    BlobBackend,
    BlobNotFoundError,
    ChecksumMismatchError,
    FileEntry,
    Manifest,
    ProgressFn,
    PublishConflictError,
    RetentionReport,
    StoreError,
    VersionNotFoundError,
    VersionRef,
    parse_version_dir,
    sha256_file,
    validate_file_name,
    validate_name,
    version_dir,
)

_MAX_CLAIM_ATTEMPTS = 50


def _now() -> datetime:
    return datetime.now(UTC)


def rfc3339(t: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC with a ``Z`` suffix."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class BlobCheckpointStore:
    """The :class:`~dynamiclora.storage.base.CheckpointStore` implementation over a blob backend."""

    def __init__(self, backend: BlobBackend) -> None:
        self.backend = backend
        self.root_uri = backend.root_uri

    # -- naming -----------------------------------------------------------------------------------
    @staticmethod
    def _tier_key(namespace: str, tier: str) -> str:
        return f"{validate_name('namespace', namespace)}/{validate_name('tier', tier)}"

    def _key(self, namespace: str, tier: str, version: int, name: str) -> str:
        return f"{self._tier_key(namespace, tier)}/{version_dir(version)}/{name}"

    def tier_uri(self, namespace: str, tier: str) -> str:
        """The URI of a tier."""
        return self.backend.describe(self._tier_key(namespace, tier))

    def version_uri(self, namespace: str, tier: str, version: int) -> str:
        """The URI of one version."""
        return self.backend.describe(f"{self._tier_key(namespace, tier)}/{version_dir(version)}")

    # -- listing ----------------------------------------------------------------------------------
    def _scan(self, namespace: str, tier: str) -> dict[int, dict[str, datetime]]:
        """Every version number with any object, mapped to its object names and modification times."""
        prefix = self._tier_key(namespace, tier) + "/"
        found: dict[int, dict[str, datetime]] = {}
        for info in self.backend.list(prefix):
            parts = info.key[len(prefix):].split("/")
            if len(parts) != 2:
                continue
            # Only vNNNNNN/<file> counts: other folders (the append-only ``_audit/`` trail) are never
            # listed as versions, so retention cannot delete them.
            v = parse_version_dir(parts[0])
            if v is not None:
                found.setdefault(v, {})[parts[1]] = info.modified
        return found

    def list_versions(self, namespace: str, tier: str) -> list[int]:
        """Published versions (those with a manifest), ascending."""
        return sorted(v for v, names in self._scan(namespace, tier).items() if MANIFEST_NAME in names)

    def heads(self, namespace: str) -> dict[str, int]:
        """Each tier of the namespace with the newest version its feed marks, in one listing."""
        prefix = self._feed_prefix(namespace)
        out: dict[str, int] = {}
        for info in self.backend.list(prefix):
            tier, _, vdir = info.key[len(prefix):].rpartition("@")
            v = parse_version_dir(vdir)
            if tier and v is not None:
                out[tier] = max(out.get(tier, 0), v)
        return out

    def latest(self, namespace: str, tier: str) -> VersionRef | None:
        """The highest published version, or ``None`` when the tier has none."""
        versions = self.list_versions(namespace, tier)
        return self.get(namespace, tier, versions[-1]) if versions else None

    def get(self, namespace: str, tier: str, version: int) -> VersionRef:
        """A published version with its manifest.

        Raises:
            VersionNotFoundError: when the version has no manifest.
        """
        key = self._key(namespace, tier, version, MANIFEST_NAME)
        where = self.backend.describe(key)
        try:
            data = self.backend.get_bytes(key)
        except BlobNotFoundError as e:
            raise VersionNotFoundError(
                f"version {version} of tier {namespace}/{tier} is not published ({where} missing)"
            ) from e
        manifest = Manifest.from_json(data, where)
        if (manifest.namespace, manifest.tier, manifest.version) != (namespace, tier, version):
            raise StoreError(
                f"manifest {where} describes {manifest.namespace}/{manifest.tier} v{manifest.version}"
            )
        return VersionRef(namespace, tier, version, self.version_uri(namespace, tier, version), manifest)

    # -- writing ----------------------------------------------------------------------------------
    def publish(
        self,
        namespace: str,
        tier: str,
        files: Mapping[str, Path],
        metadata: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
    ) -> VersionRef:
        """Publish ``files`` as the next version of a tier.

        Args:
            namespace: stack namespace (e.g. the Kubernetes namespace).
            tier: tier name.
            files: checkpoint file name -> local path.
            metadata: JSON-serialisable metadata stored in the manifest.
            progress: called with a short message after each step (claim, each upload, publish).

        Returns:
            The published version.

        Raises:
            ValueError: bad names or no files.
            StoreError: a failed upload or verification (nothing becomes visible).
        """
        if not files:
            raise ValueError("a checkpoint version needs at least one file")
        entries: dict[str, FileEntry] = {}
        for name, path in files.items():
            validate_file_name(name)
            digest, size = sha256_file(Path(path))
            entries[name] = FileEntry(digest, size)
        meta = dict(metadata or {})
        json.dumps(meta)  # fail before claiming anything when metadata is not serialisable
        writer = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        version = self._claim(namespace, tier, writer)
        if progress:
            progress(f"claimed {self.version_uri(namespace, tier, version)}")
        for name, path in sorted(files.items()):
            key = self._key(namespace, tier, version, name)
            self.backend.put_file(key, Path(path))
            if progress:
                progress(f"uploaded {self.backend.describe(key)}")
        manifest = Manifest(namespace, tier, version, rfc3339(_now()), entries, meta, writer)
        mkey = self._key(namespace, tier, version, MANIFEST_NAME)
        if not self.backend.put_bytes_if_absent(mkey, manifest.to_json()):
            raise PublishConflictError(f"{self.backend.describe(mkey)} was published by another writer")
        if progress:
            progress(f"published {self.backend.describe(mkey)}")
        self._mark(namespace, tier, version, progress)
        return VersionRef(namespace, tier, version, self.version_uri(namespace, tier, version), manifest)

    @staticmethod
    def _feed_prefix(namespace: str) -> str:
        return f"{validate_name('namespace', namespace)}/{FEED_DIR}/"

    def _mark(self, namespace: str, tier: str, version: int, progress: ProgressFn | None) -> None:
        """Mark ``version`` as the tier's newest in the namespace's feed and drop the tier's older marks."""
        prefix = f"{self._feed_prefix(namespace)}{tier}@"
        try:
            self.backend.put_bytes_if_absent(prefix + version_dir(version), b"")
            for info in self.backend.list(prefix):
                older = parse_version_dir(info.key[len(prefix):])
                if older is not None and older < version:
                    self.backend.delete(info.key)
        except Exception as e:  # the version is published: a watcher falls back to its resync
            if progress:
                progress(f"feed mark of v{version} not written ({e}); watchers see it on their next resync")

    def _claim(self, namespace: str, tier: str, writer: str) -> int:
        claim = json.dumps({"writer": writer, "claimed": rfc3339(_now())}).encode()
        candidate = max(self._scan(namespace, tier), default=0) + 1
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            if self.backend.put_bytes_if_absent(self._key(namespace, tier, candidate, CLAIM_NAME), claim):
                return candidate
            candidate += 1  # lost the race for this number: take the next one
        raise StoreError(f"could not claim a version of {self.tier_uri(namespace, tier)} "
                         f"after {_MAX_CLAIM_ATTEMPTS} attempts")

    # -- reading ----------------------------------------------------------------------------------
    def _entry(self, ref: VersionRef, name: str) -> FileEntry:
        try:
            return ref.manifest.files[name]
        except KeyError:
            raise StoreError(f"{ref.uri} has no file {name!r} (files: {sorted(ref.manifest.files)})") from None

    def read_file(self, namespace: str, tier: str, version: int, name: str, max_bytes: int | None = None) -> bytes:
        """One file of a published version, verified against its manifest sha256.

        ``max_bytes`` bounds what a reader holds in memory: a larger file (as its manifest says, before
        anything is read) raises :class:`StoreError` instead of being read.
        """
        import hashlib

        ref = self.get(namespace, tier, version)
        entry = self._entry(ref, name)
        key = self._key(namespace, tier, version, name)
        if max_bytes is not None and entry.size > max_bytes:
            raise StoreError(f"{self.backend.describe(key)} is {entry.size} bytes, more than the {max_bytes} read")
        try:
            data = self.backend.get_bytes(key)
        except BlobNotFoundError as e:
            raise StoreError(f"{self.backend.describe(key)} is listed in the manifest but missing") from e
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry.sha256 or len(data) != entry.size:
            raise ChecksumMismatchError(
                f"checksum mismatch for {self.backend.describe(key)}: manifest sha256 {entry.sha256} "
                f"({entry.size} bytes), object sha256 {actual} ({len(data)} bytes)"
            )
        return data

    def download(self, namespace: str, tier: str, version: int, dest: Path) -> VersionRef:
        """Download a published version into ``dest`` and verify every file.

        Files are written under temporary names and renamed after verification; the manifest is
        written last, so a directory with a ``MANIFEST.json`` is complete.
        """
        ref = self.get(namespace, tier, version)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for name, entry in sorted(ref.manifest.files.items()):
            key = self._key(namespace, tier, version, name)
            tmp = dest / f".{name}.part"
            try:
                self.backend.get_to_file(key, tmp)
            except BlobNotFoundError as e:
                raise StoreError(f"{self.backend.describe(key)} is listed in the manifest but missing") from e
            actual, size = sha256_file(tmp)
            if actual != entry.sha256 or size != entry.size:
                tmp.unlink(missing_ok=True)
                raise ChecksumMismatchError(
                    f"checksum mismatch for {self.backend.describe(key)}: manifest sha256 {entry.sha256} "
                    f"({entry.size} bytes), object sha256 {actual} ({size} bytes)"
                )
            os.replace(tmp, dest / name)
        (dest / MANIFEST_NAME).write_bytes(ref.manifest.to_json())
        return ref

    # -- retention --------------------------------------------------------------------------------
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
        """Delete published versions beyond the newest ``keep_last`` and stale unfinished writes.

        The latest published version and every version in ``protected`` (the current one, the last
        served one, pinned ones) are always kept. An unfinished version (no manifest) is deleted only
        when its newest object is older than ``stale_after``, so a writer still uploading is left alone;
        ``is_stale(version, newest object time)`` replaces that rule (the operator judges on its own clock,
        which need not agree with the storage's).
        A published version's manifest is deleted first, so it disappears atomically for readers.
        """
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        now = now or _now()
        scan = self._scan(namespace, tier)
        published = sorted(v for v, names in scan.items() if MANIFEST_NAME in names)
        keep = set(published[-keep_last:]) | (set(published) & set(protected))
        deleted, garbage_deleted, garbage_kept = [], [], []
        for v in published:
            if v not in keep:
                self._delete_version(namespace, tier, v, scan[v])
                deleted.append(v)
        stale = is_stale or (lambda _v, newest: now - newest >= stale_after)
        for v in sorted(set(scan) - set(published)):
            if stale(v, max(scan[v].values())):
                self._delete_version(namespace, tier, v, scan[v])
                garbage_deleted.append(v)
            else:
                garbage_kept.append(v)
        return RetentionReport(sorted(keep), deleted, garbage_deleted, garbage_kept)

    def _delete_version(self, namespace: str, tier: str, version: int, names: Mapping[str, Any]) -> None:
        ordered = [n for n in (MANIFEST_NAME,) if n in names]
        ordered += sorted(n for n in names if n not in (MANIFEST_NAME, CLAIM_NAME))
        ordered += [n for n in (CLAIM_NAME,) if n in names]  # last: keeps the number reserved meanwhile
        for name in ordered:
            self.backend.delete(self._key(namespace, tier, version, name))

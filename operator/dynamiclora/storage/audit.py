"""The append-only audit trail of a tier, stored next to its versions.

Every promotion, rejection, migration, consolidation, consensus, rollback/rollforward, pin/unpin and
training failure is recorded as one immutable JSON object::

    <namespace>/<tier>/_audit/00000001.json
    <namespace>/<tier>/_audit/00000002.json   {"prev": sha256(bytes of 00000001.json), ...}

Records are only ever *created* (the backend's create-if-absent write: ``link``/``O_EXCL`` on a
filesystem, ``If-None-Match: *`` on S3), never overwritten, so a crashed or concurrent writer cannot
rewrite history: a writer that loses the race for a sequence number re-reads the log and tries the next
one. Each record carries the sha256 of its predecessor's exact bytes, so :meth:`AuditLog.verify` detects
a record that was edited, removed or inserted out of band. Appends are idempotent by a caller-given
``id``: an operator that re-runs a step after a crash gets the existing record back. See docs/audit.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from dynamiclora.storage.base import (
    BlobBackend,
    BlobNotFoundError,
    CheckpointStore,
    StoreError,
    validate_name,
)
from dynamiclora.storage.store import _now, rfc3339

AUDIT_DIR = "_audit"
AUDIT_FORMAT = "dynamiclora.audit/v1"
AuditKind = Literal[
    "promotion",
    "rejection",
    "migration",
    "consolidation",
    "consensus",
    "rollback",
    "rollforward",
    "pin",
    "unpin",
    "training-failed",
    "quarantine-release",
]
AUDIT_KINDS: tuple[str, ...] = get_args(AuditKind)
MAX_ID_CHARS = 256
MAX_ACTOR_CHARS = 256
MAX_MESSAGE_CHARS = 4096
MAX_RECORD_BYTES = 256 * 1024
SEQ_WIDTH = 8
# Each failed attempt means another writer created a record meanwhile; this many in a row means
# something is badly wrong (or the writers are far more than one operator and a few Jobs).
MAX_APPEND_ATTEMPTS = 32
_KEY_RE = re.compile(rf"^(\d{{{SEQ_WIDTH}}})\.json$")
_FIELDS = (
    "seq",
    "id",
    "time",
    "kind",
    "namespace",
    "tier",
    "version",
    "actor",
    "contributors",
    "gate",
    "message",
    "prev",
)


@dataclass(frozen=True)
class AuditRecord:
    """One immutable audit event of a tier."""

    seq: int
    id: str
    time: str
    kind: str
    namespace: str
    tier: str
    version: int | None
    actor: str
    contributors: list[dict[str, Any]]
    gate: dict[str, Any] | None
    message: str
    prev: str

    def to_json(self) -> bytes:
        """Canonical bytes: sorted keys, compact separators, ASCII only (stable across Python versions)."""
        doc = asdict(self)
        doc["format"] = AUDIT_FORMAT
        return json.dumps(
            doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode()

    @property
    def digest(self) -> str:
        """sha256 hex of :meth:`to_json` (what the next record's ``prev`` holds)."""
        return hashlib.sha256(self.to_json()).hexdigest()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> AuditRecord:
        """Parse record bytes read from ``where`` (named in errors).

        Raises:
            StoreError: invalid JSON, unknown format, or a missing or mistyped field.
        """
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("format") != AUDIT_FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            missing = [f for f in _FIELDS if f not in doc]
            if missing:
                raise ValueError(f"missing field(s) {', '.join(missing)}")
            version = doc["version"]
            contributors = doc["contributors"]
            gate = doc["gate"]
            if not isinstance(doc["seq"], int) or isinstance(doc["seq"], bool):
                raise ValueError("seq is not an integer")
            if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
                raise ValueError("version is neither null nor an integer")
            if not isinstance(contributors, list) or not all(isinstance(c, dict) for c in contributors):
                raise ValueError("contributors is not a list of objects")
            if gate is not None and not isinstance(gate, dict):
                raise ValueError("gate is neither null nor an object")
            strings = {
                f: doc[f] for f in ("id", "time", "kind", "namespace", "tier", "actor", "message", "prev")
            }
            bad = [f for f, v in strings.items() if not isinstance(v, str)]
            if bad:
                raise ValueError(f"field(s) {', '.join(bad)} not strings")
            return cls(seq=doc["seq"], version=version, contributors=contributors, gate=gate, **strings)
        except (ValueError, TypeError) as e:
            raise StoreError(f"invalid audit record {where}: {e}") from e


def _plain_json(field_name: str, value: Any) -> Any:
    """``value`` as plain JSON types (so the stored record equals the returned one), or a clear error."""
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"audit {field_name} must be JSON-serialisable without NaN/Infinity: {e}") from None


def _check_text(field_name: str, value: str, limit: int, *, required: bool) -> None:
    if not isinstance(value, str):
        raise ValueError(f"audit {field_name} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"audit {field_name} must not be empty")
    if len(value) > limit:
        raise ValueError(f"audit {field_name} is {len(value)} characters long; the limit is {limit}")


@dataclass
class _Entry:
    """One stored object of the log as read: raw bytes and, when parsable, the record."""

    seq: int
    key: str
    raw: bytes
    record: AuditRecord | None
    error: str | None


def _backend_of(store: CheckpointStore) -> BlobBackend:
    backend = getattr(store, "backend", None)
    if backend is None or not hasattr(backend, "put_bytes_if_absent"):
        raise TypeError(f"the audit trail needs a blob-backed checkpoint store, got {type(store).__name__}")
    return backend  # type: ignore[no-any-return]


class AuditLog:
    """The audit trail of one tier (see the module docstring for the guarantees)."""

    def __init__(self, store: CheckpointStore, namespace: str, tier: str) -> None:
        self.store = store
        self.namespace = validate_name("namespace", namespace)
        self.tier = validate_name("tier", tier)
        self._backend = _backend_of(store)
        self._prefix = f"{namespace}/{tier}/{AUDIT_DIR}/"
        # Records are immutable, so bytes read once never need reading again: repeated has()/records()
        # calls cost one listing each instead of one GET per record.
        self._cache: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        """Where the records live (``<store>/<namespace>/<tier>/_audit``)."""
        return self._backend.describe(self._prefix.rstrip("/"))

    def _key(self, seq: int) -> str:
        return f"{self._prefix}{seq:0{SEQ_WIDTH}d}.json"

    def _load(self) -> tuple[list[_Entry], list[str]]:
        """Every record object, ascending by seq, and the keys under the prefix that are not records."""
        entries: list[_Entry] = []
        strays: list[str] = []
        for info in self._backend.list(self._prefix):
            m = _KEY_RE.match(info.key[len(self._prefix) :])
            if not m:
                strays.append(info.key)
                continue
            raw = self._cache.get(info.key)
            if raw is None:
                try:
                    raw = self._backend.get_bytes(info.key)
                except BlobNotFoundError:
                    continue  # deleted between listing and reading; verify() reports the gap
                self._cache[info.key] = raw
            where = self._backend.describe(info.key)
            try:
                entries.append(
                    _Entry(int(m.group(1)), info.key, raw, AuditRecord.from_json(raw, where), None)
                )
            except StoreError as e:
                entries.append(_Entry(int(m.group(1)), info.key, raw, None, str(e)))
        entries.sort(key=lambda e: e.seq)
        return entries, strays

    def records(self) -> list[AuditRecord]:
        """Every parsable record, ascending by seq (unparsable ones are reported by :meth:`verify`)."""
        with self._lock:
            entries, _ = self._load()
        return [e.record for e in entries if e.record is not None]

    def has(self, id: str) -> bool:
        """Whether a record with this idempotency key exists."""
        return any(r.id == id for r in self.records())

    def append(
        self,
        kind: str,
        *,
        id: str,
        version: int | None = None,
        actor: str = "operator",
        contributors: Sequence[Mapping[str, Any]] = (),
        gate: Mapping[str, Any] | None = None,
        message: str = "",
    ) -> tuple[AuditRecord, bool]:
        """Append a record unless one with this ``id`` exists.

        Args:
            kind: one of :data:`AUDIT_KINDS`.
            id: the caller's idempotency key (e.g. ``"gate/v5"``): a re-run of the same step passes the same
                id and gets the existing record back.
            version: the tier version concerned, if any.
            actor: who acted (``"operator"``, ``"job/ctx-train-v5"``, a user).
            contributors: what contributed, e.g. ``[{"agent": "alice", "version": 3, "weight": 0.8}]``.
            gate: gate figures (see docs/audit.md).
            message: free text (at most :data:`MAX_MESSAGE_CHARS` characters).

        Returns:
            ``(record, created)``; ``created`` is False when a record with ``id`` already existed.

        Raises:
            ValueError: invalid arguments (the message names the field).
            StoreError: the store failed, or no sequence number could be won in
                :data:`MAX_APPEND_ATTEMPTS` attempts.
        """
        if kind not in AUDIT_KINDS:
            raise ValueError(f"audit kind {kind!r} is not one of {', '.join(AUDIT_KINDS)}")
        _check_text("id", id, MAX_ID_CHARS, required=True)
        _check_text("actor", actor, MAX_ACTOR_CHARS, required=True)
        _check_text("message", message, MAX_MESSAGE_CHARS, required=False)
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise ValueError(f"audit version must be None or an integer >= 1, got {version!r}")
        if isinstance(contributors, (str, bytes, Mapping)):
            raise ValueError("audit contributors must be a sequence of mappings, not a single value")
        plain_contrib: list[dict[str, Any]] = []
        for i, c in enumerate(contributors):
            if not isinstance(c, Mapping):
                raise ValueError(f"audit contributors[{i}] must be a mapping, got {type(c).__name__}")
            plain_contrib.append(_plain_json(f"contributors[{i}]", dict(c)))
        if gate is not None and not isinstance(gate, Mapping):
            raise ValueError(f"audit gate must be a mapping or None, got {type(gate).__name__}")
        plain_gate = _plain_json("gate", dict(gate)) if gate is not None else None
        with self._lock:
            for _ in range(MAX_APPEND_ATTEMPTS):
                entries, _strays = self._load()
                for e in entries:
                    if e.record is not None and e.record.id == id:
                        return e.record, False
                last = entries[-1] if entries else None
                record = AuditRecord(
                    seq=last.seq + 1 if last else 1,
                    id=id,
                    time=rfc3339(_now()),
                    kind=kind,
                    namespace=self.namespace,
                    tier=self.tier,
                    version=version,
                    actor=actor,
                    contributors=plain_contrib,
                    gate=plain_gate,
                    message=message,
                    # The exact stored bytes, not a re-serialisation: tampering with them breaks the chain.
                    prev=hashlib.sha256(last.raw).hexdigest() if last else "",
                )
                data = record.to_json()
                if len(data) > MAX_RECORD_BYTES:
                    raise ValueError(
                        f"audit record {id!r} is {len(data)} bytes; the limit is {MAX_RECORD_BYTES}"
                    )
                key = self._key(record.seq)
                if self._backend.put_bytes_if_absent(key, data):
                    self._cache[key] = data
                    return record, True
                # Another writer took this number: re-read (it may even have written our id) and retry.
        raise StoreError(
            f"could not append audit record {id!r} to {self.uri}: lost the race for a sequence "
            f"number {MAX_APPEND_ATTEMPTS} times in a row"
        )

    def verify(self) -> list[str]:
        """Check the whole trail; returns human-readable problems (empty when intact).

        Detects gaps in the sequence, records whose ``prev`` does not match the sha256 of the previous
        record's bytes, unparsable or non-canonical records, records naming another namespace/tier or
        another seq than their key, duplicate ids, and stray objects under the audit prefix.
        """
        with self._lock:
            entries, strays = self._load()
        problems = [f"{self._backend.describe(k)}: unexpected object in the audit folder" for k in strays]
        seen_ids: dict[str, int] = {}
        by_seq = {e.seq: e for e in entries}
        expected = 1
        for e in entries:
            where = self._backend.describe(e.key)
            if e.seq > expected:
                missing = f"{expected}" if e.seq == expected + 1 else f"{expected}-{e.seq - 1}"
                problems.append(f"{self.uri}: record(s) {missing} missing (gap before seq {e.seq})")
            expected = e.seq + 1
            if e.record is None:
                problems.append(f"{where}: {e.error}")
                continue
            r = e.record
            if r.seq != e.seq:
                problems.append(f"{where}: record says seq {r.seq}, stored as seq {e.seq}")
            if (r.namespace, r.tier) != (self.namespace, self.tier):
                problems.append(
                    f"{where}: record belongs to {r.namespace}/{r.tier}, not {self.namespace}/{self.tier}"
                )
            if r.kind not in AUDIT_KINDS:
                problems.append(f"{where}: unknown kind {r.kind!r}")
            if e.raw != r.to_json():
                problems.append(f"{where}: bytes are not in canonical form (edited outside the audit log?)")
            if r.id in seen_ids:
                problems.append(f"{where}: id {r.id!r} already used by seq {seen_ids[r.id]}")
            seen_ids.setdefault(r.id, e.seq)
            before = by_seq.get(e.seq - 1)
            if e.seq == 1 and r.prev != "":
                problems.append(f"{where}: first record has prev {r.prev[:12]}..., expected empty")
            elif before is not None and r.prev != hashlib.sha256(before.raw).hexdigest():
                problems.append(
                    f"{where}: prev-hash chain broken: prev does not match the sha256 of "
                    f"seq {before.seq} (that record was modified or replaced)"
                )
        return problems


def open_audit(store_uri: str, namespace: str, tier: str) -> AuditLog:
    """The audit log of ``namespace/tier`` in the store at ``store_uri`` (``file://`` or ``s3://``)."""
    from dynamiclora.storage.uri import open_store

    return AuditLog(open_store(store_uri), namespace, tier)


__all__ = ["AUDIT_DIR", "AUDIT_KINDS", "AuditKind", "AuditLog", "AuditRecord", "open_audit"]

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
``id``: an operator that re-runs a step after a crash gets the existing record back.

:meth:`AuditLog.compact` folds old records into signed, immutable segments (``_audit/segments/``, see
:mod:`dynamiclora.storage.audit_segments`) holding their exact bytes, so the chain is unchanged and the
number of objects stays small; readers see segments and loose records as one sequence. See docs/audit.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dynamiclora.storage.audit_record import AUDIT_KINDS, SEQ_WIDTH, AuditKind, AuditRecord
from dynamiclora.storage.audit_segments import SEGMENT_DIR, Segment, parse_segment_name, segment_name
from dynamiclora.storage.audit_view import (
    Entry,
    SegmentObject,
    View,
    duplicate_problems,
    entry,
    merge,
    record_problems,
    segment_problems,
)
from dynamiclora.storage.base import (
    BlobBackend,
    BlobInfo,
    BlobNotFoundError,
    CheckpointStore,
    StoreError,
    validate_name,
)
from dynamiclora.storage.store import _now, rfc3339

AUDIT_DIR = "_audit"
MAX_ID_CHARS = 256
MAX_ACTOR_CHARS = 256
MAX_MESSAGE_CHARS = 4096
MAX_RECORD_BYTES = 256 * 1024
# Each failed attempt means another writer created a record meanwhile; this many in a row means
# something is badly wrong (or the writers are far more than one operator and a few Jobs).
MAX_APPEND_ATTEMPTS = 32
# A listed object gone before it is read was folded into a segment meanwhile: list again, this often.
MAX_LOAD_ATTEMPTS = 3
# The operator's defaults: past 256 loose records, all but the newest 32 become one segment.
DEFAULT_KEEP = 32
DEFAULT_SEGMENT_RECORDS = 224
_KEY_RE = re.compile(rf"^(\d{{{SEQ_WIDTH}}})\.json$")
_SEGMENTS = f"{SEGMENT_DIR}/"


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


class Verification(list[str]):
    """What :meth:`AuditLog.verify` found: the problems (this list, empty when intact), ``notes`` on what
    it could not check (segment signatures, without a key) and how many ``segments`` it read."""

    def __init__(self, problems: Iterable[str] = (), notes: Iterable[str] = (), segments: int = 0) -> None:
        super().__init__(problems)
        self.notes = list(notes)
        self.segments = segments


@dataclass(frozen=True)
class Compaction:
    """What :meth:`AuditLog.compact` did."""

    segments: list[str]  # URIs of the segments written (or found already written) by this run
    deleted: int  # loose record objects removed because a segment holds identical copies
    loose: int  # loose record objects left


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
        # Loose records and segments are immutable, so what was read once is never read again: repeated
        # has()/records()/append() calls cost one listing each plus reads of new objects only.
        self._loose: dict[str, Entry] = {}
        self._segments: dict[str, SegmentObject] = {}
        self._lock = threading.Lock()
        self.loose_records = 0  # loose record objects seen by the last listing (the compaction trigger)

    @property
    def uri(self) -> str:
        """Where the records live (``<store>/<namespace>/<tier>/_audit``)."""
        return self._backend.describe(self._prefix.rstrip("/"))

    def _key(self, seq: int) -> str:
        return f"{self._prefix}{seq:0{SEQ_WIDTH}d}.json"

    def _load(self) -> View:
        """The trail as one listing shows it; listed again when an object vanished before it was read
        (a compactor folded it into a segment meanwhile)."""
        attempts = MAX_LOAD_ATTEMPTS
        while True:
            attempts -= 1
            view = self._view(self._backend.list(self._prefix), retry=attempts > 0)
            if view is not None:
                return view

    def _view(self, listing: Sequence[BlobInfo], retry: bool) -> View | None:
        loose: list[Entry] = []
        segments: list[SegmentObject] = []
        strays: list[str] = []
        for info in listing:
            rel = info.key[len(self._prefix) :]
            m = _KEY_RE.match(rel)
            try:
                if m:
                    loose.append(self._read_loose(info.key, int(m.group(1))))
                elif rel.startswith(_SEGMENTS) and parse_segment_name(rel[len(_SEGMENTS) :]):
                    segments.append(self._read_segment(info.key))
                else:
                    strays.append(info.key)
            except BlobNotFoundError:
                if retry:
                    return None
                # Gone again on the last attempt: verify() reports the gap.
        listed = {info.key for info in listing}
        for cache in (self._loose, self._segments):
            for key in [k for k in cache if k not in listed]:
                del cache[key]
        self.loose_records = len(loose)
        return merge(loose, segments, strays)

    def _read_loose(self, key: str, seq: int) -> Entry:
        cached = self._loose.get(key)
        if cached is None:
            cached = entry(seq, key, self._backend.describe(key), self._backend.get_bytes(key))
            self._loose[key] = cached
        return cached

    def _read_segment(self, key: str) -> SegmentObject:
        cached = self._segments.get(key)
        if cached is None:
            cached = SegmentObject.parse(key, self._backend.describe(key), self._backend.get_bytes(key))
            self._segments[key] = cached
        return cached

    def records(self) -> list[AuditRecord]:
        """Every parsable record once, ascending by seq (unparsable ones are reported by :meth:`verify`)."""
        with self._lock:
            view = self._load()
        return [e.record for e in view.entries if e.record is not None]

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
                entries = self._load().entries
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
                    self._loose[key] = entry(record.seq, key, self._backend.describe(key), data)
                    self.loose_records += 1
                    return record, True
                # Another writer took this number: re-read (it may even have written our id) and retry.
        raise StoreError(
            f"could not append audit record {id!r} to {self.uri}: lost the race for a sequence "
            f"number {MAX_APPEND_ATTEMPTS} times in a row"
        )

    def compact(
        self, key: bytes, *, keep: int = DEFAULT_KEEP, segment_records: int = DEFAULT_SEGMENT_RECORDS
    ) -> Compaction:
        """Fold the oldest loose records into signed segments of ``segment_records`` records each.

        The newest ``keep`` records (at least) stay loose. Segments follow on from the last one, so two
        compactors with the same ``segment_records`` write byte-identical objects. A loose record is
        deleted only once a segment holding identical bytes is stored and read back; a crash in between
        leaves duplicates that readers see once and the next compaction deletes.

        Raises:
            ValueError: no key, ``keep < 0`` or ``segment_records < 1``.
            StoreError: the trail has problems (a signature must never vouch for a broken chain, so nothing
                is folded), a segment exists with other content, or the store failed.
        """
        if not key:
            raise ValueError("compacting the audit trail needs a non-empty signing key")
        if keep < 0 or segment_records < 1:
            raise ValueError(f"keep must be >= 0 and segment_records >= 1, got {keep} and {segment_records}")
        with self._lock:
            # What is signed and deleted must be what is stored now, not what this log read earlier.
            self._loose.clear()
            view = self._load()
            problems = self._problems(view, None)
            if problems:
                raise StoreError(
                    f"not compacting the audit trail at {self.uri}: {len(problems)} problem(s), "
                    f"the first: {problems[0]}"
                )
            done = view.compacted
            newest = view.entries[-1].seq if view.entries else 0
            by_seq = {e.seq: e for e in view.entries}
            written = [
                self._write_segment(first, [by_seq[s] for s in range(first, first + segment_records)], key)
                for first in range(done + 1, newest - keep - segment_records + 2, segment_records)
            ]
            # Listed again after writing: a segment is trusted for deletion only as the store shows it.
            deleted = self._delete_folded(self._load() if written else view)
        return Compaction(written, deleted, self.loose_records)

    def _write_segment(self, first: int, entries: list[Entry], key: bytes) -> str:
        """Create the segment of ``entries`` (or find it created identically); returns its URI."""
        assert entries[0].record is not None  # _problems() found none: every record parsed
        seg = Segment.build(self.namespace, self.tier, first, entries[0].record.prev, [e.raw for e in entries], key)
        data = seg.to_json()
        seg_key = f"{self._prefix}{_SEGMENTS}{segment_name(seg.first, seg.last)}"
        # False: another compactor, or a run that crashed before deleting, wrote it first. Either way
        # only a byte-identical object may stand in for the loose records.
        self._backend.put_bytes_if_absent(seg_key, data)
        if self._backend.get_bytes(seg_key) != data:
            raise StoreError(
                f"{self._backend.describe(seg_key)} exists with other content (another key, or modified): "
                "its records stay loose; run `dynamiclora history --verify`"
            )
        self._segments[seg_key] = SegmentObject.parse(seg_key, self._backend.describe(seg_key), data)
        return self._backend.describe(seg_key)

    def _delete_folded(self, view: View) -> int:
        """Delete loose records of which a consistent segment holds identical bytes."""
        kept = {e.seq: e for e in view.entries}
        sound = {s.key for s in view.segments if not s.problems(self.namespace, self.tier)}
        deleted = 0
        for e in view.loose:
            copy = kept[e.seq]
            if copy is not e and copy.key in sound and copy.raw == e.raw:
                self._backend.delete(e.key)
                self._loose.pop(e.key, None)
                deleted += 1
        self.loose_records -= deleted
        return deleted

    def verify(self, key: bytes | None = None) -> Verification:
        """Check the whole trail; returns the problems (empty when intact) with notes.

        Detects gaps in the sequence, records whose ``prev`` does not match the sha256 of the previous
        record's bytes (across segments too), unparsable or non-canonical records and segments, records
        naming another namespace/tier or another seq than where they are stored, duplicate ids, two
        different copies of one record, segments that contradict their name or records or overlap, and
        stray objects. With ``key``, every segment's signature is checked too; without, ``notes`` says so.
        """
        with self._lock:
            view = self._load()
        notes = []
        if key is None and view.segments:
            notes.append(f"signatures of {len(view.segments)} segment(s) not checked: no key given")
        return Verification(self._problems(view, key), notes, len(view.segments))

    def _problems(self, view: View, key: bytes | None) -> list[str]:
        problems = [f"{self._backend.describe(k)}: unexpected object in the audit folder" for k in view.strays]
        problems += segment_problems(view.segments, self.namespace, self.tier, key)
        problems += duplicate_problems(view)
        return problems + record_problems(view.entries, self.namespace, self.tier, self.uri)


def open_audit(store_uri: str, namespace: str, tier: str) -> AuditLog:
    """The audit log of ``namespace/tier`` in the store at ``store_uri`` (``file://`` or ``s3://``)."""
    from dynamiclora.storage.uri import open_store

    return AuditLog(open_store(store_uri), namespace, tier)


__all__ = [
    "AUDIT_DIR",
    "AUDIT_KINDS",
    "MAX_MESSAGE_CHARS",
    "AuditKind",
    "AuditLog",
    "AuditRecord",
    "Compaction",
    "Verification",
    "open_audit",
]

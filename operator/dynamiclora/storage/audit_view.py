"""The audit trail as one listing shows it: loose records and segments merged, and what is wrong with it.

Internal to :mod:`dynamiclora.storage.audit`: the log builds a :class:`View` per listing and asks
:func:`segment_problems` and :func:`record_problems` what :meth:`AuditLog.verify` reports.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dynamiclora.storage.audit_record import AUDIT_KINDS, AuditRecord
from dynamiclora.storage.audit_segments import Segment
from dynamiclora.storage.base import StoreError


@dataclass
class Entry:
    """One stored record (a loose object or a record inside a segment): bytes and, when parsable, the record."""

    seq: int
    key: str  # the object holding it
    where: str  # what messages name: the object's URI, plus the seq inside a segment
    raw: bytes
    record: AuditRecord | None
    error: str | None


def entry(seq: int, key: str, where: str, raw: bytes) -> Entry:
    """The entry of ``raw``, parsed when it parses (verify() reports it otherwise)."""
    try:
        return Entry(seq, key, where, raw, AuditRecord.from_json(raw, where), None)
    except StoreError as e:
        return Entry(seq, key, where, raw, None, str(e))


@dataclass
class SegmentObject:
    """One segment object as read: parsed (with its records as entries) or the reason it is not."""

    key: str
    where: str
    raw: bytes
    segment: Segment | None
    error: str | None
    entries: list[Entry]

    @classmethod
    def parse(cls, key: str, where: str, raw: bytes) -> SegmentObject:
        """The segment stored at ``key`` (``where`` is its URI) with its records as entries."""
        try:
            seg = Segment.from_json(raw, where)
        except StoreError as e:
            return cls(key, where, raw, None, str(e), [])
        entries = [entry(seg.first + i, key, f"{where} (seq {seg.first + i})", r) for i, r in enumerate(seg.records)]
        return cls(key, where, raw, seg, None, entries)

    @property
    def name(self) -> str:
        """The object's file name (``00000001-00000224.json``)."""
        return self.key.rsplit("/", 1)[-1]

    def problems(self, namespace: str, tier: str) -> list[str]:
        """What is wrong with the object itself, the signature aside."""
        if self.segment is None:
            return [f"{self.where}: {self.error}"]
        out = [f"{self.where}: {p}" for p in self.segment.content_problems(self.name, namespace, tier)]
        if self.raw != self.segment.to_json():
            out.append(f"{self.where}: bytes are not in canonical form (edited outside the audit log?)")
        return out


@dataclass
class View:
    """The whole trail as listed once."""

    entries: list[Entry]  # one per seq, ascending; a segment's copy wins over a loose duplicate
    loose: list[Entry]
    segments: list[SegmentObject]  # ascending by range
    strays: list[str]
    duplicates: list[tuple[Entry, Entry]]  # (kept, other): two different stored copies of one seq

    @property
    def compacted(self) -> int:
        """The highest seq the segments cover (0 without segments)."""
        return max((s.segment.last for s in self.segments if s.segment is not None), default=0)


def merge(loose: list[Entry], segments: list[SegmentObject], strays: list[str]) -> View:
    """One entry per seq: segments first (in range order), then loose records; differing copies noted."""
    segments = sorted(segments, key=lambda s: s.key)  # zero-padded names: range order
    by_seq: dict[int, Entry] = {}
    duplicates: list[tuple[Entry, Entry]] = []
    for e in [*(e for s in segments for e in s.entries), *sorted(loose, key=lambda e: e.seq)]:
        kept = by_seq.setdefault(e.seq, e)
        if kept is not e and kept.raw != e.raw:
            duplicates.append((kept, e))
    return View(sorted(by_seq.values(), key=lambda e: e.seq), loose, segments, strays, duplicates)


def segment_problems(segments: list[SegmentObject], namespace: str, tier: str, key: bytes | None) -> list[str]:
    """Unreadable, inconsistent or overlapping segments; with ``key``, bad signatures too."""
    problems: list[str] = []
    covered = 0  # the highest seq of the segments so far
    for s in segments:
        problems += s.problems(namespace, tier)
        seg = s.segment
        if seg is None:
            continue
        if key is not None and (why := seg.signature_problem(key)) is not None:
            problems.append(f"{s.where}: {why}")
        if seg.first <= covered:
            problems.append(f"{s.where}: overlaps another segment (records {seg.first}-{min(covered, seg.last)})")
        covered = max(covered, seg.last)
    return problems


def duplicate_problems(view: View) -> list[str]:
    """Two stored copies of one record that differ: one of them was modified."""
    return [
        f"{other.where}: differs from the copy of seq {kept.seq} in {kept.where} (one of them was modified)"
        for kept, other in view.duplicates
    ]


def record_problems(entries: list[Entry], namespace: str, tier: str, uri: str) -> list[str]:
    """Gaps, unparsable or misplaced records, duplicate ids and breaks of the hash chain (across segments)."""
    problems: list[str] = []
    seen_ids: dict[str, int] = {}
    by_seq = {e.seq: e for e in entries}
    expected = 1
    for e in entries:
        if e.seq > expected:
            missing = f"{expected}" if e.seq == expected + 1 else f"{expected}-{e.seq - 1}"
            problems.append(f"{uri}: record(s) {missing} missing (gap before seq {e.seq})")
        expected = e.seq + 1
        if e.record is None:
            problems.append(f"{e.where}: {e.error}")
            continue
        problems += _record_problems(e, e.record, namespace, tier)
        if e.record.id in seen_ids:
            problems.append(f"{e.where}: id {e.record.id!r} already used by seq {seen_ids[e.record.id]}")
        seen_ids.setdefault(e.record.id, e.seq)
        problems += _link_problems(e, e.record, by_seq.get(e.seq - 1))
    return problems


def _record_problems(e: Entry, r: AuditRecord, namespace: str, tier: str) -> list[str]:
    problems = []
    if r.seq != e.seq:
        problems.append(f"{e.where}: record says seq {r.seq}, stored as seq {e.seq}")
    if (r.namespace, r.tier) != (namespace, tier):
        problems.append(f"{e.where}: record belongs to {r.namespace}/{r.tier}, not {namespace}/{tier}")
    if r.kind not in AUDIT_KINDS:
        problems.append(f"{e.where}: unknown kind {r.kind!r}")
    if e.raw != r.to_json():
        problems.append(f"{e.where}: bytes are not in canonical form (edited outside the audit log?)")
    return problems


def _link_problems(e: Entry, r: AuditRecord, before: Entry | None) -> list[str]:
    if e.seq == 1 and r.prev != "":
        return [f"{e.where}: first record has prev {r.prev[:12]}..., expected empty"]
    if before is not None and r.prev != hashlib.sha256(before.raw).hexdigest():
        return [
            f"{e.where}: prev-hash chain broken: prev does not match the sha256 of "
            f"seq {before.seq} (that record was modified or replaced)"
        ]
    return []

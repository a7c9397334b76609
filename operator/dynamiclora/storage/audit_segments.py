"""Signed segments of the audit trail: old records folded into one immutable object (see docs/audit.md).

::

    <namespace>/<tier>/_audit/segments/00000001-00000224.json

A segment holds the exact stored bytes of every record it covers (canonical ASCII JSON, kept as
strings), so each record's ``prev`` still matches the sha256 of its predecessor's bytes across segment
boundaries. It also names the ``prev`` of its first record and the chain ``head`` (sha256 of its last
record's bytes), and is signed with HMAC-SHA256 over its canonical bytes without the signature; ``keyId``
says which key signed it. Nothing in it depends on the time or the writer, so two compactors folding the
same records create byte-identical objects.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from dynamiclora.storage.audit_record import SEQ_WIDTH, json_object
from dynamiclora.storage.base import StoreError

SEGMENT_DIR = "segments"
SEGMENT_FORMAT = "dynamiclora.audit-segment/v1"
KEY_ID_CHARS = 12
NAME_RE = re.compile(rf"^(\d{{{SEQ_WIDTH}}})-(\d{{{SEQ_WIDTH}}})\.json$")
_FIELDS = ("first", "last", "namespace", "tier", "prev", "head", "keyId", "signature", "records")


def key_id(key: bytes) -> str:
    """What a segment records of the key that signed it: the first hex digits of its sha256."""
    return hashlib.sha256(key).hexdigest()[:KEY_ID_CHARS]


def segment_name(first: int, last: int) -> str:
    """File name of the segment of records ``first``..``last``."""
    return f"{first:0{SEQ_WIDTH}d}-{last:0{SEQ_WIDTH}d}.json"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """Inverse of :func:`segment_name`; ``None`` for anything else."""
    m = NAME_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _sign(key: bytes, unsigned: bytes) -> str:
    return hmac.new(key, unsigned, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Segment:
    """One segment as stored: the records ``first``..``last`` and what vouches for them."""

    first: int
    last: int
    namespace: str
    tier: str
    prev: str
    head: str
    key_id: str
    signature: str
    records: tuple[bytes, ...]

    def _doc(self) -> dict[str, Any]:
        return {
            "format": SEGMENT_FORMAT,
            "first": self.first,
            "last": self.last,
            "namespace": self.namespace,
            "tier": self.tier,
            "prev": self.prev,
            "head": self.head,
            "keyId": self.key_id,
            "records": [r.decode("ascii") for r in self.records],
        }

    def unsigned_bytes(self) -> bytes:
        """The canonical bytes the signature covers (everything but the signature)."""
        return _canonical(self._doc())

    def to_json(self) -> bytes:
        """The canonical stored bytes."""
        return _canonical({**self._doc(), "signature": self.signature})

    @classmethod
    def build(cls, namespace: str, tier: str, first: int, prev: str, records: Sequence[bytes], key: bytes) -> Segment:
        """A signed segment of ``records`` (the exact stored bytes of seqs ``first``, ``first + 1``, ...).

        Raises:
            ValueError: no records, no key, or a record that is not ASCII (not a canonical audit record).
        """
        if not records:
            raise ValueError("a segment needs at least one record")
        if not key:
            raise ValueError("a segment needs a non-empty signing key")
        if not all(r.isascii() for r in records):
            raise ValueError("audit records are canonical ASCII JSON; refusing to fold other bytes")
        unsigned = cls(first, first + len(records) - 1, namespace, tier, prev,
                       hashlib.sha256(records[-1]).hexdigest(), key_id(key), "", tuple(records))  # fmt: skip
        return replace(unsigned, signature=_sign(key, unsigned.unsigned_bytes()))

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Segment:
        """Parse segment bytes read from ``where`` (named in errors).

        Raises:
            StoreError: invalid JSON, unknown format, or a missing or mistyped field.
        """
        try:
            doc = json_object(data, SEGMENT_FORMAT, _FIELDS)
            ints = [doc["first"], doc["last"]]
            if any(not isinstance(v, int) or isinstance(v, bool) for v in ints):
                raise ValueError("first/last are not integers")
            strings = [doc[f] for f in ("namespace", "tier", "prev", "head", "keyId", "signature")]
            if not all(isinstance(v, str) for v in strings):
                raise ValueError("namespace, tier, prev, head, keyId and signature must be strings")
            records = doc["records"]
            if not isinstance(records, list) or not all(isinstance(r, str) and r.isascii() for r in records):
                raise ValueError("records is not a list of ASCII strings")
            return cls(doc["first"], doc["last"], doc["namespace"], doc["tier"], doc["prev"], doc["head"],
                       doc["keyId"], doc["signature"], tuple(r.encode("ascii") for r in records))  # fmt: skip
        except (ValueError, TypeError) as e:
            raise StoreError(f"invalid audit segment {where}: {e}") from e

    def content_problems(self, name: str, namespace: str, tier: str) -> list[str]:
        """What contradicts itself or its object name ``name`` (the records' own checks are the log's)."""
        problems = []
        if parse_segment_name(name) != (self.first, self.last):
            problems.append(f"covers records {self.first}-{self.last} but is named {name}")
        if len(self.records) != self.last - self.first + 1:
            problems.append(f"holds {len(self.records)} record(s) for the range {self.first}-{self.last}")
        if (self.namespace, self.tier) != (namespace, tier):
            problems.append(f"belongs to {self.namespace}/{self.tier}, not {namespace}/{tier}")
        if self.records and self.head != hashlib.sha256(self.records[-1]).hexdigest():
            problems.append("head does not match the sha256 of its last record")
        if self.records and self.prev != _prev_of(self.records[0]):
            problems.append("prev does not match the prev of its first record")
        return problems

    def signature_problem(self, key: bytes) -> str | None:
        """Why ``key`` does not vouch for this segment, or ``None`` when it does."""
        if self.key_id != key_id(key):
            return f"signed with key id {self.key_id!r}, not the given key's {key_id(key)!r}"
        if not hmac.compare_digest(self.signature, _sign(key, self.unsigned_bytes())):
            return "signature does not match its content (modified after it was signed)"
        return None


def _prev_of(record: bytes) -> str | None:
    try:
        doc = json.loads(record)
    except ValueError:
        return None
    prev = doc.get("prev") if isinstance(doc, dict) else None
    return prev if isinstance(prev, str) else None


__all__ = ["SEGMENT_DIR", "SEGMENT_FORMAT", "Segment", "key_id", "parse_segment_name", "segment_name"]

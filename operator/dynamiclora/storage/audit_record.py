"""The format of one audit record: canonical JSON bytes whose sha256 the next record carries (docs/audit.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from dynamiclora.storage.base import StoreError

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
SEQ_WIDTH = 8
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


def json_object(data: bytes, fmt: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """``data`` as a JSON object of format ``fmt`` with every one of ``fields``.

    Raises:
        ValueError: not JSON, not an object, another format, or a field missing (the message says which).
    """
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("format") != fmt:
        raise ValueError(f"unknown format {doc.get('format')!r}")
    missing = [f for f in fields if f not in doc]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    return doc


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
            doc = json_object(data, AUDIT_FORMAT, _FIELDS)
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


__all__ = ["AUDIT_FORMAT", "AUDIT_KINDS", "SEQ_WIDTH", "AuditKind", "AuditRecord"]

"""The append-only audit trail on the filesystem store (tmp_path): append, idempotency, hash chain,
verification and tamper detection, concurrency, and retention leaving the trail alone."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from dynamiclora.storage import StoreError, open_store
from dynamiclora.storage.audit import (
    AUDIT_KINDS,
    MAX_MESSAGE_CHARS,
    AuditLog,
    AuditRecord,
    open_audit,
)
from dynamiclora.storage.base import BlobNotFoundError
from dynamiclora.storage.fs import FsBackend
from dynamiclora.storage.store import BlobCheckpointStore

NS, TIER = "team-a", "shared"
GATE = {
    "accepted": True,
    "heldOut": {"records": 12, "baseline": 2.31, "candidate": 2.05},
    "maxRegression": 0.1,
    "reason": "",
}


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"file://{tmp_path}/store"


@pytest.fixture
def log(uri: str) -> AuditLog:
    return open_audit(uri, NS, TIER)


def _file(tmp_path: Path, seq: int, tier: str = TIER) -> Path:
    return tmp_path / "store" / NS / tier / "_audit" / f"{seq:08d}.json"


def _tamper(log: AuditLog, seq: int, data: bytes) -> None:
    """Fault injection: rewrite a stored record behind the log's back (what append never does)."""
    backend = log.store.backend  # type: ignore[attr-defined]
    key = f"{NS}/{TIER}/_audit/{seq:08d}.json"
    backend.delete(key)
    assert backend.put_bytes_if_absent(key, data)


def _fill(log: AuditLog, n: int) -> list[AuditRecord]:
    return [log.append("promotion", id=f"gate/v{i}", version=i, gate=GATE)[0] for i in range(1, n + 1)]


def test_append_builds_a_hash_chain_over_the_stored_bytes(log: AuditLog, tmp_path: Path) -> None:
    first, created = log.append(
        "consensus",
        id="consensus/v1",
        version=1,
        actor="job/shared-consensus-v1",
        contributors=[{"agent": "alice", "tier": "alice-context", "version": 3, "weight": 0.8}],
        gate=GATE,
        message="4 agents",
    )
    assert created and first.seq == 1 and first.prev == ""
    assert first.namespace == NS and first.tier == TIER and first.time.endswith("Z")
    stored = _file(tmp_path, 1).read_bytes()
    assert stored == first.to_json()
    assert json.loads(stored)["contributors"] == [
        {"agent": "alice", "tier": "alice-context", "version": 3, "weight": 0.8}
    ]
    second, _ = log.append("rejection", id="gate/v2", version=2, gate={**GATE, "accepted": False})
    assert second.seq == 2
    assert second.prev == hashlib.sha256(stored).hexdigest() == first.digest
    assert log.records() == [first, second]
    assert log.verify() == []


def test_to_json_is_canonical_and_round_trips(log: AuditLog) -> None:
    rec, _ = log.append("pin", id="pin/gen7", version=3, contributors=[{"z": 1, "a": [1, 2]}], message="é")
    data = rec.to_json()
    assert b" " not in data and data.isascii()
    assert list(json.loads(data)) == sorted(json.loads(data))
    assert AuditRecord.from_json(data, "x") == rec


def test_append_is_idempotent_by_id_also_after_a_restart(log: AuditLog, uri: str, tmp_path: Path) -> None:
    rec, created = log.append("migration", id="migrate/ctx-v4->agent-v2", version=2)
    again, created_again = log.append("migration", id="migrate/ctx-v4->agent-v2", version=2, message="retry")
    assert created and not created_again and again == rec
    restarted = open_audit(uri, NS, TIER)  # a new operator process
    assert restarted.has("migrate/ctx-v4->agent-v2") and not restarted.has("other")
    third, created3 = restarted.append("migration", id="migrate/ctx-v4->agent-v2")
    assert not created3 and third == rec
    assert sorted(p.name for p in (tmp_path / "store" / NS / TIER / "_audit").iterdir()) == ["00000001.json"]
    nxt, _ = restarted.append("rollback", id="rollback/v1", version=1)
    assert nxt.seq == 2 and nxt.prev == rec.digest


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"kind": "promoted", "id": "x"}, "audit kind 'promoted' is not one of promotion, rejection"),
        ({"kind": "pin", "id": "  "}, "audit id must not be empty"),
        ({"kind": "pin", "id": "x", "actor": ""}, "audit actor must not be empty"),
        (
            {"kind": "pin", "id": "x", "message": "m" * (MAX_MESSAGE_CHARS + 1)},
            "audit message is 4097 characters",
        ),
        ({"kind": "pin", "id": "x", "version": 0}, "audit version must be None or an integer >= 1"),
        ({"kind": "pin", "id": "x", "version": True}, "audit version must be None or an integer >= 1"),
        ({"kind": "pin", "id": "x", "contributors": {"agent": "a"}}, "sequence of mappings"),
        ({"kind": "pin", "id": "x", "contributors": ["alice"]}, r"contributors\[0\] must be a mapping"),
        (
            {"kind": "pin", "id": "x", "contributors": [{"w": object()}]},
            r"contributors\[0\] must be JSON-serialisable",
        ),
        (
            {"kind": "pin", "id": "x", "gate": {"heldOut": {"candidate": float("nan")}}},
            "gate must be JSON-serialisable",
        ),
        ({"kind": "pin", "id": "x", "gate": [1]}, "gate must be a mapping"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(
    log: AuditLog, kwargs: dict[str, object], fragment: str
) -> None:
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError, match=fragment):
        log.append(kind, **kwargs)  # type: ignore[arg-type]
    assert log.records() == []


def test_every_documented_kind_is_accepted(log: AuditLog) -> None:
    for i, kind in enumerate(AUDIT_KINDS):
        log.append(kind, id=f"{kind}/{i}")
    assert [r.kind for r in log.records()] == list(AUDIT_KINDS)
    assert [r.seq for r in log.records()] == list(range(1, len(AUDIT_KINDS) + 1))


def test_verify_detects_an_edited_record(log: AuditLog, uri: str) -> None:
    recs = _fill(log, 4)
    doc = json.loads(recs[1].to_json())
    doc["gate"]["accepted"] = False  # canonical re-serialisation: only the chain can reveal it
    _tamper(log, 2, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    problems = open_audit(uri, NS, TIER).verify()
    assert len(problems) == 1
    assert "00000003.json: prev-hash chain broken" in problems[0] and "seq 2" in problems[0]


def test_verify_detects_non_canonical_bytes_even_on_the_last_record(log: AuditLog, uri: str) -> None:
    recs = _fill(log, 2)
    _tamper(log, 2, json.dumps(json.loads(recs[1].to_json()), indent=1).encode())
    assert [p for p in open_audit(uri, NS, TIER).verify() if "not in canonical form" in p] != []


def test_verify_detects_gaps_garbage_strays_and_foreign_records(
    log: AuditLog, uri: str, tmp_path: Path
) -> None:
    _fill(log, 5)
    backend = log.store.backend  # type: ignore[attr-defined]
    backend.delete(f"{NS}/{TIER}/_audit/00000003.json")  # fault injection: a record removed
    _tamper(log, 4, b"{not json")
    foreign = open_audit(uri, NS, "other-tier")
    foreign.append("pin", id="pin/x")
    backend.put_bytes_if_absent(
        f"{NS}/{TIER}/_audit/00000006.json", _file(tmp_path, 1, "other-tier").read_bytes()
    )
    backend.put_bytes_if_absent(f"{NS}/{TIER}/_audit/notes.txt", b"hello")
    fresh = open_audit(uri, NS, TIER)
    problems = "\n".join(fresh.verify())
    assert "record(s) 3 missing (gap before seq 4)" in problems
    assert "00000004.json: invalid audit record" in problems
    assert "00000006.json: record belongs to team-a/other-tier, not team-a/shared" in problems
    assert "00000006.json: record says seq 1, stored as seq 6" in problems
    assert "notes.txt: unexpected object in the audit folder" in problems
    # The readable records are still listed; the unreadable one is left to verify().
    assert [r.seq for r in fresh.records()] == [1, 2, 5, 1]


def test_a_clean_log_verifies_and_an_empty_one_too(log: AuditLog) -> None:
    assert log.verify() == [] and log.records() == []
    _fill(log, 3)
    assert log.verify() == []


@pytest.mark.parametrize("shared_instance", [False, True])
def test_concurrent_appenders_lose_nothing(uri: str, shared_instance: bool) -> None:
    logs = (
        [open_audit(uri, NS, TIER)] * 3 if shared_instance else [open_audit(uri, NS, TIER) for _ in range(3)]
    )
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def writer(w: int) -> None:
        try:
            start.wait()
            for i in range(8):
                logs[w].append("consolidation", id=f"w{w}/{i}", message=f"writer {w}")
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    final = open_audit(uri, NS, TIER)
    recs = final.records()
    assert [r.seq for r in recs] == list(range(1, 25))
    assert sorted(r.id for r in recs) == sorted(f"w{w}/{i}" for w in range(3) for i in range(8))
    assert final.verify() == []


def test_concurrent_appends_of_the_same_id_create_one_record(uri: str) -> None:
    open_audit(uri, NS, TIER).append("pin", id="first")
    results: list[bool] = []
    start = threading.Barrier(4)

    def writer() -> None:
        start.wait()
        results.append(open_audit(uri, NS, TIER).append("rollback", id="rollback/gen9", version=1)[1])

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [False, False, False, True]
    assert [r.id for r in open_audit(uri, NS, TIER).records()] == ["first", "rollback/gen9"]


class CountingFsBackend(FsBackend):
    """A real filesystem backend that counts reads (to check the record cache)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0

    def get_bytes(self, key: str) -> bytes:
        self.reads += 1
        return super().get_bytes(key)


def test_records_are_read_once_then_served_from_the_cache(tmp_path: Path) -> None:
    backend = CountingFsBackend(tmp_path / "store")
    writer = AuditLog(BlobCheckpointStore(FsBackend(tmp_path / "store")), NS, TIER)
    _fill(writer, 5)
    reader = AuditLog(BlobCheckpointStore(backend), NS, TIER)
    assert reader.has("gate/v3") and backend.reads == 5
    assert reader.has("gate/v5") and not reader.has("gate/v9")
    assert backend.reads == 5
    writer.append("unpin", id="unpin/1")
    assert reader.has("unpin/1") and backend.reads == 6


class FakeAlwaysTakenBackend(FsBackend):
    """Fault injection: every create-if-absent loses, as if endless writers raced this one."""

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        return False


def test_append_gives_up_after_bounded_attempts(tmp_path: Path) -> None:
    log = AuditLog(BlobCheckpointStore(FakeAlwaysTakenBackend(tmp_path)), NS, TIER)
    with pytest.raises(
        StoreError, match=r"could not append audit record 'x' to file://.*/team-a/shared/_audit"
    ):
        log.append("pin", id="x")


def test_parse_errors_name_the_object() -> None:
    with pytest.raises(StoreError, match="invalid audit record s3://b/k: unknown format"):
        AuditRecord.from_json(b'{"seq": 1}', "s3://b/k")
    good = json.loads(AuditRecord(1, "i", "t", "pin", NS, TIER, None, "op", [], None, "", "").to_json())
    del good["prev"]
    with pytest.raises(StoreError, match="missing field"):
        AuditRecord.from_json(json.dumps(good).encode(), "here")


def test_bad_names_and_stores_are_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="invalid tier"):
        open_audit(uri, NS, "../escape")

    class NotBlobStore:
        pass

    with pytest.raises(TypeError, match="blob-backed checkpoint store"):
        AuditLog(NotBlobStore(), NS, TIER)  # type: ignore[arg-type]


def test_retention_and_version_listing_never_touch_the_trail(uri: str, tmp_path: Path) -> None:
    store = open_store(uri)
    src = tmp_path / "adapter.bin"
    src.write_bytes(b"weights")
    for _ in range(3):
        store.publish(NS, TIER, {"adapter.bin": src})
    log = AuditLog(store, NS, TIER)
    recs = _fill(log, 3)
    assert store.list_versions(NS, TIER) == [1, 2, 3]
    # Retention deletes old versions and (with a far-future clock) every stale unfinished write.
    from datetime import UTC, datetime

    report = store.retain(NS, TIER, keep_last=1, now=datetime.now(UTC) + timedelta(days=365))
    assert report.deleted == [1, 2] and report.garbage_deleted == []
    assert store.list_versions(NS, TIER) == [3]
    assert open_audit(uri, NS, TIER).records() == recs
    assert open_audit(uri, NS, TIER).verify() == []
    with pytest.raises(BlobNotFoundError):
        store.backend.get_bytes(f"{NS}/{TIER}/v000001/MANIFEST.json")  # type: ignore[attr-defined]
    # An audit trail alone is not a version either.
    open_audit(uri, NS, "audit-only").append("pin", id="p")
    assert store.list_versions(NS, "audit-only") == [] and store.latest(NS, "audit-only") is None

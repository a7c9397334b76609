"""Compaction of the audit trail into signed segments, on both real backends (filesystem, moto S3 server):
records and chain preserved, a crash halfway, tampering inside a segment, a foreign key, a deleted
segment, the number of objects left, and ``dynamiclora history --verify`` with the key (issue 18)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.cli import main
from dynamiclora.storage import CheckpointStore, StoreError
from dynamiclora.storage.audit import AuditLog, AuditRecord, open_audit
from dynamiclora.storage.audit_segments import Segment, key_id
from dynamiclora.storage.store import BlobCheckpointStore

pytestmark = pytest.mark.integration
NS, TIER = "team-a", "alice-agent"
KEY = b"k3y-of-the-operator-0123456789abcdef"
OTHER_KEY = b"another-operator-key-0123456789abcdef"
PREFIX = f"{NS}/{TIER}/_audit/"
GATE = {"accepted": True, "heldOut": {"records": 8, "baseline": 2.31, "candidate": 2.05}, "reason": ""}


def _backend(store: CheckpointStore) -> Any:
    assert isinstance(store, BlobCheckpointStore)
    return store.backend


def _fill(log: AuditLog, first: int, last: int) -> list[AuditRecord]:
    return [log.append("promotion", id=f"gate/v{v}", version=v, gate=GATE)[0] for v in range(first, last + 1)]


def _seed(store: CheckpointStore, n: int) -> list[AuditRecord]:
    """``n`` records exactly as append() writes them, without one listing per record (append's cost)."""
    backend, prev, out = _backend(store), "", []
    for seq in range(1, n + 1):
        rec = AuditRecord(seq, f"gate/v{seq}", "2026-11-22T04:42:42.000000Z", "promotion", NS, TIER, seq,
                          "operator", [], GATE, "", prev)  # fmt: skip
        data = rec.to_json()
        assert backend.put_bytes_if_absent(f"{PREFIX}{seq:08d}.json", data)
        prev = hashlib.sha256(data).hexdigest()
        out.append(rec)
    return out


def _keys(store: CheckpointStore) -> list[str]:
    return sorted(info.key[len(PREFIX) :] for info in _backend(store).list(PREFIX))


def _segment(store: CheckpointStore, name: str) -> Segment:
    return Segment.from_json(_backend(store).get_bytes(f"{PREFIX}segments/{name}"), name)


def test_compaction_keeps_every_record_and_the_chain(store_uri: str, store: CheckpointStore) -> None:
    log = AuditLog(store, NS, TIER)
    recs = _fill(log, 1, 12)
    done = log.compact(KEY, keep=3, segment_records=4)
    assert [u.rsplit("/", 1)[-1] for u in done.segments] == ["00000001-00000004.json", "00000005-00000008.json"]
    assert (done.deleted, done.loose) == (8, 4)
    assert _keys(store) == [f"{s:08d}.json" for s in range(9, 13)] + [
        "segments/00000001-00000004.json", "segments/00000005-00000008.json"]  # fmt: skip
    seg = _segment(store, "00000005-00000008.json")
    assert (seg.first, seg.last, seg.key_id) == (5, 8, key_id(KEY))
    assert seg.prev == recs[4].prev and seg.head == recs[7].digest  # the chain runs through the segments
    assert list(seg.records) == [r.to_json() for r in recs[4:8]]  # the exact stored bytes

    fresh = open_audit(store_uri, NS, TIER)  # another process: reads segments and loose records alike
    assert fresh.records() == recs and log.records() == recs
    assert fresh.verify(KEY) == [] and fresh.verify(KEY).notes == []
    unkeyed = fresh.verify()
    assert unkeyed == [] and unkeyed.notes == ["signatures of 2 segment(s) not checked: no key given"]

    # Appends continue the chain from the newest record; the next compaction starts after the last segment.
    more = _fill(fresh, 13, 16)
    assert more[0].seq == 13 and more[0].prev == recs[-1].digest
    assert fresh.has("gate/v2") and fresh.append("promotion", id="gate/v2")[1] is False  # ids in segments count
    assert log.compact(KEY, keep=3, segment_records=4).segments[-1].endswith("00000009-00000012.json")
    assert open_audit(store_uri, NS, TIER).records() == recs + more
    assert open_audit(store_uri, NS, TIER).verify(KEY) == []


def test_a_crash_between_segment_and_deletion_leaves_a_readable_log(
    store_uri: str, store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(store, NS, TIER)
    recs = _fill(log, 1, 7)
    backend = _backend(store)

    def crash(key: str) -> None:
        raise OSError("killed before deleting the folded records")  # the fault: a compactor dies here

    with monkeypatch.context() as patched, pytest.raises(OSError, match="killed before deleting"):
        patched.setattr(backend, "delete", crash)
        log.compact(KEY, keep=2, segment_records=5)
    # The segment and every loose record it copies are stored: each record is still read once.
    assert _keys(store) == [f"{s:08d}.json" for s in range(1, 8)] + ["segments/00000001-00000005.json"]
    fresh = open_audit(store_uri, NS, TIER)
    assert fresh.records() == recs and fresh.verify(KEY) == []
    nxt, _ = fresh.append("pin", id="pin/g2/1", version=1)
    assert nxt.seq == 8 and nxt.prev == recs[-1].digest
    # The next compaction (or a racing one that lost the create) finishes the job: same segment, duplicates gone.
    done = fresh.compact(KEY, keep=2, segment_records=5)
    assert done.segments == [] and done.deleted == 5
    assert _keys(store) == ["00000006.json", "00000007.json", "00000008.json", "segments/00000001-00000005.json"]
    assert open_audit(store_uri, NS, TIER).records() == [*recs, nxt]


def _rewrite_history(store: CheckpointStore, seq: int) -> None:
    """The attacker: edit record ``seq`` inside its segment and recompute every hash after it (prev fields,
    segment prev/head, later loose records), keeping the signatures, which need the key."""
    backend = _backend(store)
    log = AuditLog(store, NS, TIER)
    raws = [r.to_json() for r in log.records()]
    doc = json.loads(raws[seq - 1])
    doc["gate"]["accepted"] = False
    prev = ""
    for i, raw in enumerate(raws):
        d = doc if i == seq - 1 else json.loads(raw)
        if i:
            d["prev"] = prev
        raws[i] = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        prev = hashlib.sha256(raws[i]).hexdigest()
    for info in backend.list(PREFIX):
        name = info.key[len(PREFIX) :]
        if name.startswith("segments/"):
            seg = Segment.from_json(backend.get_bytes(info.key), name)
            body = tuple(raws[seg.first - 1 : seg.last])
            forged = replace(seg, records=body, prev=json.loads(body[0])["prev"],
                             head=hashlib.sha256(body[-1]).hexdigest())  # fmt: skip
            data = forged.to_json()
        else:
            data = raws[int(name[:8]) - 1]
        backend.delete(info.key)
        assert backend.put_bytes_if_absent(info.key, data)


def test_a_record_edited_inside_a_segment_fails_the_signature(store_uri: str, store: CheckpointStore) -> None:
    log = AuditLog(store, NS, TIER)
    _fill(log, 1, 10)
    log.compact(KEY, keep=2, segment_records=4)
    _rewrite_history(store, 3)
    fresh = open_audit(store_uri, NS, TIER)
    assert fresh.records()[2].gate == {**GATE, "accepted": False}
    assert fresh.verify() == []  # the recomputed chain alone is consistent: only the key can tell
    problems = fresh.verify(KEY)
    assert len(problems) == 2, problems  # both segments: the edited one and the one whose prev was recomputed
    assert all("signature does not match its content" in p for p in problems)
    assert "segments/00000001-00000004.json" in problems[0] and "segments/00000005-00000008.json" in problems[1]


def test_a_segment_signed_with_another_key_is_named(store_uri: str, store: CheckpointStore) -> None:
    log = AuditLog(store, NS, TIER)
    _fill(log, 1, 9)
    log.compact(OTHER_KEY, keep=1, segment_records=4)
    problems = open_audit(store_uri, NS, TIER).verify(KEY)
    assert len(problems) == 2
    assert "segments/00000001-00000004.json: signed with key id" in problems[0]
    assert f"{key_id(OTHER_KEY)!r}, not the given key's {key_id(KEY)!r}" in problems[0]
    assert open_audit(store_uri, NS, TIER).verify(OTHER_KEY) == []


def test_a_deleted_segment_is_a_gap(store_uri: str, store: CheckpointStore) -> None:
    log = AuditLog(store, NS, TIER)
    recs = _fill(log, 1, 10)
    log.compact(KEY, keep=2, segment_records=4)
    _backend(store).delete(f"{PREFIX}segments/00000005-00000008.json")  # fault injection
    fresh = open_audit(store_uri, NS, TIER)
    assert fresh.records() == recs[:4] + recs[8:]
    assert fresh.verify(KEY) == [f"{fresh.uri}: record(s) 5-8 missing (gap before seq 9)"]
    with pytest.raises(StoreError, match=r"not compacting the audit trail .* record\(s\) 5-8 missing"):
        fresh.compact(KEY, keep=0, segment_records=1)  # a broken trail is never signed


def test_a_thousand_records_become_a_few_objects(store_uri: str, store: CheckpointStore) -> None:
    recs = _seed(store, 1000)
    log = AuditLog(store, NS, TIER)
    done = log.compact(KEY, keep=32, segment_records=224)
    assert len(done.segments) == 4 and done.deleted == 896 and done.loose == 104
    listed = _keys(store)
    assert len(listed) == 108 and sum(k.startswith("segments/") for k in listed) == 4  # was 1000
    fresh = open_audit(store_uri, NS, TIER)
    assert fresh.records() == recs and fresh.verify(KEY) == []
    assert fresh.loose_records == 104


def _history(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["history", TIER, "-n", NS, *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_history_verify_checks_signatures_with_the_key(
    store_uri: str, store: CheckpointStore, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    log = AuditLog(store, NS, TIER)
    _fill(log, 1, 6)
    log.compact(KEY, keep=2, segment_records=4)
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY + b"\n")  # a trailing newline, as `echo` writes it, is not part of the key
    rc, out, _ = _history(capsys, "--store", store_uri, "--verify", "--audit-key-file", str(key_file))
    assert rc == 0 and "intact: 6 record(s), hash chain valid, 1 segment signature(s) valid" in out

    _rewrite_history(store, 2)
    rc, out, err = _history(capsys, "--store", store_uri, "--verify", "--audit-key-file", str(key_file))
    assert rc == 1 and "segments/00000001-00000004.json: signature does not match" in out
    assert "1 problem(s)" in err
    monkeypatch.setenv("DYNAMICLORA_AUDIT_KEY", KEY.decode())  # the way the operator's pod gets it
    rc, out, _ = _history(capsys, "--store", store_uri, "--verify")
    assert rc == 1 and "signature does not match" in out
    monkeypatch.delenv("DYNAMICLORA_AUDIT_KEY")
    rc, out, err = _history(capsys, "--store", store_uri, "--verify")
    assert rc == 0 and "hash chain valid" in out  # without the key only the chain is checked, and it says so
    assert "note: signatures of 1 segment(s) not checked: no key given" in err
    rc, _, err = _history(capsys, "--store", store_uri, "--verify", "--audit-key-file", str(tmp_path / "nope"))
    assert rc == 2 and "cannot read" in err

"""Audit-trail compaction on the filesystem store (tmp_path): what verify() reports about segments, what a
compaction refuses to sign, readers racing a compactor, racing compactors, and the read cache."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from dynamiclora.storage import StoreError
from dynamiclora.storage.audit import AuditLog, AuditRecord, open_audit
from dynamiclora.storage.audit_segments import Segment, key_id
from dynamiclora.storage.base import BlobInfo
from dynamiclora.storage.fs import FsBackend
from dynamiclora.storage.store import BlobCheckpointStore

NS, TIER = "team-a", "shared"
KEY = b"0123456789abcdef-audit-key"
PREFIX = f"{NS}/{TIER}/_audit/"


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"file://{tmp_path}/store"


@pytest.fixture
def log(uri: str) -> AuditLog:
    return open_audit(uri, NS, TIER)


def _fill(log: AuditLog, n: int) -> list[AuditRecord]:
    return [log.append("promotion", id=f"gate/v{i}", version=i)[0] for i in range(1, n + 1)]


def _backend(log: AuditLog) -> FsBackend:
    backend = log.store.backend  # type: ignore[attr-defined]
    assert isinstance(backend, FsBackend)
    return backend


def _put(log: AuditLog, name: str, data: bytes) -> None:
    """Fault injection: create or replace an object behind the log's back."""
    _backend(log).delete(PREFIX + name)
    assert _backend(log).put_bytes_if_absent(PREFIX + name, data)


def test_segments_are_deterministic_and_canonical() -> None:
    raws = [AuditRecord(i, f"i{i}", "t", "pin", NS, TIER, None, "op", [], None, "", "").to_json() for i in (3, 4)]
    one, two = (Segment.build(NS, TIER, 3, "", raws, KEY) for _ in range(2))
    assert one.to_json() == two.to_json()  # no time, no writer: racing compactors write identical bytes
    assert b" " not in one.to_json() and one.to_json().isascii()
    assert Segment.from_json(one.to_json(), "x") == one
    assert (one.first, one.last, one.key_id) == (3, 4, key_id(KEY)) and len(one.key_id) == 12
    assert one.signature_problem(KEY) is None
    assert "not the given key's" in str(one.signature_problem(b"another-key-of-16-bytes"))
    with pytest.raises(ValueError, match="non-empty signing key"):
        Segment.build(NS, TIER, 1, "", raws, b"")
    with pytest.raises(StoreError, match="invalid audit segment where: missing field"):
        Segment.from_json(b'{"format": "dynamiclora.audit-segment/v1"}', "where")


def test_compaction_refuses_to_sign_a_broken_chain(log: AuditLog) -> None:
    recs = _fill(log, 6)
    _put(log, "00000002.json", recs[1].to_json().replace(b'"version":2', b'"version":9'))
    with pytest.raises(StoreError, match=r"not compacting .*: 1 problem\(s\), the first: .*00000003.json: prev-hash"):
        log.compact(KEY, keep=1, segment_records=2)
    assert log.verify().notes == [] and len(list(_backend(log).list(PREFIX))) == 6  # nothing written or deleted


def test_arguments_are_checked(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="non-empty signing key"):
        log.compact(b"")
    with pytest.raises(ValueError, match="keep must be >= 0 and segment_records >= 1"):
        log.compact(KEY, keep=-1)
    assert log.compact(KEY).segments == []  # an empty trail: nothing to do


def test_verify_reports_what_is_wrong_with_segments(log: AuditLog, uri: str) -> None:
    recs = _fill(log, 9)
    log.compact(KEY, keep=1, segment_records=4)  # segments 1-4 and 5-8, loose 9
    seg = Segment.from_json(_backend(log).get_bytes(PREFIX + "segments/00000005-00000008.json"), "x")
    # A loose copy that differs from the segment's: one of them was modified.
    _put(log, "00000006.json", recs[5].to_json().replace(b"promotion", b"rollback"))
    # A second segment overlapping the first, claiming a range its name contradicts.
    _put(log, "segments/00000003-00000004.json", Segment.build(NS, TIER, 3, recs[2].prev,
         [r.to_json() for r in recs[2:5]], KEY).to_json())  # fmt: skip
    # An unparsable segment and a stray object in the segments folder.
    _put(log, "segments/00000010-00000011.json", b"{oops")
    _put(log, "segments/notes.txt", b"hello")
    problems = "\n".join(open_audit(uri, NS, TIER).verify(KEY))
    assert "00000006.json: differs from the copy of seq 6 in" in problems
    assert "00000003-00000004.json: covers records 3-5 but is named 00000003-00000004.json" in problems
    assert "00000003-00000004.json: overlaps another segment (records 3-4)" in problems
    assert "00000010-00000011.json: invalid audit segment" in problems
    assert "segments/notes.txt: unexpected object in the audit folder" in problems
    # A segment whose head does not match its records (no key needed to see it).
    _put(log, "segments/00000005-00000008.json", replace(seg, head="0" * 64).to_json())
    problems = "\n".join(open_audit(uri, NS, TIER).verify())
    assert "00000005-00000008.json: head does not match the sha256 of its last record" in problems


def test_records_are_read_once_including_segments(tmp_path: Path) -> None:
    class Counting(FsBackend):
        reads: list[str] = []

        def get_bytes(self, key: str) -> bytes:
            self.reads.append(key.rsplit("/", 1)[-1])
            return super().get_bytes(key)

    writer = AuditLog(BlobCheckpointStore(FsBackend(tmp_path / "s")), NS, TIER)
    _fill(writer, 10)
    writer.compact(KEY, keep=2, segment_records=4)
    backend = Counting(tmp_path / "s")
    reader = AuditLog(BlobCheckpointStore(backend), NS, TIER)
    assert len(reader.records()) == 10
    assert sorted(backend.reads) == ["00000001-00000004.json", "00000005-00000008.json", "00000009.json",
                                     "00000010.json"]  # fmt: skip
    backend.reads.clear()
    reader.append("pin", id="pin/1")  # one listing; nothing read again
    writer.append("unpin", id="unpin/1")
    assert reader.has("unpin/1") and backend.reads == ["00000012.json"]  # only the new object


class RacedFsBackend(FsBackend):
    """Runs ``between`` once, after a listing and before its objects are read (a compactor at that moment)."""

    between: list[Callable[[], object]] = []

    def list(self, prefix: str) -> list[BlobInfo]:
        listing = super().list(prefix)
        while self.between:
            self.between.pop()()
        return listing


def test_a_reader_racing_a_compactor_sees_every_record_once(tmp_path: Path) -> None:
    compactor = AuditLog(BlobCheckpointStore(FsBackend(tmp_path / "s")), NS, TIER)
    recs = _fill(compactor, 8)
    backend = RacedFsBackend(tmp_path / "s")
    backend.between = [lambda: compactor.compact(KEY, keep=1, segment_records=3)]
    reader = AuditLog(BlobCheckpointStore(backend), NS, TIER)
    assert reader.records() == recs  # its listing named loose records deleted meanwhile: listed again
    assert reader.verify(KEY) == [] and reader.loose_records == 2


def test_racing_compactors_write_one_identical_segment(uri: str, log: AuditLog) -> None:
    recs = _fill(log, 20)
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def compactor() -> None:
        try:
            start.wait()
            open_audit(uri, NS, TIER).compact(KEY, keep=2, segment_records=6)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=compactor) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    names = sorted(i.key[len(PREFIX) :] for i in _backend(log).list(PREFIX))
    assert names == ["00000019.json", "00000020.json", "segments/00000001-00000006.json",
                     "segments/00000007-00000012.json", "segments/00000013-00000018.json"]  # fmt: skip
    assert open_audit(uri, NS, TIER).records() == recs and open_audit(uri, NS, TIER).verify(KEY) == []


def test_a_segment_found_with_other_content_keeps_its_records_loose(tmp_path: Path) -> None:
    writer = AuditLog(BlobCheckpointStore(FsBackend(tmp_path / "s")), NS, TIER)
    recs = _fill(writer, 6)
    other_key = b"fedcba9876543210-other-key"
    theirs = Segment.build(NS, TIER, 1, "", [r.to_json() for r in recs[:4]], other_key).to_json()
    backend = RacedFsBackend(tmp_path / "s")
    # Another compactor, with another key, writes the segment this one is about to write.
    backend.between = [lambda: backend.put_bytes_if_absent(PREFIX + "segments/00000001-00000004.json", theirs)]
    log = AuditLog(BlobCheckpointStore(backend), NS, TIER)
    with pytest.raises(StoreError, match=r"00000001-00000004\.json exists with other content .* stay loose"):
        log.compact(KEY, keep=1, segment_records=4)
    assert backend.get_bytes(PREFIX + "segments/00000001-00000004.json") == theirs  # never overwritten
    assert len([i for i in backend.list(PREFIX) if "/segments/" not in i.key]) == 6  # nothing deleted
    assert log.records() == recs
    assert "signed with key id" in log.verify(KEY)[0]

"""The operator compacts a tier's audit trail after appends: only past the threshold, only with a key
(without one: never, logged once per process), never losing a record; the key settings (issue 18)."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.cli import main
from dynamiclora.controllers import promotion
from dynamiclora.controllers.policy_gate import audit_consolidation
from dynamiclora.controllers.promotion import compact_audit
from dynamiclora.controllers.tier_storage import StoreAccess
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.audit import AuditLog
from dynamiclora.storage.uri import open_store

from .fakekube import FakeKube
from .test_reconcile import NS, _publish, _store, _swarm, _tier_pass

KEY = "operator-audit-key-0123456789"
CTX = "support-alice-context"


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test is a new operator process as far as the "no key" message goes."""
    monkeypatch.setattr(promotion, "_NO_KEY_LOGGED", threading.Event())


def _log(settings: OperatorSettings, tier: str = "t") -> AuditLog:
    return AuditLog(open_store(_store(settings)), NS, tier)


def _fill(log: AuditLog, first: int, last: int) -> None:
    for v in range(first, last + 1):
        log.append("promotion", id=f"gate/v{v}", version=v)


def _objects(log: AuditLog) -> list[str]:
    backend = log.store.backend  # type: ignore[attr-defined]
    prefix = f"{NS}/{log.tier}/_audit/"
    return sorted(i.key[len(prefix) :] for i in backend.list(prefix))


def test_compacts_only_past_the_threshold_and_only_with_a_key(
    settings: OperatorSettings, caplog: pytest.LogCaptureFixture
) -> None:
    keyed = dataclasses.replace(settings, audit_key=KEY, audit_compact_threshold=6, audit_keep_loose=2)
    log = _log(settings)
    _fill(log, 1, 6)
    assert compact_audit(log, keyed) is None and len(_objects(log)) == 6  # 6 loose: not more than 6
    _fill(log, 7, 7)
    assert compact_audit(log, None) is None  # no settings (a caller that does not compact)

    unkeyed = dataclasses.replace(keyed, audit_key="")
    with caplog.at_level(logging.WARNING, logger="dynamiclora.operator"):
        assert compact_audit(log, unkeyed) is None
        assert compact_audit(_log(settings), unkeyed) is None
    assert len(_objects(log)) == 7  # nothing folded, nothing lost
    (message,) = [r.getMessage() for r in caplog.records]  # once per process, not per append
    assert "audit trails are not compacted: no audit key" in message and "has 7 loose records" in message

    done = compact_audit(log, keyed)  # threshold 6, keep 2: segments of 4
    assert done is not None and done.deleted == 4 and done.loose == 3
    assert _objects(log) == ["00000005.json", "00000006.json", "00000007.json", "segments/00000001-00000004.json"]
    assert log.verify(KEY.encode()) == []


def test_a_failed_compaction_leaves_the_trail_and_the_pass_alone(
    settings: OperatorSettings, caplog: pytest.LogCaptureFixture
) -> None:
    keyed = dataclasses.replace(settings, audit_key=KEY, audit_compact_threshold=3, audit_keep_loose=1)
    log = _log(settings)
    _fill(log, 1, 4)
    backend = log.store.backend  # type: ignore[attr-defined]
    backend.delete(f"{NS}/t/_audit/00000002.json")  # fault injection: a record removed out of band
    with caplog.at_level(logging.WARNING, logger="dynamiclora.operator"):
        _fill(log, 5, 5)
        assert compact_audit(log, keyed) is None
    assert "not compacted: not compacting the audit trail" in caplog.text and "record(s) 2 missing" in caplog.text
    assert len(_objects(log)) == 4  # a broken trail is never signed


def test_tier_passes_compact_the_trail_they_append_to(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    keyed = dataclasses.replace(settings, audit_key=KEY, audit_compact_threshold=3, audit_keep_loose=1)
    _swarm(kube, keyed, swarm_body)
    for _ in range(6):
        _publish(keyed, CTX, tmp_path, {"kind": "training"})
        out = _tier_pass(kube, keyed, CTX)
    log = _log(keyed, CTX)
    assert [r.id for r in log.records()] == [f"gate/v{v}" for v in range(1, 7)]
    assert out.wire()["gateCounts"] == {"accepted": 6, "rejected": 0}  # counted across segments
    assert _objects(log) == ["00000005.json", "00000006.json", "segments/00000001-00000002.json",
                             "segments/00000003-00000004.json"]  # fmt: skip
    assert log.verify(KEY.encode()) == []


def test_a_consolidation_outcome_compacts_its_target_tier(settings: OperatorSettings) -> None:
    keyed = dataclasses.replace(settings, audit_key=KEY, audit_compact_threshold=3, audit_keep_loose=1)
    log = _log(settings, "shared")
    _fill(log, 1, 3)
    result = {"status": "rejected", "mode": "consensus", "gate": {"accepted": False, "reason": "regressed"}}
    summary = audit_consolidation(StoreAccess(_store(settings)), NS, "shared", "shared-consensus-v4", result,
                                  settings=keyed)  # fmt: skip
    assert "rejected by the quality gate" in summary
    assert _objects(log) == ["00000003.json", "00000004.json", "segments/00000001-00000002.json"]
    assert log.records()[-1].id == "job/shared-consensus-v4" and log.verify(KEY.encode()) == []


def test_the_key_comes_from_the_environment_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNAMICLORA_AUDIT_KEY", f" {KEY}\n")
    settings = OperatorSettings.from_env()
    assert settings.audit_signing_key == KEY.encode() and KEY not in repr(settings)
    key_file = tmp_path / "key"
    key_file.write_text("from-the-file-0123456789\n")
    assert OperatorSettings.from_env(audit_key_file=str(key_file)).audit_signing_key == b"from-the-file-0123456789"
    monkeypatch.delenv("DYNAMICLORA_AUDIT_KEY")
    assert OperatorSettings.from_env().audit_signing_key is None
    with pytest.raises(ValueError, match="cannot read"):
        _ = OperatorSettings(audit_key_file=str(tmp_path / "missing")).audit_signing_key
    with pytest.raises(ValueError, match="is 5 bytes; use at least 16"):
        _ = OperatorSettings(audit_key="short").audit_signing_key
    with pytest.raises(ValueError, match=r"audit_keep_loose .* below audit_compact_threshold"):
        OperatorSettings(audit_compact_threshold=32, audit_keep_loose=32)


def test_run_refuses_an_unreadable_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--audit-key-file", str(tmp_path / "missing")]) == 2
    assert "audit_key_file: cannot read" in capsys.readouterr().out

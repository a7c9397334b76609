"""``dynamiclora history`` with ``--store`` on the filesystem, its formatting, and storage resolution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.cli import main
from dynamiclora.controllers.history_cli import (
    COLUMNS,
    InputError,
    format_contributors,
    format_gate,
    resolve_store,
)
from dynamiclora.storage.audit import AuditLog, open_audit

NS, TIER = "team-a", "shared"
ACCEPTED = {
    "accepted": True,
    "heldOut": {"records": 12, "baseline": 2.31, "candidate": 2.05},
    "maxRegression": 0.1,
    "reason": "",
}
REJECTED = {
    "accepted": False,
    "heldOut": {"records": 12, "baseline": 2.31, "candidate": 3.9},
    "regression": {"records": 4, "baseline": 1.2, "candidate": 1.25},
    "maxRegression": 0.1,
    "reason": "held-out loss rose 69%",
}


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"file://{tmp_path}/store"


@pytest.fixture
def log(uri: str) -> AuditLog:
    log = open_audit(uri, NS, TIER)
    log.append(
        "consensus",
        id="consensus/v1",
        version=1,
        actor="job/shared-consensus-v1",
        contributors=[
            {"agent": "alice", "version": 3, "weight": 0.5},
            {"agent": "bob", "version": 7, "weight": 0.5},
        ],
        gate=ACCEPTED,
        message="resonance consensus of 2 agents",
    )
    log.append("rejection", id="gate/v2", version=2, gate=REJECTED, message="candidate\nrejected")
    log.append("pin", id="pin/gen4", version=1, actor="user", message="pinned by spec.pinnedVersion")
    return log


def _history(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["history", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_table_shows_every_column_and_record(
    log: AuditLog, uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _history(capsys, TIER, "-n", NS, "--store", uri)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == list(COLUMNS)
    assert len(lines) == 4
    seq1, seq2, seq3 = lines[1:]
    assert seq1.split()[:3] == ["1", log.records()[0].time[:10], log.records()[0].time[11:19]]
    assert "consensus" in seq1 and "job/shared-consensus-v1" in seq1
    assert "alice:3@0.50,bob:7@0.50" in seq1 and "held-out 2.31->2.05 ok" in seq1
    assert "held-out 2.31->3.90 regression 1.20->1.25 REJECTED (held-out loss rose 69%)" in seq2
    assert "candidate rejected" in seq2  # one line per record
    assert seq3.split()[3:6] == ["pin", "1", "user"]
    # Columns are aligned: every row has EVENT where the header has it.
    col = lines[0].index("EVENT")
    assert [line[col:].split()[0] for line in lines[1:]] == ["consensus", "rejection", "pin"]


def test_json_and_limit(log: AuditLog, uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _history(capsys, TIER, "-n", NS, "--store", uri, "-o", "json", "--limit", "2")
    assert rc == 0
    docs = json.loads(out)
    assert [d["seq"] for d in docs] == [2, 3]
    assert docs[0]["gate"] == REJECTED and docs[1]["prev"] == log.records()[1].digest
    rc, _, err = _history(capsys, TIER, "-n", NS, "--store", uri, "--limit", "0")
    assert rc == 2 and "--limit must be >= 1" in err


def test_empty_history_is_explained(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _history(capsys, "nothing-yet", "-n", NS, "--store", uri)
    assert rc == 0 and out.startswith("no audit records yet for team-a/nothing-yet")
    rc, out, _ = _history(capsys, "nothing-yet", "-n", NS, "--store", uri, "-o", "json")
    assert rc == 0 and json.loads(out) == []


def test_verify_passes_then_fails_after_tampering(
    log: AuditLog, uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = _history(capsys, TIER, "-n", NS, "--store", uri, "--verify")
    assert rc == 0 and "intact: 3 record(s), hash chain valid" in out
    # Fault injection: rewrite record 1 behind the log's back.
    backend = log.store.backend  # type: ignore[attr-defined]
    doc = json.loads(log.records()[0].to_json())
    doc["contributors"][1]["weight"] = 0.0
    backend.delete(f"{NS}/{TIER}/_audit/00000001.json")
    backend.put_bytes_if_absent(
        f"{NS}/{TIER}/_audit/00000001.json", json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    )
    rc, out, err = _history(capsys, TIER, "-n", NS, "--store", uri, "--verify")
    assert rc == 1 and "00000002.json: prev-hash chain broken" in out and "1 problem(s)" in err
    rc, out, err = _history(capsys, TIER, "-n", NS, "--store", uri)
    assert rc == 0 and "warning: the audit trail has 1 problem(s); run with --verify" in err
    assert "bob:7@0.00" in out


def test_bad_store_uri_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _history(capsys, TIER, "--store", "gs://bucket/x")
    assert rc == 2 and "unsupported scheme 'gs'" in err
    rc, _, err = _history(capsys, "bad/name", "--store", "file:///tmp/x")
    assert rc == 2 and "invalid tier 'bad/name'" in err


def test_formatting_helpers() -> None:
    assert format_gate(None) == "" and format_gate({"accepted": True}) == "ok"
    assert (
        format_gate({"accepted": False, "reason": "no held-out records"}) == "REJECTED (no held-out records)"
    )
    assert format_gate({"heldOut": {"baseline": 0.00123, "candidate": "x"}}) == "held-out 0.00123->?"
    many = [{"agent": f"agent-{i}", "version": i, "weight": 0.1} for i in range(10)]
    text = format_contributors(many)
    assert text.startswith("agent-0:0@0.10,") and text.endswith(" more") and len(text) <= 48
    shown = text.split(" +")[0].count(",") + 1
    assert text.endswith(f"+{10 - shown} more")
    assert format_contributors([{"tier": "alice-context"}]) == "alice-context"


class Objects:
    """An in-memory stand-in for the API server's GET (the resolution logic is pure)."""

    def __init__(self, *objs: dict[str, Any]) -> None:
        self.objs = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objs.get((kind, namespace, name))


def _obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"namespace": NS, "name": name}, "spec": spec}


def test_storage_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYNAMICLORA_PVC_ROOT", raising=False)
    s3 = {"s3": {"bucket": "ckpt-bucket", "prefix": "dl/", "endpoint": "http://minio:9000"}}
    pvc = {"pvc": {"claimName": "store", "path": "ckpt"}}
    kube = Objects(
        _obj("LoRATier", "own", {"storage": s3}),
        _obj("LoRATier", "inherits", {"swarmRef": "sw"}),
        _obj("Swarm", "sw", {"storage": pvc}),
        _obj("LoRATier", "orphan", {"swarmRef": "gone"}),
        _obj("LoRATier", "nowhere", {}),
        _obj("LoRATier", "broken", {"storage": {"s3": {"bucket": "b"}, "pvc": {"claimName": "c"}}}),
    )
    assert resolve_store(kube, NS, "own", "") == ("s3://ckpt-bucket/dl", "http://minio:9000")
    assert resolve_store(kube, NS, "inherits", "/mnt/pvc") == ("file:///mnt/pvc/store/ckpt", None)
    assert resolve_store(kube, NS, "inherits", "") == ("file:///var/lib/dynamiclora/pvc/store/ckpt", None)
    monkeypatch.setenv("DYNAMICLORA_PVC_ROOT", "/env/root")
    assert resolve_store(kube, NS, "inherits", "") == ("file:///env/root/store/ckpt", None)
    with pytest.raises(InputError, match="LoRATier team-a/missing not found"):
        resolve_store(kube, NS, "missing", "")
    with pytest.raises(InputError, match=r"Swarm team-a/gone \(spec.swarmRef\) does not exist"):
        resolve_store(kube, NS, "orphan", "")
    with pytest.raises(InputError, match=r"no spec\.storage and no spec\.swarmRef"):
        resolve_store(kube, NS, "nowhere", "")
    with pytest.raises(InputError, match=r"invalid LoRATier team-a/broken spec\.storage"):
        resolve_store(kube, NS, "broken", "")

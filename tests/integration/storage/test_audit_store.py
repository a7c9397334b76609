"""The audit-trail contract on both real backends: the filesystem and a moto S3 server on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.storage import CheckpointStore
from dynamiclora.storage.audit import AuditLog, open_audit
from dynamiclora.storage.store import BlobCheckpointStore
from dynamiclora_dev.testing.storage import free_port

pytestmark = pytest.mark.integration
NS, TIER = "team-a", "alice-agent"
GATE = {
    "accepted": True,
    "heldOut": {"records": 8, "baseline": 2.31, "candidate": 2.05},
    "maxRegression": 0.1,
    "reason": "",
}


def _backend(store: CheckpointStore) -> Any:
    assert isinstance(store, BlobCheckpointStore)
    return store.backend


def test_append_only_idempotent_and_survives_a_restart(store_uri: str, store: CheckpointStore) -> None:
    log = AuditLog(store, NS, TIER)
    first, created = log.append(
        "promotion",
        id="gate/v1",
        version=1,
        actor="job/alice-ctx-train-v1",
        contributors=[{"agent": "alice", "tier": "alice-context", "version": 1}],
        gate=GATE,
        message="accepted",
    )
    assert created and first.seq == 1
    assert log.append("promotion", id="gate/v1", version=1)[1] is False
    second, _ = log.append(
        "migration",
        id="migrate/ctx-v1",
        version=2,
        contributors=[{"tier": "alice-context", "version": 1, "weight": 1.0}],
    )
    assert second.prev == first.digest

    # Append-only at the storage level: a second create of an existing key is refused, content unchanged.
    key = f"{NS}/{TIER}/_audit/00000001.json"
    backend = _backend(store)
    assert backend.put_bytes_if_absent(key, b'{"rewritten": true}') is False
    assert backend.get_bytes(key) == first.to_json()

    # An operator restart: a new process opens the store and the log from scratch.
    restarted = open_audit(store_uri, NS, TIER)
    assert restarted.records() == [first, second]
    assert restarted.has("gate/v1") and restarted.has("migrate/ctx-v1")
    assert restarted.append("promotion", id="gate/v1")[1] is False  # re-run of a step done before the crash
    third, created3 = restarted.append(
        "rollback", id="rollback/gen3", version=1, actor="user", message="spec.rollbackTo=1"
    )
    assert created3 and third.seq == 3 and third.prev == second.digest
    assert restarted.verify() == []
    assert log.records() == [first, second, third]  # the old instance sees the new record too


def test_concurrent_writers_on_the_backend(store_uri: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(w: int) -> None:
        log = open_audit(store_uri, NS, TIER)
        try:
            start.wait()
            for i in range(6):
                log.append("consolidation", id=f"w{w}/{i}")
            log.append("pin", id="pin/shared")  # both writers record the same step: one record
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    log = open_audit(store_uri, NS, TIER)
    recs = log.records()
    assert [r.seq for r in recs] == list(range(1, 14))
    assert sorted(r.id for r in recs) == sorted(
        [f"w{w}/{i}" for w in range(2) for i in range(6)] + ["pin/shared"]
    )
    assert log.verify() == []


def test_tampering_is_detected(store_uri: str, store: CheckpointStore) -> None:
    log = AuditLog(store, NS, TIER)
    recs = [log.append("promotion", id=f"gate/v{v}", version=v, gate=GATE)[0] for v in (1, 2, 3)]
    backend = _backend(store)
    key = f"{NS}/{TIER}/_audit/00000002.json"
    # Fault injection: an out-of-band rewrite (delete + create) that append never does.
    backend.delete(key)
    assert backend.put_bytes_if_absent(key, recs[1].to_json().replace(b"2.05", b"1.05"))
    problems = open_audit(store_uri, NS, TIER).verify()
    assert len(problems) == 1 and "00000003.json: prev-hash chain broken" in problems[0]


def test_retention_keeps_the_trail(store_uri: str, store: CheckpointStore, files: dict[str, Path]) -> None:
    for _ in range(3):
        store.publish(NS, TIER, files)
    log = AuditLog(store, NS, TIER)
    recs = [log.append("promotion", id=f"gate/v{v}", version=v)[0] for v in (1, 2, 3)]
    report = store.retain(NS, TIER, keep_last=1, now=datetime.now(UTC) + timedelta(days=30))
    assert report.deleted == [1, 2] and report.garbage_deleted == []
    assert open_audit(store_uri, NS, TIER).records() == recs


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynamiclora.cli", "history", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env or os.environ.copy(),
        check=False,
    )


def test_history_command_on_the_backend(store_uri: str) -> None:
    log = open_audit(store_uri, NS, TIER)
    log.append(
        "consensus",
        id="c/v1",
        version=1,
        contributors=[{"agent": "alice", "version": 2, "weight": 0.6}],
        gate=GATE,
        message="consensus",
    )
    table = _cli(TIER, "-n", NS, "--store", store_uri)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["SEQ", "TIME", "EVENT"]
    assert "alice:2@0.60" in table.stdout and "held-out 2.31->2.05 ok" in table.stdout
    verify = _cli(TIER, "-n", NS, "--store", store_uri, "--verify")
    assert verify.returncode == 0 and "1 record(s), hash chain valid" in verify.stdout


def test_unreachable_s3_endpoint_is_reported(s3_env: dict[str, str]) -> None:
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "1"}
    res = _cli(TIER, "-n", NS, "--store", "s3://nowhere/prefix", env=env)
    assert res.returncode == 1
    assert "error: audit store unreachable" in res.stderr and "127.0.0.1" in res.stderr

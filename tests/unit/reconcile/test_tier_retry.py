"""A version rejected for collateral forgetting is retried with more replay; a contradicting one is quarantined."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.controllers.swarm import reconcile_swarm
from dynamiclora.controllers.tier import MAX_COLLATERAL_RETRIES, TierOutcome
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.uri import open_store

from .fakekube import FakeKube
from .passes import tier_pass

NS = "default"
TIER = "support-alice-context"


def _pass(kube: FakeKube, settings: OperatorSettings) -> TierOutcome:
    return tier_pass(kube, settings, TIER, NS)


def _records(settings: OperatorSettings, n: int) -> None:
    d = Path(settings.pvc_mount_root) / f"ckpt/dl/interactions/{NS}/support/alice"
    d.mkdir(parents=True, exist_ok=True)
    with (d / "batch.jsonl").open("a") as fh:
        for i in range(n):
            fh.write(json.dumps({"agent": "alice", "timestamp": "2026-11-22T00:00:00Z", "prompt": f"q{i}",
                                 "response": "a"}) + "\n")  # fmt: skip


def _finish(kube: FakeKube, settings: OperatorSettings, tmp: Path, gate: dict[str, Any]) -> str:
    """The running Job publishes a version with ``gate`` and completes; returns the Job's name."""
    (job,) = [j for j in kube.list("Job", NS) if not j.get("status")]
    f = tmp / "adapter_config.json"
    f.write_text("{}")
    window = {"from": "2026-11-22T00:00:00+00:00", "to": "2026-11-22T00:00:00+00:00"}
    open_store(f"file://{settings.pvc_mount_root}/ckpt/dl").publish(
        NS, TIER, {"adapter_config.json": f}, {"kind": "training", "gate": gate, "window": window})
    name = str(job["metadata"]["name"])
    kube.objects[("Job", NS, name)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    return name


def _args(kube: FakeKube) -> list[str]:
    (job,) = [j for j in kube.list("Job", NS) if not j.get("status")]
    return list(job["spec"]["template"]["spec"]["containers"][0]["args"])


def _opt(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _contradicted_first_batch(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any],
                              tmp: Path) -> dict[str, Any]:  # fmt: skip
    """The first training's version is rejected as contradicting what is known; returns the tier's status."""
    reconcile_swarm(kube, settings, kube.add(swarm_body))
    _records(settings, 20)
    _pass(kube, settings)
    _finish(kube, settings, tmp, {"accepted": False, "reason": "forgot", "cause": "contradiction"})
    return dict(_pass(kube, settings).wire())


ACCEPTED = {"accepted": True, "reason": "ok"}
COLLATERAL = {"accepted": False, "reason": "forgot", "cause": "collateral"}


def test_collateral_rejection_retrains_the_same_records_with_more_replay(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    reconcile_swarm(kube, settings, kube.add(swarm_body))
    _records(settings, 20)
    _pass(kube, settings)
    _finish(kube, settings, tmp_path, ACCEPTED)
    assert _pass(kube, settings).wire()["recordsConsumed"] == 20
    _records(settings, 20)
    _pass(kube, settings)
    first = _args(kube)
    assert (_opt(first, "--replay-fraction"), _opt(first, "--max-records")) == ("0.5", "20")

    for retry in range(1, MAX_COLLATERAL_RETRIES + 1):
        _finish(kube, settings, tmp_path, COLLATERAL)
        out = _pass(kube, settings)
        st = out.wire()
        assert st["recordsConsumed"] == 20 and st["collateralRetries"] == retry  # the records stay pending ...
        assert not st.get("quarantine")  # ... and are not quarantined
        assert "UpdateRetried" in {e.reason for e in out.events}
        args = _args(kube)  # ... and the same pass starts the retry, rehearsing more
        assert _opt(args, "--max-records") == "20"
        assert float(_opt(args, "--replay-fraction")) == pytest.approx(0.5 + 0.2 * retry)
        assert int(_opt(args, "--replay-budget")) == int(_opt(first, "--replay-budget")) * (1 + retry)

    _finish(kube, settings, tmp_path, COLLATERAL)  # retries exhausted: consumed, rehearsed by later updates
    st = _pass(kube, settings).wire()
    assert st["recordsConsumed"] == 40 and "collateralRetries" not in st and not st.get("quarantine")


def test_contradicting_rejection_is_quarantined_and_not_retried(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    st = _contradicted_first_batch(kube, settings, swarm_body, tmp_path)
    assert st["recordsConsumed"] == 20 and "collateralRetries" not in st
    assert [q["version"] for q in st["quarantine"]] == [1]
    assert st["lastGate"]["cause"] == "contradiction"


def test_a_released_window_leaves_the_quarantine_and_is_audited(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    from dynamiclora.storage.audit import AuditLog

    (q,) = _contradicted_first_batch(kube, settings, swarm_body, tmp_path)["quarantine"]
    window = f"{q['from']}/{q['to']}"
    _records(settings, 20)
    _pass(kube, settings)
    args = _args(kube)
    assert args[args.index("--exclude-window") + 1] == window  # the next Job re-examines it
    f = tmp_path / "adapter_config.json"
    open_store(f"file://{settings.pvc_mount_root}/ckpt/dl").publish(
        NS, TIER, {"adapter_config.json": f}, {"kind": "training", "gate": ACCEPTED, "released": [window]})
    out = _pass(kube, settings)
    assert out.wire()["quarantine"] == []
    assert "QuarantineReleased" in {e.reason for e in out.events}
    store = open_store(f"file://{settings.pvc_mount_root}/ckpt/dl")
    (release,) = [r for r in AuditLog(store, NS, TIER).records() if r.kind == "quarantine-release"]
    assert release.version == 1 and window in release.message
    assert not [e for e in _pass(kube, settings).events if e.reason == "QuarantineReleased"]  # once

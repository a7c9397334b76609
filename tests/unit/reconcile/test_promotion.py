"""Quality-gate verdicts, pins and trust in the reconcile functions (in-memory Kube, real filesystem store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.tiers import build_agent_tiers
from dynamiclora.controllers.policy import result_path
from dynamiclora.controllers.promotion import trust_score
from dynamiclora.controllers.serving import desired_stacks
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.audit import AuditLog
from dynamiclora.storage.results import write_result
from dynamiclora.storage.uri import open_store

from .fakekube import FakeKube
from .test_reconcile import NS, _policy, _policy_pass, _publish, _store, _swarm, _tier, _tier_pass

CTX = "support-alice-context"


def _gate(accepted: bool, baseline: float = 2.0, candidate: float = 1.5) -> dict[str, Any]:
    return {"accepted": accepted, "heldOut": {"records": 8, "baseline": baseline, "candidate": candidate},
            "maxRegression": 0.05, "reason": "ok" if accepted else "held-out loss regressed"}  # fmt: skip


def _audit(settings: OperatorSettings, tier: str) -> AuditLog:
    return AuditLog(open_store(_store(settings)), NS, tier)


def test_rejected_version_is_recorded_but_never_promoted(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    live = _swarm(kube, settings, swarm_body)
    _publish(settings, CTX, tmp_path, {"kind": "training", "gate": _gate(True), "job": f"{CTX}-train-v1"})
    out = _tier_pass(kube, settings, CTX)
    assert out.wire()["currentVersion"] == 1 and out.wire()["lastGate"]["accepted"] is True
    assert [e.reason for e in out.events].count("Promoted") == 1

    # v2 regressed on held-out records: published (nothing is lost) but not promoted.
    _publish(settings, CTX, tmp_path, {"kind": "training", "gate": _gate(False, 2.0, 3.9)})
    out = _tier_pass(kube, settings, CTX)
    st = out.wire()
    assert st["currentVersion"] == 1 and st["latestVersion"] == 2
    assert st["lastGate"] == {"version": 2, "accepted": False, "reason": "held-out loss regressed",
                              "heldOutBaseline": 2.0, "heldOutCandidate": 3.9, "heldOutRecords": 8,
                              "maxRegression": 0.05}  # fmt: skip
    assert [h["accepted"] for h in st["history"]] == [True, False]
    assert st["gateCounts"] == {"accepted": 1, "rejected": 1}
    (rejected,) = [e for e in out.events if e.reason == "UpdateRejected"]
    assert rejected.type == "Warning" and "2.0000 -> 3.9000" in rejected.message
    stack = desired_stacks(kube, settings, live, Swarm.model_validate(live))[0]
    assert [(e.tier, e.version) for e in stack.entries] == [(CTX, 1)]  # the served stack did not move

    # A third, good version is promoted past the rejected one; re-running records nothing twice.
    _publish(settings, CTX, tmp_path, {"kind": "training", "gate": _gate(True, 1.5, 1.2)})
    out = _tier_pass(kube, settings, CTX)
    assert out.wire()["currentVersion"] == 3 and out.wire()["gateCounts"] == {"accepted": 2, "rejected": 1}
    _tier_pass(kube, settings, CTX)
    kinds = [(r.kind, r.version) for r in _audit(settings, CTX).records()]
    assert kinds == [("promotion", 1), ("rejection", 2), ("promotion", 3)]
    assert _audit(settings, CTX).records()[0].actor == f"job/{CTX}-train-v1"  # who produced it
    assert _audit(settings, CTX).verify() == []


def test_training_starts_from_the_newest_accepted_version(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    _swarm(kube, settings, swarm_body)
    _publish(settings, CTX, tmp_path, {"kind": "training", "gate": _gate(True)})
    window = {"from": "2026-11-22T01:00:00+00:00", "to": "2026-11-22T01:05:00+00:00"}
    _publish(settings, CTX, tmp_path, {"kind": "training", "gate": _gate(False), "window": window})
    from .test_reconcile import _records

    _records(settings, "alice", 20)
    _tier_pass(kube, settings, CTX)
    (job,) = kube.list("Job", NS)
    assert job["metadata"]["name"] == f"{CTX}-train-v3"  # numbered after the rejected v2, not a re-run of it
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--init-from") + 1].endswith(f"{CTX}/v000001")  # not the rejected v2
    assert args[args.index("--gate-max-regression") + 1] == "0.05"
    assert args[args.index("--holdout-fraction") + 1] == "0.1"
    # The rejected update's records are quarantined: not trained on, not used as held-out truth.
    assert args[args.index("--exclude-window") + 1] == f"{window['from']}/{window['to']}"
    assert _tier(kube, CTX)["status"]["quarantine"] == [{"version": 2, **window}]


def test_pin_rollback_and_unpin_are_audited_once(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    live = _swarm(kube, settings, swarm_body)
    for _ in range(3):
        _publish(settings, CTX, tmp_path, {"kind": "training", "gate": _gate(True)})
    _tier_pass(kube, settings, CTX)

    # GitOps rollback: the pin goes into the Swarm, which owns the generated tier's pinnedVersion.
    live["spec"]["agents"][0]["pinnedVersions"] = {"context": 1}
    live["metadata"]["generation"] = 2
    tiers = {t["metadata"]["name"]: t for t in build_agent_tiers(live, Swarm.model_validate(live))}
    assert tiers[CTX]["spec"]["pinnedVersion"] == 1 and "pinnedVersion" not in tiers["support-alice-agent"]["spec"]
    _swarm(kube, settings, live)
    assert _tier(kube, CTX)["spec"]["pinnedVersion"] == 1
    kube.objects[("LoRATier", NS, CTX)]["metadata"]["generation"] = 2
    out = _tier_pass(kube, settings, CTX)
    assert out.wire()["pinnedVersion"] == 1 and out.wire()["currentVersion"] == 3
    assert [(e.reason, e.message) for e in out.events] == [("Pinned", "pinned to v1, rolling back from v3")]
    stack = desired_stacks(kube, settings, live, Swarm.model_validate(live))[0]
    assert [(e.tier, e.version) for e in stack.entries] == [(CTX, 1)]
    assert not _tier_pass(kube, settings, CTX).events  # nothing new to record

    # Unpin: normal promotion resumes (the newest accepted version is served again).
    del live["spec"]["agents"][0]["pinnedVersions"]
    _swarm(kube, settings, live)  # server-side apply drops the field the Swarm no longer sets
    assert "pinnedVersion" not in _tier(kube, CTX)["spec"]
    kube.objects[("LoRATier", NS, CTX)]["metadata"]["generation"] = 3
    out = _tier_pass(kube, settings, CTX)
    assert "pinnedVersion" not in out.wire() and [e.reason for e in out.events] == ["Unpinned"]
    stack = desired_stacks(kube, settings, live, Swarm.model_validate(live))[0]
    assert [(e.tier, e.version) for e in stack.entries] == [(CTX, 3)]
    kinds = [(r.kind, r.version) for r in _audit(settings, CTX).records() if not r.id.startswith("gate/")]
    assert kinds == [("rollback", 1), ("unpin", None)]


def test_trust_score_follows_gate_history() -> None:
    assert trust_score(1.0, None) == 1.0  # no history: the user's weight
    assert trust_score(0.5, {"accepted": 4, "rejected": 0}) == 0.5
    assert trust_score(1.0, {"accepted": 0, "rejected": 3}) == 0.25
    assert trust_score(1.0, {"accepted": 3, "rejected": 3}) < trust_score(1.0, {"accepted": 3, "rejected": 1}) < 1


def test_rejected_updates_lower_an_agents_consensus_weight(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    _swarm(kube, settings, swarm_body)
    _policy(kube, pairs=[{"source": "agent", "target": "swarm"}], consensus={"rule": "resonance", "minAgents": 2})
    # bob's context tier keeps producing updates the gate rejects; alice's are accepted.
    for tier, accepted in (("support-alice-context", True), ("support-bob-context", False)):
        _publish(settings, tier, tmp_path, {"kind": "training", "gate": _gate(True)})
        for _ in range(3):
            _publish(settings, tier, tmp_path, {"kind": "training", "gate": _gate(accepted)})
        _tier_pass(kube, settings, tier)
    assert _tier(kube, "support-bob-context")["status"]["gateCounts"] == {"accepted": 1, "rejected": 3}
    _publish(settings, "support-alice-agent", tmp_path)
    _publish(settings, "support-bob-agent", tmp_path)
    _policy_pass(kube, settings)
    (job,) = kube.list("Job", NS)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    weights = args[args.index("--weights") + 1 : args.index("--weights") + 3]
    assert [float(w) for w in weights] == [1.0, 0.4]  # bob: (1 + 1) / (1 + 3 + 1)


def test_consolidation_is_gated_and_its_rejection_audited(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    from .test_reconcile import _records

    swarm_body["spec"]["agents"][0]["regressionSet"] = "regression/alice.jsonl"
    _swarm(kube, settings, swarm_body)
    kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier",
              "metadata": {"name": "support-swarm", "namespace": NS},
              "spec": {"level": "swarm", "qualityGate": {"maxRegression": 0.03}}})  # fmt: skip
    _policy(kube, pairs=[{"source": "agent", "target": "swarm"}], consensus={"rule": "resonance", "minAgents": 2})
    _records(settings, "alice", 4)
    _publish(settings, "support-alice-agent", tmp_path)
    _publish(settings, "support-bob-agent", tmp_path)
    _policy_pass(kube, settings)
    (job,) = kube.list("Job", NS)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--gate-max-regression") + 1] == "0.03"  # the target tier's threshold
    assert args[args.index("--gate-base-model") + 1]
    gate_data = [args[i + 1] for i, a in enumerate(args) if a == "--gate-data"]
    assert [d.rsplit("/", 1)[-1] for d in gate_data] == ["alice"]  # bob has no records to evaluate on
    # The regression set is judged apart: among the records, the newest questions would crowd it out.
    regression = [args[i + 1] for i, a in enumerate(args) if a == "--gate-regression"]
    assert [d.rsplit("/", 2)[-2:] for d in regression] == [["regression", "alice.jsonl"]]

    # The Job's gate refused the consensus: nothing published, the decision and the audit say why.
    name = job["metadata"]["name"]
    result = {"mode": "consensus", "status": "rejected", "changed": False, "published": [],
              "gate": {"accepted": False, "reason": "stack of support-bob-agent regressed",
                       "heldOut": {"records": 4, "baseline": 1.0, "candidate": 1.5}},
              "report": {"rule": "resonance", "agents": ["a", "b"], "weights": [1.0, 1.0]}}  # fmt: skip
    write_result(result_path(_store(settings), NS, name), json.dumps(result))
    kube.objects[("Job", NS, name)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    out = _policy_pass(kube, settings)
    assert out.wire()["decisions"][-1]["outcome"] == "Rejected"
    assert "regressed" in out.wire()["decisions"][-1]["reason"]
    assert [(e.type, e.reason) for e in out.events][:1] == [("Warning", "ConsolidationRejected")]
    (record,) = _audit(settings, "support-swarm").records()
    assert record.kind == "rejection" and record.id == f"job/{name}" and record.gate == result["gate"]
    assert [c["weight"] for c in record.contributors] == [1.0, 1.0]


def test_a_distrusted_agent_moves_the_shared_tier_less() -> None:
    """Same deltas, same rule the consensus Jobs use: only the gate history differs between the agents."""
    import torch

    from dynamiclora.memory import LowRankDelta, consensus

    def delta(seed: int) -> dict[str, LowRankDelta]:
        g = torch.Generator().manual_seed(seed)
        return {"q_proj": LowRankDelta(torch.randn(32, 4, generator=g), torch.randn(4, 32, generator=g) / 6)}

    honest, rejected = delta(1), delta(2)
    weights = [trust_score(1.0, {"accepted": 4, "rejected": 0}), trust_score(1.0, {"accepted": 1, "rejected": 5})]
    shared, _ = consensus([honest, rejected], "resonance", weights)

    def pull(agent: dict[str, LowRankDelta]) -> float:
        a = agent["q_proj"].dense()
        return float((shared["q_proj"].dense() * a).sum() / (a * a).sum())  # share of the agent's direction

    assert weights[1] < weights[0]
    assert pull(rejected) < 0.5 * pull(honest), (pull(honest), pull(rejected))
    equal, _ = consensus([honest, rejected], "resonance", [1.0, 1.0])  # control: equal trust, equal pull
    a, b = honest["q_proj"].dense(), rejected["q_proj"].dense()
    pa = float((equal["q_proj"].dense() * a).sum() / (a * a).sum())
    pb = float((equal["q_proj"].dense() * b).sum() / (b * b).sum())
    assert abs(pa - pb) < 0.25 * max(pa, pb)


@pytest.mark.parametrize("written", [False, "false", 0, None, "true", 1])
def test_only_a_json_true_accepts_a_verdict(written: object) -> None:
    from dynamiclora.controllers.promotion import gate_status, quarantines, verdict_accepted

    gate = {"accepted": written, "reason": "written by a broken Job"}
    assert verdict_accepted(gate) is False and gate_status(3, gate)["accepted"] is False
    assert quarantines(gate)  # fails closed: treated as a rejection of its records
    assert verdict_accepted({"accepted": True}) is True

"""A training whose pods the scheduler cannot place says so while it waits, not at its deadline (issue 20)."""

from __future__ import annotations

from typing import Any

from dynamiclora.controllers.conditions import get_condition
from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube
from .test_reconcile import NS, _records, _swarm, _tier, _tier_pass

TIER = "support-bob-context"
SCHEDULER = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available"


def _pod(job: str, scheduled: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job}-x1", "namespace": NS, "labels": {"batch.kubernetes.io/job-name": job}},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", **scheduled}]}}  # fmt: skip


def _training(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]) -> str:
    """bob's tier with a training Job launched; the Job's name."""
    _swarm(kube, settings, swarm_body)
    _records(settings, "bob", 30)
    _tier_pass(kube, settings, TIER)
    return str(_tier(kube, TIER)["status"]["activeJob"])


def test_an_unplaceable_training_pod_is_reported_once_then_cleared(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    job = _training(kube, settings, swarm_body)
    assert get_condition(_tier(kube, TIER)["status"], "Training")["reason"] == "JobRunning"

    kube.add(_pod(job, {"status": "False", "reason": "Unschedulable", "message": SCHEDULER}))
    out = _tier_pass(kube, settings, TIER)
    training = get_condition(_tier(kube, TIER)["status"], "Training")
    assert (training["status"], training["reason"]) == ("True", "Unschedulable")
    assert training["message"] == f"Job {job} waits: pod {job}-x1 cannot be scheduled: {SCHEDULER}"
    assert [e.reason for e in out.events if e.type == "Warning"] == ["Unschedulable"]
    assert not [e for e in _tier_pass(kube, settings, TIER).events if e.reason == "Unschedulable"]  # once

    kube.objects[("Pod", NS, f"{job}-x1")]["status"] = {"phase": "Running",
                                                        "conditions": [{"type": "PodScheduled", "status": "True"}]}
    _tier_pass(kube, settings, TIER)
    training = get_condition(_tier(kube, TIER)["status"], "Training")
    assert (training["reason"], training["message"]) == ("JobRunning", f"Job {job} runs")
    assert _tier(kube, TIER)["status"]["activeJob"] == job  # waiting is not failing


def test_a_pod_waiting_for_anything_else_changes_nothing(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    job = _training(kube, settings, swarm_body)
    before = get_condition(_tier(kube, TIER)["status"], "Training")
    kube.add(_pod(job, {"status": "False", "reason": "SchedulingGated", "message": "gated by Kueue"}))
    assert not _tier_pass(kube, settings, TIER).events
    assert get_condition(_tier(kube, TIER)["status"], "Training") == before

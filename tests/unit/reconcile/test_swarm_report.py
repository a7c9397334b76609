"""The Swarm pass's report is a pure function of what it observed and served (issue 15)."""

from __future__ import annotations

from typing import Any

from dynamiclora.api.conditions import ConditionType, EventType, Reason
from dynamiclora.api.swarm import Swarm, SwarmPhase
from dynamiclora.controllers.common import WaitFor
from dynamiclora.controllers.composer import ComposeProgress
from dynamiclora.controllers.conditions import get_condition, wire_status
from dynamiclora.controllers.serving import ServingOutcome
from dynamiclora.controllers.swarm import ReadyPod, SwarmObservation
from dynamiclora.controllers.swarm_report import swarm_report


def _obs(body: dict[str, Any], ready: int) -> SwarmObservation:
    sw = Swarm.model_validate(body)
    pods = [{"metadata": {"name": f"support-vllm-{i}"}, "status": {"podIP": f"127.0.0.{i + 2}"}}
            for i in range(sw.spec.inference.replicas)]  # fmt: skip
    ready_pods = [ReadyPod(p["metadata"]["name"], p["status"]["podIP"], 0) for p in pods[:ready]]
    return SwarmObservation(swarm=sw, body=body, agent_count=len(sw.spec.agents), replicas=len(pods),
                            pods=pods, ready_pods=ready_pods)  # fmt: skip


def _served(body: dict[str, Any], pods: int) -> ServingOutcome:
    agents = [{"name": a["name"], "servedVersion": "c1", "servedOnPods": pods, "placedOn": list(range(pods))}
              for a in body["spec"]["agents"]]  # fmt: skip
    return ServingOutcome(agents=agents, pods=[{"name": f"support-vllm-{i}", "ready": True, "loadedAdapters": 1}
                                               for i in range(pods)])  # fmt: skip


def _cond(status: Any, type_: ConditionType) -> dict[str, Any]:
    cond = get_condition(wire_status("Swarm", status), type_)
    assert cond is not None
    return cond


def test_every_agent_on_every_pod_is_ready(swarm_body: dict[str, Any]) -> None:
    n = Swarm.model_validate(swarm_body).spec.inference.replicas
    report = swarm_report(swarm_body, _obs(swarm_body, n), _served(swarm_body, n))
    assert report.status.phase == SwarmPhase.READY and report.status.served_agents == len(swarm_body["spec"]["agents"])
    assert _cond(report.status, ConditionType.READY)["reason"] == Reason.ALL_AGENTS_SERVED
    assert _cond(report.status, ConditionType.DEGRADED)["status"] == "False"
    assert report.events == []


def test_ready_pods_with_nothing_to_serve_yet_are_ready(swarm_body: dict[str, Any]) -> None:
    """No agent has a version: the serving pass reaches no pod, and the ready ones are still ready (a
    benchmark waiting for ready pods in the status waited forever)."""
    obs = _obs(swarm_body, 1)
    report = swarm_report(swarm_body, obs, ServingOutcome())
    assert [p.ready for p in report.status.pods] == [True] + [False] * (len(obs.pods) - 1)
    unresponsive = ServingOutcome(unresponsive={"support-vllm-0": "timed out"})
    assert not any(p.ready for p in swarm_report(swarm_body, obs, unresponsive).status.pods)


def test_a_missing_secret_degrades_and_lists_every_pod_as_not_ready(swarm_body: dict[str, Any]) -> None:
    report = swarm_report(swarm_body, _obs(swarm_body, 0), None, WaitFor("Secret k not found"))
    degraded = _cond(report.status, ConditionType.DEGRADED)
    assert (degraded["status"], degraded["reason"]) == ("True", Reason.WAITING)
    assert degraded["message"] == "Secret k not found"
    assert _cond(report.status, ConditionType.READY)["reason"] == Reason.PODS_NOT_READY
    assert report.status.phase == SwarmPhase.DEGRADED
    assert [p.ready for p in report.status.pods] == [False] * len(report.status.pods) and report.status.pods


def test_a_refused_load_and_a_failed_compose_job_say_why(swarm_body: dict[str, Any]) -> None:
    obs = _obs(swarm_body, 1)
    outcome = _served(swarm_body, 1)
    outcome.failures = {"support-vllm-0/support-alice": "HTTP 400: rank too large"}
    report = swarm_report(swarm_body, obs, outcome)
    assert _cond(report.status, ConditionType.DEGRADED)["reason"] == Reason.ADAPTER_LOAD_FAILED
    assert [(e.type, e.reason) for e in report.events] == [(EventType.WARNING, Reason.ADAPTER_LOAD_FAILED)]

    outcome.composing = [f"agent-{i}" for i in range(12)]
    outcome.compose = ComposeProgress(job="support-compose-1", failure="OOMKilled")
    report = swarm_report(swarm_body, obs, outcome)
    composing = _cond(report.status, ConditionType.COMPOSING)
    assert composing["reason"] == Reason.COMPOSITION_FAILED and "agent-9 and 2 more" in composing["message"]
    assert _cond(report.status, ConditionType.DEGRADED)["reason"] == Reason.COMPOSITION_FAILED
    assert Reason.COMPOSITION_FAILED in [e.reason for e in report.events]
    # The same failure on the next pass is not announced again.
    body = {**swarm_body, "status": wire_status("Swarm", report.status)}
    assert Reason.COMPOSITION_FAILED not in [e.reason for e in swarm_report(body, obs, outcome).events]


def test_unreadable_storage_is_a_condition_and_one_event(swarm_body: dict[str, Any]) -> None:
    from dynamiclora.controllers.tier_storage import StorageUnavailable

    err = StorageUnavailable("Secret default/s3 (spec.storage.s3.credentialsSecretRef) does not exist")
    report = swarm_report(swarm_body, _obs(swarm_body, 1), None, err)
    degraded = _cond(report.status, ConditionType.DEGRADED)
    assert degraded["reason"] == Reason.STORAGE_UNAVAILABLE and "does not exist" in degraded["message"]
    assert [e.reason for e in report.events] == [Reason.STORAGE_UNAVAILABLE]
    again = swarm_report({**swarm_body, "status": wire_status("Swarm", report.status)}, _obs(swarm_body, 1), None, err)
    assert again.events == []

"""Placement in the serving pass and per-agent routes (issue 19): sticky placement read back from the agents'
context tiers, one pass of draining before an unload, routes written only on a change, and a NoRoom condition."""

from __future__ import annotations

import copy
from typing import Any

from dynamiclora.api.conditions import ConditionType, Reason
from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.routing import ANNOTATION_MODEL, SERVICE_NAME_LABEL, slice_addresses
from dynamiclora.controllers.placement import draining, plan_pods, previous_placement, served_everywhere
from dynamiclora.controllers.routing import sync_routes
from dynamiclora.controllers.serving import ServingOutcome
from dynamiclora.controllers.swarm import ReadyPod
from dynamiclora.controllers.swarm_report import _degraded
from dynamiclora.kube import KubeError

from .fakekube import FakeKube

NS = "default"
PODS = [f"support-vllm-{i}" for i in range(3)]


def _swarm(body: dict[str, Any], **placement: Any) -> tuple[dict[str, Any], Swarm]:
    body = copy.deepcopy(body)
    body["metadata"] = {"name": "support", "namespace": NS, "uid": "uid-swarm"}
    body["spec"]["inference"]["placement"] = placement
    return body, Swarm.model_validate(body)


def test_the_last_pass_placement_is_kept_and_a_left_pod_drains_one_pass(swarm_body: dict[str, Any]) -> None:
    _, sw = _swarm(swarm_body, replicasPerAgent=1)
    agents = [a.name for a in sw.spec.agents]
    last = {a: {"placedOn": [2]} for a in agents} | {"gone": {"placedOn": [1]}}
    assert previous_placement(last, PODS)["gone"] == ["support-vllm-1"]
    plan = plan_pods(sw, last, agents, PODS)
    assert all(plan.placement.pods[a] == ["support-vllm-2"] for a in agents)  # sticky
    assert plan.ordinals(agents[0]) == [2]
    assert plan.draining == {"support-vllm-1": {"gone"}}  # an agent placed no more drains first
    # A pod that left the ready set is forgotten; its agents are placed again, on a ready pod.
    moved = plan_pods(sw, last, agents, PODS[:2])
    assert all(len(moved.placement.pods[a]) == 1 and moved.placement.pods[a][0] in PODS[:2] for a in agents)


def test_room_is_each_pods_max_cpu_loras_and_what_lacks_room_is_short(swarm_body: dict[str, Any]) -> None:
    body, sw = _swarm(swarm_body, replicasPerAgent=3)
    body["spec"]["inference"]["maxCpuLoras"] = 1
    sw = Swarm.model_validate(body)
    agents = [a.name for a in sw.spec.agents]
    plan = plan_pods(sw, {}, agents, PODS)
    load = {p: len(plan.agents_on(p)) for p in PODS}
    assert max(load.values()) <= 1
    assert sum(plan.placement.short.values()) == 3 * len(agents) - 3
    outcome = ServingOutcome(placement=plan)
    events: list[Any] = []
    cond = _degraded([], outcome, 1, events)[0]
    assert (cond["type"], cond["status"], cond["reason"]) == (ConditionType.DEGRADED, "True", Reason.NO_ROOM)
    assert "--max-cpu-loras" in cond["message"] and len(events) == 1
    assert _degraded([cond], outcome, 1, again := [])[0]["reason"] == Reason.NO_ROOM and again == []


def test_draining_lists_what_each_pod_lost() -> None:
    before = {"a": ["p0", "p1"], "b": ["p1"]}
    assert draining(before, {"a": ["p0", "p2"], "b": ["p1"]}) == {"p1": {"a"}}
    assert draining(before, {}) == {"p0": {"a"}, "p1": {"a", "b"}}


def test_served_everywhere_means_on_every_placed_pod() -> None:
    assert served_everywhere({"placedOn": [0, 3], "servedOnPods": 2})
    assert not served_everywhere({"placedOn": [0, 3], "servedOnPods": 1})
    assert not served_everywhere({"servedOnPods": 1})  # never placed: not served (an older status)


def _pods(*ordinals: int) -> list[ReadyPod]:
    return [ReadyPod(f"support-vllm-{i}", f"10.0.0.{i}", 0) for i in ordinals]


def test_routes_follow_the_serving_pods_and_write_only_on_a_change(swarm_body: dict[str, Any]) -> None:
    body, sw = _swarm(swarm_body, agentServices=True)
    kube = FakeKube()
    agents = [a.name for a in sw.spec.agents]
    first = sync_routes(kube, body, sw, {agents[0]: _pods(0, 1)})
    assert first.created == agents and first.updated == agents
    svc = kube.get("Service", NS, f"support-{agents[0]}")
    assert svc is not None and "selector" not in svc["spec"]
    assert svc["metadata"]["annotations"][ANNOTATION_MODEL] == f"support-{agents[0]}"
    eps = kube.get("EndpointSlice", NS, f"support-{agents[0]}")
    assert eps is not None and eps["metadata"]["labels"][SERVICE_NAME_LABEL] == svc["metadata"]["name"]
    assert eps["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]  # deleted with its Service
    assert slice_addresses(eps) == [("support-vllm-0", "10.0.0.0"), ("support-vllm-1", "10.0.0.1")]
    assert slice_addresses(kube.get("EndpointSlice", NS, f"support-{agents[1]}") or {}) == []

    kube.calls.clear()  # steady state: nothing written
    assert sync_routes(kube, body, sw, {agents[0]: _pods(1, 0)}) == type(first)()
    assert kube.calls == []

    moved = sync_routes(kube, body, sw, {agents[0]: _pods(1)})  # the agent left pod 0: withdrawn
    assert moved.updated == [agents[0]] and moved.created == []
    assert slice_addresses(kube.get("EndpointSlice", NS, f"support-{agents[0]}") or {}) == [("support-vllm-1",
                                                                                               "10.0.0.1")]


def test_routes_go_with_their_agent_and_with_the_setting(swarm_body: dict[str, Any]) -> None:
    body, sw = _swarm(swarm_body, agentServices=True)
    kube = FakeKube()
    agents = [a.name for a in sw.spec.agents]
    sync_routes(kube, body, sw, {})
    fewer = copy.deepcopy(body)
    fewer["spec"]["agents"] = fewer["spec"]["agents"][1:]
    assert sync_routes(kube, fewer, Swarm.model_validate(fewer), {}).deleted == [agents[0]]
    assert kube.get("Service", NS, f"support-{agents[0]}") is None
    off, sw_off = _swarm(swarm_body, agentServices=False)
    assert sorted(sync_routes(kube, off, sw_off, {}).deleted) == sorted(agents[1:])
    assert kube.list("Service", NS) == []
    # Off from the start: no route is ever created.
    assert sync_routes(FakeKube(), off, sw_off, {}) == type(sync_routes(kube, off, sw_off, {}))()


class _RefusingSlices(FakeKube):
    """The API server refusing one agent's EndpointSlice (e.g. an address its validation rejects)."""

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "EndpointSlice" and obj["metadata"]["name"].endswith("-alice"):
            raise KubeError(422, 'EndpointSlice "support-alice" is invalid')
        return super().apply(obj)


def test_a_refused_route_is_reported_and_the_others_are_written(swarm_body: dict[str, Any]) -> None:
    body, sw = _swarm(swarm_body, agentServices=True)
    kube = _RefusingSlices()
    changes = sync_routes(kube, body, sw, {"alice": _pods(0), "bob": _pods(0)})
    assert list(changes.failed) == ["alice"] and "invalid" in changes.failed["alice"]
    assert slice_addresses(kube.get("EndpointSlice", NS, "support-bob") or {}) == [("support-vllm-0", "10.0.0.0")]
    outcome = ServingOutcome(route_failures=changes.failed)
    cond = _degraded([], outcome, 1, events := [])[0]
    assert (cond["status"], cond["reason"]) == ("True", Reason.ROUTES_FAILED) and len(events) == 1
    assert _degraded([cond], outcome, 1, again := [])[0] == cond and again == []  # one event, not one per pass


def test_queued_agents_get_hot_replicas_only_when_asked(swarm_body: dict[str, Any]) -> None:
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    from dynamiclora.controllers.placement import queued_agents

    registry = CollectorRegistry()
    gauge = Gauge("vllm:lora_requests_info", "x", ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                  registry=registry)  # fmt: skip
    gauge.labels("2", "support-alice,other-bob", "support-bob").set(1000.0)
    queued = queued_agents([generate_latest(registry).decode(), "garbage 1\n"], 900.0, "support")
    assert queued == {"alice"}  # another Swarm's adapter is not ours
    _, sw = _swarm(swarm_body, replicasPerAgent=1, hotReplicas=3)
    plan = plan_pods(sw, {}, ["alice", "bob"], PODS, queued)
    assert plan.hot == {"alice"} and len(plan.placement.pods["alice"]) == 3 and len(plan.placement.pods["bob"]) == 1
    _, sw = _swarm(swarm_body, replicasPerAgent=1)  # hotReplicas unset: queuing changes nothing
    assert plan_pods(sw, {}, ["alice", "bob"], PODS, queued).hot == set()


def test_hot_replicas_below_the_normal_count_are_refused(swarm_body: dict[str, Any]) -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="hotReplicas must be at least"):
        _swarm(swarm_body, replicasPerAgent=2, hotReplicas=1)

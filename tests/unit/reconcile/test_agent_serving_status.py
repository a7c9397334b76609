"""What is served of each agent lives in its context tier, not in the Swarm (issue 19: 10,000 agents).

The serving pass writes each agent's entry to its context tier's ``status.serving`` only when it changed,
reads the placement back from there, and the Swarm keeps counts and a bounded list of the unserved.
"""

from __future__ import annotations

import copy
from typing import Any

from dynamiclora.api.swarm import MAX_UNSERVED_LISTED, PodStatus, Swarm, SwarmStatus
from dynamiclora.builders.names import LABEL_SWARM
from dynamiclora.builders.tiers import build_agent_tiers
from dynamiclora.controllers.conditions import write_status
from dynamiclora.controllers.placement import serving_entries
from dynamiclora.controllers.serving import ServingOutcome
from dynamiclora.controllers.swarm import ReadyPod, SwarmObservation
from dynamiclora.controllers.swarm_report import export_swarm_metrics, mark_agents, swarm_report
from dynamiclora.serving.metrics import REGISTRY
from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube
from .passes import tier_pass

NS = "default"


def _setup(swarm_body: dict[str, Any], agents: int) -> tuple[FakeKube, dict[str, Any], Swarm]:
    body = copy.deepcopy(swarm_body)
    body["metadata"] = {"name": "support", "namespace": NS, "uid": "uid-swarm"}
    body["spec"]["agents"] = [{"name": f"agent-{i:03d}"} for i in range(agents)]
    sw = Swarm.model_validate(body)
    kube = FakeKube()
    for tier in build_agent_tiers(body, sw):
        kube.add(tier)
    return kube, body, sw


def _outcome(kube: FakeKube, sw: Swarm, entries: list[dict[str, Any]]) -> ServingOutcome:
    """The pass's outcome: its entries, and the last ones read from the tiers (as sync_serving reads them)."""
    tiers = {t["metadata"]["name"]: t for t in kube.list("LoRATier", NS)}
    return ServingOutcome(agents=entries, tiers=tiers, last=serving_entries("support", sw, tiers))


def _pass(kube: FakeKube, sw: Swarm, entries: list[dict[str, Any]]) -> int:
    kube.calls.clear()
    return mark_agents(kube, NS, "support", sw, _outcome(kube, sw, entries))


def test_each_agents_entry_goes_to_its_context_tier_once_and_is_read_back(swarm_body: dict[str, Any]) -> None:
    kube, _, sw = _setup(swarm_body, 3)
    hot = {"name": "agent-000", "servedVersion": "c2.a1", "adapterPath": "agent-000/k1", "servedOnPods": 2,
           "placedOn": [0, 1], "hot": True}  # fmt: skip
    cold = {"name": "agent-001", "servedVersion": "c1", "adapterPath": "agent-001/k2", "servedOnPods": 1,
            "placedOn": [2]}  # fmt: skip
    assert _pass(kube, sw, [hot, cold]) == 2
    assert {c[2] for c in kube.calls} == {"support-agent-000-context", "support-agent-001-context"}
    ctx = kube.get("LoRATier", NS, "support-agent-000-context")
    agent_tier = kube.get("LoRATier", NS, "support-agent-000-agent")
    assert ctx is not None and agent_tier is not None
    assert ctx["status"]["serving"] == {k: v for k, v in hot.items() if k != "name"}
    assert "serving" not in (agent_tier.get("status") or {})  # the context tier only
    # Read back for the next pass (placement hysteresis, a waiting agent's carried entry).
    tiers = {t["metadata"]["name"]: t for t in kube.list("LoRATier", NS)}
    assert serving_entries("support", sw, tiers)["agent-001"]["placedOn"] == [2]
    assert _pass(kube, sw, [hot, cold]) == 0 and kube.calls == []  # nothing changed: no write
    # No longer hot, moved: the entry is replaced as a whole (the dropped key is gone, not left behind).
    cooled = {k: v for k, v in hot.items() if k != "hot"} | {"placedOn": [1], "servedOnPods": 1}
    assert _pass(kube, sw, [cooled, cold]) == 1
    ctx = kube.get("LoRATier", NS, "support-agent-000-context")
    assert ctx is not None and ctx["status"]["serving"] == {k: v for k, v in cooled.items() if k != "name"}
    # Nothing served any more (every version gone): the entry is dropped.
    assert _pass(kube, sw, [cooled]) == 1
    gone = kube.get("LoRATier", NS, "support-agent-001-context")
    assert gone is not None and "serving" not in gone.get("status", {})


def test_the_tiers_own_pass_keeps_what_the_swarm_pass_wrote(swarm_body: dict[str, Any],
                                                              settings: OperatorSettings) -> None:
    kube, body, sw = _setup(swarm_body, 1)
    kube.add(body | {"kind": "Swarm", "apiVersion": "dynamiclora.io/v1alpha1"})
    entry = {"name": "agent-000", "servedVersion": "c1", "adapterPath": "agent-000/k", "placedOn": [0],
             "servedOnPods": 1}  # fmt: skip
    assert _pass(kube, sw, [entry]) == 1
    tier_pass(kube, settings, "support-agent-000-context")
    ctx = kube.get("LoRATier", NS, "support-agent-000-context")
    assert ctx is not None and ctx["status"]["serving"]["placedOn"] == [0] and "phase" in ctx["status"]


def test_a_same_named_tier_of_another_swarm_is_neither_read_nor_written(swarm_body: dict[str, Any]) -> None:
    kube, _, sw = _setup(swarm_body, 1)
    tier = kube.objects[("LoRATier", NS, "support-agent-000-context")]
    tier["metadata"]["labels"][LABEL_SWARM] = "other"
    tier["status"] = {"serving": {"placedOn": [5]}}
    assert serving_entries("support", sw, {"support-agent-000-context": tier}) == {}
    assert _pass(kube, sw, [{"name": "agent-000", "servedVersion": "c1", "placedOn": [0]}]) == 0
    assert tier["status"]["serving"] == {"placedOn": [5]}


def test_the_swarm_counts_its_agents_and_names_only_the_first_unserved(swarm_body: dict[str, Any]) -> None:
    _, body, sw = _setup(swarm_body, 50)
    pods = [{"metadata": {"name": "support-vllm-0"}, "status": {"podIP": "127.0.0.2"}}]
    obs = SwarmObservation(swarm=sw, body=body, agent_count=50, replicas=1, pods=pods,
                           ready_pods=[ReadyPod("support-vllm-0", "127.0.0.2", 0)])  # fmt: skip
    served = [{"name": f"agent-{i:03d}", "servedVersion": "c1", "servedOnPods": 1, "placedOn": [0]}
              for i in range(0, 50, 2)]  # fmt: skip
    placed_only = [{"name": f"agent-{i:03d}", "servedVersion": "c1", "servedOnPods": 0, "placedOn": [0]}
                   for i in range(1, 50, 2)]  # fmt: skip
    status = swarm_report(body, obs, ServingOutcome(agents=served + placed_only)).status.wire()
    assert (status["agentCount"], status["servedAgents"]) == (50, 25)
    assert status["unservedAgents"] == [f"agent-{i:03d}" for i in range(1, 50, 2)][:MAX_UNSERVED_LISTED]
    assert "agents" not in status


def test_an_older_operators_agent_list_is_removed_by_the_first_status_write(swarm_body: dict[str, Any]) -> None:
    """Upgrade: a Swarm written by an operator that kept ``status.agents`` loses it on the new operator's first
    pass (the list would otherwise stay, stale, and at 10,000 agents outgrow etcd's object limit)."""
    kube, body, sw = _setup(swarm_body, 2)
    old_agents = [{"name": "agent-000", "servedVersion": "c1", "servedOnPods": 1}]
    live = kube.add(body | {"kind": "Swarm", "apiVersion": "dynamiclora.io/v1alpha1",
                            "status": {"agents": old_agents, "agentCount": 2, "phase": "Ready"}})  # fmt: skip
    obs = SwarmObservation(swarm=sw, body=live, agent_count=2, replicas=0)
    status = swarm_report(live, obs, ServingOutcome()).status
    assert write_status(kube, live, status)
    stored = kube.get("Swarm", NS, "support")
    assert stored is not None and "agents" not in stored["status"] and stored["status"]["agentCount"] == 2


def test_the_gauges_of_a_removed_agent_and_of_a_pod_scaled_away_are_dropped() -> None:
    def series(metric: str, label: str) -> set[str]:
        return {s.labels[label] for fam in REGISTRY.collect() for s in fam.samples
                if s.name == metric and s.labels.get("swarm") == "gauges"}  # fmt: skip

    entries = [{"name": a, "servedOnPods": 1, "placedOn": [0]} for a in ("ann", "ben")]
    two_pods = SwarmStatus(pods=[PodStatus(name=f"gauges-vllm-{i}", loaded_adapters=1) for i in range(2)])
    export_swarm_metrics(NS, "gauges", two_pods, entries, {"ann", "ben", "cal"})
    assert series("dynamiclora_agent_served_pods", "agent") == {"ann", "ben"}
    assert series("dynamiclora_pod_loaded_adapters", "pod") == {"gauges-vllm-0", "gauges-vllm-1"}
    # ben leaves the Swarm, cal is in it but has nothing served (no series yet), pod 1 is scaled away.
    export_swarm_metrics(NS, "gauges", SwarmStatus(pods=two_pods.pods[:1]), entries[:1], {"ann", "cal"})
    assert series("dynamiclora_agent_served_pods", "agent") == {"ann"}
    assert series("dynamiclora_agent_placed_pods", "agent") == {"ann"}
    assert series("dynamiclora_pod_loaded_adapters", "pod") == {"gauges-vllm-0"}

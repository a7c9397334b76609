"""Swarm names that cannot name a Service are refused; a Swarm never takes over another Swarm's tier."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from dynamiclora.api.conditions import ConditionType, Reason
from dynamiclora.builders.names import agent_tier_name
from dynamiclora.controllers.common import InvalidSpec
from dynamiclora.controllers.conditions import get_condition, write_status
from dynamiclora.controllers.handlers import Runtime, handle_swarm
from dynamiclora.controllers.swarm import reconcile_swarm, swarm_status
from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube

NS = "default"


def _swarm(base: dict[str, Any], name: str, agents: list[str]) -> dict[str, Any]:
    body = copy.deepcopy(base)
    body["metadata"]["name"] = name
    body["spec"]["agents"] = [{"name": a} for a in agents]
    return body


def _conflicts(kube: FakeKube) -> list[tuple[str, str, str, str]]:
    return [e for e in kube.events if e[2] == Reason.TIER_NAME_CONFLICT]


@pytest.mark.parametrize("name", ["1support", "support.team", "s" * 64])
def test_a_swarm_name_that_cannot_name_its_service_is_invalid(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], name: str
) -> None:
    swarm_body["metadata"]["name"] = name
    with pytest.raises(InvalidSpec, match=r"metadata\.name"):
        reconcile_swarm(kube, settings, kube.add(swarm_body))
    assert not [c for c in kube.calls if c[0] == "apply"]  # nothing half-created


async def test_an_invalid_swarm_name_is_a_permanent_error_with_condition_and_event(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    swarm_body["metadata"]["name"] = "team.support"
    live = kube.add(swarm_body)
    with pytest.raises(kopf.PermanentError, match=r"team\.support"):
        await handle_swarm(Runtime(kube, settings), live)
    status = kube.objects[("Swarm", NS, "team.support")]["status"]
    ready = get_condition(status, "Ready")
    assert ready is not None and ready["reason"] == "InvalidSpec" and "starting with a letter" in ready["message"]
    assert status["phase"] == "Failed"
    assert [(e[1], e[2]) for e in kube.events] == [("Warning", "InvalidSpec")]


def test_a_tier_name_owned_by_another_swarm_is_not_taken_over(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    first = kube.add(_swarm(swarm_body, "a", ["b-c"]))
    reconcile_swarm(kube, settings, first)
    taken = agent_tier_name("a-b", "c", "context")
    assert taken == agent_tier_name("a", "b-c", "context")
    before = copy.deepcopy(kube.objects[("LoRATier", NS, taken)])

    second = kube.add(_swarm(swarm_body, "a-b", ["c", "d"]))
    n_calls = len(kube.calls)
    obs = reconcile_swarm(kube, settings, second)
    assert kube.objects[("LoRATier", NS, taken)] == before  # still Swarm a's tier, untouched
    assert ("apply", "LoRATier", taken) not in kube.calls[n_calls:]
    assert kube.get("LoRATier", NS, "a-b-d-context") is not None  # the other agents are reconciled
    assert kube.get("LoRATier", NS, "a-b-d-agent") is not None
    assert obs.tier_conflicts == {"a-b-c-agent": "a", "a-b-c-context": "a"}
    assert obs.conflicting_agents == ["c"]
    assert [a.name for a in obs.swarm.spec.agents] == ["d"]  # c would be served Swarm a's adapters
    assert obs.agent_count == 2
    [event] = _conflicts(kube)
    assert event[:3] == ("a-b", "Warning", Reason.TIER_NAME_CONFLICT) and "owned by Swarm a" in event[3]

    ready = {"type": "Ready", "status": "True", "reason": "AllAgentsServed", "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    status = swarm_status(second, obs, [], [], [ready]).wire()
    cond = get_condition(status, ConditionType.TIER_NAME_CONFLICT)
    assert cond is not None and cond["status"] == "True" and cond["reason"] == Reason.TIER_NAME_CONFLICT
    assert "a-b-c-context (owned by Swarm a)" in cond["message"] and "agents not reconciled: c" in cond["message"]
    not_ready = get_condition(status, "Ready")
    assert not_ready is not None and not_ready["status"] == "False" and not_ready["reason"] == Reason.TIER_NAME_CONFLICT
    assert status["phase"] == "Degraded" and status["agentCount"] == 2
    write_status(kube, second, status)

    # The next pass reports the same conflict without a second event and still does not touch the tier.
    second = kube.objects[("Swarm", NS, "a-b")]
    obs = reconcile_swarm(kube, settings, second)
    assert len(_conflicts(kube)) == 1 and kube.objects[("LoRATier", NS, taken)] == before
    # The first Swarm never notices: its tiers are its own.
    assert not reconcile_swarm(kube, settings, first).tier_conflicts

    # Renaming the agent resolves it: the condition goes away.
    second["spec"]["agents"] = [{"name": "cc"}, {"name": "d"}]
    obs = reconcile_swarm(kube, settings, second)
    assert not obs.tier_conflicts and kube.get("LoRATier", NS, "a-b-cc-context") is not None
    status = swarm_status(second, obs, [], [], list(second["status"]["conditions"])).wire()
    assert get_condition(status, ConditionType.TIER_NAME_CONFLICT) is None
    assert status["phase"] != "Degraded"


def test_the_swarm_label_alone_marks_another_owner(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier",
              "metadata": {"name": "support-alice-context", "namespace": NS,
                           "labels": {"dynamiclora.io/swarm": "support-alice"}},
              "spec": {"level": "context"}})  # fmt: skip
    obs = reconcile_swarm(kube, settings, kube.add(swarm_body))
    assert obs.tier_conflicts == {"support-alice-context": "support-alice"}
    assert kube.get("LoRATier", NS, "support-alice-agent") is None  # the whole agent waits
    assert kube.get("LoRATier", NS, "support-bob-context") is not None
    assert "Swarm support-alice" in _conflicts(kube)[0][3]


def test_tiers_of_a_deleted_predecessor_of_the_same_name_are_taken_over(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    old = kube.add(swarm_body)
    reconcile_swarm(kube, settings, old)
    del kube.objects[("Swarm", NS, "support")]
    new = copy.deepcopy(swarm_body)
    new["metadata"]["uid"] = "a-new-uid"
    new["spec"]["contextTier"]["rank"] = 4
    obs = reconcile_swarm(kube, settings, kube.add(new))
    assert not obs.tier_conflicts and not _conflicts(kube)
    assert kube.get("LoRATier", NS, "support-alice-context")["spec"]["rank"] == 4  # type: ignore[index]


async def test_the_handler_reports_a_conflict_and_serves_the_other_agents(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    rt = Runtime(kube, settings)
    await handle_swarm(rt, kube.add(_swarm(swarm_body, "a", ["b-c"])))
    await handle_swarm(rt, kube.add(_swarm(swarm_body, "a-b", ["c", "d"])))
    status = kube.objects[("Swarm", NS, "a-b")]["status"]
    cond = get_condition(status, ConditionType.TIER_NAME_CONFLICT)
    assert cond is not None and cond["status"] == "True" and "Swarm a" in cond["message"]
    assert status["phase"] == "Degraded" and status["agentCount"] == 2
    assert len(_conflicts(kube)) == 1
    await handle_swarm(rt, kube.objects[("Swarm", NS, "a-b")])
    assert len(_conflicts(kube)) == 1  # once per conflict, not once per pass
    assert get_condition(kube.objects[("Swarm", NS, "a")]["status"], ConditionType.TIER_NAME_CONFLICT) is None


def test_a_policy_never_moves_another_swarms_tier_of_the_same_name(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Any
) -> None:
    import json

    from dynamiclora.controllers.policy import reconcile_policy
    from dynamiclora.storage.uri import open_store

    reconcile_swarm(kube, settings, kube.add(_swarm(swarm_body, "a", ["b-c"])))
    reconcile_swarm(kube, settings, kube.add(_swarm(swarm_body, "a-b", ["c", "d"])))
    store = open_store(f"file://{settings.pvc_mount_root}/ckpt/dl")
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"energy": 1.0, "norm": 1.0}))
    for tier in ("a-b-c-context", "a-b-d-context"):  # a-b-c-context is Swarm a's (agent b-c)
        for _ in range(2):
            store.publish(NS, tier, {"stats.json": stats}, {})
    policy = kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "MigrationPolicy",
                       "metadata": {"name": "p", "namespace": NS},
                       "spec": {"swarmRef": "a-b", "pairs": [{"source": "context", "target": "agent"}],
                                "stability": {"window": 2}, "interval": "1ms"}})  # fmt: skip
    reconcile_policy(kube, settings, policy)
    sources = {j["metadata"]["labels"].get("dynamiclora.io/tier") for j in kube.list("Job", NS)}
    assert sources == {"a-b-d-agent"}, sources  # only the tier Swarm a-b owns migrates

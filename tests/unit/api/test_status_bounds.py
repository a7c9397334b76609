"""Status stays far below etcd's 1.5 MiB object limit at the API's own maxima (issues 15, 19)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from dynamiclora.api.swarm import MAX_AGENTS, MAX_MISSING_LISTED, MAX_UNSERVED_LISTED, PodStatus, SwarmStatus
from dynamiclora.api.tier import AgentServing, LoRATierStatus

ETCD_LIMIT = 1_572_864  # bytes: the API server's default request/object limit


def test_the_largest_swarm_of_ten_thousand_agents_fits_with_room_to_spare() -> None:
    """What is served of each agent lives in its context tier: the Swarm holds its spec's list, counts and
    bounded lists, so 10,000 agents with the longest names and the largest status stay below half the limit."""
    pods = [PodStatus(name=f"{'s' * 52}-{i}", pod_ip="10.0.0.1", ready=True, loaded_adapters=10_000,
                      missing_adapters=[f"{'s' * 63}-agent-{j:034d}" for j in range(MAX_MISSING_LISTED)])
            for i in range(64)]  # fmt: skip
    status = SwarmStatus(pods=pods, agent_count=MAX_AGENTS, served_agents=0, served_root="s3://" + "b" * 1000,
                         unserved_agents=[f"agent-{i:034d}" for i in range(MAX_UNSERVED_LISTED)])  # fmt: skip
    agents = [{"name": f"agent-{i:034d}"} for i in range(MAX_AGENTS)]  # 40 characters, the longest agent name
    swarm = {"spec": {"agents": agents}, "status": status.model_dump(by_alias=True, exclude_none=True)}
    size = len(json.dumps(swarm, separators=(",", ":")))
    assert size < ETCD_LIMIT / 2, size  # metadata, the rest of the spec and conditions share the object
    with pytest.raises(ValidationError):
        SwarmStatus(unserved_agents=["a"] * (MAX_UNSERVED_LISTED + 1))


def test_an_agents_serving_entry_is_what_agent_entry_builds_and_stays_small() -> None:
    """The context tier's ``status.serving`` is the operator's own ``agent_entry`` (names like agent-0001,
    versions like c12.a3; an exact composition, trust 1 and no pin are left out) and fits in a few hundred
    bytes even placed on every pod."""
    from dynamiclora.controllers.serving import AgentStack, agent_entry
    from dynamiclora.controllers.stack_consistency import StackEntry

    stack = AgentStack("agent-0001", [StackEntry("support-agent-0001-context", "context", 12, "s3://b", "t"),
                                      StackEntry("support-agent-0001-agent", "agent", 3, "s3://b", "t")])
    entry = {**agent_entry(stack, 0.0, 1.0, False), "servedOnPods": 2, "placedOn": [0, 1]}
    assert entry["servedVersion"] == "c12.a3" and set(entry) == {"name", "servedVersion", "adapterPath",
                                                                 "servedOnPods", "placedOn"}  # fmt: skip
    serving = AgentServing.model_validate({k: v for k, v in entry.items() if k != "name"})
    assert LoRATierStatus(serving=serving).wire()["serving"]["placedOn"] == [0, 1]
    widest = AgentServing(served_version="c123456.a123456.s123456", adapter_path=f"{'a' * 40}/{'f' * 12}",
                          composition_error=0.000123456, trust=0.5, pinned=True, served_on_pods=64, hot=True,
                          placed_on=list(range(64)))  # fmt: skip
    assert len(json.dumps(widest.model_dump(by_alias=True, exclude_none=True))) < 512
    with pytest.raises(ValidationError):
        AgentServing(placed_on=list(range(65)))
    # What is left out at its usual value is there when it says something.
    odd = agent_entry(AgentStack("a", [StackEntry("t", "context", 1, "s3://b", "t")]), 0.01, 0.5, True)
    assert (odd["compositionError"], odd["trust"], odd["pinned"]) == (0.01, 0.5, True)


def test_pod_entries_count_adapters_instead_of_listing_every_agent() -> None:
    with pytest.raises(ValidationError):
        PodStatus(name="p", missing_adapters=[str(i) for i in range(MAX_MISSING_LISTED + 1)])
    with pytest.raises(ValidationError):
        SwarmStatus(pods=[PodStatus(name=str(i)) for i in range(65)])

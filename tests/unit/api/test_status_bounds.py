"""Status stays far below etcd's 1.5 MiB object limit at the API's own maxima (issue 15)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from dynamiclora.api.swarm import MAX_MISSING_LISTED, AgentStatus, PodStatus, SwarmStatus

ETCD_LIMIT = 1_572_864  # bytes: the API server's default request/object limit


def _agent(i: int) -> AgentStatus:
    name = f"agent-{i:034d}"  # 40 characters, the longest agent name
    return AgentStatus(name=name, served_version="c123456-a123456-s123456", adapter_path=f"{name}/{'f' * 12}",
                       composition_error=0.000123456, trust=0.5, pinned=True, served_on_pods=64,
                       placed_on=list(range(64)))  # fmt: skip


def test_the_largest_swarm_status_fits_with_room_to_spare() -> None:
    pods = [PodStatus(name=f"{'s' * 52}-{i}", pod_ip="10.0.0.1", ready=True, loaded_adapters=2000,
                      missing_adapters=[f"{'s' * 63}-agent-{j:034d}" for j in range(MAX_MISSING_LISTED)])
            for i in range(64)]  # fmt: skip
    status = SwarmStatus(agents=[_agent(i) for i in range(2000)], pods=pods, served_root="s3://" + "b" * 1000)
    size = len(json.dumps(status.model_dump(by_alias=True, exclude_none=True)))
    assert size < ETCD_LIMIT * 0.75, size  # conditions, metadata and spec share the object


def _size(status: SwarmStatus) -> int:
    """Bytes as the API server stores it (compact JSON, unset fields left out)."""
    return len(json.dumps(status.model_dump(by_alias=True, exclude_none=True), separators=(",", ":")))


def test_two_thousand_agents_placed_on_64_pods_fit_in_256_kib() -> None:
    """The issue's bound, for entries built by the operator's own ``agent_entry``: names like agent-0001,
    versions like c12.a3 (an exact composition, trust 1 and no pin are what it leaves out)."""
    from dynamiclora.controllers.serving import AgentStack, agent_entry
    from dynamiclora.controllers.stack_consistency import StackEntry

    pods = [PodStatus(name=f"support-vllm-{i}", pod_ip=f"10.0.0.{i}", ready=True, loaded_adapters=2000)
            for i in range(64)]  # fmt: skip
    agents = []
    for i in range(2000):
        name = f"agent-{i:04d}"
        stack = AgentStack(name, [StackEntry(f"support-{name}-context", "context", 12, "s3://b", "t"),
                                  StackEntry(f"support-{name}-agent", "agent", 3, "s3://b", "t")])
        # Placed on the default 2 pods (spec.inference.placement.replicasPerAgent).
        agents.append({**agent_entry(stack, 0.0, 1.0, False), "servedOnPods": 2, "placedOn": [i % 64, (i + 1) % 64]})
    assert agents[0]["servedVersion"] == "c12.a3" and set(agents[0]) == {"name", "servedVersion", "adapterPath",
                                                                          "servedOnPods", "placedOn"}  # fmt: skip
    status = SwarmStatus.model_validate({"agents": agents, "pods": [p.model_dump(by_alias=True) for p in pods],
                                         "servedRoot": "s3://ckpt-bucket/dl/served/t/support"})  # fmt: skip
    assert _size(status) < 256 * 1024, _size(status)
    # What is left out at its usual value is there when it says something.
    odd = agent_entry(AgentStack("a", [StackEntry("t", "context", 1, "s3://b", "t")]), 0.01, 0.5, True)
    assert (odd["compositionError"], odd["trust"], odd["pinned"]) == (0.01, 0.5, True)


def test_pod_entries_count_adapters_instead_of_listing_every_agent() -> None:
    with pytest.raises(ValidationError):
        PodStatus(name="p", missing_adapters=[str(i) for i in range(MAX_MISSING_LISTED + 1)])
    with pytest.raises(ValidationError):
        SwarmStatus(pods=[PodStatus(name=str(i)) for i in range(65)])

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
                       composition_error=0.000123456, trust=0.5, pinned=True, served_on_pods=64)  # fmt: skip


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


def test_two_thousand_agents_on_64_pods_fit_in_256_kib() -> None:
    """The issue's bound, for a Swarm as the operator writes it: names like agent-0001, versions like c12.a3,
    compositions exact, trust 1 and no pin left out (what a status entry holds at its usual values)."""
    pods = [PodStatus(name=f"support-vllm-{i}", pod_ip=f"10.0.0.{i}", ready=True, loaded_adapters=2000)
            for i in range(64)]  # fmt: skip
    agents = [AgentStatus(name=f"agent-{i:04d}", served_version="c12.a3", adapter_path=f"agent-{i:04d}/{'f' * 12}",
                          served_on_pods=64) for i in range(2000)]  # fmt: skip
    size = _size(SwarmStatus(agents=agents, pods=pods, served_root="file:///var/lib/dynamiclora/pvc/ckpt/served/t/s"))
    assert size < 256 * 1024, size


def test_pod_entries_count_adapters_instead_of_listing_every_agent() -> None:
    with pytest.raises(ValidationError):
        PodStatus(name="p", missing_adapters=[str(i) for i in range(MAX_MISSING_LISTED + 1)])
    with pytest.raises(ValidationError):
        SwarmStatus(pods=[PodStatus(name=str(i)) for i in range(65)])

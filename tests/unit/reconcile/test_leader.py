"""Leader election's decisions with an in-memory Lease store that enforces resourceVersion like the API server.

The real API server is exercised by tests/integration/cluster/test_cluster_leader.py and the e2e.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from dynamiclora.controllers.leader import Leadership, hold
from dynamiclora.kube import KubeError


class MemLeases:
    """Named as a fake: optimistic concurrency exactly as the API server applies it, nothing else."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.down:
            raise KubeError(503, "unavailable")
        return copy.deepcopy(self.obj)

    def write_lease(self, lease: dict[str, Any]) -> dict[str, Any] | None:
        if self.down:
            raise KubeError(503, "unavailable")
        expected = lease["metadata"].get("resourceVersion")
        current = self.obj["metadata"]["resourceVersion"] if self.obj else None
        if expected != current:
            return None  # 409: created meanwhile, or written by someone else since it was read
        self.version += 1
        self.obj = copy.deepcopy(lease)
        self.obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.obj)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pair(leases: MemLeases, clock: Clock) -> tuple[Leadership, Leadership]:
    return (Leadership(leases, "ns", "a", duration_s=10, clock=clock),
            Leadership(leases, "ns", "b", duration_s=10, clock=clock))  # fmt: skip


def test_expiry_is_measured_from_when_the_follower_saw_the_lease_change() -> None:
    leases, clock = MemLeases(), Clock()
    a, b = _pair(leases, clock)
    assert a.try_acquire() and not b.try_acquire()
    clock.now += 9
    assert a.try_acquire()  # renewed at 109: b sees a new resourceVersion
    clock.now += 9
    assert not b.try_acquire()  # 9 s since b saw the change, not 18 since it first looked
    clock.now += 11
    assert b.try_acquire() and b.leader and leases.obj is not None
    assert leases.obj["spec"]["holderIdentity"] == "b" and leases.obj["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire() and not a.leader  # a sees b's Lease: it follows


def test_a_leader_that_cannot_renew_counts_as_lost_after_the_lease_time() -> None:
    leases, clock = MemLeases(), Clock()
    a, _ = _pair(leases, clock)
    assert a.try_acquire()
    clock.now += 9
    assert not a.lost()
    clock.now += 2
    assert a.lost()


def test_hold_stops_a_leader_that_loses_the_api_server() -> None:
    leases = MemLeases()
    a = Leadership(leases, "ns", "a", duration_s=0.2, renew_s=0.02)
    lost: list[bool] = []

    async def go() -> None:
        task = asyncio.create_task(hold(a, lambda: lost.append(True)))
        await asyncio.sleep(0.1)
        assert a.leader
        leases.down = True
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(go())
    assert lost == [True] and not a.leader


def test_release_lets_the_follower_in_without_waiting() -> None:
    leases, clock = MemLeases(), Clock()
    a, b = _pair(leases, clock)
    assert a.try_acquire() and not b.try_acquire()
    a.release()
    assert not a.leader and b.try_acquire()


def test_release_without_the_api_server_still_lets_the_process_stop() -> None:
    # `make demo-down` stops the cluster with the operator: its shutdown must not wait for the server.
    leases, clock = MemLeases(), Clock()
    a, _ = _pair(leases, clock)
    assert a.try_acquire()
    leases.down = True
    a.release()
    assert not a.leader


def test_a_standalone_operator_counts_as_the_leader() -> None:
    """Without election it reconciles: the "replicas leading" panel must show 1, not 0."""
    import argparse

    from dynamiclora.controllers.cli import _leadership
    from dynamiclora.metrics import LEADER

    LEADER.set(0)
    args = argparse.Namespace(leader_election_namespace=None, no_leader_election=True, leader_lease_seconds=15.0)
    assert _leadership(args, api=None) is None
    from dynamiclora.serving.metrics import REGISTRY

    assert REGISTRY.get_sample_value("dynamiclora_leader") == 1

"""Leader election against the real API server: one holder, takeover on expiry, release, no double win."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from dynamiclora.controllers.leader import Leadership
from dynamiclora.kube import ApiKube
from dynamiclora_dev.localcluster import LocalCluster

pytestmark = pytest.mark.integration
NS = "leader-tests"


@pytest.fixture(scope="module")
def api(local_cluster: LocalCluster) -> ApiKube:
    rest = local_cluster.rest()
    if rest.get_or_none(f"/api/v1/namespaces/{NS}") is None:
        rest.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    return ApiKube(str(local_cluster.kubeconfig))


def _pair(api: ApiKube, duration: float) -> tuple[Leadership, Leadership]:
    name = f"lease-{uuid.uuid4().hex[:8]}"
    return (Leadership(api, NS, "a", name=name, duration_s=duration),
            Leadership(api, NS, "b", name=name, duration_s=duration))  # fmt: skip


def test_one_leader_then_a_takeover_once_it_stops_renewing(api: ApiKube) -> None:
    a, b = _pair(api, duration=2.0)
    assert a.try_acquire() and a.leader
    assert not b.try_acquire() and not b.leader  # b saw the Lease change just now: not expired for b
    time.sleep(1.2)
    assert a.try_acquire()  # a renews: b's view of the Lease is fresh again
    time.sleep(1.2)
    assert not b.try_acquire()  # b sees a's renewal only now: its 2 s count from this look
    time.sleep(1.2)
    assert not b.try_acquire()  # 1.2 s since b saw the change
    time.sleep(1.0)  # a is gone: 2.2 s without a change, as b's own clock measures it
    assert b.try_acquire() and b.leader
    lease = api.get_lease(NS, a.name)
    assert lease is not None and lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire() and not a.leader  # a comes back: it follows


def test_release_hands_over_at_once(api: ApiKube) -> None:
    a, b = _pair(api, duration=30.0)
    assert a.try_acquire() and not b.try_acquire()
    a.release()
    assert not a.leader and b.try_acquire() and b.leader  # no 30 s wait


def _race(start: threading.Barrier, who: Leadership, won: dict[str, bool]) -> None:
    start.wait()
    won[who.identity] = who.try_acquire()


def test_two_candidates_racing_for_a_new_lease_never_both_win(api: ApiKube) -> None:
    for _ in range(5):
        a, b = _pair(api, duration=30.0)
        start = threading.Barrier(2)
        won: dict[str, bool] = {}
        threads = [threading.Thread(target=_race, args=(start, c, won)) for c in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sum(won.values()) <= 1, won  # the API server's resourceVersion check decides
        assert a.try_acquire() != b.try_acquire()  # and one of them holds it afterwards

"""Issue 19: per-agent Services and EndpointSlices as the real API server stores them.

``sync_routes`` (what the Swarm pass runs) against the local kube-apiserver and its garbage collector: the
slice passes the API's validation, is rewritten only when its pods change, and goes with its Service. A
ConfigMap stands in for the Swarm as the routes' owner (only its name, namespace and uid are used), so no
operator runs here. Pod IPs are cluster-like (10.244.x): the API server refuses loopback addresses in an
EndpointSlice, which is what the local cluster's pods have (see the last test).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_helpers import wait_until

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.routing import ANNOTATION_MODEL, SERVICE_NAME_LABEL, slice_addresses
from dynamiclora.controllers.routing import RouteChanges, sync_routes
from dynamiclora.controllers.swarm import ReadyPod
from dynamiclora.kube import ApiKube
from dynamiclora_dev.localcluster import LocalCluster

pytestmark = pytest.mark.integration
NS = "routes-tests"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def kube(local_cluster: LocalCluster) -> ApiKube:
    local_cluster.kubectl("create", "namespace", NS, check=False)
    return ApiKube(str(local_cluster.kubeconfig))


def _swarm(kube: ApiKube, agent_services: bool) -> tuple[dict[str, Any], Swarm]:
    owner = kube.get("ConfigMap", NS, "support") or kube.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "support", "namespace": NS}})  # fmt: skip
    assert owner is not None
    body = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "swarm.yaml").read_text()))
    body["metadata"] = {"name": "support", "namespace": NS}
    body["spec"]["inference"]["placement"] = {"agentServices": agent_services}
    sw = Swarm.model_validate(body)
    return {**owner, "apiVersion": "v1", "kind": "ConfigMap"}, sw


def _pods(*ips: str) -> list[ReadyPod]:
    return [ReadyPod(f"support-vllm-{i}", ip, 0) for i, ip in enumerate(ips)]


def test_routes_on_the_real_api_server(kube: ApiKube) -> None:
    owner, sw = _swarm(kube, True)
    first = sync_routes(kube, owner, sw, {"alice": _pods("10.244.0.7", "10.244.1.9")})
    assert first.failed == {} and first.created == ["alice", "bob"]
    svc, eps = kube.get("Service", NS, "support-alice"), kube.get("EndpointSlice", NS, "support-alice")
    assert svc is not None and eps is not None
    assert "selector" not in svc["spec"] and svc["spec"]["clusterIP"]  # kube-proxy routes it to the slice
    assert svc["metadata"]["annotations"][ANNOTATION_MODEL] == "support-alice"
    assert eps["metadata"]["labels"][SERVICE_NAME_LABEL] == "support-alice"
    assert eps["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]
    assert slice_addresses(eps) == [("support-vllm-0", "10.244.0.7"), ("support-vllm-1", "10.244.1.9")]
    assert slice_addresses(kube.get("EndpointSlice", NS, "support-bob") or {}) == []

    assert sync_routes(kube, owner, sw, {"alice": _pods("10.244.0.7", "10.244.1.9")}) == RouteChanges()
    moved = sync_routes(kube, owner, sw, {"alice": _pods("10.244.1.9")})
    assert moved.updated == ["alice"] and moved.created == []
    assert slice_addresses(kube.get("EndpointSlice", NS, "support-alice") or {}) == [("support-vllm-0", "10.244.1.9")]

    off_owner, off = _swarm(kube, False)
    assert sorted(sync_routes(kube, off_owner, off, {}).deleted) == ["alice", "bob"]
    assert kube.get("Service", NS, "support-alice") is None
    # The garbage collector removes each slice with its Service.
    wait_until("the slices are garbage-collected", lambda: not kube.list("EndpointSlice", NS), timeout=90)


def test_a_loopback_pod_ip_is_refused_and_reported(kube: ApiKube) -> None:
    """The local cluster's pods listen on 127.x: the API server refuses such an address in an EndpointSlice,
    and the refusal is what the Swarm reports (``RoutesFailed``), per agent, without stopping the others."""
    owner, sw = _swarm(kube, True)
    try:
        changes = sync_routes(kube, owner, sw, {"alice": _pods("127.10.0.1"), "bob": _pods("10.244.0.3")})
        assert list(changes.failed) == ["alice"] and "loopback" in changes.failed["alice"]
        assert slice_addresses(kube.get("EndpointSlice", NS, "support-bob") or {}) == [("support-vllm-0",
                                                                                         "10.244.0.3")]
    finally:
        off_owner, off = _swarm(kube, False)
        sync_routes(kube, off_owner, off, {})

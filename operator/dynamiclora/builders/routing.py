"""Per-agent Services and EndpointSlices (issue 19): how a client or gateway reaches a pod that holds an agent.

The Service has no selector, so Kubernetes' EndpointSlice controller leaves it alone and the operator owns
its one EndpointSlice, which lists exactly the pods that serve the agent's adapter. The slice is owned by
its Service and the Service by the Swarm, so deleting either cleans up after it.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynamiclora import FIELD_MANAGER, GROUP
from dynamiclora.builders.names import LABEL_AGENT, LABEL_SWARM, agent_service_name, base_labels, served_adapter_name
from dynamiclora.kube import Obj, owner_reference

COMPONENT = "agent-route"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # ties a slice to its Service (kube-proxy, gateways)
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = f"{FIELD_MANAGER}.{GROUP}"  # not "endpointslice-controller.k8s.io": Kubernetes leaves it be
ANNOTATION_MODEL = f"{GROUP}/model"  # the vLLM model name to request through the Service


def route_labels(swarm: str) -> dict[str, str]:
    """Labels every agent Service of ``swarm`` carries (the operator lists its routes by them)."""
    return {**base_labels(COMPONENT), LABEL_SWARM: swarm}


def build_agent_service(swarm_body: Obj, agent: str, port: int) -> Obj:
    """The agent's Service: no selector, one port, the model name clients must ask for."""
    swarm = swarm_body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": agent_service_name(swarm, agent),
            "namespace": swarm_body["metadata"]["namespace"],
            "labels": {**route_labels(swarm), LABEL_AGENT: agent},
            "annotations": {ANNOTATION_MODEL: served_adapter_name(swarm, agent)},
            "ownerReferences": [owner_reference(swarm_body)],
        },
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}]},
    }


def build_agent_endpoint_slice(service: Obj, pods: Sequence[tuple[str, str]], port: int) -> Obj:
    """The Service's slice listing ``pods`` (name, IP), sorted so that an unchanged set is an unchanged object."""
    meta = service["metadata"]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {**meta["labels"], SERVICE_NAME_LABEL: meta["name"], MANAGED_BY_LABEL: MANAGED_BY},
            "ownerReferences": [owner_reference(service)],
        },
        "addressType": "IPv4",
        "endpoints": [_endpoint(meta["namespace"], name, ip) for name, ip in sorted(pods)],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def _endpoint(namespace: str, pod: str, ip: str) -> Obj:
    return {"addresses": [ip], "conditions": {"ready": True},
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod}}  # fmt: skip


def slice_addresses(endpoint_slice: Obj) -> list[tuple[str, str]]:
    """The (pod, IP) pairs a live slice lists, comparable with what :func:`build_agent_endpoint_slice` gets."""
    out = []
    for e in endpoint_slice.get("endpoints") or []:
        name = (e.get("targetRef") or {}).get("name", "")
        out += [(name, ip) for ip in e.get("addresses") or []]
    return sorted(out)

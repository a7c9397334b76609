"""Keep each agent's Service and EndpointSlice to the pods that serve it (``placement.agentServices``).

Run after the serving pass with its outcome: a pod is listed once it serves the agent's adapter as
desired, and dropped in the pass that moves the agent off it, one pass before the adapter is unloaded
(see controllers/placement.py). Writes happen only on a change: at steady state a pass lists the
Swarm's routes twice and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.names import LABEL_AGENT
from dynamiclora.builders.routing import build_agent_endpoint_slice, build_agent_service, route_labels, slice_addresses
from dynamiclora.controllers.swarm import ReadyPod
from dynamiclora.kube import Kube, KubeError, Obj


@dataclass
class RouteChanges:
    """What a pass wrote: Services created or deleted, slices rewritten (agent names)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # agent -> why its route could not be written


def sync_routes(kube: Kube, body: Obj, sw: Swarm, endpoints: Mapping[str, Sequence[ReadyPod]]) -> RouteChanges:
    """Each agent's Service (created once) and slice (rewritten when its pods change); the Services of agents
    no longer in the spec, or of every agent once ``agentServices`` is off, are deleted (slices with them)."""
    ns, swarm = body["metadata"]["namespace"], body["metadata"]["name"]
    port = sw.spec.inference.port
    services = {s["metadata"]["name"]: s for s in kube.list("Service", ns, route_labels(swarm))}
    slices = {s["metadata"]["name"]: s for s in kube.list("EndpointSlice", ns, route_labels(swarm))}
    wanted = [a.name for a in sw.spec.agents] if sw.spec.inference.placement.agent_services else []
    out = RouteChanges()
    keep = set()
    for agent in wanted:
        desired = build_agent_service(body, agent, port)
        keep.add(desired["metadata"]["name"])
        try:  # one agent's refused route must not stop the others'
            _sync_route(kube, desired, services, slices, [(p.name, p.ip) for p in endpoints.get(agent, ())], out)
        except KubeError as exc:
            out.failed[agent] = str(exc)
    for name, service in services.items():
        if name not in keep:
            kube.delete("Service", ns, name)
            out.deleted.append(service["metadata"].get("labels", {}).get(LABEL_AGENT, name))
    return out


def _sync_route(kube: Kube, desired: Obj, services: Mapping[str, Obj], slices: Mapping[str, Obj],
                pods: list[tuple[str, str]], out: RouteChanges) -> None:  # fmt: skip
    name, agent = desired["metadata"]["name"], desired["metadata"]["labels"][LABEL_AGENT]
    port = desired["spec"]["ports"][0]["port"]
    service = services.get(name)
    if service is None or _port(service) != port:
        service = kube.apply(desired)
        out.created.append(agent)
    live = slices.get(name)
    if live is None or slice_addresses(live) != sorted(pods) or _port(live) != port:
        kube.apply(build_agent_endpoint_slice(service, pods, port))
        out.updated.append(agent)


def _port(obj: Obj) -> int | None:
    ports = (obj.get("spec") or obj).get("ports") or []
    return int(ports[0]["port"]) if ports else None

"""Swarm reconciliation: children from spec, observed pods, and the swarm's status.

``reconcile_swarm`` is synchronous and only talks to :class:`~dynamiclora.kube.Kube`; loading adapters
into the pods it finds is done by :mod:`dynamiclora.controllers.serving`, which is async (vLLM's HTTP API).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.inference import build_service, build_statefulset, selector_labels
from dynamiclora.builders.names import LABEL_SWARM, inference_name
from dynamiclora.builders.tiers import build_agent_tiers
from dynamiclora.controllers.common import generation, parse
from dynamiclora.kube import Kube, Obj
from dynamiclora.metrics import SWARM_DESIRED_PODS, SWARM_READY_PODS
from dynamiclora.settings import OperatorSettings

APPLY_CONCURRENCY = 24


@dataclass(frozen=True)
class ReadyPod:
    """An inference pod that can take adapter loads."""

    name: str
    ip: str
    restarts: int


@dataclass
class SwarmObservation:
    """What ``reconcile_swarm`` found and applied."""

    swarm: Swarm
    body: Obj
    applied: list[str] = field(default_factory=list)
    deleted_tiers: list[str] = field(default_factory=list)
    replicas: int = 0
    ready_replicas: int = 0
    pods: list[Obj] = field(default_factory=list)
    ready_pods: list[ReadyPod] = field(default_factory=list)


def _pod_ready(pod: Obj) -> bool:
    status = pod.get("status", {})
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))


def _restarts(pod: Obj) -> int:
    return sum(int(c.get("restartCount", 0)) for c in pod.get("status", {}).get("containerStatuses", []) or [])


def contains(want: object, have: object) -> bool:
    """Whether ``have`` holds every field of ``want`` with the same value (server defaults may add more)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and contains(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(contains, want, have))
    return want == have


def up_to_date(desired: Obj, live: Obj) -> bool:
    """Whether applying ``desired`` would change nothing we own in ``live``."""
    return contains(desired["spec"], live.get("spec")) and contains(desired["metadata"], live.get("metadata"))


def reconcile_swarm(kube: Kube, settings: OperatorSettings, body: Obj) -> SwarmObservation:
    """Apply the swarm's children, prune per-agent tiers of removed agents, observe its pods.

    Raises:
        InvalidSpec: the spec does not validate (the API server's schema should prevent it).
    """
    sw = parse(Swarm, body)
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    obs = SwarmObservation(swarm=sw, body=body)

    desired_tiers = build_agent_tiers(body, sw)
    live_tiers = {t["metadata"]["name"]: t for t in kube.list("LoRATier", ns, {LABEL_SWARM: name})}
    pending = []
    for child in [build_service(body, sw), build_statefulset(body, sw, settings), *desired_tiers]:
        live = live_tiers.get(child["metadata"]["name"]) if child["kind"] == "LoRATier" else None
        if live is not None and up_to_date(child, live):
            continue  # one list call instead of a write per agent on every resync
        pending.append(child)
    # Independent server-side applies: a swarm of 1,000 agents creates 2,000 tiers, so overlap the calls.
    with ThreadPoolExecutor(max_workers=max(1, min(APPLY_CONCURRENCY, len(pending)))) as pool:
        list(pool.map(kube.apply, pending))
    obs.applied += [f"{c['kind']}/{c['metadata']['name']}" for c in pending]

    wanted = {t["metadata"]["name"] for t in desired_tiers}
    for tier_name, tier in sorted(live_tiers.items()):
        owners = tier["metadata"].get("ownerReferences", [])
        owned = any(o.get("uid") == meta.get("uid") for o in owners)
        if owned and tier_name not in wanted:
            kube.delete("LoRATier", ns, tier_name)
            obs.deleted_tiers.append(tier_name)

    sts = kube.get("StatefulSet", ns, inference_name(name)) or {}
    obs.replicas = int(sts.get("spec", {}).get("replicas", sw.spec.inference.replicas))
    obs.ready_replicas = int(sts.get("status", {}).get("readyReplicas", 0) or 0)
    obs.pods = sorted(kube.list("Pod", ns, selector_labels(name)), key=lambda p: str(p["metadata"]["name"]))
    obs.ready_pods = [
        ReadyPod(p["metadata"]["name"], p["status"]["podIP"], _restarts(p)) for p in obs.pods if _pod_ready(p)
    ]
    SWARM_DESIRED_PODS.labels(ns, name).set(sw.spec.inference.replicas)
    SWARM_READY_PODS.labels(ns, name).set(len(obs.ready_pods))
    return obs


def swarm_status(body: Obj, obs: SwarmObservation, agents: list[Obj], pods: list[Obj], conditions: list[Obj]) -> Obj:
    """The status object for a reconciled swarm."""
    n_agents = len(obs.swarm.spec.agents)
    served = sum(1 for a in agents if a.get("servedOnPods", 0) and a.get("servedOnPods") == len(obs.ready_pods))
    ready_cond = next((c for c in conditions if c["type"] == "Ready"), None)
    degraded = next((c for c in conditions if c["type"] == "Degraded" and c["status"] == "True"), None)
    if degraded:
        phase = "Degraded"
    elif ready_cond and ready_cond["status"] == "True":
        phase = "Ready"
    elif obs.ready_pods:
        phase = "Progressing"
    else:
        phase = "Pending"
    return {
        "observedGeneration": generation(body),
        "phase": phase,
        "conditions": conditions,
        "replicas": obs.replicas,
        "readyReplicas": len(obs.ready_pods),
        "agentCount": n_agents,
        "servedAgents": served,
        "agents": [{k: v for k, v in a.items() if k != "servedOnPods"} for a in agents],
        "pods": pods,
    }

"""Swarm reconciliation: children from spec, observed pods, and the swarm's status.

``reconcile_swarm`` is synchronous and only talks to :class:`~dynamiclora.kube.Kube`; loading adapters
into the pods it finds is done by :mod:`dynamiclora.controllers.serving`, which is async (vLLM's HTTP API).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dynamiclora.api.conditions import ConditionType, Reason
from dynamiclora.api.swarm import MAX_UNSERVED_LISTED, Swarm, SwarmPhase, SwarmStatus
from dynamiclora.builders.guard import build_guard_config_map, build_key_secrets
from dynamiclora.builders.inference import build_service, build_statefulset, selector_labels
from dynamiclora.builders.names import LABEL_AGENT, LABEL_SWARM, inference_name, swarm_name_problem
from dynamiclora.builders.tiers import build_agent_tiers
from dynamiclora.controllers.admission import admit, swarm_references
from dynamiclora.controllers.common import InvalidSpec, generation, parse
from dynamiclora.controllers.conditions import get_condition, set_condition
from dynamiclora.controllers.placement import served_everywhere
from dynamiclora.kube import Kube, Obj
from dynamiclora.metrics import SWARM_DESIRED_PODS, SWARM_READY_PODS
from dynamiclora.settings import OperatorSettings

APPLY_CONCURRENCY = 24
# Present (status True) while a generated LoRATier name is owned by another Swarm.


@dataclass(frozen=True)
class ReadyPod:
    """An inference pod that can take adapter loads."""

    name: str
    ip: str
    restarts: int


@dataclass
class SwarmObservation:
    """What ``reconcile_swarm`` found and applied.

    ``swarm`` is what is served: agents whose generated tier names another Swarm owns are left out (their
    stacks would compose that Swarm's adapters); ``agent_count`` counts every agent of the spec.
    """

    swarm: Swarm
    body: Obj
    agent_count: int = 0
    tier_conflicts: dict[str, str] = field(default_factory=dict)  # generated tier name -> the Swarm owning it
    conflicting_agents: list[str] = field(default_factory=list)
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


def _controlled_by(pod: Obj, uid: str | None) -> bool:
    return uid is not None and any(o.get("controller") and o.get("uid") == uid
                                   for o in pod["metadata"].get("ownerReferences") or [])  # fmt: skip


def _restarts(pod: Obj) -> int:
    return sum(int(c.get("restartCount", 0)) for c in pod.get("status", {}).get("containerStatuses", []) or [])


def contains(want: object, have: object) -> bool:
    """Whether ``have`` holds every field of ``want`` with the same value (server defaults may add more; an
    absent field is its zero value, as the API server leaves out ``omitempty`` fields such as a Service's
    ``publishNotReadyAddresses: false``)."""
    if have is None and not want and want is not None:
        return True
    if isinstance(want, dict):
        return isinstance(have, dict) and all(contains(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(contains, want, have))
    return want == have


def up_to_date(desired: Obj, live: Obj) -> bool:
    """Whether applying ``desired`` would change nothing we own in ``live`` (its spec or data, metadata)."""
    return all(contains(v, live.get(k)) for k, v in desired.items() if k not in ("apiVersion", "kind", "status"))


def _other_swarm(tier: Obj, swarm: str) -> str | None:
    """The Swarm other than ``swarm`` that owns ``tier`` (by ownerReference or the swarm label), if any.

    An ownerReference to a Swarm of the same name but another uid is this Swarm's deleted predecessor
    (names are unique in a namespace): its tiers are taken over.
    """
    meta = tier.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "Swarm" and ref.get("name") != swarm:
            return str(ref.get("name"))
    label = (meta.get("labels") or {}).get(LABEL_SWARM)
    return str(label) if label and label != swarm else None


def _tier_conflicts(kube: Kube, ns: str, swarm: str, desired: list[Obj], live: dict[str, Obj]) -> dict[str, str]:
    """Generated tier names owned by another Swarm ("a-b"/"c" and "a"/"b-c" give the same name)."""
    names = [t["metadata"]["name"] for t in desired]
    conflicts = {n: other for n in names if n in live and (other := _other_swarm(live[n], swarm))}
    missing = [n for n in names if n not in live]
    if missing:  # another Swarm's tier is not under our label: one list of the namespace finds it
        named = {t["metadata"]["name"]: t for t in kube.list("LoRATier", ns)}
        for n in missing:
            if n in named and (other := _other_swarm(named[n], swarm)):
                conflicts[n] = other
    return conflicts


def conflict_message(obs: SwarmObservation) -> str:
    """What the TierNameConflict condition and event say."""
    owned = ", ".join(f"{t} (owned by Swarm {o})" for t, o in sorted(obs.tier_conflicts.items()))
    return (f"generated LoRATier names already belong to another Swarm: {owned}; agents not reconciled: "
            f"{', '.join(obs.conflicting_agents)} (rename the agent or the Swarm)")[:1000]  # fmt: skip


def _ensure_keys(kube: Kube, body: Obj, sw: Swarm) -> None:
    """Create the swarm's generated key Secrets once; an existing one is never rewritten (clients hold it)."""
    for secret in build_key_secrets(body, sw):
        meta = secret["metadata"]
        if kube.get("Secret", meta["namespace"], meta["name"]) is None:
            kube.create(secret)


def reconcile_swarm(kube: Kube, settings: OperatorSettings, body: Obj) -> SwarmObservation:
    """Apply the swarm's children, prune per-agent tiers of removed agents, observe its pods.

    A generated LoRATier whose name another Swarm's tier already has is not applied (nor is the rest of
    that agent): the conflict is reported (``obs.tier_conflicts``, a Warning event) and the other agents
    are reconciled as usual.

    Raises:
        InvalidSpec: the spec does not validate, or the name cannot name the Swarm's Service (the API
            server's schema should prevent both).
    """
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    if problem := swarm_name_problem(name):
        raise InvalidSpec(f"metadata.name {name!r} {problem}")
    sw = parse(Swarm, body)
    admit(kube, ns, settings, swarm_references(sw))
    obs = SwarmObservation(swarm=sw, body=body, agent_count=len(sw.spec.agents))

    desired_tiers = build_agent_tiers(body, sw)
    live_tiers = {t["metadata"]["name"]: t for t in kube.list("LoRATier", ns, {LABEL_SWARM: name})}
    obs.tier_conflicts = _tier_conflicts(kube, ns, name, desired_tiers, live_tiers)
    blocked = {t["metadata"]["labels"][LABEL_AGENT] for t in desired_tiers
               if t["metadata"]["name"] in obs.tier_conflicts}  # fmt: skip
    if blocked:
        obs.conflicting_agents = sorted(blocked)
        served = [a for a in sw.spec.agents if a.name not in blocked]
        obs.swarm = sw.model_copy(update={"spec": sw.spec.model_copy(update={"agents": served})})
        msg = conflict_message(obs)
        old = get_condition(body.get("status"), ConditionType.TIER_NAME_CONFLICT) or {}
        if (old.get("status"), old.get("message")) != ("True", msg):  # one event per new conflict, not per pass
            kube.event(body, "Warning", Reason.TIER_NAME_CONFLICT, msg)
    _ensure_keys(kube, body, sw)
    pending = []
    children = [build_guard_config_map(body), build_service(body, sw), build_statefulset(body, sw, settings)]
    for child in [*children, *desired_tiers]:
        if child["kind"] == "LoRATier" and child["metadata"]["labels"][LABEL_AGENT] in blocked:
            continue  # never overwrite another Swarm's tier
        # A no-op server-side apply is still a write request: a steady Swarm makes none. The tiers were
        # listed at once; the three other children cost a read each.
        live = (live_tiers.get(child["metadata"]["name"]) if child["kind"] == "LoRATier"
                else kube.get(child["kind"], ns, child["metadata"]["name"]))  # fmt: skip
        if live is not None and up_to_date(child, live):
            continue
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
    # The operator's key goes only to pods its StatefulSet controls: a pod someone else made with the
    # Swarm's labels is not a vLLM pod of this Swarm.
    owner = sts.get("metadata", {}).get("uid")
    obs.ready_pods = [
        ReadyPod(p["metadata"]["name"], p["status"]["podIP"], _restarts(p))
        for p in obs.pods if _pod_ready(p) and _controlled_by(p, owner)
    ]
    SWARM_DESIRED_PODS.labels(ns, name).set(sw.spec.inference.replicas)
    SWARM_READY_PODS.labels(ns, name).set(len(obs.ready_pods))
    return obs


def _conflict_conditions(body: Obj, obs: SwarmObservation, conditions: list[Obj]) -> list[Obj]:
    """TierNameConflict while generated tier names are taken (then not Ready either), else no such condition."""
    if not obs.tier_conflicts:
        return [c for c in conditions if c["type"] != ConditionType.TIER_NAME_CONFLICT]
    gen, msg = generation(body), conflict_message(obs)
    out = set_condition(conditions, ConditionType.TIER_NAME_CONFLICT, True, Reason.TIER_NAME_CONFLICT, msg, gen)
    ready = next((c for c in out if c["type"] == ConditionType.READY), None)
    if ready is None or ready["status"] == "True":  # the conflicting agents are not served
        old = get_condition(body.get("status"), ConditionType.READY)  # its transition time, not the one of this pass
        out = set_condition([c for c in out if c["type"] != ConditionType.READY] + ([old] if old else []),
                            ConditionType.READY, False, Reason.TIER_NAME_CONFLICT, msg, gen)  # fmt: skip
    return out


def swarm_status(body: Obj, obs: SwarmObservation, agents: list[Obj], pods: list[Obj], conditions: list[Obj],
                 served_root: str | None = None) -> SwarmStatus:  # fmt: skip
    """The status object for a reconciled swarm (validated by the API's SwarmStatus, bounds included);
    ``agents`` are this pass's serving entries (each written to its agent's context tier, only counted here)."""
    n_agents = obs.agent_count or len(obs.swarm.spec.agents)
    conditions = _conflict_conditions(body, obs, conditions)
    everywhere = {a["name"] for a in agents if obs.ready_pods and served_everywhere(a)}
    unserved = sorted(a.name for a in obs.swarm.spec.agents if a.name not in everywhere)
    ready_cond = get_condition({"conditions": conditions}, ConditionType.READY)
    degraded = next((c for c in conditions if c["type"] == ConditionType.DEGRADED and c["status"] == "True"), None)
    degraded = degraded or get_condition({"conditions": conditions}, ConditionType.TIER_NAME_CONFLICT)
    if degraded:
        phase = SwarmPhase.DEGRADED
    elif ready_cond and ready_cond["status"] == "True":
        phase = SwarmPhase.READY
    elif obs.ready_pods:
        phase = SwarmPhase.PROGRESSING
    else:
        phase = SwarmPhase.PENDING
    return SwarmStatus.model_validate({
        "observedGeneration": generation(body),
        "servedRoot": served_root,
        "phase": phase,
        "conditions": conditions,
        "replicas": obs.replicas,
        "readyReplicas": len(obs.ready_pods),
        "agentCount": n_agents,
        "servedAgents": len(everywhere),
        "unservedAgents": unserved[:MAX_UNSERVED_LISTED],
        "pods": pods,
    })

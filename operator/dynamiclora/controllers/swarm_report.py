"""What one Swarm pass reports: conditions, status and events, from what it observed and served.

Pure functions of :class:`SwarmObservation` (``reconcile_swarm``) and :class:`ServingOutcome`
(``sync_serving``), so the kopf layer only runs the pass, writes the status and emits the events. Writing
which tier versions are served (``servedVersion``, owned by the Swarm pass) is here too, as a plain
function of the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dynamiclora.api.common import TierLevel
from dynamiclora.api.conditions import ConditionType, EventType, Reason
from dynamiclora.api.swarm import Swarm, SwarmStatus
from dynamiclora.builders.names import LABEL_SWARM, agent_tier_name
from dynamiclora.controllers.common import Event, WaitFor, generation
from dynamiclora.controllers.conditions import get_condition, set_condition
from dynamiclora.controllers.placement import served_everywhere
from dynamiclora.controllers.serving import ServingOutcome, ServingUnavailable
from dynamiclora.controllers.swarm import SwarmObservation, swarm_status
from dynamiclora.controllers.tier_storage import explain, is_storage_error
from dynamiclora.kube import Kube, Obj
from dynamiclora.metrics import (
    AGENT_PLACED_PODS,
    AGENT_SERVED_PODS,
    POD_LOADED_ADAPTERS,
    TIER_SERVED_VERSION,
    keep_swarm_series,
)

MAX_MESSAGE = 1000  # condition messages users read in kubectl describe
MAX_NAMED = 10  # agents named in a message before "and N more"
# LoRATier status fields this pass writes (mark_served, mark_agents): the tier's own pass leaves them alone.
SWARM_WRITES_ON_TIERS = frozenset({"servedVersion", "serving"})


@dataclass
class SwarmReport:
    """The status to write (the API's type) and the events to record."""

    status: SwarmStatus
    events: list[Event] = field(default_factory=list)


def is_blocking(exc: Exception) -> bool:
    """Whether ``exc`` stops serving for this pass with a condition (rather than being a bug to retry)."""
    return isinstance(exc, ServingUnavailable | WaitFor) or is_storage_error(exc)


def swarm_report(
    body: Obj, obs: SwarmObservation, outcome: ServingOutcome | None, blocked: Exception | None = None
) -> SwarmReport:
    """The pass's status and events: ``outcome`` is what serving did, ``blocked`` why it could not run."""
    gen = generation(body)
    conditions: list[Obj] = list((body.get("status") or {}).get("conditions", []))
    events: list[Event] = []
    agents: list[Obj] = outcome.agents if outcome else []
    if outcome is not None:
        conditions = _composing(conditions, outcome, gen, events)
        conditions = _degraded(conditions, outcome, gen, events)
        if outcome.swapped:
            msg = "loaded " + ", ".join(outcome.swapped)[:900]
            events.append(Event(EventType.NORMAL, Reason.ADAPTERS_SERVED, msg))
    elif blocked is not None:
        reason, msg = _blocked(blocked)
        before = get_condition({"conditions": conditions}, ConditionType.DEGRADED) or {}
        if reason == Reason.STORAGE_UNAVAILABLE and before.get("message") != msg:  # once per distinct problem
            events.append(Event(EventType.WARNING, reason, msg))
        conditions = set_condition(conditions, ConditionType.DEGRADED, True, reason, msg, gen)
    conditions = _ready(conditions, obs, agents, gen)
    status = swarm_status(body, obs, agents, _pods(obs, outcome), conditions, outcome.served_root if outcome else None)
    return SwarmReport(status, events)


def _blocked(exc: Exception) -> tuple[Reason, str]:
    if isinstance(exc, ServingUnavailable):
        return Reason.SERVING_UNAVAILABLE, str(exc)
    if isinstance(exc, WaitFor):
        return Reason.WAITING, str(exc)
    return Reason.STORAGE_UNAVAILABLE, f"the Swarm's storage cannot be read: {explain(exc)}"[:MAX_MESSAGE]


def _pods(obs: SwarmObservation, outcome: ServingOutcome | None) -> list[Obj]:
    """Every pod of the StatefulSet: those the serving pass reached, from its outcome; the others ready when
    Kubernetes says so and the pass ran but had nothing for them (no agent has a version yet), else not."""
    served = outcome.pods if outcome else []
    names = {p["name"] for p in served}
    idle = {p.name for p in obs.ready_pods} - set(outcome.unresponsive) if outcome is not None else set()
    return served + [{"name": n, "podIP": p.get("status", {}).get("podIP"), "ready": n in idle}
                     for p in obs.pods if (n := p["metadata"]["name"]) not in names]  # fmt: skip


def _named(agents: list[str]) -> str:
    more = len(agents) - MAX_NAMED
    return ", ".join(agents[:MAX_NAMED]) + (f" and {more} more" if more > 0 else "")


def _composing(conditions: list[Obj], outcome: ServingOutcome, gen: int | None, events: list[Event]) -> list[Obj]:
    """The ``Composing`` condition: which agents wait for their adapter, and which Job builds it."""
    progress = outcome.compose
    if not outcome.composing or progress is None:
        return set_condition(conditions, ConditionType.COMPOSING, False, Reason.COMPOSED, "", gen)
    agents = _named(outcome.composing)
    if progress.failure:
        msg = f"compose Job {progress.job} failed for {agents}: {progress.failure}"[:MAX_MESSAGE]
        before = get_condition({"conditions": conditions}, ConditionType.COMPOSING) or {}
        if before.get("reason") != Reason.COMPOSITION_FAILED or before.get("message") != msg:
            events.append(Event(EventType.WARNING, Reason.COMPOSITION_FAILED, msg))
        return set_condition(conditions, ConditionType.COMPOSING, False, Reason.COMPOSITION_FAILED, msg, gen)
    msg = f"compose Job {progress.job} builds the adapter of {agents}"[:MAX_MESSAGE]
    return set_condition(conditions, ConditionType.COMPOSING, True, Reason.COMPOSING, msg, gen)


def _degraded(conditions: list[Obj], outcome: ServingOutcome, gen: int | None, events: list[Event]) -> list[Obj]:
    """``Degraded``: a failed compose Job first, then adapters a pod refused to load."""
    if outcome.compose is not None and outcome.compose.failure:
        msg = f"compose Job {outcome.compose.job}: {outcome.compose.failure}"[:MAX_MESSAGE]
        return set_condition(conditions, ConditionType.DEGRADED, True, Reason.COMPOSITION_FAILED, msg, gen)
    if outcome.unresponsive:
        msg = "; ".join(f"pod {k}: {v}" for k, v in sorted(outcome.unresponsive.items()))[:MAX_MESSAGE]
        before = get_condition({"conditions": conditions}, ConditionType.DEGRADED) or {}
        if before.get("reason") != Reason.POD_UNRESPONSIVE or before.get("message") != msg:
            events.append(Event(EventType.WARNING, Reason.POD_UNRESPONSIVE, msg))
        return set_condition(conditions, ConditionType.DEGRADED, True, Reason.POD_UNRESPONSIVE, msg, gen)
    if outcome.failures:
        msg = "; ".join(f"{k}: {v}" for k, v in sorted(outcome.failures.items()))[:MAX_MESSAGE]
        events.append(Event(EventType.WARNING, Reason.ADAPTER_LOAD_FAILED, msg))
        return set_condition(conditions, ConditionType.DEGRADED, True, Reason.ADAPTER_LOAD_FAILED, msg, gen)
    if outcome.route_failures:
        msg = "; ".join(f"route of {k}: {v}" for k, v in sorted(outcome.route_failures.items()))[:MAX_MESSAGE]
        return _degraded_once(conditions, Reason.ROUTES_FAILED, msg, gen, events)
    if short := outcome.placement.placement.short:
        msg = (f"no room for {sum(short.values())} adapter replica(s) of {_named(sorted(short))}: every other ready "
               "pod holds --max-cpu-loras adapters (add pods or raise maxCpuLoras)")[:MAX_MESSAGE]  # fmt: skip
        return _degraded_once(conditions, Reason.NO_ROOM, msg, gen, events)
    return set_condition(conditions, ConditionType.DEGRADED, False, Reason.HEALTHY, "", gen)


def _degraded_once(conditions: list[Obj], reason: Reason, msg: str, gen: int | None, events: list[Event]) -> list[Obj]:
    """``Degraded`` for ``reason``, with a warning event only when the problem is new (not on every pass)."""
    before = get_condition({"conditions": conditions}, ConditionType.DEGRADED) or {}
    if before.get("reason") != reason or before.get("message") != msg:
        events.append(Event(EventType.WARNING, reason, msg))
    return set_condition(conditions, ConditionType.DEGRADED, True, reason, msg, gen)


def _ready(conditions: list[Obj], obs: SwarmObservation, agents: list[Obj], gen: int | None) -> list[Obj]:
    """``Ready``: the desired pods are ready and every agent is served on each pod it is placed on."""
    n_pods, n_agents = len(obs.ready_pods), len(obs.swarm.spec.agents)
    all_served = bool(n_pods) and all(served_everywhere(a) for a in agents)
    ready = n_pods >= obs.swarm.spec.inference.replicas and all_served and len(agents) == n_agents
    reason = (Reason.ALL_AGENTS_SERVED if ready
              else Reason.PODS_NOT_READY if n_pods < obs.replicas
              else Reason.NOT_ALL_SERVED)  # fmt: skip
    served = sum(1 for a in agents if a.get("servedOnPods"))
    msg = f"{n_pods}/{obs.replicas} pods ready, {served}/{n_agents} agents served"
    return set_condition(conditions, ConditionType.READY, ready, reason, msg, gen)


def served_tier_versions(obs: SwarmObservation, outcome: ServingOutcome) -> dict[str, tuple[int, str]]:
    """Tier -> (version, level) now served on every pod that holds it, for the agents served everywhere."""
    served = {a["name"] for a in outcome.agents if obs.ready_pods and served_everywhere(a)}
    versions: dict[str, tuple[int, str]] = {}
    for stack in outcome.stacks:
        if stack.agent in served:
            for e in stack.entries:
                if e.version >= versions.get(e.tier, (0, ""))[0]:
                    versions[e.tier] = (e.version, e.level)
    return versions


def mark_served(kube: Kube, ns: str, obs: SwarmObservation, outcome: ServingOutcome) -> None:
    """Record on each tier the version now served on every pod placed to serve it (this pass's servedVersion)."""
    for tier, (version, level) in served_tier_versions(obs, outcome).items():
        body = outcome.tiers.get(tier)  # listed once per pass by sync_serving
        if not body:
            continue
        # Set on every pass, not only on a change: a restarted operator finds the status already right.
        TIER_SERVED_VERSION.labels(ns, tier, level).set(version)
        if (body.get("status") or {}).get("servedVersion") != version:
            kube.patch_status("LoRATier", ns, tier, {"servedVersion": version})


def mark_agents(kube: Kube, ns: str, swarm: str, sw: Swarm, outcome: ServingOutcome) -> int:
    """Write each agent's serving entry to its context tier's ``status.serving`` when it changed (an agent
    with nothing served loses it); the number of tiers patched."""
    entries = {a["name"]: {k: v for k, v in a.items() if k != "name"} for a in outcome.agents}
    last = outcome.last
    patched = 0
    for agent in sw.spec.agents:
        tier = agent_tier_name(swarm, agent.name, TierLevel.CONTEXT)
        body = outcome.tiers.get(tier)
        if body is None or body.get("metadata", {}).get("labels", {}).get(LABEL_SWARM) != swarm:
            continue  # not created yet, or another Swarm's tier of the same name (TierNameConflict)
        entry = entries.get(agent.name)
        if entry != last.get(agent.name) and (entry or last.get(agent.name)):
            # A merge patch replaces the whole entry only key by key: null first drops keys left out now.
            kube.patch_status("LoRATier", ns, tier, {"serving": None} if entry is None else {"serving": {
                **dict.fromkeys(last.get(agent.name) or {}), **entry}})  # fmt: skip
            patched += 1
    return patched


def export_swarm_metrics(ns: str, name: str, status: SwarmStatus, agents: list[Obj], members: set[str]) -> None:
    """Per-agent gauges from the pass's serving entries, per-pod ones from the status just computed; the series
    of agents no longer in the Swarm (``members``) and of pods no longer listed are dropped."""
    for a in agents:
        AGENT_SERVED_PODS.labels(ns, name, a["name"]).set(a.get("servedOnPods") or 0)
        AGENT_PLACED_PODS.labels(ns, name, a["name"]).set(len(a.get("placedOn") or []))
    for p in status.pods:
        POD_LOADED_ADAPTERS.labels(ns, name, p.name).set(p.loaded_adapters or 0)
    for gauge in (AGENT_SERVED_PODS, AGENT_PLACED_PODS):
        keep_swarm_series(gauge, ns, name, "agent", members)
    keep_swarm_series(POD_LOADED_ADAPTERS, ns, name, "pod", {p.name for p in status.pods})

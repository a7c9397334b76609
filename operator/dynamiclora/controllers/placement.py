"""Which ready pods serve which agent in a serving pass (issue 19; the pure choice is serving/placement.py).

The placement of the last pass is read back from each agent's context tier (``status.serving.placedOn``,
pod ordinals), so it is sticky across passes and across operator restarts. A pod that an agent leaves keeps the adapter
for one more pass (draining): the status and the agent's EndpointSlice written by this pass no longer name
the pod, and the next pass unloads it, so a client that followed the old endpoints is not refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dynamiclora.api.common import TierLevel
from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.names import LABEL_SWARM, agent_tier_name
from dynamiclora.kube import Obj
from dynamiclora.serving.placement import Placement, Slot, place, queued_adapters


def ordinal(pod: str) -> int | None:
    """A StatefulSet pod's ordinal (``support-vllm-3`` -> 3), None for a name without one."""
    tail = pod.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


@dataclass
class PodPlan:
    """What a pass serves: each pod's agents, the agents it keeps one more pass, and those without room."""

    placement: Placement = field(default_factory=Placement)
    draining: dict[str, set[str]] = field(default_factory=dict)  # pod -> agents placed there last pass only
    hot: set[str] = field(default_factory=set)  # agents given placement.hotReplicas this pass

    def agents_on(self, pod: str) -> set[str]:
        return {a for a, pods in self.placement.pods.items() if pod in pods}

    def ordinals(self, agent: str) -> list[int]:
        return sorted(o for p in self.placement.pods.get(agent, []) if (o := ordinal(p)) is not None)


def serving_entries(swarm: str, sw: Swarm, tiers: Mapping[str, Obj]) -> dict[str, Obj]:
    """Agent -> what the last pass served of it (its context tier's ``status.serving``), for the Swarm's agents
    whose context tier is this Swarm's (a same-named tier of another Swarm is not read)."""
    out: dict[str, Obj] = {}
    for agent in sw.spec.agents:
        tier = tiers.get(agent_tier_name(swarm, agent.name, TierLevel.CONTEXT)) or {}
        entry = (tier.get("status") or {}).get("serving")
        if entry and tier.get("metadata", {}).get("labels", {}).get(LABEL_SWARM) == swarm:
            out[agent.name] = entry
    return out


def previous_placement(entries: Mapping[str, Obj], pods: Iterable[str]) -> dict[str, list[str]]:
    """Agent -> the ready pods the last pass placed it on (``placedOn`` of its :func:`serving_entries`)."""
    by_ordinal = {o: p for p in pods if (o := ordinal(p)) is not None}
    out: dict[str, list[str]] = {}
    for agent, entry in entries.items():
        placed = [by_ordinal[o] for o in entry.get("placedOn") or [] if o in by_ordinal]
        if placed:
            out[agent] = placed
    return out


def plan_pods(sw: Swarm, last: Mapping[str, Obj], agents: list[str], pods: list[str],
              queued: Iterable[str] = ()) -> PodPlan:  # fmt: skip
    """Place ``agents`` on the ready ``pods`` (names) within ``--max-cpu-loras`` each, sticky to the last pass
    (``last``: :func:`serving_entries`); the ``queued`` ones (see :func:`queued_agents`) get
    ``placement.hotReplicas`` pods when it is set."""
    spec = sw.spec.inference.placement
    previous = previous_placement(last, pods)
    slots = [Slot(p, sw.spec.inference.max_cpu_loras) for p in pods]
    hot = set(queued) & set(agents) if spec.hot_replicas is not None else set()
    more = dict.fromkeys(hot, spec.hot_replicas or spec.replicas_per_agent)
    placement = place(agents, slots, spec.replicas_per_agent, previous, more)
    return PodPlan(placement, draining(previous, placement.pods), hot)


def queued_agents(metrics_texts: Iterable[str], since: float, swarm: str) -> set[str]:
    """The Swarm's agents whose requests queued for a LoRA slot on any pod at or after ``since`` (unix
    seconds), from each pod's ``/metrics`` (vLLM's ``vllm:lora_requests_info``)."""
    prefix = f"{swarm}-"
    names = set().union(*(queued_adapters(text, since) for text in metrics_texts))
    return {n[len(prefix):] for n in names if n.startswith(prefix)}


def draining(previous: Mapping[str, list[str]], now: Mapping[str, list[str]]) -> dict[str, set[str]]:
    """Pod -> agents it held last pass and no longer holds (kept loaded until the next pass)."""
    out: dict[str, set[str]] = {}
    for agent, pods in previous.items():
        for pod in set(pods) - set(now.get(agent, ())):
            out.setdefault(pod, set()).add(agent)
    return out


def served_everywhere(entry: Obj) -> bool:
    """Whether an agent's status entry says its current version is served on every pod it is placed on."""
    placed = entry.get("placedOn") or []
    return bool(placed) and entry.get("servedOnPods") == len(placed)

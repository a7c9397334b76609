"""Which vLLM pods hold which agent's adapter (issue 19): a bounded set per agent, within each pod's room.

Every pod holding every agent's adapter does not scale: vLLM keeps ``--max-cpu-loras`` adapters resident
and reloads the others from disk on use (an eviction storm with 1,000 agents). :func:`place` gives each
agent ``replicas`` pods (all pods when there are fewer), never more adapters on a pod than its room, and
spreads them evenly. It is sticky: an agent keeps the pods it had while they are ready and within room, so
adapters do not move back and forth between passes; only what must move (a pod gone, a pod over its room,
a changed replica count) moves. Pure: the serving reconcile feeds it the ready pods and the previous
placement (from the Swarm status) and loads each adapter only where it is placed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Slot:
    """One ready pod and how many adapters it may hold (None: no limit)."""

    pod: str
    room: int | None = None


@dataclass
class Placement:
    """The outcome: agent -> its pods (sorted), and the agents that got fewer than asked or none."""

    pods: dict[str, list[str]] = field(default_factory=dict)
    short: dict[str, int] = field(default_factory=dict)  # agent -> replicas it lacks (no room left)

    def on(self, pod: str) -> list[str]:
        """The agents placed on ``pod``."""
        return sorted(a for a, pods in self.pods.items() if pod in pods)


def _spread(agent: str, pod: str) -> str:
    # Ties between equally loaded pods are broken per agent, so agents do not all pile onto pod 0.
    return hashlib.sha256(f"{agent}\0{pod}".encode()).hexdigest()


def place(agents: Sequence[str], slots: Sequence[Slot], replicas: int,
          previous: Mapping[str, Sequence[str]] | None = None,
          more: Mapping[str, int] | None = None) -> Placement:  # fmt: skip
    """Each agent's pods: ``min(replicas, len(slots))`` of them (``more[agent]`` for the agents it names, e.g.
    hot ones), within every pod's room, sticky to ``previous`` (agent -> pods it was placed on),
    least-loaded pods first for what is new."""
    if replicas < 1 or any(n < 1 for n in (more or {}).values()):
        raise ValueError(f"replicas must be >= 1, got {replicas} and {dict(more or {})}")
    room = {s.pod: s.room for s in slots}
    load = dict.fromkeys(room, 0)
    wants = {a: min((more or {}).get(a, replicas), len(slots)) for a in agents}
    want = max(wants.values(), default=0)
    out = Placement({a: [] for a in agents})

    def fits(pod: str) -> bool:
        limit = room[pod]
        return limit is None or load[pod] < limit

    def add(agent: str, pod: str) -> None:
        out.pods[agent].append(pod)
        load[pod] += 1

    # One replica per agent per round: when room runs out, it runs out on extra replicas, not on an agent's
    # only one. In each round what still holds is kept first (sticky), then the agents without are placed.
    for wanted in range(1, want + 1):
        short = [a for a in agents if len(out.pods[a]) < min(wanted, wants[a])]
        for agent in short:
            kept = [p for p in (previous or {}).get(agent, ()) if p in room and p not in out.pods[agent]]
            if kept := [p for p in kept if fits(p)]:
                add(agent, kept[0])
        for agent in short:
            if len(out.pods[agent]) < min(wanted, wants[agent]):
                free = [p for p in room if p not in out.pods[agent] and fits(p)]
                if free:
                    add(agent, min(free, key=lambda p: (load[p], _spread(agent, p))))
    out.short = {a: wants[a] - len(p) for a, p in out.pods.items() if len(p) < wants[a]}
    out.pods = {a: sorted(p) for a, p in out.pods.items()}
    return out


LORA_INFO = "vllm:lora_requests_info"  # vLLM's gauge: one series per (running, waiting) set, valued when last seen


def queued_adapters(metrics_text: str, since: float) -> set[str]:
    """Adapters that waited for a LoRA slot on a pod (vLLM's ``waiting_lora_adapters``) at or after ``since``
    (unix seconds): requests queued for them, so more pods should hold them. Read with Prometheus' parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == LORA_INFO and sample.value >= since:
                out |= {n for n in sample.labels.get("waiting_lora_adapters", "").split(",") if n}
    return out

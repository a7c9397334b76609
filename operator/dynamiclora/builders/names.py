"""Names and labels of everything the operator creates, in one place."""

from __future__ import annotations

import hashlib

from dynamiclora import FIELD_MANAGER
from dynamiclora.api.common import TierLevel

LABEL_SWARM = "dynamiclora.io/swarm"
ANNOTATION_SPEC_HASH = "dynamiclora.io/spec-hash"
LABEL_AGENT = "dynamiclora.io/agent"
LABEL_TIER = "dynamiclora.io/tier"
LABEL_LEVEL = "dynamiclora.io/level"
LABEL_COMPONENT = "dynamiclora.io/component"
LABEL_POLICY = "dynamiclora.io/policy"
EXECUTOR_LABEL = "dynamiclora.io/executor"
ANNOTATION_TRAIN_RECORDS = "dynamiclora.io/records"
ANNOTATION_JOB_KIND = "dynamiclora.io/job-kind"


def base_labels(component: str) -> dict[str, str]:
    """Labels every child carries."""
    return {
        "app.kubernetes.io/name": "dynamiclora",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        LABEL_COMPONENT: component,
    }


def short_hash(*parts: str, n: int = 6) -> str:
    """A stable short hash (for names that must stay within 63 characters)."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def dns_name(*parts: str, limit: int = 63) -> str:
    """Join parts with '-', shortening with a hash when the result exceeds ``limit``."""
    name = "-".join(p for p in parts if p)
    if len(name) <= limit:
        return name
    h = short_hash(name)
    return f"{name[: limit - len(h) - 1].rstrip('-')}-{h}"


def inference_name(swarm: str) -> str:
    """StatefulSet and headless Service of a swarm's vLLM pods."""
    return dns_name(swarm, "vllm", limit=52)  # StatefulSet pod names add "-<ordinal>" and a hash label


def agent_tier_name(swarm: str, agent: str, level: TierLevel | str) -> str:
    """LoRATier of one per-agent level."""
    return dns_name(swarm, agent, str(level), limit=253)


def served_adapter_name(swarm: str, agent: str) -> str:
    """The stable vLLM model name clients use to talk to an agent."""
    return f"{swarm}-{agent}"


def training_job_name(tier: str, version: int) -> str:
    """Deterministic: one Job per (tier, target version), so a restarted operator finds it again."""
    return dns_name(tier, "train", f"v{version}")


def consolidation_job_name(policy: str, target_tier: str, seq: int) -> str:
    """Deterministic name of the seq-th consolidation into ``target_tier`` by ``policy``."""
    return dns_name("mig", policy, target_tier, f"{seq}")

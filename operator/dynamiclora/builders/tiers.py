"""Swarm -> the per-agent LoRATier objects it implies (context and agent tiers, owned by the Swarm)."""

from __future__ import annotations

import hashlib
import json

from dynamiclora import API_VERSION
from dynamiclora.api.common import TierLevel
from dynamiclora.api.swarm import Agent, Swarm
from dynamiclora.builders.names import (
    ANNOTATION_SPEC_HASH,
    LABEL_AGENT,
    LABEL_LEVEL,
    LABEL_SWARM,
    agent_tier_name,
    base_labels,
)
from dynamiclora.kube import Obj, owner_reference


def _tier_spec(swarm: str, sw: Swarm, agent: Agent, level: TierLevel) -> Obj:
    """The spec of one generated tier; an agent tier takes the context tier's adapter shape (it only
    receives migrated context components, so both must target the same modules)."""
    ctx, tpl = sw.spec.context_tier, sw.spec.agent_tier
    gate = (ctx.quality_gate if level is TierLevel.CONTEXT else tpl.quality_gate).wire()
    if agent.regression_set:
        gate["regressionSet"] = agent.regression_set
    spec: Obj = {"level": level.value, "swarmRef": swarm, "agent": agent.name, "alpha": ctx.alpha,
                 "targetModules": list(ctx.target_modules), "qualityGate": gate}
    if level is TierLevel.CONTEXT:
        training = ctx.training.wire()
        if agent.anchor_set:
            training["anchorSet"] = agent.anchor_set
        spec |= {"rank": ctx.rank, "plasticity": ctx.plasticity.wire(), "training": training,
                 "retention": ctx.retention.wire()}
    else:
        spec |= {"rank": tpl.rank, "retention": tpl.retention.wire()}
    return spec


def _tier(body: Obj, sw: Swarm, agent: Agent, level: TierLevel) -> Obj:
    swarm = body["metadata"]["name"]
    spec = _tier_spec(swarm, sw, agent, level)
    # The Swarm owns the pin of generated tiers (server-side apply under our field manager), so removing
    # it from the Swarm removes it from the tier: normal promotion resumes.
    pin = getattr(agent.pinned_versions, level.value, None) if agent.pinned_versions else None
    if pin:
        spec["pinnedVersion"] = pin
    return {
        "apiVersion": API_VERSION,
        "kind": "LoRATier",
        "metadata": {
            # The hash makes a removed field (e.g. an unpinned version) visible to the operator's "is the
            # live tier up to date" check, which otherwise only sees fields that are present.
            "annotations": {
                ANNOTATION_SPEC_HASH: hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
            },
            "name": agent_tier_name(swarm, agent.name, level),
            "namespace": body["metadata"]["namespace"],
            "labels": {
                **base_labels("tier"),
                LABEL_SWARM: swarm,
                LABEL_AGENT: agent.name,
                LABEL_LEVEL: level.value,
            },
            "ownerReferences": [owner_reference(body)],
        },
        "spec": spec,
    }


def build_agent_tiers(body: Obj, sw: Swarm) -> list[Obj]:
    """For every agent: its context tier and its agent tier (migrations go context -> agent -> swarm)."""
    out: list[Obj] = []
    for agent in sw.spec.agents:
        out += [_tier(body, sw, agent, TierLevel.CONTEXT), _tier(body, sw, agent, TierLevel.AGENT)]
    return out


def stack_tier_names(swarm: str, sw: Swarm, agent: str) -> list[str]:
    """The tiers composed into one agent's served adapter, fastest first."""
    names = [agent_tier_name(swarm, agent, TierLevel.CONTEXT), agent_tier_name(swarm, agent, TierLevel.AGENT)]
    shared = sw.spec.shared_tiers
    names += [n for n in (shared.swarm, shared.domain, shared.foundation) if n]
    return names

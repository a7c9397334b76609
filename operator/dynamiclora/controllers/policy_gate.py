"""The quality gate and the audit trail of consolidations (migrations and consensus).

A consolidation Job evaluates the stacks it changes before and after (see ``training/consolidate_gate``)
and publishes nothing when they regress; the operator hands it what to evaluate (base model, the
agents' records and regression sets, the unchanged slower tiers) and records the outcome in the target
tier's audit trail, once per Job.
"""

from __future__ import annotations

from typing import Any

from dynamiclora.api.common import TierLevel
from dynamiclora.api.swarm import Swarm
from dynamiclora.api.tier import LoRATierSpec, QualityGate
from dynamiclora.builders.inference import job_model_path
from dynamiclora.builders.jobs import ConsolidationInputs, experience_location, storage_path, store_uri, tier_ref
from dynamiclora.controllers.promotion import compact_audit, served_version_of
from dynamiclora.controllers.tier_storage import StoreAccess
from dynamiclora.kube import Kube
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.base import RECORDS_SUFFIX
from dynamiclora.storage.schemes import local_path

ORDER = [TierLevel.CONTEXT, TierLevel.AGENT, TierLevel.SWARM, TierLevel.DOMAIN, TierLevel.FOUNDATION]


def _has_records(location: str) -> bool:
    root = local_path(location)
    if root is None:
        return True  # listing a bucket here would cost a call per agent; the Job reports an empty source
    return root.is_dir() and any(root.rglob(f"*{RECORDS_SUFFIX}"))


def consolidation_gate_args(kube: Kube, settings: OperatorSettings, ns: str, sw: Swarm,
                            inputs: ConsolidationInputs) -> dict[str, Any]:  # fmt: skip
    """Quality-gate fields of a consolidation into ``inputs.target_tier`` (empty when the gate is off)."""
    target = kube.get("LoRATier", ns, inputs.target_tier)
    if target is None:
        return {}
    gate = QualityGate.model_validate(target["spec"].get("qualityGate") or {})
    if not gate.enabled:
        return {}
    level = TierLevel(target["spec"]["level"])
    storage = sw.spec.storage
    store = store_uri(storage, settings)
    agents = list(sw.spec.agents)
    if inputs.source_tier:
        source = kube.get("LoRATier", ns, inputs.source_tier)
        owner = (source or {}).get("spec", {}).get("agent")
        if owner:
            agents = [a for a in agents if a.name == owner]
    data: list[str] = []
    regression: list[str] = []
    for agent in agents:
        location = experience_location(storage, sw.spec.experience.prefix, ns, sw.metadata.name or "", agent.name,
                                       settings)  # fmt: skip
        if _has_records(location):
            data.append(location)
        if agent.regression_set:
            regression.append(storage_path(storage, agent.regression_set, settings))
    if not data and not regression:
        return {}  # nothing to evaluate on yet: the Job would have no figures to compare
    return {"gate_base_model": job_model_path(sw, settings), "gate_max_regression": gate.max_regression,
            "gate_significance": gate.significance, "gate_records": gate.eval_records, "gate_data": data,
            "gate_regression": regression,
            "gate_frozen": served_beneath(kube, ns, sw, level, store)}  # fmt: skip


def served_beneath(kube: Kube, ns: str, sw: Swarm, level: TierLevel, store: str) -> list[str]:
    """References of the shared tiers served beneath ``level`` (their served versions), slowest last."""
    frozen: list[str] = []
    shared = {TierLevel.SWARM: sw.spec.shared_tiers.swarm, TierLevel.DOMAIN: sw.spec.shared_tiers.domain,
              TierLevel.FOUNDATION: sw.spec.shared_tiers.foundation}  # fmt: skip
    for slower in ORDER[ORDER.index(level) + 1 :]:
        name = shared.get(slower)
        tier = kube.get("LoRATier", ns, name) if name else None
        version = served_version_of(tier) if tier else None
        if name and version:
            frozen.append(tier_ref(store, ns, name, version))
    return frozen


def recurrence_args(kube: Kube, settings: OperatorSettings, ns: str, sw: Swarm,
                    inputs: ConsolidationInputs) -> dict[str, Any]:  # fmt: skip
    """What a migration by recurrence needs: the source agent's records (quarantine and held-out share
    as its training Jobs see them), the base model, the tiers served beneath the destination, and the
    source's training settings: the destination learns the stable answers as the source learned them
    (it is stored at LoRA scaling 1, so the rate is scaled by the source's alpha / rank; a rate the model
    does not take is halved by the Job itself, training/anchored.py)."""
    source = kube.get("LoRATier", ns, inputs.source_tier or "")
    target = kube.get("LoRATier", ns, inputs.target_tier)
    if source is None or target is None or not source["spec"].get("agent"):
        return {}
    src, dst = LoRATierSpec.model_validate(source["spec"]), LoRATierSpec.model_validate(target["spec"])
    storage = sw.spec.storage
    location = experience_location(storage, sw.spec.experience.prefix, ns, sw.metadata.name or "", src.agent or "",
                                   settings)  # fmt: skip
    quarantine = (source.get("status") or {}).get("quarantine") or []
    return {"records": [location], "exclude_window": [f"{w['from']}/{w['to']}" for w in quarantine],
            "holdout_fraction": src.quality_gate.holdout_fraction, "model_dir": job_model_path(sw, settings),
            "frozen": served_beneath(kube, ns, sw, TierLevel(dst.level), store_uri(storage, settings)),
            "distill_steps": src.training.max_steps,
            "distill_lr": src.plasticity.learning_rate * src.alpha / src.rank,
            "distill_batch_size": src.training.batch_size, "threads": settings.trainer_threads,
            **({"anchor_data": storage_path(storage, src.training.anchor_set, settings),
                "anchor_weight": src.training.anchor_weight} if src.training.anchor_set else {})}  # fmt: skip


def audit_consolidation(store: StoreAccess, ns: str, target: str, job_name: str, result: dict[str, Any],
                        source: str | None = None, settings: OperatorSettings | None = None) -> str:  # fmt: skip
    """Append the Job's outcome to the target tier's audit trail (once per Job), then compact it if due
    (see :func:`compact_audit`); returns a summary."""
    from dynamiclora.storage.audit import AuditLog

    gate = result.get("gate") if isinstance(result.get("gate"), dict) else None
    report = result.get("report", {}) or {}
    mode = str(result.get("mode", "migrate"))
    published = [p for p in result.get("published", []) or [] if isinstance(p, dict)]
    version = next((int(p["version"]) for p in published if str(p.get("tier", "")).endswith(f"/{target}")), None)
    contributors: list[dict[str, Any]] = []
    for inp in result.get("inputs", []) or []:
        if isinstance(inp, dict) and inp.get("tier"):
            contributors.append({k: inp[k] for k in ("tier", "version", "weight", "agent") if k in inp})
    if source and not contributors:
        contributors.append({"tier": source})
    if not contributors and mode == "consensus":
        for tier, weight in zip(report.get("agents", []) or [], report.get("weights", []) or [], strict=False):
            contributors.append({"tier": str(tier), "weight": float(weight)})
    rejected = result.get("status") == "rejected"
    if rejected:
        kind, msg = (
            "rejection",
            f"{mode} by Job {job_name} rejected by the quality gate: {(gate or {}).get('reason', '')}",
        )
    elif not result.get("changed"):
        return f"{mode} by Job {job_name} changed nothing"
    else:
        kind = "consensus" if mode == "consensus" else "migration"
        detail = f"{report.get('migrated', 0)} migrated, {report.get('bypassed', 0)} bypassed" if kind == "migration" \
            else f"{len(contributors)} agents ({report.get('rule', '')})"  # fmt: skip
        msg = f"{kind} by Job {job_name} into v{version}: {detail}"
    audit = AuditLog(store.open(), ns, target)
    audit.append(
        kind, id=f"job/{job_name}", version=version, actor=f"job/{job_name}", contributors=contributors,
        gate=gate, message=msg[:1000],
    )  # fmt: skip
    compact_audit(audit, settings)
    return msg

"""MigrationPolicy reconciliation: decide which consolidations to run, launch them, record outcomes.

Stability itself is judged inside the consolidation Job (it needs the tensors); the operator decides
*when* a tier pair is due (its source advanced since the last evaluation), hands the Job the bandwidth
left in the current period, and records every decision the Job reports. Job names are deterministic
(policy, target tier, input version), so a restarted operator re-adopts a running Job instead of starting
a second one, and the Job itself publishes at most one new version per input (see ``consolidate``).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from dynamiclora.api.common import TierLevel
from dynamiclora.api.policy import MigrationPolicy, TierPair
from dynamiclora.api.swarm import Swarm
from dynamiclora.api.tier import TrainingTemplate
from dynamiclora.builders.jobs import ConsolidationInputs, build_consolidation_job, store_uri
from dynamiclora.builders.names import agent_tier_name, consolidation_job_name
from dynamiclora.controllers.common import Event, duration_s, generation, job_state, parse, parse_time
from dynamiclora.controllers.conditions import set_condition
from dynamiclora.controllers.policy_gate import audit_consolidation, consolidation_gate_args
from dynamiclora.controllers.promotion import agent_trust, latest_accepted
from dynamiclora.kube import Kube, Obj, now_rfc3339
from dynamiclora.metrics import JOBS, MIGRATED_COMPONENTS, MIGRATIONS
from dynamiclora.settings import OperatorSettings

DECISION_LIMIT = 100
ANNOTATION_KEY = "dynamiclora.io/evaluation-key"
ANNOTATION_INPUTS = "dynamiclora.io/inputs"
CONSOLIDATOR = TrainingTemplate(
    resources={"requests": {"cpu": "1", "memory": "2Gi"}}, backoff_limit=3, active_deadline_seconds=1800
)


@dataclass
class Candidate:
    """One consolidation that is due."""

    key: str  # what ``evaluated`` is keyed by
    version: int  # newest input version
    inputs: ConsolidationInputs


@dataclass
class PolicyOutcome:
    status: Obj
    events: list[Event] = field(default_factory=list)


def result_path(store: str, ns: str, job: str) -> str:
    """Where a consolidation Job writes its result (on the storage PVC, read back by the operator)."""
    return f"{store.removeprefix('file://')}/_jobs/{ns}/{job}.json"


def _version(store: str, ns: str, tier: str) -> int | None:
    """Newest accepted version in the store itself (tier status may lag behind a Job that just published)."""
    from dynamiclora.storage.uri import open_store

    ref = latest_accepted(open_store(store), ns, tier)
    return ref.version if ref else None


def _input_version(store: str, ns: str, inputs: list[str]) -> int:
    """Monotonic summary of the input tiers' versions (each only grows)."""
    return sum(_version(store, ns, t) or 0 for t in inputs)


def _candidates(kube: Kube, settings: OperatorSettings, ns: str, swarm_name: str, sw: Swarm,
                pol: MigrationPolicy, pair: TierPair) -> list[Candidate]:  # fmt: skip
    src, dst = TierLevel(pair.source), TierLevel(pair.target)
    storage = sw.spec.storage
    store = store_uri(storage, settings)
    out: list[Candidate] = []
    if dst.per_agent:
        for agent in sw.spec.agents:
            s_name = agent_tier_name(swarm_name, agent.name, src)
            d_name = agent_tier_name(swarm_name, agent.name, dst)
            v = _version(store, ns, s_name)
            if v is None or v < pol.spec.stability.window:
                continue
            out.append(Candidate(s_name, v, ConsolidationInputs("migrate", d_name, storage, source_tier=s_name)))
        return out
    target = {TierLevel.SWARM: sw.spec.shared_tiers.swarm, TierLevel.DOMAIN: sw.spec.shared_tiers.domain,
              TierLevel.FOUNDATION: sw.spec.shared_tiers.foundation}[dst]  # fmt: skip
    if not target:
        return out
    if src.per_agent:
        tiers, weights = [], []
        live = {t["metadata"]["name"]: t for t in kube.list("LoRATier", ns, {"dynamiclora.io/swarm": swarm_name})}
        for agent in sw.spec.agents:
            name = agent_tier_name(swarm_name, agent.name, src)
            v = _version(store, ns, name)
            if v is not None:
                tiers.append(name)
                # Trust = the user's weight scaled by the agent's record at the quality gate, so an agent
                # whose updates keep being rejected loses influence over the shared tier.
                trusted = sw.spec.consensus.trust_weighting
                weights.append(agent_trust(live, swarm_name, agent) if trusted else agent.trust_weight)
        if len(tiers) >= pol.spec.consensus.min_agents:
            inputs = ConsolidationInputs("consensus", target, storage, agent_tiers=tiers, weights=weights,
                                         args=["--rule", str(pol.spec.consensus.rule)])  # fmt: skip
            out.append(Candidate(f"consensus:{target}", _input_version(store, ns, tiers), inputs))
        return out
    source = {TierLevel.SWARM: sw.spec.shared_tiers.swarm, TierLevel.DOMAIN: sw.spec.shared_tiers.domain}.get(src)
    if source and (v := _version(store, ns, source)) and v >= pol.spec.stability.window:
        out.append(Candidate(source, v, ConsolidationInputs("migrate", target, storage, source_tier=source)))
    return out


def _migrate_args(pol: MigrationPolicy, remaining: int, bypass_left: int) -> list[str]:
    s, b = pol.spec.stability, pol.spec.bandwidth
    args = [
        "--method", str(s.method), "--threshold", f"{s.threshold:g}", "--min-consecutive",
        str(s.min_consecutive_windows), "--window", str(s.window), "--max-migrations", str(max(remaining, 0)),
        "--max-energy-fraction", f"{b.max_energy_fraction:g}",
    ]  # fmt: skip
    bypass = pol.spec.emergency_bypass.enabled and bypass_left > 0
    args.append("--emergency-bypass" if bypass else "--no-emergency-bypass")
    return args


def reconcile_policy(kube: Kube, settings: OperatorSettings, body: Obj) -> PolicyOutcome:
    """One pass: collect finished Jobs, then launch the consolidations that are due."""
    pol = parse(MigrationPolicy, body)
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    gen = generation(body)
    old: Obj = dict(body.get("status") or {})
    st: Obj = {k: v for k, v in old.items() if k != "conditions"}
    conditions: list[Obj] = list(old.get("conditions", []))
    events: list[Event] = []
    now = dt.datetime.now(dt.UTC)
    decisions: list[Obj] = list(old.get("decisions", []))

    period_start = parse_time(old.get("periodStart"))
    if period_start is None or (now - period_start).total_seconds() >= duration_s(pol.spec.bandwidth.period):
        st.update(periodStart=now_rfc3339(), migrationsThisPeriod=0, bypassesThisPeriod=0)

    swarms = _swarms(kube, ns, pol)
    stores = {sn: store_uri(sw.spec.storage, settings) for sn, sw in swarms.items()}

    active: list[str] = []
    busy_targets: set[str] = set()
    evaluated: dict[str, int] = dict(old.get("evaluated", {}))
    for job_name in old.get("activeJobs", []):
        job = kube.get("Job", ns, job_name)
        state = job_state(job) if job else "Gone"
        labels = (job or {}).get("metadata", {}).get("labels", {})
        if state == "Running":
            active.append(job_name)
            busy_targets.add(labels.get("dynamiclora.io/tier", ""))
            continue
        store = stores.get(labels.get("dynamiclora.io/swarm", ""), next(iter(stores.values()), ""))
        events.append(_record_job(job_name, state, job, store, ns, st, decisions))
        # What the Job itself published must not look like new input to the next evaluation.
        annotations = (job or {}).get("metadata", {}).get("annotations", {})
        key, inputs = annotations.get(ANNOTATION_KEY), annotations.get(ANNOTATION_INPUTS, "")
        if key and store:
            evaluated[key] = _input_version(store, ns, [t for t in inputs.split(",") if t])

    if pol.spec.suspend:
        st["phase"] = "Suspended"
    else:
        last = parse_time(old.get("lastEvaluationTime"))
        due = last is None or (now - last).total_seconds() >= duration_s(pol.spec.interval)
        if due:
            st["lastEvaluationTime"] = now_rfc3339()
            remaining = pol.spec.bandwidth.max_migrations_per_period - int(st.get("migrationsThisPeriod", 0))
            bypass = pol.spec.emergency_bypass
            bypass_left = bypass.max_per_period - int(st.get("bypassesThisPeriod", 0)) if bypass.enabled else 0
            for swarm_name, sw in swarms.items():
                for pair in pol.spec.pairs:
                    for cand in _candidates(kube, settings, ns, swarm_name, sw, pol, pair):
                        if evaluated.get(cand.key, 0) >= cand.version:
                            continue
                        job_name = consolidation_job_name(name, cand.inputs.target_tier, cand.version)
                        if job_name in active or cand.inputs.target_tier in busy_targets:
                            continue
                        if cand.inputs.mode == "migrate" and remaining <= 0 and bypass_left <= 0:
                            decisions.append(_decision(cand, "Throttled", "bandwidth exhausted for this period"))
                            st["migrationsThrottled"] = int(st.get("migrationsThrottled", 0)) + 1
                            MIGRATIONS.labels("Throttled").inc()
                            evaluated[cand.key] = cand.version
                            continue
                        args = list(cand.inputs.args)
                        if cand.inputs.mode == "migrate":
                            args += _migrate_args(pol, remaining, bypass_left)
                        if pol.spec.dry_run:
                            args.append("--dry-run")
                        store = stores[swarm_name]
                        args += consolidation_gate_args(kube, settings, ns, sw, cand.inputs)
                        args += ["--result-file", result_path(store, ns, job_name), "--base-model",
                                 sw.spec.base_model.name]  # fmt: skip
                        inputs = ConsolidationInputs(cand.inputs.mode, cand.inputs.target_tier, cand.inputs.storage,
                                                     cand.inputs.source_tier, cand.inputs.agent_tiers,
                                                     cand.inputs.weights, args)  # fmt: skip
                        job = build_consolidation_job(body, inputs, job_name, CONSOLIDATOR, settings)
                        job["metadata"]["labels"]["dynamiclora.io/swarm"] = swarm_name
                        job["metadata"]["annotations"][ANNOTATION_KEY] = cand.key
                        job["metadata"]["annotations"][ANNOTATION_INPUTS] = ",".join(
                            [cand.inputs.source_tier] if cand.inputs.source_tier else cand.inputs.agent_tiers
                        )
                        job["spec"]["template"]["metadata"]["labels"]["dynamiclora.io/swarm"] = swarm_name
                        if kube.create(job) is not None:
                            JOBS.labels("consolidation", "started").inc()
                            events.append(Event("Normal", "ConsolidationStarted",
                                                f"Job {job_name}: {cand.inputs.mode} into {cand.inputs.target_tier}"))
                        active.append(job_name)
                        busy_targets.add(cand.inputs.target_tier)
                        evaluated[cand.key] = cand.version
        st["phase"] = "Active"
    st["evaluated"] = evaluated

    st["activeJobs"] = active
    st["migrationsPending"] = len(active)
    st["decisions"] = decisions[-DECISION_LIMIT:]
    st["observedGeneration"] = gen
    st["conditions"] = set_condition(
        conditions, "Ready", True, "Evaluating" if not pol.spec.suspend else "Suspended",
        f"{len(active)} consolidation Job(s) in flight; dry run" if pol.spec.dry_run
        else f"{len(active)} consolidation Job(s) in flight", gen,
    )  # fmt: skip
    return PolicyOutcome(st, events)


def _swarms(kube: Kube, ns: str, pol: MigrationPolicy) -> dict[str, Swarm]:
    if pol.spec.swarm_ref:
        body = kube.get("Swarm", ns, pol.spec.swarm_ref)
        return {pol.spec.swarm_ref: parse(Swarm, body)} if body else {}
    return {b["metadata"]["name"]: parse(Swarm, b) for b in kube.list("Swarm", ns)}


def _decision(cand: Candidate, outcome: str, reason: str, components: int = 0, energy: float = 0.0,
              job: str | None = None) -> Obj:  # fmt: skip
    d: Obj = {
        "time": now_rfc3339(),
        "sourceTier": cand.inputs.source_tier or ",".join(cand.inputs.agent_tiers),
        "targetTier": cand.inputs.target_tier,
        "outcome": outcome,
        "components": components,
        "energyFraction": round(energy, 6),
        "reason": reason[:1024],
    }
    if job:
        d["job"] = job
    return d


def _record_job(
    job_name: str, state: str, job: Obj | None, store: str, ns: str, st: Obj, decisions: list[Obj]
) -> Event:
    """Turn a finished consolidation Job into decisions and counters."""
    target = (job or {}).get("metadata", {}).get("labels", {}).get("dynamiclora.io/tier", "?")
    if state != "Complete":
        JOBS.labels("consolidation", "failed").inc()
        decisions.append({"time": now_rfc3339(), "sourceTier": "?", "targetTier": target, "outcome": "Rejected",
                          "reason": f"Job {job_name} {state.lower()}", "job": job_name,
                          "components": 0, "energyFraction": 0.0})  # fmt: skip
        return Event("Warning", "ConsolidationFailed", f"Job {job_name} {state.lower()}")
    JOBS.labels("consolidation", "succeeded").inc()
    try:
        result = json.loads(Path(result_path(store, ns, job_name)).read_text())
    except (OSError, ValueError) as exc:
        return Event("Warning", "ResultMissing", f"Job {job_name} succeeded but its result is unreadable: {exc}")
    report = result.get("report", {})
    source = (job or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0].get("args", [])
    src_tier = source[source.index("--source") + 1].rsplit("/", 1)[-1] if "--source" in source else "agents"
    summary = audit_consolidation(store, ns, target, job_name, result, src_tier if "--source" in source else None)
    if result.get("status") == "rejected":
        decisions.append({"time": now_rfc3339(), "sourceTier": src_tier, "targetTier": target, "outcome": "Rejected",
                          "reason": summary[:1024], "job": job_name, "components": 0,
                          "energyFraction": 0.0})  # fmt: skip
        MIGRATIONS.labels("Rejected").inc()
        return Event("Warning", "ConsolidationRejected", summary)
    if result.get("mode") == "consensus":
        decisions.append({"time": now_rfc3339(), "sourceTier": src_tier, "targetTier": target,
                          "outcome": "Migrated" if result.get("changed") else "DryRun", "job": job_name,
                          "components": 0, "energyFraction": 0.0,
                          "reason": f"consensus ({report.get('rule', '')}) of {len(report.get('weights', []))} agents"})
        return Event("Normal", "ConsensusDone", f"Job {job_name}: consensus into {target}")
    migrated, bypassed = int(report.get("migrated", 0)), int(report.get("bypassed", 0))
    throttled = int(report.get("throttled", 0))
    dry = bool(report.get("dryRun"))
    outcome = "DryRun" if dry else ("Migrated" if migrated else ("Bypassed" if bypassed else "Throttled"))
    if not (migrated or bypassed or throttled):
        outcome, reason = "Pending", "no component was stable enough yet"
    else:
        reason = f"{migrated} migrated, {bypassed} bypassed, {throttled} throttled"
    decisions.append({"time": now_rfc3339(), "sourceTier": src_tier, "targetTier": target, "outcome": outcome,
                      "components": migrated + bypassed, "job": job_name, "reason": reason,
                      "energyFraction": round(float(report.get("movedEnergyFraction", 0.0)), 6)})  # fmt: skip
    if not dry:
        st["migrationsDone"] = int(st.get("migrationsDone", 0)) + migrated + bypassed
        st["migrationsThisPeriod"] = int(st.get("migrationsThisPeriod", 0)) + migrated
        st["bypassesThisPeriod"] = int(st.get("bypassesThisPeriod", 0)) + bypassed
        MIGRATED_COMPONENTS.inc(migrated + bypassed)
    st["migrationsThrottled"] = int(st.get("migrationsThrottled", 0)) + throttled
    MIGRATIONS.labels(outcome).inc()
    return Event("Normal", "MigrationDone", f"Job {job_name}: {reason}{' (dry run)' if dry else ''}")

"""MigrationPolicy reconciliation: decide which consolidations to run, launch them, record outcomes.

Stability itself is judged inside the consolidation Job (it needs the tensors); the operator decides
*when* a tier pair is due (its source advanced since the last evaluation), launches at most
``bandwidth.maxConcurrentJobs`` Jobs at a time, reserves for each migration Job its share of the
period's budget that no other Job holds (see :class:`Budget`), and records every decision the Job
reports, including the launches the limits held back (``Throttled``). Job names are deterministic
(policy, target tier, input version), so a restarted operator re-adopts a running Job instead of starting
a second one, and the Job itself publishes at most one new version per input (see ``consolidate``).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from dynamiclora.api.common import TierLevel
from dynamiclora.api.conditions import ConditionType, EventType, Reason
from dynamiclora.api.policy import MigrationPolicy, MigrationPolicyStatus, PolicyPhase, StabilityMethod, TierPair
from dynamiclora.api.swarm import Swarm
from dynamiclora.api.tier import TrainingTemplate
from dynamiclora.builders.jobs import ConsolidationInputs, build_consolidation_job
from dynamiclora.builders.names import ANNOTATION_INPUTS, ANNOTATION_TARGET, agent_tier_name, consolidation_job_name
from dynamiclora.controllers.common import Event, duration_s, generation, job_state, parse, parse_time
from dynamiclora.controllers.conditions import set_condition, wire_status
from dynamiclora.controllers.job_failure import failure_reason
from dynamiclora.controllers.policy_gate import audit_consolidation, consolidation_gate_args, recurrence_args
from dynamiclora.controllers.promotion import agent_trust, latest_accepted
from dynamiclora.controllers.tier_storage import StoreAccess, guard_storage, store_access
from dynamiclora.kube import Kube, Obj, now_rfc3339
from dynamiclora.metrics import JOBS, MIGRATED_COMPONENTS, MIGRATIONS
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.base import StoreError
from dynamiclora.storage.results import read_result, result_uri

DECISION_LIMIT = 100
ANNOTATION_KEY = "dynamiclora.io/evaluation-key"
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
    """The status to write (the API's type) and the events to record."""

    status: MigrationPolicyStatus
    events: list[Event] = field(default_factory=list)

    def wire(self) -> Obj:
        """The status as it is written to the API server."""
        return wire_status("MigrationPolicy", self.status)


def result_path(store: str, ns: str, job: str) -> str:
    """Where a consolidation Job writes its result: in its store, on the volume or in the bucket."""
    return result_uri(store, ns, job)


def _version(store: StoreAccess, ns: str, tier: str) -> int | None:
    """Newest accepted version in the store itself (tier status may lag behind a Job that just published)."""
    ref = latest_accepted(store.open(), ns, tier)
    return ref.version if ref else None


def _input_version(store: StoreAccess, ns: str, inputs: list[str]) -> int:
    """Monotonic summary of the input tiers' versions (each only grows)."""
    return sum(_version(store, ns, t) or 0 for t in inputs)


def _versions_needed(pol: MigrationPolicy) -> int:
    """Source versions before a migration can find anything: a window of them to compare, or, judged by
    recurrence, as many training rounds as an answer must recur in."""
    s = pol.spec.stability
    return s.min_consecutive_windows if s.method == StabilityMethod.RECURRENCE else s.window


def _candidates(kube: Kube, settings: OperatorSettings, ns: str, swarm_name: str, sw: Swarm,
                pol: MigrationPolicy, pair: TierPair) -> list[Candidate]:  # fmt: skip
    src, dst = TierLevel(pair.source), TierLevel(pair.target)
    storage = sw.spec.storage
    store = store_access(kube, ns, storage, settings)  # the Swarm's S3 identity, not the operator's
    out: list[Candidate] = []
    # Only tiers this Swarm really owns: another Swarm's tier can carry the same generated name (the
    # Swarm reports that conflict), and its records and versions are not this Swarm's to move.
    live = {t["metadata"]["name"]: t for t in kube.list("LoRATier", ns, {"dynamiclora.io/swarm": swarm_name})}
    if dst.per_agent:
        for agent in sw.spec.agents:
            s_name = agent_tier_name(swarm_name, agent.name, src)
            d_name = agent_tier_name(swarm_name, agent.name, dst)
            if s_name not in live or d_name not in live:
                continue
            if (live[s_name].get("status") or {}).get("activeJob"):
                # Its training Job trains from the current version: moving content out of that version now
                # would leave the new version holding it too. Evaluated again once the Job is done.
                continue
            v = _version(store, ns, s_name)
            if v is None or v < _versions_needed(pol):
                continue
            out.append(Candidate(s_name, v, ConsolidationInputs("migrate", d_name, storage, source_tier=s_name)))
        return out
    target = {TierLevel.SWARM: sw.spec.shared_tiers.swarm, TierLevel.DOMAIN: sw.spec.shared_tiers.domain,
              TierLevel.FOUNDATION: sw.spec.shared_tiers.foundation}[dst]  # fmt: skip
    if not target:
        return out
    if src.per_agent:
        tiers, weights = [], []
        for agent in sw.spec.agents:
            name = agent_tier_name(swarm_name, agent.name, src)
            v = _version(store, ns, name) if name in live else None
            if v is not None:
                tiers.append(name)
                # Trust = the user's weight scaled by the agent's record at the quality gate, so an agent
                # whose updates keep being rejected loses influence over the shared tier.
                trusted = sw.spec.consensus.trust_weighting
                weights.append(agent_trust(live, swarm_name, agent) if trusted else agent.trust_weight)
        if len(tiers) >= pol.spec.consensus.min_agents:
            rule = {"rule": str(pol.spec.consensus.rule), "outlier_threshold": pol.spec.consensus.outlier_threshold}
            inputs = ConsolidationInputs("consensus", target, storage, agent_tiers=tiers, weights=weights,
                                         options=rule)
            out.append(Candidate(f"consensus:{target}", _input_version(store, ns, tiers), inputs))
        return out
    source = {TierLevel.SWARM: sw.spec.shared_tiers.swarm, TierLevel.DOMAIN: sw.spec.shared_tiers.domain}.get(src)
    if source and (v := _version(store, ns, source)) and v >= _versions_needed(pol):
        out.append(Candidate(source, v, ConsolidationInputs("migrate", target, storage, source_tier=source)))
    return out


# Kinds of version a consolidation leaves in its input tiers (what remains after content moved up).
RESIDUAL_KINDS = ("migration-source", "consensus-agent")


def _done_before(store: StoreAccess, ns: str, policy: str, cand: Candidate, evaluated: dict[str, int]) -> bool:
    """Whether a policy that has never seen ``cand`` (re-created over its store: disaster recovery, a
    re-applied manifest) already consolidated this input; then it is marked evaluated instead of run again.

    Evidence from the store alone: the result of the Job this candidate would run, or every input tier's
    newest accepted version being what a consolidation left there. Read once per key, on its first sight.
    """
    if cand.key in evaluated:
        return False
    done = False
    try:
        read_result(result_path(store.uri, ns, consolidation_job_name(policy, cand.inputs.target_tier, cand.version)),
                    client=store.client)  # fmt: skip
        done = True
    except (OSError, ValueError, StoreError):
        tiers = [cand.inputs.source_tier] if cand.inputs.source_tier else cand.inputs.agent_tiers
        refs = [latest_accepted(store.open(), ns, t) for t in tiers if t]
        done = bool(refs) and all(r is not None and r.manifest.metadata.get("kind") in RESIDUAL_KINDS for r in refs)
    if done:
        evaluated[cand.key] = cand.version
    return done


def _migrate_args(pol: MigrationPolicy, remaining: int, bypass_left: int) -> dict[str, Any]:
    """The detector and bandwidth fields of a migration Job's ConsolidateConfig."""
    s, b = pol.spec.stability, pol.spec.bandwidth
    bypass = pol.spec.emergency_bypass.enabled and bypass_left > 0
    return {
        "method": str(s.method), "threshold": s.threshold, "min_consecutive": s.min_consecutive_windows,
        "window": s.window, "max_migrations": max(remaining, 0), "max_energy_fraction": b.max_energy_fraction,
        "min_energy_fraction": s.min_energy_fraction, "emergency_bypass": bypass,
        "bypass_min_stability": pol.spec.emergency_bypass.min_stability if bypass else None,
    }  # fmt: skip


@dataclass
class Budget:
    """What one pass may still launch: Job slots, and migrations of the period neither used nor reserved.

    Every migration Job reserves its ``--max-migrations`` from the period's budget when it is launched
    (persisted in ``status.reservations``) and releases it when it finishes, when what it really moved is
    counted in ``migrationsThisPeriod``; so the Jobs of one period never move more than the budget
    together, however many sources are due at once.
    """

    limit: int
    used: int
    reserved: dict[str, int]  # Job -> migrations reserved for it (the status's map, updated in place)
    cap: int
    active: list[str]  # Jobs in flight, including those launched by this pass
    share: int = 0  # per-Job grant this pass: the available budget split over the free slots

    def __post_init__(self) -> None:
        self.share = -(-self.available() // max(self.cap - len(self.active), 1))

    def available(self) -> int:
        return max(self.limit - self.used - sum(self.reserved.values()), 0)

    def grant(self) -> int:
        return min(self.share, self.available())

    def reserve(self, job: str, grant: int) -> None:
        self.reserved[job] = grant


def _blocked(budget: Budget, cand: Candidate, bypass_left: int, pol: MigrationPolicy) -> str | None:
    """Why ``cand`` cannot be launched now (``None`` when it can); stable text, so a repeat is not recorded."""
    b = pol.spec.bandwidth
    if len(budget.active) >= budget.cap:
        return f"concurrency cap: {budget.cap} consolidation Job(s) in flight (bandwidth.maxConcurrentJobs)"
    if cand.inputs.mode == "migrate" and budget.grant() <= 0 and bypass_left <= 0:
        return f"bandwidth exhausted: {b.max_migrations_per_period} migrations per {b.period} used or reserved"
    return None


def _throttle(cand: Candidate, reason: str, st: Obj, decisions: list[Obj]) -> None:
    """Record a launch the limits held back, once per reason (it is retried every evaluation)."""
    d = _decision(cand, "Throttled", reason)
    pair = (d["sourceTier"], d["targetTier"])
    last = next((x for x in reversed(decisions) if (x.get("sourceTier"), x.get("targetTier")) == pair), None)
    if last and last.get("outcome") == "Throttled" and last.get("reason") == reason:
        return
    decisions.append(d)
    st["migrationsThrottled"] = int(st.get("migrationsThrottled", 0)) + 1
    MIGRATIONS.labels("Throttled").inc()


def _last_done(decisions: list[Obj]) -> dict[str, int]:
    """Target tier -> position of its newest finished consolidation in ``decisions``.

    Due candidates are launched in that order (never consolidated first), so a source that is due at
    every evaluation cannot starve the others when the limits admit only a few Jobs at a time.
    """
    return {str(d.get("targetTier")): i for i, d in enumerate(decisions) if d.get("outcome") != "Throttled"}


def reconcile_policy(kube: Kube, settings: OperatorSettings, body: Obj) -> PolicyOutcome:
    """One pass: collect finished Jobs, then launch the consolidations that are due.

    Storage the operator cannot read with the Swarm's S3 settings becomes a condition, as on a tier.
    """
    return guard_storage(lambda: _reconcile_policy(kube, settings, body), body,
                         lambda status, events: PolicyOutcome(MigrationPolicyStatus.model_validate(status), events))


def _reconcile_policy(kube: Kube, settings: OperatorSettings, body: Obj) -> PolicyOutcome:
    pol = parse(MigrationPolicy, body)
    meta = body["metadata"]
    ns = meta["namespace"]
    gen = generation(body)
    old: Obj = dict(body.get("status") or {})
    st: Obj = {k: v for k, v in old.items() if k != "conditions"}
    conditions: list[Obj] = list(old.get("conditions", []))
    events: list[Event] = []
    now = dt.datetime.now(dt.UTC)
    decisions: list[Obj] = list(old.get("decisions", []))

    period_start = parse_time(old.get("periodStart"))
    if period_start is None or (now - period_start).total_seconds() >= duration_s(pol.spec.bandwidth.period):
        # Reservations of Jobs still running carry over: what they move is counted when they finish.
        st.update(periodStart=now_rfc3339(), migrationsThisPeriod=0, bypassesThisPeriod=0)

    swarms = _swarms(kube, ns, pol)
    stores = {sn: store_access(kube, ns, sw.spec.storage, settings) for sn, sw in swarms.items()}
    active, busy_targets, evaluated = _collect(kube, settings, ns, old, stores, st, decisions, events)
    st["reservations"] = {j: int(n) for j, n in dict(old.get("reservations") or {}).items() if j in active}

    if pol.spec.suspend:
        st["phase"] = PolicyPhase.SUSPENDED
    else:
        last = parse_time(old.get("lastEvaluationTime"))
        if last is None or (now - last).total_seconds() >= duration_s(pol.spec.interval):
            st["lastEvaluationTime"] = now_rfc3339()
            budget = Budget(pol.spec.bandwidth.max_migrations_per_period, int(st.get("migrationsThisPeriod", 0)),
                            st["reservations"], pol.spec.bandwidth.max_concurrent_jobs, active)  # fmt: skip
            bypass = pol.spec.emergency_bypass
            bypass_left = bypass.max_per_period - int(st.get("bypassesThisPeriod", 0)) if bypass.enabled else 0
            due = [(swarm_name, sw, cand) for swarm_name, sw in swarms.items() for pair in pol.spec.pairs
                   for cand in _candidates(kube, settings, ns, swarm_name, sw, pol, pair)
                   if evaluated.get(cand.key, 0) < cand.version
                   and not _done_before(stores[swarm_name], ns, meta["name"], cand, evaluated)]  # fmt: skip
            done = _last_done(decisions)
            for swarm_name, sw, cand in sorted(due, key=lambda t: done.get(t[2].inputs.target_tier, -1)):
                job_name = consolidation_job_name(meta["name"], cand.inputs.target_tier, cand.version)
                if job_name in active or cand.inputs.target_tier in busy_targets:
                    continue
                if reason := _blocked(budget, cand, bypass_left, pol):
                    _throttle(cand, reason, st, decisions)  # not evaluated: retried at the next evaluation
                    continue
                grant = budget.grant()
                if cand.inputs.mode == "migrate":
                    budget.reserve(job_name, grant)
                events += _launch(kube, settings, body, pol, stores[swarm_name].uri, swarm_name, sw, cand, job_name,
                                  _migrate_args(pol, grant, bypass_left) if cand.inputs.mode == "migrate" else {})
                active.append(job_name)
                busy_targets.add(cand.inputs.target_tier)
                evaluated[cand.key] = cand.version
        st["phase"] = PolicyPhase.ACTIVE
    st["evaluated"] = evaluated
    status = MigrationPolicyStatus.model_validate(_finish(st, pol, gen, conditions, active, decisions))
    return PolicyOutcome(status, events)


def _collect(kube: Kube, settings: OperatorSettings, ns: str, old: Obj, stores: dict[str, StoreAccess], st: Obj,
             decisions: list[Obj], events: list[Event]) -> tuple[list[str], set[str], dict[str, int]]:  # fmt: skip
    """Record the Jobs that finished since the last pass; (Jobs still running, their targets, evaluated)."""
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
        store = stores.get(labels.get("dynamiclora.io/swarm", ""), next(iter(stores.values()), StoreAccess("")))
        why = failure_reason(kube, job) if job is not None and state != "Complete" else ""
        events.append(_record_job(job_name, state, job, store, ns, st, decisions, why, settings))
        # What the Job itself published must not look like new input to the next evaluation.
        annotations = (job or {}).get("metadata", {}).get("annotations", {})
        key, inputs = annotations.get(ANNOTATION_KEY), annotations.get(ANNOTATION_INPUTS, "")
        if key and store.uri:
            evaluated[key] = _input_version(store, ns, [t for t in inputs.split(",") if t])
    return active, busy_targets, evaluated


def _launch(kube: Kube, settings: OperatorSettings, body: Obj, pol: MigrationPolicy, store: str, swarm_name: str,
            sw: Swarm, cand: Candidate, job_name: str, extra: dict[str, Any]) -> list[Event]:  # fmt: skip
    """Create the consolidation Job for ``cand`` (idempotent: an existing Job of that name is adopted)."""
    ns = body["metadata"]["namespace"]
    options = {**cand.inputs.options, **extra, "dry_run": pol.spec.dry_run,
               **consolidation_gate_args(kube, settings, ns, sw, cand.inputs),
               "result_file": result_path(store, ns, job_name), "base_model": sw.spec.base_model.name}  # fmt: skip
    target = kube.get("LoRATier", ns, cand.inputs.target_tier)
    if target is not None:  # stored at the destination's own rank: room for what moves up, not the source's
        options["dest_rank"] = int(target.get("spec", {}).get("rank") or 0) or 16
    c = cand.inputs
    if c.mode == "migrate" and pol.spec.stability.method == StabilityMethod.RECURRENCE:
        options.update(recurrence_args(kube, settings, ns, sw, c))
    needs_model = "gate_base_model" in options or "model_dir" in options
    claim = sw.spec.base_model.pvc.claim_name if sw.spec.base_model.pvc and needs_model else None
    inputs = ConsolidationInputs(c.mode, c.target_tier, c.storage, c.source_tier, c.agent_tiers, c.weights, options,
                                 claim)  # fmt: skip
    job = build_consolidation_job(body, inputs, job_name, CONSOLIDATOR, settings)
    job["metadata"]["labels"]["dynamiclora.io/swarm"] = swarm_name
    job["metadata"]["annotations"][ANNOTATION_KEY] = cand.key
    job["metadata"]["annotations"][ANNOTATION_INPUTS] = ",".join(
        [cand.inputs.source_tier] if cand.inputs.source_tier else cand.inputs.agent_tiers
    )
    job["spec"]["template"]["metadata"]["labels"]["dynamiclora.io/swarm"] = swarm_name
    if kube.create(job) is None:
        return []
    JOBS.labels("consolidation", "started").inc()
    return [Event(EventType.NORMAL, Reason.CONSOLIDATION_STARTED, f"Job {job_name}: {c.mode} into {c.target_tier}")]


def _finish(st: Obj, pol: MigrationPolicy, gen: int | None, conditions: list[Obj], active: list[str],
            decisions: list[Obj]) -> Obj:  # fmt: skip
    st["activeJobs"] = active
    st["migrationsPending"] = len(active)
    st["decisions"] = decisions[-DECISION_LIMIT:]
    st["observedGeneration"] = gen
    st["conditions"] = set_condition(
        conditions, ConditionType.READY, True, Reason.SUSPENDED if pol.spec.suspend else Reason.EVALUATING,
        f"{len(active)} consolidation Job(s) in flight; dry run" if pol.spec.dry_run
        else f"{len(active)} consolidation Job(s) in flight", gen,
    )  # fmt: skip
    return st


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


def _job_tiers(job: Obj | None) -> tuple[str, str]:
    """(target tier, source tier or "agents") of a consolidation Job, from what the operator recorded on it."""
    meta = (job or {}).get("metadata", {})
    ann, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    # The label is the fallback for Jobs created before the annotation existed (it is shortened past 63).
    target = ann.get(ANNOTATION_TARGET) or labels.get("dynamiclora.io/tier", "?")
    inputs = [t for t in str(ann.get(ANNOTATION_INPUTS, "")).split(",") if t]
    return target, inputs[0] if len(inputs) == 1 else "agents"


def _record_job(
    job_name: str, state: str, job: Obj | None, store: StoreAccess, ns: str, st: Obj, decisions: list[Obj],
    why: str = "", settings: OperatorSettings | None = None,
) -> Event:
    """Turn a finished consolidation Job into decisions and counters (``why``: a failed Job's last error)."""
    target, src_tier = _job_tiers(job)
    if state != "Complete":
        JOBS.labels("consolidation", "failed").inc()
        text = f"Job {job_name} {state.lower()}" + (f": {why}" if why else "")
        decisions.append({"time": now_rfc3339(), "sourceTier": src_tier, "targetTier": target, "outcome": "Rejected",
                          "reason": text[:1024], "job": job_name, "components": 0,
                          "energyFraction": 0.0})  # fmt: skip
        return Event(EventType.WARNING, Reason.CONSOLIDATION_FAILED, text)
    JOBS.labels("consolidation", "succeeded").inc()
    try:
        result = json.loads(read_result(result_path(store.uri, ns, job_name), client=store.client))
    except (OSError, ValueError, StoreError) as exc:
        msg = f"Job {job_name} succeeded but its result is unreadable: {exc}"
        return Event(EventType.WARNING, Reason.RESULT_MISSING, msg)
    report = result.get("report", {})
    migrate = result.get("mode") == "migrate"
    summary = audit_consolidation(store, ns, target, job_name, result, src_tier if migrate else None, settings)
    if result.get("status") == "rejected":
        decisions.append({"time": now_rfc3339(), "sourceTier": src_tier, "targetTier": target, "outcome": "Rejected",
                          "reason": summary[:1024], "job": job_name, "components": 0,
                          "energyFraction": 0.0})  # fmt: skip
        MIGRATIONS.labels("Rejected").inc()
        return Event(EventType.WARNING, Reason.CONSOLIDATION_REJECTED, summary)
    if result.get("mode") == "consensus":
        decisions.append({"time": now_rfc3339(), "sourceTier": src_tier, "targetTier": target,
                          "outcome": "Migrated" if result.get("changed") else "DryRun", "job": job_name,
                          "components": 0, "energyFraction": 0.0,
                          "reason": f"consensus ({report.get('rule', '')}) of {len(report.get('weights', []))} agents"})
        return Event(EventType.NORMAL, Reason.CONSENSUS_DONE, f"Job {job_name}: consensus into {target}")
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
    return Event(EventType.NORMAL, Reason.MIGRATION_DONE, f"Job {job_name}: {reason}{' (dry run)' if dry else ''}")

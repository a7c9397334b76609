"""LoRATier reconciliation: observe the checkpoint store, run training Jobs, report status.

The store is the source of truth for versions (a Job publishes atomically; the operator only reads),
Kubernetes Jobs are the source of truth for work in flight. Job names are derived from the version they
will produce, so an operator restarted at any point finds the Job it started instead of starting another.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dynamiclora.api.common import Storage, TierLevel
from dynamiclora.api.conditions import ConditionType, EventType, Reason
from dynamiclora.api.swarm import Swarm
from dynamiclora.api.tier import LoRATier, LoRATierStatus, TierPhase
from dynamiclora.builders.distributed import ANNOTATION_WORKERS
from dynamiclora.builders.inference import job_model_path
from dynamiclora.builders.jobs import (
    ComposeAhead,
    TrainingInputs,
    build_training_job,
    experience_location,
    store_uri,
)
from dynamiclora.builders.names import (
    ANNOTATION_TRAIN_RECORDS,
    training_job_name,
)
from dynamiclora.builders.tiers import stack_tier_names
from dynamiclora.controllers.admission import admit, tier_references
from dynamiclora.controllers.common import (
    Event,
    WaitFor,
    consolidation_touching,
    duration_s,
    generation,
    job_state,
    parse,
    parse_time,
)
from dynamiclora.controllers.conditions import get_condition, set_condition, wire_status
from dynamiclora.controllers.inputs import missing_inputs
from dynamiclora.controllers.job_failure import failure_condition_reason, failure_reason, unschedulable
from dynamiclora.controllers.launch import choose_launch, expired, launch, started_at
from dynamiclora.controllers.promotion import observe_pin, observe_versions, served_version_of
from dynamiclora.controllers.stack_consistency import StackEntry, StoreView, settle, stack_spec
from dynamiclora.controllers.tier_storage import (
    StorageUnavailable,
    StoreAccess,
    guard_storage,
    records_unavailable,
    s3_client_for,
    store_access,
)
from dynamiclora.kube import Kube, Obj, now_rfc3339
from dynamiclora.metrics import (
    JOB_SECONDS,
    JOBS,
    TIER_LAST_TRAINED,
    TIER_PENDING_RECORDS,
    TIER_VERSION,
    export_tier_status,
)
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.base import CheckpointStore, StoreError
from dynamiclora.storage.results import prune_work

MAX_TRAINING_ATTEMPTS = 3
MAX_COLLATERAL_RETRIES = 2
# After MAX_TRAINING_ATTEMPTS quick retries, training keeps trying with exponential backoff: transient causes
# (a GPU that frees up, an S3 outage, a full disk) must not stop a tier for good.
BACKOFF_BASE_SECONDS = 60.0
BACKOFF_CAP_SECONDS = 3600.0

MAX_STATS_BYTES = 1 << 20  # stats.json read into the status: statistics, not data


def training_backoff(attempts: int) -> float:
    """Seconds to wait after ``attempts`` consecutive failed Jobs before the next one."""
    if attempts < MAX_TRAINING_ATTEMPTS:
        return 0.0
    return float(min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempts - MAX_TRAINING_ATTEMPTS)))


def _backing_off(st: Obj) -> bool:
    last = parse_time(st.get("lastFailureTime"))
    wait = training_backoff(int(st.get("failedAttempts", 0)))
    return bool(wait and last and (dt.datetime.now(dt.UTC) - last).total_seconds() < wait)


def _reset_on_new_generation(old: Obj, st: Obj, conditions: list[Obj], gen: int | None) -> list[Obj]:
    """A changed spec (a fix, usually) gets fresh attempts at once instead of waiting out the backoff."""
    if old.get("observedGeneration") in (None, gen) or not old.get("failedAttempts"):
        return conditions
    st.pop("failedAttempts", None)
    st.pop("lastFailureTime", None)
    msg = "the spec changed: training retries"
    return set_condition(conditions, ConditionType.DEGRADED, False, Reason.SPEC_CHANGED, msg, gen)


@dataclass
class TierOutcome:
    """The status to write (the API's type) and the events to record."""

    status: LoRATierStatus
    events: list[Event] = field(default_factory=list)
    store: StoreAccess | None = None  # the store the pass read (its feed is then watched: store_feed.py)

    def wire(self) -> Obj:
        """The status as it is written to the API server."""
        return wire_status("LoRATier", self.status)


def count_records(location: str, s3_client: Any = None) -> int:
    """Records of an agent below its location: a folder on the mounted PVC or an S3 prefix."""
    from dynamiclora.storage.record_count import count_records as count

    return count(location, s3_client=s3_client)


def _resolve(kube: Kube, tier: LoRATier, ns: str) -> tuple[Storage, Swarm | None]:
    swarm_body = kube.get("Swarm", ns, tier.spec.swarm_ref) if tier.spec.swarm_ref else None
    swarm = parse(Swarm, swarm_body) if swarm_body else None
    storage = tier.spec.storage or (swarm.spec.storage if swarm else None)
    if storage is None:
        raise WaitFor(
            f"tier has no spec.storage and its Swarm {tier.spec.swarm_ref or '(none)'} does not exist yet", 15
        )
    return storage, swarm


def reconcile_tier(kube: Kube, settings: OperatorSettings, body: Obj) -> TierOutcome:
    """One pass over a tier; returns the status to write and the events to emit.

    Storage the operator cannot read (credentials, endpoint) becomes a condition, not a failed reconcile.
    """
    return guard_storage(lambda: _reconcile_tier(kube, settings, body), body,
                         lambda status, events: TierOutcome(LoRATierStatus.model_validate(status), events))


def _reconcile_tier(kube: Kube, settings: OperatorSettings, body: Obj) -> TierOutcome:
    tier = parse(LoRATier, body)
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    admit(kube, ns, settings, tier_references(tier))
    level = TierLevel(tier.spec.level)
    old: Obj = dict(body.get("status") or {})
    st: Obj = {k: v for k, v in old.items() if k not in ("conditions",)}
    conditions: list[Obj] = list(old.get("conditions", []))
    gen = generation(body)
    events: list[Event] = []

    conditions = _reset_on_new_generation(old, st, conditions, gen)
    storage, swarm = _resolve(kube, tier, ns)
    access = store_access(kube, ns, storage, settings)
    store = access.open()
    promo = observe_versions(store, ns, name, tier.spec.agent, old, st, events, settings)
    latest = promo.current
    if latest is not None:
        if latest.version != old.get("currentVersion"):
            TIER_LAST_TRAINED.labels(ns, name, level.value).set(dt.datetime.now(dt.UTC).timestamp())
        st.update(currentVersion=latest.version, checkpointUri=latest.uri, checkpointSha256=latest.digest)
        _apply_stats(st, store, ns, name, latest.version)
        TIER_VERSION.labels(ns, name, level.value).set(latest.version)
    observe_pin(store, ns, name, tier.spec.pinned_version, gen, st.get("currentVersion"), old, st, events, settings)
    if promo.latest is not None:
        _retain(store, store_uri(storage, settings), promo.versions, tier, old, st, events)
    if level == TierLevel.CONTEXT and "recordsConsumed" not in old:
        st["recordsConsumed"] = consumed_from_store(store, ns, name, promo.versions)

    # Work in flight.
    active, kind = old.get("activeJob"), old.get("activeJobKind") or "Job"
    if active:
        job = kube.get(kind, ns, active)
        state = job_state(job) if job else "Gone"
        if overdue := expired(job, tier.spec.training.active_deadline_seconds) if job else "":
            kube.delete(kind, ns, active)
            state = "Failed"
        if state == "Complete":
            assert job is not None
            _consume(tier, st, old, int(job["metadata"].get("annotations", {}).get(ANNOTATION_TRAIN_RECORDS, 0)),
                     events)
            st["lastTrainingTime"] = now_rfc3339()
            st["failedAttempts"] = 0
            st.pop("activeJob", None)
            st.pop("trainingWorkers", None)
            st.pop("activeJobKind", None)
            JOBS.labels("training", "succeeded").inc()
            started = parse_time(started_at(job))
            if started:
                JOB_SECONDS.labels("training").observe((dt.datetime.now(dt.UTC) - started).total_seconds())
            conditions = set_condition(conditions, ConditionType.TRAINING, False, Reason.SUCCEEDED,
                                       f"{kind} {active} succeeded", gen)  # fmt: skip
            conditions = set_condition(conditions, ConditionType.DEGRADED, False, Reason.HEALTHY, "", gen)
            events.append(Event(EventType.NORMAL, Reason.TRAINING_SUCCEEDED, f"{kind} {active} succeeded"))
        elif state == "Running" and job is not None:
            conditions = _waiting(kube, job, f"{kind} {active}", conditions, events, gen)
        elif state in ("Failed", "Gone"):
            attempts = int(old.get("failedAttempts", 0)) + 1
            st["failedAttempts"] = attempts
            st.pop("activeJob", None)
            st.pop("trainingWorkers", None)
            st.pop("activeJobKind", None)
            JOBS.labels("training", "failed").inc()
            msg = f"{kind} {active} {'failed' if state == 'Failed' else 'disappeared'} (attempt {attempts})"
            why = overdue or (failure_reason(kube, job) if job is not None and state == "Failed" else "")
            msg += f": {why}" if why else ""
            conditions = set_condition(conditions, ConditionType.TRAINING, False, failure_condition_reason(why),
                                       msg, gen)  # fmt: skip
            st["lastFailureTime"] = now_rfc3339()
            if attempts >= MAX_TRAINING_ATTEMPTS:
                retry = f"; retrying in {training_backoff(attempts):.0f}s (a spec change retries at once)"
                conditions = set_condition(conditions, ConditionType.DEGRADED, True, Reason.TRAINING_FAILING,
                                           msg + retry, gen)  # fmt: skip
            events.append(Event(EventType.WARNING, Reason.TRAINING_FAILED, msg))

    if tier.spec.suspend:
        st["phase"] = TierPhase.SUSPENDED
    elif level == TierLevel.CONTEXT and tier.spec.agent and swarm is not None and not st.get("activeJob"):
        conditions = _maybe_train(kube, settings, body, tier, swarm, storage, st, old, conditions, events)

    st["observedGeneration"] = gen
    st["conditions"] = _ready(conditions, st.get("currentVersion"), gen)
    if "phase" not in st or st["phase"] != TierPhase.SUSPENDED or not tier.spec.suspend:
        degraded = any(c["type"] == ConditionType.DEGRADED and c["status"] == "True" for c in st["conditions"])
        st["phase"] = (
            TierPhase.SUSPENDED if tier.spec.suspend
            else TierPhase.TRAINING if st.get("activeJob")
            else TierPhase.FAILED if degraded
            else TierPhase.READY if st.get("currentVersion")
            else TierPhase.PENDING
        )  # fmt: skip
    # From the status, not from this pass's reads: a restarted operator exports what is already known.
    export_tier_status(ns, name, level.value, st)
    return TierOutcome(LoRATierStatus.model_validate(st), events, access)


RESTORE_SCAN = 16  # newest versions read for what was consumed (migration residuals carry no count)


def consumed_from_store(store: CheckpointStore, ns: str, name: str, versions: list[int]) -> int:
    """Records the tier's published training versions consumed, from their manifests (0 when none says).

    A tier with versions but no status was re-created over its store (disaster recovery, a re-applied
    manifest): without this it would train once more on every record it had consumed. A version the gate
    rejected for collateral forgetting leaves its records pending, as it does for a live tier.
    """
    for version in sorted(versions, reverse=True)[:RESTORE_SCAN]:
        meta = store.get(ns, name, version).manifest.metadata
        gate = meta.get("gate") or {}
        if gate.get("accepted") is False and gate.get("cause") == "collateral":
            continue
        consumed = meta.get("recordsConsumed")
        if isinstance(consumed, int) and consumed >= 0:
            return consumed
    return 0


def _consume(tier: LoRATier, st: Obj, old: Obj, job_records: int, events: list[Event]) -> None:
    """Count the Job's records as trained on, unless its update is to be retried with more replay.

    A version the gate rejected for collateral forgetting (honest records that overwrote what is known)
    leaves its records pending, so the next Job trains them again, protected by more replay
    (:func:`dynamiclora.builders.jobs.build_training_job`), up to :data:`MAX_COLLATERAL_RETRIES` times.
    """
    gate = st.get("lastGate") or {}
    retries = int(old.get("collateralRetries") or 0)
    retry = (gate.get("accepted") is False and gate.get("cause") == "collateral"
             and int(gate.get("version") or 0) == int(st.get("latestVersion") or 0)
             and retries < MAX_COLLATERAL_RETRIES and tier.spec.training.replay_fraction > 0)  # fmt: skip
    if retry:
        st["collateralRetries"] = retries + 1
        events.append(Event(EventType.NORMAL, Reason.UPDATE_RETRIED,
                            f"v{gate['version']} forgot known examples collaterally: its records are trained again "
                            f"with more replay (retry {retries + 1} of {MAX_COLLATERAL_RETRIES})"))  # fmt: skip
        return
    st["recordsConsumed"] = job_records
    st.pop("collateralRetries", None)


def _ready(conditions: list[Obj], current: int | None, gen: int | None) -> list[Obj]:
    """Ready means a version to serve; without one, a missing input is why there is none yet."""
    if current is not None:
        return set_condition(conditions, ConditionType.READY, True, Reason.VERSION_AVAILABLE,
                             f"version {current} available", gen)  # fmt: skip
    training = get_condition({"conditions": conditions}, ConditionType.TRAINING) or {}
    if training.get("reason") == Reason.INPUT_MISSING:
        return set_condition(conditions, ConditionType.READY, False, Reason.INPUT_MISSING,
                             str(training.get("message")), gen)  # fmt: skip
    return set_condition(conditions, ConditionType.READY, False, Reason.NO_VERSION_YET, "no version published yet", gen)


# (store URI, namespace, tier, version) -> creation time. Versions are immutable, so a version's age is
# read from its manifest once, not on every resync of a tier that keeps young versions past keepVersions.
_CREATED: dict[tuple[str, str, str, int], dt.datetime | None] = {}
_CREATED_LIMIT = 100_000


def _created(store: object, uri: str, ns: str, name: str, version: int) -> dt.datetime | None:
    key = (uri, ns, name, version)
    if key not in _CREATED:
        if len(_CREATED) >= _CREATED_LIMIT:
            _CREATED.clear()
        _CREATED[key] = parse_time(store.get(ns, name, version).manifest.created)  # type: ignore[attr-defined]
    return _CREATED[key]


class StaleWrites:
    """Unfinished versions judged on the operator's own monotonic clock, not on the storage's file times.

    An unfinished version (no manifest) is a dead writer's leftover once its newest object has not changed
    for ``after_s`` seconds *as this process measured*, whatever the clocks of the storage, the Jobs and the
    operator say; a restarted operator starts counting again (it waits longer, it never deletes early).
    """

    def __init__(self, after_s: float = 3600.0, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.after_s, self.max_entries, self.clock = after_s, max_entries, clock
        self._seen: OrderedDict[tuple[str, str, str, int], tuple[dt.datetime, float]] = OrderedDict()

    def judge(self, key: tuple[str, str, str, int], newest: dt.datetime) -> bool:
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None or seen[0] != newest:  # new, or still being written: start (again) from now
            self._seen[key] = seen = (newest, now)
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
        return now - seen[1] >= self.after_s


STALE_WRITES = StaleWrites()


def _retain(store: object, uri: str, versions: list[int], tier: LoRATier, old: Obj, st: Obj,
            events: list[Event]) -> None:  # fmt: skip
    """Apply the retention policy; the current, served and pinned versions (and young ones) are kept."""
    name = tier.metadata.name or ""
    ns = tier.metadata.namespace or ""
    keep = tier.spec.retention.keep_versions
    if len(versions) <= keep:
        return
    protected = {v for v in (st.get("currentVersion"), old.get("servedVersion"), tier.spec.pinned_version) if v}
    if tier.spec.retention.keep_for:
        # Ages come from the versions' own manifests: the status history holds only the newest few.
        horizon = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=duration_s(tier.spec.retention.keep_for))
        protected |= {v for v in versions[:-keep] if (c := _created(store, uri, ns, name, v)) and c >= horizon}
    report = store.retain(ns, name, keep_last=keep, protected=frozenset(int(v) for v in protected),  # type: ignore[attr-defined]
                          is_stale=lambda v, newest: STALE_WRITES.judge((uri, ns, name, v), newest))
    if report.deleted:
        msg = f"deleted versions {report.deleted} (keep {keep})"
        events.append(Event(EventType.NORMAL, Reason.RETENTION_APPLIED, msg))
        prune_work(store.backend, ns, name, report.deleted)  # type: ignore[attr-defined]


def _read_stats(store: object, ns: str, name: str, version: int) -> Obj | None:
    """The version's statistics; ``{}`` when it has none a status can hold; None when unreadable now."""
    try:
        entry = store.get(ns, name, version).manifest.files.get("stats.json")  # type: ignore[attr-defined]
        # Bounded: statistics are kilobytes; a huge file must not exhaust the operator's memory.
        if entry is None or entry.size > MAX_STATS_BYTES:
            return {}
        doc = json.loads(store.read_file(ns, name, version, "stats.json", max_bytes=MAX_STATS_BYTES))  # type: ignore[attr-defined]
    except ValueError:
        return {}
    except Exception:
        return None  # e.g. the store is briefly unreachable: keep what the status shows
    return doc if isinstance(doc, dict) else {}


def _apply_stats(st: Obj, store: object, ns: str, name: str, version: int) -> None:
    stats = _read_stats(store, ns, name, version)
    if stats is None:
        return
    # Statistics are optional (a consolidated version carries no phases): a field the current version
    # lacks is dropped, not left at an older version's value.
    for key, field_ in (("energy", "energy"), ("screenedFraction", "screenedFraction"), ("norm", "driftNorm")):
        if stats.get(key) is None:
            st.pop(field_, None)
        else:
            st[field_] = float(stats[key])
    if "screenedFraction" in st:
        st["screenedFraction"] = min(max(st["screenedFraction"], 0.0), 1.0)


def _maybe_train(
    kube: Kube,
    settings: OperatorSettings,
    body: Obj,
    tier: LoRATier,
    swarm: Swarm,
    storage: Storage,
    st: Obj,
    old: Obj,
    conditions: list[Obj],
    events: list[Event],
) -> list[Obj]:
    """Start a training Job when enough new records exist (and the schedule allows).

    Returns:
        The conditions updated with the Training condition.
    """
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    agent = tier.spec.agent or ""
    location = experience_location(storage, swarm.spec.experience.prefix, ns, tier.spec.swarm_ref or "", agent,
                                   settings)  # fmt: skip
    try:
        total = count_records(location, s3_client_for(kube, ns, storage))
    except (StoreError, StorageUnavailable) as e:  # the pass's other work (versions, Jobs) is kept
        return records_unavailable(conditions, e, events, generation(body))
    consumed = int(st.get("recordsConsumed", 0))
    pending = max(total - consumed, 0)
    TIER_PENDING_RECORDS.labels(ns, name, tier.spec.level).set(pending)
    _update_rate(st, old, total, tier.spec.plasticity.learning_rate)
    if _backing_off(st):  # the Degraded condition says when the next attempt comes
        return conditions
    if pending < tier.spec.training.min_samples:
        return set_condition(
            conditions, ConditionType.TRAINING, False, Reason.WAITING_FOR_RECORDS,
            f"{pending}/{tier.spec.training.min_samples} new interaction records", generation(body),
        )  # fmt: skip
    last = parse_time(st.get("lastTrainingTime"))
    schedule = tier.spec.training.schedule
    if schedule and last and (dt.datetime.now(dt.UTC) - last).total_seconds() < duration_s(schedule):
        return conditions
    missing = missing_inputs(tier.spec, storage, settings, s3_client_for(kube, ns, storage))
    if missing:
        return _input_missing(conditions, missing, events, generation(body))
    if busy := consolidation_touching(kube, ns, name):
        # Training from the current version while a migration moves content out of it would compose the
        # new version (which still holds that content) with the destination that received it: twice.
        return set_condition(conditions, ConditionType.TRAINING, False, Reason.WAITING,
                             f"waiting for consolidation Job {busy}, which moves this tier's content",
                             generation(body))  # fmt: skip
    current = st.get("currentVersion")
    # Numbered after the newest *published* version (a rejected one included), but trained from the newest
    # accepted one: deriving the name from ``current`` would re-adopt the rejected version's finished Job.
    next_version = max(int(current or 0), int(st.get("latestVersion") or 0)) + 1
    attempts = int(st.get("failedAttempts", 0))
    job_name = training_job_name(name, next_version, attempts)
    store = store_uri(storage, settings)
    view = StoreView({store: s3_client_for(kube, ns, storage)})
    slower = _frozen_tiers(kube, settings, ns, swarm, tier, store, view, int(current) if current else None)
    inputs = TrainingInputs(
        model_path=job_model_path(swarm, settings),
        storage=storage,
        experience_prefix=swarm.spec.experience.prefix,
        bad_records=swarm.spec.experience.bad_records,
        new_records=pending,
        total_records=total,
        init_version=int(current) if current else None,
        frozen=[(e.tier, e.version) for e in slower],
        seed=next_version,
        exclude_windows=[f"{w['from']}/{w['to']}" for w in st.get("quarantine", [])],
        replay_boost=int(st.get("collateralRetries") or 0),
        version=next_version,
        model_claim=swarm.spec.base_model.pvc.claim_name if swarm.spec.base_model.pvc else None,
        compose_ahead=_compose_ahead(settings, swarm, tier, store, next_version, slower),
    )
    job = build_training_job(body, tier.spec, inputs, job_name, settings)
    how = choose_launch(kube, settings, tier.spec.training)
    if how.note:
        events.append(Event(EventType.WARNING, Reason.LAUNCHER_UNAVAILABLE, how.note))
    created = launch(kube, job, tier.spec.training, how)
    if ANNOTATION_WORKERS in job["metadata"]["annotations"]:
        st["trainingWorkers"] = job["metadata"]["annotations"][ANNOTATION_WORKERS]
    st["activeJob"], st["activeJobKind"] = job_name, how.kind
    if created is not None:
        JOBS.labels("training", "started").inc()
        msg = f"{how.kind} {job_name} trains v{next_version} on {pending} records"
        msg += f" (runtime {how.runtime})" if how.runtime else ""
        events.append(Event(EventType.NORMAL, Reason.TRAINING_STARTED, msg))
    running = f"{how.kind} {job_name} trains version {next_version}"
    previous = get_condition({"conditions": conditions}, ConditionType.TRAINING) or {}
    if previous.get("reason") == Reason.JOB_FAILED:  # a retry keeps saying why the last attempt failed
        running = f"{how.kind} {job_name} retries version {next_version}; {previous.get('message')}"
    return set_condition(conditions, ConditionType.TRAINING, True, Reason.JOB_RUNNING, running, generation(body))


def _waiting(kube: Kube, job: Obj, what: str, conditions: list[Obj], events: list[Event],
             gen: int | None) -> list[Obj]:  # fmt: skip
    """A running training whose pods the scheduler cannot place says so at once (one event), and stops
    saying it once they are placed."""
    why = unschedulable(kube, job)
    previous = (get_condition({"conditions": conditions}, ConditionType.TRAINING) or {}).get("reason")
    if why:
        msg = f"{what} waits: {why}"
        if previous != Reason.UNSCHEDULABLE:
            events.append(Event(EventType.WARNING, Reason.UNSCHEDULABLE, msg))
        return set_condition(conditions, ConditionType.TRAINING, True, Reason.UNSCHEDULABLE, msg, gen)
    if previous == Reason.UNSCHEDULABLE:
        return set_condition(conditions, ConditionType.TRAINING, True, Reason.JOB_RUNNING, f"{what} runs", gen)
    return conditions


def _input_missing(conditions: list[Obj], missing: list[str], events: list[Event], gen: int | None) -> list[Obj]:
    """Wait for the inputs without a Job or a failed attempt; a later pass starts training once they exist."""
    msg = f"training waits for inputs that do not exist: {', '.join(missing)}"
    old = get_condition({"conditions": conditions}, ConditionType.TRAINING) or {}
    if (old.get("reason"), old.get("message")) != (Reason.INPUT_MISSING, msg):  # one event, not one per pass
        events.append(Event(EventType.WARNING, Reason.INPUT_MISSING, msg))
    return set_condition(conditions, ConditionType.TRAINING, False, Reason.INPUT_MISSING, msg, gen)


def _frozen_tiers(kube: Kube, settings: OperatorSettings, ns: str, swarm: Swarm, tier: LoRATier, store: str,
                  view: StoreView, init: int | None) -> list[StackEntry]:  # fmt: skip
    """The slower tiers of the agent's stack to load frozen while training from version ``init``.

    Exactly the stack serving composes with that version (:func:`settle`): a migration publishes the
    slower tier and the residual one after the other, and each tier's status catches up on its own, so a
    residual trained without its migrated destination (or the reverse) would learn what the served
    stack already holds, or lose it. Each entry names its tier's own store, as serving's do.
    """
    names = stack_tier_names(tier.spec.swarm_ref or "", swarm, tier.spec.agent or "")
    name = tier.metadata.name or ""
    if name not in names:
        return []
    faster = [StackEntry(name, str(tier.spec.level), int(init or 0), store, ns)]
    for n in names[names.index(name) + 1 :]:
        other = kube.get("LoRATier", ns, n)
        if other is None:
            continue
        own = store
        if other["spec"].get("storage"):  # read with that storage's identity, as serving reads it
            storage = Storage.model_validate(other["spec"]["storage"])
            own = store_uri(storage, settings)
            if own not in view.clients:
                view.clients[own] = s3_client_for(kube, ns, storage)
        entry = StackEntry(n, str(other["spec"]["level"]), int(served_version_of(other) or 0), own, ns)
        if not other["spec"].get("pinnedVersion"):  # a pin is the user's explicit choice
            entry = replace(entry, version=settle(entry, faster, view) or 0)
        if entry.version:
            faster.append(entry)
    return faster[1:]


def _compose_ahead(settings: OperatorSettings, swarm: Swarm, tier: LoRATier, store: str, version: int,
                   slower: list[StackEntry]) -> ComposeAhead | None:  # fmt: skip
    """The agent's served stack with ``version`` as serving will compose it once the version is accepted,
    for the training Job to compose ahead (event-driven freshness, issue 19); None when serving would
    compose another stack (a pin) or from another store than the tier trains in."""
    agent = next((a for a in swarm.spec.agents if a.name == tier.spec.agent), None)
    sw_storage = swarm.spec.storage
    if agent is None or agent.pinned_versions or tier.spec.pinned_version is not None or tier.spec.storage:
        return None
    if store != store_uri(sw_storage, settings) or (sw_storage.pvc is None and sw_storage.s3 is None):
        return None
    mine = StackEntry(tier.metadata.name or "", str(tier.spec.level), version, store, tier.metadata.namespace or "")
    return ComposeAhead(tier.spec.swarm_ref or "", stack_spec(agent.name, [mine, *slower]),
                        swarm.spec.inference.max_lora_rank, swarm.spec.base_model.name)


def _update_rate(st: Obj, old: Obj, total: int, learning_rate: float) -> None:
    """Interaction rate from the record count's growth; the time scale follows from it."""
    now = dt.datetime.now(dt.UTC)
    prev_total = old.get("rateSampleTotal")
    prev_time = parse_time(old.get("rateSampleTime"))
    st["recordsSeen"] = total
    if prev_total is None or prev_time is None or total < int(prev_total):
        st["rateSampleTotal"], st["rateSampleTime"] = total, now_rfc3339()
        return
    hours = (now - prev_time).total_seconds() / 3600
    if hours <= 0 or total == int(prev_total):
        return
    st["rateSampleTotal"], st["rateSampleTime"] = total, now_rfc3339()
    rate = (total - int(prev_total)) / hours
    smoothed = 0.7 * float(old.get("interactionRatePerHour") or rate) + 0.3 * rate
    st["interactionRatePerHour"] = round(smoothed, 3)
    # The tier needs ~1/learning_rate interactions to absorb a pattern: its time scale is how long
    # that takes at the observed density.
    st["effectiveTimeScaleSeconds"] = round(3600.0 / (smoothed * learning_rate), 1)

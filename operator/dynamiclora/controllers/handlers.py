"""kopf handlers: a thin layer forwarding explicit arguments to the reconcile functions.

Each kind has one async entry point used by its create/update/resume handlers and by its timer, so the
same idempotent pass runs whether something changed or time passed (a restarted vLLM pod, a finished
Job and new interaction records are all noticed by the timer). Errors become kopf errors with an event
and a condition the user reads in ``kubectl describe``:

* :class:`InvalidSpec` -> ``kopf.PermanentError`` (no retry until the object changes);
* :class:`WaitFor` -> ``kopf.TemporaryError`` with the dependency's delay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import kopf
from pydantic import BaseModel

from dynamiclora import FIELD_MANAGER, GROUP, VERSION
from dynamiclora.api.conditions import ConditionType, EventType
from dynamiclora.builders.trainjob import TRAINJOB_API_VERSION
from dynamiclora.controllers.common import Event, InvalidSpec, WaitFor, generation
from dynamiclora.controllers.composer import Composer, JobComposer
from dynamiclora.controllers.conditions import (
    set_condition,
    write_status,
)
from dynamiclora.controllers.job_events import finished, followups
from dynamiclora.controllers.leader import Leadership
from dynamiclora.controllers.policy import reconcile_policy
from dynamiclora.controllers.routing import sync_routes
from dynamiclora.controllers.serving import ServingOutcome, operator_key, sync_serving
from dynamiclora.controllers.store_feed import StoreFeed, to_reconcile
from dynamiclora.controllers.swarm import reconcile_swarm
from dynamiclora.controllers.swarm_report import (
    SWARM_WRITES_ON_TIERS,
    export_swarm_metrics,
    is_blocking,
    mark_agents,
    mark_served,
    swarm_report,
)
from dynamiclora.controllers.tier import reconcile_tier
from dynamiclora.kube import Kube, Obj
from dynamiclora.metrics import RECONCILE_SECONDS, RECONCILES, STORE_FEED_VERSIONS, forget_object
from dynamiclora.settings import OperatorSettings

log = logging.getLogger("dynamiclora.operator")


@dataclass
class Runtime:
    """Dependencies injected at start-up (kept in kopf's memo)."""

    kube: Kube
    settings: OperatorSettings
    composer: Composer = field(init=False)  # a compose Job per Swarm and change (a test may assign another)
    leadership: Leadership | None = None  # None: standalone (no leader election), always reconciles
    locks: dict[tuple[str, str, str], asyncio.Lock] = field(default_factory=dict)
    retries: dict[tuple[str, str, str], asyncio.Task[None]] = field(default_factory=dict)  # one per object
    jobs_seen: OrderedDict[str, None] = field(default_factory=OrderedDict)  # finished Jobs reacted to (uids)
    passes: dict[tuple[str, str, str], int] = field(default_factory=dict)  # finished passes per object
    feed: StoreFeed = field(init=False)  # the stores the tiers read, polled by feed_forever

    def __post_init__(self) -> None:
        self.composer = JobComposer(self.kube, self.settings)
        # A live tier names its store every resync: forget a feed after ten resyncs without one.
        self.feed = StoreFeed(forget_after=10 * self.settings.resync_seconds)

    def leading(self) -> bool:
        """Whether this operator may reconcile now (it holds the leader Lease, or runs standalone)."""
        return self.leadership is None or self.leadership.leader

    def lock(self, kind: str, namespace: str, name: str) -> asyncio.Lock:
        """One lock per object: change handlers and the resync loop never reconcile it concurrently."""
        return self.locks.setdefault((kind, namespace, name), asyncio.Lock())

    def seen(self, kind: str, body: Obj) -> int:
        """How many passes over ``body``'s object had finished when ``body`` was read (see :func:`_counted`)."""
        meta = body["metadata"]
        return self.passes.get((kind, meta.get("namespace", ""), meta["name"]), 0)


def _runtime(memo: Any) -> Runtime:
    rt = memo.get("runtime") if isinstance(memo, dict) else getattr(memo, "runtime", None)
    if rt is None:
        raise kopf.TemporaryError("operator runtime not configured yet", delay=1)
    return rt  # type: ignore[no-any-return]


def _plain(body: Any) -> Obj:
    """kopf's Body as a plain dict (reconcilers take JSON-like objects)."""
    return {k: (dict(v) if hasattr(v, "items") else v) for k, v in dict(body).items()}


async def _invalid(rt: Runtime, body: Obj, kind: str, err: InvalidSpec) -> None:
    """Report an invalid spec once per generation, then stop retrying."""
    status = dict(body.get("status") or {})
    gen = generation(body)
    status["conditions"] = set_condition(status.get("conditions", []), ConditionType.READY, False,
                                         err.reason, str(err), gen)  # fmt: skip
    status["phase"] = "Failed"
    status["observedGeneration"] = gen
    changed = await asyncio.to_thread(write_status, rt.kube, body, status)
    if changed:
        await asyncio.to_thread(rt.kube.event, body, EventType.WARNING, err.reason, str(err))
    RECONCILES.labels(kind, "invalid").inc()
    raise kopf.PermanentError(f"invalid {kind}: {err}")


async def _emit(rt: Runtime, body: Obj, events: list[Event]) -> None:
    for e in events:
        await asyncio.to_thread(rt.kube.event, body, e.type, e.reason, e.message)


async def handle_swarm(rt: Runtime, body: Obj) -> None:
    """Reconcile a Swarm's children, then keep every ready pod serving each agent's current stack."""
    start = time.monotonic()
    try:
        obs = await asyncio.to_thread(reconcile_swarm, rt.kube, rt.settings, body)
    except InvalidSpec as err:
        await _invalid(rt, body, "Swarm", err)
        return
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    outcome: ServingOutcome | None = None
    blocked: Exception | None = None
    try:
        api_key = await asyncio.to_thread(operator_key, rt.kube, ns, body["metadata"]["name"])
        outcome = await sync_serving(rt.kube, rt.settings, body, obs.swarm, obs.ready_pods, api_key, rt.composer)
        await asyncio.to_thread(mark_served, rt.kube, ns, obs, outcome)
        await asyncio.to_thread(mark_agents, rt.kube, ns, body["metadata"]["name"], obs.swarm, outcome)
        routes = await asyncio.to_thread(sync_routes, rt.kube, body, obs.swarm, outcome.endpoints)
        outcome.route_failures = routes.failed
    except Exception as err:
        if not is_blocking(err):
            raise
        blocked = err
    report = swarm_report(body, obs, outcome, blocked)
    export_swarm_metrics(ns, name, report.status, outcome.agents if outcome else [],
                         {a.name for a in obs.swarm.spec.agents})
    await asyncio.to_thread(write_status, rt.kube, body, report.status)
    await _emit(rt, body, report.events)
    RECONCILES.labels("Swarm", "ok").inc()
    RECONCILE_SECONDS.labels("Swarm").observe(time.monotonic() - start)


class StatusOutcome(Protocol):
    """What a status-only reconcile returns (TierOutcome, PolicyOutcome): the status to write, the events."""

    @property
    def status(self) -> BaseModel: ...

    @property
    def events(self) -> list[Event]: ...


OutcomeT = TypeVar("OutcomeT", bound=StatusOutcome)


async def _handle_status_only(
    rt: Runtime, body: Obj, kind: str, reconcile: Callable[[Kube, OperatorSettings, Obj], OutcomeT],
    preserve: frozenset[str] = frozenset(),
) -> OutcomeT | None:  # fmt: skip
    """Run a reconcile that returns ``status`` and ``events``; write the one, emit the others.

    Returns the reconcile's outcome (None for an invalid spec)."""
    start = time.monotonic()
    try:
        outcome = await asyncio.to_thread(reconcile, rt.kube, rt.settings, body)
    except InvalidSpec as err:
        await _invalid(rt, body, kind, err)
        return None
    except WaitFor as err:
        RECONCILES.labels(kind, "waiting").inc()
        raise kopf.TemporaryError(str(err), delay=err.delay) from err
    await asyncio.to_thread(write_status, rt.kube, body, outcome.status, preserve)
    await _emit(rt, body, outcome.events)
    RECONCILES.labels(kind, "ok").inc()
    RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - start)
    return outcome


async def handle_tier(rt: Runtime, body: Obj) -> None:
    """Reconcile one LoRATier (store observation, training Jobs, status); its store's feed is then watched.

    ``servedVersion`` and ``serving`` are left alone: the Swarm reconciler writes them (the version once every
    ready pod serves it, what is served of the agent).
    """
    outcome = await _handle_status_only(rt, body, "LoRATier", reconcile_tier, SWARM_WRITES_ON_TIERS)
    if outcome is not None and outcome.store is not None:
        rt.feed.watch(outcome.store, body["metadata"]["namespace"])
        # A watched namespace's counter reads 0 until its first version (most are the operator's own Jobs',
        # followed through their events): a series that exists, not a gap on the dashboard.
        STORE_FEED_VERSIONS.labels(body["metadata"]["namespace"])


async def handle_policy(rt: Runtime, body: Obj) -> None:
    """Reconcile one MigrationPolicy (finished Jobs, due consolidations, decisions)."""
    await _handle_status_only(rt, body, "MigrationPolicy", reconcile_policy)


KINDS: dict[str, tuple[str, Any]] = {
    "swarms": ("Swarm", handle_swarm),
    "loratiers": ("LoRATier", handle_tier),
    "migrationpolicies": ("MigrationPolicy", handle_policy),
}


# Finished Jobs remembered so that later events of one (pods cleaned up, labels) trigger nothing more.
JOBS_REMEMBERED = 4096


async def on_job_finished(rt: Runtime, job: Obj) -> None:
    """Reconcile at once what a finished Job changed: its owner, the tiers it wrote, their Swarms."""
    uid = job["metadata"].get("uid", job["metadata"]["name"])
    if not finished(job) or uid in rt.jobs_seen or not rt.leading():
        return
    rt.jobs_seen[uid] = None
    while len(rt.jobs_seen) > JOBS_REMEMBERED:
        rt.jobs_seen.popitem(last=False)
    await _follow(rt, job["metadata"]["namespace"], await asyncio.to_thread(followups, rt.kube, job))


async def feed_forever(rt: Runtime) -> None:
    """Every ``feed_seconds``, list the watched stores' feeds and reconcile the tiers whose newest version
    moved, then their Swarms (store_feed.py): a version published by anyone is served without the resync.

    One task per Swarm (its moved tiers, then the Swarm once), so a slow Swarm delays only itself."""
    running: set[asyncio.Task[None]] = set()
    while True:
        await asyncio.sleep(rt.settings.feed_seconds)
        if not rt.leading():
            continue
        try:
            groups = await _feed_groups(rt)
        except Exception:  # the API server briefly unavailable: the marks not acted on wait for the resync
            log.exception("store feed pass failed")
            continue
        for (ns, _), steps in groups.items():
            task = asyncio.create_task(_follow(rt, ns, steps))
            running.add(task)
            task.add_done_callback(running.discard)


async def _feed_groups(rt: Runtime) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """What the feeds ask for, per (namespace, Swarm): the moved tiers, then the Swarm once."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for ns, tier, version in await asyncio.to_thread(rt.feed.poll):
        todo = await asyncio.to_thread(to_reconcile, rt.kube, ns, tier, version)
        if todo:
            STORE_FEED_VERSIONS.labels(ns).inc()
        swarm = next((name for kind, name in todo if kind == "Swarm"), f"/{tier}")  # "/": a tier alone
        group = groups.setdefault((ns, swarm), [])
        group += [step for step in todo if step not in group]
    for steps in groups.values():
        steps.sort(key=lambda step: step[0] == "Swarm")  # every tier before the Swarm (a stable sort)
    return groups


async def _follow(rt: Runtime, ns: str, steps: list[tuple[str, str]]) -> None:
    """Reconcile ``(kind, name)`` of ``ns`` one after the other, each read fresh (skipped once deleted)."""
    handles = {kind: handle for kind, handle in KINDS.values()}
    for kind, name in steps:
        seen = rt.passes.get((kind, ns, name), 0)
        fresh = await asyncio.to_thread(rt.kube.read_through, kind, ns, name)
        if fresh is not None and not fresh["metadata"].get("deletionTimestamp"):
            await reconcile_now(rt, kind, handles[kind], fresh, seen)


def _register_jobs() -> None:
    async def jobs_event(type: str | None, body: Any, memo: Any, **_: Any) -> None:
        # None: the initial listing (Jobs that finished before this operator started: the resync covers them).
        if type in (None, "DELETED"):
            return
        await on_job_finished(_runtime(memo), _plain(body))

    kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": FIELD_MANAGER})(jobs_event)
    # Kubeflow Trainer's TrainJobs carry the same labels and conditions. Where the CRD is absent kopf logs
    # that it cannot serve them and starts watching once the CRD is created (it watches CRDs).
    group, version = TRAINJOB_API_VERSION.split("/")
    kopf.on.event(group, version, "trainjobs", labels={"app.kubernetes.io/managed-by": FIELD_MANAGER},
                  id="trainjobs_event")(jobs_event)  # fmt: skip


def register(settings: OperatorSettings) -> None:
    """Register the watch handlers on kopf's default registry (called once by ``dynamiclora run``).

    Objects are reconciled from watch events when their ``metadata.generation`` is ahead of the
    ``status.observedGeneration`` we last wrote (created, or spec changed), like controller-runtime's
    generation predicate. kopf's change handlers would instead store a copy of every object's spec in an
    annotation and patch it after each handling: one extra write and a doubled object per LoRATier,
    which at 1,000 agents is most of the API server's work. Periodic work is :func:`resync_forever`,
    one loop for all objects, rather than kopf timers: kopf puts a finalizer on every object that has a
    timer, and a finalizer for purely in-cluster state would block deletion whenever the operator is down.
    """
    for plural, (kind, handle) in KINDS.items():
        _register_kind(plural, kind, handle)
    _register_jobs()


def needs_reconcile(event_type: str | None, body: Obj) -> bool:
    """Whether a watch event asks for a reconcile: a live object whose spec we have not handled yet."""
    meta = body.get("metadata", {})
    if event_type == "DELETED" or meta.get("deletionTimestamp"):
        return False
    observed = (body.get("status") or {}).get("observedGeneration")
    return observed is None or observed != meta.get("generation")


async def _counted(rt: Runtime, kind: str, handle: Any, body: Obj, seen: int) -> None:
    """Run one reconcile under the object's lock; unexpected exceptions are counted and re-raised.

    ``body`` was read when ``seen`` passes over the object had finished. If another pass finished while this
    one waited for the lock, ``body`` may predate what that pass saw or wrote (a resync listing taken before a
    spec change, handled only after the change's own pass): reconciling it would re-apply the old spec to the
    children and merge the old status back. The object is read again instead.
    """
    meta = body["metadata"]
    if not rt.leading():  # a follower watches but never writes; the leader's resync covers every object
        return
    key = (kind, meta.get("namespace", ""), meta["name"])
    async with rt.lock(*key):
        if rt.passes.get(key, 0) != seen:
            fresh = await asyncio.to_thread(rt.kube.read_through, kind, key[1], key[2])
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return
            body = fresh
        try:
            await handle(rt, body)
        except (kopf.PermanentError, kopf.TemporaryError):
            raise
        except Exception:
            RECONCILES.labels(kind, "error").inc()
            raise
        finally:
            rt.passes[key] = rt.passes.get(key, 0) + 1


async def reconcile_now(rt: Runtime, kind: str, handle: Any, body: Obj, seen: int) -> None:
    """Reconcile once (``body`` read after ``seen`` passes); a temporary failure is retried after its delay
    with a fresh copy of the object."""
    meta = body["metadata"]
    try:
        await _counted(rt, kind, handle, body, seen)
    except kopf.PermanentError as err:
        log.info("%s %s/%s: %s", kind, meta.get("namespace"), meta["name"], err)
    except kopf.TemporaryError as err:
        log.info("%s %s/%s: %s (retry in %ss)", kind, meta.get("namespace"), meta["name"], err, err.delay)
        key = (kind, meta.get("namespace", ""), meta["name"])
        if key not in rt.retries:  # one pending retry per object, however many events arrive meanwhile
            rt.retries[key] = asyncio.create_task(_retry(rt, kind, handle, meta, float(err.delay or 10)))
    except Exception:  # one bad object must not stop the others; the resync loop tries again
        log.exception("reconcile of %s %s/%s failed", kind, meta.get("namespace"), meta["name"])


async def _retry(rt: Runtime, kind: str, handle: Any, meta: Obj, delay: float) -> None:
    key = (kind, meta.get("namespace", ""), meta["name"])
    await asyncio.sleep(delay)
    rt.retries.pop(key, None)
    seen = rt.passes.get(key, 0)
    fresh = await asyncio.to_thread(rt.kube.read_through, kind, key[1], key[2])
    if fresh is not None and not fresh["metadata"].get("deletionTimestamp"):
        await reconcile_now(rt, kind, handle, fresh, seen)


async def forget(rt: Runtime, kind: str, body: Obj) -> None:
    """Drop a deleted object's metric series (under its lock, so a reconcile in flight finishes first)."""
    meta = body["metadata"]
    ns = meta.get("namespace", "")
    async with rt.lock(kind, ns, meta["name"]):
        forget_object(kind, ns, meta["name"])
    rt.locks.pop((kind, ns, meta["name"]), None)  # a re-created object gets a fresh one
    rt.passes.pop((kind, ns, meta["name"]), None)


def _register_kind(plural: str, kind: str, handle: Any) -> None:
    async def on_event(type: str | None, body: Any, memo: Any, **_: Any) -> None:
        plain, rt = _plain(body), _runtime(memo)
        if type == "DELETED":
            await forget(rt, kind, plain)
        elif needs_reconcile(type, plain):
            await reconcile_now(rt, kind, handle, plain, rt.seen(kind, plain))

    on_event.__name__ = on_event.__qualname__ = f"{plural}_event"
    kopf.on.event(GROUP, VERSION, plural)(on_event)


async def resync_forever(rt: Runtime, concurrency: int = 16) -> None:
    """Every ``resync_seconds``, reconcile every object again (finished Jobs, new records, restarted pods).

    Each object's pass is its own task, and the loop never waits for one: a Swarm whose vLLM pod hangs
    (up to ``vllm_timeout_seconds`` per call, retried) delays only itself, not the other Swarms, tiers or
    policies. An object whose last pass is still running is skipped, not queued again. Each kind has its
    own bounded concurrency, and a pass holds its slot for ``reconcile_deadline_seconds`` at most: past
    that it runs on without one, so a few stuck objects cannot starve the rest.
    """
    gates = {kind: asyncio.Semaphore(concurrency) for kind, _ in KINDS.values()}
    inflight: dict[tuple[str, str, str], asyncio.Task[None]] = {}
    while True:
        await asyncio.sleep(rt.settings.resync_seconds)
        for key in [k for k, task in inflight.items() if task.done()]:
            del inflight[key]
        if not rt.leading():
            continue
        for kind, handle in KINDS.values():
            before = dict(rt.passes)  # ahead of the listing: a pass finishing during it makes its bodies stale
            try:
                objs = await asyncio.to_thread(rt.kube.list, kind, rt.settings.namespace or "")
            except Exception:  # the API server may be briefly unavailable
                log.exception("listing %s failed", kind)
                continue
            for obj in objs:
                meta = obj["metadata"]
                key = (kind, meta.get("namespace", ""), meta["name"])
                if meta.get("deletionTimestamp") or key in inflight:
                    continue  # a pass still running: this object is slow, the others go on
                seen = before.get(key, 0)
                inflight[key] = asyncio.create_task(_resync_one(rt, gates[kind], kind, handle, obj, seen))


async def _resync_one(rt: Runtime, gate: asyncio.Semaphore, kind: str, handle: Any, body: Obj, seen: int) -> None:
    meta = body["metadata"]
    async with gate:
        task = asyncio.create_task(_resync_pass(rt, kind, handle, body, seen))
        done, _ = await asyncio.wait({task}, timeout=rt.settings.reconcile_deadline_seconds)
    if not done:
        log.warning("%s %s/%s: its pass is still running after %.0fs; it goes on without a slot", kind,
                    meta.get("namespace"), meta["name"], rt.settings.reconcile_deadline_seconds)  # fmt: skip
        await task


async def _resync_pass(rt: Runtime, kind: str, handle: Any, body: Obj, seen: int) -> None:
    try:
        await _counted(rt, kind, handle, body, seen)
    except (kopf.PermanentError, kopf.TemporaryError) as err:
        log.debug("resync of %s %s: %s", kind, body["metadata"]["name"], err)
    except Exception:  # one bad object must not stop the loop
        log.exception("resync of %s %s failed", kind, body["metadata"]["name"])

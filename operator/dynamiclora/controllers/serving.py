"""Keep the ready vLLM pods an agent is placed on serving its tier stack, composed into one adapter.

The composed adapter of an agent is keyed by the exact (tier, version) list it was built from and lives
at ``<storage>/served/<namespace>/<swarm>/<agent>/<key>/``: on the volume the vLLM pods mount, or, with
S3-only storage, in the bucket, where each pod's adapter-sync sidecar mirrors it (see served_s3.py). A
compose Job writes it (see composer.py: the operator has no torch); until it exists the agent keeps
serving what it served. Re-running the reconcile with unchanged tiers composes nothing and costs one
``/v1/models`` call per pod, and a restarted pod (which forgot its runtime adapters) gets them back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynamiclora.api.swarm import MAX_MISSING_LISTED, Swarm
from dynamiclora.builders.guard import OPERATOR_KEY
from dynamiclora.builders.inference import adapters_mount as pods_adapters_mount
from dynamiclora.builders.jobs import store_uri
from dynamiclora.builders.names import operator_key_secret, served_adapter_name
from dynamiclora.builders.tiers import stack_tier_names
from dynamiclora.controllers.common import WaitFor
from dynamiclora.controllers.composer import ComposeProgress, Composer
from dynamiclora.controllers.placement import PodPlan, plan_pods, queued_agents, serving_entries
from dynamiclora.controllers.promotion import agent_trust, served_version_of
from dynamiclora.controllers.stack_consistency import (
    StackEntry,
    StoreView,
    settle,
    stack_key,
    stack_label,
    stack_spec,
)
from dynamiclora.controllers.swarm import ReadyPod
from dynamiclora.controllers.tier_storage import s3_client_for
from dynamiclora.kube import Kube, Obj
from dynamiclora.serving.adapters import AdapterSpec
from dynamiclora.serving.errors import ServingError
from dynamiclora.settings import OperatorSettings
from dynamiclora.training.options import StackSpec

if TYPE_CHECKING:  # imported lazily at run time (httpx is only needed once a pod is reached)
    from dynamiclora.serving.hotswap import HotSwapper
    from dynamiclora.serving.reconcile import ReconcileResult



class ServingUnavailable(Exception):
    """The swarm cannot be served yet or as configured (reported as a condition)."""


@dataclass
class AgentStack:
    """The tier versions composed into one agent's served adapter."""

    agent: str
    entries: list[StackEntry] = field(default_factory=list)

    @property
    def key(self) -> str:
        return stack_key(self.entries)

    @property
    def label(self) -> str:
        """Human-readable composite version, e.g. ``c3.a2.s1``."""
        return stack_label(self.entries)

    def spec(self) -> StackSpec:
        """What a compose Job is told to compose for this agent."""
        return stack_spec(self.agent, self.entries)


def desired_stacks(
    kube: Kube, settings: OperatorSettings, body: Obj, sw: Swarm, tiers: dict[str, Obj] | None = None
) -> list[AgentStack]:
    """Each agent's stack from the LoRATiers' current state (tiers without a version are skipped).

    ``tiers`` is the namespace's LoRATiers by name when the caller listed them already. Versions are
    then settled against half-applied migrations (see ``stack_consistency``); pinned tiers are not.
    """
    ns, swarm = body["metadata"]["namespace"], body["metadata"]["name"]
    default_store = store_uri(sw.spec.storage, settings)
    if tiers is None:  # one list for the whole namespace instead of a GET per tier (two tiers per agent)
        tiers = {t["metadata"]["name"]: t for t in kube.list("LoRATier", ns)}
    # Every store is read with the S3 identity of the resource that names it, never the operator's own.
    view = StoreView({default_store: s3_client_for(kube, ns, sw.spec.storage)})
    stacks = []
    for agent in sw.spec.agents:
        stack = AgentStack(agent.name)
        for tier_name in stack_tier_names(swarm, sw, agent.name):
            tier = tiers.get(tier_name)
            if tier is None or (entry := _entry(kube, tier, tier_name, ns, default_store, settings, view)) is None:
                continue
            if not tier["spec"].get("pinnedVersion"):  # a pin is the user's explicit choice
                settled = settle(entry, stack.entries, view)
                if settled is None:
                    continue
                entry = replace(entry, version=settled)
            stack.entries.append(entry)
        stacks.append(stack)
    return stacks


def _entry(kube: Kube, tier: Obj, name: str, ns: str, default_store: str, settings: OperatorSettings,
           view: StoreView) -> StackEntry | None:  # fmt: skip
    """The tier's stack entry; a tier with its own ``spec.storage`` is read with that storage's identity."""
    version = served_version_of(tier)
    if version is None:
        return None
    store = default_store
    if tier["spec"].get("storage"):
        from dynamiclora.api.common import Storage

        storage = Storage.model_validate(tier["spec"]["storage"])
        store = store_uri(storage, settings)
        if store not in view.clients:
            view.clients[store] = s3_client_for(kube, ns, storage)
    return StackEntry(name, tier["spec"]["level"], version, store, ns)


def served_dir(sw: Swarm, settings: OperatorSettings, ns: str, swarm: str) -> Path:
    """The swarm's composed adapters as the operator reads them: on the storage PVC (where the compose Job
    writes and the vLLM pods read), or copies in the operator's scratch folder for S3 storage."""
    from dynamiclora.serving.served_s3 import local_served_dir

    if sw.spec.storage.s3 is not None:
        return local_served_dir(settings.scratch_dir, ns, swarm)
    if sw.spec.storage.pvc is None:
        raise ServingUnavailable("serving composed adapters needs spec.storage.pvc or spec.storage.s3")
    return local_served_dir(store_uri(sw.spec.storage, settings), ns, swarm)


def agent_entry(stack: AgentStack, relative_error: float, trust: float, pinned: bool) -> Obj:
    """One agent's serving entry (``name`` and the context tier's ``status.serving``), compact: the vLLM model
    name is always ``<swarm>-<agent>`` and is not repeated; an exact composition, trust 1 and no pin are left
    out."""
    entry: Obj = {"name": stack.agent, "servedVersion": stack.label, "adapterPath": f"{stack.agent}/{stack.key}"}
    if relative_error:
        entry["compositionError"] = relative_error
    if trust != 1.0:
        entry["trust"] = trust
    if pinned:
        entry["pinned"] = True
    return entry


COMPOSITION_FILE = "composition.json"  # written last by the compose Job: the adapter is complete


@dataclass
class ServingOutcome:
    stacks: list[AgentStack] = field(default_factory=list)  # composed and desired, reused to mark served versions
    tiers: dict[str, Obj] = field(default_factory=dict)  # the namespace's LoRATiers as listed for this pass
    last: dict[str, Obj] = field(default_factory=dict)  # agent -> its serving entry in those tiers, read once
    agents: list[Obj] = field(default_factory=list)
    pods: list[Obj] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    unresponsive: dict[str, str] = field(default_factory=dict)  # pod -> why its pass failed as a whole
    swapped: list[str] = field(default_factory=list)
    # "<pod>/<adapter>" the pod's adapter-sync sidecar has not mirrored yet (retried, not a failure)
    pending: dict[str, str] = field(default_factory=dict)
    served_root: str | None = None  # where the composed adapters live: <servedRoot>/<agent>/<key>
    composing: list[str] = field(default_factory=list)  # agents whose current stack a compose Job still builds
    compose: ComposeProgress | None = None  # that Job, or why it failed
    placement: PodPlan = field(default_factory=PodPlan)  # which ready pods hold each agent (serving/placement.py)
    endpoints: dict[str, list[ReadyPod]] = field(default_factory=dict)  # agent -> placed pods that serve it
    route_failures: dict[str, str] = field(default_factory=dict)  # agent -> why its Service/EndpointSlice failed


@dataclass
class _Plan:
    """The adapters to serve now, and the agents that keep what they serve until theirs is composed."""

    desired: dict[str, AdapterSpec] = field(default_factory=dict)  # served name -> what to serve
    waiting: list[AgentStack] = field(default_factory=list)


def operator_key(kube: Kube, ns: str, swarm: str) -> str:
    """The key only the operator presents to the swarm's vLLM pods (the guard lets it manage adapters).

    Raises:
        WaitFor: the Secret is not there yet (the Swarm pass creates it).
    """
    secret = kube.get("Secret", ns, operator_key_secret(swarm))
    data = (secret or {}).get("data", {})
    if OPERATOR_KEY not in data:
        raise WaitFor(f"Secret {operator_key_secret(swarm)} (the operator's vLLM key) not found", 5)
    return base64.b64decode(data[OPERATOR_KEY]).decode()


async def _plan(sw: Swarm, body: Obj, settings: OperatorSettings, stacks: list[AgentStack], out: ServingOutcome,
                adapters_mount: str | None, s3_client: Any) -> _Plan:  # fmt: skip
    """Find each stack's composed adapter (restored from the bucket for S3 storage) or mark it waiting."""
    import asyncio

    from dynamiclora.serving import served_s3

    ns, swarm = body["metadata"]["namespace"], body["metadata"]["name"]
    plan = _Plan()
    root = served_dir(sw, settings, ns, swarm)
    pub = None  # S3-only storage: the pods' adapter-sync sidecars mirror the bucket
    if sw.spec.storage.s3 is not None:
        mount = pods_adapters_mount(settings, ns, swarm)
        backend = served_s3.remote_backend(store_uri(sw.spec.storage, settings), s3_client)
        pub = served_s3.S3Served(backend, ns, swarm, adapters_mount or mount)
        out.served_root = pub.root_uri()
    else:
        out.served_root = str(root)
    by_name = {a.name: a for a in sw.spec.agents}
    for stack in stacks:
        dest = root / stack.agent / stack.key
        if pub is not None:  # the operator reads the bytes the pods serve (fingerprint included)
            await asyncio.to_thread(pub.restore, dest, stack.agent, stack.key)
        if not (dest / COMPOSITION_FILE).is_file():
            plan.waiting.append(stack)
            continue
        name = served_adapter_name(swarm, stack.agent)
        pod_path = None
        if pub is not None:
            served_s3.prune_scratch(dest.parent, stack.key)
            pod_path = served_s3.pod_adapter_path(stack.agent, stack.key, pub.mount)
        try:  # one agent's unreadable adapter must not stop the others from being served
            report = json.loads((dest / COMPOSITION_FILE).read_text())
            plan.desired[name] = AdapterSpec.from_dir(name, dest, stack.label, served_path=pod_path)
        except (ValueError, OSError) as e:
            out.failures[f"{stack.agent}/{stack.key}"] = f"composed adapter unusable: {e}"
            continue
        out.stacks.append(stack)
        agent = by_name[stack.agent]
        pinned = bool(agent.pinned_versions and agent.pinned_versions.wire())
        out.agents.append(agent_entry(stack, float(str(report.get("relativeError", 0.0))),
                                      agent_trust(out.tiers, swarm, agent), pinned))  # fmt: skip
    if pub is not None:
        current = {s.agent: s.key for s in out.stacks}
        await asyncio.to_thread(pub.prune, current, {a.name for a in sw.spec.agents})
    return plan


async def sync_serving(
    kube: Kube,
    settings: OperatorSettings,
    body: Obj,
    sw: Swarm,
    ready_pods: list[ReadyPod],
    api_key: str | None,
    composer: Composer,
    *,
    adapters_mount: str | None = None,
) -> ServingOutcome:
    """Serve every agent's composed adapter on every ready pod; have the missing ones composed.

    ``adapters_mount`` is where an S3-only swarm's pods see their synced adapters (default
    ``/adapters``, the sidecar volume; tests running vLLM as a local process pass the local folder).
    """
    ns, swarm = body["metadata"]["namespace"], body["metadata"]["name"]
    out = ServingOutcome()
    out.tiers = {t["metadata"]["name"]: t for t in kube.list("LoRATier", ns)}
    out.last = serving_entries(swarm, sw, out.tiers)
    stacks = [s for s in desired_stacks(kube, settings, body, sw, out.tiers) if s.entries]
    if not stacks:
        return out
    s3_client = s3_client_for(kube, ns, sw.spec.storage)  # the Swarm's S3 identity (cached per configuration)
    plan = await _plan(sw, body, settings, stacks, out, adapters_mount, s3_client)
    if plan.waiting:
        progress = await composer.compose(body, sw, [s.spec() for s in plan.waiting])
        if progress.done:
            out = ServingOutcome(tiers=out.tiers, last=out.last)
            plan = await _plan(sw, body, settings, stacks, out, adapters_mount, s3_client)
        out.composing, out.compose = [s.agent for s in plan.waiting], progress
    hot_wanted = sw.spec.inference.placement.hot_replicas is not None
    queued = await _queued(sw, swarm, ready_pods, api_key, settings) if hot_wanted else set()
    last = out.last
    pods = plan_pods(sw, last, [s.agent for s in stacks], [p.name for p in ready_pods], queued)
    out.placement = pods
    waiting = {s.agent for s in plan.waiting}
    kept = await _reconcile_pods(sw, swarm, ready_pods, api_key, settings, plan, pods, waiting, out)
    for agent in out.agents:
        agent["servedOnPods"] = kept.get(agent["name"], 0)
        agent["placedOn"] = pods.ordinals(agent["name"])
        agent.pop("hot", None)
        if agent["name"] in pods.hot:
            agent["hot"] = True
    _carry_waiting(last, plan.waiting, kept, pods, out)
    return out


def _carry_waiting(last: dict[str, Obj], waiting: list[AgentStack], served_on: dict[str, int], pods: PodPlan,
                   out: ServingOutcome) -> None:  # fmt: skip
    """A waiting agent still serves its previous version: its last entry stays, re-counted."""
    for stack in waiting:
        prev = last.get(stack.agent)
        if prev is not None:
            out.agents.append({**prev, "name": stack.agent, "servedOnPods": served_on.get(stack.agent, 0),
                               "placedOn": pods.ordinals(stack.agent)})  # fmt: skip


async def _queued(sw: Swarm, swarm: str, ready_pods: list[ReadyPod], api_key: str | None,
                  settings: OperatorSettings) -> set[str]:  # fmt: skip
    """Agents whose requests queued on a pod within ``placement.hotWindowSeconds`` (each pod's ``/metrics``,
    read side by side within the pod deadline; a pod that does not answer counts no agent)."""
    from dynamiclora.serving.client import ClientConfig, VLLMClient

    cfg = ClientConfig(api_key=api_key, timeout_s=settings.vllm_timeout_seconds, retries=0)

    async def scrape(pod: ReadyPod) -> str:
        async with VLLMClient(f"http://{pod.ip}:{sw.spec.inference.port}", cfg) as client:
            return await asyncio.wait_for(client.metrics_text(), settings.pod_deadline_seconds)

    texts = await asyncio.gather(*(scrape(p) for p in ready_pods), return_exceptions=True)
    since = time.time() - sw.spec.inference.placement.hot_window_seconds
    return queued_agents([t for t in texts if isinstance(t, str)], since, swarm)


async def _reconcile_pods(sw: Swarm, swarm: str, ready_pods: list[ReadyPod], api_key: str | None,
                          settings: OperatorSettings, plan: _Plan, pods: PodPlan, waiting: set[str],
                          out: ServingOutcome) -> dict[str, int]:  # fmt: skip
    """Hot-swap each ready pod to the adapters of the agents placed on it; returns on how many placed pods
    each agent is served, and books where (``out.endpoints``).

    Pods are reconciled side by side, each within ``pod_deadline_seconds``: a pod that accepts
    connections but never answers (a stalled process) costs the pass one deadline, not one per pod,
    and the other pods are served as if it were not there.
    """
    from dynamiclora.serving.client import ClientConfig
    from dynamiclora.serving.hotswap import HotSwapper

    cfg = ClientConfig(api_key=api_key, timeout_s=settings.vllm_timeout_seconds)
    agent_of = {served_adapter_name(swarm, a): a for a in pods.placement.pods}
    work = []
    for pod in ready_pods:
        placed = pods.agents_on(pod.name)
        desired = {n: spec for n, spec in plan.desired.items() if agent_of.get(n) in placed}
        # Drained agents stay one pass (their endpoint is withdrawn first); waiting ones serve what they had.
        keep = {served_adapter_name(swarm, a) for a in pods.draining.get(pod.name, set()) | (placed & waiting)}
        work.append((pod, desired, keep))
    async with HotSwapper(cfg) as swapper:
        results = await asyncio.gather(*(
            _reconcile_pod(swapper, sw, swarm, pod, desired, keep, settings.pod_deadline_seconds)
            for pod, desired, keep in work))  # fmt: skip
    served_on: dict[str, int] = {}
    for (pod, desired, _), result in zip(work, results, strict=True):
        if isinstance(result, str):
            out.unresponsive[pod.name] = result
            ok: list[str] = []
        else:
            ok = _record_pod_result(sw, pod, result, desired, out)
        placed = pods.agents_on(pod.name)
        for agent in (agent_of[n] for n in ok if n in agent_of):
            if agent in placed:
                served_on[agent] = served_on.get(agent, 0) + 1
                out.endpoints.setdefault(agent, []).append(pod)
        missing = sorted(n for n in desired if n not in ok)
        out.pods.append({"name": pod.name, "podIP": pod.ip, "ready": True, "loadedAdapters": len(ok),
                         "missingAdapters": missing[:MAX_MISSING_LISTED]})  # fmt: skip
    return served_on


async def _reconcile_pod(swapper: HotSwapper, sw: Swarm, swarm: str, pod: ReadyPod, desired: dict[str, AdapterSpec],
                         keep: set[str], deadline: float) -> ReconcileResult | str:  # fmt: skip
    """One pod's reconcile, or why it was given up on (the deadline passed)."""
    from dynamiclora.serving.adapters import PodTarget

    target = PodTarget(
        base_url=f"http://{pod.ip}:{sw.spec.inference.port}",
        max_lora_rank=sw.spec.inference.max_lora_rank,
        base_model=sw.spec.base_model.name,
        base_model_aliases=(sw.spec.base_model.name,),
        max_cpu_loras=sw.spec.inference.max_cpu_loras,
        name=pod.name,
    )
    try:
        return await asyncio.wait_for(
            swapper.reconcile(target, desired, managed_prefix=f"{swarm}-", keep=keep), deadline)
    except TimeoutError:
        return f"no answer within {deadline:g} s (pod stalled?); its adapters are checked again next pass"
    except ServingError as exc:  # the pod as a whole (listing refused, no connection): this pod only
        return f"{type(exc).__name__}: {exc}"


def _record_pod_result(sw: Swarm, pod: ReadyPod, result: ReconcileResult, desired: dict[str, AdapterSpec],
                       out: ServingOutcome) -> list[str]:  # fmt: skip
    """Book one pod's reconcile into ``out``; returns the served names the pod serves as desired."""
    from dynamiclora.serving import served_s3

    out.swapped += [f"{pod.name}:{n}" for n in result.swapped + result.loaded]
    for n, err in result.failed.items():
        exc = result.errors.get(n)
        if sw.spec.storage.s3 is not None and exc is not None and served_s3.is_not_synced(exc):
            out.pending[f"{pod.name}/{n}"] = err  # the sidecar has not mirrored it yet
        else:
            out.failures[f"{pod.name}/{n}"] = err
    return [n for n in desired if n not in result.failed] + result.kept

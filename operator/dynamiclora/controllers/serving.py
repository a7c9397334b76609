"""Compose each agent's tier stack into one adapter and keep every ready vLLM pod serving it.

The composed adapter of an agent is keyed by the exact (tier, version) list it was built from and is
written once, atomically, to ``<storage>/served/<namespace>/<swarm>/<agent>/<key>/``; the vLLM pods read
it from the same volume. With S3-only storage it is composed in the operator's scratch folder and
uploaded to the bucket instead; each pod's adapter-sync sidecar mirrors it (see served_s3.py).
Re-running the reconcile with unchanged tiers composes nothing and costs one ``/v1/models`` call per
pod, and a restarted pod (which forgot its runtime adapters) gets them back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from dynamiclora.api.swarm import MAX_MISSING_LISTED, Swarm
from dynamiclora.builders.inference import model_path
from dynamiclora.builders.jobs import store_uri
from dynamiclora.builders.names import served_adapter_name
from dynamiclora.builders.tiers import stack_tier_names
from dynamiclora.controllers.promotion import served_version_of
from dynamiclora.controllers.stack_consistency import StackEntry, settle, versions_memo
from dynamiclora.controllers.swarm import ReadyPod
from dynamiclora.kube import Kube, Obj
from dynamiclora.settings import OperatorSettings

LEVEL_LETTER = {"context": "c", "agent": "a", "swarm": "s", "domain": "d", "foundation": "f"}


class ServingUnavailable(Exception):
    """The swarm cannot be served yet or as configured (reported as a condition)."""


@dataclass
class AgentStack:
    """The tier versions composed into one agent's served adapter."""

    agent: str
    entries: list[StackEntry] = field(default_factory=list)

    @property
    def key(self) -> str:
        text = "|".join(f"{e.store}/{e.tier}@{e.version}" for e in self.entries)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """Human-readable composite version, e.g. ``c3.a2.s1``."""
        return ".".join(f"{LEVEL_LETTER.get(e.level, e.level)}{e.version}" for e in self.entries)


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
    versions = versions_memo()  # shared tiers sit in every agent's stack: list each once per pass
    stacks = []
    for agent in sw.spec.agents:
        stack = AgentStack(agent.name)
        for tier_name in stack_tier_names(swarm, sw, agent.name):
            tier = tiers.get(tier_name)
            if tier is None or (entry := _entry(tier, tier_name, ns, default_store, settings)) is None:
                continue
            if not tier["spec"].get("pinnedVersion"):  # a pin is the user's explicit choice
                settled = settle(entry, stack.entries, versions)
                if settled is None:
                    continue
                entry = replace(entry, version=settled)
            stack.entries.append(entry)
        stacks.append(stack)
    return stacks


def _entry(tier: Obj, name: str, ns: str, default_store: str, settings: OperatorSettings) -> StackEntry | None:
    version = served_version_of(tier)
    if version is None:
        return None
    storage = tier["spec"].get("storage")
    store = default_store
    if storage:
        from dynamiclora.api.common import Storage

        store = store_uri(Storage.model_validate(storage), settings)
    return StackEntry(name, tier["spec"]["level"], version, store, ns)


def served_root(sw: Swarm, settings: OperatorSettings) -> Path:
    """Folder of composed adapters: on the storage PVC the vLLM pods mount, else the operator's scratch."""
    if sw.spec.storage.s3 is not None:
        return Path(settings.scratch_dir) / "served"
    if sw.spec.storage.pvc is None:
        raise ServingUnavailable("serving composed adapters needs spec.storage.pvc or spec.storage.s3")
    return Path(store_uri(sw.spec.storage, settings).removeprefix("file://")) / "served"


def compose_stack(
    stack: AgentStack, dest: Path, max_lora_rank: int, base_model: str, model_dir: str | None = None
) -> dict[str, object]:
    """Compose ``stack`` into a PEFT adapter at ``dest`` (atomic: temp dir, then rename).

    When the base model's weights are readable here (``model_dir``), the greedy output of the composed
    adapter under PEFT is stored beside it as a fingerprint, and the hot-swap then proves that vLLM
    serves exactly this adapter before reporting it served.

    Returns:
        The composition report (exact or truncated, error).
    """
    from dynamiclora.memory import compose, load_adapter, save_adapter
    from dynamiclora.storage.uri import open_store

    if (dest / "composition.json").exists():
        return dict(json.loads((dest / "composition.json").read_text()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        deltas = []
        for i, e in enumerate(stack.entries):
            local = work / f"in{i}"
            open_store(e.store).download(e.namespace, e.tier, e.version, local)
            delta, _meta = load_adapter(local)
            deltas.append(delta)
        composed, report = compose(deltas, max_lora_rank)
        out = work / "adapter"
        save_adapter(composed, out, base_model_name_or_path=base_model)
        if model_dir and Path(model_dir, "config.json").is_file():
            from dynamiclora.serving.fingerprint import write_fingerprint

            write_fingerprint(model_dir, out)
        summary = {
            **report.to_dict(),
            "key": stack.key,
            "label": stack.label,
            "tiers": [{"tier": e.tier, "level": e.level, "version": e.version} for e in stack.entries],
        }
        (out / "composition.json").write_text(json.dumps(summary, indent=2))
        os.replace(out, dest)  # readers see either nothing or the complete adapter
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class ServingOutcome:
    stacks: list[AgentStack] = field(default_factory=list)  # what was composed, reused to mark served versions
    tiers: dict[str, Obj] = field(default_factory=dict)  # the namespace's LoRATiers as listed for this pass
    agents: list[Obj] = field(default_factory=list)
    pods: list[Obj] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    swapped: list[str] = field(default_factory=list)
    # "<pod>/<adapter>" the pod's adapter-sync sidecar has not mirrored yet (retried, not a failure)
    pending: dict[str, str] = field(default_factory=dict)
    served_root: str | None = None  # where the composed adapters live: <servedRoot>/<agent>/<key>


async def sync_serving(
    kube: Kube,
    settings: OperatorSettings,
    body: Obj,
    sw: Swarm,
    ready_pods: list[ReadyPod],
    api_key: str | None,
    *,
    adapters_mount: str | None = None,
) -> ServingOutcome:
    """Compose every agent's adapter and reconcile every ready pod's loaded set against them.

    ``adapters_mount`` is where an S3-only swarm's pods see their synced adapters (default
    ``/adapters``, the sidecar volume; tests running vLLM as a local process pass the local folder).
    """
    import asyncio

    from dynamiclora.serving import served_s3
    from dynamiclora.serving.adapters import AdapterSpec, PodTarget
    from dynamiclora.serving.client import ClientConfig
    from dynamiclora.serving.hotswap import HotSwapper

    ns, swarm = body["metadata"]["namespace"], body["metadata"]["name"]
    out = ServingOutcome()
    out.tiers = {t["metadata"]["name"]: t for t in kube.list("LoRATier", ns)}
    stacks = [s for s in desired_stacks(kube, settings, body, sw, out.tiers) if s.entries]
    out.stacks = stacks
    desired: dict[str, AdapterSpec] = {}
    root = served_root(sw, settings) if stacks else None
    pub = None  # S3-only storage: publish for the pods' adapter-sync sidecars
    if stacks and sw.spec.storage.s3 is not None:
        backend = served_s3.s3_backend(store_uri(sw.spec.storage, settings))
        mount = served_s3.ADAPTERS_MOUNT
        if settings.local_executor:  # local pods share one host folder (see served_s3.local_adapters_dir)
            mount = served_s3.local_adapters_dir(settings.scratch_dir, ns, swarm)
        pub = served_s3.S3Publisher(backend, ns, swarm, adapters_mount or mount)
        out.served_root = pub.root_uri()
    elif root is not None:
        out.served_root = str(root / ns / swarm)
    for stack in stacks:
        assert root is not None
        dest = root / ns / swarm / stack.agent / stack.key
        if pub is not None:  # after an operator restart: the bytes the pods serve, not a recomposition
            await asyncio.to_thread(pub.restore, dest, stack.agent, stack.key)
        report = await asyncio.to_thread(
            compose_stack, stack, dest, sw.spec.inference.max_lora_rank, sw.spec.base_model.name,
            model_path(sw, settings),
        )  # fmt: skip
        name = served_adapter_name(swarm, stack.agent)
        pod_path = None
        if pub is not None:
            _uri, pod_path = await asyncio.to_thread(pub.publish, dest, stack.agent, stack.key)
        desired[name] = AdapterSpec.from_dir(name, dest, stack.label, served_path=pod_path)
        out.agents.append({
            "name": stack.agent,
            "servedAdapter": name,
            "servedVersion": stack.label,
            "adapterPath": f"{stack.agent}/{stack.key}",
            "compositionError": float(str(report.get("relativeError", 0.0))),
        })  # fmt: skip
    if pub is not None:
        await asyncio.to_thread(pub.prune, {s.agent: s.key for s in stacks}, {a.name for a in sw.spec.agents})
    served_on: dict[str, int] = {}
    cfg = ClientConfig(api_key=api_key, timeout_s=settings.vllm_timeout_seconds)
    async with HotSwapper(cfg) as swapper:
        for pod in ready_pods:
            target = PodTarget(
                base_url=f"http://{pod.ip}:{sw.spec.inference.port}",
                max_lora_rank=sw.spec.inference.max_lora_rank,
                base_model=sw.spec.base_model.name,
                base_model_aliases=(sw.spec.base_model.name,),
                max_cpu_loras=sw.spec.inference.max_cpu_loras,
                name=pod.name,
            )
            result = await swapper.reconcile(target, desired, managed_prefix=f"{swarm}-")
            out.swapped += [f"{pod.name}:{n}" for n in result.swapped + result.loaded]
            for n, err in result.failed.items():
                exc = result.errors.get(n)
                if pub is not None and exc is not None and served_s3.is_not_synced(exc):
                    out.pending[f"{pod.name}/{n}"] = err  # the sidecar has not mirrored it yet
                else:
                    out.failures[f"{pod.name}/{n}"] = err
            ok = [n for n in desired if n not in result.failed]
            for n in ok:
                served_on[n] = served_on.get(n, 0) + 1
            missing = sorted(n for n in desired if n in result.failed)
            out.pods.append({"name": pod.name, "podIP": pod.ip, "ready": True, "loadedAdapters": len(ok),
                             "missingAdapters": missing[:MAX_MISSING_LISTED]})  # fmt: skip
    for agent in out.agents:
        agent["servedOnPods"] = served_on.get(agent["servedAdapter"], 0)
    return out

"""No decorative field: every spec leaf of the three custom resources changes what the operator produces.

For each leaf (enumerated from the models, see ``spec_fields``) the test builds the same world twice, in
two fresh stores, changes the field to another valid value in one of them, runs the kind's reconcile
against the in-memory Kube and a real checkpoint store, and compares what came out: the objects the
operator applied or created (Service, StatefulSet, training and consolidation Jobs), the statuses it
wrote, its events, and, for a Swarm, the adapter stacks it would serve.

A Swarm's output deliberately does *not* include the LoRATier specs it generates: copying a field into
another object is not consuming it. Its pipeline therefore runs what consumes those tiers (the tier
reconciles, a migration policy, the serving plan), so a Swarm field only counts when it reaches one.

Fields that act only in some state get that state from ``CASES`` (a per-field setup), not an exemption.
Fields that reach nothing are listed in ``KNOWN_DECORATIVE`` with why; the test fails when a field
outside that list reaches nothing and when a listed field starts reaching something, so the list can
only shrink.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import json
import re
import time
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from dynamiclora.api.common import Storage
from dynamiclora.builders.jobs import experience_location, store_uri
from dynamiclora.builders.trainjob import TRAINJOB_CRD
from dynamiclora.controllers.conditions import write_status
from dynamiclora.controllers.policy import reconcile_policy
from dynamiclora.controllers.swarm import reconcile_swarm
from dynamiclora.controllers.tier import reconcile_tier
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.uri import open_store

from .fakekube import FakeKube
from .spec_fields import SPECS, Leaf, spec_leaves

Obj = dict[str, Any]
NS = "default"
ROOT = Path(__file__).resolve().parents[3]
TIER = "support-alice-context"  # the LoRATier the LoRATier cases change
AGENT_KEYS = {"AWS_ACCESS_KEY_ID": "dGVzdGluZw==", "AWS_SECRET_ACCESS_KEY": "dGVzdGluZw=="}  # "testing"

# "Kind path" -> why it reaches no consumer. Only shrinks: a listed field that starts acting fails the test.
KNOWN_DECORATIVE: dict[str, str] = {
    "Swarm spec.agents[].domain": "informative by design (its description says so)",
    "Swarm spec.agents[].description": "free text by design",
}


@dataclass
class Ctx:
    """Per-run facts a setup or a value may need."""

    root: Path
    bucket: str = ""
    endpoint: str = ""


@dataclass
class World:
    """The state both runs of a case start from (the mutated run then changes one field)."""

    swarm: Obj
    policy: Obj
    records: dict[str, int] = field(default_factory=lambda: {"alice": 30, "bob": 30})
    # (tier, metadata) published in this order; the default history gives the policy work to do.
    publish: list[tuple[str, Obj]] = field(default_factory=lambda: [
        ("support-alice-context", {}), ("support-alice-context", {}),
        ("support-bob-context", {}), ("support-bob-context", {}),
        ("support-alice-agent", {}),
        ("support-bob-agent", {}), ("support-bob-agent", {"gate": {"accepted": False, "reason": "forgot"}}),
    ])  # fmt: skip
    tier_status: dict[str, Obj] = field(default_factory=dict)  # status a tier has before the pass
    tier_spec: Obj = field(default_factory=dict)  # merged into TIER's spec (LoRATier cases)
    data_storage: Obj | None = None  # where records and versions go; the Swarm's storage when None
    secrets: list[str] = field(default_factory=list)
    crds: list[str] = field(default_factory=list)  # CustomResourceDefinitions installed in the cluster


def _default_world() -> World:
    swarm = yaml.safe_load((ROOT / "examples" / "swarm.yaml").read_text())
    swarm["spec"]["storage"] = {"pvc": {"claimName": "ckpt", "path": "dl"}}
    swarm["spec"]["inference"].pop("apiKeySecretRef")
    policy = {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "MigrationPolicy",
              "metadata": {"name": "p", "namespace": NS},
              "spec": {"swarmRef": "support", "pairs": [{"source": "context", "target": "agent"}],
                       "stability": {"window": 2}, "interval": "1ms",
                       "bandwidth": {"maxMigrationsPerPeriod": 8, "period": "1h", "maxConcurrentJobs": 2}}}  # fmt: skip
    return World(swarm=swarm, policy=policy)


# ---- per-field setups: the state in which a conditional field acts ---------------------------------------

Setup = Callable[[World, Ctx], None]


def _publish_more(tier: str, total: int) -> Setup:
    def setup(w: World, ctx: Ctx) -> None:
        have = sum(1 for t, _ in w.publish if t == tier)
        w.publish += [(tier, {})] * (total - have)

    setup.__name__ = f"publish_{tier}_{total}"
    return setup


def _recently_trained(tier: str) -> Setup:
    def setup(w: World, ctx: Ctx) -> None:
        five_min_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
        w.tier_status.setdefault(tier, {})["lastTrainingTime"] = five_min_ago

    setup.__name__ = f"recently_trained_{tier}"
    return setup


def _s3_storage(ctx: Ctx, creds: bool) -> Obj:
    s3: Obj = {"bucket": ctx.bucket, "prefix": "dl", "endpoint": ctx.endpoint, "region": "us-east-1"}
    if creds:
        s3["credentialsSecretRef"] = {"name": "s3-a"}
    return {"s3": s3}


def swarm_on_s3(w: World, ctx: Ctx) -> None:
    w.swarm["spec"]["storage"] = _s3_storage(ctx, creds=True)
    w.secrets += ["s3-a", "s3-b"]


def tier_on_s3(w: World, ctx: Ctx) -> None:
    w.tier_spec["storage"] = w.data_storage = _s3_storage(ctx, creds=True)
    w.secrets += ["s3-a", "s3-b"]


def tier_on_own_pvc(w: World, ctx: Ctx) -> None:
    w.tier_spec["storage"] = {"pvc": {"claimName": "ckpt", "path": "dl"}}


def agent_tier_keeps_5(w: World, ctx: Ctx) -> None:
    w.swarm["spec"]["agentTier"]["retention"]["keepVersions"] = 5
    _publish_more("support-alice-agent", 6)(w, ctx)


def no_training_in_flight(w: World, ctx: Ctx) -> None:
    """No new records: no context tier trains, so the policy may migrate out of it (never beside a training)."""
    w.records = {"alice": 0, "bob": 0}


def model_on_pvc(w: World, ctx: Ctx) -> None:
    w.swarm["spec"]["baseModel"] = {"name": "tiny-llama", "pvc": {"claimName": "models", "path": "tiny"}}


def model_on_s3(w: World, ctx: Ctx) -> None:
    w.swarm["spec"]["baseModel"] = {"name": "tiny-llama", "s3Uri": "s3://models/tiny"}


def with_api_key(w: World, ctx: Ctx) -> None:
    w.swarm["spec"]["inference"]["apiKeySecretRef"] = {"name": "support-vllm", "key": "api-key"}


def consensus_pair(w: World, ctx: Ctx) -> None:
    w.policy["spec"]["pairs"] = [{"source": "context", "target": "swarm"}]


def budget_used_this_period(w: World, ctx: Ctx) -> None:
    started = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)).isoformat()
    w.policy["status"] = {"periodStart": started, "migrationsThisPeriod": 8}


def bypass_enabled(w: World, ctx: Ctx) -> None:
    w.policy["spec"]["emergencyBypass"] = {"enabled": True, "maxPerPeriod": 2}


def evaluated_a_minute_ago(w: World, ctx: Ctx) -> None:
    w.policy["status"] = {"lastEvaluationTime": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()}


@dataclass(frozen=True)
class Case:
    """How to exercise one field: the state it acts in, and the value to change it to (else generated)."""

    setup: Setup | None = None
    value: Any = None  # a value, or a callable(ctx) -> value
    s3: bool = False  # needs the S3 endpoint (moto)


def _endpoint_alias(ctx: Ctx) -> str:
    return ctx.endpoint.replace("127.0.0.1", "localhost")  # the same server under another name


def _storage_cases(prefix: str, s3_setup: Setup, pvc_setup: Setup | None) -> dict[str, Case]:
    return {
        f"{prefix}.s3.bucket": Case(s3_setup, "missing-bucket", s3=True),
        f"{prefix}.s3.prefix": Case(s3_setup, "dl2", s3=True),
        f"{prefix}.s3.endpoint": Case(s3_setup, _endpoint_alias, s3=True),
        f"{prefix}.s3.region": Case(s3_setup, "eu-west-1", s3=True),
        f"{prefix}.s3.credentialsSecretRef.name": Case(s3_setup, "s3-b", s3=True),
        f"{prefix}.pvc.claimName": Case(pvc_setup, "ckpt2"),
        f"{prefix}.pvc.path": Case(pvc_setup, "dl2"),
    }


def hot_agents_get_3_pods(w: World, ctx: Ctx) -> None:
    w.swarm["spec"]["inference"]["placement"] = {"hotReplicas": 3}


def _two_nodes(kind_prefix: str) -> Setup:
    """The tier trains on 2 nodes: how the processes share the work is a choice."""

    def setup(w: World, ctx: Ctx) -> None:
        training = w.swarm["spec"]["contextTier"].setdefault("training", {})
        if kind_prefix == "spec":  # the tier's spec replaces the Swarm template's training block
            w.tier_spec["training"] = {**training, "nodes": 2}
        else:
            training["nodes"] = 2

    setup.__name__ = f"two_nodes_{kind_prefix.replace('.', '_')}"
    return setup


def _anchored(kind_prefix: str) -> Setup:
    """The tier keeps the answers of an anchor set steady (the file exists): how much is a choice."""

    def setup(w: World, ctx: Ctx) -> None:
        anchors = ctx.root / "pvc" / "ckpt" / "dl" / "anchors"
        anchors.mkdir(parents=True, exist_ok=True)
        (anchors / "set.jsonl").write_text(json.dumps({"agent": "alice", "timestamp": "2026-11-22T00:00:00Z",
                                                       "prompt": "q", "response": "a"}) + "\n")
        training = w.swarm["spec"]["contextTier"].setdefault("training", {})
        if kind_prefix == "spec":  # the tier's spec replaces the Swarm template's training block
            w.tier_spec["training"] = {**training, "anchorSet": "anchors/set.jsonl"}
        else:
            training["anchorSet"] = "anchors/set.jsonl"

    setup.__name__ = f"anchored_{kind_prefix.replace('.', '_')}"
    return setup


def _kubeflow_trainer(kind_prefix: str) -> Setup:
    """Kubeflow Trainer installed and the tier trains on 2 nodes: a runtime decides what runs it."""
    two_nodes = _two_nodes(kind_prefix)

    def setup(w: World, ctx: Ctx) -> None:
        w.crds.append(TRAINJOB_CRD)
        two_nodes(w, ctx)

    setup.__name__ = f"kubeflow_trainer_{kind_prefix.replace('.', '_')}"
    return setup


def _template_cases(kind_prefix: str, tier: str, keep: int, trains: bool = True) -> dict[str, Case]:
    """Cases of a tier template (a LoRATier's spec, a Swarm's contextTier, or its agentTier: no training)."""
    kept = {
        f"{kind_prefix}.retention.keepVersions": Case(_publish_more(tier, keep + 1)),
        f"{kind_prefix}.retention.keepFor": Case(_publish_more(tier, keep + 1), "1h"),
    }
    if not trains:
        return kept
    return {
        **kept,
        f"{kind_prefix}.training.image": Case(value="ghcr.io/dynamiclora/trainer:other"),
        f"{kind_prefix}.training.serviceAccountName": Case(value="trainer"),
        f"{kind_prefix}.training.queue": Case(value="team-queue"),
        f"{kind_prefix}.training.nodes": Case(value=2),
        f"{kind_prefix}.training.procsPerNode": Case(value=2),
        f"{kind_prefix}.training.runtime": Case(_kubeflow_trainer(kind_prefix), "torch-distributed"),
        f"{kind_prefix}.training.strategy": Case(_two_nodes(kind_prefix), "FSDP"),
        f"{kind_prefix}.training.minSamples": Case(value=31),  # more than the 30 records there are
        f"{kind_prefix}.training.schedule": Case(_recently_trained(tier), "1h"),
        f"{kind_prefix}.qualityGate.regressionSet": Case(value="regression/set.jsonl"),
        f"{kind_prefix}.training.anchorSet": Case(value="anchors/set.jsonl"),  # missing: training waits for it
        f"{kind_prefix}.training.anchorWeight": Case(_anchored(kind_prefix), 2.0),
    }


CASES: dict[tuple[str, str], Case] = {
    **{("Swarm", p): c for p, c in {
        **_template_cases("spec.contextTier", "support-alice-context", 8),
        **_template_cases("spec.agentTier", "support-alice-agent", 20, trains=False),
        # keepFor only sees versions in the status history (20 newest): with the example's keepVersions 20
        # it can protect nothing, a product defect reported separately; with fewer kept it acts.
        "spec.agentTier.retention.keepFor": Case(agent_tier_keeps_5, "1h"),
        # What the migration Job into the agent tier is given (its rank, its gate): a migration starts
        # when no training runs out of the context tier.
        **{f"spec.agentTier.{f}": Case(no_training_in_flight) for f in (
            "rank", "qualityGate.enabled", "qualityGate.maxRegression", "qualityGate.significance",
            "qualityGate.evalRecords")},
        # Alice's requests queued on a pod 100 s ago (the serving plan's metrics, below): she is hot.
        "spec.inference.placement.hotReplicas": Case(value=3),
        "spec.inference.placement.hotWindowSeconds": Case(hot_agents_get_3_pods, 10),
        "spec.baseModel.name": Case(value="other-model"),
        "spec.baseModel.path": Case(value="/models/other"),
        "spec.baseModel.pvc.claimName": Case(model_on_pvc, "models2"),
        "spec.baseModel.pvc.path": Case(model_on_pvc, "other"),
        "spec.baseModel.s3Uri": Case(model_on_s3, "s3://models/other"),
        "spec.agents[].name": Case(value="carol"),
        "spec.agents[].domain": Case(value="support"),
        "spec.agents[].description": Case(value="Other text."),
        "spec.agents[].regressionSet": Case(value="regression/alice.jsonl"),
        "spec.agents[].anchorSet": Case(value="anchors/alice.jsonl"),
        "spec.agents[].pinnedVersions.context": Case(value=1),  # a rollback: alice's context tier has v2
        "spec.agents[].pinnedVersions.agent": Case(value=1),
        "spec.sharedTiers.swarm": Case(value="other-swarm"),
        "spec.sharedTiers.domain": Case(value="other-domain"),
        "spec.sharedTiers.foundation": Case(value="base-foundation"),
        "spec.inference.image": Case(value="vllm/vllm-openai:other"),
        "spec.inference.apiKeySecretRef.name": Case(with_api_key, "other-secret"),
        "spec.inference.apiKeySecretRef.key": Case(with_api_key, "other-key"),
        "spec.inference.extraArgs": Case(value=["--enforce-eager"]),
        "spec.experience.prefix": Case(value="interactions2"),
        **_storage_cases("spec.storage", swarm_on_s3, None),
    }.items()},
    **{("LoRATier", p): c for p, c in {
        **_template_cases("spec", TIER, 8),
        "spec.swarmRef": Case(value="other-swarm"),
        "spec.agent": Case(value="bob"),
        "spec.pinnedVersion": Case(_publish_more(TIER, 3), 2),
        **_storage_cases("spec.storage", tier_on_s3, tier_on_own_pvc),
    }.items()},
    **{("MigrationPolicy", p): c for p, c in {
        "spec.swarmRef": Case(value="other-swarm"),
        "spec.pairs[].source": Case(consensus_pair, "agent"),
        "spec.consensus.rule": Case(consensus_pair),
        "spec.consensus.minAgents": Case(consensus_pair),
        "spec.consensus.outlierThreshold": Case(consensus_pair),
        "spec.bandwidth.period": Case(budget_used_this_period, "10m"),
        "spec.emergencyBypass.maxPerPeriod": Case(bypass_enabled, 0),
        "spec.emergencyBypass.minStability": Case(bypass_enabled, 0.5),
        "spec.interval": Case(evaluated_a_minute_ago, "5m"),
    }.items()},
}


# ---- changing a field ------------------------------------------------------------------------------------


def _get(obj: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if obj is None:
            return None
        obj = obj[0] if k == "[]" else getattr(obj, k) if isinstance(obj, BaseModel) else obj.get(k)
    return obj


def _set(obj: Obj, keys: tuple[str, ...], value: Any) -> None:
    node: Any = obj
    for k in keys[:-1]:
        node = node[0] if k == "[]" else node.setdefault(k, {})
    node[keys[-1]] = value


def _generated(leaf: Leaf, cur: Any) -> list[Any]:
    """Other values of the field's type, nearest first; the model decides which are valid."""
    tp = leaf.annotation
    if tp is bool:
        return [not cur]
    if typing.get_origin(tp) is typing.Literal:
        return [c for c in typing.get_args(tp) if c != cur]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [m.value for m in tp if m.value != cur]
    if tp is int:
        return [cur + 1, cur - 1] if cur is not None else [2, 17, 100]
    if tp is float:
        return [cur * 1.5, cur / 2, cur * 1.1, cur * 0.9] if cur else [0.1, 1.0, -0.1]
    if typing.get_origin(tp) is dict:
        return [{**(cur or {}), "example.com/extra": "1"}]
    if typing.get_origin(tp) is list:
        return [[*(cur or []), "gate_proj"]]
    return []  # strings have formats of their own: CASES gives the value


def _mutate(leaf: Leaf, spec: Obj, ctx: Ctx) -> Any:
    """Change ``leaf`` in ``spec`` (in place) to another valid value; returns it."""
    model = SPECS[leaf.kind]
    case = CASES.get((leaf.kind, leaf.path), Case())
    cur = _get(model.model_validate(spec), leaf.attrs)
    if case.value is not None:
        candidates = [case.value(ctx) if callable(case.value) else case.value]
    else:
        candidates = _generated(leaf, cur)
    for value in candidates:
        trial = copy.deepcopy(spec)
        _set(trial, leaf.keys, value)
        try:
            model.model_validate(trial)
        except ValidationError:
            continue
        _set(spec, leaf.keys, value)
        return value
    raise AssertionError(f"{leaf.path}: no valid new value among {candidates!r}; give one in CASES")


# ---- running the operator --------------------------------------------------------------------------------


def _records(storage: Storage, prefix: str, swarm: str, agent: str, n: int, settings: OperatorSettings) -> None:
    lines = "".join(json.dumps({"agent": agent, "timestamp": "2026-11-22T00:00:00Z", "prompt": f"q{i}",
                                "response": "a"}) + "\n" for i in range(n))  # fmt: skip
    location = experience_location(storage, prefix, NS, swarm, agent, settings)
    if storage.s3 is not None:
        from dynamiclora.storage.s3 import s3_client_from_env

        key = location.removeprefix(f"s3://{storage.s3.bucket}/").rstrip("/")
        s3_client_from_env(storage.s3.endpoint).put_object(Bucket=storage.s3.bucket, Key=f"{key}/batch.jsonl",
                                                           Body=lines.encode())  # fmt: skip
    else:
        Path(location).mkdir(parents=True, exist_ok=True)
        (Path(location) / "batch.jsonl").write_text(lines)


def _prepare(kube: FakeKube, settings: OperatorSettings, w: World, ctx: Ctx) -> None:
    """Records, published versions, Secrets, shared tiers and pre-existing tier status of ``w``."""
    storage = Storage.model_validate(w.data_storage or w.swarm["spec"]["storage"])
    for agent, n in w.records.items():
        _records(storage, w.swarm["spec"]["experience"]["prefix"], w.swarm["metadata"]["name"], agent, n, settings)
    store = open_store(store_uri(storage, settings))
    payload = ctx.root / "payload"
    payload.mkdir(exist_ok=True)
    (payload / "adapter_config.json").write_text("{}")
    (payload / "stats.json").write_text(json.dumps({"energy": 2.5, "norm": 1.5, "screenedFraction": 0.4}))
    for tier, meta in w.publish:
        store.publish(NS, tier, {"adapter_config.json": payload / "adapter_config.json",
                                 "stats.json": payload / "stats.json"}, meta)  # fmt: skip
    for name in w.secrets:
        kube.add({"kind": "Secret", "metadata": {"name": name}, "data": dict(AGENT_KEYS)})
    for name in w.crds:
        kube.add({"kind": "CustomResourceDefinition", "metadata": {"name": name, "namespace": ""}})
    for name, level in (("support-swarm", "swarm"), ("billing-domain", "domain"), ("base-foundation", "foundation")):
        kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier", "metadata": {"name": name},
                  "spec": {"level": level}, "status": {"currentVersion": 1}})  # fmt: skip
    for name, status in w.tier_status.items():
        # A status without a spec: the Swarm's apply fills the spec in and keeps the status.
        kube.add({"kind": "LoRATier", "metadata": {"name": name}, "status": status})


class Pass:
    """Runs reconcile functions, turning what they raise into output (a retry is also a result)."""

    def __init__(self, kube: FakeKube, settings: OperatorSettings) -> None:
        self.kube, self.settings = kube, settings
        self.events: list[tuple[str, str, str, str]] = []
        self.errors: list[str] = []

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:
            self.errors.append(f"{what}: {type(e).__name__}: {e}")
            return None

    def swarm(self, body: Obj) -> bool:
        return self._guard("Swarm", lambda: reconcile_swarm(self.kube, self.settings, self.kube.add(body))) is not None

    def tier(self, name: str) -> None:
        body = self.kube.get("LoRATier", NS, name)
        assert body is not None
        out = self._guard(f"LoRATier/{name}", lambda: reconcile_tier(self.kube, self.settings, body))
        if out is not None:
            write_status(self.kube, body, out.wire())
            self.events += [(name, e.type, e.reason, e.message) for e in out.events]

    def policy(self, body: Obj) -> None:
        live = self.kube.add(body)
        out = self._guard("MigrationPolicy", lambda: reconcile_policy(self.kube, self.settings, live))
        if out is not None:
            write_status(self.kube, live, out.wire())
            self.events += [("p", e.type, e.reason, e.message) for e in out.events]


def _swarm_tiers(kube: FakeKube) -> list[str]:
    """Generated tiers, slower first: a context tier's training Job freezes its agent tier's version."""
    tiers = [t for t in kube.list("LoRATier", NS) if t["metadata"].get("labels", {}).get("dynamiclora.io/swarm")]
    order = {"agent": 0, "context": 1}
    return [t["metadata"]["name"] for t in sorted(tiers, key=lambda t: order[t["spec"]["level"]])]


def _serving_plan(kube: FakeKube, settings: OperatorSettings, body: Obj) -> list[Obj]:
    """The serving pass's stacks, its placement of them on 3 ready pods, and the agents' routes (written into
    ``kube``) as if every placed pod served its agents."""
    from dynamiclora.api.swarm import Swarm
    from dynamiclora.controllers.placement import plan_pods, queued_agents
    from dynamiclora.controllers.routing import sync_routes
    from dynamiclora.controllers.serving import desired_stacks
    from dynamiclora.controllers.swarm import ReadyPod

    live = kube.get("Swarm", NS, body["metadata"]["name"])
    assert live is not None
    sw = Swarm.model_validate(live)
    stacks = desired_stacks(kube, settings, live, sw)
    pods = [ReadyPod(f"support-vllm-{i}", f"10.0.0.{i}", 0) for i in range(3)]
    queued = queued_agents([_lora_info({"support-alice": time.time() - 100})],
                           time.time() - sw.spec.inference.placement.hot_window_seconds, "support")  # fmt: skip
    placed = plan_pods(sw, {}, [s.agent for s in stacks], [p.name for p in pods], queued).placement.pods
    sync_routes(kube, live, sw, {a: [p for p in pods if p.name in names] for a, names in placed.items()})
    return [dataclasses.asdict(s) for s in stacks] + [{"placement": placed}]


def _lora_info(waited: dict[str, float]) -> str:
    """A vLLM pod's /metrics as its Prometheus logger writes it: one vllm:lora_requests_info series per
    (running, waiting) set, valued with the time it was last seen."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    gauge = Gauge("vllm:lora_requests_info", "Running stats on lora requests.",
                  ["max_lora", "waiting_lora_adapters", "running_lora_adapters"], registry=registry)  # fmt: skip
    for adapter, when in waited.items():
        gauge.labels("2", adapter, "support-bob").set(when)
    return generate_latest(registry).decode()


def _produce(kind: str, leaf: Leaf | None, case: Case, ctx: Ctx) -> Obj:
    """What the operator produces from the case's world, with ``leaf`` changed when given."""
    settings = OperatorSettings(pvc_mount_root=str(ctx.root / "pvc"))
    kube = FakeKube()
    w = _default_world()
    if case.setup:
        case.setup(w, ctx)
    _prepare(kube, settings, w, ctx)
    run = Pass(kube, settings)
    plan: list[Obj] = []
    if kind == "Swarm":
        if leaf:
            _mutate(leaf, w.swarm["spec"], ctx)
        w.policy["spec"]["pairs"] = [{"source": "context", "target": "agent"}, {"source": "agent", "target": "swarm"}]
        w.policy["spec"]["bandwidth"]["maxConcurrentJobs"] = 10
        if run.swarm(w.swarm):
            for name in _swarm_tiers(kube):
                run.tier(name)
            run.policy(w.policy)
            plan = run._guard("serving", lambda: _serving_plan(kube, settings, w.swarm)) or []
    elif kind == "LoRATier":
        assert run.swarm(w.swarm), run.errors
        spec = kube.objects[("LoRATier", NS, TIER)]["spec"]
        spec.update(copy.deepcopy(w.tier_spec))
        if leaf:
            _mutate(leaf, spec, ctx)
        run.tier(TIER)
    else:
        assert run.swarm(w.swarm), run.errors
        if leaf:
            _mutate(leaf, w.policy["spec"], ctx)
        run.policy(w.policy)
    # Of the custom resources only the status is output: the spec (and its hash annotation) of a tier a
    # Swarm generates is an intermediate, judged by what the tier's own reconcile makes of it.
    produced = {
        f"{k}/{n}": obj.get("status") if k in SPECS else obj
        for (k, _, n), obj in sorted(kube.objects.items()) if k not in ("Secret", "Swarm")
    }  # fmt: skip
    # What retention left in the store is an effect too (the event alone does not say which versions).
    versions = {t: run._guard("versions", _lister(uri, t)) for t, uri in _tier_stores(kube, settings, w).items()}
    out = {"objects": produced, "events": run.events, "errors": run.errors, "serving": plan, "versions": versions}
    normalized: Obj = _normalize(out, ctx)
    return normalized


def _lister(uri: str, tier: str) -> Callable[[], list[int]]:
    return lambda: open_store(uri).list_versions(NS, tier)


def _tier_stores(kube: FakeKube, settings: OperatorSettings, w: World) -> dict[str, str]:
    """Tier name -> the store its versions are in (the tier's own storage, else the world's)."""
    default = store_uri(Storage.model_validate(w.data_storage or w.swarm["spec"]["storage"]), settings)
    out = {}
    for t in kube.list("LoRATier", NS):
        own = (t.get("spec") or {}).get("storage")
        out[t["metadata"]["name"]] = store_uri(Storage.model_validate(own), settings) if own else default
    return out


VOLATILE = {"uid", "lastTransitionTime", "time", "lastEvaluationTime", "periodStart", "rateSampleTime",
            "lastTrainingTime", "lastFailureTime", "created", "checkpointSha256", "sha256"}  # fmt: skip


def _normalize(x: Any, ctx: Ctx) -> Any:
    """Drop clocks and content digests (they differ between any two runs) and the run's own paths."""
    if isinstance(x, dict):
        return {k: _normalize(v, ctx) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list | tuple):
        return [_normalize(v, ctx) for v in x]
    if isinstance(x, str):
        x = x.replace(str(ctx.root), "<ROOT>")
        # A composed stack's key hashes its stores' URIs, the run's paths among them (--serve-stack).
        x = STACK_KEY.sub('"key":"<KEY>"', x)
        return x.replace(ctx.bucket, "<BUCKET>") if ctx.bucket else x
    return x


STACK_KEY = re.compile(r'"key":"[0-9a-f]{8,64}"')


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two outputs differ (for the failure message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path or "/"]


# ---- the tests -------------------------------------------------------------------------------------------

LEAVES = [leaf for kind in SPECS for leaf in spec_leaves(kind)]
_BASELINES: dict[tuple[str, str], Obj] = {}


@pytest.fixture
def make_ctx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Callable[[bool], Ctx]:
    def make(s3: bool) -> Ctx:
        ctx = Ctx(root=tmp_path_factory.mktemp("world"))
        if s3:
            request.getfixturevalue("s3_env")  # the operator's own S3 client reads the environment
            ctx.endpoint = request.getfixturevalue("moto_s3_endpoint")
            ctx.bucket = f"dl-{uuid.uuid4().hex[:12]}"
            from dynamiclora.storage.s3 import s3_client_from_env

            s3_client_from_env(ctx.endpoint).create_bucket(Bucket=ctx.bucket)
        return ctx

    return make


def test_tables_name_real_fields() -> None:
    paths = {(leaf.kind, leaf.path) for leaf in LEAVES}
    assert set(CASES) <= paths, sorted(set(CASES) - paths)
    names = {f"{kind} {path}" for kind, path in paths}
    assert set(KNOWN_DECORATIVE) <= names, sorted(set(KNOWN_DECORATIVE) - names)


@pytest.mark.parametrize("leaf", LEAVES, ids=[f"{leaf.kind}:{leaf.path}" for leaf in LEAVES])
def test_field_changes_what_the_operator_produces(leaf: Leaf, make_ctx: Callable[[bool], Ctx]) -> None:
    case = CASES.get((leaf.kind, leaf.path), Case())
    key = (leaf.kind, case.setup.__name__ if case.setup else "")
    if key not in _BASELINES:  # the same world gives the same output: one baseline per setup
        _BASELINES[key] = _produce(leaf.kind, None, case, make_ctx(case.s3))
    changed = _diff(_BASELINES[key], _produce(leaf.kind, leaf, case, make_ctx(case.s3)))
    name = f"{leaf.kind} {leaf.path}"
    if name in KNOWN_DECORATIVE:
        assert not changed, f"{name} now reaches a consumer ({changed[:5]}): remove it from KNOWN_DECORATIVE"
    else:
        assert changed, (f"{name}: changing it changes nothing the operator produces. Wire it to a consumer, "
                         "give it the state it acts in (CASES), or list it in KNOWN_DECORATIVE with why")  # fmt: skip


def test_keep_for_protects_young_versions_outside_the_status_history(make_ctx: Callable[[bool], Ctx]) -> None:
    def keep_20_for_a_week(w: World, ctx: Ctx) -> None:
        w.tier_spec["retention"] = {"keepVersions": 20, "keepFor": "168h"}
        _publish_more(TIER, 21)(w, ctx)

    out = _produce("LoRATier", None, Case(keep_20_for_a_week), make_ctx(False))
    assert out["versions"][TIER] == list(range(1, 22))  # all 21 are minutes old

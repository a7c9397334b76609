"""The operator reads a custom resource's bucket with that resource's identity, never its own (issue 16).

moto checks credentials for the whole test (``iam_user``): the operator's environment holds keys moto
refuses (``testing``), the Swarm's Secret a tenant's keys. Every read below would fail with the
operator's own identity: settling a stack against half-applied migrations, finding a regression set,
reading a consolidation Job's result and auditing it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.names import ANNOTATION_TARGET
from dynamiclora.controllers import handlers
from dynamiclora.controllers.conditions import write_status
from dynamiclora.controllers.inputs import input_exists
from dynamiclora.controllers.policy import reconcile_policy
from dynamiclora.controllers.serving import desired_stacks
from dynamiclora.controllers.swarm import reconcile_swarm
from dynamiclora.serving.metrics import REGISTRY
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.audit import AuditLog
from dynamiclora.storage.s3 import build_s3_client
from dynamiclora.storage.uri import open_store

from .fakekube import FakeKube
from .test_store_feed import _feed_until

NS = "default"
CTX, AGENT = "support-alice-context", "support-alice-agent"
SECRET = "tenant-s3"


class World:
    def __init__(self, kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], endpoint: str,
                 keys: tuple[str, str], tmp: Path) -> None:  # fmt: skip
        self.kube, self.settings, self.tmp = kube, settings, tmp
        self.client = build_s3_client(endpoint, None, *keys)  # the tenant's, as the Jobs get it
        self.bucket = f"tenant-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=self.bucket)
        self.uri = f"s3://{self.bucket}/dl"
        names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        data = {k: base64.b64encode(v.encode()).decode() for k, v in zip(names, keys, strict=True)}
        kube.add({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NS}, "data": data})
        swarm_body["spec"]["storage"] = {"s3": {"bucket": self.bucket, "prefix": "dl", "endpoint": endpoint,
                                                "credentialsSecretRef": {"name": SECRET}}}  # fmt: skip
        self.swarm = kube.add(swarm_body)
        reconcile_swarm(kube, settings, self.swarm)
        self.store = open_store(self.uri, s3_client=self.client)

    def publish(self, tier: str, kind: str, derived_from: int | None = None) -> int:
        stats = self.tmp / "stats.json"
        stats.write_text(json.dumps({"energy": 1.0, "norm": 1.0}))
        meta: dict[str, Any] = {"kind": kind}
        if derived_from is not None:
            src = self.store.get(NS, CTX, derived_from)
            meta["derivedFrom"] = [{"uri": src.uri, "digest": src.digest}]
        return int(self.store.publish(NS, tier, {"stats.json": stats}, meta).version)


@pytest.fixture
def world(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], moto_s3_endpoint: str,
          iam_user: tuple[str, str], tmp_path: Path) -> World:  # fmt: skip
    return World(kube, settings, swarm_body, moto_s3_endpoint, iam_user, tmp_path)


def test_the_operator_itself_is_refused(world: World) -> None:
    """The premise: with the operator's own keys, moto answers AccessDenied/InvalidAccessKeyId."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        open_store(world.uri).list_versions(NS, CTX)


def test_serving_settles_stacks_in_the_swarms_bucket(world: World) -> None:
    for _ in range(2):
        world.publish(CTX, "training")
    world.publish(AGENT, "migration", derived_from=2)  # a1 holds what moved out of c2
    for tier, version in ((CTX, 2), (AGENT, 1)):
        world.kube.objects[("LoRATier", NS, tier)]["status"] = {"currentVersion": version}
    sw = Swarm.model_validate(world.swarm)
    [stack] = [s for s in desired_stacks(world.kube, world.settings, world.swarm, sw) if s.agent == "alice"]
    assert [(e.tier, e.version) for e in stack.entries] == [(CTX, 2)]  # a1 waits for its residual

    world.publish(CTX, "migration-source", derived_from=2)  # c3: the residual
    world.kube.objects[("LoRATier", NS, CTX)]["status"] = {"currentVersion": 3}
    [stack] = [s for s in desired_stacks(world.kube, world.settings, world.swarm, sw) if s.agent == "alice"]
    assert [(e.tier, e.version) for e in stack.entries] == [(CTX, 3), (AGENT, 1)]


def test_a_regression_set_in_the_bucket_is_found_with_the_storage_identity(world: World) -> None:
    world.client.put_object(Bucket=world.bucket, Key="dl/regression/alice.jsonl", Body=b"{}\n")
    found = f"s3://{world.bucket}/dl/regression/alice.jsonl"
    assert input_exists(found, world.settings, world.client)
    assert not input_exists(f"s3://{world.bucket}/dl/regression/bob.jsonl", world.settings, world.client)


def test_a_consolidation_result_is_read_and_audited_with_the_swarms_identity(world: World) -> None:
    for _ in range(2):
        world.publish(CTX, "training")
    policy = world.kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "MigrationPolicy",
                             "metadata": {"name": "p", "namespace": NS},
                             "spec": {"swarmRef": "support", "pairs": [{"source": "context", "target": "agent"}],
                                      "stability": {"window": 2}, "interval": "1ms"}})  # fmt: skip
    write_status(world.kube, policy, reconcile_policy(world.kube, world.settings, policy).status)
    [job] = [j for j in world.kube.list("Job", NS) if j["metadata"]["annotations"].get(ANNOTATION_TARGET) == AGENT]
    name = job["metadata"]["name"]
    result = {"mode": "migrate", "changed": True, "version": 1,
              "report": {"migrated": 3, "bypassed": 0, "throttled": 0, "movedEnergyFraction": 0.2, "dryRun": False}}
    world.client.put_object(Bucket=world.bucket, Key=f"dl/_jobs/{NS}/{name}.json", Body=json.dumps(result).encode())
    world.kube.objects[("Job", NS, name)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}

    live = world.kube.get("MigrationPolicy", NS, "p")
    assert live is not None
    out = reconcile_policy(world.kube, world.settings, live)
    assert out.status.migrations_done == 3, out.wire()
    records = AuditLog(world.store, NS, AGENT).records()
    assert [r.kind for r in records] == ["migration"] and records[0].actor == f"job/{name}"


def test_a_policy_whose_swarm_secret_is_gone_says_so(world: World) -> None:
    del world.kube.objects[("Secret", NS, SECRET)]
    from dynamiclora.controllers import tier_storage

    tier_storage._secrets.clear()  # the operator re-reads a Secret at most every 30 s
    spec = {"swarmRef": "support", "pairs": [{"source": "context", "target": "agent"}]}
    policy = world.kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "MigrationPolicy",
                             "metadata": {"name": "p", "namespace": NS}, "spec": spec})  # fmt: skip
    out = reconcile_policy(world.kube, world.settings, policy)
    [ready] = [c for c in out.wire()["conditions"] if c["type"] == "Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "StorageUnavailable")
    assert "MigrationPolicy's storage cannot be read" in ready["message"] and "does not exist" in ready["message"]
    assert [e.reason for e in out.events] == ["StorageUnavailable"]


def test_the_store_feed_of_a_tenants_bucket_is_read_with_its_identity(world: World) -> None:
    """Issue 19's store marks in a tenant's bucket: the leader lists the feed with the Swarm's keys (the
    operator's own are refused) and takes a version nobody's Job published without waiting for the resync."""
    rt = handlers.Runtime(world.kube, replace(world.settings, feed_seconds=0.01))
    for tier in (CTX, AGENT):
        asyncio.run(handlers.handle_tier(rt, world.kube.objects[("LoRATier", NS, tier)]))
    [key] = rt.feed.stores
    assert key[1] == NS and rt.feed.poll() == [] and rt.feed.failing == {}
    assert rt.feed.heads[key] == {}  # the baseline: listed with the tenant's keys, nothing published yet
    counted = REGISTRY.get_sample_value("dynamiclora_store_feed_versions_total", {"namespace": NS}) or 0.0

    world.publish(CTX, "training")  # an import into the tenant's bucket
    _feed_until(rt, lambda: (world.kube.objects[("LoRATier", NS, CTX)].get("status") or {}).get("currentVersion"))
    assert world.kube.objects[("LoRATier", NS, CTX)]["status"]["currentVersion"] == 1
    assert rt.feed.heads[key] == {CTX: 1} and rt.feed.failing == {}
    assert REGISTRY.get_sample_value("dynamiclora_store_feed_versions_total", {"namespace": NS}) == counted + 1

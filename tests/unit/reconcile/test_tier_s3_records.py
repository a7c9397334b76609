"""S3-only swarms: records in the bucket are counted with the Swarm's own S3 settings and start training.

The storage names the moto server on loopback as its endpoint and a Secret with the keys to use; wrong or
missing credentials are a condition on the tier, not a failed reconcile.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from dynamiclora.api.common import Storage
from dynamiclora.controllers import tier_storage
from dynamiclora.controllers.conditions import get_condition
from dynamiclora.controllers.tier import TierOutcome
from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube
from .passes import tier_pass

NS = "default"
TIER = "support-bob-context"
SECRET = "s3-creds"


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    """Clients and Secrets are cached process-wide; each test starts from what it configures."""
    tier_storage._clients.clear()
    tier_storage._secrets.clear()
    yield
    tier_storage._clients.clear()
    tier_storage._secrets.clear()


def _secret(kube: FakeKube, key_id: str, secret: str) -> None:
    data = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    kube.add({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NS},
              "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})  # fmt: skip
    tier_storage._secrets.clear()


def _swarm(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], bucket: str, endpoint: str) -> None:
    from dynamiclora.controllers.swarm import reconcile_swarm

    s3 = {"bucket": bucket, "prefix": "dl", "endpoint": endpoint, "credentialsSecretRef": {"name": SECRET}}
    swarm_body["spec"]["storage"] = {"s3": s3}
    reconcile_swarm(kube, settings, kube.add(swarm_body))


def _records(client: Any, bucket: str, name: str, n: int) -> None:
    lines = (json.dumps({"agent": "bob", "timestamp": "2026-11-22T00:00:00Z", "prompt": f"q{i}", "response": "a"})
             for i in range(n))  # fmt: skip
    key = f"dl/interactions/default/support/bob/{name}"
    client.put_object(Bucket=bucket, Key=key, Body="\n".join(lines).encode() + b"\n")


def _pass(kube: FakeKube, settings: OperatorSettings) -> TierOutcome:
    return tier_pass(kube, settings, TIER, NS)


def _condition(out: TierOutcome, type_: str) -> tuple[str, str, str]:
    c = get_condition(out.wire(), type_)
    assert c is not None
    return c["status"], c["reason"], c["message"]


def test_records_in_the_bucket_start_training(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], s3_client: Any, s3_bucket: str,
    moto_s3_endpoint: str,
) -> None:  # fmt: skip
    _secret(kube, "testing", "testing")
    _swarm(kube, settings, swarm_body, s3_bucket, moto_s3_endpoint)
    _records(s3_client, s3_bucket, "batch-1.jsonl", 10)

    out = _pass(kube, settings)
    assert _condition(out, "Training") == ("False", "WaitingForRecords", "10/16 new interaction records")
    assert out.wire()["recordsSeen"] == 10 and not kube.list("Job", NS)

    # The tier's client is the one built from the Swarm's storage: watch what it downloads.
    client = tier_storage.s3_client_for(kube, NS, Storage.model_validate(swarm_body["spec"]["storage"]))
    gets: list[str] = []
    client.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **_: gets.append(params["Key"]))
    _records(s3_client, s3_bucket, "batch-2.jsonl", 10)
    out = _pass(kube, settings)
    assert gets == ["dl/interactions/default/support/bob/batch-2.jsonl"]  # batch-1 is unchanged: its count is cached
    assert out.wire()["activeJob"] == f"{TIER}-train-v1" and out.wire()["recordsSeen"] == 20
    assert [e.reason for e in out.events] == ["TrainingStarted"]
    (job,) = kube.list("Job", NS)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == moto_s3_endpoint
    # The Job reads what was counted: its --data is the agent's prefix, every object below it.
    from dynamiclora.training.records import iter_sources

    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    data = args[args.index("--data") + 1]
    assert data == f"s3://{s3_bucket}/dl/interactions/default/support/bob/"
    other = "dl/interactions/default/support/bobby/other.jsonl"  # another agent whose name starts the same
    s3_client.put_object(Bucket=s3_bucket, Key=other, Body=b"{}\n")
    assert [name.rsplit("/", 1)[1] for name, _ in iter_sources(data, s3_client)] == ["batch-1.jsonl", "batch-2.jsonl"]
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == SECRET


def test_missing_secret_is_a_condition(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], s3_bucket: str, moto_s3_endpoint: str
) -> None:
    _swarm(kube, settings, swarm_body, s3_bucket, moto_s3_endpoint)
    out = _pass(kube, settings)
    status, reason, message = _condition(out, "Ready")
    assert (status, reason) == ("False", "StorageUnavailable")
    assert f"Secret {NS}/{SECRET} (spec.storage.s3.credentialsSecretRef) does not exist" in message
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "StorageUnavailable")]
    assert not _pass(kube, settings).events  # the same problem again: no second event

    _secret(kube, "testing", "testing")
    out = _pass(kube, settings)
    assert _condition(out, "Ready")[1] == "NoVersionYet" and not out.events


def test_wrong_credentials_are_a_condition_then_recover(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], s3_client: Any, s3_bucket: str,
    moto_s3_endpoint: str, iam_user: tuple[str, str],
) -> None:  # fmt: skip
    key_id, secret = iam_user
    _secret(kube, key_id, "not-the-secret")
    _swarm(kube, settings, swarm_body, s3_bucket, moto_s3_endpoint)
    out = _pass(kube, settings)
    status, reason, message = _condition(out, "Ready")
    assert (status, reason) == ("False", "StorageUnavailable")
    assert "SignatureDoesNotMatch" in message and "check spec.storage.s3.credentialsSecretRef" in message
    assert not kube.list("Job", NS)

    _secret(kube, key_id, secret)  # the Secret is fixed: the next pass uses the new keys
    out = _pass(kube, settings)
    assert _condition(out, "Ready")[1] == "NoVersionYet"
    assert _condition(out, "Training")[:2] == ("False", "WaitingForRecords")


def test_unreadable_records_keep_the_rest_of_the_pass(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], s3_client: Any, s3_bucket: str,
    moto_s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from dynamiclora.storage import record_count

    monkeypatch.setattr(record_count, "MAX_OBJECT_BYTES", 1000)
    _secret(kube, "testing", "testing")
    _swarm(kube, settings, swarm_body, s3_bucket, moto_s3_endpoint)
    _records(s3_client, s3_bucket, "huge.jsonl", 100)
    out = _pass(kube, settings)
    status, reason, message = _condition(out, "Training")
    assert (status, reason) == ("False", "RecordsUnavailable")
    assert f"s3://{s3_bucket}/dl/interactions/default/support/bob/huge.jsonl has" in message and "split it" in message
    assert _condition(out, "Ready")[1] == "NoVersionYet"  # the store was observed as usual
    assert [e.reason for e in out.events] == ["RecordsUnavailable"] and not kube.list("Job", NS)


def test_the_endpoint_down_for_a_while_is_a_condition_then_recovers(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], s3_env: dict[str, str],
) -> None:  # fmt: skip
    """Issue 18: S3 goes away (its endpoint refuses connections: a real server stopped, not a fake), then
    comes back. Meanwhile the tier says so once and nothing is lost; afterwards it carries on."""
    import boto3
    from moto.server import ThreadedMotoServer

    from dynamiclora_dev.testing.storage import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="outage")
        _secret(kube, "testing", "testing")
        _swarm(kube, settings, swarm_body, "outage", endpoint)
        _records(client, "outage", "batch-1.jsonl", 20)
        assert _pass(kube, settings).wire()["activeJob"] == f"{TIER}-train-v1"

        server.stop()
        out = _pass(kube, settings)
        status, reason, message = _condition(out, "Ready")
        assert (status, reason) == ("False", "StorageUnavailable") and endpoint in message, message
        assert [e.reason for e in out.events] == ["StorageUnavailable"]
        assert out.wire()["activeJob"] == f"{TIER}-train-v1"  # the Job in flight is still followed
        assert [j["metadata"]["name"] for j in kube.list("Job", NS)] == [f"{TIER}-train-v1"]
        assert not _pass(kube, settings).events  # still down: no second event

        server.start()  # back (moto keeps its objects in the process)
        out = _pass(kube, settings)
        assert _condition(out, "Ready")[1] == "NoVersionYet" and out.wire()["recordsSeen"] == 20
        assert out.wire()["activeJob"] == f"{TIER}-train-v1" and len(kube.list("Job", NS)) == 1
    finally:
        server.stop()

"""S3-only swarms: a consolidation Job's result reaches the operator through the bucket (issue 15).

The result used to be a file on the storage PVC; with the store in a bucket the Job wrote it to a
local path nobody read, so migrationsThisPeriod never grew and nothing was audited.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from dynamiclora.builders.names import ANNOTATION_TARGET
from dynamiclora.controllers.conditions import write_status
from dynamiclora.controllers.policy import reconcile_policy
from dynamiclora.controllers.swarm import reconcile_swarm
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.s3 import s3_client_from_env
from dynamiclora.storage.uri import open_store
from dynamiclora.training.cli import _write_result_file

from .fakekube import FakeKube

NS = "default"
CTX, AGENT = "support-alice-context", "support-alice-agent"


def _migration_job(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], store_uri: str,
                   tmp: Path) -> dict[str, Any]:  # fmt: skip
    """The Swarm, two context versions in its store and a policy pass: the migration Job it launched."""
    reconcile_swarm(kube, settings, kube.add(swarm_body))
    stats = tmp / "stats.json"
    stats.write_text(json.dumps({"energy": 1.0, "norm": 1.0}))
    for _ in range(2):
        open_store(store_uri).publish(NS, CTX, {"stats.json": stats}, {"kind": "training"})
    policy = kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "MigrationPolicy",
                       "metadata": {"name": "p", "namespace": NS},
                       "spec": {"swarmRef": "support", "pairs": [{"source": "context", "target": "agent"}],
                                "stability": {"window": 2}, "interval": "1ms"}})  # fmt: skip
    write_status(kube, policy, reconcile_policy(kube, settings, policy).wire())
    [job] = [j for j in kube.list("Job", NS) if j["metadata"]["annotations"].get(ANNOTATION_TARGET) == AGENT]
    return job


def test_a_migration_result_in_the_bucket_is_counted(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], s3_env: dict[str, str],
    moto_s3_endpoint: str, tmp_path: Path,
) -> None:  # fmt: skip
    bucket = f"dl-{uuid.uuid4().hex[:12]}"
    s3_client_from_env().create_bucket(Bucket=bucket)
    swarm_body["spec"]["storage"] = {"s3": {"bucket": bucket, "prefix": "dl", "endpoint": moto_s3_endpoint}}
    job = _migration_job(kube, settings, swarm_body, f"s3://{bucket}/dl", tmp_path)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    target = args[args.index("--result-file") + 1]
    assert target == f"s3://{bucket}/dl/_jobs/{NS}/{job['metadata']['name']}.json"

    # The Job's own writer (the consolidate entrypoint's --result-file), then the Job completes.
    _write_result_file(target, {"mode": "migrate", "changed": True, "report": {
        "migrated": 3, "bypassed": 0, "throttled": 0, "movedEnergyFraction": 0.2, "dryRun": False}})
    # In the bucket, where the operator's pod can read it (the Job's pod shares no filesystem with it).
    key = f"dl/_jobs/{NS}/{job['metadata']['name']}.json"
    assert json.loads(s3_client_from_env().get_object(Bucket=bucket, Key=key)["Body"].read())["changed"]
    assert not Path("s3:").exists()
    kube.objects[("Job", NS, job["metadata"]["name"])]["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}]}
    live = kube.get("MigrationPolicy", NS, "p")
    assert live is not None
    out = reconcile_policy(kube, settings, live)
    assert out.wire()["migrationsDone"] == 3 and out.wire()["migrationsThisPeriod"] == 3
    assert not [e for e in out.events if e.reason == "ResultMissing"]


def test_a_failed_consolidation_job_says_why(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    job = _migration_job(kube, settings, swarm_body, f"file://{settings.pvc_mount_root}/ckpt/dl", tmp_path)
    name = job["metadata"]["name"]
    term = {"exitCode": 1, "reason": "Error", "message": "error: --source ...: the tier has no published version\n"}
    kube.add({"kind": "Pod", "metadata": {"name": f"{name}-x", "labels": {"job-name": name}},
              "status": {"containerStatuses": [{"name": "main", "state": {"terminated": term}}]}})
    kube.objects[("Job", NS, name)]["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    live = kube.get("MigrationPolicy", NS, "p")
    assert live is not None
    out = reconcile_policy(kube, settings, live)
    [event] = [e for e in out.events if e.reason == "ConsolidationFailed"]
    assert event.message == f"Job {name} failed: error: --source ...: the tier has no published version"
    last = out.wire()["decisions"][-1]
    assert (last["sourceTier"], last["targetTier"]) == (CTX, AGENT)
    assert last["outcome"] == "Rejected" and "no published version" in last["reason"]

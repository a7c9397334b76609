"""The whole loop on a Swarm whose only storage is a bucket (issue 16): S3-only swarms learn.

Records -> training Job -> quality gate -> the served stack composed ahead into the bucket by that Job ->
hot-swap -> migration -> compose Job -> hot-swap, a poisoned round the gate refuses, and ``dynamiclora
history``, all through moto's S3 server on loopback. The operator runs from the image-equivalent
environment *without any S3 identity of its own*: every read of the bucket (record counts, versions,
served adapters, consolidation results, the audit trail) uses
the Swarm's ``credentialsSecretRef`` and endpoint, as the Jobs and the vLLM pod's adapter-sync sidecar do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.controllers.conditions import get_condition
from dynamiclora.storage.audit import AuditLog
from dynamiclora.storage.s3 import build_s3_client
from dynamiclora.storage.uri import open_store
from dynamiclora_dev.demo.data import write_records, write_regression_set
from dynamiclora_dev.demo.scenario import DemoConfig, Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

NAMESPACE = "e2e-s3loop"  # the other e2e modules use their own namespaces on the same session cluster
BUCKET = "dynamiclora-s3loop"
PREFIX = "dl"
SECRET = "tenant-s3"
CREDS = {"AWS_ACCESS_KEY_ID": "s3loop-key", "AWS_SECRET_ACCESS_KEY": "s3loop-secret"}


class S3LoopScenario(Scenario):
    """The demo's loop with ``spec.storage.s3`` instead of a PVC; records are uploaded to the bucket."""

    def __init__(self, cfg: DemoConfig, cluster: Any, endpoint: str) -> None:
        super().__init__(cfg, cluster)
        self.endpoint = endpoint
        self.scratch = cfg.work_dir / "scratch"
        self.staging = cfg.work_dir / "records"  # written here, then uploaded
        self.client = build_s3_client(endpoint, "us-east-1", CREDS["AWS_ACCESS_KEY_ID"],
                                      CREDS["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        self.store_uri = f"s3://{BUCKET}/{PREFIX}"

    def manifests(self) -> list[dict[str, Any]]:
        objs = [o for o in super().manifests() if o["kind"] != "PersistentVolumeClaim"]
        for o in objs:
            if o["kind"] == "Swarm":
                o["spec"]["storage"] = {"s3": {"bucket": BUCKET, "prefix": PREFIX, "endpoint": self.endpoint,
                                               "region": "us-east-1", "credentialsSecretRef": {"name": SECRET}}}
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": self.cfg.namespace},
                  "type": "Opaque", "stringData": CREDS}  # fmt: skip
        return [secret, *objs]

    def operator_environ(self) -> dict[str, str]:
        """No AWS_* at all: a read with the operator's own identity fails for want of credentials."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        return {**env, "DYNAMICLORA_SCRATCH_DIR": str(self.scratch)}

    def _upload(self, path: Path) -> None:
        key = f"{PREFIX}/{path.relative_to(self.staging).as_posix()}"
        self.client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())

    def feed(self, agent: str, round_: int, corrupted: bool = False) -> Path:
        self._upload(write_regression_set(self.staging / "regression", agent))
        path = write_records(self.records_root(self.staging), agent, self.cfg.records_per_round, round_,
                             corrupted=corrupted)  # fmt: skip
        self._upload(path)
        where = path.parent.relative_to(self.staging)
        self.log(f"  fed {self.cfg.records_per_round} records for {agent} -> {self.store_uri}/{where}/")
        return path


@pytest.fixture(scope="module")
def s3loop(local_cluster: Any, moto_s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[S3LoopScenario]:  # fmt: skip
    cfg = DemoConfig(work_dir=tmp_path_factory.mktemp("e2e-s3loop"), namespace=NAMESPACE, agents=("alice",),
                     step_timeout=600)  # fmt: skip
    sc = S3LoopScenario(cfg, local_cluster, moto_s3_endpoint)
    sc.client.create_bucket(Bucket=BUCKET)
    with sc.running():
        yield sc


def test_an_s3_only_swarm_learns_migrates_and_refuses_a_poisoned_round(s3loop: S3LoopScenario) -> None:
    sc = s3loop
    seen = sc.run_loop()
    ctx, agent_tier = sc.tier_name("alice", "context"), sc.tier_name("alice", "agent")
    store = open_store(sc.store_uri, s3_client=sc.client)

    tier = sc.status("loratiers", ctx)
    assert tier["currentVersion"] >= 2 and tier["history"][0]["source"] == "training", tier
    assert store.get(NAMESPACE, ctx, tier["currentVersion"]).digest == tier["checkpointSha256"]
    assert tier["recordsSeen"] >= 2 * sc.cfg.records_per_round  # counted in the bucket, with the Secret
    policy = sc.status("migrationpolicies", f"{sc.cfg.swarm}-consolidation")
    assert policy["migrationsDone"] >= 1, policy  # the Job's result was read back from the bucket
    assert sc.status("loratiers", agent_tier)["history"][0]["source"] == "migration"
    served = seen["served2"]
    assert ".a" in served["servedVersion"] and str(served["adapterUri"]).startswith(f"{sc.store_uri}/served/")
    # Issue 19's compose ahead on S3-only storage: a training Job composed its version's served stack into the
    # bucket itself (the compose Job's code, run where the model already is).
    logs = [f.read_text(errors="replace") for f in
            Path(sc.cluster.state).glob(f"pods/{NAMESPACE}/{ctx}-train-v*/main.log")]  # fmt: skip
    ahead = [ln for text in logs for ln in text.splitlines() if ln.startswith("composed alice c")]
    assert any(f" -> {sc.store_uri}/served/" in ln for ln in ahead), (ahead, len(logs))
    swarm = sc.status("swarms", sc.cfg.swarm)
    assert (get_condition(swarm, "Degraded") or {}).get("status") == "False", swarm

    st = sc.run_gate_step()
    assert st is not None and st["lastGate"]["accepted"] is False, st
    kinds = {r.kind for r in AuditLog(store, NAMESPACE, ctx).records()}
    assert {"promotion", "rejection"} <= kinds, kinds
    assert "migration" in {r.kind for r in AuditLog(store, NAMESPACE, agent_tier).records()}

    # `history` reads the bucket with the user's own credentials, as a person at a terminal would.
    env = {**os.environ, **CREDS, "AWS_ENDPOINT_URL": sc.endpoint, "AWS_REGION": "us-east-1"}
    out = subprocess.run([sys.executable, "-m", "dynamiclora.cli", "history", ctx, "-n", NAMESPACE,
                          "--store", sc.store_uri, "--verify"], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0 and "hash chain valid" in out.stdout, out.stdout + out.stderr
    assert sc.operator is not None
    assert b"AWS_ACCESS_KEY_ID" not in Path(f"/proc/{sc.operator.pid}/environ").read_bytes()  # no identity of its own

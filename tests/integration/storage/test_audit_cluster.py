"""``dynamiclora history TIER`` resolving the store from a real API server: the LoRATier's own S3 storage
(endpoint taken from the spec), storage inherited from its Swarm (PVC mapped under --pvc-root), and the
errors for a missing tier and a tier without storage."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamiclora.storage.audit import open_audit
from dynamiclora_dev.localcluster import LocalCluster

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
NS = "audit-history"


def _example(name: str, index: int = 0) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((ROOT / "examples" / name).read_text()) if d]
    doc: dict[str, Any] = copy.deepcopy(docs[index])
    doc["metadata"]["namespace"] = NS
    return doc


@pytest.fixture(scope="module")
def cluster(local_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The session cluster with the CRDs applied and a namespace for these tests."""
    crds = sorted((ROOT / "crds").glob("*.yaml"))
    assert crds, "crds/*.yaml missing: run `make manifests`"
    local_cluster.kubectl("apply", *[arg for p in crds for arg in ("-f", str(p))])
    local_cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=dynamiclora",
    )
    local_cluster.kubectl("create", "namespace", NS, check=False)
    yield local_cluster


def _apply(cluster: LocalCluster, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))


def _history(cluster: LocalCluster, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dynamiclora.cli",
            "history",
            *args,
            "-n",
            NS,
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )


def test_history_resolves_storage_from_the_api_server(
    cluster: LocalCluster, s3_env: dict[str, str], s3_bucket: str, moto_s3_endpoint: str, tmp_path: Path
) -> None:
    swarm = _example("swarm.yaml")
    swarm["spec"]["storage"] = {"pvc": {"claimName": "team-store", "path": "ckpt"}}
    _apply(cluster, swarm)
    inherits = _example("tiers.yaml", 0)  # support-swarm: swarmRef support, no storage of its own
    assert "storage" not in inherits["spec"] and inherits["spec"]["swarmRef"] == swarm["metadata"]["name"]
    _apply(cluster, inherits)
    own = _example("tiers.yaml", 1)  # billing-domain: no swarmRef; give it its own S3 storage
    own["spec"]["storage"] = {"s3": {"bucket": s3_bucket, "prefix": "audit", "endpoint": moto_s3_endpoint}}
    _apply(cluster, own)
    orphan = _example("tiers.yaml", 2)
    orphan["spec"].pop("storage", None)
    orphan["spec"].pop("swarmRef", None)
    _apply(cluster, orphan)

    pvc_root = tmp_path / "pvc"
    open_audit(f"file://{pvc_root}/team-store/ckpt", NS, "support-swarm").append(
        "consensus",
        id="consensus/v1",
        version=1,
        contributors=[{"agent": "alice", "version": 4, "weight": 0.5}],
        message="from the swarm's PVC",
    )
    open_audit(f"s3://{s3_bucket}/audit", NS, "billing-domain").append(
        "migration",
        id="migrate/v1",
        version=1,
        contributors=[{"tier": "support-swarm", "version": 1}],
        message="from the tier's own S3 storage",
    )

    # The S3 endpoint must come from spec.storage.s3.endpoint, not the environment.
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")}
    res = _history(cluster, env, "support-swarm", "--pvc-root", str(pvc_root))
    assert res.returncode == 0, res.stderr
    assert "from the swarm's PVC" in res.stdout and "alice:4@0.50" in res.stdout
    res = _history(cluster, {**env, "DYNAMICLORA_PVC_ROOT": str(pvc_root)}, "support-swarm", "-o", "json")
    assert res.returncode == 0 and json.loads(res.stdout)[0]["id"] == "consensus/v1"
    res = _history(cluster, env, "billing-domain", "--verify")
    assert res.returncode == 0, res.stderr
    assert f"s3://{s3_bucket}/audit/{NS}/billing-domain/_audit is intact: 1 record(s)" in res.stdout

    res = _history(cluster, env, "no-such-tier")
    assert res.returncode == 2 and f"LoRATier {NS}/no-such-tier not found" in res.stderr
    res = _history(cluster, env, orphan["metadata"]["name"])
    assert res.returncode == 2 and "has no spec.storage and no spec.swarmRef" in res.stderr

"""An S3-only Swarm served end to end on the real local control plane (issue 7).

Real parts only: kube-apiserver/controller-manager/scheduler/kwok, the operator as ``dynamiclora run``,
moto's S3 server on loopback as the bucket, and the vLLM pod run by the local executor as a real vLLM CPU
server *plus* its ``adapter-sync`` sidecar (``dynamiclora adapter-sync``, with the S3 endpoint and the
credentials the pod spec gives it from the Swarm's ``spec.storage.s3``). The Swarm has no PVC: a compose
Job (the trainer image's ``dynamiclora compose``) composes and uploads to the bucket with a COMPLETE marker,
the sidecar mirrors it into the pod's adapters folder, the operator (from the image-equivalent environment,
no torch) fetches it into its scratch folder to read its fingerprint and hot-swaps it. No training Job
runs: tier versions are published straight into the bucket with the checkpoint-store API.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.controllers.conditions import get_condition
from dynamiclora.serving.adapters import FINGERPRINT_FILE, Fingerprint
from dynamiclora.serving.errors import VLLMError
from dynamiclora.serving.marker import COMPLETE_MARKER, parse_marker
from dynamiclora.storage.uri import open_store
from dynamiclora.training.fingerprint import compute_fingerprint, make_random_adapter
from dynamiclora_dev.demo.scenario import DemoConfig, Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

NAMESPACE = "e2e-s3"  # test_loop.py uses "e2e" on the same session cluster
SWARM = "s3team"
AGENT = "alice"
BUCKET = "dynamiclora-e2e"
PREFIX = "dl"
SECRET = "s3-credentials"
CREDS = {"AWS_ACCESS_KEY_ID": "e2e-key", "AWS_SECRET_ACCESS_KEY": "e2e-secret"}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class S3Scenario(Scenario):
    """The demo's driver with an S3-only Swarm of one agent and no MigrationPolicy."""

    def __init__(self, cfg: DemoConfig, cluster: Any, endpoint: str) -> None:
        super().__init__(cfg, cluster)
        self.endpoint = endpoint
        self.scratch = cfg.work_dir / "scratch"

    def manifests(self) -> list[dict[str, Any]]:
        ns = self.cfg.namespace
        tier = {"rank": 8, "alpha": 8, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                # No records ever land in the bucket, and versions are published by the test.
                "training": {"minSamples": 1_000_000}}  # fmt: skip
        return [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": ns},
             "type": "Opaque", "stringData": CREDS},
            {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "Swarm", "metadata": {"name": SWARM, "namespace": ns},
             "spec": {
                 "baseModel": {"name": "tiny-llama", "path": str(self.model_dir)},
                 "agents": [{"name": AGENT, "domain": "support"}],
                 "contextTier": tier,
                 "agentTier": {"rank": 8},
                 "inference": {"replicas": 1, "maxLoras": 2, "maxCpuLoras": 4, "maxLoraRank": 16,
                               "maxModelLen": 256, "dtype": "float32",
                               "extraArgs": ["--enforce-eager", "--max-num-seqs", "8"],
                               "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}},
                 "storage": {"s3": {"bucket": BUCKET, "prefix": PREFIX, "endpoint": self.endpoint,
                                    "region": "us-east-1", "credentialsSecretRef": {"name": SECRET}}},
             }},
        ]  # fmt: skip

    def operator_env(self) -> dict[str, str]:
        """What the operator process needs for the bucket (the pods get theirs from the Swarm spec)."""
        return {**CREDS, "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1", "DYNAMICLORA_SCRATCH_DIR": str(self.scratch)}  # fmt: skip


@pytest.fixture(scope="module")
def s3_scenario(
    local_cluster: Any, moto_s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Scenario]:
    cfg = DemoConfig(work_dir=tmp_path_factory.mktemp("e2e-s3"), namespace=NAMESPACE, agents=(AGENT,),
                     swarm=SWARM, step_timeout=240)  # fmt: skip
    sc = S3Scenario(cfg, local_cluster, moto_s3_endpoint)
    with pytest.MonkeyPatch.context() as mp:
        # The operator subprocess inherits this environment; the test's own boto3 calls use it too.
        for k, v in sc.operator_env().items():
            mp.setenv(k, v)
        mp.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        from dynamiclora.storage.s3 import s3_client_from_env

        s3_client_from_env().create_bucket(Bucket=BUCKET)
        with sc.running():  # the executor stops the vLLM process and its sidecar at the end
            yield sc


def _publish_version(sc: S3Scenario, seed: int) -> tuple[int, Fingerprint]:
    """A random rank-8 PEFT adapter as the next version of alice's context tier, and its PEFT fingerprint."""
    src = make_random_adapter(sc.model_dir, sc.cfg.work_dir / f"adapter-seed{seed}", rank=8, seed=seed)
    store = open_store(f"s3://{BUCKET}/{PREFIX}")
    ref = store.publish(NAMESPACE, sc.tier_name(AGENT, "context"), {n: src / n for n in ADAPTER_FILES},
                        metadata={"kind": "import", "note": f"e2e seed {seed}"})  # fmt: skip
    # What a compose Job computes for it (the most decisive probe), not the fixed-probe one written beside it.
    return ref.version, compute_fingerprint(sc.model_dir, src)


def _served_as(sc: S3Scenario, label: str) -> dict[str, Any] | None:
    entry = sc.served(AGENT)
    return entry if entry and entry.get("servedVersion") == label else None


def _bucket_objects(key_prefix: str) -> dict[str, bytes]:
    from dynamiclora.storage.s3 import s3_client_from_env

    client = s3_client_from_env()
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=key_prefix + "/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    return {k[len(key_prefix) + 1 :]: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def _check_published(sc: S3Scenario, entry: dict[str, Any]) -> tuple[str, Fingerprint]:
    """The composed adapter is in the bucket, complete and verified; returns its key and fingerprint."""
    uri = str(entry["adapterUri"])
    head = f"s3://{BUCKET}/{PREFIX}/served/{NAMESPACE}/{SWARM}/{AGENT}/"
    assert uri.startswith(head), uri
    key = uri[len(head) :].strip("/")
    objects = _bucket_objects(uri[len(f"s3://{BUCKET}/") :].rstrip("/"))
    assert COMPLETE_MARKER in objects, sorted(objects)
    files = parse_marker(objects[COMPLETE_MARKER], uri)
    assert set(files) == set(objects) - {COMPLETE_MARKER}, (sorted(files), sorted(objects))
    assert {"adapter_config.json", "adapter_model.safetensors", FINGERPRINT_FILE} <= set(files)
    fp = Fingerprint.from_json(json.loads(objects[FINGERPRINT_FILE]), source=f"{uri}/{FINGERPRINT_FILE}")
    # The pod reads what the sidecar mirrored (byte-identical to the bucket), not the operator's scratch copy.
    mirrored = sc.adapters_root / NAMESPACE / SWARM / AGENT / key
    for name in files:
        assert (mirrored / name).read_bytes() == objects[name], f"{mirrored / name} differs from the bucket"
    return key, fp


def _answers(sc: S3Scenario, fp: Fingerprint) -> tuple[int, ...] | None:
    try:
        got = sc.complete(AGENT, list(fp.prompt_token_ids), max_tokens=len(fp.token_ids))
    except VLLMError:
        return None
    return tuple(got.token_ids or ())


def _sidecar_log(sc: S3Scenario) -> str:
    path = Path(sc.cluster.state) / "pods" / NAMESPACE / f"{SWARM}-vllm-0" / "adapter-sync.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_s3_only_swarm_is_served_and_hot_swapped_through_the_bucket(s3_scenario: S3Scenario) -> None:
    sc = s3_scenario
    version, src_fp = _publish_version(sc, seed=11)
    assert version == 1

    entry = sc.wait(f"{SWARM} serves {AGENT} at c1 on every ready pod", lambda: _served_as(sc, "c1"))
    swarm = sc.wait("the Swarm is Ready", lambda: (s := sc.status("swarms", SWARM)).get("phase") == "Ready" and s)
    assert get_condition(swarm, "Ready")["status"] == "True", swarm
    assert get_condition(swarm, "Degraded")["status"] == "False", swarm
    sts = json.loads(sc.kubectl("get", "statefulset", f"{SWARM}-vllm", "-n", NAMESPACE, "-o", "json"))
    containers = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"vllm", "adapter-sync"}
    assert not any("persistentVolumeClaim" in v for v in sts["spec"]["template"]["spec"]["volumes"])
    # The sidecar reaches the bucket with what the Swarm spec says (the operator's own env is not inherited).
    env = {e["name"]: e for e in containers["adapter-sync"]["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == sc.endpoint
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "AWS_ACCESS_KEY_ID"}

    key1, fp1 = _check_published(sc, entry)
    # One tier of rank 8 composes exactly: the operator's fingerprint is the published adapter's own.
    assert fp1 == src_fp, (fp1, src_fp)
    assert f"synced adapter {AGENT}/{key1}" in _sidecar_log(sc), _sidecar_log(sc)[-2000:]
    assert sc.wait(f"{SWARM}-{AGENT} answers with c1's greedy tokens",
                   lambda: _answers(sc, fp1) == fp1.token_ids, 60)  # fmt: skip

    # v2 of the tier: the served label moves and the answer follows, through the bucket again.
    version, src_fp2 = _publish_version(sc, seed=23)
    assert version == 2
    degraded: list[dict[str, Any]] = []

    def served_c2() -> dict[str, Any] | None:
        # Until the sidecar has mirrored the new key, the load is pending: never a Degraded Swarm.
        cond = get_condition(sc.status("swarms", SWARM), "Degraded")
        if cond and cond["status"] == "True":
            degraded.append(cond)
        return _served_as(sc, "c2")

    entry2 = sc.wait(f"{SWARM} serves {AGENT} at c2", served_c2)
    assert not degraded, degraded
    key2, fp2 = _check_published(sc, entry2)
    assert key2 != key1 and fp2 == src_fp2
    assert fp2.token_ids != fp1.token_ids, "the two versions must answer differently for the swap to show"
    assert f"synced adapter {AGENT}/{key2}" in _sidecar_log(sc), _sidecar_log(sc)[-2000:]
    assert sc.wait(f"{SWARM}-{AGENT} answers with c2's greedy tokens",
                   lambda: _answers(sc, fp2) == fp2.token_ids, 60)  # fmt: skip
    swarm = sc.status("swarms", SWARM)
    assert swarm.get("phase") == "Ready" and get_condition(swarm, "Degraded")["status"] == "False", swarm
    assert sc.status("loratiers", sc.tier_name(AGENT, "context")).get("currentVersion") == 2
    assert os.path.isdir(sc.scratch / "served"), "the operator reads the composed adapters in its scratch folder"


def _vllm_loads(sc: S3Scenario) -> list[str]:
    path = Path(sc.cluster.state) / "pods" / NAMESPACE / f"{SWARM}-vllm-0" / "vllm.log"
    return [line for line in path.read_text(errors="replace").splitlines() if "Loaded new LoRA adapter" in line]


def test_restarted_operator_restores_its_scratch_from_the_bucket(s3_scenario: S3Scenario) -> None:
    sc = s3_scenario
    entry = sc.wait(f"{SWARM} serves {AGENT} at c2", lambda: _served_as(sc, "c2"))
    key, fp = _check_published(sc, entry)
    loads = _vllm_loads(sc)
    assert loads and key in loads[-1], loads
    sc.stop_operator()
    scratch_copy = sc.scratch / "served" / NAMESPACE / SWARM / AGENT / key
    shutil.rmtree(sc.scratch / "served")  # the operator's scratch is an emptyDir: a new pod starts empty
    sc.start_operator()

    # Restored from the bucket (served_s3.fetch_published); the integration test tells restore from recompose.
    sc.wait("the restarted operator has the served adapter in its scratch again",
            lambda: (scratch_copy / "composition.json").is_file())  # fmt: skip
    objects = _bucket_objects(str(entry["adapterUri"])[len(f"s3://{BUCKET}/") :].rstrip("/"))
    for name in set(objects) - {COMPLETE_MARKER}:
        assert (scratch_copy / name).read_bytes() == objects[name], f"{scratch_copy / name} differs from the bucket"
    time.sleep(3 * sc.cfg.resync_seconds)  # a few reconciles of the restarted operator
    assert _served_as(sc, "c2") is not None
    assert _vllm_loads(sc) == loads, "nothing changed: the restarted operator must not reload the adapter"
    swarm = sc.status("swarms", SWARM)
    assert swarm.get("phase") == "Ready" and get_condition(swarm, "Degraded")["status"] == "False", swarm
    assert _answers(sc, fp) == fp.token_ids

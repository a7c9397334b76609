"""More agents than one vLLM pod holds, placed across three real vLLM pods, each agent with its Service
(issue 19), on the real local control plane.

Real parts only: kube-apiserver/controller-manager/scheduler/kwok, the operator as ``dynamiclora run``, a
compose Job run by the local executor, and three real vLLM CPU servers as the Swarm's pods. Each pod holds
at most 2 adapters (``maxCpuLoras: 2``) and the Swarm has 4 agents, one pod each: no pod can serve them
all. No training Job runs: each agent's context-tier version is published straight into the store with
the checkpoint-store API, as an import would, and the operator finds them through the store's feed.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dynamiclora.builders.routing import ANNOTATION_MODEL
from dynamiclora.controllers.conditions import get_condition
from dynamiclora.serving.adapters import Fingerprint
from dynamiclora.storage.uri import open_store
from dynamiclora.training.fingerprint import make_random_adapter
from dynamiclora_dev.demo.scenario import DemoConfig, Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

NAMESPACE = "e2e-fleet"  # test_loop.py uses "e2e" on the same session cluster
SWARM = "fleet"
AGENTS = ("ann", "ben", "cal", "dee")
PODS, ROOM = 3, 2
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class FleetScenario(Scenario):
    """The demo's driver with a Swarm of 4 agents on 3 pods, per-agent Services, and no MigrationPolicy."""

    def manifests(self) -> list[dict[str, Any]]:
        ns = self.cfg.namespace
        # No records ever land: versions are published by the test.
        tier = {"rank": 8, "alpha": 8, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "training": {"minSamples": 1_000_000}}  # fmt: skip
        return [
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt", "namespace": ns},
             "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}},
            {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "Swarm", "metadata": {"name": SWARM, "namespace": ns},
             "spec": {
                 "baseModel": {"name": "tiny-llama", "path": str(self.model_dir)},
                 "agents": [{"name": a, "domain": "support"} for a in AGENTS],
                 "contextTier": tier,
                 "agentTier": {"rank": 8},
                 "inference": {"replicas": PODS, "maxLoras": 2, "maxCpuLoras": ROOM, "maxLoraRank": 16,
                               "maxModelLen": 256, "dtype": "float32",
                               "placement": {"replicasPerAgent": 1, "agentServices": True},
                               "extraArgs": ["--enforce-eager", "--max-num-seqs", "4"],
                               "env": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}},
                 "storage": {"pvc": {"claimName": "ckpt", "path": "dl"}},
             }},
        ]  # fmt: skip


@pytest.fixture(scope="module")
def fleet(local_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetScenario]:
    cfg = DemoConfig(work_dir=tmp_path_factory.mktemp("e2e-fleet"), namespace=NAMESPACE, agents=AGENTS,
                     swarm=SWARM, step_timeout=600)  # fmt: skip
    with FleetScenario(cfg, local_cluster).running(pods=PODS) as sc:
        yield sc


def _publish(sc: Scenario, agent: str, seed: int) -> None:
    """A random rank-8 PEFT adapter as the next version of the agent's context tier."""
    src = make_random_adapter(sc.model_dir, sc.cfg.work_dir / f"adapter-{agent}", rank=8, seed=seed)
    store = open_store(f"file://{sc.pvc_root}/ckpt/dl")
    store.publish(NAMESPACE, sc.tier_name(agent, "context"), {n: src / n for n in ADAPTER_FILES},
                  metadata={"kind": "import", "note": f"e2e placement seed {seed}"})  # fmt: skip


def _feed_versions(sc: Scenario) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{sc.metrics_port}/metrics", timeout=10).read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "dynamiclora_store_feed_versions_total" and s.labels.get("namespace") == NAMESPACE)


def test_more_agents_than_a_pod_holds_are_each_served_where_they_are_placed(fleet: FleetScenario) -> None:
    sc = fleet
    # Versions come once every pod is up: agents placed while a pod still starts stay where they were put
    # (placement is sticky), which would leave that pod empty here.
    sc.wait(f"{PODS} vLLM pods ready", lambda: sc.status("swarms", SWARM).get("readyReplicas") == PODS, 900)
    for seed, agent in enumerate(AGENTS):
        _publish(sc, agent, 70 + seed)
    entries = {a: sc.wait(f"{a} served on the pod it is placed on", lambda a=a: sc.served(a)) for a in AGENTS}
    # No Job of the operator's published these versions: its store feed found each (docs/serving.md).
    assert _feed_versions(sc) == len(AGENTS)
    status = sc.status("swarms", SWARM)
    pods = {int(p["name"].rsplit("-", 1)[1]): p for p in status["pods"] if p.get("ready")}
    assert len(pods) == PODS
    placed = {a: e["placedOn"] for a, e in entries.items()}
    assert all(len(p) == 1 for p in placed.values()), placed
    load = {i: sum(1 for p in placed.values() if i in p) for i in pods}
    assert max(load.values()) <= ROOM and sum(load.values()) == len(AGENTS), load
    assert all(p["loadedAdapters"] <= ROOM for p in pods.values())
    for agent in AGENTS:  # a client that follows the placement gets the agent's own answer there
        pod = pods[placed[agent][0]]
        fp = Fingerprint.read(entries[agent]["adapterUri"])
        assert fp is not None
        got = sc.complete_at(pod["podIP"], 8000, f"{SWARM}-{agent}", list(fp.prompt_token_ids),
                             max_tokens=len(fp.token_ids))  # fmt: skip
        assert tuple(got.token_ids) == tuple(fp.token_ids), agent


def test_each_agent_gets_a_service_and_a_refused_slice_is_reported(fleet: FleetScenario) -> None:
    """The Services are created by the operator for every agent. Their EndpointSlices cannot be stored here:
    the local cluster's pods have loopback IPs (127.10.x), which the API server refuses in a slice, and the
    Swarm says so (``Degraded``, ``RoutesFailed``, naming the agents and the API's reason). Slices with
    cluster-like IPs are stored, rewritten and garbage-collected by the same code against the same API server
    in tests/integration/cluster/test_cluster_routes.py."""
    sc = fleet
    for agent in AGENTS:
        service = sc.wait(f"Service {SWARM}-{agent}", lambda a=agent: json.loads(sc.kubectl(
            "get", "service", f"{SWARM}-{a}", "-n", NAMESPACE, "-o", "json", check=False) or "null"))  # fmt: skip
        assert service["metadata"]["annotations"][ANNOTATION_MODEL] == f"{SWARM}-{agent}"
        assert "selector" not in service["spec"]

    def refused() -> dict[str, Any] | None:
        cond = get_condition(sc.status("swarms", SWARM), "Degraded") or {}
        return cond if cond.get("reason") == "RoutesFailed" else None

    cond = sc.wait("the Swarm reports the refused slices", refused)
    assert "loopback" in cond["message"] and all(f"route of {a}" in cond["message"] for a in AGENTS)

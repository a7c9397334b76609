"""Issue 19: a steady Swarm makes no write. Its children as the real API server stores them (defaults added,
zero values such as a Service's ``publishNotReadyAddresses: false`` left out) are up to date, so a second
Swarm pass applies nothing; a spec change is applied again. No operator runs: the test calls the Swarm
pass (``reconcile_swarm``) itself against the local kube-apiserver."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dynamiclora.api.crd import render_crds
from dynamiclora.controllers.swarm import reconcile_swarm
from dynamiclora.kube import ApiKube
from dynamiclora.settings import OperatorSettings
from dynamiclora_dev.localcluster import LocalCluster

pytestmark = pytest.mark.integration
NS = "steady-tests"
ROOT = Path(__file__).resolve().parents[3]


def test_a_second_swarm_pass_writes_nothing(local_cluster: LocalCluster) -> None:
    local_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
        [yaml.safe_load(text) for text in render_crds().values()]))  # fmt: skip
    local_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/swarms.dynamiclora.io",
                          "crd/loratiers.dynamiclora.io")  # fmt: skip
    local_cluster.kubectl("create", "namespace", NS, check=False)
    kube, settings = ApiKube(str(local_cluster.kubeconfig)), OperatorSettings()
    body = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "swarm.yaml").read_text()))
    body["metadata"] = {"name": "support", "namespace": NS}
    live = kube.create(body)
    assert live is not None

    first = reconcile_swarm(kube, settings, live)
    assert {"ConfigMap/support-vllm-guard", "Service/support-vllm", "StatefulSet/support-vllm"} <= set(first.applied)
    assert reconcile_swarm(kube, settings, live).applied == []  # as stored, every child is up to date

    replicas = int(live["spec"]["inference"].get("replicas", 1)) + 1
    local_cluster.kubectl("patch", "swarm", "support", "-n", NS, "--type", "merge",
                          "-p", f'{{"spec": {{"inference": {{"replicas": {replicas}}}}}}}')  # fmt: skip
    changed = kube.get("Swarm", NS, "support")
    assert changed is not None
    assert reconcile_swarm(kube, settings, changed).applied == ["StatefulSet/support-vllm"]

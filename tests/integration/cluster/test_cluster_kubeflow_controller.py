"""The real Kubeflow Trainer v2.0.0 controller (and JobSet v0.8.2) runs TrainJobs on the local cluster.

Both controllers are built from the Go module proxy on first use (about 7 minutes cold, cached under
~/.cache/dynamiclora/kubeflow-bin) and run as local processes without admission webhooks (see
``dynamiclora_dev.kubeflow_controllers``). A TrainJob becomes a JobSet, the JobSet a Job, the Job pods
that the local executor runs; the TrainJob's conditions come from the JobSet's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import pods, wait_until

from dynamiclora_dev.kubeflow_controllers import RunningControllers, install, running_controllers
from dynamiclora_dev.localcluster import LocalCluster
from dynamiclora_dev.localcluster.rest import Rest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NS = "kubeflow-controller-tests"
TRAINJOBS = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
SHOW_PET = "import os; print(sorted((k, v) for k, v in os.environ.items() if k.startswith('PET_')))"


@pytest.fixture(scope="module")
def controllers(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControllers]:
    install(local_cluster.kubeconfig)
    rest = local_cluster.rest()
    if rest.get_or_none(f"/api/v1/namespaces/{NS}") is None:
        rest.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    with running_controllers(local_cluster.kubeconfig, tmp_path_factory.mktemp("kubeflow-controllers")) as running:
        yield running


def _train_job(name: str, code: str, nodes: int) -> dict[str, Any]:
    trainer = {"image": "python:3.11", "command": ["python", "-c", code], "numNodes": nodes}
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": name},
            "spec": {"runtimeRef": {"name": "torch-distributed"}, "trainer": trainer}}  # fmt: skip


def _finished(rest: Rest, name: str) -> dict[str, Any] | None:
    """The TrainJob's Complete or Failed condition once it is True."""
    conditions = rest.get(f"{TRAINJOBS}/{name}").get("status", {}).get("conditions") or []
    return next((c for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None)


def _run(local_cluster: LocalCluster, running: RunningControllers, name: str, code: str, nodes: int) -> dict[str, Any]:
    rest = local_cluster.rest()
    rest.create(TRAINJOBS, _train_job(name, code, nodes))
    try:
        return wait_until(f"TrainJob {name} to finish", lambda: _finished(rest, name), 120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{running.tails()}") from None


def test_a_train_job_runs_to_complete(local_cluster: LocalCluster, controllers: RunningControllers) -> None:
    done = _run(local_cluster, controllers, "tj-ok", SHOW_PET, nodes=2)
    assert (done["type"], done["reason"]) == ("Complete", "AllJobsCompleted")
    assert done["message"] == "jobset completed successfully"
    got = pods(local_cluster.rest(), NS, "jobset.sigs.k8s.io/jobset-name=tj-ok")
    assert sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in got) == ["0", "1"]
    assert {p["metadata"]["labels"]["jobset.sigs.k8s.io/replicatedjob-name"] for p in got} == {"node"}
    assert {p["status"]["phase"] for p in got} == {"Succeeded"}
    # The torch policy's rendezvous variables, as the processes saw them (the executor's pod logs). The
    # master is named tj-ok-node-0-0.tj-ok; the executor's stand-in for cluster DNS gives its pod IP.
    (master,) = [p for p in got if p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "0"]
    for pod in got:
        log = (Path(pod["metadata"]["annotations"]["dynamiclora.io/local-logs"]) / "node.log").read_text()
        rank = pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]
        assert f"('PET_NODE_RANK', '{rank}')" in log and "('PET_NNODES', '2')" in log
        assert f"('PET_MASTER_ADDR', '{master['status']['podIP']}')" in log and "('PET_MASTER_PORT', '29500')" in log


def test_a_failing_train_job_is_failed(local_cluster: LocalCluster, controllers: RunningControllers) -> None:
    done = _run(local_cluster, controllers, "tj-fail", "import sys; sys.exit(1)", nodes=1)
    assert (done["type"], done["reason"]) == ("Failed", "FailedJobs")
    assert "first failed job: tj-fail-node-0" in done["message"]
    job = local_cluster.rest().get(f"/apis/batch/v1/namespaces/{NS}/jobs/tj-fail-node-0")
    failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed"]
    assert failed and failed[0]["reason"] == "BackoffLimitExceeded"  # the runtime's backoffLimit 0: no retry


def test_the_operators_train_job_becomes_the_runtimes_jobset(
    local_cluster: LocalCluster, controllers: RunningControllers
) -> None:
    """What the operator builds (suspended: nothing runs) is rendered by the real controller as intended."""
    from test_cluster_trainjob import _train_job as operator_train_job

    obj = operator_train_job(nodes=2, procsPerNode=2)
    obj["metadata"].update(namespace=NS, ownerReferences=[])
    obj["spec"]["suspend"] = True
    rest = local_cluster.rest()
    rest.create(TRAINJOBS, obj)
    name = obj["metadata"]["name"]
    path = f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/{NS}/jobsets/{name}"
    jobset = wait_until("the JobSet", lambda: rest.get_or_none(path), 60)
    (node,) = jobset["spec"]["replicatedJobs"]
    assert jobset["spec"]["suspend"] is True and node["template"]["spec"]["parallelism"] == 2
    pod = node["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][0] == "torchrun" and container["args"][0] == "train"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (
        env["PET_NNODES"] == "2"
        and env["PET_NPROC_PER_NODE"] == "2"
        and env["PET_MASTER_ADDR"] == f"{name}-node-0-0.{name}"
    )
    assert "base-model" in {v["name"] for v in pod["volumes"]}  # podSpecOverrides reached the runtime's pods
    conditions = rest.get(f"{TRAINJOBS}/{name}")["status"]["conditions"]
    assert [(c["type"], c["reason"]) for c in conditions] == [("Suspended", "Suspended")]

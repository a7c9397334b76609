"""Issue 20: data-parallel training launched as a Kubeflow Trainer TrainJob where it is installed and named.

The in-memory Kube stands in for the API server here; the TrainJob built is validated against the real CRD
in tests/integration/cluster/test_cluster_trainjob.py, and run by the real Kubeflow Trainer controller in
tests/integration/cluster/test_cluster_kubeflow_controller.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from dynamiclora.builders.trainjob import TRAINJOB_CRD
from dynamiclora.controllers.conditions import get_condition
from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube
from .test_reconcile import NS, _records, _swarm, _tier_pass

NAME = "support-alice-context"
FAILED = {"conditions": [{"type": "Failed", "status": "True", "reason": "JobSetFailed", "message": "failed"}]}
DONE = {"conditions": [{"type": "Complete", "status": "True"}]}


def _crd(kube: FakeKube) -> None:
    kube.add({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
              "metadata": {"name": TRAINJOB_CRD, "namespace": ""}})  # fmt: skip


def _distributed(swarm_body: dict[str, Any], **training: Any) -> dict[str, Any]:
    swarm_body["spec"]["contextTier"]["training"].update(nodes=2, procsPerNode=1, **training)
    return swarm_body


def _launched(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any],
              **training: Any) -> tuple[OperatorSettings, Any]:  # fmt: skip
    """Kubeflow Trainer installed, the operator's runtime set, alice's 2-node tier's first training pass."""
    settings = dataclasses.replace(settings, training_runtime="torch-distributed")
    _crd(kube)
    _swarm(kube, settings, _distributed(swarm_body, **training))
    _records(settings, "alice", 20)
    return settings, _tier_pass(kube, settings, NAME)


def test_a_distributed_training_runs_as_a_trainjob_of_the_named_runtime_and_is_followed(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    settings, first = _launched(kube, settings, swarm_body)
    out = first.wire()
    tj = kube.objects[("TrainJob", NS, f"{NAME}-train-v1")]
    assert tj["spec"]["runtimeRef"]["name"] == "torch-distributed" and tj["spec"]["trainer"]["numNodes"] == 2
    assert not kube.list("Job", NS) and not kube.list("Service", NS, {"dynamiclora.io/tier": NAME})
    assert (out["activeJob"], out["activeJobKind"], out["trainingWorkers"]) == (f"{NAME}-train-v1", "TrainJob", "2x1")
    assert any(e.reason == "TrainingStarted" and "runtime torch-distributed" in e.message for e in first.events)

    kube.objects[("TrainJob", NS, f"{NAME}-train-v1")]["status"] = FAILED
    retry = _tier_pass(kube, settings, NAME).wire()  # followed through the TrainJob's conditions
    assert "TrainJob support-alice-context-train-v1 failed" in get_condition(retry, "Training")["message"]
    assert (retry["activeJob"], retry["activeJobKind"]) == (f"{NAME}-train-v1-r1", "TrainJob")
    kube.objects[("TrainJob", NS, f"{NAME}-train-v1-r1")]["status"] = DONE
    finished = _tier_pass(kube, settings, NAME)
    done = finished.wire()
    assert "activeJob" not in done and "activeJobKind" not in done and "trainingWorkers" not in done
    assert [e.message for e in finished.events if e.reason == "TrainingSucceeded"] == [
        f"TrainJob {NAME}-train-v1-r1 succeeded"]


def test_the_tier_names_the_runtime_and_overrides_the_setting(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    settings = dataclasses.replace(settings, training_runtime="cluster-default")
    _crd(kube)
    _swarm(kube, settings, _distributed(swarm_body, runtime="team-torch"))
    _records(settings, "alice", 20)
    _tier_pass(kube, settings, NAME)
    assert kube.objects[("TrainJob", NS, f"{NAME}-train-v1")]["spec"]["runtimeRef"]["name"] == "team-torch"


@pytest.mark.parametrize("case", ["no CRD, runtime in the spec", "no CRD, runtime in the settings",
                                  "no runtime named", "one process"])  # fmt: skip
def test_otherwise_the_builtin_launcher_runs_it(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], case: str
) -> None:
    training: dict[str, Any] = {"runtime": "torch-distributed"} if case == "no CRD, runtime in the spec" else {}
    if case == "no CRD, runtime in the settings":
        settings = dataclasses.replace(settings, training_runtime="torch-distributed")
    if case in ("no runtime named", "one process"):
        _crd(kube)
        training = {"runtime": "torch-distributed"} if case == "one process" else {}
    body = _distributed(swarm_body, **training)
    if case == "one process":
        body["spec"]["contextTier"]["training"]["nodes"] = 1
    _swarm(kube, settings, body)
    _records(settings, "alice", 20)
    passed = _tier_pass(kube, settings, NAME)
    out = passed.wire()
    assert not kube.list("TrainJob", NS) and kube.objects[("Job", NS, f"{NAME}-train-v1")]
    assert out["activeJobKind"] == "Job"
    warned = [e.message for e in passed.events if e.reason == "LauncherUnavailable" and e.type == "Warning"]
    # Only a runtime the tier itself names is worth a warning: the setting is a cluster-wide preference.
    assert bool(warned) == (case == "no CRD, runtime in the spec")
    assert all(TRAINJOB_CRD in m for m in warned)


def test_a_failed_trainjob_says_which_worker_died_from_its_pods(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    settings, _ = _launched(kube, settings, swarm_body)
    kube.objects[("TrainJob", NS, f"{NAME}-train-v1")]["status"] = FAILED
    message = "RuntimeError: worker ran out of memory"
    kube.add({"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": f"{NAME}-train-v1-node-0-1-abcde", "namespace": NS,
                           "labels": {"jobset.sigs.k8s.io/jobset-name": f"{NAME}-train-v1"}},
              "status": {"containerStatuses": [{"name": "node", "state": {"terminated": {
                  "exitCode": 1, "message": message}}}]}})  # fmt: skip
    retry = _tier_pass(kube, settings, NAME).wire()
    assert message in get_condition(retry, "Training")["message"]


def test_a_trainjob_past_the_deadline_is_deleted_and_retried_unless_suspended(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    """A Job stops itself at activeDeadlineSeconds; a TrainJob has no such field, so the operator does it."""
    settings, _ = _launched(kube, settings, swarm_body, activeDeadlineSeconds=600)
    key = ("TrainJob", NS, f"{NAME}-train-v1")
    hour_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    kube.objects[key]["metadata"]["creationTimestamp"] = hour_ago
    kube.objects[key]["status"] = {"conditions": [{"type": "Suspended", "status": "True"}]}  # waits for Kueue
    assert _tier_pass(kube, settings, NAME).wire()["activeJob"] == f"{NAME}-train-v1" and key in kube.objects
    five_min_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
    kube.objects[key]["status"] = {"conditions": [{"type": "Suspended", "status": "False",
                                                   "lastTransitionTime": five_min_ago}]}  # fmt: skip
    assert _tier_pass(kube, settings, NAME).wire()["activeJob"] == f"{NAME}-train-v1"  # 5 of 10 minutes run
    kube.objects[key]["status"] = {}  # never suspended: an hour since its creation
    retry = _tier_pass(kube, settings, NAME).wire()
    assert key not in kube.objects and retry["activeJob"] == f"{NAME}-train-v1-r1"
    assert "DeadlineExceeded" in get_condition(retry, "Training")["message"]

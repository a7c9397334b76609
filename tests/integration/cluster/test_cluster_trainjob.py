"""Issue 20: the TrainJob the operator builds, validated by Kubeflow Trainer's real CRD on the API server.

The CRD comes from the Kubeflow Trainer v2.0.0 release module (Go module proxy, cached under
~/.cache/dynamiclora/gomod). No Trainer controller runs here: the API server checks the object against the
CRD's OpenAPI schema and CEL rules, with strict field validation (an unknown field is an error, not dropped).
"""

from __future__ import annotations

from typing import Any

import pytest
from cluster_helpers import wait_until

from dynamiclora_dev.kubeflow import TRAINER_VERSION, trainjob_crd
from dynamiclora_dev.localcluster import LocalCluster
from dynamiclora_dev.localcluster.rest import ApiError

pytestmark = pytest.mark.integration
NS = "trainjob-tests"
PATH = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"


@pytest.fixture(scope="module")
def rest(local_cluster: LocalCluster) -> Any:
    crd = trainjob_crd()
    # Server-side apply: the CRD (200 KB) is too large for kubectl's last-applied annotation.
    local_cluster.kubectl("apply", "--server-side", "-f", str(crd))
    local_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/trainjobs.trainer.kubeflow.org")
    local_cluster.kubectl("create", "namespace", NS, check=False)
    return local_cluster.rest()


def _train_job(**training: Any) -> dict[str, Any]:
    from dynamiclora.api.swarm import Swarm
    from dynamiclora.api.tier import LoRATierSpec, TrainingTemplate
    from dynamiclora.builders.jobs import TrainingInputs, build_training_job
    from dynamiclora.builders.trainjob import train_job
    from dynamiclora.settings import OperatorSettings

    sw = Swarm.model_validate({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "Swarm",
                               "metadata": {"name": "support", "namespace": NS}, "spec": {
                                   "baseModel": {"name": "m", "pvc": {"claimName": "models", "path": "tiny"}},
                                   "agents": [{"name": "alice"}],
                                   "storage": {"s3": {"bucket": "ckpt", "endpoint": "http://127.0.0.1:9000",
                                                      "credentialsSecretRef": {"name": "s3"}}}}})  # fmt: skip
    spec = LoRATierSpec.model_validate({"level": "context", "swarmRef": "support", "agent": "alice",
                                        "training": {"batchSize": 8, **training}})  # fmt: skip
    uid = "8b1c7c9e-0000-4000-8000-000000000001"
    tier = {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier",
            "metadata": {"name": "support-alice-context", "namespace": NS, "uid": uid}}
    inputs = TrainingInputs(model_path="/pvc/models/tiny", storage=sw.spec.storage, experience_prefix="interactions",
                            bad_records="skip", new_records=20, total_records=50, init_version=3, version=4,
                            model_claim="models")  # fmt: skip
    job = build_training_job(tier, spec, inputs, "support-alice-context-train-v4", OperatorSettings())
    return train_job(job, TrainingTemplate.model_validate({"batchSize": 8, **training}), "torch-distributed")


def _dry_run(rest: Any, obj: dict[str, Any]) -> Any:
    return rest.call("POST", PATH, obj, params={"dryRun": "All", "fieldValidation": "Strict"})


@pytest.mark.parametrize("training", [{"nodes": 2, "procsPerNode": 2}, {"nodes": 4, "queue": "team-a"}])
def test_the_generated_train_job_is_valid_under_the_real_crd(rest: Any, training: dict[str, Any]) -> None:
    obj = _train_job(**training)
    got = _dry_run(rest, obj)
    trainer = got["spec"]["trainer"]
    assert trainer["numNodes"] == training["nodes"] and trainer["args"][0] == "train"
    assert got["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert got["spec"].get("suspend", False) is ("queue" in training)
    volumes = {v["name"] for v in got["spec"]["podSpecOverrides"][0]["volumes"]}
    assert "base-model" in volumes  # the model claim reaches the runtime's pods, mounted as in the Job
    # An S3-only Swarm: the workers write to the bucket with the Secret's credentials, as the Job's would.
    args = trainer["args"]
    assert args[args.index("--output-store") + 1].startswith("s3://ckpt")
    refs = [e.get("valueFrom", {}).get("secretKeyRef") for e in trainer["env"]]
    secrets = {r["name"] for r in refs if r}
    assert "s3" in secrets, trainer["env"]


def test_strict_validation_is_on(rest: Any) -> None:
    """The check above could pass by dropping what it does not know; an unknown field must fail."""
    obj = _train_job(nodes=2)
    obj["spec"]["trainer"]["workers"] = 2
    with pytest.raises(ApiError) as err:
        _dry_run(rest, obj)
    assert err.value.status in (400, 422) and "workers" in str(err.value)
    assert TRAINER_VERSION == "v2.0.0"  # the version docs/training.md names


def test_a_created_train_job_is_stored_as_built(rest: Any) -> None:
    obj = _train_job(nodes=2, procsPerNode=2)
    obj["metadata"]["ownerReferences"] = []  # no LoRATier here for the garbage collector to find
    rest.create(PATH, obj)
    stored = wait_until("the TrainJob", lambda: rest.get_or_none(f"{PATH}/{obj['metadata']['name']}"), 30)
    assert stored["spec"]["trainer"]["command"][:1] == ["torchrun"]
    assert stored["spec"]["managedBy"] == "trainer.kubeflow.org/trainjob-controller"  # the CRD's default

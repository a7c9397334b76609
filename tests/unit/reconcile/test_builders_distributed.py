"""Distributed and queued training Jobs (issue 20): the indexed Job, its headless Service, Kueue."""

from __future__ import annotations

from typing import Any

import pytest

from dynamiclora.api.swarm import Swarm
from dynamiclora.api.tier import LoRATierSpec
from dynamiclora.builders.distributed import (
    ANNOTATION_WORKERS,
    KUEUE_QUEUE_LABEL,
    RDZV_PORT,
    needs_rendezvous,
    rendezvous_service,
)
from dynamiclora.builders.jobs import TrainingInputs, build_training_job
from dynamiclora.builders.tiers import build_agent_tiers
from dynamiclora.settings import OperatorSettings

from .test_builders import _owned

NAME = "support-alice-context-train-v4"


def _job(swarm_body: dict[str, Any], settings: OperatorSettings, **training: Any) -> dict[str, Any]:
    sw = Swarm.model_validate(swarm_body)
    raw = build_agent_tiers(_owned(swarm_body), sw)[0]["spec"]
    raw["training"] = {**raw.get("training", {}), "batchSize": 8, **training}
    tier = {"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier",
            "metadata": {"name": "support-alice-context", "namespace": "default", "uid": "u2"}}  # fmt: skip
    inputs = TrainingInputs(model_path="/m", storage=sw.spec.storage, experience_prefix="interactions",
                            bad_records="skip", new_records=20, total_records=50, init_version=3)  # fmt: skip
    return build_training_job(tier, LoRATierSpec.model_validate(raw), inputs, NAME, settings)


@pytest.mark.parametrize(
    ("training", "indexed", "pods", "procs", "queue"),
    [
        ({}, False, 1, 1, None),
        ({"nodes": 2}, True, 2, 1, None),
        ({"procsPerNode": 4}, True, 1, 4, None),  # one pod, four processes (four GPUs)
        ({"nodes": 2, "procsPerNode": 2, "queue": "team-a"}, True, 2, 2, "team-a"),
        ({"queue": "team-a"}, False, 1, 1, "team-a"),
    ],
)
def test_training_job_shape(swarm_body: dict[str, Any], settings: OperatorSettings, training: dict[str, Any],
                            indexed: bool, pods: int, procs: int, queue: str | None) -> None:  # fmt: skip
    job = _job(swarm_body, settings, **training)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert needs_rendezvous(job) is indexed
    assert job["metadata"]["labels"].get(KUEUE_QUEUE_LABEL) == queue
    assert spec.get("suspend", False) is (queue is not None)  # Kueue admits the Job as a whole
    assert container["args"][0] == "train"  # the same entrypoint and arguments, whatever the launcher
    if not indexed:
        assert container["command"] == ["dynamiclora"] and "completionMode" not in spec and "subdomain" not in pod
        return
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", pods, pods)
    assert pod["subdomain"] == NAME and job["metadata"]["annotations"][ANNOTATION_WORKERS] == f"{pods}x{procs}"
    assert container["command"] == [
        "torchrun", f"--nnodes={pods}", f"--nproc-per-node={procs}", "--rdzv-backend=c10d",
        f"--rdzv-endpoint={NAME}-0.{NAME}:{RDZV_PORT}", f"--rdzv-id={NAME}", "--max-restarts=0", "-m",
        "dynamiclora.cli"]  # fmt: skip
    assert {"name": "rdzv", "containerPort": RDZV_PORT} in container["ports"]


def test_rendezvous_service_is_headless_owned_by_its_job(
    swarm_body: dict[str, Any], settings: OperatorSettings
) -> None:
    job = _job(swarm_body, settings, nodes=2)
    job["metadata"]["uid"] = "job-uid"
    svc = rendezvous_service(job)
    assert svc["metadata"]["name"] == NAME and svc["metadata"]["ownerReferences"][0]["uid"] == "job-uid"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": NAME}


def test_a_batch_smaller_than_the_processes_is_refused(swarm_body: dict[str, Any]) -> None:
    sw = Swarm.model_validate(swarm_body)
    raw = build_agent_tiers(_owned(swarm_body), sw)[0]["spec"]
    raw["training"] = {**raw.get("training", {}), "batchSize": 4, "nodes": 2, "procsPerNode": 4}
    with pytest.raises(ValueError, match=r"batchSize \(4\) must be at least nodes x procsPerNode \(2 x 4\)"):
        LoRATierSpec.model_validate(raw)


@pytest.mark.parametrize(("training", "strategy"), [({"nodes": 2}, "ddp"), ({"nodes": 2, "strategy": "DDP"}, "ddp"),
                                                    ({"nodes": 2, "strategy": "FSDP"}, "fsdp"),
                                                    ({"procsPerNode": 2, "strategy": "FSDP"}, "fsdp")])
def test_the_strategy_reaches_every_process(swarm_body: dict[str, Any], settings: OperatorSettings,
                                            training: dict[str, Any], strategy: str) -> None:  # fmt: skip
    (container,) = _job(swarm_body, settings, **training)["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--strategy") + 1] == strategy if "--strategy" in args else strategy == "ddp"


def test_fsdp_for_one_process_is_refused(swarm_body: dict[str, Any]) -> None:
    sw = Swarm.model_validate(swarm_body)
    raw = build_agent_tiers(_owned(swarm_body), sw)[0]["spec"]
    raw["training"] = {**raw.get("training", {}), "strategy": "FSDP"}
    with pytest.raises(ValueError, match=r"strategy FSDP shards the model .* needs nodes x procsPerNode above 1"):
        LoRATierSpec.model_validate(raw)


def test_fsdp_with_an_anchor_set_is_refused(swarm_body: dict[str, Any]) -> None:
    sw = Swarm.model_validate(swarm_body)
    raw = build_agent_tiers(_owned(swarm_body), sw)[0]["spec"]
    raw["training"] = {**raw.get("training", {}), "strategy": "FSDP", "nodes": 2, "anchorSet": "anchors/a.jsonl"}
    with pytest.raises(ValueError, match=r"training.anchorSet adds its gradient to whole parameters"):
        LoRATierSpec.model_validate(raw)


@pytest.mark.parametrize(("training", "queue"), [({"nodes": 2, "procsPerNode": 2}, None),
                                                 ({"nodes": 3, "queue": "team-a"}, "team-a")])
def test_a_train_job_runs_exactly_what_the_job_runs(swarm_body: dict[str, Any], settings: OperatorSettings,
                                                    training: dict[str, Any], queue: str | None) -> None:  # fmt: skip
    from dynamiclora.api.tier import TrainingTemplate
    from dynamiclora.builders.trainjob import TORCHRUN, TRAINJOB_API_VERSION, train_job

    job = _job(swarm_body, settings, **training)
    t = TrainingTemplate.model_validate({"batchSize": 8, **training})
    tj = train_job(job, t, "torch-distributed")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    trainer, (override,) = tj["spec"]["trainer"], tj["spec"]["podSpecOverrides"]
    assert (tj["apiVersion"], tj["kind"], tj["metadata"]["name"]) == (TRAINJOB_API_VERSION, "TrainJob", NAME)
    assert tj["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]  # deleted with its tier
    assert (trainer["image"], trainer["args"], trainer["env"]) == (container["image"], container["args"],
                                                                   container["env"])  # fmt: skip
    assert trainer["command"] == TORCHRUN and (trainer["numNodes"], trainer["numProcPerNode"]) == (
        t.nodes, t.procs_per_node)
    assert trainer["resourcesPerNode"] == container["resources"]
    assert override["volumes"] == pod["volumes"] and override["containers"] == [
        {"name": "node", "volumeMounts": container["volumeMounts"]}]
    assert tj["metadata"]["labels"].get(KUEUE_QUEUE_LABEL) == queue and tj["spec"].get("suspend", False) is bool(queue)
    assert "labels" not in tj["spec"]  # the runtime's Jobs are not the operator's to watch

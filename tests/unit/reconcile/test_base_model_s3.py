"""A Swarm whose base model is in S3 (``baseModel.s3Uri``): the vLLM pods fetch it with an init container,
and every Job is given the URI, which its entrypoint fetches (tests/integration/training/
test_training_base_model_s3.py runs that part)."""

from __future__ import annotations

from typing import Any

from dynamiclora.builders.inference import MODEL_MOUNT
from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube
from .test_reconcile import NS, _records, _swarm, _tier_pass

URI = "s3://models/tiny-llama"


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_the_jobs_get_the_uri_and_the_vllm_pods_the_fetched_copy(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any]
) -> None:
    swarm_body["spec"]["baseModel"] = {"name": "tiny-llama", "s3Uri": URI}
    _swarm(kube, settings, swarm_body)
    _records(settings, "alice", 20)
    _tier_pass(kube, settings, "support-alice-context")
    (job,) = kube.list("Job", NS)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert _flag(container["args"], "--base-model") == URI
    sts = kube.objects[("StatefulSet", NS, "support-vllm")]["spec"]["template"]["spec"]
    assert [c["name"] for c in sts["initContainers"]] == ["fetch-model"]
    assert _flag(sts["containers"][0]["args"], "--model") == MODEL_MOUNT

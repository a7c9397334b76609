"""Swarm -> headless Service and StatefulSet of vLLM multi-LoRA pods (pure functions)."""

from __future__ import annotations

import math

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.guard import GUARD_ANNOTATION, guard_args, guard_digest, guard_env, guard_volume
from dynamiclora.builders.jobs import _storage_env_and_volumes, store_uri
from dynamiclora.builders.names import LABEL_SWARM, base_labels, inference_name, volume_name
from dynamiclora.builders.security import WRITABLE_HOME, restrict
from dynamiclora.kube import Obj, owner_reference
from dynamiclora.serving.served_s3 import ADAPTERS_MOUNT, served_prefix
from dynamiclora.settings import OperatorSettings

MODEL_MOUNT = "/models/base"


def selector_labels(swarm: str) -> dict[str, str]:
    """Labels selecting a swarm's inference pods (immutable in a StatefulSet, so kept minimal)."""
    return {LABEL_SWARM: swarm, "dynamiclora.io/component": "inference"}


def _pod_labels(swarm: str, settings: OperatorSettings) -> dict[str, str]:
    return {**settings.extra_pod_labels, **base_labels("inference"), **selector_labels(swarm)}


def model_path(sw: Swarm, settings: OperatorSettings) -> str:
    """Where the base model's weights are inside an inference pod."""
    bm = sw.spec.base_model
    if bm.path:
        return bm.path
    if bm.pvc:
        return f"{settings.pvc_mount_root}/{bm.pvc.claim_name}/{bm.pvc.path.strip('/')}"
    return MODEL_MOUNT  # s3Uri: fetched into an emptyDir by the init container


def job_model_path(sw: Swarm, settings: OperatorSettings) -> str:
    """What the Jobs are given as the base model: its path, or its ``s3://`` URI, which the Job entrypoints
    fetch themselves (training/base_model.py); the vLLM pods' init container fetches it for them."""
    return sw.spec.base_model.s3_uri or model_path(sw, settings)


def vllm_args(sw: Swarm, settings: OperatorSettings) -> list[str]:
    """Command-line arguments of the vLLM OpenAI server for this swarm."""
    inf = sw.spec.inference
    args = [
        "--model", model_path(sw, settings),
        "--served-model-name", sw.spec.base_model.name,
        "--host", "0.0.0.0",
        "--port", str(inf.port),
        "--enable-lora",
        "--max-loras", str(inf.max_loras),
        "--max-lora-rank", str(inf.max_lora_rank),
        "--dtype", inf.dtype,
    ]  # fmt: skip
    if inf.max_cpu_loras:
        args += ["--max-cpu-loras", str(inf.max_cpu_loras)]
    if inf.max_model_len:
        args += ["--max-model-len", str(inf.max_model_len)]
    return args + list(inf.extra_args)


def _volumes(sw: Swarm, settings: OperatorSettings) -> tuple[list[Obj], list[Obj]]:
    """Volumes and mounts: the storage PVC (adapters are loaded from it) and the model source."""
    volumes: list[Obj] = []
    mounts: list[Obj] = []
    claims: set[str] = set()
    if sw.spec.storage.pvc:
        claims.add(sw.spec.storage.pvc.claim_name)
    if sw.spec.base_model.pvc:
        claims.add(sw.spec.base_model.pvc.claim_name)
    for claim in sorted(claims):
        volumes.append({"name": volume_name("pvc", claim), "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": volume_name("pvc", claim), "mountPath": f"{settings.pvc_mount_root}/{claim}"})
    if sw.spec.base_model.s3_uri:
        volumes.append({"name": "model", "emptyDir": {}})
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT})
    return volumes, mounts


def adapters_mount(settings: OperatorSettings, namespace: str, swarm: str) -> str:
    """Where a swarm's pods see their synced adapters (vLLM is told paths below it at run time).

    With ``adapters_host_root`` the node folder is mounted at its own path, so that a path is the same
    in the pod and on the node (pods that are processes on one machine, as the local executor runs them,
    see only the node's paths).
    """
    if settings.adapters_host_root:
        return f"{settings.adapters_host_root.rstrip('/')}/{namespace}/{swarm}"
    return ADAPTERS_MOUNT


def adapters_volume(body: Obj, settings: OperatorSettings) -> Obj:
    """The volume the adapter-sync sidecar fills: an emptyDir per pod, or the node folder pods share."""
    if settings.adapters_host_root:
        path = adapters_mount(settings, body["metadata"]["namespace"], body["metadata"]["name"])
        return {"name": "adapters", "hostPath": {"path": path, "type": "DirectoryOrCreate"}}
    return {"name": "adapters", "emptyDir": {}}


def adapter_sync_container(body: Obj, sw: Swarm, settings: OperatorSettings) -> Obj:
    """The sidecar mirroring the swarm's composed adapters from S3 into the shared ``adapters`` volume.

    It runs the trainer image the swarm's Jobs use (it has the ``dynamiclora`` CLI) with the same S3
    environment. It has no readiness probe: a pod is ready when vLLM is, synced or not (the operator
    treats an adapter not mirrored yet as not served yet and retries).
    """
    env, _volumes, _mounts = _storage_env_and_volumes(sw.spec.storage, settings)
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    ns, swarm = body["metadata"]["namespace"], body["metadata"]["name"]
    mount = adapters_mount(settings, ns, swarm)
    return {
        "name": "adapter-sync",
        "image": sw.spec.context_tier.training.image,
        "command": ["dynamiclora"],
        "args": ["adapter-sync", "--store", store_uri(sw.spec.storage, settings),
                 "--source", served_prefix(ns, swarm), "--dest", mount, "--interval", "2"],
        "env": env,
        "volumeMounts": [{"name": "adapters", "mountPath": mount}],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }


def cpu_threads(quantity: int | str | None) -> int | None:
    """Whole CPUs in a CPU quantity ("500m" -> 1, "2" -> 2, "1.5" -> 2); None when absent or unreadable."""
    if quantity is None:
        return None
    text = str(quantity).strip()
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None
    return max(1, math.ceil(cores)) if math.isfinite(cores) and cores > 0 else None


def _env(sw: Swarm) -> list[Obj]:
    inf = sw.spec.inference
    env: list[Obj] = [
        # Adapters are loaded and swapped at run time through /v1/load_lora_adapter.
        {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
        {"name": "HOME", "value": WRITABLE_HOME},  # the image's HOME is root's; the pod runs as RUN_AS
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    # Torch sizes its thread pool by the node's cores, not the container's CPU quota: a CPU server limited to
    # one core runs as many spinning OpenMP threads as the node has cores and is throttled to a crawl (on a
    # shared 2-core machine, 3 pods verifying a swap at once took 2.5 s each instead of 0.13 s).
    threads = cpu_threads(inf.resources.limits.get("cpu"))
    if threads is not None and "OMP_NUM_THREADS" not in inf.env:
        env.append({"name": "OMP_NUM_THREADS", "value": str(threads)})
    env += [{"name": k, "value": v} for k, v in sorted(inf.env.items())]
    return env


def _init_containers(sw: Swarm) -> list[Obj]:
    uri = sw.spec.base_model.s3_uri
    if not uri:
        return []
    env: list[Obj] = []
    s3 = sw.spec.storage.s3
    if s3 and s3.credentials_secret_ref:
        env.append({"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {
            "name": s3.credentials_secret_ref.name, "key": "AWS_ACCESS_KEY_ID"}}})
        env.append({"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {
            "name": s3.credentials_secret_ref.name, "key": "AWS_SECRET_ACCESS_KEY"}}})
    if s3 and s3.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint})
    return [{
        "name": "fetch-model",
        "image": "amazon/aws-cli:2.22.0",
        "args": ["s3", "cp", "--recursive", uri, MODEL_MOUNT],
        "env": env,
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT}],
    }]  # fmt: skip


def build_service(body: Obj, sw: Swarm) -> Obj:
    """Headless Service giving each vLLM pod a stable DNS name."""
    name = inference_name(body["metadata"]["name"])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": body["metadata"]["namespace"],
            "labels": {**base_labels("inference"), LABEL_SWARM: body["metadata"]["name"]},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": False,
            "selector": selector_labels(body["metadata"]["name"]),
            "ports": [{"name": "http", "port": sw.spec.inference.port, "targetPort": "http"}],
        },
    }


def build_statefulset(body: Obj, sw: Swarm, settings: OperatorSettings) -> Obj:
    """StatefulSet of vLLM pods with LoRA enabled and runtime adapter updates allowed."""
    swarm = body["metadata"]["name"]
    name = inference_name(swarm)
    inf = sw.spec.inference
    volumes, mounts = _volumes(sw, settings)
    guard, guard_mount = guard_volume(swarm)
    volumes, mounts = [*volumes, guard], [*mounts, guard_mount]
    resources = inf.resources.to_k8s()
    container: Obj = {
        "name": "vllm",
        "image": inf.image,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_args(sw, settings) + guard_args(),
        "env": _env(sw) + guard_env(sw, swarm),
        "ports": [{"name": "http", "containerPort": inf.port}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": inf.port},
            "periodSeconds": 5,
            "timeoutSeconds": 5,  # /health answers slowly while a busy CPU server decodes
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/health", "port": inf.port},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 120,  # model loading and CPU graph warm-up take minutes
        },
        "volumeMounts": mounts,
        "resources": resources,
    }
    containers = [container]
    if sw.spec.storage.pvc is None:  # S3 only: the adapter-sync sidecar fills the adapters volume
        volumes.append(adapters_volume(body, settings))
        mount = adapters_mount(settings, body["metadata"]["namespace"], body["metadata"]["name"])
        container["volumeMounts"].append({"name": "adapters", "mountPath": mount, "readOnly": True})
        containers.append(adapter_sync_container(body, sw, settings))
    pod_spec: Obj = {
        "containers": containers,
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
    }
    if init := _init_containers(sw):
        pod_spec["initContainers"] = init
    if inf.resources.wants_gpu:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    restrict(pod_spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": name,
            "namespace": body["metadata"]["namespace"],
            "labels": {**base_labels("inference"), LABEL_SWARM: swarm},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "serviceName": name,
            "replicas": inf.replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(swarm)},
            "template": {"metadata": {"labels": _pod_labels(swarm, settings),
                                      "annotations": {GUARD_ANNOTATION: guard_digest()}}, "spec": pod_spec},
        },
    }

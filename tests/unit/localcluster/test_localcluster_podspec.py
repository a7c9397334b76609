"""Pure translation of pod specs into local processes (no API server, no processes)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamiclora_dev.localcluster.images import UnknownImageError, local_argv, repository
from dynamiclora_dev.localcluster.kwokstages import kwok_config
from dynamiclora_dev.localcluster.podspec import (
    PodSpecError,
    expand,
    field_ref,
    launch,
    rewrite_paths,
)


class DictSource:
    """ObjectSource over plain dicts."""

    def __init__(self, secrets: dict[str, dict[str, bytes]], maps: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets
        self.maps = maps

    def secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        return self.secrets.get(f"{namespace}/{name}")

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        return self.maps.get(f"{namespace}/{name}")

    def service_account_token(self, namespace: str, account: str, audience: str | None) -> str | None:
        return f"token-for-{namespace}-{account}"


def make_pod(container: dict[str, Any], volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
        "spec": {"nodeName": "kwok-gpu-0", "containers": [container], "volumes": volumes or []},
        "status": {"podIP": "127.10.0.7", "hostIP": "127.0.0.1"},
    }


SOURCE = DictSource({"ns/creds": {"key": b"s3cret"}}, {"ns/cfg": {"mode": "fast", "a.txt": "hello"}})


def test_repository_strips_tag_digest_and_docker_hub_prefix() -> None:
    assert repository("ghcr.io/dynamiclora/trainer:v1") == "ghcr.io/dynamiclora/trainer"
    assert repository("docker.io/library/busybox:1.36@sha256:ab") == "busybox"
    assert repository("localhost:5000/x/y") == "localhost:5000/x/y"


def test_image_table_maps_trainer_and_vllm() -> None:
    trainer = local_argv("ghcr.io/dynamiclora/trainer:0.1", ["dynamiclora"], ["train", "--x"])
    assert trainer == [sys.executable, "-m", "dynamiclora.cli", "train", "--x"]
    assert local_argv("ghcr.io/dynamiclora/trainer:0.1", [], ["train"])[-1] == "train"
    vllm = local_argv("vllm/vllm-openai-cpu:v0.32.0", ["vllm", "serve"], ["--model", "/m"])
    assert vllm == [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"]
    served = local_argv("vllm/vllm-openai-cpu:v0.32.0", ["vllm", "serve", "/m"], ["--port", "8000"])
    assert served[3:] == ["--model", "/m", "--port", "8000"]
    assert local_argv("vllm/vllm-openai-cpu", [], ["/m"])[3:] == ["--model", "/m"]
    module = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert local_argv("vllm/vllm-openai-cpu", module, ["--model", "/m"])[3:] == ["--model", "/m"]
    assert local_argv("busybox", ["sh", "-c", "exit 3"], []) == ["sh", "-c", "exit 3"]
    with pytest.raises(UnknownImageError, match="nginx"):
        local_argv("nginx:1", [], [])


def test_trainer_and_operator_images_run_from_their_own_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    from dynamiclora_dev.localcluster.images import OPERATOR_PYTHON, TRAINER_PYTHON

    monkeypatch.setenv(TRAINER_PYTHON, "/envs/trainer/bin/python")
    monkeypatch.setenv(OPERATOR_PYTHON, "/envs/operator/bin/python")
    assert local_argv("ghcr.io/dynamiclora/trainer:0.1", [], ["train"])[0] == "/envs/trainer/bin/python"
    assert local_argv("ghcr.io/dynamiclora/trainer", ["python", "-c", "x"], [])[0] == "/envs/trainer/bin/python"
    assert local_argv("ghcr.io/dynamiclora/operator:0.1", ["dynamiclora"], ["adapter-sync"]) == [
        "/envs/operator/bin/python", "-m", "dynamiclora.cli", "adapter-sync"]
    assert local_argv("vllm/vllm-openai-cpu", [], ["/m"])[0] == sys.executable  # the vLLM image: this venv


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"


def test_field_ref_reads_pod_ip_and_labels() -> None:
    pod = make_pod({"name": "c"})
    assert field_ref(pod, "status.podIP") == "127.10.0.7"
    assert field_ref(pod, "metadata.labels['app']") == "x"
    with pytest.raises(PodSpecError, match=r"spec\.bogus"):
        field_ref(pod, "spec.bogus")


def test_rewrite_paths_only_at_boundaries() -> None:
    mounts = [("/data", Path("/L/pvc")), ("/data/sub", Path("/L/sub"))]
    assert rewrite_paths("--out=/data/x", mounts) == "--out=/L/pvc/x"
    assert rewrite_paths("/data/sub/y", mounts) == "/L/sub/y"
    assert rewrite_paths("/database", mounts) == "/database"
    assert rewrite_paths("/mnt/data", mounts) == "/mnt/data"


def test_launch_env_volumes_and_host(tmp_path: Path) -> None:
    container = {
        "name": "vllm",
        "image": "vllm/vllm-openai-cpu:latest",
        "args": ["--model", "/models/tiny", "--host", "0.0.0.0", "--port", "8000"],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "URL", "value": "http://$(POD_IP):8000"},
            {"name": "CACHE", "value": "/cache/x"},
        ],
        "volumeMounts": [
            {"name": "models", "mountPath": "/models"},
            {"name": "scratch", "mountPath": "/cache"},
            {"name": "conf", "mountPath": "/etc/conf"},
        ],
    }
    volumes = [
        {"name": "models", "persistentVolumeClaim": {"claimName": "weights"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "conf", "configMap": {"name": "cfg", "items": [{"key": "a.txt", "path": "renamed.txt"}]}},
    ]
    pod = make_pod(container, volumes)
    plan = launch(pod, container, SOURCE, state_dir=tmp_path, pod_dir=tmp_path / "pod", base_env={"PATH": "/bin"})
    assert plan.argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert plan.argv[plan.argv.index("--model") + 1] == str(tmp_path / "pvc" / "ns" / "weights" / "tiny")
    assert plan.argv[plan.argv.index("--host") + 1] == "127.10.0.7"
    assert plan.env["POD_IP"] == "127.10.0.7"
    assert plan.env["KEY"] == "s3cret"
    assert plan.env["MODE"] == "fast"
    assert plan.env["URL"] == "http://127.10.0.7:8000"
    assert plan.env["CACHE"] == str(tmp_path / "pod" / "emptydir" / "scratch" / "x")
    assert plan.env["PATH"] == "/bin"
    assert plan.files == {tmp_path / "pod" / "volumes" / "conf" / "renamed.txt": b"hello"}
    assert tmp_path / "pvc" / "ns" / "weights" in plan.dirs


def test_launch_adds_host_flag_when_missing(tmp_path: Path) -> None:
    container = {"name": "v", "image": "vllm/vllm-openai-cpu", "args": ["--port", "8000"]}
    plan = launch(make_pod(container), container, SOURCE, state_dir=tmp_path, pod_dir=tmp_path, base_env={})
    assert plan.argv[-2:] == ["--host", "127.10.0.7"]


def test_launch_errors_name_the_field(tmp_path: Path) -> None:
    missing = {
        "name": "c",
        "image": "busybox",
        "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}],
    }
    with pytest.raises(PodSpecError, match=r"ns/p container c env K: secretKeyRef nope/k not found"):
        launch(make_pod(missing), missing, SOURCE, state_dir=tmp_path, pod_dir=tmp_path, base_env={})
    optional = {
        "name": "c",
        "image": "busybox",
        "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}}],
    }
    plan = launch(make_pod(optional), optional, SOURCE, state_dir=tmp_path, pod_dir=tmp_path, base_env={})
    assert "K" not in plan.env
    bad_volume = {"name": "c", "image": "busybox", "volumeMounts": [{"name": "n", "mountPath": "/n"}]}
    pod = make_pod(bad_volume, [{"name": "n", "nfs": {"server": "x", "path": "/"}}])
    with pytest.raises(PodSpecError, match=r"volume n: unsupported volume type \['nfs'\]"):
        launch(pod, bad_volume, SOURCE, state_dir=tmp_path, pod_dir=tmp_path, base_env={})


def test_projected_service_account_volume(tmp_path: Path) -> None:
    container = {"name": "c", "image": "busybox", "volumeMounts": [{"name": "sa", "mountPath": "/var/run/sa"}]}
    volume = {
        "name": "sa",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token"}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]
        },
    }
    plan = launch(make_pod(container, [volume]), container, SOURCE, state_dir=tmp_path, pod_dir=tmp_path, base_env={})
    files = {p.name: v for p, v in plan.files.items()}
    assert files == {"token": b"token-for-ns-default", "namespace": b"ns"}


def test_kwok_config_hands_executor_pods_over() -> None:
    docs = list(yaml.safe_load_all(kwok_config("127.10.0.1/16", "127.0.0.1")))
    assert docs[0]["options"]["cidr"] == "127.10.0.1/16"
    stages = {d["metadata"]["name"]: d for d in docs[1:]}
    assert set(stages) == {"pod-ready", "pod-complete", "pod-assign-ip", "pod-delete"}
    for name, op in (("pod-ready", "NotIn"), ("pod-complete", "NotIn"), ("pod-assign-ip", "In")):
        exprs = stages[name]["spec"]["selector"]["matchExpressions"]
        label = [e for e in exprs if "dynamiclora.io/executor" in e["key"]]
        assert label == [{"key": '.metadata.labels["dynamiclora.io/executor"]', "operator": op, "values": ["local"]}]
    assign = stages["pod-assign-ip"]["spec"]["next"]["statusTemplate"]
    assert "phase" not in assign and "podIP" in assign

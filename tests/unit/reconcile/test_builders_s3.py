"""Table tests of the inference StatefulSet of S3-only swarms: the shared adapters volume and its sidecar."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.guard import GUARD_MOUNT
from dynamiclora.builders.inference import build_statefulset
from dynamiclora.cli import build_parser
from dynamiclora.settings import OperatorSettings

S3 = {"bucket": "ckpt-bucket", "prefix": "team/", "endpoint": "http://minio:9000",
      "credentialsSecretRef": {"name": "s3-creds"}}  # fmt: skip


def _body(swarm_body: dict[str, Any], storage: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(swarm_body)
    body["metadata"]["uid"] = "uid-1"
    body["spec"]["storage"] = storage
    return body


def _pod(body: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    sts = build_statefulset(body, Swarm.model_validate(body), settings)
    spec: dict[str, Any] = sts["spec"]["template"]["spec"]
    return spec


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize(
    ("storage", "sidecar"),
    [
        ({"s3": S3}, True),
        ({"s3": {"bucket": "plain-bucket"}}, True),
        ({"pvc": {"claimName": "ckpt", "path": "dl"}}, False),
    ],
)
def test_sidecar_only_without_pvc(
    swarm_body: dict[str, Any], pvc_root: Path, storage: dict[str, Any], sidecar: bool
) -> None:
    pod = _pod(_body(swarm_body, storage), OperatorSettings(pvc_mount_root=str(pvc_root)))
    names = [c["name"] for c in pod["containers"]]
    volumes = {v["name"]: v for v in pod["volumes"]}
    vllm_mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert names == (["vllm", "adapter-sync"] if sidecar else ["vllm"])
    assert ("adapters" in volumes) is sidecar
    assert ("/adapters" in vllm_mounts) is sidecar
    if sidecar:
        assert volumes["adapters"] == {"name": "adapters", "emptyDir": {}}
        assert vllm_mounts["/adapters"]["name"] == "adapters" and vllm_mounts["/adapters"]["readOnly"] is True


def test_sidecar_command_image_and_env(swarm_body: dict[str, Any], settings: OperatorSettings) -> None:
    body = _body(swarm_body, {"s3": S3})
    body["spec"]["contextTier"].setdefault("training", {})["image"] = "registry.local/dl/trainer:9"
    pod = _pod(body, settings)
    side = pod["containers"][1]
    assert side["image"] == "registry.local/dl/trainer:9"  # the image the swarm's Jobs run
    assert side["command"] == ["dynamiclora"]
    args = side["args"]
    assert args[0] == "adapter-sync"
    assert _arg(args, "--store") == "s3://ckpt-bucket/team"
    assert _arg(args, "--source") == f"served/{body['metadata']['namespace']}/{body['metadata']['name']}"
    assert _arg(args, "--dest") == "/adapters"
    assert side["volumeMounts"] == [{"name": "adapters", "mountPath": "/adapters"}]
    env = {e["name"]: e for e in side["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": key}
    # Pod readiness is vLLM's alone: the sidecar has no probe that could wait for a sync.
    assert not {"readinessProbe", "startupProbe", "livenessProbe"} & side.keys()
    assert "readinessProbe" in pod["containers"][0]
    # The sidecar's command line is one the CLI accepts.
    parsed = build_parser().parse_args(args)
    assert (parsed.store, parsed.dest, parsed.once) == ("s3://ckpt-bucket/team", "/adapters", False)


def test_sidecar_without_credentials_uses_workload_identity(
    swarm_body: dict[str, Any], settings: OperatorSettings
) -> None:
    side = _pod(_body(swarm_body, {"s3": {"bucket": "plain-bucket"}}), settings)["containers"][1]
    names = {e["name"] for e in side["env"]}
    assert "AWS_ACCESS_KEY_ID" not in names and "AWS_ENDPOINT_URL" not in names
    assert _arg(side["args"], "--store") == "s3://plain-bucket/dynamiclora"


def test_adapters_host_root_shares_a_node_folder_mounted_at_its_own_path(
    swarm_body: dict[str, Any], settings: OperatorSettings
) -> None:
    body = _body(swarm_body, {"s3": S3})
    pod = _pod(body, OperatorSettings(pvc_mount_root=settings.pvc_mount_root, adapters_host_root="/srv/adapters"))
    volumes = {v["name"]: v for v in pod["volumes"]}
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    folder = f"/srv/adapters/{ns}/{name}"
    assert volumes["adapters"]["hostPath"] == {"path": folder, "type": "DirectoryOrCreate"}
    # Mounted at the node's own path: the path the operator hands vLLM at run time is valid in both.
    assert {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]} == {folder, GUARD_MOUNT}
    assert _arg(pod["containers"][1]["args"], "--dest") == folder
    default = _pod(body, settings)
    assert {v["name"]: v for v in default["volumes"]}["adapters"] == {"name": "adapters", "emptyDir": {}}
    assert {m["mountPath"] for c in default["containers"] for m in c["volumeMounts"]} == {"/adapters", GUARD_MOUNT}


def test_pod_labels_reach_every_pod_but_not_the_selector(swarm_body: dict[str, Any], tmp_path: Path) -> None:
    body = _body(swarm_body, {"s3": S3})
    plain = build_statefulset(body, Swarm.model_validate(body), OperatorSettings())
    sts = build_statefulset(body, Swarm.model_validate(body), OperatorSettings(pod_labels="a.io/x=1, team=ml"))
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert labels["a.io/x"] == "1" and labels["team"] == "ml"
    assert "team" not in plain["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"] == plain["spec"]["selector"]  # immutable: extra labels never select


@pytest.mark.parametrize("bad", ["novalue", "=x", "a b=c", "k=" + "v" * 64, "-k=v"])
def test_malformed_pod_labels_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="pod_labels"):
        OperatorSettings(pod_labels=bad)
    with pytest.raises(ValueError, match="adapters_host_root must be an absolute path"):
        OperatorSettings(adapters_host_root="relative")


def test_pvc_statefulset_unchanged(swarm_body: dict[str, Any], settings: OperatorSettings) -> None:
    pod = _pod(_body(swarm_body, {"pvc": {"claimName": "ckpt", "path": "dl"}}), settings)
    assert [v["name"] for v in pod["volumes"]] == ["pvc-ckpt", "guard"]
    assert [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]] == [f"{settings.pvc_mount_root}/ckpt",
                                                                             GUARD_MOUNT]


def test_scratch_dir_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OperatorSettings().scratch_dir == "/var/lib/dynamiclora/scratch"
    monkeypatch.setenv("DYNAMICLORA_SCRATCH_DIR", "/tmp/dl-scratch")
    assert OperatorSettings.from_env().scratch_dir == "/tmp/dl-scratch"
    assert OperatorSettings.from_env(scratch_dir="/srv/x").scratch_dir == "/srv/x"
    with pytest.raises(ValueError, match="scratch_dir must be an absolute path"):
        OperatorSettings(scratch_dir="relative/dir")
    parsed = build_parser().parse_args(["run", "--scratch-dir", "/data/scratch"])
    assert parsed.scratch_dir == "/data/scratch"


class _NoObjects:
    """The sidecar of a Swarm without credentials references no Secret or ConfigMap."""

    def secret(self, namespace: str, name: str) -> None:
        raise AssertionError(f"unexpected Secret {namespace}/{name}")

    def config_map(self, namespace: str, name: str) -> None:
        raise AssertionError(f"unexpected ConfigMap {namespace}/{name}")

    def service_account_token(self, namespace: str, account: str, audience: str | None) -> None:
        return None


def test_local_executor_runs_the_sidecar_on_the_shared_folder(
    swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    from dynamiclora_dev.localcluster.podspec import launch

    body = _body(swarm_body, {"s3": {"bucket": "plain-bucket", "endpoint": "http://127.0.0.1:9000"}})
    settings = OperatorSettings(pod_labels="dynamiclora.io/executor=local", adapters_host_root=str(tmp_path / "ad"))
    sts = build_statefulset(body, Swarm.model_validate(body), settings)
    pod = {"metadata": {"name": "support-inference-0", "namespace": body["metadata"]["namespace"]},
           "spec": sts["spec"]["template"]["spec"], "status": {"podIP": "127.0.0.10"}}  # fmt: skip
    side = launch(pod, pod["spec"]["containers"][1], _NoObjects(), state_dir=tmp_path / "state",
                  pod_dir=tmp_path / "pod", base_env={})  # fmt: skip
    folder = tmp_path / "ad" / body["metadata"]["namespace"] / body["metadata"]["name"]
    assert side.argv[1:4] == ["-m", "dynamiclora.cli", "adapter-sync"]
    assert _arg(side.argv, "--dest") == str(folder) and folder in side.dirs
    assert side.env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"

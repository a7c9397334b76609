"""S3-only serving: the operator publishes composed adapters to S3, the adapter-sync sidecar mirrors them.

Real parts only: moto's S3 server on loopback, ``dynamiclora adapter-sync`` as a subprocess, and the
session's real vLLM CPU server (dynamiclora_dev.testing.serving) loading from the sidecar's folder.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.names import served_adapter_name
from dynamiclora.builders.tiers import stack_tier_names
from dynamiclora.cli import main
from dynamiclora.controllers.serving import sync_serving
from dynamiclora.controllers.swarm import ReadyPod
from dynamiclora.serving.adapters import Fingerprint
from dynamiclora.serving.client import ClientConfig, VLLMClient
from dynamiclora.serving.launcher import VLLMServer
from dynamiclora.serving.marker import COMPLETE_MARKER
from dynamiclora.serving.served_s3 import publish_adapter, remote_backend, served_prefix
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage import open_store
from dynamiclora_dev.testing.serving import SERVER_API_KEY, SERVER_MAX_LORA_RANK, AdapterFactory, SubprocessComposer

pytestmark = [pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[3]


def _adapter(path: Path, seed: int) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA", "seed": seed}))
    (path / "adapter_model.safetensors").write_bytes(os.urandom(2048))
    return path


def _sync_cli(store: str, source: str, dest: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dynamiclora.cli", "adapter-sync", "--store", store, "--source", source,
            "--dest", str(dest), *extra]  # fmt: skip


def _tree(dest: Path) -> set[str]:
    return {p.relative_to(dest).as_posix() for p in dest.glob("*/*")}


def test_sidecar_mirrors_complete_adapters_and_prunes(s3_store_uri: str, tmp_path: Path) -> None:
    backend = remote_backend(s3_store_uri)
    src = served_prefix("team", "support")
    local = {k: _adapter(tmp_path / k, i) for i, k in enumerate(["k1", "k2"])}
    assert publish_adapter(backend, local["k1"], f"{src}/alice/k1") is True
    assert publish_adapter(backend, local["k2"], f"{src}/bob/k2") is True
    assert publish_adapter(backend, local["k1"], f"{src}/alice/k1") is False  # marker exists: no upload
    # A writer that died mid-upload: files but no COMPLETE marker.
    backend.put_file(f"{src}/carol/k3/adapter_config.json", local["k1"] / "adapter_config.json")
    keys = {b.key for b in backend.list(src + "/")}
    assert f"{src}/alice/k1/{COMPLETE_MARKER}" in keys and f"{src}/carol/k3/{COMPLETE_MARKER}" not in keys

    dest = tmp_path / "adapters"
    run = subprocess.run(_sync_cli(s3_store_uri, src, dest, "--once"), capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr + run.stdout
    assert _tree(dest) == {"alice/k1", "bob/k2"}
    assert sum("synced adapter" in line for line in run.stderr.splitlines()) == 2
    for key, agent in (("k1", "alice"), ("k2", "bob")):
        got = dest / agent / key / "adapter_model.safetensors"
        assert got.read_bytes() == (local[key] / "adapter_model.safetensors").read_bytes()
    assert not list(dest.rglob(".sync-*"))

    for info in backend.list(f"{src}/bob/"):
        backend.delete(info.key)
    run = subprocess.run(_sync_cli(s3_store_uri, src, dest, "--once"), capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert _tree(dest) == {"alice/k1"} and "removed adapter bob/k2" in run.stderr


@pytest.mark.slow
def test_sidecar_errors_are_clear_and_bounded(
    s3_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["adapter-sync", "--store", "file:///x", "--source", "served/a/b", "--dest", str(tmp_path)]) == 2
    assert "served in place, not mirrored" in capsys.readouterr().out
    # An endpoint nobody listens on: the pass fails (after boto's own bounded retries, ~15 s) and the
    # command exits with the error; pass-level retries are covered in tests/unit/serving.
    from dynamiclora_dev.testing.storage import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="dynamiclora.adapter_sync"):
        code = main(["adapter-sync", "--store", "s3://nobucket/p", "--source", "served/a/b", "--dest",
                     str(tmp_path / "d"), "--once", "--retries", "0"])  # fmt: skip
    assert code == 1 and time.monotonic() - start < 60
    assert "<listing>: EndpointConnectionError" in capsys.readouterr().out
    assert [r.getMessage().split(" failed")[0] for r in caplog.records if "sync pass" in r.getMessage()] == [
        "sync pass 1/1"
    ]


class _Tiers:
    """Read-only stand-in for the API listing of LoRATiers (the only Kube call serving makes)."""

    def __init__(self, tiers: list[dict[str, Any]]) -> None:
        self.tiers = tiers

    def list(self, kind: str, namespace: str, labels: Any = None) -> list[dict[str, Any]]:
        assert kind == "LoRATier"
        return copy.deepcopy([t for t in self.tiers if t["metadata"]["namespace"] == namespace])


def _swarm(store_uri: str, endpoint: str, model_dir: Path, port: int) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "swarm.yaml").read_text())
    bucket, _, prefix = store_uri.removeprefix("s3://").partition("/")
    body["metadata"] = {"name": "support", "namespace": "team", "uid": "uid-1"}
    spec = body["spec"]
    spec["baseModel"] = {"name": "tiny-llama", "path": str(model_dir)}
    spec["agents"] = spec["agents"][:1]
    spec.pop("sharedTiers")
    spec["storage"] = {"s3": {"bucket": bucket, "prefix": prefix, "endpoint": endpoint}}
    inf = spec["inference"]
    inf.pop("apiKeySecretRef")
    inf.update({"replicas": 1, "port": port, "maxLoraRank": SERVER_MAX_LORA_RANK, "maxLoras": 2})
    return body


@pytest.mark.slow
async def test_s3_only_swarm_is_served_through_the_sidecar(
    vllm_server: VLLMServer,
    vllm_tiny_model_dir: Path,
    vllm_adapter_factory: AdapterFactory,
    vllm_client_config: ClientConfig,
    s3_store_uri: str,
    moto_s3_endpoint: str,
    tmp_path: Path,
) -> None:
    body = _swarm(s3_store_uri, moto_s3_endpoint, vllm_tiny_model_dir, vllm_server.config.port)
    sw = Swarm.model_validate(body)
    store = open_store(s3_store_uri)
    tiers = []
    for seed, (tier, level) in zip((21, 22), zip(stack_tier_names("support", sw, "alice"), ("context", "agent"),
                                                 strict=True), strict=True):  # fmt: skip
        src = vllm_adapter_factory(seed, 8)
        ref = store.publish("team", tier, {n: src / n for n in ("adapter_config.json", "adapter_model.safetensors")})
        tiers.append({"metadata": {"name": tier, "namespace": "team"},
                      "spec": {"level": level}, "status": {"currentVersion": ref.version}})  # fmt: skip
    kube = _Tiers(tiers)
    settings = OperatorSettings(scratch_dir=str(tmp_path / "scratch"))
    dest = tmp_path / "pod-adapters"  # the pod's /adapters emptyDir, as this vLLM process sees it
    pods = [ReadyPod("support-inference-0", "127.0.0.1", 0)]
    name = served_adapter_name("support", "alice")
    composer = SubprocessComposer(settings)

    # 1. Composed by the compose Job's command, published, not yet mirrored: the load fails in vLLM and is
    # reported pending, not failed.
    first = await sync_serving(kube, settings, body, sw, pods, SERVER_API_KEY, composer,  # type: ignore[arg-type]
                                   adapters_mount=str(dest))
    key = first.stacks[0].key
    assert first.failures == {} and list(first.pending) == [f"support-inference-0/{name}"]
    assert first.agents[0]["servedOnPods"] == 0
    assert f"{first.served_root}/{first.agents[0]['adapterPath']}" == f"{s3_store_uri}/served/team/support/alice/{key}"
    scratch = tmp_path / "scratch" / "served" / "team" / "support" / "alice" / key
    fp = Fingerprint.read(scratch)
    assert fp is not None  # composed with a PEFT fingerprint, which the swap verifies against vLLM
    marker = remote_backend(s3_store_uri).get_bytes(f"served/team/support/alice/{key}/{COMPLETE_MARKER}")
    assert "adapter_model.safetensors" in json.loads(marker)["files"]

    # 2. The sidecar mirrors it; the next reconcile loads it and verifies the fingerprint.
    log = (tmp_path / "sync.log").open("w")
    proc = subprocess.Popen(_sync_cli(s3_store_uri, served_prefix("team", "support"), dest, "--interval", "0.5"),
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (dest / "alice" / key / "adapter_config.json").is_file():
            assert proc.poll() is None, (tmp_path / "sync.log").read_text()
            assert time.monotonic() < deadline, "adapter-sync did not mirror the adapter within 60 s"
            time.sleep(0.2)
        second = await sync_serving(kube, settings, body, sw, pods, SERVER_API_KEY, composer,  # type: ignore[arg-type]
                                   adapters_mount=str(dest))
        assert second.failures == {} and second.pending == {}
        assert second.swapped == [f"support-inference-0:{name}"] and second.agents[0]["servedOnPods"] == 1
        async with VLLMClient(vllm_server.base_url, vllm_client_config) as client:
            listed = await client.list_adapters()
            assert listed[name].root == str(dest / "alice" / key)
            got = await client.complete(name, fp.prompt_token_ids, max_tokens=len(fp.token_ids))
            assert got.token_ids == fp.token_ids
            # An operator restart loses its scratch folder: the adapter comes back from the bucket, as served.
            shutil.rmtree(tmp_path / "scratch")
            third = await sync_serving(kube, settings, body, sw, pods, SERVER_API_KEY, composer,  # type: ignore[arg-type]
                                   adapters_mount=str(dest))
            assert third.swapped == [] and third.failures == {} and third.pending == {}  # unchanged
            assert Fingerprint.read(scratch) == fp and composer.runs == 1  # restored, not composed again
            await client.unload_adapter(name)  # leave the shared server as found
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == 0  # SIGTERM ends the loop cleanly
    assert f"synced adapter alice/{key}" in (tmp_path / "sync.log").read_text()

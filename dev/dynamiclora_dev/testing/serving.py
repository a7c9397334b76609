"""pytest plugin: one real vLLM CPU server (tiny Llama, built locally) shared by a whole test session.

Registered from the repository's root ``conftest.py``. Importing this module is cheap; the model, the
adapters and the server are only built when a test asks for the fixtures.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.inference import model_path
from dynamiclora.builders.jobs import compose_config
from dynamiclora.controllers.composer import ComposeProgress
from dynamiclora.serving.client import ClientConfig
from dynamiclora.serving.launcher import VLLMServer, VLLMServerConfig, free_port
from dynamiclora.settings import OperatorSettings
from dynamiclora.training.options import StackSpec, to_argv
from dynamiclora_dev.localcluster.image_env import REPO_ROOT
from dynamiclora_dev.testing.merge_patch import merge_patch

SERVER_MAX_LORA_RANK = 16
# The server runs behind the guard middleware as a pod does (serving/guard.py): the operator's key may
# manage adapters, the client key may only run inference.
SERVER_API_KEY = "dynamiclora-test-key"  # the operator's key
SERVER_CLIENT_KEY = "dynamiclora-test-client-key"

AdapterFactory = Callable[[int, int], Path]


@pytest.fixture(scope="session")
def vllm_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama saved once per session (weights seeded, so identical across runs)."""
    from dynamiclora_dev.tinymodel import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("vllm-model") / "tiny")


@pytest.fixture(scope="session")
def vllm_server(vllm_tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """A running vLLM CPU server with runtime LoRA updating, on a free loopback port."""
    logdir = tmp_path_factory.mktemp("vllm-log")
    server = VLLMServer(
        VLLMServerConfig(
            model_dir=str(vllm_tiny_model_dir),
            port=free_port(),
            max_lora_rank=SERVER_MAX_LORA_RANK,
            api_key=SERVER_CLIENT_KEY,
            admin_key=SERVER_API_KEY,
            guard_dir=str(logdir / "guard"),
            log_path=str(logdir / "vllm.log"),
        )
    )
    try:
        server.start()
    except Exception as exc:
        raise RuntimeError(f"vLLM failed to start:\n{server.log_tail()}") from exc
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_client_config() -> ClientConfig:
    """Client settings matching :func:`vllm_server` (API key, short backoff)."""
    return ClientConfig(api_key=SERVER_API_KEY, backoff_base_s=0.1, backoff_max_s=1.0)


@pytest.fixture(scope="session")
def vllm_adapter_factory(
    vllm_tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AdapterFactory:
    """``factory(seed, rank)`` -> directory of a random LoRA adapter with its PEFT fingerprint (cached)."""
    from dynamiclora.training.fingerprint import make_random_adapter

    root = tmp_path_factory.mktemp("vllm-adapters")
    made: dict[tuple[int, int], Path] = {}

    def factory(seed: int, rank: int = 8) -> Path:
        if (seed, rank) not in made:
            made[(seed, rank)] = make_random_adapter(
                vllm_tiny_model_dir, root / f"seed{seed}-r{rank}", rank=rank, seed=seed
            )
        return made[(seed, rank)]

    return factory


class SubprocessComposer:
    """The compose Job's command, run as a process here (what the Job's container runs), then done."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.runs = 0

    async def compose(self, body: dict[str, Any], sw: Swarm, stacks: list[StackSpec]) -> ComposeProgress:
        cfg = compose_config(body, sw.spec.storage, stacks, sw.spec.inference.max_lora_rank, sw.spec.base_model.name,
                             model_path(sw, self.settings), self.settings)  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "dynamiclora.cli", "compose", *to_argv(cfg)],
                              capture_output=True, text=True, timeout=300, env=os.environ.copy())  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        self.runs += 1
        return ComposeProgress(done=True)


def signal_group(server: VLLMServer, sig: signal.Signals) -> None:
    """Send ``sig`` to the server's whole process group (SIGSTOP: a pod that accepts and never answers)."""
    if server.proc is not None and server.proc.poll() is None:
        os.killpg(server.proc.pid, sig)


class TierListing:
    """Stand-in for the API's LoRATiers: the listing a serving pass makes, and the status merge patches with
    which ``mark_agents`` writes what it served (its placement, read back by the next pass)."""

    def __init__(self) -> None:
        self.tiers: list[dict[str, Any]] = []

    def list(self, kind: str, namespace: str, labels: Any = None) -> list[dict[str, Any]]:
        assert kind == "LoRATier"
        return copy.deepcopy([t for t in self.tiers if t["metadata"]["namespace"] == namespace])

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        assert kind == "LoRATier"
        tier = next(t for t in self.tiers if t["metadata"]["namespace"] == namespace and t["metadata"]["name"] == name)
        tier["status"] = merge_patch(tier.get("status") or {}, copy.deepcopy(status))
        return copy.deepcopy(tier)


def two_pod_swarm(model_dir: Path, port: int, agents: int, **inference: Any) -> dict[str, Any]:
    """The example Swarm ``team/support`` (its first ``agents`` agents) served by two pods on ``port`` from
    ``model_dir``, on a stand-in PVC, with ``inference`` settings on top."""
    body: dict[str, Any] = yaml.safe_load((REPO_ROOT / "examples" / "swarm.yaml").read_text())
    body["metadata"] = {"name": "support", "namespace": "team", "uid": "uid-1"}
    spec = body["spec"]
    spec["baseModel"] = {"name": "tiny-llama", "path": str(model_dir)}
    spec["agents"] = spec["agents"][:agents]
    spec.pop("sharedTiers")
    spec["storage"] = {"pvc": {"claimName": "store"}}
    inf = spec["inference"]
    inf.pop("apiKeySecretRef")
    inf.update({"replicas": 2, "port": port, "maxLoraRank": SERVER_MAX_LORA_RANK, "maxLoras": 2, **inference})
    return body

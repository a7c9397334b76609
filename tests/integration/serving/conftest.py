"""A second real vLLM CPU server standing for a Swarm's second pod (127.0.0.2, the same port as the session's
server on 127.0.0.1, as pods of one StatefulSet have)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamiclora.serving.launcher import VLLMServer, VLLMServerConfig
from dynamiclora_dev.testing.serving import SERVER_API_KEY, SERVER_CLIENT_KEY, SERVER_MAX_LORA_RANK, signal_group


@pytest.fixture
def second_pod(vllm_server: VLLMServer, vllm_tiny_model_dir: Path, tmp_path: Path) -> Iterator[VLLMServer]:
    cfg = vllm_server.config
    server = VLLMServer(VLLMServerConfig(
        model_dir=str(vllm_tiny_model_dir), host="127.0.0.2", port=cfg.port, max_lora_rank=SERVER_MAX_LORA_RANK,
        api_key=SERVER_CLIENT_KEY, admin_key=SERVER_API_KEY, guard_dir=str(tmp_path / "guard"),
        log_path=str(tmp_path / "vllm-2.log")))  # fmt: skip
    try:
        server.start()
    except Exception as exc:
        raise RuntimeError(f"the second vLLM server failed to start:\n{server.log_tail()}") from exc
    try:
        yield server
    finally:
        signal_group(server, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        server.stop()

"""Placement on real vLLM pods (issue 19): an agent is loaded only where it is placed, within each pod's
``--max-cpu-loras``; a move loads the new pod first, withdraws the old pod from the agent's endpoints and
unloads it there one pass later.

Real parts: two real vLLM CPU servers stand for a Swarm's two pods (127.0.0.1 and 127.0.0.2, one port),
the compose Job's command as a process, a ``file://`` store on a stand-in PVC. The passes are the operator's
``sync_serving``; the status each writes is carried to the next as the operator does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.jobs import store_uri
from dynamiclora.builders.names import LABEL_SWARM, served_adapter_name
from dynamiclora.builders.tiers import stack_tier_names
from dynamiclora.controllers.serving import ServingOutcome, sync_serving
from dynamiclora.controllers.swarm import ReadyPod
from dynamiclora.controllers.swarm_report import mark_agents
from dynamiclora.serving.adapters import Fingerprint
from dynamiclora.serving.client import ClientConfig, VLLMClient
from dynamiclora.serving.launcher import VLLMServer
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage import open_store
from dynamiclora_dev.testing.serving import (
    SERVER_API_KEY,
    AdapterFactory,
    SubprocessComposer,
    TierListing,
    two_pod_swarm,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NS, SWARM = "team", "support"
FILES = ("adapter_config.json", "adapter_model.safetensors")
AGENTS = ("alice", "bob")


async def _pass(kube: TierListing, settings: OperatorSettings, body: dict[str, Any], pods: list[ReadyPod],
                composer: SubprocessComposer) -> ServingOutcome:  # fmt: skip
    sw = Swarm.model_validate(body)
    out = await asyncio.wait_for(
        sync_serving(kube, settings, body, sw, pods, SERVER_API_KEY, composer), 300)  # type: ignore[arg-type]
    assert out.failures == {} and out.unresponsive == {}, (out.failures, out.unresponsive)
    mark_agents(kube, NS, SWARM, sw, out)  # type: ignore[arg-type]  # the placement the next pass keeps
    return out


class _Follower:
    """Asks for one model in a loop at ``url`` (changed by the test as routes change); counts answers and
    failures."""

    def __init__(self, cfg: ClientConfig, url: str, model: str) -> None:
        self.cfg, self.url, self.model = dataclasses.replace(cfg, retries=0), url, model  # a retry would hide one
        self.answered = 0
        self.failed: list[str] = []
        self._task = asyncio.create_task(self._run())
        self._stop = False

    async def _run(self) -> None:
        while not self._stop:
            url = self.url
            try:
                async with VLLMClient(url, self.cfg) as client:
                    await client.complete(self.model, "the", max_tokens=2)
                self.answered += 1
            except Exception as exc:  # a refused request is what the drain must prevent
                self.failed.append(f"{url}: {exc}")
            await asyncio.sleep(0.05)

    async def stop(self) -> tuple[int, list[str]]:
        self._stop = True
        await self._task
        return self.answered, self.failed


async def _listed(server: VLLMServer, cfg: ClientConfig) -> set[str]:
    async with VLLMClient(server.base_url, cfg) as client:
        return {n for n in await client.list_adapters() if n.startswith(f"{SWARM}-")}


async def _answers(server: VLLMServer, cfg: ClientConfig, out: ServingOutcome, agent: str) -> bool:
    entry = next(a for a in out.agents if a["name"] == agent)
    fp = Fingerprint.read(Path(f"{out.served_root}/{entry['adapterPath']}"))
    assert fp is not None
    async with VLLMClient(server.base_url, cfg) as client:
        name, n = served_adapter_name(SWARM, agent), len(fp.token_ids)
        return (await client.complete(name, fp.prompt_token_ids, max_tokens=n)).token_ids == fp.token_ids


async def test_an_agent_is_served_where_it_is_placed_and_a_move_drains_first(
    vllm_server: VLLMServer, second_pod: VLLMServer, vllm_tiny_model_dir: Path,
    vllm_adapter_factory: AdapterFactory, vllm_client_config: ClientConfig, tmp_path: Path,
) -> None:  # fmt: skip
    body = two_pod_swarm(vllm_tiny_model_dir, vllm_server.config.port, 2, maxCpuLoras=2,
                         placement={"replicasPerAgent": 1})  # fmt: skip
    sw = Swarm.model_validate(body)
    settings = OperatorSettings(pvc_mount_root=str(tmp_path / "pvc"), scratch_dir=str(tmp_path / "scratch"))
    store = open_store(store_uri(sw.spec.storage, settings))
    kube, composer = TierListing(), SubprocessComposer(settings)
    for seed, agent in enumerate(AGENTS):
        tiers = zip(stack_tier_names(SWARM, sw, agent)[:2], ("context", "agent"), strict=True)
        for offset, (tier, level) in enumerate(tiers):
            src = vllm_adapter_factory(40 + 2 * seed + offset, 8)
            ref = store.publish(NS, tier, {n: src / n for n in FILES})
            kube.tiers.append({"metadata": {"name": tier, "namespace": NS, "labels": {LABEL_SWARM: SWARM}},
                           "spec": {"level": level},
                               "status": {"currentVersion": ref.version}})  # fmt: skip
    pods = [ReadyPod(f"{SWARM}-vllm-0", "127.0.0.1", 0), ReadyPod(f"{SWARM}-vllm-1", "127.0.0.2", 0)]
    p0, p1 = vllm_server, second_pod
    names = {a: served_adapter_name(SWARM, a) for a in AGENTS}
    cfg = vllm_client_config
    # Where an earlier pass put both agents (pod 0 has room for two): they stay there.
    for tier in kube.tiers[::2]:  # each agent's context tier
        tier["status"]["serving"] = {"placedOn": [0]}
    try:
        first = await _pass(kube, settings, body, pods, composer)
        assert await _listed(p0, cfg) == set(names.values()) and await _listed(p1, cfg) == set()
        assert [(a["placedOn"], a["servedOnPods"]) for a in first.agents] == [([0], 1), ([0], 1)]
        assert {a: [p.name for p in ps] for a, ps in first.endpoints.items()} == {a: [pods[0].name] for a in AGENTS}
        assert await _answers(p0, cfg, first, "bob")

        # Pod 0 now holds one adapter: bob moves. He is loaded and verified on pod 1, his endpoint is pod 1
        # only, and pod 0 keeps him this pass (a client that followed the old endpoint still gets an answer).
        # A client keeps asking for bob at the pod his endpoints named after the last pass, as a gateway
        # following his EndpointSlice does, all through the move and the unload: no request fails.
        client = _Follower(cfg, f"http://{first.endpoints['bob'][0].ip}:{p0.config.port}", names["bob"])
        body["spec"]["inference"]["maxCpuLoras"] = 1
        moved = await _pass(kube, settings, body, pods, composer)
        client.url = f"http://{moved.endpoints['bob'][0].ip}:{p0.config.port}"
        assert moved.swapped == [f"{pods[1].name}:{names['bob']}"]
        assert [(a["name"], a["placedOn"], a["servedOnPods"]) for a in moved.agents] == [
            ("alice", [0], 1), ("bob", [1], 1)]  # fmt: skip
        assert [p.name for p in moved.endpoints["bob"]] == [pods[1].name]
        assert await _listed(p0, cfg) == set(names.values()) and await _listed(p1, cfg) == {names["bob"]}
        assert await _answers(p1, cfg, moved, "bob") and await _answers(p0, cfg, moved, "bob")

        # The next pass unloads him from pod 0.
        await _pass(kube, settings, body, pods, composer)
        assert await _listed(p0, cfg) == {names["alice"]} and await _listed(p1, cfg) == {names["bob"]}
        answered, failed = await client.stop()
        assert failed == [] and answered >= 3, (answered, failed)
    finally:
        async with VLLMClient(p0.base_url, cfg) as client:  # leave the shared server as found
            for name in await _listed(p0, cfg):
                await client.unload_adapter(name)


async def test_an_agent_whose_requests_queue_on_a_real_pod_is_seen_hot(
    vllm_server: VLLMServer, vllm_adapter_factory: AdapterFactory, vllm_client_config: ClientConfig,
) -> None:  # fmt: skip
    """The server batches at most 2 adapters (--max-loras 2): with 3 agents' long requests in flight at once,
    one agent's wait for a slot, vLLM's vllm:lora_requests_info says so, and the serving pass's reading of
    /metrics (``queued_agents``, what placement.hotReplicas acts on) names it."""
    import time

    from dynamiclora.controllers.placement import queued_agents

    names = [served_adapter_name(SWARM, a) for a in ("ann", "ben", "cal")]
    since = time.time() - 1
    async with VLLMClient(vllm_server.base_url, vllm_client_config) as client:
        try:
            for seed, name in enumerate(names):
                await client.load_adapter(name, str(vllm_adapter_factory(60 + seed, 8)))
            await asyncio.gather(*(client.complete(n, "the", max_tokens=96) for n in names for _ in range(2)))
            queued = queued_agents([await client.metrics_text()], since, SWARM)
        finally:
            for name in names:
                await client.unload_adapter(name)
    assert queued and queued <= {"ann", "ben", "cal"}, queued
    assert queued_agents([await _metrics(vllm_server, vllm_client_config)], time.time() + 60, SWARM) == set()


async def _metrics(server: VLLMServer, cfg: ClientConfig) -> str:
    async with VLLMClient(server.base_url, cfg) as client:
        return await client.metrics_text()

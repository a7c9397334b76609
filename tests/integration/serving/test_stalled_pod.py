"""A stalled vLLM pod delays only itself (issue 18: isolation and deadlines).

Real parts: two real vLLM CPU servers stand for a Swarm's two pods (the session's server on 127.0.0.1
and a second one started here on 127.0.0.2, same port as pods of one StatefulSet have), the compose
Job's command as a process, a ``file://`` store on a stand-in PVC. The stall is real: the second server's
whole process group is stopped with SIGSTOP, so its socket still accepts connections and nothing answers,
as a hung pod behaves.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from dynamiclora.api.conditions import ConditionType, Reason
from dynamiclora.api.swarm import Swarm
from dynamiclora.builders.jobs import store_uri
from dynamiclora.builders.names import LABEL_SWARM, served_adapter_name
from dynamiclora.builders.tiers import stack_tier_names
from dynamiclora.controllers.serving import ServingOutcome, sync_serving
from dynamiclora.controllers.swarm import ReadyPod
from dynamiclora.controllers.swarm_report import _degraded, mark_agents
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
from dynamiclora_dev.testing.serving import signal_group as _signal

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NS, SWARM = "team", "support"
FILES = ("adapter_config.json", "adapter_model.safetensors")
DEADLINE_S = 5.0
# Without per-pod deadlines one pass waited 4 x vllm_timeout_seconds on the stalled pod before the next.
PASS_LIMIT_S = 90.0


async def _pass(kube: TierListing, settings: OperatorSettings, body: dict[str, Any], sw: Swarm, pods: list[ReadyPod],
                composer: SubprocessComposer) -> ServingOutcome:  # fmt: skip
    out = await asyncio.wait_for(
        sync_serving(kube, settings, body, sw, pods, SERVER_API_KEY, composer), PASS_LIMIT_S)  # type: ignore[arg-type]
    mark_agents(kube, NS, SWARM, sw, out)  # type: ignore[arg-type]  # the placement the next pass keeps
    return out


async def _served(server: VLLMServer, cfg: ClientConfig, name: str, fp: Fingerprint) -> bool:
    async with VLLMClient(server.base_url, cfg) as client:
        got = await client.complete(name, fp.prompt_token_ids, max_tokens=len(fp.token_ids))
        return got.token_ids == fp.token_ids


async def test_a_stalled_pod_delays_only_itself(
    vllm_server: VLLMServer, second_pod: VLLMServer, vllm_tiny_model_dir: Path,
    vllm_adapter_factory: AdapterFactory, vllm_client_config: ClientConfig, tmp_path: Path,
) -> None:  # fmt: skip
    body = two_pod_swarm(vllm_tiny_model_dir, vllm_server.config.port, 1)
    sw = Swarm.model_validate(body)
    settings = OperatorSettings(pvc_mount_root=str(tmp_path / "pvc"), scratch_dir=str(tmp_path / "scratch"),
                                pod_deadline_seconds=DEADLINE_S)  # fmt: skip
    store = open_store(store_uri(sw.spec.storage, settings))
    kube, composer = TierListing(), SubprocessComposer(settings)
    context, agent = stack_tier_names(SWARM, sw, "alice")[:2]
    for seed, tier, level in ((31, context, "context"), (32, agent, "agent")):
        src = vllm_adapter_factory(seed, 8)
        ref = store.publish(NS, tier, {n: src / n for n in FILES})
        kube.tiers.append({"metadata": {"name": tier, "namespace": NS, "labels": {LABEL_SWARM: SWARM}},
                           "spec": {"level": level},
                           "status": {"currentVersion": ref.version}})  # fmt: skip
    pods = [ReadyPod(f"{SWARM}-inference-0", "127.0.0.1", 0), ReadyPod(f"{SWARM}-inference-1", "127.0.0.2", 1)]
    name = served_adapter_name(SWARM, "alice")
    try:
        first = await _pass(kube, settings, body, sw, pods, composer)
        assert first.unresponsive == {} and first.failures == {}
        assert first.agents[0]["servedOnPods"] == 2

        # The second pod stalls; the agent's context tier gets a new version meanwhile.
        _signal(second_pod, signal.SIGSTOP)
        src = vllm_adapter_factory(33, 8)
        kube.tiers[0]["status"]["currentVersion"] = store.publish(NS, context, {n: src / n for n in FILES}).version
        # A third pod's address has nobody listening (a pod gone between listing and reaching it).
        gone = ReadyPod(f"{SWARM}-inference-2", "127.0.0.3", 2)
        stalled = await _pass(kube, settings, body, sw, [*pods, gone], composer)
        assert sorted(stalled.unresponsive) == [pods[1].name, gone.name]
        assert "no answer within 5 s" in stalled.unresponsive[pods[1].name]
        assert stalled.unresponsive[gone.name].startswith("VLLMConnectionError")
        # The healthy pod got the new version, verified against its fingerprint, in the same pass.
        assert stalled.swapped == [f"{pods[0].name}:{name}"] and stalled.failures == {}
        assert stalled.agents[0]["servedOnPods"] == 1
        assert [p["loadedAdapters"] for p in stalled.pods] == [1, 0, 0]
        fp = Fingerprint.read(Path(f"{stalled.served_root}/{stalled.agents[0]['adapterPath']}"))
        assert fp is not None and await _served(vllm_server, vllm_client_config, name, fp)
        conditions = _degraded([], stalled, 1, events := [])
        assert (conditions[0]["type"], conditions[0]["reason"]) == (ConditionType.DEGRADED, Reason.POD_UNRESPONSIVE)
        assert pods[1].name in conditions[0]["message"] and len(events) == 1
        # The same problem on the next pass is no new event.
        assert len(_degraded(conditions, stalled, 1, again := [])) == 1 and again == []

        # The pod resumes: the next pass brings it to the new version and the Swarm is healthy again.
        _signal(second_pod, signal.SIGCONT)
        resumed = await _pass(kube, settings, body, sw, pods, composer)
        assert resumed.unresponsive == {} and resumed.failures == {}
        assert resumed.swapped == [f"{pods[1].name}:{name}"] and resumed.agents[0]["servedOnPods"] == 2
        assert await _served(second_pod, vllm_client_config, name, fp)
        healthy = _degraded(conditions, resumed, 1, [])
        assert (healthy[0]["status"], healthy[0]["reason"]) == ("False", Reason.HEALTHY)
    finally:
        async with VLLMClient(vllm_server.base_url, vllm_client_config) as client:  # leave the shared server as found
            if name in await client.list_adapters():
                await client.unload_adapter(name)

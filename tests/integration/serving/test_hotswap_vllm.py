"""Hot-swap against a real vLLM CPU server (one per session, see dynamiclora_dev.testing.serving)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dynamiclora.serving.adapters import AdapterSpec
from dynamiclora.serving.client import ClientConfig, RequestRecord, VLLMClient
from dynamiclora.serving.errors import AdapterRejected, VerificationFailed, VLLMAuthError, VLLMNotFound
from dynamiclora.serving.hotswap import HotSwapper
from dynamiclora.serving.launcher import VLLMServer
from dynamiclora.training.fingerprint import compute_fingerprint
from dynamiclora_dev.testing.serving import SERVER_CLIENT_KEY, AdapterFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _spec(name: str, path: Path, version: str) -> AdapterSpec:
    return AdapterSpec.from_dir(name, path, version)


async def test_load_serve_unload(
    vllm_server: VLLMServer, vllm_adapter_factory: AdapterFactory, vllm_client_config: ClientConfig
) -> None:
    pod = vllm_server.target()
    spec = _spec("dl-basic", vllm_adapter_factory(1, 8), "1")
    assert spec.fingerprint is not None
    async with HotSwapper(vllm_client_config) as sw:
        client = sw.client(pod)
        assert "dl-basic" not in await client.list_adapters()

        first = await sw.ensure(pod, spec)
        assert (first.action, first.verified, first.previous_path) == ("loaded", True, None)
        listed = await client.list_adapters()
        assert listed["dl-basic"].root == spec.path and listed["dl-basic"].parent == pod.base_model

        again = await sw.ensure(pod, spec)  # idempotent: already served from this path
        assert again.action == "unchanged"
        out = await client.complete("dl-basic", spec.fingerprint.prompt_token_ids, max_tokens=8)
        assert out.token_ids == spec.fingerprint.token_ids

        assert await sw.unload(pod, "dl-basic") is True
        assert "dl-basic" not in await client.list_adapters()
        assert await sw.unload(pod, "dl-basic") is False
        with pytest.raises(VLLMNotFound):
            await client.complete("dl-basic", spec.fingerprint.prompt_token_ids, max_tokens=1)


async def test_fingerprint_mismatch_rolls_back(
    vllm_server: VLLMServer, vllm_adapter_factory: AdapterFactory, vllm_client_config: ClientConfig
) -> None:
    pod = vllm_server.target()
    good = _spec("dl-rollback", vllm_adapter_factory(1, 8), "1")
    other = _spec("dl-rollback", vllm_adapter_factory(11, 8), "2")
    assert good.fingerprint is not None and other.fingerprint is not None
    # Version 2's files announced with version 1's fingerprint: what a corrupted publish would look like.
    wrong = replace(other, fingerprint=good.fingerprint)
    async with HotSwapper(vllm_client_config) as sw:
        client = sw.client(pod)
        await sw.ensure(pod, good)
        with pytest.raises(VerificationFailed) as exc:
            await sw.ensure(pod, wrong)
        assert exc.value.rolled_back
        assert (await client.list_adapters())["dl-rollback"].root == good.path
        got = await client.complete("dl-rollback", good.fingerprint.prompt_token_ids, max_tokens=8)
        assert got.token_ids == good.fingerprint.token_ids
        await sw.unload(pod, "dl-rollback")


async def test_wrong_api_key_is_an_auth_error(vllm_server: VLLMServer) -> None:
    async with VLLMClient(vllm_server.base_url, ClientConfig(api_key="wrong")) as client:
        with pytest.raises(VLLMAuthError) as exc:
            await client.list_models()
    assert exc.value.status == 401


async def test_a_client_key_runs_inference_but_cannot_change_what_is_served(
    vllm_server: VLLMServer, vllm_adapter_factory: AdapterFactory, vllm_client_config: ClientConfig
) -> None:
    """Issue 17: the guard in vLLM's own server (as every pod runs it) keeps adapter management the operator's."""
    pod = vllm_server.target()
    spec = _spec("dl-guarded", vllm_adapter_factory(4, 8), "1")
    async with HotSwapper(vllm_client_config) as operator:  # the operator's key: loads and verifies
        assert (await operator.ensure(pod, spec)).verified
    async with VLLMClient(vllm_server.base_url, ClientConfig(api_key=SERVER_CLIENT_KEY)) as client:
        assert "dl-guarded" in await client.list_adapters()
        assert (await client.complete("dl-guarded", "the", max_tokens=2)).token_ids
        for attempt in (client.unload_adapter("dl-guarded"),
                        client.load_adapter("dl-other", str(vllm_adapter_factory(5, 8))),
                        client.load_adapter("dl-guarded", str(vllm_adapter_factory(5, 8)), inplace=True)):
            with pytest.raises(VLLMAuthError) as exc:
                await attempt
            assert exc.value.status == 403
    async with VLLMClient(vllm_server.base_url, ClientConfig(api_key=None)) as anonymous:
        with pytest.raises(VLLMAuthError) as exc:
            await anonymous.unload_adapter("dl-guarded")
        assert exc.value.status == 401
    async with HotSwapper(vllm_client_config) as operator:  # untouched, and still the operator's to remove
        assert (await operator.ensure(pod, spec)).action == "unchanged"
        assert await operator.unload(pod, "dl-guarded")


async def test_a_loaded_but_never_verified_adapter_is_checked_once(
    vllm_server: VLLMServer, vllm_adapter_factory: AdapterFactory, vllm_client_config: ClientConfig
) -> None:
    """Issue 18: a swap interrupted between its load and its check (or an operator that restarted) left a
    path listed that nobody verified: the next ensure checks it before counting it as served, and
    unloads it when it does not answer as its fingerprint says."""
    pod = vllm_server.target()
    good = _spec("dl-interrupted", vllm_adapter_factory(6, 8), "1")
    async with VLLMClient(vllm_server.base_url, vllm_client_config) as raw:  # loaded, never verified
        await raw.load_adapter(good.name, good.path)
    async with HotSwapper(vllm_client_config) as sw:
        first = await sw.ensure(pod, good)
        assert (first.action, first.verified) == ("unchanged", True)
        again = await sw.ensure(pod, good)
        assert (again.action, again.verified) == ("unchanged", False)  # checked once is enough
        await sw.unload(pod, good.name)

    other = _spec("dl-wrong", vllm_adapter_factory(7, 8), "1")
    wrong = replace(good, name="dl-wrong", fingerprint=other.fingerprint)  # the path answers otherwise
    async with VLLMClient(vllm_server.base_url, vllm_client_config) as raw:
        await raw.load_adapter(wrong.name, wrong.path)
    async with HotSwapper(vllm_client_config) as sw:
        with pytest.raises(VerificationFailed) as exc:
            await sw.ensure(pod, wrong)
        assert exc.value.rolled_back and "dl-wrong" not in await sw.client(pod).list_adapters()


async def test_identity_matches_peft(
    vllm_server: VLLMServer,
    vllm_adapter_factory: AdapterFactory,
    vllm_tiny_model_dir: Path,
    vllm_client_config: ClientConfig,
) -> None:
    pod = vllm_server.target()
    specs = [_spec(f"dl-id-{s}", vllm_adapter_factory(s, 8), str(s)) for s in (11, 12)]
    fps = [s.fingerprint for s in specs]
    base_fp = compute_fingerprint(vllm_tiny_model_dir, None)
    # The probe must tell the versions apart, or it proves nothing.
    assert fps[0] is not None and fps[1] is not None
    assert len({fps[0].token_ids, fps[1].token_ids, base_fp.token_ids}) == 3
    async with HotSwapper(vllm_client_config) as sw:
        client = sw.client(pod)
        for spec in specs:
            await sw.ensure(pod, spec)
        for spec in specs:
            assert spec.fingerprint is not None
            got = await client.complete(spec.name, spec.fingerprint.prompt_token_ids, max_tokens=8)
            assert got.token_ids == spec.fingerprint.token_ids, spec.name
        base = await client.complete(pod.base_model, base_fp.prompt_token_ids, max_tokens=8)
        assert base.token_ids == base_fp.token_ids
        for spec in specs:
            await sw.unload(pod, spec.name)


@dataclass
class _Sample:
    start: float
    end: float
    tokens: tuple[int, ...] | None
    error: str | None


async def _load_loop(client: VLLMClient, name: str, prompt: tuple[int, ...], stop: asyncio.Event,
                     out: list[_Sample], max_requests: int = 400) -> None:
    for _ in range(max_requests):  # bounded even if stop is never set
        if stop.is_set():
            return
        t0 = time.perf_counter()
        try:
            got = await client.complete(name, prompt, max_tokens=8)
            out.append(_Sample(t0, time.perf_counter(), got.token_ids, None))
        except Exception as exc:  # every failure counts, whatever its type
            out.append(_Sample(t0, time.perf_counter(), None, repr(exc)))


async def _wait_for(cond: Callable[[], bool], what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_swap_under_continuous_load(
    vllm_server: VLLMServer, vllm_adapter_factory: AdapterFactory, vllm_client_config: ClientConfig
) -> None:
    pod = vllm_server.target()
    versions = [_spec("dl-swap", vllm_adapter_factory(s, 8), str(v)) for v, s in enumerate((21, 22, 23), 1)]
    expected = [v.fingerprint.token_ids for v in versions if v.fingerprint is not None]
    assert len(set(expected)) == 3
    prompt = versions[0].fingerprint.prompt_token_ids if versions[0].fingerprint else ()
    samples: list[_Sample] = []
    stop = asyncio.Event()
    # No retries on the load clients: a failed request must surface, not be papered over.
    load_cfg = ClientConfig(api_key=vllm_client_config.api_key, retries=0)
    async with HotSwapper(vllm_client_config) as sw, VLLMClient(pod.base_url, load_cfg) as load_client:
        assert (await sw.ensure(pod, versions[0])).verified
        workers = [asyncio.create_task(_load_loop(load_client, "dl-swap", prompt, stop, samples))
                   for _ in range(3)]
        windows: list[tuple[float, float]] = []
        # Phases end after enough requests, not after fixed sleeps: the CPU is shared and may be slow.
        await _wait_for(lambda: len(samples) >= 3, "requests before the first swap")
        for old, spec in itertools.pairwise(versions):
            t0 = time.perf_counter()
            res = await sw.ensure(pod, spec)
            windows.append((t0, time.perf_counter()))
            assert (res.action, res.verified, res.previous_path) == ("swapped", True, old.path)
            done = windows[-1][1]
            await _wait_for(lambda done=done: sum(x.start > done for x in samples) >= 3,  # type: ignore[misc]
                            f"requests after version {spec.version}")
        stop.set()
        await asyncio.gather(*workers)
        await sw.unload(pod, "dl-swap")

    assert len(samples) >= 9
    assert [s.error for s in samples if s.error] == []
    for s in samples:
        if s.end < windows[0][0]:
            assert s.tokens == expected[0]
        elif windows[0][1] < s.start and s.end < windows[1][0]:
            assert s.tokens == expected[1]
        elif s.start > windows[1][1]:
            assert s.tokens == expected[2]
    between = [s for s in samples if windows[0][1] < s.start and s.end < windows[1][0]]
    after_last = [s for s in samples if s.start > windows[1][1]]
    assert len(between) >= 3 and len(after_last) >= 3


async def test_restart_reapplies_desired_set_and_rejects_oversized_rank(
    vllm_server: VLLMServer, vllm_adapter_factory: AdapterFactory, vllm_client_config: ClientConfig
) -> None:
    pod = vllm_server.target()
    desired = {n: _spec(n, vllm_adapter_factory(s, 8), "1") for n, s in (("dl-r-a", 31), ("dl-r-b", 32))}
    stale = _spec("dl-r-stale", vllm_adapter_factory(33, 8), "1")
    foreign = vllm_adapter_factory(34, 8)
    async with HotSwapper(vllm_client_config) as sw:
        client = sw.client(pod)
        await sw.ensure(pod, stale)
        await client.load_adapter("someone-else", str(foreign))  # not ours: reconcile must keep it
        first = await sw.reconcile(pod, desired, managed_prefix="dl-r-")
        assert sorted(first.loaded) == ["dl-r-a", "dl-r-b"]
        assert (first.unloaded, first.failed) == (["dl-r-stale"], {})
        assert set(await client.list_adapters()) == {"dl-r-a", "dl-r-b", "someone-else"}
        steady = await sw.reconcile(pod, desired, managed_prefix="dl-r-")
        assert sorted(steady.unchanged) == ["dl-r-a", "dl-r-b"] and not steady.loaded

    await asyncio.to_thread(vllm_server.restart)

    log: list[RequestRecord] = []
    async with HotSwapper(vllm_client_config, on_request=log.append) as sw:
        client = sw.client(pod)
        assert await client.list_adapters() == {}, "vLLM kept runtime adapters across a restart?"
        again = await sw.reconcile(pod, desired, managed_prefix="dl-r-")
        assert sorted(again.loaded) == ["dl-r-a", "dl-r-b"] and again.ok
        log.clear()
        steady = await sw.reconcile(pod, desired, managed_prefix="dl-r-")
        assert sorted(steady.unchanged) == ["dl-r-a", "dl-r-b"]
        assert [r.path for r in log] == ["/v1/models"]  # one listing per pod and pass, not one per adapter
        for spec in desired.values():
            assert spec.fingerprint is not None
            got = await client.complete(spec.name, spec.fingerprint.prompt_token_ids, max_tokens=8)
            assert got.token_ids == spec.fingerprint.token_ids

        big = _spec("dl-r-big", vllm_adapter_factory(35, 32), "1")
        assert big.rank == 32 > pod.max_lora_rank
        log.clear()
        with pytest.raises(AdapterRejected, match="rank 32, above --max-lora-rank=16"):
            await sw.ensure(pod, big)
        assert log == [], f"the server was called for a rejected adapter: {log}"
        with_big = await sw.reconcile(pod, {**desired, "dl-r-big": big}, managed_prefix="dl-r-")
        assert "max-lora-rank" in with_big.failed["dl-r-big"]
        assert not [r for r in log if r.path == "/v1/load_lora_adapter"]
        for name in desired:
            await sw.unload(pod, name)

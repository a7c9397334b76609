"""Adapter specs, compatibility pre-checks and the no-call guarantee of rejections."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from dynamiclora.serving import metrics
from dynamiclora.serving.adapters import AdapterSpec, Fingerprint, PodTarget
from dynamiclora.serving.errors import AdapterRejected
from dynamiclora.serving.hotswap import HotSwapper, SwapConfig


def _adapter(tmp: Path, r: int = 8, base: str | None = "/models/tiny", **extra: object) -> Path:
    d = tmp / f"a-{r}"
    d.mkdir()
    (d / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": r, "base_model_name_or_path": base, **extra})
    )
    return d


def test_from_dir_reads_rank_base_and_fingerprint(tmp_path: Path) -> None:
    d = _adapter(tmp_path, r=8, rank_pattern={"q_proj": 32})
    Fingerprint((1, 2), (3, 4)).write(d)
    spec = AdapterSpec.from_dir("dl-agent", d, "7", served_path="/pod/adapters/v7")
    assert (spec.rank, spec.base_model, spec.path) == (32, "/models/tiny", "/pod/adapters/v7")
    assert spec.fingerprint == Fingerprint((1, 2), (3, 4))


def test_from_dir_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(AdapterRejected, match=r"adapter_config\.json: not found"):
        AdapterSpec.from_dir("dl-a", tmp_path, "1")
    (tmp_path / "adapter_config.json").write_text("{bad")
    with pytest.raises(AdapterRejected, match="invalid JSON"):
        AdapterSpec.from_dir("dl-a", tmp_path, "1")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 0}))
    with pytest.raises(AdapterRejected, match="field 'r'"):
        AdapterSpec.from_dir("dl-a", tmp_path, "1")


def test_pod_check_rank_and_base_model() -> None:
    pod = PodTarget("http://127.0.0.1:1", max_lora_rank=16, base_model="/models/tiny/",
                    base_model_aliases=("org/tiny",), name="pod-0")
    ok = AdapterSpec("dl-a", "/a/1", "1", rank=16, base_model="/models/tiny")
    pod.check(ok)
    pod.check(AdapterSpec("dl-a", "/a/1", "1", rank=8, base_model="org/tiny"))
    with pytest.raises(AdapterRejected, match=r"rank 32, above --max-lora-rank=16 of pod pod-0") as e1:
        pod.check(AdapterSpec("dl-a", "/a/1", "1", rank=32, base_model="/models/tiny"))
    assert e1.value.reason == "rank_exceeded"
    with pytest.raises(AdapterRejected, match="trained on base model 'other'") as e2:
        pod.check(AdapterSpec("dl-a", "/a/1", "1", rank=8, base_model="other"))
    assert e2.value.reason == "base_model_mismatch"
    with pytest.raises(AdapterRejected, match="max-cpu-loras=1"):
        PodTarget("http://127.0.0.1:1", 16, "/m", max_cpu_loras=1).check_capacity([ok, ok])


def _no_network(req: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected HTTP call {req.method} {req.url}")


async def test_rejection_happens_before_any_call() -> None:
    pods = [PodTarget("http://127.0.0.1:1", 16, "/m", name="p0"), PodTarget("http://127.0.0.1:2", 8, "/m")]
    spec = AdapterSpec("dl-a", "/a/2", "2", rank=16, base_model="/m")
    before = metrics.REGISTRY.get_sample_value(
        "dynamiclora_hotswap_failures_total", {"reason": "rank_exceeded"}) or 0.0
    async with HotSwapper(transport=httpx.MockTransport(_no_network)) as sw:
        # pod p0 could serve it, pod 2 cannot: the fleet swap must touch neither.
        with pytest.raises(AdapterRejected, match="max-lora-rank=8"):
            await sw.swap_all(pods, spec)
        with pytest.raises(AdapterRejected, match="no fingerprint"):
            await HotSwapper(swap_config=SwapConfig(require_fingerprint=True),
                             transport=httpx.MockTransport(_no_network)).ensure(pods[0], spec)
    after = metrics.REGISTRY.get_sample_value(
        "dynamiclora_hotswap_failures_total", {"reason": "rank_exceeded"})
    assert after == before + 1


async def test_reconcile_validates_desired_keys() -> None:
    pod = PodTarget("http://127.0.0.1:1", 16, "/m")
    spec = AdapterSpec("dl-a", "/a/1", "1", rank=8, base_model="/m")
    async with HotSwapper(transport=httpx.MockTransport(_no_network)) as sw:
        with pytest.raises(ValueError, match="keys must be served names"):
            await sw.reconcile(pod, {"dl-b": spec}, managed_prefix="dl-")
        with pytest.raises(ValueError, match="lacks the managed prefix"):
            await sw.reconcile(pod, {"dl-a": spec}, managed_prefix="other-")

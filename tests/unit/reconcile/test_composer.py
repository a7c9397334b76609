"""Serving composes nothing in the operator: stacks not composed yet go to one compose Job per Swarm.

The Job's entrypoint (``dynamiclora compose``) runs here too, in-process, on real PEFT adapters in a file
store: what it writes is what the next serving pass picks up.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from dynamiclora.api.swarm import Swarm
from dynamiclora.cli import build_parser
from dynamiclora.controllers.composer import RETRY_FAILED_AFTER_S, JobComposer
from dynamiclora.controllers.conditions import get_condition
from dynamiclora.controllers.handlers import Runtime, handle_swarm
from dynamiclora.controllers.serving import COMPOSITION_FILE, sync_serving
from dynamiclora.controllers.swarm import reconcile_swarm
from dynamiclora.memory import LowRankDelta, load_adapter, save_adapter
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage import open_store
from dynamiclora.training.compose_job import ComposeError, run_compose
from dynamiclora.training.options import ComposeConfig, StackSpec, from_namespace, to_argv

from .fakekube import FakeKube

NS = "default"
MODULE = "base_model.model.model.layers.0.self_attn.q_proj"


def _store(settings: OperatorSettings) -> str:
    return f"file://{settings.pvc_mount_root}/ckpt/dl"


def _publish_adapter(settings: OperatorSettings, tier: str, tmp: Path, seed: int) -> int:
    gen = torch.Generator().manual_seed(seed)
    delta = {MODULE: LowRankDelta(torch.randn(8, 2, generator=gen), torch.randn(2, 8, generator=gen))}
    src = save_adapter(delta, tmp / f"{tier}-{seed}")
    files = {n: src / n for n in ("adapter_config.json", "adapter_model.safetensors")}
    return open_store(_store(settings)).publish(NS, tier, files).version


def _swarm_with_versions(kube: FakeKube, settings: OperatorSettings, body: dict[str, Any], tmp: Path) -> dict[str, Any]:
    body["spec"]["agents"] = body["spec"]["agents"][:2]
    body["spec"].pop("sharedTiers", None)
    live = kube.add(body)
    reconcile_swarm(kube, settings, live)
    for i, tier in enumerate(("support-alice-context", "support-bob-context")):
        version = _publish_adapter(settings, tier, tmp, seed=i)
        kube.objects[("LoRATier", NS, tier)]["status"] = {"currentVersion": version}
    return live


def _job_config(job: dict[str, Any]) -> ComposeConfig:
    """What the compose Job's entrypoint parses from the Job's arguments."""
    return from_namespace(ComposeConfig, build_parser().parse_args(job["spec"]["template"]["spec"]["containers"][0]
                                                                   ["args"]))  # fmt: skip


def test_a_stack_is_one_json_value_that_round_trips_through_the_cli() -> None:
    spec = StackSpec("alice", "0123abcd4567", "c3.a2", (("context", "file:///s/ns/t-c/v000003"),
                                                         ("agent", "file:///s/ns/t-a/v000002")))  # fmt: skip
    assert StackSpec.from_text(spec.to_text()) == spec
    cfg = ComposeConfig(store="file:///s", namespace="ns", swarm="support", stack=[spec.to_text()], max_lora_rank=16)
    args = build_parser().parse_args(["compose", *to_argv(cfg)])
    assert from_namespace(ComposeConfig, args) == cfg and cfg.stacks() == [spec]
    with pytest.raises(ValueError, match="expected"):
        StackSpec.from_text("{not json")
    with pytest.raises(ValueError, match="hexadecimal key"):
        StackSpec.from_text(json.dumps({"agent": "a", "key": "../x", "label": "c1", "tiers": [["c", "r"]]}))
    with pytest.raises(ValueError, match="appears twice"):
        ComposeConfig(store="file:///s", namespace="ns", swarm="s", stack=[spec.to_text(), spec.to_text()])


async def test_stacks_wait_for_one_compose_job_then_are_served(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    live = _swarm_with_versions(kube, settings, swarm_body, tmp_path)
    sw = Swarm.model_validate(live)
    composer = JobComposer(kube, settings)

    first = await sync_serving(kube, settings, live, sw, [], None, composer)
    assert first.composing == ["alice", "bob"] and first.stacks == [] and first.agents == []
    (job,) = kube.list("Job", NS)
    assert first.compose is not None and first.compose.job == job["metadata"]["name"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == sw.spec.context_tier.training.image and container["args"][0] == "compose"
    cfg = _job_config(job)
    assert [s.agent for s in cfg.stacks()] == ["alice", "bob"] and cfg.store == _store(settings)

    again = await sync_serving(kube, settings, live, sw, [], None, composer)
    assert len(kube.list("Job", NS)) == 1 and again.compose == first.compose  # found, not created twice

    result = run_compose(cfg, log=lambda _m: None)  # the Job's own entrypoint, on the same store
    assert sorted(result["composed"]) == ["alice", "bob"]
    served = await sync_serving(kube, settings, live, sw, [], None, composer)
    assert served.composing == [] and [s.agent for s in served.stacks] == ["alice", "bob"]
    root = Path(settings.pvc_mount_root) / "ckpt/dl/served" / NS / "support"
    alice = root / "alice" / served.stacks[0].key
    composed, _meta = load_adapter(alice)
    open_store(_store(settings)).download(NS, "support-alice-context", 1, tmp_path / "dl")
    expected, _ = load_adapter(tmp_path / "dl")
    delta, want = composed[MODULE], expected[MODULE]
    assert torch.allclose(delta.B @ delta.A, want.B @ want.A, atol=1e-5)
    assert json.loads((alice / COMPOSITION_FILE).read_text())["label"] == "c1"
    assert run_compose(cfg, log=lambda _m: None)["skipped"] == ["alice", "bob"]  # a retried Job redoes nothing


async def test_a_failed_compose_job_is_reported_then_retried(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    live = _swarm_with_versions(kube, settings, swarm_body, tmp_path)
    await handle_swarm(Runtime(kube, settings), live)
    status = kube.objects[("Swarm", NS, "support")]["status"]
    composing = get_condition(status, "Composing")
    assert composing is not None and composing["status"] == "True" and "alice, bob" in composing["message"]

    (job,) = kube.list("Job", NS)
    name = job["metadata"]["name"]
    failed_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=RETRY_FAILED_AFTER_S + 5)
    kube.objects[("Job", NS, name)]["status"] = {"conditions": [{
        "type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too slow",
        "lastTransitionTime": failed_at.strftime("%Y-%m-%dT%H:%M:%SZ")}]}  # fmt: skip
    live = kube.objects[("Swarm", NS, "support")]
    await handle_swarm(Runtime(kube, settings), live)
    status = kube.objects[("Swarm", NS, "support")]["status"]
    composing, degraded = get_condition(status, "Composing"), get_condition(status, "Degraded")
    assert composing is not None and composing["reason"] == "CompositionFailed" and "too slow" in composing["message"]
    assert degraded is not None and degraded["status"] == "True" and degraded["reason"] == "CompositionFailed"
    assert ("Warning", "CompositionFailed") in {(e[1], e[2]) for e in kube.events}
    assert kube.list("Job", NS) == []  # old enough: deleted, so the next pass composes again
    await handle_swarm(Runtime(kube, settings), kube.objects[("Swarm", NS, "support")])
    assert [j["metadata"]["name"] for j in kube.list("Job", NS)] == [name]


async def test_one_broken_stack_does_not_hold_back_the_others(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    live = _swarm_with_versions(kube, settings, swarm_body, tmp_path)
    sw = Swarm.model_validate(live)
    await sync_serving(kube, settings, live, sw, [], None, JobComposer(kube, settings))
    (job,) = kube.list("Job", NS)
    cfg = _job_config(job)
    bob = next(s for s in cfg.stacks() if s.agent == "bob")
    broken = StackSpec("bob", bob.key, bob.label, (("context", bob.tiers[0][1].replace("v000001", "v000009")),))
    cfg.stack = [s.to_text() for s in cfg.stacks() if s.agent == "alice"] + [broken.to_text()]
    with pytest.raises(ComposeError, match=r"1 of 2 stack\(s\) not composed \(1 done\): bob: "):
        run_compose(cfg, log=lambda _m: None)  # the Job fails, naming bob, after publishing alice

    # bob's published folder is unreadable too: alice is served, bob's problem is a failure of its own.
    bob_dir = Path(settings.pvc_mount_root) / "ckpt/dl/served" / NS / "support" / "bob" / bob.key
    bob_dir.mkdir(parents=True)
    (bob_dir / COMPOSITION_FILE).write_text("{}")
    out = await sync_serving(kube, settings, live, sw, [], None, JobComposer(kube, settings))
    assert [s.agent for s in out.stacks] == ["alice"]
    assert list(out.failures) == [f"bob/{bob.key}"] and "adapter_config.json" in out.failures[f"bob/{bob.key}"]


async def test_a_corrupt_checkpoint_fails_only_its_agent(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 18: bytes of a stored version changed after publication (bit rot, a bad copy) are caught by the
    manifest's checksums when the compose Job reads them; the other agent is composed and published."""
    live = _swarm_with_versions(kube, settings, swarm_body, tmp_path)
    sw = Swarm.model_validate(live)
    await sync_serving(kube, settings, live, sw, [], None, JobComposer(kube, settings))
    (job,) = kube.list("Job", NS)
    cfg = _job_config(job)
    stored = Path(settings.pvc_mount_root) / "ckpt/dl" / NS / "support-bob-context" / "v000001"
    weights = stored / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last tensor: still a loadable file, wrong weights
    weights.write_bytes(bytes(data))
    with pytest.raises(ComposeError, match=r"1 of 2 stack\(s\) not composed \(1 done\): bob: .*checksum mismatch"):
        run_compose(cfg, log=lambda _m: None)
    served = Path(settings.pvc_mount_root) / "ckpt/dl/served" / NS / "support"
    assert [p.name for p in served.iterdir()] == ["alice"]


def _finish(kube: FakeKube, name: str, state: str, seconds_ago: float) -> None:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    kube.objects[("Job", NS, name)]["status"] = {"conditions": [{
        "type": state, "status": "True", "lastTransitionTime": when.strftime("%Y-%m-%dT%H:%M:%SZ")}]}  # fmt: skip


async def test_a_job_that_just_completed_is_looked_at_again_not_reported(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    live = _swarm_with_versions(kube, settings, swarm_body, tmp_path)
    sw = Swarm.model_validate(live)
    composer = JobComposer(kube, settings)
    await sync_serving(kube, settings, live, sw, [], None, composer)
    (job,) = kube.list("Job", NS)
    name = job["metadata"]["name"]
    # The Job wrote the adapters and completed after this pass looked for them: the pass looks again.
    cfg = _job_config(job)
    stacks = cfg.stacks()
    _finish(kube, name, "Complete", seconds_ago=1)
    assert (await composer.compose(live, sw, stacks)).done  # done, no failure: re-planned in the same pass
    run_compose(cfg, log=lambda _m: None)
    out = await sync_serving(kube, settings, live, sw, [], None, composer)
    assert out.composing == [] and out.failures == {} and [s.agent for s in out.stacks] == ["alice", "bob"]

    # Completed long ago while its adapters are still not visible here (e.g. the PVC is not mounted into
    # the operator): a failure that says so, and the Job is deleted so that the next pass composes again.
    for agent in ("alice", "bob"):
        shutil.rmtree(Path(settings.pvc_mount_root) / "ckpt/dl/served" / NS / "support" / agent)
    _finish(kube, name, "Complete", seconds_ago=RETRY_FAILED_AFTER_S + 5)
    late = await composer.compose(live, sw, stacks)
    assert not late.done and late.failure is not None and "not visible to the operator" in late.failure
    assert kube.list("Job", NS) == []

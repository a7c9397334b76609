"""The per-tier gauges carry what the tier's status and the serving pass know (no empty dashboard panel)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dynamiclora.controllers.conditions import write_status
from dynamiclora.controllers.handlers import Runtime, forget
from dynamiclora.controllers.serving import AgentStack, ServingOutcome, StackEntry
from dynamiclora.controllers.swarm import ReadyPod, reconcile_swarm
from dynamiclora.controllers.swarm_report import mark_served
from dynamiclora.controllers.tier import reconcile_tier
from dynamiclora.serving.metrics import REGISTRY
from dynamiclora.settings import OperatorSettings
from dynamiclora.storage.uri import open_store

from .fakekube import FakeKube

NS = "default"
TIER = "support-alice-context"
LABELS = {"namespace": NS, "tier": TIER, "level": "context"}


def _value(metric: str) -> float | None:
    return REGISTRY.get_sample_value(metric, LABELS)


def _series(label: str, name: str) -> list[str]:
    """Operator series still exported for one object."""
    return [s.name for fam in REGISTRY.collect() for s in fam.samples
            if s.labels.get("namespace") == NS and s.labels.get(label) == name]  # fmt: skip


def _publish(settings: OperatorSettings, tmp: Path, stats: dict[str, float] | None = None) -> None:
    files = {}
    stats = stats or {"energy": 2.5, "norm": 1.5, "screenedFraction": 0.4}
    for name, content in (("adapter_config.json", {"tier": TIER}), ("stats.json", stats)):
        files[name] = tmp / name
        files[name].write_text(json.dumps(content))
    open_store(f"file://{settings.pvc_mount_root}/ckpt/dl").publish(NS, TIER, files, {"kind": "training"})


def _records(settings: OperatorSettings, n: int) -> None:
    d = Path(settings.pvc_mount_root) / f"ckpt/dl/interactions/{NS}/support/alice"
    d.mkdir(parents=True, exist_ok=True)
    (d / "batch.jsonl").write_text("".join(json.dumps({"agent": "alice", "prompt": f"q{i}", "response": "a"}) + "\n"
                                           for i in range(n)))  # fmt: skip


def _tier_pass(kube: FakeKube, settings: OperatorSettings) -> dict[str, Any]:
    body = kube.get("LoRATier", NS, TIER)
    assert body is not None
    out = reconcile_tier(kube, settings, body)
    write_status(kube, body, out.wire())
    return out.wire()


@pytest.fixture
def tier_with_a_version(kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any],
                        tmp_path: Path) -> dict[str, Any]:  # fmt: skip
    """A tier reconciled once with a published version and an interaction rate of 10 records an hour."""
    reconcile_swarm(kube, settings, kube.add(swarm_body))
    _publish(settings, tmp_path)
    _records(settings, 10)  # below minSamples: the rate is measured, no Job is started
    an_hour_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.objects[("LoRATier", NS, TIER)]["status"] = {"rateSampleTotal": 0, "rateSampleTime": an_hour_ago}
    return _tier_pass(kube, settings)


def test_a_tier_pass_exports_energy_screened_fraction_and_time_scale(tier_with_a_version: dict[str, Any]) -> None:
    st = tier_with_a_version
    assert st["currentVersion"] == 1 and st["effectiveTimeScaleSeconds"] > 0
    assert _value("dynamiclora_tier_version") == 1
    assert _value("dynamiclora_tier_energy") == 2.5
    assert _value("dynamiclora_tier_screened_fraction") == 0.4
    assert _value("dynamiclora_tier_time_scale_seconds") == st["effectiveTimeScaleSeconds"]


def test_a_version_without_a_statistic_drops_it_from_status_and_metrics(
    kube: FakeKube, settings: OperatorSettings, tier_with_a_version: dict[str, Any], tmp_path: Path
) -> None:
    _publish(settings, tmp_path, {"energy": 3.0, "norm": 3.0**0.5})  # e.g. a consolidation: no phases
    st = _tier_pass(kube, settings)
    assert st["currentVersion"] == 2 and st["energy"] == 3.0 and "screenedFraction" not in st
    assert _value("dynamiclora_tier_energy") == 3.0
    assert _value("dynamiclora_tier_screened_fraction") is None  # not the previous version's 0.4


async def test_a_serving_pass_exports_the_served_version_and_deletion_drops_the_series(
    kube: FakeKube, settings: OperatorSettings, tier_with_a_version: dict[str, Any]
) -> None:
    rt = Runtime(kube, settings)
    body = kube.get("LoRATier", NS, TIER)
    assert body is not None
    live = {TIER: body}
    stack = AgentStack("alice", [StackEntry(TIER, "context", 1, "file:///unused", NS)])
    obs = SimpleNamespace(ready_pods=[ReadyPod("support-vllm-0", "127.0.0.1", 0)])
    outcome = ServingOutcome(stacks=[stack], tiers=live, agents=[{"name": "alice", "servedOnPods": 1, "placedOn": [0]}])
    mark_served(kube, NS, obs, outcome)  # type: ignore[arg-type]
    assert kube.objects[("LoRATier", NS, TIER)]["status"]["servedVersion"] == 1
    assert _value("dynamiclora_tier_served_version") == 1

    await forget(rt, "LoRATier", {"metadata": {"namespace": NS, "name": TIER}})
    assert _series("tier", TIER) == []
    assert _series("swarm", "support")  # set by the Swarm pass; a deleted tier leaves its swarm alone
    await forget(rt, "Swarm", {"metadata": {"namespace": NS, "name": "support"}})
    assert _series("swarm", "support") == []


def test_an_oversized_statistics_file_is_not_read(
    kube: FakeKube, settings: OperatorSettings, tier_with_a_version: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from dynamiclora.storage.store import BlobCheckpointStore

    reads: list[int] = []
    real = BlobCheckpointStore.read_file

    def spy(self: BlobCheckpointStore, ns: str, tier: str, version: int, name: str,
            max_bytes: int | None = None) -> bytes:  # fmt: skip
        data = real(self, ns, tier, version, name, max_bytes)
        reads.append(len(data))
        return data

    monkeypatch.setattr(BlobCheckpointStore, "read_file", spy)
    # Valid JSON padded past the bound (1 MiB): the tier's status drops the statistics instead of reading it.
    _publish(settings, tmp_path, {"energy": 3.0, "norm": 3.0**0.5, **{f"k{i}": 0.0 for i in range(80_000)}})
    st = _tier_pass(kube, settings)
    assert st["currentVersion"] == 2 and "energy" not in st
    assert all(n <= (1 << 20) for n in reads)

"""`dynamiclora consolidate`: migration and consensus over the checkpoint store (real memory core)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynamiclora.cli import main
from dynamiclora.memory import LowRankDelta, TierDelta, load_adapter, save_adapter
from dynamiclora.storage import open_store
from dynamiclora.storage.store import BlobCheckpointStore
from dynamiclora.training.consolidate import run_consolidation
from dynamiclora.training.options import ConsolidateConfig

pytestmark = pytest.mark.integration

MOD = "model.layers.0.self_attn.q_proj"
D = 64


def _unit(gen: torch.Generator) -> torch.Tensor:
    v = torch.randn(D, 1, generator=gen)
    return v / v.norm()


def _publish(store_uri: str, ns: str, tier: str, delta: TierDelta, tmp: Path, tag: str) -> int:
    directory = save_adapter(delta, tmp / f"{tier}-{tag}", base_model_name_or_path="tiny")
    return open_store(store_uri).publish(ns, tier, {p.name: p for p in directory.iterdir()}).version


def _latest(store_uri: str, ns: str, tier: str, tmp: Path) -> tuple[TierDelta, int]:
    store = open_store(store_uri)
    ref = store.latest(ns, tier)
    assert ref is not None
    dest = tmp / f"dl-{tier}-{ref.version}"
    store.download(ns, tier, ref.version, dest)
    return load_adapter(dest)[0], ref.version


def _dense(t: TierDelta) -> torch.Tensor:
    return t[MOD].dense() if MOD in t else torch.zeros(D, D)


def test_migration_moves_stable_component_and_recovers_from_partial_publish(tmp_path: Path) -> None:
    store_uri = f"file://{tmp_path}/store"
    gen = torch.Generator().manual_seed(0)
    u, v = _unit(gen), _unit(gen)
    for i in range(3):  # the same strong direction in every version, plus fresh noise
        noise_b, noise_a = torch.randn(D, 2, generator=gen) * 0.02, torch.randn(2, D, generator=gen) * 0.02
        delta = {MOD: LowRankDelta(torch.cat([u * 2.0, noise_b], 1), torch.cat([v.T, noise_a], 0))}
        _publish(store_uri, "ns", "ctx", delta, tmp_path, str(i))
    src_before, _ = _latest(store_uri, "ns", "ctx", tmp_path)
    cfg = ConsolidateConfig(mode="migrate", source=f"{store_uri}/ns/ctx", dest=f"{store_uri}/ns/agent",
                            max_energy_fraction=1.0)
    result = run_consolidation(cfg, log=lambda _m: None)
    assert result["changed"] is True and result["window"] == [1, 2, 3]
    assert result["report"]["migrated"] + result["report"]["bypassed"] >= 1
    assert [p["tier"] for p in result["published"]] == ["ns/agent", "ns/ctx"]
    dest, dv = _latest(store_uri, "ns", "agent", tmp_path)
    src_after, sv = _latest(store_uri, "ns", "ctx", tmp_path)
    assert (dv, sv) == (1, 4)
    # Nothing is lost or duplicated: source + destination is unchanged.
    torch.testing.assert_close(_dense(src_after) + _dense(dest), _dense(src_before), atol=1e-5, rtol=1e-4)
    # The destination holds the stable direction.
    top = torch.linalg.svd(_dense(dest))
    assert abs(float(top.U[:, 0] @ u[:, 0])) > 0.99
    stats = json.loads(open_store(store_uri).read_file("ns", "agent", 1, "stats.json"))
    assert stats["kind"] == "migration" and stats["derivedFrom"][0]["uri"].endswith("/ns/ctx/v000003")

    # A Job killed after publishing the destination but before the source: hide source v4 and retry.
    store = open_store(store_uri)
    assert isinstance(store, BlobCheckpointStore)
    store.backend.delete("ns/ctx/v000004/MANIFEST.json")
    retry = run_consolidation(cfg, log=lambda _m: None)
    assert [p["tier"] for p in retry["published"]] == ["ns/ctx"]
    assert store.list_versions("ns", "agent") == [1]
    src_retry, sv2 = _latest(store_uri, "ns", "ctx", tmp_path)
    assert sv2 == 5
    torch.testing.assert_close(_dense(src_retry), _dense(src_after))


def test_consensus_cli_builds_shared_tier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_uri = f"file://{tmp_path}/store"
    gen = torch.Generator().manual_seed(1)
    s_u, s_v = _unit(gen), _unit(gen)
    refs = []
    for i in range(3):
        own_u, own_v = _unit(gen), _unit(gen)
        delta = {MOD: LowRankDelta(torch.cat([s_u, own_u * 0.5], 1), torch.cat([s_v.T, own_v.T], 0))}
        _publish(store_uri, f"agent{i}", "agent", delta, tmp_path, str(i))
        refs += ["--agent-tier", f"{store_uri}/agent{i}/agent"]
    code = main(["consolidate", "--mode", "consensus", "--dest", f"{store_uri}/swarm/shared", *refs,
                 "--result-file", str(tmp_path / "result.json")])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["mode"] == "consensus" and len(result["published"]) == 4
    assert len(result["report"]["agentWeights"]) == 3
    shared, version = _latest(store_uri, "swarm", "shared", tmp_path)
    assert version == 1
    top = torch.linalg.svd(_dense(shared))
    assert abs(float(top.U[:, 0] @ s_u[:, 0])) > 0.95  # the agreed direction dominates the shared tier
    assert float(top.S[0]) > 2 * float(top.S[1])
    for i in range(3):
        _, av = _latest(store_uri, f"agent{i}", "agent", tmp_path)
        assert av == 2  # each agent tier got a new version with the shared part removed


def test_consolidate_bad_reference_is_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["consolidate", "--mode", "migrate", "--source", f"file://{tmp_path}/s/ns/ctx",
                 "--dest", f"file://{tmp_path}/s/ns/agent"])
    assert code == 2
    assert "the tier has no published version" in capsys.readouterr().err


def test_a_migration_never_builds_on_an_orphaned_destination(tmp_path: Path) -> None:
    """A Job that died between the destination and the residual and was not retried leaves an orphan."""
    store_uri = f"file://{tmp_path}/store"
    gen = torch.Generator().manual_seed(1)
    u, v = _unit(gen), _unit(gen)

    def version(tag: str, scale: float = 2.0) -> None:
        noise_b, noise_a = torch.randn(D, 2, generator=gen) * 0.02, torch.randn(2, D, generator=gen) * 0.02
        _publish(store_uri, "ns", "ctx", {MOD: LowRankDelta(torch.cat([u * scale, noise_b], 1),
                                                             torch.cat([v.T, noise_a], 0))}, tmp_path, tag)

    for i in range(3):
        version(str(i))
    cfg = ConsolidateConfig(mode="migrate", source=f"{store_uri}/ns/ctx", dest=f"{store_uri}/ns/agent",
                            max_energy_fraction=1.0)
    assert run_consolidation(cfg, log=lambda _m: None)["changed"]  # agent v1, residual ctx v4
    for i in range(3):
        version(f"b{i}", 3.0)  # ctx v5-v7: the pattern comes back
    second = run_consolidation(cfg, log=lambda _m: None)  # agent v2, residual ctx v8 ...
    assert [p["version"] for p in second["published"]] == [2, 8]
    store = open_store(store_uri)
    assert isinstance(store, BlobCheckpointStore)
    store.backend.delete("ns/ctx/v000008/MANIFEST.json")  # ... that the dying Job never published
    for i in range(3):
        version(f"c{i}", 4.0)  # ctx v9-v11
    third = run_consolidation(cfg, log=lambda _m: None)
    assert third["changed"] and third["published"][0]["version"] == 3
    meta = json.loads(store.read_file("ns", "agent", 3, "stats.json"))
    assert meta["destBase"] == 1  # built on the last consistent destination, not on the orphan v2

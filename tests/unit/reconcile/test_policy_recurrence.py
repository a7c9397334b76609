"""A MigrationPolicy judging stability by recurrence hands its Job what distillation needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dynamiclora.cli import build_parser
from dynamiclora.settings import OperatorSettings
from dynamiclora.training.options import ConsolidateConfig

from .fakekube import FakeKube
from .test_reconcile import NS, _policy, _policy_pass, _publish, _swarm

SOURCE = "support-alice-context"


def _args(kube: FakeKube) -> list[str]:
    (job,) = kube.list("Job", NS)
    return list(job["spec"]["template"]["spec"]["containers"][0]["args"])


def _values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_a_recurrence_migration_gets_the_source_agents_records_and_training_settings(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    ctx = swarm_body["spec"].setdefault("contextTier", {})
    ctx.update(rank=8, alpha=24.0)
    ctx.setdefault("plasticity", {})["learningRate"] = 0.002
    ctx.setdefault("training", {}).update(maxSteps=123, batchSize=6, anchorWeight=5.0)
    swarm_body["spec"]["agents"][0]["anchorSet"] = "anchors/alice.jsonl"
    _swarm(kube, settings, swarm_body)
    source = kube.objects[("LoRATier", NS, SOURCE)]
    source["status"] = {"quarantine": [{"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"}]}
    _policy(kube, stability={"window": 2, "method": "recurrence"})
    for _ in range(2):
        _publish(settings, SOURCE, tmp_path)
    _policy_pass(kube, settings)
    args = _args(kube)
    assert _values(args, "--method") == ["recurrence"]
    assert [r.rsplit("/", 2)[-2:] for r in _values(args, "--records")] == [["support", "alice"]]
    assert _values(args, "--exclude-window") == ["2026-01-01T00:00:00Z/2026-01-01T01:00:00Z"]
    assert _values(args, "--distill-steps") == ["123"] and _values(args, "--distill-batch-size") == ["6"]
    # The destination is stored at LoRA scaling 1: the source's rate times its alpha / rank.
    assert float(_values(args, "--distill-lr")[0]) == pytest.approx(0.002 * 24 / 8)
    assert _values(args, "--model-dir")
    # The answers alice's training keeps steady, the migration's destination and refit keep too.
    assert [a.rsplit("/", 2)[-2:] for a in _values(args, "--anchor-data")] == [["anchors", "alice.jsonl"]]
    assert _values(args, "--anchor-weight") == ["5.0"]
    # What the Job parses back is the typed contract, valid as built.
    ns = build_parser().parse_args(args)
    assert ns.method == "recurrence" and ns.records == _values(args, "--records")


def test_a_subspace_migration_carries_no_distillation_arguments(
    kube: FakeKube, settings: OperatorSettings, swarm_body: dict[str, Any], tmp_path: Path
) -> None:
    _swarm(kube, settings, swarm_body)
    _policy(kube)
    for _ in range(2):
        _publish(settings, SOURCE, tmp_path)
    _policy_pass(kube, settings)
    args = _args(kube)
    assert _values(args, "--method") == ["subspace"]
    assert not {"--records", "--model-dir", "--distill-steps"} & set(args)


def test_recurrence_without_records_or_model_is_refused_by_the_contract() -> None:
    with pytest.raises(ValueError, match="recurrence needs --records and --model-dir"):
        ConsolidateConfig(mode="migrate", source="file:///s/ns/a", dest="file:///s/ns/b", method="recurrence")

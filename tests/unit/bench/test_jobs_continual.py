"""The Jobs-driven continual benchmark (bench/jobs_continual.py): parity with the operator, and a quick run.

The benchmark lets the operator's reconcilers build every Job, so bench and Job cannot diverge by
construction; these tests pin that down (the argument lists it ran are exactly what
``build_training_job`` / the policy emit for the same specs, parsed by the entrypoint's own parser) and
check that a quick in-process run writes a well-formed result. No learning margins are asserted: the
benchmark's numbers are read in docs/benchmarks-jobs.md, not gated in tests.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from dynamiclora.api.policy import MigrationPolicy
from dynamiclora.api.tier import LoRATierSpec
from dynamiclora.builders.jobs import ComposeAhead, TrainingInputs, build_training_job
from dynamiclora.cli import build_parser
from dynamiclora.controllers.common import parse
from dynamiclora.controllers.policy import Budget, _migrate_args
from dynamiclora.controllers.stack_consistency import StackEntry, stack_spec
from dynamiclora.training.options import ConsolidateConfig, TrainConfig, from_namespace
from dynamiclora.training.records import parse_line
from dynamiclora_dev.tinymodel import TinyModelConfig
from jobsbench.base import PretrainConfig, pretrain_base, window_records, write_records
from jobsbench.facts import Fact, pretrain_facts
from jobsbench.harness import KINDS, SCALARS, main
from jobsbench.methods import METHODS, JobsConfig, policy_spec, swarm_spec, train_args
from jobsbench.operator_sim import NAMESPACE, POLICY, SWARM, SimOperator, job_args, local_args

pytestmark = pytest.mark.slow


def test_window_records_are_product_records() -> None:
    facts = [Fact("zorb", "blue", "transient"), Fact("quux", "red", "recurring")]
    recs = window_records(facts, 2, "alice")
    assert len(recs) == 2 * 3  # one per fact and training template
    parsed = [parse_line(json.dumps(r)) for r in recs]
    assert {p.response for p in parsed} == {"blue", "red"}
    assert all(p.timestamp.hour == 2 for p in parsed)
    assert len({p.id for p in parsed}) == len(parsed)


@pytest.mark.parametrize("method", METHODS)
def test_specs_are_valid_and_share_the_budget(method: str, tmp_path: Path) -> None:
    cfg = JobsConfig()
    op = SimOperator(tmp_path, swarm_spec(method, cfg, tmp_path / "base"), policy_spec(method), log=print)
    ctx = LoRATierSpec.model_validate(op.tier("context")["spec"])
    assert ctx.training.max_steps == cfg.steps and ctx.training.batch_size == cfg.batch
    assert ctx.plasticity.learning_rate == cfg.lr and ctx.alpha == cfg.alpha_per_rank * ctx.rank
    served_rank = ctx.rank + (cfg.agent_rank if method.startswith("dynamiclora") else 0)
    assert served_rank == cfg.ctx_rank + cfg.agent_rank  # equal capacity
    assert ctx.quality_gate.enabled
    replay = {"replay_small": (0.5, 24), "seq_lora": (0.0, 64),
              "ewc": (0.0, 64)}.get(method, (0.5, 64))  # fmt: skip  # replay_full: DynamicLoRA's budget
    assert (ctx.training.replay_fraction, ctx.training.replay_budget) == replay
    # The one difference of the ablation: no protection of the slower tier.
    assert (ctx.plasticity.plastic_rank is not None) == (method == "dynamiclora_protected")
    # EWC is seq_lora's tier with the penalty, given to its training Jobs only.
    assert train_args(method, cfg.ewc_lambda) == (["--ewc-lambda", str(cfg.ewc_lambda)] if method == "ewc" else [])


def test_the_jobs_it_runs_are_the_operators(tmp_path: Path) -> None:
    """Four windows of DynamicLoRA: the Jobs' arguments are what the operator's builders emit."""
    torch.set_num_threads(1)
    base = pretrain_base(tmp_path / "base", TinyModelConfig(), pretrain_facts(["zorb"], ["blue"]),
                         PretrainConfig(steps=1, batch=2))  # fmt: skip
    op = SimOperator(tmp_path / "op", swarm_spec("dynamiclora", JobsConfig(steps=2), base),
                     policy_spec("dynamiclora"), log=lambda _m: None)  # fmt: skip
    facts = [Fact(f"e{i}", "blue", "transient") for i in range(12)]
    runs = []
    for k in range(4):
        recs = window_records(facts if k == 0 else facts[:6], k, "alice")
        write_records(op.experience_dir(), f"window-{k:03d}", recs)
        op.new_period()
        runs.append(op.settle())
    assert [r.kind for r in runs[0]] == ["training"] and runs[1][0].kind == "training"

    # The second window's training Job, rebuilt from the LoRATier with build_training_job.
    tier = op.tier("context")
    inputs = TrainingInputs(model_path=str(base), storage=op.swarm.spec.storage,
                            experience_prefix=op.swarm.spec.experience.prefix,
                            bad_records=op.swarm.spec.experience.bad_records, new_records=18, total_records=54,
                            init_version=1, seed=2, version=2,
                            compose_ahead=ComposeAhead(SWARM, stack_spec("alice", [StackEntry(
                                tier["metadata"]["name"], "context", 2, op.store, NAMESPACE)]),
                                op.swarm.spec.inference.max_lora_rank, op.swarm.spec.base_model.name))  # fmt: skip
    job = build_training_job(tier, LoRATierSpec.model_validate(tier["spec"]), inputs, runs[1][0].name, op.settings)
    assert runs[1][0].args == local_args(job_args(job), tmp_path / "op" / "work")
    ran = from_namespace(TrainConfig, build_parser().parse_args(runs[1][0].args))
    assert ran.max_records == 18 and ran.init_from and ran.init_from.endswith("/v000001")
    assert (ran.replay_fraction, ran.replay_budget) == (0.5, 64) and ran.frozen == []
    assert ran.gate_max_regression == 0.05 and ran.gate_significance == 0.1 and ran.holdout_fraction == 0.1
    assert ran.screen_threshold is not None and ran.free_threshold is not None

    # Once the context tier has `stability.window` accepted versions, the policy launches a migration.
    mig = [r for window in runs for r in window if r.kind == "consolidation"]
    # Seeded and deterministic: four accepted windows, so the policy launched a migration to compare.
    assert mig, [(r.kind, r.result.get("gate", {}).get("reason")) for window in runs for r in window]
    pol = parse(MigrationPolicy, op.kube.objects[("MigrationPolicy", NAMESPACE, POLICY)])
    cfg = from_namespace(ConsolidateConfig, build_parser().parse_args(mig[0].args))
    b = pol.spec.bandwidth  # a fresh period (the bench starts one per window), no Job in flight
    expected = _migrate_args(pol, Budget(b.max_migrations_per_period, 0, {}, b.max_concurrent_jobs, []).grant(), 0)
    assert {k: getattr(cfg, k) for k in expected} == expected, mig[0].args
    assert cfg.mode == "migrate" and cfg.dest_rank == 16 and cfg.gate_base_model == str(base)
    assert cfg.source and cfg.source.endswith(tier["metadata"]["name"])
    assert cfg.dest.endswith(op.tier("agent")["metadata"]["name"])


def test_quick_run_writes_a_well_formed_result(tmp_path: Path) -> None:
    out = tmp_path / "continual_jobs.json"
    assert main(["--quick", "--seeds", "1", "--windows", "3", "--out", str(out)]) == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    assert set(doc["methods"]) == set(METHODS)
    assert set(doc["paired_differences"]) == {f"dynamiclora-{m}" for m in METHODS if m != "dynamiclora"}
    seed = doc["per_seed"][0]
    for name in METHODS:
        m = seed["methods"][name]
        assert len(m["R"]) == 3 and all(len(row) == 3 for row in m["R"])
        assert all(0.0 <= x <= 1.0 for row in m["R"] for x in row)
        for key in ("acc", "bwt", "forgetting"):
            assert math.isfinite(m[key])
        assert set(m["final_by_kind"]) == set(KINDS)
        assert all(math.isfinite(v) for v in m["final_by_kind"].values())
        assert m["training_jobs"] >= 3  # one per window at least (collateral retries add more)
        assert all(doc["methods"][name][k]["n"] == 1 for k in SCALARS if not k.startswith("migration_"))
        # Precision and recall of migration exist only where a slow tier exists (NaN elsewhere, not scored).
        tiered = name.startswith("dynamiclora")
        assert math.isfinite(m["migration_recall"]) == tiered and 0 <= (m["migration_recall"] if tiered else 0) <= 1
    assert seed["methods"]["seq_lora"]["migrated_components"] == 0
    assert "dynamiclora train" in doc["meta"]["driven"] and doc["markdown"].startswith("Reproduce:")


def test_the_bases_learning_rate_warms_up_then_decays_to_its_floor() -> None:
    cos = PretrainConfig(steps=1000, warmup=100, lr=1e-2, min_lr_fraction=0.1)
    rates = [cos.lr_at(s) for s in range(1000)]
    assert rates[0] == pytest.approx(1e-4) and rates[99] == pytest.approx(1e-2)
    assert all(a >= b for a, b in itertools.pairwise(rates[99:]))  # never rises after the warm-up
    assert rates[-1] == pytest.approx(1e-3, rel=1e-3)  # the floor
    assert PretrainConfig(steps=50, warmup=200).lr_at(0) == pytest.approx(3e-3 / 5)  # warm-up <= a tenth
    assert {PretrainConfig(schedule="constant").lr_at(s) for s in (0, 10, 4999)} == {3e-3}
    with pytest.raises(ValueError, match="cosine or constant"):
        PretrainConfig(schedule="linear")

"""The compared methods: the same operator and Jobs, configured by a different Swarm spec.

* ``dynamiclora``: the product as designed: a context tier (rank ``ctx_rank``) trained per window with
  the default consolidation replay (``replayFraction`` 0.5, ``replayBudget`` 64), an agent tier (rank
  ``agent_rank``) that the answers taught in two training rounds migrate into (a MigrationPolicy
  context -> agent with ``stability.method: recurrence``, 64 questions per period), the context tier
  trained with the agent tier loaded frozen.
* ``dynamiclora_subspace``: the same with the component detector (``subspace``, the policy's defaults):
  stable SVD components of the context tier move to the agent tier.
* ``dynamiclora_protected``: the same with the opt-in protection of the agent tier's inputs
  (``plasticity.plasticRank`` 2): the ablation that shows what protection does.
* ``replay_full``: one tier of rank ``ctx_rank + agent_rank`` (equal capacity), consolidation replay from every
  stored record with DynamicLoRA's budget and fraction (the product defaults: the same stored questions
  rehearsed per Job), no migration.
* ``replay_small``: the same tier with a small replay budget (``SMALL_BUFFER`` stored records per Job, the
  classic small-buffer replay baseline), no migration.
* ``seq_lora``: one tier of rank ``ctx_rank + agent_rank``, no replay, no migration.
* ``ewc``: ``seq_lora`` with elastic weight consolidation (``dynamiclora train --ewc-lambda``, training/ewc.py):
  each Job pulls the tier towards the version it starts from by the Fisher information of the stored
  records, strength ``EWC_LAMBDA`` (tuned on the held-out seeds 101-103; see docs/continual.md).

Everything else is shared: steps, batch, learning rate, alpha/rank, target modules, the quality gate
(the product default, on for every method unless ``gate=False``), seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamiclora.api.tier import DEFAULT_TARGET_MODULES
from dynamiclora.builders.jobs import storage_path
from dynamiclora.storage import open_store
from dynamiclora.training.model import load_base
from jobsbench.base import (
    AdapterDir,
    accuracy,
    migrated_facts,
    regression_records,
    served_stack,
    window_records,
    write_records,
)
from jobsbench.facts import Fact, TaskSequence
from jobsbench.metrics import average_accuracy, backward_transfer, forgetting
from jobsbench.operator_sim import AGENT, NAMESPACE, JobRun, Log, Obj, SimOperator

METHODS: tuple[str, ...] = ("dynamiclora", "dynamiclora_subspace", "dynamiclora_protected", "replay_full",
                             "replay_small", "seq_lora", "ewc")
# Peers not in the default run: ``replay_full_2x`` is ``replay_full`` with twice the steps per Job, about the
# compute DynamicLoRA spends (its migrations train twice); compared in bench/results/continual_jobs_compute.json.
EXTRA_METHODS: tuple[str, ...] = ("replay_full_2x",)
SMALL_BUFFER = 24  # stored records rehearsed per Job by ``replay_small``
EWC_LAMBDA = 1000.0  # ``ewc``'s strength
REGRESSION_SET = "regression/base-facts.jsonl"  # the agent's regressionSet, relative to the storage root
ANCHOR_SET = "anchors/base-facts.jsonl"  # the agent's anchorSet
PROBE_FACTS = 32  # the last pretraining facts: the base's knowledge no set holds (the ``base_kept`` metric)


def train_args(method: str, ewc_lambda: float = EWC_LAMBDA) -> list[str]:
    """Options of ``method``'s training Jobs beyond what the operator gives them from the spec."""
    return ["--ewc-lambda", str(ewc_lambda)] if method == "ewc" else []


@dataclass(frozen=True)
class JobsConfig:
    """What every method shares (written into the Swarm spec, hence into every Job's arguments)."""

    steps: int = field(default=300, metadata={"help": "training.maxSteps: optimizer steps per training Job"})
    batch: int = field(default=8, metadata={"help": "training.batchSize"})
    lr: float = field(default=3e-3, metadata={"help": "plasticity.learningRate"})
    ctx_rank: int = field(default=8, metadata={"help": "context tier rank (the Swarm default)"})
    agent_rank: int = field(default=16, metadata={"help": "agent tier rank (the Swarm default)"})
    alpha_per_rank: float = field(default=2.0, metadata={"help": "alpha = this x rank for every tier"})
    targets: tuple[str, ...] = field(default=tuple(DEFAULT_TARGET_MODULES), metadata={"help": "targetModules"})
    gate: bool = field(default=True, metadata={"help": "qualityGate.enabled for every tier"})
    ewc_lambda: float = field(default=EWC_LAMBDA, metadata={"help": "the ewc method's --ewc-lambda"})
    anchor_facts: int = field(default=0, metadata={
        "help": "the agent's anchorSet: this many of the base's pretraining facts after the regression set's, "
                "each in every template (0: no anchor set)"})
    anchor_weight: float = field(default=1.0, metadata={"help": "training.anchorWeight (with anchor_facts)"})
    regression_facts: int = field(default=0, metadata={
        "help": "the agent's regressionSet: this many of the base's pretraining facts, each in every template "
                "(0: no regression set)"})

    def __post_init__(self) -> None:
        if min(self.steps, self.batch, self.ctx_rank, self.agent_rank) < 1 or self.lr <= 0 or self.ewc_lambda < 0 \
                or min(self.regression_facts, self.anchor_facts) < 0:
            raise ValueError("JobsConfig: steps, batch and ranks must be >= 1, lr > 0, ewc_lambda, "
                             "regression_facts and anchor_facts >= 0")


def swarm_spec(method: str, cfg: JobsConfig, base_dir: Path) -> Obj:
    """The Swarm spec of ``method`` (one agent); the operator derives both LoRATiers from it."""
    if method not in (*METHODS, *EXTRA_METHODS):
        raise ValueError(f"unknown method {method!r}; known: {[*METHODS, *EXTRA_METHODS]}")
    tiered = method.startswith("dynamiclora")
    rank = cfg.ctx_rank if tiered else cfg.ctx_rank + cfg.agent_rank
    training: Obj = {"maxSteps": cfg.steps, "batchSize": cfg.batch, "minSamples": 1}
    if method in ("seq_lora", "ewc"):
        training["replayFraction"] = 0.0
    elif method == "replay_full_2x":
        training["maxSteps"] = 2 * cfg.steps
    elif method == "replay_small":
        training.update(replayFraction=0.5, replayBudget=SMALL_BUFFER)
    gate = {"enabled": cfg.gate}
    plasticity: Obj = {"learningRate": cfg.lr}
    if method == "dynamiclora_protected":
        plasticity["plasticRank"] = 2
    if cfg.anchor_facts:
        training["anchorWeight"] = cfg.anchor_weight
    context = {"rank": rank, "alpha": cfg.alpha_per_rank * rank, "targetModules": list(cfg.targets),
               "plasticity": plasticity, "training": training, "qualityGate": gate}
    agent: Obj = {"name": AGENT}
    if cfg.regression_facts:
        agent["regressionSet"] = REGRESSION_SET
    if cfg.anchor_facts:
        agent["anchorSet"] = ANCHOR_SET
    return {"baseModel": {"name": "tiny-bench", "path": str(base_dir)}, "agents": [agent],
            "storage": {"pvc": {"claimName": "bench-store"}}, "contextTier": context,
            "agentTier": {"rank": cfg.agent_rank, "qualityGate": gate}}  # fmt: skip


def policy_spec(method: str) -> Obj | None:
    """The MigrationPolicy of ``method``: context -> agent with the product defaults, for DynamicLoRA only."""
    if not method.startswith("dynamiclora"):
        return None
    if method == "dynamiclora_subspace":  # components move: the product default detector and bandwidth
        return {"pairs": [{"source": "context", "target": "agent"}]}
    # A recurring group is 6 facts in 3 templates: the budget counts questions, not components.
    return {"pairs": [{"source": "context", "target": "agent"}], "stability": {"method": "recurrence"},
            "bandwidth": {"maxMigrationsPerPeriod": 64}}


def job_summary(run: JobRun) -> dict[str, Any]:
    """What one Job did, for the result file."""
    r = run.result
    gate = r.get("gate") or {}
    doc: dict[str, Any] = {"job": run.name, "kind": run.kind, "accepted": gate.get("accepted"),
                           "cause": gate.get("cause"), "verdict": gate.get("reason")}
    if run.kind == "training":
        doc.update(version=r.get("version"), records=r.get("records"), replayed=r.get("replayed"),
                   finalLoss=r.get("finalLoss"), steps=r.get("steps", 0))
    else:
        report = r.get("report") or {}
        doc.update(changed=r.get("changed"), migrated=report.get("migrated"), bypassed=report.get("bypassed"),
                   steps=report.get("steps", 0))
    return doc


def served(op: SimOperator, base_dir: Path, dest: Path,
           levels: tuple[str, ...] = ("context", "agent")) -> tuple[Any, Any]:  # fmt: skip
    """The stack the operator serves now (each tier's ``currentVersion``, fastest first), or some tiers of it."""
    store = open_store(op.store)
    tiers: list[AdapterDir] = []
    for level in levels:
        version = op.current_version(level)
        if version is None:
            continue
        directory = dest / level
        store.download(NAMESPACE, op.tier(level)["metadata"]["name"], version, directory)
        acfg = json.loads((directory / "adapter_config.json").read_text())
        tiers.append(AdapterDir(directory, int(acfg["r"]), float(acfg["lora_alpha"]), list(acfg["target_modules"])))
    return served_stack(base_dir, tiers)


def _mean(xs: list[float]) -> float:
    ys = [x for x in xs if not math.isnan(x)]
    return sum(ys) / len(ys) if ys else math.nan


def run_method(method: str, seq: TaskSequence, base_dir: Path, cfg: JobsConfig, root: Path, log: Log,
               pretrained: Sequence[Fact] = ()) -> dict[str, Any]:  # fmt: skip
    """Feed the windows to the operator one by one; after each, score the served stack on every window.

    ``pretrained``: the base's pretraining facts, the first ``cfg.regression_facts`` of which form the
    agent's regression set.
    """
    op = SimOperator(root / "operator", swarm_spec(method, cfg, base_dir), policy_spec(method), log,
                     train_args=train_args(method, cfg.ewc_lambda))  # fmt: skip
    if cfg.regression_facts:
        if len(pretrained) < cfg.regression_facts + PROBE_FACTS:
            raise ValueError(f"regression_facts {cfg.regression_facts}: only {len(pretrained)} pretraining facts")
        where = Path(storage_path(op.swarm.spec.storage, REGRESSION_SET, op.settings))
        write_records(where.parent, where.stem, regression_records(pretrained[:cfg.regression_facts], AGENT))
    if cfg.anchor_facts:
        lo = cfg.regression_facts
        if len(pretrained) < lo + cfg.anchor_facts + PROBE_FACTS:
            raise ValueError(f"anchor_facts {cfg.anchor_facts}: only {len(pretrained) - lo - PROBE_FACTS} "
                             "pretraining facts left")
        where = Path(storage_path(op.swarm.spec.storage, ANCHOR_SET, op.settings))
        write_records(where.parent, where.stem, regression_records(pretrained[lo:lo + cfg.anchor_facts], AGENT))
    R: list[list[float]] = []
    flip_new: list[float] = []
    jobs: list[dict[str, Any]] = []
    model: Any = None
    tokenizer: Any = None
    for k, w in enumerate(seq.windows):
        write_records(op.experience_dir(), f"window-{k:03d}", window_records(w.train, k, AGENT))
        op.new_period()
        ran = op.settle()
        jobs += [{"window": k, **job_summary(r)} for r in ran]
        model, tokenizer = served(op, base_dir, root / f"served-{k}")
        R.append([accuracy(model, tokenizer, t.test) for t in seq.windows])
        flip_new.append(accuracy(model, tokenizer, w.flipped))
        marks = [j["kind"][0] + ("+" if j["accepted"] else "-") for j in jobs if j["window"] == k]
        log(f"  {method} window {k}: jobs {marks} row {[round(x, 2) for x in R[-1]]}")
    migration = _migration(op, seq, base_dir, root) if method.startswith("dynamiclora") else {}
    # What the updates did to the base's own knowledge: facts no record, regression or anchor set holds.
    probe = list(pretrained[-PROBE_FACTS:])
    base_kept = accuracy(model, tokenizer, probe) if probe else math.nan
    latest = {f.entity: f for w in seq.windows for f in w.test}
    by_kind: dict[str, list[Any]] = {}
    for f in latest.values():
        by_kind.setdefault(f.kind, []).append(f)
    final_by_kind = {kind: accuracy(model, tokenizer, facts) for kind, facts in sorted(by_kind.items())}
    # A flipped fact still answered with its superseded answer (stale memory), at the end.
    stale = [old for w in seq.windows for old in w.train if old.kind == "flip"]
    training = [j for j in jobs if j["kind"] == "training"]
    return {
        "acc": average_accuracy(R), "bwt": backward_transfer(R), "forgetting": forgetting(R), "R": R,
        "final_by_kind": final_by_kind,
        "base_kept": base_kept,
        "flip_new_when_taught": _mean(flip_new),
        "flip_stale_final": accuracy(model, tokenizer, stale),
        "training_jobs": len(training),
        "rejected_training_jobs": sum(1 for j in training if j["accepted"] is False),
        "migrated_components": sum(int(j.get("migrated") or 0) for j in jobs if j["kind"] == "consolidation"),
        # Compute spent: every optimizer step of every Job (rejected ones too), the consolidations' included.
        "optimizer_steps": sum(int(j.get("steps") or 0) for j in jobs),
        "served_versions": {lvl: op.current_version(lvl) for lvl in ("context", "agent")},
        "migration_precision": migration.get("precision", math.nan),
        "migration_recall": migration.get("recall", math.nan),
        "migration_precision_gain_only": migration.get("precision_gain_only", math.nan),
        "migration_recall_gain_only": migration.get("recall_gain_only", math.nan),
        "jobs": jobs,
    }


def _migration(op: SimOperator, seq: TaskSequence, base_dir: Path, root: Path) -> dict[str, float]:
    """Precision and recall of what the slow (agent) tier alone holds at the end, chance-corrected.

    Should migrate: the recurring facts. Should not: every transient or flipping fact. A fact is held when
    the agent tier alone answers it and beats the bare base by 1 nat, each on 3 of the 4 templates
    (``*_gain_only``: the 1-nat gain alone, see :func:`migrated_facts`).
    """
    if op.current_version("agent") is None:
        return {"precision": math.nan, "recall": 0.0, "precision_gain_only": math.nan, "recall_gain_only": 0.0}
    slow, tokenizer = served(op, base_dir, root / "slow-alone", levels=("agent",))
    base, _ = load_base(str(base_dir))
    facts = [*seq.should_migrate, *seq.should_not_migrate]
    moved = migrated_facts(slow, base, tokenizer, facts)
    should = len(seq.should_migrate)
    out: dict[str, float] = {}
    for suffix, flags in (("", moved.known), ("_gain_only", moved.gained)):
        hits, total = sum(flags[:should]), sum(flags)
        out["precision" + suffix] = hits / total if total else math.nan
        out["recall" + suffix] = hits / should if should else math.nan
    return out

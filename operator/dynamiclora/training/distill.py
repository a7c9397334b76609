"""Migration by recurrence: the slower tier learns the answers its source tier was taught repeatedly.

The consolidation Job (``dynamiclora consolidate --method recurrence``) reads the source agent's records,
splits them into the source tier's training rounds (the record time span each accepted training version
recorded) and judges which answers are stable (:mod:`dynamiclora.memory.recurrence`). The destination
learns exactly those, plus what it held, with the tiers served beneath it frozen and the agent's other
questions as anchors (:mod:`dynamiclora.training.anchored`); then the source re-learns its newest questions
on top of the grown destination, through the training entrypoint itself
(:func:`~dynamiclora.training.trainer.run_training`, into a scratch store), so that the stack answers as it
did. Both go through the consolidation gate and are published like any migration (destination, then source).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from dynamiclora.memory import TierDelta, load_adapter
from dynamiclora.memory.recurrence import (
    DistillPlan,
    Observation,
    RecurrenceConfig,
    plan,
    rounds_of,
    stable_answers,
)
from dynamiclora.storage import CheckpointStore, TierRef, open_store
from dynamiclora.training.anchored import TierTraining
from dynamiclora.training.data import drop_windows, parse_windows, select_records
from dynamiclora.training.gate import split_holdout
from dynamiclora.training.model import read_adapter_config
from dynamiclora.training.options import ConsolidateConfig, TrainConfig
from dynamiclora.training.records import SourcedRecord, iter_sources, read_records, record_answer, record_key
from dynamiclora.training.replay import newest_per_key

DISTILLED_FILE = "distilled.json"
"""In a destination version: digest of each question it was taught -> digest of the answer."""

Log = Callable[[str], None]

# Used when the Job is run by hand without them (the operator passes the source tier's settings).
DEFAULT_STEPS, DEFAULT_LR, DEFAULT_BATCH, DEFAULT_HOLDOUT = 200, 1e-3, 8, 0.1
# Questions the source re-learns after a distillation (the newest): bounds the Job's work like a replay budget.
REFIT_QUESTIONS = 512
# Anchor questions of a distillation, the newest (their answer distributions are held in memory for the run).
ANCHORS = 512

# Versions of the source scanned back for its training rounds: migrations interleave with trainings.
_SCAN_FACTOR = 3


def training_spans(store: CheckpointStore, ref: TierRef, versions: Sequence[int],
                   window: int) -> list[tuple[float, float]]:  # fmt: skip
    """Record time spans (POSIX seconds) of the source's newest ``window`` accepted training versions,
    oldest first."""
    spans: list[tuple[float, float]] = []
    for v in reversed(versions[-window * _SCAN_FACTOR - 8 :]):
        md = store.get(ref.namespace, ref.tier, v).manifest.metadata
        span = md.get("window")
        if md.get("kind") == "training" and isinstance(span, dict) and span.get("from") and span.get("to"):
            spans.append((_ts(str(span["from"])), _ts(str(span["to"]))))
            if len(spans) == window:
                break
    return spans[::-1]


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def taught_records(cfg: ConsolidateConfig) -> tuple[list[SourcedRecord], dict[str, str]]:
    """``(records that may be trained on, newest answer per question)``: quarantined ones dropped, the
    held-out share (the source tier's gate judges by it) never trained on but still the newest truth."""
    good: list[SourcedRecord] = []
    for src in cfg.records:
        good += read_records(iter_sources(src), "skip")[0]
    records = select_records(good)
    if cfg.exclude_window:
        records = drop_windows(records, parse_windows(cfg.exclude_window))
    newest = {record_key(r.record): record_answer(r.record) for r in records}
    holdout = DEFAULT_HOLDOUT if cfg.holdout_fraction is None else cfg.holdout_fraction
    return split_holdout(records, holdout)[0], newest


def decide(cfg: ConsolidateConfig, records: list[SourcedRecord], newest: dict[str, str],
           spans: list[tuple[float, float]], distilled: dict[str, str]) -> tuple[DistillPlan, int]:  # fmt: skip
    """The plan and how many answers are stable now."""
    rounds = rounds_of([r.record.timestamp.timestamp() for r in records], spans)
    obs = [Observation(record_key(r.record), record_answer(r.record), k)
           for r, k in zip(records, rounds, strict=True) if k is not None]  # fmt: skip
    rc = RecurrenceConfig(window=cfg.window or len(spans) or 1, min_rounds=cfg.min_consecutive,
                          consistency=cfg.threshold)
    stable = stable_answers(obs, len(spans), rc)
    return plan(stable, newest, distilled, cfg.max_migrations), len(stable)


def distill_set(records: list[SourcedRecord], targets: dict[str, str]) -> list[SourcedRecord]:
    """The newest record teaching each target answer (one per question)."""
    chosen: dict[str, SourcedRecord] = {}
    for r in records:
        key = record_key(r.record)
        if targets.get(key) == record_answer(r.record):
            chosen[key] = r
    return sorted(chosen.values(), key=lambda r: r.record.timestamp)


def train_tier(cfg: ConsolidateConfig, tier: TierTraining, examples: list[SourcedRecord], frozen: list[str],
               tmp: Path, log: Log) -> tuple[TierDelta, str]:  # fmt: skip
    """Train ``tier`` on ``examples`` through the training entrypoint (``frozen`` tiers active beneath it) into
    a scratch store; its delta and its scratch reference. The rate is given at LoRA scaling 1 and divided by
    the tier's scaling, so that the delta moves at the same pace whatever alpha the version is stored at."""
    from dynamiclora.training.trainer import run_training  # torch: only when a distillation runs

    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "records.jsonl"
    data.write_text("".join(r.record.model_dump_json(exclude_none=True) + "\n" for r in examples))
    alpha = float(read_adapter_config(tier.init).get("lora_alpha", tier.rank)) if tier.init else float(tier.rank)
    scratch = f"file://{tmp / 'scratch'}"
    steps = cfg.distill_steps or DEFAULT_STEPS
    assert cfg.model_dir is not None  # checked by ConsolidateConfig
    tc = TrainConfig(base_model=cfg.model_dir, data=str(data), output_store=scratch, tier=tier.tier,
                     namespace=tier.namespace, frozen=frozen, init_from=tier.init_ref, rank=tier.rank,
                     alpha=alpha, target_modules=tier.targets, lr=(cfg.distill_lr or DEFAULT_LR) * tier.rank / alpha,
                     steps=steps, batch_size=cfg.distill_batch_size or DEFAULT_BATCH, checkpoint_every=0,
                     holdout_fraction=0.0, threads=cfg.threads, log_every=max(steps // 4, 1),
                     anchor_data=cfg.anchor_data, anchor_weight=cfg.anchor_weight)  # fmt: skip
    result = run_training(tc, lambda m: log(f"{tier.tier}: {m}"))
    out = tmp / "out"
    open_store(scratch).download(tier.namespace, tier.tier, int(result["version"]), out)
    return load_adapter(out)[0], str(result["uri"])


def stash(adapter: Path, tier: TierTraining, tmp: Path) -> str:
    """Publish an adapter directory into a scratch store; its reference (for a later step's --frozen)."""
    files = {p.name: p for p in adapter.iterdir() if p.is_file()}
    return open_store(f"file://{tmp / 'stash'}").publish(tier.namespace, tier.tier, files).uri


def anchor_set(records: list[SourcedRecord], targets: dict[str, str], limit: int = ANCHORS) -> list[SourcedRecord]:
    """Other questions the agent was asked (the newest answer of each, the newest ``limit``): where the
    destination's answers must not move."""
    return [r for r in newest_per_key(records) if record_key(r.record) not in targets][-limit:]


def steady_records(cfg: ConsolidateConfig) -> list[SourcedRecord]:
    """The ``--anchor-data`` records, one per question (none without it): more questions whose answers must
    not move."""
    if not cfg.anchor_data or not cfg.anchor_weight:
        return []
    return newest_per_key(select_records(read_records(iter_sources(cfg.anchor_data))[0]))


def refit_set(records: list[SourcedRecord], limit: int = REFIT_QUESTIONS) -> list[SourcedRecord]:
    """What the source re-learns on top of the grown destination: the newest answer of its newest questions."""
    return newest_per_key(records)[-limit:]


def read_distilled(directory: Path | None) -> dict[str, str]:
    """What a destination version was taught (empty for none, or one written by another method)."""
    path = directory / DISTILLED_FILE if directory else None
    if path is None or not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def write_distilled(directory: Path, distilled: dict[str, str]) -> None:
    (directory / DISTILLED_FILE).write_text(json.dumps(distilled, indent=1, sort_keys=True))

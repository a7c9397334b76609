"""What a training run rehearses and protects besides its new records.

* Consolidation replay: stored older records mixed into the batch, chosen by surprise under the stack
  the run starts from.
* Protection of the slower tiers' inputs (:mod:`dynamiclora.training.protection`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynamiclora.training.data import Example, tokenize
from dynamiclora.training.gate import score
from dynamiclora.training.model import target_parameters
from dynamiclora.training.options import TrainConfig
from dynamiclora.training.protection import Protection, protection
from dynamiclora.training.records import InteractionRecord, SourcedRecord
from dynamiclora.training.replay import NO_REPLAY, ReplayPlan, choose, cycle, replay_candidates, replay_plan

Log = Callable[[str], None]
# Candidates scored per budgeted question: enough to choose by surprise, bounded for the scoring pass.
REPLAY_POOL_FACTOR = 4


def keyed(records: list[SourcedRecord], tokenizer: Any, max_seq_len: int) -> tuple[list[Example],
                                                                                     list[InteractionRecord]]:
    """Tokenize keeping each example's record (records without a learnable token are dropped)."""
    pairs = [(ex, r.record) for r in records for ex in tokenize([r], tokenizer, max_seq_len)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


Replay = tuple[list[Example], ReplayPlan, dict[str, int]]


def replay_examples(cfg: TrainConfig, model: Any, history: list[SourcedRecord], batch_records: list[SourcedRecord],
                    batch: int, tokenizer: Any, log: Log) -> Replay:  # fmt: skip
    """The stored examples to rehearse, chosen by surprise under the stack the run starts from, and the plan
    (how often the ``batch`` new examples appear beside them)."""
    limit = REPLAY_POOL_FACTOR * cfg.replay_budget if cfg.replay_fraction > 0 else 0
    pool = replay_candidates(history, batch_records, limit)
    examples, _ = keyed(pool, tokenizer, cfg.max_seq_len)
    plan = replay_plan(batch, cfg.replay_fraction, cfg.replay_budget, len(examples))
    if not plan.examples:
        return [], NO_REPLAY, {"replayed": 0, "replayCandidates": len(pool)}
    pad = int(tokenizer.pad_token_id)
    losses = [s.loss for s in score(model, examples, cfg.batch_size, pad)]
    picked = choose(losses, plan.questions)
    chosen = [examples[i] for i in cycle(picked, plan.examples)]
    log(f"replay: {len(picked)} of {len(pool)} stored question(s) rehearsed ({len(chosen)} examples) "
        f"besides {batch} new x{plan.new_repeats}")
    return chosen, plan, {"replayed": len(chosen), "replayedQuestions": len(picked), "replayCandidates": len(pool),
                          "newRepeats": plan.new_repeats}


def protect_slower_tiers(cfg: TrainConfig, peft_model: Any, frozen: list[tuple[str, Path]],
                         log: Log) -> Protection | None:  # fmt: skip
    """Protect what the frozen slower tiers answer (see :mod:`dynamiclora.training.protection`)."""
    if cfg.plastic_rank is None:
        return None
    protect = protection([d for _, d in frozen], target_parameters(peft_model), cfg.rank, cfg.plastic_rank)
    if protect is not None:
        protect.apply(target_parameters(peft_model))
        info = protect.summary()
        log(f"protection: {info['protectedDirections']} input direction(s) of the slower tiers in {info['modules']} "
            f"module(s); {info['constrainedRows']} of {cfg.rank} rows constrained")
    return protect

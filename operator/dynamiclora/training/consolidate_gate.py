"""The quality gate of consolidation Jobs: compare each affected stack before and after, exactly.

A stack is evaluated by adding the dense sum of its tiers' deltas (PEFT scaling already folded in by
:func:`dynamiclora.memory.load_adapter`) to the base model's weights, which is the served output
``base(x) + Σ ΔW x`` without any rank truncation. The base weights are restored before each stack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dynamiclora.memory import TierDelta
from dynamiclora.training.data import Example, select_records, tokenize
from dynamiclora.training.gate import ExampleScore, compare, decide, score
from dynamiclora.training.model import TierMismatchError, linear_modules, load_base
from dynamiclora.training.options import ConsolidateConfig
from dynamiclora.training.records import RecordsError, SourcedRecord, iter_sources, read_records
from dynamiclora.training.replay import newest_per_key

EVAL_BATCH = 8
RECORDS = "records"
REGRESSION = "regression"
MAX_SEQ_LEN = 256

# Tier reference text -> its newest (or pinned) version as a delta, read through the run's store access.
LoadLatest = Callable[[str], TierDelta]


def judged_records(records: Sequence[SourcedRecord], limit: int) -> list[SourcedRecord]:
    """The newest ``limit`` questions of the gate data, each with its newest answer (chronological).

    An answer a newer record changed is no truth to judge a consolidation by: a stack that learned the
    correction cannot also give the old answer.
    """
    return newest_per_key(select_records(records))[-limit:]


def _read(sources: Sequence[str]) -> list[SourcedRecord]:
    good: list[SourcedRecord] = []
    for src in sources:
        good += read_records(iter_sources(src))[0]
    return good


class StackEvaluator:
    """Per-example scores of tier stacks on fixed examples, on one loaded base model.

    Two sets: the newest questions of the records (:func:`judged_records`) and the regression set, judged
    apart so that its records, however old, are never crowded out by newer ones.
    """

    def __init__(self, base_model: str, sources: Sequence[str], records: int,
                 regression: Sequence[str] = ()) -> None:  # fmt: skip
        self.model, tokenizer = load_base(base_model)
        self.pad = int(tokenizer.pad_token_id)
        self.sets: dict[str, list[Example]] = {
            RECORDS: tokenize(judged_records(_read(sources), records), tokenizer, MAX_SEQ_LEN),
            REGRESSION: tokenize(judged_records(_read(regression), records), tokenizer, MAX_SEQ_LEN)}
        for name, given, flag in ((RECORDS, sources, "--gate-data"), (REGRESSION, regression, "--gate-regression")):
            if given and not self.sets[name]:
                raise RecordsError(f"{flag} {' '.join(given)}: no record with a learnable token")
        self._linears = linear_modules(self.model)
        self._originals: dict[str, Any] = {}

    def scores(self, stack: Sequence[Mapping[str, Any]], which: str = RECORDS) -> list[ExampleScore]:
        """Scores of ``base + Σ stack`` (tiers given as module -> LowRankDelta) on the set ``which``."""
        import torch

        with torch.no_grad():
            for name, weight in self._originals.items():
                self._linears[name].weight.copy_(weight)
            for tier in stack:
                for module, delta in tier.items():
                    lin = self._linears.get(module)
                    if lin is None:
                        raise TierMismatchError(f"quality gate: module {module} is not in the base model")
                    if tuple(delta.shape) != tuple(lin.weight.shape):
                        raise TierMismatchError(
                            f"quality gate: {module} delta has shape {list(delta.shape)} but the base "
                            f"model's weight is {list(lin.weight.shape)} (adapter of another base model?)")
                    if module not in self._originals:
                        self._originals[module] = lin.weight.detach().clone()
                    lin.weight.add_(delta.dense().to(lin.weight.dtype))
        return score(self.model, self.sets[which], EVAL_BATCH, self.pad)


def judge(cfg: ConsolidateConfig, load_latest: LoadLatest,
          stacks: Mapping[str, tuple[Sequence[TierDelta], Sequence[TierDelta]]]) -> dict[str, Any] | None:
    """Gate verdict (``GateVerdict.to_dict``) over named ``(baseline, candidate)`` stacks, or None if disabled.

    Args:
        cfg: the run's options (``gate_*``).
        load_latest: loads a tier reference's newest (or pinned) version as a delta.
        stacks: name -> (baseline tiers, candidate tiers), without the ``--gate-frozen`` tiers.
    """
    if not cfg.gate_base_model:
        return None
    frozen = [load_latest(ref) for ref in cfg.gate_frozen]
    ev = StackEvaluator(cfg.gate_base_model, cfg.gate_data, cfg.gate_records, cfg.gate_regression)
    sets = {}
    for name, (before, after) in stacks.items():
        for which in (RECORDS, REGRESSION):
            if ev.sets[which]:
                key = name if which == RECORDS else f"{name} {REGRESSION}"
                sets[key] = compare(ev.scores([*frozen, *before], which), ev.scores([*frozen, *after], which))
    return decide(sets, cfg.gate_max_regression, cfg.gate_significance).to_dict()

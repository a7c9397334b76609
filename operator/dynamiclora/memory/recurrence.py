"""Stability judged by recurrence of what a tier was taught: which answers migrate to a slower tier.

A component of a fast tier's delta carries every fact trained into it, recurring or not, so moving
components moves transient content with the stable one. This detector judges the records instead: a
question whose newest answer was taught in at least ``min_rounds`` of the source tier's last ``window``
training rounds (its accepted versions), and makes up at least ``consistency`` of what the window taught
for that question, is a stable pattern; the slower tier then learns exactly those answers (distillation,
run by the consolidation Job). What the slower tier holds is remembered per question (``distilled``), so a
pattern keeps its place after it stops recurring, and a later contradiction (a newer answer) rewrites it.

Pure Python over opaque keys: the Job maps records to keys and rounds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


def digest(text: str) -> str:
    """A short stable digest of a question or answer (what a slower tier's version records)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Observation:
    """One taught answer: question ``key`` answered ``answer`` in training round ``round`` (0 = oldest)."""

    key: str
    answer: str
    round: int


@dataclass(frozen=True)
class RecurrenceConfig:
    """When a question's answer is a stable pattern."""

    window: int = field(default=4, metadata={"help": "newest training rounds of the source tier judged"})
    min_rounds: int = field(default=2, metadata={"help": "rounds of the window that taught the newest answer"})
    consistency: float = field(default=0.8, metadata={
        "help": "share of the window's rounds teaching the question that taught its newest answer, in (0, 1]"})

    def __post_init__(self) -> None:
        if self.window < 1 or self.min_rounds < 1:
            raise ValueError(f"recurrence: window and min_rounds must be >= 1, got {self.window}, {self.min_rounds}")
        if not 0 < self.consistency <= 1:
            raise ValueError(f"recurrence: consistency must be in (0, 1], got {self.consistency}")


def stable_answers(observations: Iterable[Observation], rounds: int, cfg: RecurrenceConfig) -> dict[str, str]:
    """Question -> answer for the stable patterns among ``observations`` (chronological), judged on the newest
    ``cfg.window`` of ``rounds`` rounds. The newest answer of a question is the one judged; an older answer
    never is, so a changed answer is stable only once the new one recurs."""
    first = max(rounds - cfg.window, 0)
    newest: dict[str, str] = {}
    taught: dict[str, dict[str, set[int]]] = {}
    for o in observations:
        newest[o.key] = o.answer
        if o.round >= first:
            taught.setdefault(o.key, {}).setdefault(o.answer, set()).add(o.round)
    out: dict[str, str] = {}
    for key, answers in taught.items():
        mine = answers.get(newest[key], set())
        every = set().union(*answers.values())
        if len(mine) >= cfg.min_rounds and len(mine) >= cfg.consistency * len(every):
            out[key] = newest[key]
    return out


@dataclass(frozen=True)
class DistillPlan:
    """What the slower tier learns in one consolidation.

    Attributes:
        targets: question -> answer the slower tier is trained on (what it keeps plus what moves in).
        moved: questions that move in this run (newly stable), oldest stable first.
        rewritten: questions the slower tier held with an answer that has since changed (contradictions).
        throttled: newly stable questions left for a later run by the bandwidth limit.
    """

    targets: dict[str, str]
    moved: list[str]
    rewritten: list[str]
    throttled: list[str]

    @property
    def changes(self) -> int:
        """Questions whose answer in the slower tier changes (0: nothing to do)."""
        return len(self.moved) + len(self.rewritten)


def plan(stable: Mapping[str, str], newest: Mapping[str, str], distilled: Mapping[str, str],
         budget: int) -> DistillPlan:  # fmt: skip
    """The slower tier's next content.

    Args:
        stable: question -> answer judged stable now (:func:`stable_answers`), in order of first sight.
        newest: question -> its newest answer in the record store (the truth for contradictions).
        distilled: :func:`digest` of question -> :func:`digest` of answer the slower tier holds.
        budget: newly stable questions moved at most (the policy's bandwidth); rewrites always proceed,
            since a slower tier holding a superseded answer is a stale memory, not a new pattern.
    """
    targets: dict[str, str] = {}
    rewritten: list[str] = []
    by_digest = {digest(k): k for k in newest}
    for kd, ad in distilled.items():
        key = by_digest.get(kd)
        if key is None:
            continue  # its records are gone (retention) or quarantined: the slower tier keeps what it has
        targets[key] = newest[key]
        if digest(newest[key]) != ad:
            rewritten.append(key)
    fresh = [k for k in stable if k not in targets]
    moved, throttled = fresh[: max(budget, 0)], fresh[max(budget, 0):]
    targets.update({k: stable[k] for k in moved})
    return DistillPlan(targets, moved, rewritten, throttled)


def record_of(targets: Mapping[str, str]) -> dict[str, str]:
    """What a slower tier's version records of its content: digests only (no record text leaves the store)."""
    return {digest(k): digest(a) for k, a in sorted(targets.items())}


def rounds_of(times: Sequence[float], spans: Sequence[tuple[float, float]]) -> list[int | None]:
    """Round of each time: the first (oldest) span containing it, or None when no accepted round taught it."""
    out: list[int | None] = []
    for t in times:
        out.append(next((i for i, (lo, hi) in enumerate(spans) if lo <= t <= hi), None))
    return out

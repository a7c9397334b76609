"""Consolidation replay: which stored records a training Job rehearses besides the new ones.

The record store keeps every interaction, so a tier that trains on a new batch can also rehearse what
it learned before (complementary learning systems: fast learning of the new, slow replayed
consolidation of the old). Training only on the new batch overwrites the directions old facts used;
the quality gate then, rightly, refuses the update and the agent stops learning.

How much: as much of the store as the budget covers, at the fraction's share of the mix
(:func:`replay_plan`). Rehearsal once scaled with the new batch (``new x f/(1-f)`` examples): a small
round then rehearsed a small part of a growing store, and the rest was overwritten (a 32-record round
with 116 stored questions forgot 46 of 55 held-out facts and the gate refused it, round after round).

What is rehearsed: for each question (:func:`~dynamiclora.training.records.record_key`) only its newest
answer, never one the new batch answers again (a changed answer replaces the old one), never a
quarantined or held-out record (the caller filters those). Which: the most surprising under the
current stack (highest loss: what is being forgotten) for half the budget, the rest spread evenly over
the others, newest first, so well-known records are rehearsed too: they are exactly what a new batch
can overwrite, and surprise alone would never pick them.

Pure Python; the trainer scores the candidates with the stack it starts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dynamiclora.training.records import SourcedRecord, record_key


def newest_per_key(records: Sequence[SourcedRecord]) -> list[SourcedRecord]:
    """One record per key, the newest; ``records`` are chronological and the result keeps their order."""
    last = {record_key(r.record): i for i, r in enumerate(records)}
    return [r for i, r in enumerate(records) if last[record_key(r.record)] == i]


def replay_candidates(history: Sequence[SourcedRecord], batch: Sequence[SourcedRecord],
                      limit: int) -> list[SourcedRecord]:  # fmt: skip
    """The newest ``limit`` stored records still worth rehearsing, chronological.

    Args:
        history: records older than the batch (chronological, already filtered).
        batch: the new records being trained on: their keys are answered anew.
        limit: how many candidates at most (the newest): bounds the scoring cost of a Job.
    """
    if limit <= 0:
        return []
    fresh = {record_key(r.record) for r in batch}
    kept = [r for r in newest_per_key(history) if record_key(r.record) not in fresh]
    return kept[-limit:]


@dataclass(frozen=True)
class ReplayPlan:
    """How a training mix rehearses: ``questions`` stored questions make up ``examples`` replayed examples
    (cycled when the share asks for more than the store holds), beside each new example ``new_repeats`` times."""

    questions: int
    examples: int
    new_repeats: int


NO_REPLAY = ReplayPlan(0, 0, 1)


def replay_plan(new: int, fraction: float, budget: int, available: int) -> ReplayPlan:
    """Rehearse ``min(budget, available)`` stored questions, the replay making up ``fraction`` of the mix.

    Coverage decides what is kept (each stored question left out can be overwritten), the share decides
    how strongly the new is learned, so the two are set apart: when the covered questions outnumber what
    the share asks for, the new examples are repeated to keep their share; when the store holds fewer, its
    questions are rehearsed repeatedly (:func:`cycle`), as a batch that repeats each new question many times
    would otherwise drown a few old ones. The optimizer steps are the Job's either way.

    Args:
        new: new examples in the mix.
        fraction: share of the mix that is replay, in [0, 1).
        budget: stored questions rehearsed at most.
        available: stored questions that may be rehearsed.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"replay fraction must be in [0, 1), got {fraction}")
    if fraction == 0 or budget <= 0 or available <= 0 or new <= 0:
        return NO_REPLAY
    ratio = fraction / (1 - fraction)  # replayed examples per new one
    questions = min(budget, available)
    examples = max(questions, min(round(new * ratio), budget))
    return ReplayPlan(questions, examples, max(1, round(examples / (new * ratio))))


def cycle(indices: Sequence[int], count: int) -> list[int]:
    """``indices`` repeated in order until there are ``count`` of them."""
    return [indices[i % len(indices)] for i in range(count)] if indices else []


def choose(losses: Sequence[float], count: int) -> list[int]:
    """Indices (into chronological candidates) to rehearse: half by surprise, half spread evenly.

    Deterministic: ties in loss go to the newer record; the even spread walks the rest newest first.
    """
    n = len(losses)
    count = max(0, min(count, n))
    if count == 0:
        return []
    by_surprise = sorted(range(n), key=lambda i: (-losses[i], -i))
    picked = by_surprise[: (count + 1) // 2]
    rest = sorted(set(range(n)) - set(picked), reverse=True)
    need = count - len(picked)
    if need:
        stride = len(rest) / need
        picked += [rest[int(k * stride)] for k in range(need)]
    return sorted(picked)

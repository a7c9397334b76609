"""The quality gate: a new tier version is served only if it is not worse than the served one.

Training and consolidation Jobs evaluate the stack before (``baseline``: what is served) and after
(``candidate``) on the same examples with the same code (:func:`evaluate`) and call :func:`decide`.
The held-out slice is chosen per record by a hash of its identity, so a record is held out in every
run and no version is ever trained on it (:func:`split_holdout`).

The decision, the split and the verdict are pure Python (no torch import at module level), so they
are unit-tested without a model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dynamiclora.training.records import InteractionRecord, SourcedRecord, record_answer, record_key

GATE_FILE = "gate.json"
# One forgotten example is never evidence enough: an answer whose top two tokens are nearly tied flips
# with the CPU's float arithmetic, and the same update must get the same verdict on every machine.
MIN_FORGOTTEN = 2
HELD_OUT = "heldOut"
REGRESSION = "regression"


def record_identity(record: InteractionRecord) -> str:
    """A stable identity: the agent and ``id`` when the record has one, else its canonical JSON.

    An ``id`` keeps a record's split fixed even if a later copy of it is edited (e.g. feedback added).
    """
    if record.id:
        return f"id\0{record.agent}\0{record.id}"
    doc = record.model_dump(mode="json")
    return "json\0" + json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hash_fraction(identity: str) -> float:
    """A uniform number in [0, 1) derived from sha256 of ``identity``."""
    digest = hashlib.sha256(identity.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_held_out(record: InteractionRecord, fraction: float) -> bool:
    """Whether the record belongs to the held-out slice (never trained on) at ``fraction``."""
    return fraction > 0 and hash_fraction(record_identity(record)) < fraction


# An honest batch re-answers a few of the questions it repeats (the world changed); shuffled labels or a
# poisoning agent re-answer most of them. Above this share no changed answer is taken as a revision.
REVISION_SHARE = 0.5


def revisions(window: Sequence[InteractionRecord], earlier: Sequence[InteractionRecord]) -> dict[str, str]:
    """Question -> new answer for each question the window honestly re-answers.

    A held-out record is the gate's truth until a newer record answers its question otherwise: judging
    the update by the superseded answer would call an honest correction forgetting (and quarantine it as
    a contradiction). But a batch that changes more than :data:`REVISION_SHARE` of the answers it repeats
    revises nothing: it is judged against every older answer, as shuffled labels must be. The
    regression set is never revised (the user's fixed truths).

    Args:
        window: the run's new records (chronological).
        earlier: every record before the window (chronological; the newest answer per question counts).
    """
    before = {record_key(r): record_answer(r) for r in earlier}
    now = {record_key(r): record_answer(r) for r in window}
    repeated = [k for k in now if k in before]
    changed = {k: now[k] for k in repeated if now[k] != before[k]}
    return changed if len(changed) <= REVISION_SHARE * len(repeated) else {}


def superseded(record: InteractionRecord, revised: Mapping[str, str]) -> bool:
    """Whether a newer answer in ``revised`` (:func:`revisions`) replaces the record's answer."""
    return revised.get(record_key(record), record_answer(record)) != record_answer(record)


def split_holdout(records: Sequence[SourcedRecord], fraction: float) -> tuple[list[SourcedRecord],
                                                                               list[SourcedRecord]]:
    """``(training, held_out)`` keeping the input order in both."""
    train: list[SourcedRecord] = []
    held: list[SourcedRecord] = []
    for r in records:
        (held if is_held_out(r.record, fraction) else train).append(r)
    return train, held


@dataclass(frozen=True)
class ExampleScore:
    """How one stack does on one example: mean loss of its learned tokens, and whether it knows it.

    ``correct`` means every learned token is the stack's most likely next token given the true prefix,
    i.e. greedy decoding reproduces the whole answer.
    """

    loss: float
    tokens: int
    correct: bool


@dataclass(frozen=True)
class SetFigures:
    """One evaluation set judged before (``baseline``) and after (``candidate``), paired per example.

    ``known`` examples are those the baseline answers correctly; ``forgotten`` of them the candidate no
    longer does; ``learned`` is how many examples the baseline did not know and the candidate does.
    The losses are token-weighted means, kept for information.
    """

    records: int
    baseline: float
    candidate: float
    known: int = 0
    forgotten: int = 0
    learned: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form (rounded for status and manifests)."""
        return {"records": self.records, "baseline": finite(self.baseline), "candidate": finite(self.candidate),
                "known": self.known, "forgotten": self.forgotten, "learned": self.learned}


def finite(value: float, digits: int = 6) -> float | None:
    """``value`` rounded, or ``None`` when it is NaN or infinite (JSON, manifests and status refuse those)."""
    return round(value, digits) if math.isfinite(value) else None


def compare(before: Sequence[ExampleScore], after: Sequence[ExampleScore]) -> SetFigures:
    """Pair the baseline's and the candidate's scores on the same examples."""
    if len(before) != len(after):
        raise ValueError(f"paired scores differ in length: {len(before)} vs {len(after)}")
    return SetFigures(
        records=len(before), baseline=_mean_loss(before), candidate=_mean_loss(after),
        known=sum(b.correct for b in before),
        forgotten=sum(b.correct and not a.correct for b, a in zip(before, after, strict=True)),
        learned=sum(a.correct and not b.correct for b, a in zip(before, after, strict=True)),
    )  # fmt: skip


def _mean_loss(scores: Sequence[ExampleScore]) -> float:
    tokens = sum(s.tokens for s in scores)
    return sum(s.loss * s.tokens for s in scores) / max(tokens, 1)


def binomial_tail(k: int, n: int, p: float) -> float:
    """``P[X >= k]`` for ``X ~ Binomial(n, p)`` (exact)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


@dataclass(frozen=True)
class GateVerdict:
    """The decision and the figures it is based on."""

    accepted: bool
    reason: str
    sets: dict[str, SetFigures]
    max_regression: float | None
    significance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"accepted", "reason", "maxRegression", "significance", <set name>: figures}``."""
        doc: dict[str, Any] = {"accepted": self.accepted, "reason": self.reason,
                               "maxRegression": self.max_regression, "significance": self.significance}
        for name, figures in self.sets.items():
            doc[name] = figures.to_dict()
        return doc


def forget_p_value(f: SetFigures, max_regression: float) -> float:
    """How likely this much forgetting is if the update forgets at the allowed rate.

    One-sided binomial test of ``forgotten`` against ``max_regression`` over everything the candidate
    is judged on that matters: what was known, plus what it newly answers (learning counts in its favour).
    """
    return binomial_tail(f.forgotten, f.known + f.learned, max_regression)


def _fmt(name: str, f: SetFigures) -> str:
    return (f"{name}: forgot {f.forgotten} of {f.known} known, learned {f.learned} of {f.records - f.known} "
            f"new (loss {f.baseline:.4f} -> {f.candidate:.4f} on {f.records} record(s))")


def decide(sets: Mapping[str, SetFigures], max_regression: float | None, significance: float = 0.1) -> GateVerdict:
    """Reject iff some set shows significant forgetting of what the served stack knew.

    Args:
        sets: evaluation set name -> paired figures (sets with no record are ignored).
        max_regression: the allowed rate of forgetting known examples (``>= 0``); ``None`` disables the
            gate (always accepted, figures kept for information).
        significance: the test's level: forgetting is significant when its p-value under the allowed
            rate (:func:`forget_p_value`) is below this and at least :data:`MIN_FORGOTTEN` examples were
            forgotten. Examples the stack never knew cannot block an update, whatever their loss does.

    Returns:
        The verdict; its reason says, per set, how many known examples were forgotten.
    """
    if max_regression is not None and not 0 <= max_regression <= 1:
        raise ValueError(f"max_regression must be in [0, 1], got {max_regression}")
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance}")
    used = {n: f for n, f in sets.items() if f.records > 0}
    diverged = [n for n, f in used.items() if not math.isfinite(f.candidate)]
    if diverged:  # NaN weights answer nothing; even a disabled gate must not promote them
        return GateVerdict(False, f"rejected: the candidate's loss is not finite on {', '.join(diverged)} "
                           "(training diverged; lower the learning rate)", used, max_regression, significance)
    if max_regression is None:
        return GateVerdict(True, "gate disabled", used, None, None)
    if not used:
        return GateVerdict(True, "no held-out or regression record to evaluate", used, max_regression, significance)
    failing = [n for n, f in used.items()
               if f.forgotten >= MIN_FORGOTTEN and forget_p_value(f, max_regression) < significance]
    parts = "; ".join(_fmt(n, f) for n, f in used.items())
    rule = f"(allowed forgetting {max_regression:g}, significance {significance:g})"
    if failing:
        return GateVerdict(False, f"rejected {rule}: forgot known examples of {', '.join(failing)}; {parts}",
                           used, max_regression, significance)
    return GateVerdict(True, f"accepted {rule}: {parts}", used, max_regression, significance)


CONTRADICTION = "contradiction"
COLLATERAL = "collateral"


@dataclass(frozen=True)
class Judged:
    """One gate example with what it asks and answers, scored before and after the update."""

    record: InteractionRecord
    before: ExampleScore
    after: ExampleScore


def rejection_cause(batch: Sequence[InteractionRecord], judged: Sequence[Judged]) -> tuple[str, int]:
    """Why an update forgot: its own records contradict what is known, or it overwrote it collaterally.

    A batch record contradicts when the served stack knows an answer to the same question and the record
    gives another (shuffled labels, a poisoning agent). The cause is ``contradiction`` when such records
    exist and explain at least half of the forgotten examples; then the batch itself is the problem and is
    quarantined. Otherwise it is ``collateral`` forgetting: honest records, trained without enough
    protection, that stay eligible for a later, replayed update.

    Returns:
        ``(cause, contradicting batch records)``.
    """
    known = {record_key(j.record): record_answer(j.record) for j in judged if j.before.correct}
    forgotten = {record_key(j.record) for j in judged if j.before.correct and not j.after.correct}
    contradicting = [r for r in batch if known.get(record_key(r), record_answer(r)) != record_answer(r)]
    contradicted = {record_key(r) for r in contradicting}
    if contradicting and 2 * len(forgotten & contradicted) >= len(forgotten):
        return CONTRADICTION, len(contradicting)
    return COLLATERAL, len(contradicting)


def evaluate(model: Any, examples: Sequence[Any], batch_size: int, pad_id: int) -> float:
    """Token-weighted mean loss of ``model`` on tokenized examples (no gradients, eval mode)."""
    import torch

    from dynamiclora.training.data import collate

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i:i + batch_size], pad_id)
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    return total / max(count, 1)


def score(model: Any, examples: Sequence[Any], batch_size: int, pad_id: int) -> list[ExampleScore]:
    """Per-example loss and correctness of ``model`` on tokenized examples (no gradients, eval mode)."""
    import torch

    from dynamiclora.training.data import IGNORE, collate

    model.eval()
    out: list[ExampleScore] = []
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i:i + batch_size], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            mask = labels != IGNORE
            safe = labels.clamp(min=0)
            nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), safe, reduction="none")
            hits = (logits.argmax(-1) == safe) | ~mask
            for row in range(labels.shape[0]):
                n = int(mask[row].sum())
                loss = float((nll[row] * mask[row]).sum()) / max(n, 1)
                out.append(ExampleScore(loss=loss, tokens=n, correct=bool(hits[row].all()) and n > 0))
    return out


def score_sets(model: Any, sets: Mapping[str, Sequence[Any]], batch_size: int,
               pad_id: int) -> dict[str, list[ExampleScore]]:  # fmt: skip
    """:func:`score` on each non-empty set."""
    return {name: score(model, ex, batch_size, pad_id) for name, ex in sets.items() if ex}


def figures(baseline: Mapping[str, Sequence[ExampleScore]],
            candidate: Mapping[str, Sequence[ExampleScore]]) -> dict[str, SetFigures]:  # fmt: skip
    """Pair the baseline's and the candidate's scores of each evaluated set."""
    return {n: compare(baseline[n], candidate[n]) for n in baseline}

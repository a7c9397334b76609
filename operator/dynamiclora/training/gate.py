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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dynamiclora.training.records import InteractionRecord, SourcedRecord

GATE_FILE = "gate.json"
HELD_OUT = "heldOut"
REGRESSION = "regression"
# Loss figures are float32 sums: equal stacks can differ in the last bits.
_TOLERANCE = 1e-6


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


def split_holdout(records: Sequence[SourcedRecord], fraction: float) -> tuple[list[SourcedRecord],
                                                                               list[SourcedRecord]]:
    """``(training, held_out)`` keeping the input order in both."""
    train: list[SourcedRecord] = []
    held: list[SourcedRecord] = []
    for r in records:
        (held if is_held_out(r.record, fraction) else train).append(r)
    return train, held


@dataclass(frozen=True)
class SetFigures:
    """Mean loss of the baseline and the candidate stack on one evaluation set."""

    records: int
    baseline: float
    candidate: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (rounded for status and manifests)."""
        return {"records": self.records, "baseline": round(self.baseline, 6), "candidate": round(self.candidate, 6)}


@dataclass(frozen=True)
class GateVerdict:
    """The decision and the figures it is based on."""

    accepted: bool
    reason: str
    sets: dict[str, SetFigures]
    max_regression: float | None

    def to_dict(self) -> dict[str, Any]:
        """``{"accepted", "reason", "maxRegression", <set name>: {"records", "baseline", "candidate"}}``."""
        doc: dict[str, Any] = {"accepted": self.accepted, "reason": self.reason,
                               "maxRegression": self.max_regression}
        for name, figures in self.sets.items():
            doc[name] = figures.to_dict()
        return doc


def _fmt(name: str, f: SetFigures, limit: float | None) -> str:
    base = f"{name} loss {f.candidate:.4f} vs baseline {f.baseline:.4f} on {f.records} record(s)"
    return base if limit is None else f"{base} (limit {limit:.4f})"


def decide(sets: Mapping[str, SetFigures], max_regression: float | None, tolerance: float = 0.0) -> GateVerdict:
    """Accept iff on every set with records ``candidate <= baseline * (1 + max_regression) + tolerance``.

    Args:
        sets: evaluation set name -> figures (sets with no record are ignored).
        max_regression: allowed relative loss increase (``>= 0``); ``None`` disables the gate
            (always accepted, figures kept for information).
        tolerance: allowed absolute loss increase (nats, ``>= 0``): once a stack knows its facts, losses
            are near zero and a relative threshold alone would reject updates for noise.

    Returns:
        The verdict; its reason names every failing set with its figures.
    """
    if max_regression is not None and max_regression < 0:
        raise ValueError(f"max_regression must be >= 0, got {max_regression}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    used = {n: f for n, f in sets.items() if f.records > 0}
    if max_regression is None:
        return GateVerdict(True, "gate disabled", used, None)
    if not used:
        return GateVerdict(True, "no held-out or regression record to evaluate", used, max_regression)
    failing: list[str] = []
    passing: list[str] = []
    for name, f in used.items():
        limit = f.baseline * (1 + max_regression) + tolerance + _TOLERANCE
        (passing if f.candidate <= limit else failing).append(_fmt(name, f, limit))
    if failing:
        return GateVerdict(False, f"rejected (max regression {max_regression:g}): " + "; ".join(failing),
                           used, max_regression)
    return GateVerdict(True, f"accepted (max regression {max_regression:g}): " + "; ".join(passing),
                       used, max_regression)


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


def evaluate_sets(model: Any, sets: Mapping[str, Sequence[Any]], batch_size: int, pad_id: int) -> dict[str, float]:
    """:func:`evaluate` on each non-empty set."""
    return {name: evaluate(model, ex, batch_size, pad_id) for name, ex in sets.items() if ex}


def figures(sets: Mapping[str, Sequence[Any]], baseline: Mapping[str, float],
            candidate: Mapping[str, float]) -> dict[str, SetFigures]:
    """Pair the baseline and candidate losses of each evaluated set."""
    return {n: SetFigures(len(sets[n]), baseline[n], candidate[n]) for n in baseline}

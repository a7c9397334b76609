"""From interaction records to token batches.

A record becomes segments of text, each either learned (the response, assistant turns) or context
only (the prompt, user/system/tool turns, role labels): the loss covers learned tokens only.
Data order is a seeded permutation per epoch, so the position in the data is fully described by the
global step, which is what a resumed run needs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import torch

from dynamiclora.training.records import InteractionRecord, RecordsError, SourcedRecord

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One tokenized record."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        """Tokens that contribute to the loss."""
        return sum(1 for t in self.labels if t != IGNORE)


def select_records(
    records: Sequence[SourcedRecord],
    agent: str | None = None,
    since: str | None = None,
    min_reward: float | None = None,
    max_records: int | None = None,
) -> list[SourcedRecord]:
    """Filter records and keep the newest ``max_records``, in chronological order."""
    since_t: datetime | None = None
    if since:
        try:
            since_t = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise RecordsError(f"--since {since!r} is not an RFC 3339 time") from None
        if since_t.tzinfo is None:
            raise RecordsError(f"--since {since!r} needs a UTC offset, e.g. 2025-01-02T03:04:05Z")
    out = [
        r for r in records
        if (agent is None or r.record.agent == agent)
        and (since_t is None or r.record.timestamp > since_t)
        and (min_reward is None or r.record.reward is None or r.record.reward >= min_reward)
    ]
    out.sort(key=lambda r: r.record.timestamp)  # stable: ties keep file/line order
    return out[-max_records:] if max_records else out


def segments(record: InteractionRecord) -> list[tuple[str, bool]]:
    """``(text, learned)`` pieces of a record."""
    if record.messages is None:
        return [(record.prompt or "", False), (record.response or "", True)]
    out: list[tuple[str, bool]] = []
    for m in record.messages:
        if m.role == "assistant":
            out += [("assistant :", False), (m.content, True)]
        else:
            out.append((f"{m.role} : {m.content}", False))
    return out


def tokenize(records: Sequence[SourcedRecord], tokenizer: Any, max_seq_len: int) -> list[Example]:
    """Tokenize records; a record left with no learned token after truncation is dropped."""
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    examples: list[Example] = []
    for sr in records:
        ids: list[int] = [bos] if bos is not None else []
        labels: list[int] = [IGNORE] * len(ids)
        for i, (text, learned) in enumerate(segments(sr.record)):
            piece = tokenizer(text if i == 0 else " " + text, add_special_tokens=False)["input_ids"]
            if learned and eos is not None:
                piece = [*piece, eos]
            ids += piece
            labels += piece if learned else [IGNORE] * len(piece)
        ex = Example(ids[:max_seq_len], labels[:max_seq_len])
        if ex.trained_tokens:
            examples.append(ex)
    return examples


def fingerprint(examples: Sequence[Example]) -> str:
    """sha256 of the token ids and labels: identifies the training data of a run."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(repr((ex.input_ids, ex.labels)).encode())
    return h.hexdigest()


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one pass (the last batch may be smaller)."""
    return math.ceil(n / batch_size)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Record indices of global step ``step`` (0-based): a seeded permutation per epoch."""
    spe = steps_per_epoch(n, batch_size)
    epoch, pos = divmod(step, spe)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    return perm[pos * batch_size:(pos + 1) * batch_size]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def parse_windows(windows: Sequence[str]) -> list[tuple[datetime, datetime]]:
    """``FROM/TO`` RFC 3339 pairs (inclusive) as aware datetimes; a clear error names a bad one."""
    out: list[tuple[datetime, datetime]] = []
    for w in windows:
        start, sep, end = w.partition("/")
        try:
            if not sep:
                raise ValueError
            a, b = (datetime.fromisoformat(t.strip().replace("Z", "+00:00")) for t in (start, end))
        except ValueError:
            raise RecordsError(f"--exclude-window {w!r}: expected FROM/TO, two RFC 3339 times") from None
        if a.tzinfo is None or b.tzinfo is None:
            raise RecordsError(f"--exclude-window {w!r}: times need a time zone (e.g. Z)")
        if b < a:
            raise RecordsError(f"--exclude-window {w!r}: TO is before FROM")
        out.append((a, b))
    return out


def drop_windows(records: Sequence[SourcedRecord], windows: Sequence[tuple[datetime, datetime]],
                 keep: bool = False) -> list[SourcedRecord]:  # fmt: skip
    """Records whose timestamp falls in none of the (inclusive) windows (``keep``: in one of them)."""
    return [r for r in records if any(a <= r.record.timestamp <= b for a, b in windows) == keep]

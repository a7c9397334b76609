"""Answers kept steady: a KL anchor on prompts the update must not change (``--anchor-data``).

A tier trained on new facts also moves the answers to questions it was never shown: the continual
benchmark's regression set (facts the base was pretrained on, disjoint from the taught ones) lost 10-25%
of them per honest update, unseen phrasings first. Replay protects only what the records ask. With
``--anchor-data`` each optimizer step also adds, for a batch of the anchor set's prompts, the KL divergence
of the stack's answer distributions from those of the stack the run starts from (the served one), so the
update changes the answers the records teach and keeps the others where they were. Only the prompts and
the answer positions of the anchor records are used, never their answers as labels.

The anchor's gradient is added after the processes exchanged the batch's: every process computes the same
anchor batch on the same (replicated) parameters, so the sum is as if it were in the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dynamiclora.training.anchored import anchor_loss, answer_logprobs
from dynamiclora.training.data import Example, batch_indices
from dynamiclora.training.records import SourcedRecord
from dynamiclora.training.rehearsal import keyed


@dataclass(frozen=True)
class AnswerAnchor:
    """Anchor prompts and how the served stack answers them (log-probabilities at each answer position)."""

    examples: list[Example]
    reference: list[torch.Tensor]
    weight: float
    batch_size: int
    seed: int
    pad: int

    def pull(self, model: Any, step: int) -> float:
        """Add the gradient of ``weight`` x the KL divergence on this step's anchor batch; returns the KL."""
        idx = batch_indices(step, len(self.examples), self.batch_size, self.seed + 1)
        current = answer_logprobs(model, [self.examples[i] for i in idx], self.pad)
        kl = anchor_loss(current, torch.cat([self.reference[i] for i in idx]))
        (self.weight * kl).backward()
        return float(kl.detach())

    def summary(self) -> dict[str, Any]:
        """Recorded in the version's statistics."""
        return {"records": len(self.examples), "weight": self.weight}


def steady(weight: float, records: Sequence[SourcedRecord], model: Any, tokenizer: Any, max_seq_len: int,
           batch_size: int, seed: int) -> AnswerAnchor | None:  # fmt: skip
    """The run's anchor on ``records`` under ``model`` as loaded (the served stack); None without records
    or at weight 0."""
    if weight == 0 or not records:
        return None
    examples, _ = keyed(list(records), tokenizer, max_seq_len)
    pad = int(tokenizer.pad_token_id)
    was_training = model.training
    model.eval()  # the answers served, without dropout
    with torch.no_grad():
        reference = [answer_logprobs(model, [e], pad) for e in examples]
    model.train(was_training)
    return AnswerAnchor(examples, reference, weight, batch_size, seed, pad)

"""Elastic weight consolidation (Kirkpatrick et al., 2017): the classic regulariser against forgetting.

A peer of the product's consolidation replay, available to compare against (the continual benchmark's
``ewc`` method) and to users who cannot keep records: with ``--ewc-lambda`` the trained tier's parameters
are pulled back towards the version the run starts from (``--init-from``), each in proportion to its
diagonal Fisher information on stored records, the empirical Fisher: the mean over up to
``--ewc-records`` stored questions (newest answer per question, those the run's new records answer anew
left out, as for replay) of each parameter's squared gradient of the record's loss under the stack the
run starts from. The penalty ``lambda/2 * sum F (theta - theta0)^2`` enters as its gradient
``lambda * F * (theta - theta0)``, added to the batch's after the processes exchanged theirs (identical on
every process, so the result is as if it were in the loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dynamiclora.training.data import collate
from dynamiclora.training.model import target_parameters
from dynamiclora.training.records import SourcedRecord
from dynamiclora.training.rehearsal import keyed
from dynamiclora.training.replay import replay_candidates


@dataclass(frozen=True)
class Anchor:
    """Where the trained parameters started and how much each one matters to the stored records."""

    strength: float
    fisher: dict[str, torch.Tensor]
    start: dict[str, torch.Tensor]
    records: int

    def pull(self, params: dict[str, torch.Tensor]) -> None:
        """Add the penalty's gradient to each parameter's."""
        with torch.no_grad():
            for name, p in params.items():
                if p.grad is not None:
                    p.grad += self.strength * self.fisher[name] * (p - self.start[name])

    def summary(self) -> dict[str, Any]:
        """Recorded in the version's statistics."""
        total = sum(float(f.sum()) for f in self.fisher.values())
        return {"lambda": self.strength, "records": self.records, "fisherTotal": total}


def anchor(strength: float, limit: int, model: Any, history: list[SourcedRecord], batch: list[SourcedRecord],
           tokenizer: Any, max_seq_len: int) -> Anchor | None:  # fmt: skip
    """The run's anchor, or None when ``strength`` is 0 (EWC off)."""
    if strength == 0:
        return None
    examples, _ = keyed(replay_candidates(history, batch, limit), tokenizer, max_seq_len)
    params = target_parameters(model)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    pad = int(tokenizer.pad_token_id)
    was_training = model.training
    model.eval()  # the information of the function served, without dropout
    for ex in examples:  # one record at a time: the empirical Fisher is a mean of per-record squared gradients
        model.zero_grad(set_to_none=True)
        model(**collate([ex], pad)).loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    for f in fisher.values():
        f /= max(len(examples), 1)
    return Anchor(strength, fisher, {n: p.detach().clone() for n, p in params.items()}, len(examples))

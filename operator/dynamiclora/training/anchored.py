"""Teach a slower tier chosen answers and nothing else: cross-entropy on them, KL anchors elsewhere.

Trained on the stable answers alone, a tier also learns what they have in common (here: which answer
words are likely after such a question), and then answers *every* similar question differently, which
is transient content leaking into the slow memory by another door. Each step therefore adds, for a batch
of other questions the agent was asked (anchors), the KL divergence from how the tiers beneath it answer
them, so the tier changes the answers where the stable ones are and adds nothing elsewhere.

Small and deterministic (one process, no resume: a retried Job recomputes it from the same inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynamiclora.memory import TierDelta, load_adapter
from dynamiclora.training.data import IGNORE, Example, batch_indices, collate, tokenize
from dynamiclora.training.gate import evaluate
from dynamiclora.training.model import (
    build_stack,
    fetch_tier,
    load_base,
    load_target,
    lora_config,
    save_target,
    target_parameters,
)
from dynamiclora.training.records import SourcedRecord

MAX_SEQ_LEN = 256
Log = Callable[[str], None]
# A rate too high for the model makes Adam's steps overshoot from the first ones on, and the tier ends
# without the answers (a sharp-headed model at rate 0.01 ended at 1.1 nats a token). Such a run is repeated at
# half the rate, up to ATTEMPTS runs in all, and the best kept: a run that fits costs nothing more. Runs that
# learn end far below FIT_LOSS (the continual benchmark's, seeds 1-5: at most 0.16), diverged ones far above.
ATTEMPTS = 3
FIT_LOSS = 0.3  # nats a token on the taught answers (about 0.74 on the right word)


@dataclass(frozen=True)
class TierTraining:
    """One tier to train: where it starts and its LoRA shape."""

    namespace: str
    tier: str
    init: Path | None  # the downloaded version it starts from, if any
    init_ref: str | None  # that version's reference
    rank: int
    targets: list[str]


@dataclass(frozen=True)
class AnchoredRun:
    """What :func:`train_anchored` trains and how."""

    model_dir: str
    tier: TierTraining
    frozen: list[str]  # references of the tiers served beneath it (active, frozen)
    learn: list[SourcedRecord]  # the answers to teach
    anchors: list[SourcedRecord]  # other questions whose answer distribution must not move
    steps: int
    lr: float  # at LoRA scaling 1 (the tier is trained at alpha = rank)
    batch_size: int
    seed: int = 0
    threads: int | None = None  # torch CPU threads (default: torch's choice)


def answer_logprobs(model: Any, examples: Sequence[Example], pad: int) -> torch.Tensor:
    """Log-probabilities over the vocabulary at every trained position, ``[positions, vocab]``."""
    batch = collate(examples, pad)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = batch["labels"][:, 1:] != IGNORE
    return torch.log_softmax(logits[mask].float(), dim=-1)


def anchor_loss(current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """KL divergence of the answer distributions from the reference, per position."""
    return torch.sum(reference.exp() * (reference - current)) / max(len(reference), 1)


def _fit(peft_model: Any, params: dict[str, torch.Tensor], learn: list[Example], anchors: list[Example],
         reference: list[torch.Tensor], run: AnchoredRun, lr: float, pad: int, log: Log) -> None:  # fmt: skip
    """One run of ``run.steps`` steps at ``lr`` from the parameters as they are."""
    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    peft_model.train()
    for step in range(run.steps):
        opt.zero_grad(set_to_none=True)
        picked = [learn[i] for i in batch_indices(step, len(learn), run.batch_size, run.seed)]
        loss = peft_model(**collate(picked, pad)).loss
        if anchors:
            idx = batch_indices(step, len(anchors), run.batch_size, run.seed + 1)
            current = answer_logprobs(peft_model, [anchors[i] for i in idx], pad)
            loss = loss + anchor_loss(current, torch.cat([reference[i] for i in idx]))
        loss.backward()
        opt.step()
        if (step + 1) % max(run.steps // 4, 1) == 0:
            log(f"{run.tier.tier}: step {step + 1}/{run.steps} loss {float(loss.detach()):.4f}")


def _fit_until_learned(peft_model: Any, learn: list[Example], anchors: list[Example], reference: list[torch.Tensor],
                       run: AnchoredRun, pad: int, log: Log) -> None:  # fmt: skip
    """Fit at ``run.lr``, and again at half the rate from the same start while the taught answers were not
    learned (see :data:`ATTEMPTS`); leaves the best run's parameters in the model."""
    params = target_parameters(peft_model)
    start = {n: p.detach().clone() for n, p in params.items()}
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    lr = run.lr
    for attempt in range(ATTEMPTS):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])
        _fit(peft_model, params, learn, anchors, reference, run, lr, pad, log)
        fit = evaluate(peft_model, learn, run.batch_size, pad)
        if best is None or fit < best[0]:
            best = (fit, {n: p.detach().clone() for n, p in params.items()})
        if fit <= FIT_LOSS or attempt == ATTEMPTS - 1:
            break
        log(f"{run.tier.tier}: the taught answers still cost {fit:.3f} nats a token after {run.steps} steps at "
            f"rate {lr:g} (diverged): again at {lr / 2:g}")
        lr /= 2
    assert best is not None
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(best[1][n])


def train_anchored(run: AnchoredRun, tmp: Path, log: Log) -> tuple[TierDelta, Path]:
    """Train ``run.tier``; its delta (scaling folded in) and the PEFT adapter directory written."""
    if run.threads:
        torch.set_num_threads(run.threads)
    model, tokenizer = load_base(run.model_dir)
    pad = int(tokenizer.pad_token_id)
    frozen = [(f"frozen tier {r}", fetch_tier(r, tmp / f"frozen{i}")[0]) for i, r in enumerate(run.frozen)]
    torch.manual_seed(run.seed)
    config = lora_config(run.tier.rank, float(run.tier.rank), run.tier.targets, 0.0, run.model_dir)
    # Built without the version to start from, the tier adds nothing yet (LoRA B = 0): the reference is how
    # the tiers beneath answer, so what the tier adds on other questions is pulled back to nothing, even
    # where an earlier run let some drift in.
    peft_model = build_stack(model, config, frozen, None)
    learn = tokenize(run.learn, tokenizer, MAX_SEQ_LEN)
    anchors = tokenize(run.anchors, tokenizer, MAX_SEQ_LEN)
    peft_model.eval()
    with torch.no_grad():
        reference = [answer_logprobs(peft_model, [e], pad) for e in anchors]
    if run.tier.init is not None:
        load_target(peft_model, run.tier.init)
    _fit_until_learned(peft_model, learn, anchors, reference, run, pad, log)
    out = save_target(peft_model, tmp / "out", run.model_dir)
    return load_adapter(out)[0], out

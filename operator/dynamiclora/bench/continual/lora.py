"""In-process model, PEFT tiers as :data:`TierDelta`, training and evaluation for the benchmark.

Every method trains real PEFT LoRA adapters on the same pretrained tiny Llama. Several adapters can be
active at once (PEFT's LoRA tuner sums every active adapter), which is exactly the tier stack
``base(x) + Σ ΔW_tier x``; only the trainable tier gets gradients. Tiers are read and written as
:data:`~dynamiclora.memory.TierDelta` (LoRA scaling folded into ``B``) so the memory core's functions
(migration, decay, consensus) operate on them directly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamiclora.memory import LowRankDelta, TierDelta
from dynamiclora.memory.stack import freeze_except
from dynamiclora.tinymodel import TinyModelConfig, build_model

from .data import Encoded

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Batch:
    """Right-padded prompts, the position of each prompt's last token and the answer ids."""

    input_ids: Tensor
    attention_mask: Tensor | None
    last: Tensor
    answers: Tensor


def make_batch(enc: Encoded, idx: Sequence[int], pad: int) -> Batch:
    """Batch of the examples ``idx`` of ``enc`` (no attention mask when all prompts have one length)."""
    width = max(len(enc.prompts[i]) for i in idx)
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        p = enc.prompts[i]
        ids[row, : len(p)] = torch.tensor(p)
        mask[row, : len(p)] = 1
    last = mask.sum(dim=1) - 1
    answers = torch.tensor([enc.answers[i] for i in idx], dtype=torch.long)
    return Batch(ids, mask if bool((mask == 0).any()) else None, last, answers)


def answer_logits(model: Any, batch: Batch) -> Tensor:
    """Next-token logits after each prompt (``n x vocab``)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits: Tensor = out.logits
    return logits[torch.arange(logits.shape[0]), batch.last]


def loss_on(model: Any, batch: Batch) -> Tensor:
    """Cross-entropy of the answer token."""
    return F.cross_entropy(answer_logits(model, batch), batch.answers)


def by_length(enc: Encoded, rows: Sequence[int]) -> dict[int, list[int]]:
    """Example indices grouped by prompt length: a batch of one length needs no padding or mask.

    On this tiny model the per-step cost is dominated by fixed overhead (building the attention
    mask is a large part of it), so unpadded batches are markedly faster.
    """
    groups: dict[int, list[int]] = {}
    for i in rows:
        groups.setdefault(len(enc.prompts[i]), []).append(i)
    return groups


def correct(model: Any, enc: Encoded, candidates: Sequence[int], pad: int, chunk: int = 256) -> list[bool]:
    """Per example: is the answer the most likely of the candidate answer words?

    Restricting the argmax to the answer vocabulary measures knowledge of the fact, not whether the
    tiny model also learned to emit an answer word at all (pretraining teaches that).
    """
    if not enc.prompts:
        return []
    cand = torch.tensor(list(candidates), dtype=torch.long)
    out: list[bool] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(enc.prompts), chunk):
            rows = range(s, min(s + chunk, len(enc.prompts)))
            result = dict.fromkeys(rows, False)
            for group in by_length(enc, rows).values():
                b = make_batch(enc, group, pad)
                pick = cand[answer_logits(model, b)[:, cand].argmax(dim=1)]
                result.update(zip(group, (pick == b.answers).tolist(), strict=True))
            out += [result[i] for i in rows]
    model.train(was_training)
    return out


def example_losses(model: Any, enc: Encoded, pad: int, chunk: int = 256) -> list[float]:
    """Per example: cross-entropy of its answer under ``model`` as served (no gradients)."""
    out = [math.nan] * len(enc.prompts)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(enc.prompts), chunk):
            for group in by_length(enc, range(s, min(s + chunk, len(enc.prompts)))).values():
                b = make_batch(enc, group, pad)
                losses = F.cross_entropy(answer_logits(model, b), b.answers, reduction="none")
                for i, v in zip(group, losses.tolist(), strict=True):
                    out[i] = v
    model.train(was_training)
    return out


def subset(enc: Encoded, idx: Sequence[int]) -> Encoded:
    """The examples ``idx`` of ``enc``."""
    return Encoded([enc.prompts[i] for i in idx], [enc.answers[i] for i in idx])


def train_steps(
    model: Any,
    params: Sequence[nn.Parameter],
    enc: Encoded,
    steps: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    pad: int,
    penalty: Callable[[], Tensor] | None = None,
    replay: Encoded | None = None,
    replay_fraction: float = 0.0,
) -> float:
    """Adam on ``params`` for ``steps`` minibatches sampled (seeded) from ``enc``; returns the last loss.

    Args:
        penalty: extra loss term (EWC).
        replay: examples mixed into every batch (replay baseline); ``replay_fraction`` of the batch.
    """
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    n_replay = round(batch_size * replay_fraction) if replay is not None and replay.prompts else 0
    groups = list(by_length(enc, range(len(enc.prompts))).values())
    rgroups = list(by_length(replay, range(len(replay.prompts))).values()) if n_replay and replay else []
    last = math.nan
    for step in range(steps):
        # One prompt length (template) per step, cycling: unpadded batches, every template equally.
        loss = loss_on(model, make_batch(enc, _sample(groups[step % len(groups)], batch_size - n_replay, gen), pad))
        if replay is not None and rgroups:
            r = loss_on(model, make_batch(replay, _sample(rgroups[step % len(rgroups)], n_replay, gen), pad))
            loss = (loss * (batch_size - n_replay) + r * n_replay) / batch_size
        if penalty is not None:
            loss = loss + penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = float(loss.detach())
    model.eval()
    return last


def _sample(group: list[int], n: int, gen: torch.Generator) -> list[int]:
    return [group[i] for i in torch.randint(len(group), (n,), generator=gen).tolist()]


def pretrain(model_cfg: TinyModelConfig, enc: Encoded, steps: int, batch_size: int, lr: float,
             seed: int, pad: int) -> Any:
    """A fresh tiny Llama, full-parameter trained so it follows the templates and answers with a color."""
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    gen = torch.Generator().manual_seed(seed)
    train_steps(model, list(model.parameters()), enc, steps, batch_size, lr, gen, pad)
    for p in model.parameters():
        p.requires_grad = False
    return model


def with_tiers(base: Any, ranks: dict[str, int], trainable: str | None, seed: int, alpha_ratio: float = 1.0) -> Any:
    """A copy of ``base`` wrapped by PEFT with one LoRA adapter per tier, all active.

    Args:
        ranks: tier name -> LoRA rank, slowest first.
        trainable: the tier whose parameters get gradients (None freezes all).
        seed: LoRA initialisation seed (``A`` is random, ``B`` zero, so every tier starts at ΔW = 0).
        alpha_ratio: ``lora_alpha = alpha_ratio * r``.
    """
    from peft import LoraConfig, get_peft_model

    names = list(ranks)
    torch.manual_seed(seed)
    model: Any = None
    for name in names:
        cfg = LoraConfig(r=ranks[name], lora_alpha=alpha_ratio * ranks[name],  # type: ignore[arg-type]
                         target_modules=list(TARGETS), lora_dropout=0.0, bias="none")
        if model is None:
            model = get_peft_model(copy.deepcopy(base), cfg, adapter_name=name)
        else:
            model.add_adapter(name, cfg)
    activate(model, names)
    freeze_except(model, trainable)
    return model


def activate(model: Any, names: Sequence[str]) -> None:
    """Make exactly ``names`` the active adapters (their outputs are summed); keeps requires_grad."""
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    model.base_model.set_adapter(list(names))
    for n, p in model.named_parameters():
        p.requires_grad = grads[n]


def tier_params(model: Any, name: str) -> list[nn.Parameter]:
    """The LoRA parameters of tier ``name``."""
    return [p for n, p in model.named_parameters() if f".{name}." in f"{n}." and "lora_" in n]


def _lora_layers(model: Any, name: str) -> dict[str, Any]:
    return {path.removeprefix(PEFT_PREFIX): mod for path, mod in model.named_modules()
            if hasattr(mod, "lora_A") and name in getattr(mod, "lora_A", {})}


def get_tier(model: Any, name: str) -> TierDelta:
    """Tier ``name`` as module path -> ``LowRankDelta`` (scaling folded into ``B``)."""
    out: TierDelta = {}
    for path, mod in _lora_layers(model, name).items():
        B = mod.lora_B[name].weight.detach().clone() * float(mod.scaling[name])
        out[path] = LowRankDelta(B, mod.lora_A[name].weight.detach().clone())
    return out


def set_tier(model: Any, name: str, tier: TierDelta, gen: torch.Generator) -> None:
    """Write ``tier`` into adapter ``name`` (rank <= the adapter's rank).

    Unused rank slots get a fresh random ``A`` row and a zero ``B`` column, like a new LoRA: zero in
    both factors would have zero gradient forever, so capacity freed by migration could never be reused.
    """
    with torch.no_grad():
        for path, mod in _lora_layers(model, name).items():
            A, B = mod.lora_A[name].weight, mod.lora_B[name].weight
            r = A.shape[0]
            delta = tier.get(path)
            k = 0 if delta is None else delta.rank
            if k > r:
                raise ValueError(f"set_tier: module {path} has rank {k} but adapter {name!r} has r={r}")
            bound = 1.0 / math.sqrt(A.shape[1])
            A.copy_((torch.rand(A.shape, generator=gen) * 2 - 1) * bound)
            B.zero_()
            if delta is not None and k:
                A[:k] = delta.A.to(A.dtype)
                B[:, :k] = delta.B.to(B.dtype) / float(mod.scaling[name])

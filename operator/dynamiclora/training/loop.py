"""The optimisation loop of ``dynamiclora train``: batches, checkpoints every N steps, resume.

Under ``torchrun`` each process takes its share of every global batch; the strategy (training/sharding.py)
makes the shares' gradients the whole batch's, all-reduced (``ddp``) or reduce-scattered into shards
(``fsdp``). Rank 0 alone writes checkpoints and hands the resume state to the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynamiclora.training import checkpoint as ckpt
from dynamiclora.training import distributed as dist
from dynamiclora.training.data import Example, batch_indices, steps_per_epoch
from dynamiclora.training.ewc import Anchor
from dynamiclora.training.gate import evaluate
from dynamiclora.training.model import target_parameters
from dynamiclora.training.options import TrainConfig
from dynamiclora.training.protection import Protection
from dynamiclora.training.sharding import Exchange, exchange, local
from dynamiclora.training.steady import AnswerAnchor

Log = Callable[[str], None]


@dataclass
class TrainRun:
    """What the optimisation loop did."""

    total: int
    curve: list[float]
    processed: int
    elapsed: float
    initial_loss: float
    final_loss: float


def train_loop(cfg: TrainConfig, peft_model: Any, mix: list[Example], eval_set: list[Example], pad: int,
                work: Path, fp: str, log: Log, protect: Protection | None = None,
                saved: Callable[[Path], None] | None = None,
                forget: Callable[[], None] | None = None, d: dist.Dist = dist.SINGLE,
                sync: Exchange | None = None, ewc: Anchor | None = None,
                kept: AnswerAnchor | None = None) -> TrainRun:  # fmt: skip
    """Optimise the trained tier on ``mix`` (this process's share of each batch), checkpointing and
    resuming in ``work`` (rank 0's)."""
    sync = sync or exchange(cfg.strategy, d)
    params = target_parameters(peft_model)
    frozen_before = {n: local(p).detach().clone() for n, p in peft_model.named_parameters()
                     if "lora_" in n and not p.requires_grad}
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.steps or cfg.epochs * steps_per_epoch(len(mix), cfg.batch_size)
    state = dist.broadcast(_resume_state(work, fp, log, forget) if d.leader else None, d)
    if state is None:
        run = TrainRun(total, [], 0, 0.0, evaluate(peft_model, eval_set, cfg.batch_size, pad), 0.0)
        step = 0
    else:
        sync.restore(peft_model, params, opt, state)
        torch.set_rng_state(state["rng"])
        step = int(state["step"])
        run = TrainRun(total, list(state["curve"]), int(state["processed"]), float(state["elapsed"]),
                       float(state["initial_loss"]), 0.0)
        if d.leader:  # the others were handed the state: their work directory holds no checkpoint
            log(f"resumed from {ckpt.list_checkpoints(work)[-1]} at step {step}/{total}")
    log(f"training tier {cfg.namespace}/{cfg.tier}: {total} steps, batch {cfg.batch_size}, rank {cfg.rank}, "
        f"{len(cfg.frozen)} frozen tier(s), initial loss {run.initial_loss:.4f}")
    seg_start, seg_tokens = time.monotonic(), 0
    while step < total:
        peft_model.train()
        mine = dist.share(batch_indices(step, len(mix), cfg.batch_size, cfg.seed), d)
        opt.zero_grad(set_to_none=True)
        batch_loss, tokens = sync.step(peft_model, params, [mix[i] for i in mine], mix[0], pad)
        if kept is not None:
            kept.pull(peft_model, step)
        if ewc is not None:
            ewc.pull(params)
        for group in opt.param_groups:  # a function of the step alone: a resumed run follows the same schedule
            group["lr"] = cfg.lr * lr_factor(step, total, cfg.lr_warmdown, cfg.lr_warmup)
        opt.step()
        if protect is not None:
            sync.project(protect, params)
        step += 1
        run.curve.append(batch_loss)
        run.processed += tokens
        seg_tokens += tokens
        if step % cfg.log_every == 0 or step == total:
            rate = seg_tokens / max(time.monotonic() - seg_start, 1e-9)
            log(f"step {step}/{total} loss {run.curve[-1]:.4f} tokens/s {rate:.0f}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            snapshot = sync.snapshot(peft_model, params, opt)  # every rank: gathering shards is collective
            if d.leader:
                path = ckpt.save_checkpoint(work, step, {
                    "fingerprint": fp, "step": step, "curve": run.curve, "processed": run.processed,
                    "elapsed": run.elapsed + time.monotonic() - seg_start, "initial_loss": run.initial_loss,
                    **snapshot, "rng": torch.get_rng_state(),
                })  # fmt: skip
                if saved is not None:
                    saved(path)
    run.elapsed += time.monotonic() - seg_start
    run.final_loss = evaluate(peft_model, eval_set, cfg.batch_size, pad)
    if not all(torch.equal(local(p), frozen_before[n]) for n, p in peft_model.named_parameters()
               if n in frozen_before):
        raise RuntimeError("a frozen tier changed during training")  # pragma: no cover - freezing is broken
    return run


def lr_factor(step: int, total: int, warmdown: float, warmup: float = 0.0) -> float:
    """The learning rate of 0-based ``step`` of ``total``, relative to the configured one: rising linearly
    over the first ``warmup`` of the steps, constant, then falling linearly over the last ``warmdown`` of
    them to 1/(steps in the warm-down) at the last."""
    up = round(total * warmup)
    start = total - max(1, round(total * warmdown)) if warmdown > 0 else total
    rise = (step + 1) / (up + 1) if step < up else 1.0
    return min(rise, 1.0 if step < start else (total - step) / (total - start))


def _resume_state(work: Path, fp: str, log: Log, forget: Callable[[], None] | None) -> dict[str, Any] | None:
    """The newest checkpoint of this run in ``work``, or None to start from the beginning."""
    try:
        return ckpt.load_latest(work, fp)
    except ckpt.ResumeMismatchError:
        if forget is None:  # a --work-dir the user gave: refusing it is the clear error
            raise
        # A checkpoint mirrored by an earlier attempt on other records or settings: start afresh.
        log("the mirrored checkpoint belongs to a run on other inputs; training from the start")
        forget()
        return None

"""Data-parallel training across processes and nodes (issue 20), launched by ``torchrun``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process loads the same base model, stack and records and
takes its share of each global batch: the batch the single-process run would take at that step, split
by position (``indices[rank::world]``). Gradients of the trained LoRA parameters are summed across
processes weighted by each share's loss tokens, so the update is the single-process update on the whole
batch (the loss is a mean over tokens), up to the order of floating-point sums. Every process therefore
holds the same parameters after each step; only rank 0 checkpoints, judges and publishes. The LoRA
parameters are a few MB, so plain all-reduce (gloo on CPU, NCCL on GPU) of their gradients is all the
communication there is. With ``--strategy fsdp`` the stack is sharded instead (training/sharding.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Labels of prompt and padding tokens (training/data.py): not counted in the loss.
IGNORE = -100


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int
    world: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


SINGLE = Dist(0, 1)


def init_from_env(env: Mapping[str, str] = os.environ) -> Dist:
    """Join the process group ``torchrun`` set up (``RANK``/``WORLD_SIZE``/``MASTER_*``); single otherwise."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return Dist(dist.get_rank(), dist.get_world_size())


def check_batch(batch_size: int, d: Dist) -> None:
    """Each process needs at least one record of every global batch."""
    if batch_size < d.world:
        raise ValueError(f"--batch-size {batch_size} is smaller than the {d.world} training processes: "
                         f"each needs a share of every batch (raise the batch size or lower nodes x procsPerNode)")


def share(indices: Sequence[int], d: Dist) -> list[int]:
    """This process's part of a global batch."""
    return list(indices[d.rank :: d.world])


def loss_tokens(labels: torch.Tensor) -> int:
    """Tokens the causal LM loss averages over (labels shift by one; ignored positions do not count)."""
    return int((labels[..., 1:] != IGNORE).sum())


def reduce_step(params: Mapping[str, torch.Tensor], loss: torch.Tensor, n_tokens: int, d: Dist) -> float:
    """Turn this share's gradients into the whole batch's (token-weighted mean); returns the batch loss."""
    if d.world == 1:
        return float(loss.detach())
    import torch.distributed as dist

    if n_tokens == 0:  # a share of padding only: its loss is NaN and must weigh nothing
        grads = [torch.zeros_like(p) for p in params.values()]
        loss = torch.zeros(())
    else:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params.values()]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1), torch.ones(1)]) * n_tokens
    dist.all_reduce(flat)
    total = float(flat[-1])
    flat /= max(total, 1.0)
    offset = 0
    for p, g in zip(params.values(), grads, strict=True):
        size = g.numel()
        p.grad = flat[offset : offset + size].view_as(p).clone()
        offset += size
    return float(flat[-2])


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (the resume state: only rank 0 reads checkpoints)."""
    if d.world == 1:
        return obj
    import torch.distributed as dist

    box = [obj if d.leader else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def close(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def worker_result(d: Dist, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a rank other than 0 reports (rank 0 reports the published version)."""
    return {"worker": d.rank, "worldSize": d.world, **(extra or {})}

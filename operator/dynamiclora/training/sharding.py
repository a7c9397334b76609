"""How the training processes of one run share their work: data-parallel, or fully sharded (issue 20).

``ddp`` (:class:`DataParallel`): every process holds the whole stack and takes its share of each batch; the
trained tier's gradients are all-reduced (training/distributed.py). ``fsdp`` (:class:`FullySharded`): the
same shares of the same batches, but the stack's parameters (the base model's and the frozen tiers' as much
as the trained tier's), their gradients and the optimizer state are sharded across the processes with
PyTorch's FSDP2 (``fully_shard``, one unit per decoder layer): between uses each process holds about
1/world of them, and a layer's parameters are all-gathered only while it computes. That is the path for a
base model that does not fit one device. Each process's loss is weighted by its share of the batch's loss
tokens before the backward pass, so FSDP's averaged gradient is the token-weighted mean of the whole batch,
the single-process update, as with ``ddp``.

Checkpoints hold full tensors and the full optimizer state (gathered from the shards), so a run resumes with
any number of processes. After the loop the trained tier is gathered and rank 0 judges and publishes it on
an unsharded stack, as after a ``ddp`` run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from dynamiclora.training import distributed as dist
from dynamiclora.training.data import Example, collate
from dynamiclora.training.protection import Protection

STRATEGIES = ("ddp", "fsdp")


class Exchange(Protocol):
    """What the optimisation loop asks of the strategy (both are no-ops beyond plain training at world 1)."""

    def step(self, model: Any, params: Mapping[str, torch.Tensor], examples: list[Example],
             stand_in: Example, pad: int) -> tuple[float, int]:  # fmt: skip
        """Gradients of this process's share of the batch, made the whole batch's; (batch loss, tokens)."""

    def snapshot(self, model: Any, params: Mapping[str, torch.Tensor],
                 opt: torch.optim.Optimizer) -> dict[str, Any]:  # fmt: skip
        """Full copies of the trained parameters and the optimizer state (on rank 0; all ranks call it)."""

    def restore(self, model: Any, params: Mapping[str, torch.Tensor], opt: torch.optim.Optimizer,
                state: Mapping[str, Any]) -> None:  # fmt: skip
        """Load a :meth:`snapshot` (every rank was handed it)."""

    def project(self, protect: Protection, params: Mapping[str, torch.Tensor]) -> None:
        """Apply the protection of the slower tiers to the trained parameters."""


class DataParallel:
    """Whole stack in every process; gradients all-reduced token-weighted."""

    def __init__(self, d: dist.Dist) -> None:
        self.d = d

    def step(self, model: Any, params: Mapping[str, torch.Tensor], examples: list[Example],
             stand_in: Example, pad: int) -> tuple[float, int]:  # fmt: skip
        if not examples:  # a share of the epoch's short last batch may be empty: it still takes part
            return dist.reduce_step(params, torch.zeros(()), 0, self.d), 0
        batch = collate(examples, pad)
        loss = model(**batch).loss
        loss.backward()
        return dist.reduce_step(params, loss, dist.loss_tokens(batch["labels"]), self.d), int(
            batch["attention_mask"].sum())

    def snapshot(self, model: Any, params: Mapping[str, torch.Tensor],
                 opt: torch.optim.Optimizer) -> dict[str, Any]:  # fmt: skip
        if not self.d.leader:  # every rank holds the same values; only rank 0 saves them
            return {}
        return {"params": {n: p.detach().clone() for n, p in params.items()}, "optimizer": opt.state_dict()}

    def restore(self, model: Any, params: Mapping[str, torch.Tensor], opt: torch.optim.Optimizer,
                state: Mapping[str, Any]) -> None:  # fmt: skip
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state["params"][n])
        opt.load_state_dict(state["optimizer"])

    def project(self, protect: Protection, params: Mapping[str, torch.Tensor]) -> None:
        protect.apply(dict(params))


class FullySharded:
    """The stack sharded across the processes (FSDP2); see the module's docstring."""

    def __init__(self, d: dist.Dist) -> None:
        self.d = d

    def step(self, model: Any, params: Mapping[str, torch.Tensor], examples: list[Example],
             stand_in: Example, pad: int) -> tuple[float, int]:  # fmt: skip
        import torch.distributed as tdist

        # Every process must run the forward and backward passes (they all-gather each layer), an empty
        # share too: it computes a stand-in that weighs nothing.
        batch = collate(examples or [stand_in], pad)
        mine = dist.loss_tokens(batch["labels"]) if examples else 0
        counts = torch.tensor([float(mine)])
        tdist.all_reduce(counts)
        total = max(float(counts[0]), 1.0)
        loss = model(**batch).loss
        weight = mine * self.d.world / total  # FSDP averages over the processes: this makes it token-weighted
        (loss * weight).backward()
        report = torch.tensor([float(loss.detach()) * mine / total if mine else 0.0])
        tdist.all_reduce(report)
        return float(report[0]), int(batch["attention_mask"].sum()) if examples else 0

    def snapshot(self, model: Any, params: Mapping[str, torch.Tensor],
                 opt: torch.optim.Optimizer) -> dict[str, Any]:  # fmt: skip
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = {n: full_tensor(p).clone() for n, p in params.items()}
        # Gathered to rank 0's host memory only: every rank holding the whole optimizer state would undo sharding.
        optim = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {"params": full, "optimizer": optim} if self.d.leader else {}

    def restore(self, model: Any, params: Mapping[str, torch.Tensor], opt: torch.optim.Optimizer,
                state: Mapping[str, Any]) -> None:  # fmt: skip
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        for n, p in params.items():
            assign(p, state["params"][n])
        set_optimizer_state_dict(model, opt, state["optimizer"], options=StateDictOptions(full_state_dict=True))

    def project(self, protect: Protection, params: Mapping[str, torch.Tensor]) -> None:
        full = {n: full_tensor(p) for n, p in params.items() if n in protect.bases}
        protect.apply(full)
        for n, value in full.items():
            assign(params[n], value)


def exchange(strategy: str, d: dist.Dist) -> Exchange:
    """The exchange of a run with ``strategy`` (:data:`STRATEGIES`) on ``d``."""
    return FullySharded(d) if strategy == "fsdp" and d.world > 1 else DataParallel(d)


def shard(peft_model: Any) -> dict[str, int]:
    """Shard ``peft_model`` in place, one FSDP unit per decoder layer and one for the rest; what each
    process now holds (parameter elements) against the whole."""
    from torch.distributed.fsdp import fully_shard

    layer_classes = set(getattr(peft_model.get_base_model(), "_no_split_modules", None) or [])
    units = [m for m in peft_model.modules() if type(m).__name__ in layer_classes]
    for unit in units:
        fully_shard(unit)
    fully_shard(peft_model)
    held = sum(local(p).numel() for p in peft_model.parameters())
    return {"units": len(units) + 1, "heldElements": held, "elements": sum(p.numel() for p in peft_model.parameters())}


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """The whole value of a (possibly sharded) parameter; a collective for a sharded one."""
    return (p.full_tensor() if isinstance(p, DTensor) else p).detach()


def local(p: torch.Tensor) -> torch.Tensor:
    """This process's part of a (possibly sharded) parameter."""
    return p.to_local() if isinstance(p, DTensor) else p


def assign(p: torch.Tensor, value: torch.Tensor) -> None:
    """Set a (possibly sharded) parameter to the whole ``value`` (a collective for a sharded one)."""
    with torch.no_grad():
        if isinstance(p, DTensor):
            value = distribute_tensor(value.to(p.dtype), p.device_mesh, p.placements)
        p.copy_(value)


def gather(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained parameters, whole, on every process (a collective)."""
    return {n: full_tensor(p).clone() for n, p in params.items()}

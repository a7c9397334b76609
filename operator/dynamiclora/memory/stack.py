"""A tier stack: an agent's ordered LoRA tiers, loadable into one PEFT model with all tiers active.

Tiers are ordered slowest first (foundation ... context). Training touches only the fastest tier;
the slower tiers are active in the forward pass but frozen (``requires_grad = False``), so
``output = base(x) + Σ_tiers ΔW_tier x`` holds during training and inference alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compose import ComposeReport, compose
from .lowrank import TierDelta
from .peft_io import load_adapter


@dataclass(frozen=True)
class Tier:
    """One tier of a stack: its name (PEFT adapter name) and adapter directory."""

    name: str = field(metadata={"help": "tier/adapter name, e.g. 'agent' or 'context'"})
    path: Path = field(metadata={"help": "PEFT adapter directory"})

    def __post_init__(self) -> None:
        if not self.name or "." in self.name:
            raise ValueError(f"Tier.name must be non-empty without '.', got {self.name!r}")
        object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True)
class TierStack:
    """Ordered tiers, slowest first."""

    tiers: list[Tier]

    def __post_init__(self) -> None:
        names = [t.name for t in self.tiers]
        if not names:
            raise ValueError("TierStack needs at least one tier")
        if len(set(names)) != len(names):
            raise ValueError(f"TierStack tier names must be unique, got {names}")

    @property
    def names(self) -> list[str]:
        """Tier names, slowest first."""
        return [t.name for t in self.tiers]

    def deltas(self) -> list[TierDelta]:
        """Each tier's delta (scaling folded in), slowest first."""
        return [load_adapter(t.path)[0] for t in self.tiers]

    def compose(self, max_lora_rank: int) -> tuple[TierDelta, ComposeReport]:
        """The stack collapsed into one delta for serving (see :func:`compose`)."""
        return compose(self.deltas(), max_lora_rank)

    def to_peft(self, base_model: Any, trainable: str | None = None) -> Any:
        """Load every tier into ``base_model`` as PEFT adapters, all active, only ``trainable`` trainable.

        Args:
            base_model: a ``transformers`` model (not yet wrapped by PEFT).
            trainable: the tier to train (usually the fastest); ``None`` freezes every tier.

        Returns:
            The ``PeftModel`` with all tiers active.
        """
        return activate_tiers(base_model, self.tiers, trainable)


def activate_tiers(base_model: Any, tiers: Sequence[Tier], trainable: str | None = None) -> Any:
    """PEFT model with ``tiers`` loaded as named adapters and all of them active at once."""
    from peft import PeftModel

    if trainable is not None and trainable not in {t.name for t in tiers}:
        raise ValueError(f"trainable tier {trainable!r} is not one of {[t.name for t in tiers]}")
    first, *rest = tiers
    model = PeftModel.from_pretrained(
        base_model, str(first.path), adapter_name=first.name, is_trainable=first.name == trainable
    )
    for t in rest:
        model.load_adapter(str(t.path), adapter_name=t.name, is_trainable=t.name == trainable)
    # PeftModel.set_adapter takes one name; the LoRA tuner underneath accepts a list and activates
    # every adapter in it (their outputs are summed in each LoRA layer's forward).
    tuner: Any = model.base_model
    tuner.set_adapter([t.name for t in tiers])
    freeze_except(model, trainable)
    return model


def freeze_except(model: Any, trainable: str | None) -> None:
    """``requires_grad`` only on the LoRA parameters of ``trainable`` (none when ``None``)."""
    for name, param in model.named_parameters():
        param.requires_grad = trainable is not None and f".{trainable}." in f"{name}." and "lora_" in name

"""Serving composition: collapse an agent's tier stack into one adapter for vLLM.

vLLM applies one LoRA per request, so the stack ``Σ_tiers B_t A_t`` is served as a single adapter.
Concatenating the factors is exact and has rank ``Σ r_t``; when that exceeds ``max_lora_rank`` the
sum is SVD-truncated (QR + small SVD, never dense) and the discarded norm is reported. Tiers may target
different modules: the composed adapter targets their union.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .decompose import truncate
from .lowrank import LowRankDelta, TierDelta, tier_add, tier_energy


@dataclass(frozen=True)
class ComposeReport:
    """How the stack was collapsed.

    Attributes:
        exact: every module was concatenated without truncation.
        rank: rank of the composed adapter (max over modules).
        error: Frobenius norm of what truncation discarded (all modules).
        relative_error: ``error / ||Σ tiers||``.
        module_errors: per-module discarded norm (only truncated modules).
    """

    exact: bool
    rank: int
    error: float
    relative_error: float
    module_errors: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """JSON-able summary."""
        return {"exact": self.exact, "rank": self.rank, "error": self.error,
                "relativeError": self.relative_error, "truncatedModules": len(self.module_errors)}


def compose(
    stack: Sequence[Mapping[str, LowRankDelta]], max_lora_rank: int, weights: Sequence[float] | None = None
) -> tuple[TierDelta, ComposeReport]:
    """One delta equal to the (weighted) sum of the stack's tiers, at rank ``<= max_lora_rank``.

    Args:
        stack: tier deltas, any order (the sum is order-independent).
        max_lora_rank: the serving engine's ``--max-lora-rank``.
        weights: optional per-tier multipliers (default 1).

    Returns:
        ``(delta, report)``.
    """
    if max_lora_rank < 1:
        raise ValueError(f"compose: max_lora_rank must be >= 1, got {max_lora_rank}")
    if not stack:
        raise ValueError("compose: the stack is empty")
    summed = tier_add(stack, weights)
    out: TierDelta = {}
    errors: dict[str, float] = {}
    known_sq, unknown = 0.0, []
    for module, delta in summed.items():
        cut = truncate(delta, max_lora_rank)
        out[module] = cut.delta
        if not cut.exact:
            errors[module] = cut.error
        # The norm comes free with a decomposition; modules that fit are only measured when needed.
        if math.isnan(cut.norm):
            unknown.append(module)
        else:
            known_sq += cut.norm**2
    err = math.sqrt(sum(e**2 for e in errors.values()))
    total = math.sqrt(known_sq + tier_energy({m: summed[m] for m in unknown})) if errors else 0.0
    rank = max((d.rank for d in out.values()), default=0)
    return out, ComposeReport(not errors, rank, err, err / total if total > 0 else 0.0, errors)

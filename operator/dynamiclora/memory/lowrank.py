"""Typed low-rank deltas: the common currency of the memory core.

A LoRA module contributes ``ΔW = scaling · B A`` to a frozen weight. Everything in
:mod:`dynamiclora.memory` works on that product without ever forming the dense ``d_out x d_in``
matrix: sums are concatenations of factors, inner products go through ``r x r`` Gram matrices.
The LoRA scaling (``lora_alpha / r`` or the rsLoRA variant) is folded into ``B`` on load so that a
:class:`LowRankDelta` means exactly ``B @ A`` and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LowRankDelta:
    """One module's weight delta ``ΔW = B @ A`` with the LoRA scaling already folded into ``B``.

    Attributes:
        B: ``d_out x r`` left factor.
        A: ``r x d_in`` right factor.
    """

    B: Tensor
    A: Tensor

    def __post_init__(self) -> None:
        if self.B.dim() != 2 or self.A.dim() != 2:
            raise ValueError(f"LowRankDelta factors must be 2-D, got B{tuple(self.B.shape)} A{tuple(self.A.shape)}")
        if self.B.shape[1] != self.A.shape[0]:
            raise ValueError(
                f"LowRankDelta rank mismatch: B is {tuple(self.B.shape)} but A is {tuple(self.A.shape)}"
            )
        if self.B.dtype != self.A.dtype:
            raise ValueError(f"LowRankDelta dtype mismatch: B {self.B.dtype}, A {self.A.dtype}")

    @property
    def rank(self) -> int:
        """Number of rank-1 terms stored (an upper bound on the true rank)."""
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Shape ``(d_out, d_in)`` of the dense-equivalent matrix."""
        return int(self.B.shape[0]), int(self.A.shape[1])

    @staticmethod
    def zeros(d_out: int, d_in: int, dtype: torch.dtype = torch.float32) -> LowRankDelta:
        """The rank-0 delta of the given shape."""
        return LowRankDelta(torch.zeros(d_out, 0, dtype=dtype), torch.zeros(0, d_in, dtype=dtype))

    def dense(self) -> Tensor:
        """The dense ``d_out x d_in`` matrix. Only for tests and baselines: O(d²) memory."""
        return self.B @ self.A

    def scaled(self, factor: float) -> LowRankDelta:
        """``factor · ΔW`` (the factor goes into ``B``)."""
        return LowRankDelta(self.B * factor, self.A)

    def to(self, dtype: torch.dtype) -> LowRankDelta:
        """The same delta with factors cast to ``dtype``."""
        return LowRankDelta(self.B.to(dtype), self.A.to(dtype))

    def __add__(self, other: LowRankDelta) -> LowRankDelta:
        return concat([self, other])

    def __neg__(self) -> LowRankDelta:
        return self.scaled(-1.0)

    def __sub__(self, other: LowRankDelta) -> LowRankDelta:
        return concat([self, -other])


TierDelta = dict[str, LowRankDelta]
"""A tier's delta: module path in the base model (e.g. ``model.layers.0.self_attn.q_proj``) -> delta."""


def concat(deltas: Iterable[LowRankDelta], weights: Iterable[float] | None = None) -> LowRankDelta:
    """Exact weighted sum ``Σ w_i B_i A_i`` as one delta of rank ``Σ r_i`` (factor concatenation)."""
    items = list(deltas)
    if not items:
        raise ValueError("concat needs at least one delta")
    ws = [1.0] * len(items) if weights is None else [float(w) for w in weights]
    if len(ws) != len(items):
        raise ValueError(f"concat got {len(items)} deltas but {len(ws)} weights")
    shapes = {d.shape for d in items}
    if len(shapes) != 1:
        raise ValueError(f"concat of deltas with different shapes: {sorted(shapes)}")
    dtype = _common_dtype(items)
    B = torch.cat([d.B.to(dtype) * w for d, w in zip(items, ws, strict=True)], dim=1)
    A = torch.cat([d.A.to(dtype) for d in items], dim=0)
    return LowRankDelta(B, A)


def _common_dtype(items: list[LowRankDelta]) -> torch.dtype:
    dtype = items[0].B.dtype
    for d in items[1:]:
        dtype = torch.promote_types(dtype, d.B.dtype)
    return dtype


def inner(x: LowRankDelta, y: LowRankDelta) -> float:
    """Frobenius inner product ``<B_x A_x, B_y A_y>`` via ``r x r`` Gram matrices."""
    if x.shape != y.shape:
        raise ValueError(f"inner of deltas with different shapes: {x.shape} vs {y.shape}")
    dtype = torch.promote_types(torch.promote_types(x.B.dtype, y.B.dtype), torch.float64)
    left = x.B.to(dtype).T @ y.B.to(dtype)  # r_x x r_y
    right = x.A.to(dtype) @ y.A.to(dtype).T  # r_x x r_y
    return float((left * right).sum())


def energy(delta: LowRankDelta) -> float:
    """Squared Frobenius norm ``||B A||_F²`` computed without forming ``B A``."""
    return max(inner(delta, delta), 0.0)


def norm(delta: LowRankDelta) -> float:
    """Frobenius norm ``||B A||_F``."""
    return math.sqrt(energy(delta))


def tier_energy(tier: Mapping[str, LowRankDelta]) -> float:
    """Total squared Frobenius norm of a tier (sum over modules)."""
    return sum(energy(d) for d in tier.values())


def tier_inner(x: Mapping[str, LowRankDelta], y: Mapping[str, LowRankDelta]) -> float:
    """Frobenius inner product of two tiers (modules missing on one side count as zero)."""
    return sum(inner(x[m], y[m]) for m in x.keys() & y.keys())


def tier_add(tiers: Iterable[Mapping[str, LowRankDelta]], weights: Iterable[float] | None = None) -> TierDelta:
    """Exact weighted sum of tiers; the result targets the union of their modules."""
    items = list(tiers)
    ws = [1.0] * len(items) if weights is None else [float(w) for w in weights]
    if len(ws) != len(items):
        raise ValueError(f"tier_add got {len(items)} tiers but {len(ws)} weights")
    out: TierDelta = {}
    for module in sorted(set().union(*[t.keys() for t in items])):
        parts = [(t[module], w) for t, w in zip(items, ws, strict=True) if module in t]
        out[module] = concat([p for p, _ in parts], [w for _, w in parts])
    return out


def tier_sub(x: Mapping[str, LowRankDelta], y: Mapping[str, LowRankDelta]) -> TierDelta:
    """Exact difference ``x - y`` of two tiers."""
    return tier_add([x, y], [1.0, -1.0])


def tier_distance(x: Mapping[str, LowRankDelta], y: Mapping[str, LowRankDelta]) -> float:
    """Frobenius distance ``||x - y||`` between tiers, computed in low-rank form."""
    return math.sqrt(max(tier_energy(tier_sub(x, y)), 0.0))


def tier_scaled(tier: Mapping[str, LowRankDelta], factor: float) -> TierDelta:
    """``factor · tier``."""
    return {m: d.scaled(factor) for m, d in tier.items()}

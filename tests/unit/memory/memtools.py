"""Shared builders for the memory-core tests (imported as ``memtools``): seeded deltas and tiers."""

from __future__ import annotations

import torch

from dynamiclora.memory import LowRankDelta, TierDelta


def random_delta(d_out: int, d_in: int, r: int, seed: int, scale: float = 1.0) -> LowRankDelta:
    """A seeded random rank-``r`` delta with entries of order ``scale``."""
    g = torch.Generator().manual_seed(seed)
    return LowRankDelta(torch.randn(d_out, r, generator=g) * scale, torch.randn(r, d_in, generator=g) / d_in**0.5)


def unit_vectors(d: int, k: int, seed: int) -> torch.Tensor:
    """``k`` orthonormal columns in ``R^d``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return q.to(torch.float32)


def random_tier(modules: int = 2, d: int = 32, r: int = 4, seed: int = 0, scale: float = 1.0) -> TierDelta:
    """``modules`` random deltas named ``layers.<i>.proj``."""
    return {f"layers.{i}.proj": random_delta(d, d, r, seed * 1000 + i, scale) for i in range(modules)}

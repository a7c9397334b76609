"""Rank-1 components ("circuits") of a low-rank delta without forming the dense matrix.

For ``ΔW = B A`` with ``B = Q_b R_b`` and ``Aᵀ = Q_a R_a`` (thin QR), ``ΔW = Q_b (R_b R_aᵀ) Q_aᵀ``;
an SVD of the ``r x r`` core ``R_b R_aᵀ = U_c S V_cᵀ`` gives ``ΔW = (Q_b U_c) S (Q_a V_c)ᵀ``. The cost
is O(d r²) instead of the O(d³) of a dense SVD, and the result is the exact SVD of ``ΔW``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .lowrank import LowRankDelta

# The small core SVD runs in float64: it costs nothing at r x r and keeps the reconstruction exact
# to float32 round-off even when the singular values span many orders of magnitude.
_COMPUTE = torch.float64


@dataclass(frozen=True)
class Components:
    """SVD of a low-rank delta: ``ΔW = U diag(S) Vᵀ`` with orthonormal columns, S descending.

    Attributes:
        U: ``d_out x k`` left singular vectors.
        S: ``k`` singular values (non-negative, descending).
        V: ``d_in x k`` right singular vectors.
        dtype: dtype of the delta this came from (results are cast back to it).
    """

    U: Tensor
    S: Tensor
    V: Tensor
    dtype: torch.dtype

    @property
    def count(self) -> int:
        """Number of components ``k``."""
        return int(self.S.shape[0])

    @property
    def energies(self) -> Tensor:
        """``sigma_i²`` per component (their sum is ``||ΔW||_F²``)."""
        return self.S**2

    def select(self, indices: list[int] | Tensor) -> LowRankDelta:
        """The delta made of the chosen components only (``Σ sigma_i u_i v_iᵀ``), exact."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        B = self.U[:, idx] * self.S[idx]
        A = self.V[:, idx].T
        return LowRankDelta(B.to(self.dtype).contiguous(), A.to(self.dtype).contiguous())

    def complement(self, indices: list[int] | Tensor) -> LowRankDelta:
        """The delta made of every component except ``indices``."""
        chosen = {int(i) for i in torch.as_tensor(indices, dtype=torch.long).tolist()}
        return self.select([i for i in range(self.count) if i not in chosen])

    def to_delta(self) -> LowRankDelta:
        """All components as a balanced delta (``B = U √S``, ``A = √S Vᵀ``)."""
        root = self.S.sqrt()
        return LowRankDelta((self.U * root).to(self.dtype).contiguous(), (self.V * root).T.to(self.dtype).contiguous())

    def with_singular_values(self, S: Tensor) -> Components:
        """Same directions, new singular values (e.g. after decay). Order is not re-sorted."""
        if S.shape != self.S.shape:
            raise ValueError(f"expected {tuple(self.S.shape)} singular values, got {tuple(S.shape)}")
        return Components(self.U, S.to(self.S.dtype).clamp_min(0.0), self.V, self.dtype)


def decompose(delta: LowRankDelta, rtol: float = 0.0) -> Components:
    """Exact SVD of ``B A`` via QR of the factors and an ``r x r`` SVD.

    Args:
        delta: the low-rank delta.
        rtol: drop components with ``sigma <= rtol · sigma_max`` (0 keeps all; numerically zero
            components are still kept so that ``count == min(rank, d_out, d_in)``).

    Returns:
        The components, singular values descending.
    """
    d_out, d_in = delta.shape
    r = delta.rank
    if r == 0:
        return Components(
            torch.zeros(d_out, 0, dtype=_COMPUTE), torch.zeros(0, dtype=_COMPUTE),
            torch.zeros(d_in, 0, dtype=_COMPUTE), delta.B.dtype,
        )
    Qb, Rb = torch.linalg.qr(delta.B.to(_COMPUTE))
    Qa, Ra = torch.linalg.qr(delta.A.T.to(_COMPUTE))
    Uc, S, Vch = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)
    U = Qb @ Uc
    V = Qa @ Vch.T
    if rtol > 0.0 and S.numel() and float(S[0]) > 0.0:
        keep = rtol * S[0] < S
        U, S, V = U[:, keep], S[keep], V[:, keep]
    return Components(U, S, V, delta.B.dtype)


@dataclass(frozen=True)
class Truncation:
    """A delta truncated to a target rank and what it cost.

    Attributes:
        delta: the truncated delta (rank ``<= target``).
        error: Frobenius norm of what was discarded, ``sqrt(Σ_{i>k} sigma_i²)`` (exact, Eckart-Young).
        relative_error: ``error / ||ΔW||_F`` (0 for a zero delta).
        exact: True when nothing non-zero was discarded.
        norm: Frobenius norm of the input delta (NaN when not computed because nothing was cut).
    """

    delta: LowRankDelta
    error: float
    relative_error: float
    exact: bool
    norm: float = math.nan


def truncate(delta: LowRankDelta, rank: int) -> Truncation:
    """Best rank-``rank`` approximation of ``B A``; a no-op (exact) when ``delta.rank <= rank``."""
    if rank < 0:
        raise ValueError(f"truncate: rank must be >= 0, got {rank}")
    if delta.rank <= rank:
        return Truncation(delta, 0.0, 0.0, True)
    comps = decompose(delta)
    kept = comps.select(list(range(min(rank, comps.count))))
    dropped = comps.S[rank:]
    err = math.sqrt(float((dropped**2).sum()))
    total = math.sqrt(float((comps.S**2).sum()))
    return Truncation(_balanced(kept), err, err / total if total > 0 else 0.0, err == 0.0, total)


def _balanced(delta: LowRankDelta) -> LowRankDelta:
    """Split the singular values evenly between factors (``U√S``, ``√S Vᵀ``) for numerics."""
    if delta.rank == 0:
        return delta
    col = delta.B.norm(dim=0).clamp_min(1e-30)
    root = col.sqrt()
    return LowRankDelta((delta.B / root).contiguous(), (delta.A * root[:, None]).contiguous())

"""Stability of a tier's components across a window of successive versions.

Frequency is not stability: a component counts as stable only when it is present, with the same
orientation, in each of the last ``min_consecutive`` windows. Two detectors are provided:

* ``SUBSPACE``: the cosine of the principal angle between the component's direction and the top
  singular subspace of an older version, ``||U_tᵀ u|| · ||V_tᵀ v||``, signed by whether that version
  pushes along ``u vᵀ`` with the same sign. One window = one older version, newest first.
* ``AUTOCORRELATION``: the series ``y_t = <ΔW_t, u vᵀ> / ||ΔW_t||`` (signed cosine of each version
  with the component) and its lag-1 uncentred autocorrelation over sliding windows of ``window_length``
  versions, gated by a minimum presence ``|y_t| >= presence``. A sign flip-flop gives ≈ -1, a
  transient gives 0.

A transient (only in the newest version) has no older support; a flip-flopping pattern breaks the
streak of consecutive windows, so neither is stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dynamiclora.api.policy import StabilityMethod as _ApiStabilityMethod

from .decompose import Components, decompose
from .lowrank import LowRankDelta, norm

# Defined once, in the API (see ConsensusRule).
StabilityMethod = _ApiStabilityMethod


@dataclass(frozen=True)
class StabilityConfig:
    """Parameters of the stability detector."""

    method: StabilityMethod = field(default=StabilityMethod.SUBSPACE, metadata={"help": "detector"})
    threshold: float = field(default=0.9, metadata={"help": "window score needed, in (0, 1]"})
    min_consecutive: int = field(default=2, metadata={"help": "consecutive windows above threshold"})
    window_length: int = field(default=3, metadata={"help": "versions per autocorrelation window"})
    presence: float = field(default=0.05, metadata={"help": "min |cos(ΔW_t, u vᵀ)| to count as present"})
    subspace_rtol: float = field(
        default=0.05, metadata={"help": "older version's subspace: components with sigma > rtol·sigma_max"}
    )
    min_energy_fraction: float = field(
        default=1e-4, metadata={"help": "ignore newest components below this share of module energy"}
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"StabilityConfig.threshold must be in (0, 1], got {self.threshold}")
        if self.min_consecutive < 1:
            raise ValueError(f"StabilityConfig.min_consecutive must be >= 1, got {self.min_consecutive}")
        if self.window_length < 2:
            raise ValueError(f"StabilityConfig.window_length must be >= 2, got {self.window_length}")
        if not 0.0 <= self.presence < 1.0:
            raise ValueError(f"StabilityConfig.presence must be in [0, 1), got {self.presence}")
        if not 0.0 <= self.subspace_rtol < 1.0:
            raise ValueError(f"StabilityConfig.subspace_rtol must be in [0, 1), got {self.subspace_rtol}")
        object.__setattr__(self, "method", StabilityMethod(self.method))

    def versions_needed(self) -> int:
        """Minimum window size (versions, newest included) that can ever declare stability."""
        if self.method is StabilityMethod.SUBSPACE:
            return self.min_consecutive + 1
        if self.method is StabilityMethod.RECURRENCE:
            return self.min_consecutive
        return self.window_length + self.min_consecutive - 1


@dataclass(frozen=True)
class ComponentStability:
    """Verdict for one component of the newest version.

    Attributes:
        module: module path.
        index: component index in the newest version's decomposition (sigma descending).
        sigma: its singular value.
        scores: window scores, oldest window first.
        streak: consecutive windows at or above threshold, counted back from the newest.
        stable: ``streak >= min_consecutive``.
    """

    module: str
    index: int
    sigma: float
    scores: list[float]
    streak: int
    stable: bool

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {
            "module": self.module, "index": self.index, "sigma": self.sigma,
            "scores": [round(s, 6) for s in self.scores], "streak": self.streak, "stable": self.stable,
        }


def signed_cosines(components: Components, versions: Sequence[LowRankDelta]) -> Tensor:
    """``y[t, i] = <ΔW_t, u_i v_iᵀ> / ||ΔW_t||_F`` for every version t and component i (low-rank)."""
    out = torch.zeros(len(versions), components.count, dtype=torch.float64)
    for t, version in enumerate(versions):
        if version.rank == 0:
            continue
        B = version.B.to(torch.float64)
        A = version.A.to(torch.float64)
        proj = ((components.U.T @ B) * (A @ components.V).T).sum(dim=1)  # u_iᵀ B A v_i
        total = norm(version)
        if total > 0:
            out[t] = proj / total
    return out


def subspace_scores(components: Components, older: Sequence[LowRankDelta], rtol: float) -> Tensor:
    """``s[t, i] = sign · ||U_tᵀ u_i|| · ||V_tᵀ v_i||`` against each older version's top subspace."""
    out = torch.zeros(len(older), components.count, dtype=torch.float64)
    for t, version in enumerate(older):
        c = decompose(version, rtol=rtol)
        if c.count == 0 or float(c.S[0]) == 0.0:
            continue
        cos_u = (c.U.T @ components.U).norm(dim=0)
        cos_v = (c.V.T @ components.V).norm(dim=0)
        # Orientation: does the older version push along +u vᵀ or -u vᵀ? Principal angles ignore sign.
        along = ((components.U.T @ c.U) * c.S * (components.V.T @ c.V)).sum(dim=1)
        out[t] = torch.sign(along) * cos_u * cos_v
    return out


def autocorrelation_scores(y: Tensor, window_length: int, presence: float) -> Tensor:
    """Lag-1 uncentred autocorrelation of each column of ``y`` over sliding windows (gated by presence)."""
    n_versions, k = y.shape
    n_windows = max(n_versions - window_length + 1, 0)
    out = torch.zeros(n_windows, k, dtype=torch.float64)
    for w in range(n_windows):
        seg = y[w : w + window_length]
        num = (seg[1:] * seg[:-1]).sum(dim=0)
        den = (seg[1:].square().sum(dim=0) * seg[:-1].square().sum(dim=0)).sqrt()
        rho = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
        present = (seg.abs() >= presence).all(dim=0)
        out[w] = torch.where(present, rho, torch.zeros_like(rho))
    return out


def _streak(scores: list[float], threshold: float) -> int:
    n = 0
    for s in reversed(scores):
        if s < threshold:
            break
        n += 1
    return n


def module_stability(
    module: str, versions: Sequence[LowRankDelta], config: StabilityConfig
) -> list[ComponentStability]:
    """Stability of each component of ``versions[-1]`` given the older versions before it."""
    newest = versions[-1]
    comps = decompose(newest)
    total = float(comps.energies.sum())
    if config.method is StabilityMethod.SUBSPACE:
        score_mat = subspace_scores(comps, versions[:-1], config.subspace_rtol)
    else:
        y = signed_cosines(comps, versions)
        score_mat = autocorrelation_scores(y, config.window_length, config.presence)
    result = []
    for i in range(comps.count):
        sigma = float(comps.S[i])
        scores = [float(s) for s in score_mat[:, i]]
        significant = total > 0 and sigma**2 >= config.min_energy_fraction * total
        streak = _streak(scores, config.threshold) if significant else 0
        result.append(ComponentStability(module, i, sigma, scores, streak, streak >= config.min_consecutive))
    return result


def detect_stable(
    window: Sequence[Mapping[str, LowRankDelta]], config: StabilityConfig
) -> dict[str, list[ComponentStability]]:
    """Stability of every component of the newest tier version, module by module.

    Args:
        window: successive versions of one tier, oldest first; the last one is judged.
        config: detector parameters.

    Returns:
        module -> one verdict per component of the newest version (sigma descending).
    """
    if not window:
        raise ValueError("detect_stable: the version window is empty")
    newest = window[-1]
    out: dict[str, list[ComponentStability]] = {}
    for module, delta in newest.items():
        zero = LowRankDelta.zeros(*delta.shape, dtype=delta.B.dtype)
        series = [v.get(module, zero) for v in window]
        for t, v in enumerate(series):
            if v.shape != delta.shape:
                raise ValueError(f"version {t} of module {module} has shape {v.shape}, newest has {delta.shape}")
        out[module] = module_stability(module, series, config)
    return out


def subspace_similarity(x: LowRankDelta, y: LowRankDelta, k: int) -> float:
    """Mean squared cosine of the principal angles between the top-``k`` left and right subspaces.

    1 means the two versions span the same top-k directions; 0 means orthogonal.
    """
    cx, cy = decompose(x), decompose(y)
    k = min(k, cx.count, cy.count)
    if k == 0:
        return 0.0
    left = torch.linalg.svdvals(cx.U[:, :k].T @ cy.U[:, :k]).square().mean()
    right = torch.linalg.svdvals(cx.V[:, :k].T @ cy.V[:, :k]).square().mean()
    return float(left * right)

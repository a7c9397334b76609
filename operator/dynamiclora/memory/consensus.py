"""Resonance consensus: combine N agents' deltas into one shared-tier delta.

``RESONANCE`` is a weighted mean of the agents' dense-equivalent deltas computed in low-rank form
(concatenate the factors, QR, small SVD, truncate), so directions several agents share add up and
conflicting ones cancel instead of being voted away. Poisoning is resisted per module by
(1) clipping every agent's delta to ``norm_clip`` x the median norm, (2) a robust center (smoothed
Weiszfeld iterations computed exactly from the ``N x N`` Gram matrix of the deltas), and
(3) weighting each agent by its alignment (cosine) with that center relative to the median
alignment: full weight above ``alignment_full``, zero below ``alignment_floor``, linear between. Agents
that disagree with the fleet get zero weight; honest agents keep equal weights, so the result is
their plain mean. Optional per-agent trust weights
multiply in. ``MEAN`` (plain weighted mean) and ``TIES`` (trim, elect sign, disjoint mean; dense,
O(d²), baseline only) go through the same interface.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from dynamiclora.api.common import ConsensusRule as _ApiConsensusRule

from .decompose import truncate
from .lowrank import LowRankDelta, TierDelta, concat, inner, tier_energy, tier_inner

# Defined once, in the API: the CRD's enum, the Job's option and the core's rules are the same values.
ConsensusRule = _ApiConsensusRule


@dataclass(frozen=True)
class ConsensusConfig:
    """Knobs of the consensus rules."""

    rank: int | None = field(default=None, metadata={"help": "output rank per module; None = max input rank"})
    weiszfeld_iterations: int = field(default=50, metadata={"help": "robust-center iterations"})
    ties_density: float = field(default=0.2, metadata={"help": "TIES: fraction of entries kept per agent"})
    norm_clip: float = field(default=1.5, metadata={"help": "resonance: clip agents to this x median norm"})
    alignment_floor: float = field(
        default=0.5, metadata={"help": "resonance: zero weight below this x median alignment with the center"}
    )
    alignment_full: float = field(
        default=0.8, metadata={"help": "resonance: full weight above this x median alignment"}
    )
    outlier_threshold: float | None = field(default=None, metadata={
        "help": "agents whose whole-tier cosine with the first consensus is below this are excluded and the "
                "consensus recomputed without them; None = keep every agent"})

    def __post_init__(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"ConsensusConfig.rank must be >= 1, got {self.rank}")
        if self.weiszfeld_iterations < 1:
            raise ValueError(f"ConsensusConfig.weiszfeld_iterations must be >= 1, got {self.weiszfeld_iterations}")
        if not 0.0 < self.ties_density <= 1.0:
            raise ValueError(f"ConsensusConfig.ties_density must be in (0, 1], got {self.ties_density}")
        if self.norm_clip < 1.0:
            raise ValueError(f"ConsensusConfig.norm_clip must be >= 1, got {self.norm_clip}")
        if not 0.0 <= self.alignment_floor < self.alignment_full <= 1.0:
            raise ValueError(
                "ConsensusConfig needs 0 <= alignment_floor < alignment_full <= 1, got "
                f"{self.alignment_floor}, {self.alignment_full}"
            )
        if self.outlier_threshold is not None and not -1.0 <= self.outlier_threshold <= 1.0:
            raise ValueError(f"ConsensusConfig.outlier_threshold must be in [-1, 1], got {self.outlier_threshold}")


@dataclass(frozen=True)
class ModuleConsensus:
    """Per-module outcome: effective agent weights (sum 1), alignments and truncation error."""

    weights: list[float]
    alignment: list[float]
    truncation_error: float


@dataclass(frozen=True)
class ConsensusReport:
    """What the consensus did.

    Attributes:
        rule: the rule used.
        modules: per-module weights/alignment/error.
        agent_weights: mean effective weight of each agent over modules (sum 1).
        truncation_error: root of the summed squared per-module truncation errors.
        excluded: agents left out as outliers (``ConsensusConfig.outlier_threshold``), by index.
    """

    rule: ConsensusRule
    modules: dict[str, ModuleConsensus]
    agent_weights: list[float]
    truncation_error: float
    excluded: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON-able summary."""
        return {"rule": str(self.rule), "agentWeights": [round(w, 6) for w in self.agent_weights],
                "truncationError": self.truncation_error, "excluded": list(self.excluded)}


RuleResult = tuple[LowRankDelta, list[float], list[float]]
ModuleRule = Callable[[list[LowRankDelta], Tensor, ConsensusConfig], RuleResult]
"""(deltas, trust weights summing to 1, config) -> (untruncated combined delta, weights, alignment)."""


def _gram(deltas: Sequence[LowRankDelta]) -> Tensor:
    n = len(deltas)
    g = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i, n):
            g[i, j] = g[j, i] = inner(deltas[i], deltas[j])
    return g


def _mean_rule(deltas: list[LowRankDelta], trust: Tensor, cfg: ConsensusConfig) -> RuleResult:
    w = trust.tolist()
    return concat(deltas, w), w, [1.0] * len(deltas)


def _resonance_rule(deltas: list[LowRankDelta], trust: Tensor, cfg: ConsensusConfig) -> RuleResult:
    g = _gram(deltas)
    norms = g.diagonal().clamp_min(0).sqrt()
    positive = norms[(norms > 0) & (trust > 0)]
    if positive.numel() == 0:
        return concat(deltas, trust.tolist()), trust.tolist(), [0.0] * len(deltas)
    cap = cfg.norm_clip * float(torch.quantile(positive, 0.5))
    clip = (cap / norms.clamp_min(1e-300)).clamp(max=1.0)
    gc = clip[:, None] * g * clip[None, :]
    w = _robust_center(gc, trust, cfg.weiszfeld_iterations)
    gw = gc @ w
    center = float(w @ gw) ** 0.5
    cnorm = gc.diagonal().clamp_min(0).sqrt()
    align = torch.where(cnorm > 0, gw / (cnorm.clamp_min(1e-300) * max(center, 1e-300)), torch.zeros_like(cnorm))
    ref = float(torch.quantile(align[trust > 0], 0.5))
    if ref > 0:
        # Ramp: full weight from alignment_full x median alignment up, zero below alignment_floor x.
        lo, hi = cfg.alignment_floor * ref, cfg.alignment_full * ref
        rel = ((align - lo) / (hi - lo)).clamp(0.0, 1.0)
    else:
        rel = (align > 0).to(align.dtype)
    eff = trust * rel
    if float(eff.sum()) <= 0:
        eff = trust.clone()
    eff = eff / eff.sum()
    combined = concat([d.scaled(float(c)) for d, c in zip(deltas, clip, strict=True)], eff.tolist())
    return combined, eff.tolist(), align.tolist()


def _robust_center(g: Tensor, trust: Tensor, iterations: int) -> Tensor:
    """Weights ``w`` (sum 1) of a robust center ``Σ w_i Δ_i`` from the Gram matrix alone.

    Smoothed Weiszfeld iterations (a Huber-type M-estimator): each agent is weighted by
    ``trust / max(distance, median distance)``, so agents at typical distances count equally (the
    center is their mean, and symmetric configurations stay symmetric) while far-away agents are
    down-weighted in proportion to their distance. No dense delta is formed: squared distances are
    ``wᵀGw - 2(Gw)_j + G_jj``.
    """
    w = trust.clone()
    active = trust > 0
    for _ in range(iterations):
        gw = g @ w
        dist = (w @ gw - 2 * gw + g.diagonal()).clamp_min(0).sqrt()
        floor = float(torch.quantile(dist[active], 0.5))
        if floor <= 0:
            break
        w_new = trust / dist.clamp_min(floor)
        w_new = w_new / w_new.sum()
        if float((w_new - w).abs().max()) < 1e-12:
            w = w_new
            break
        w = w_new
    return w


def _ties_rule(deltas: list[LowRankDelta], trust: Tensor, cfg: ConsensusConfig) -> RuleResult:
    dense = torch.stack([d.dense().to(torch.float64) for d in deltas])  # baseline: O(N d²)
    flat = dense.reshape(len(deltas), -1)
    k = max(1, int(cfg.ties_density * flat.shape[1]))
    thresh = flat.abs().kthvalue(flat.shape[1] - k + 1, dim=1).values
    trimmed = torch.where(flat.abs() >= thresh[:, None], flat, torch.zeros_like(flat)) * trust[:, None]
    sign = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == sign[None, :]) & (trimmed != 0)
    count = (agree.to(torch.float64) * trust[:, None]).sum(dim=0).clamp_min(1e-300)
    merged = (trimmed * agree).sum(dim=0) / count
    merged = merged.reshape(dense.shape[1:])
    U, S, Vh = torch.linalg.svd(merged, full_matrices=False)
    dtype = deltas[0].B.dtype
    return LowRankDelta((U * S).to(dtype), Vh.to(dtype)), trust.tolist(), [1.0] * len(deltas)


RULES: dict[ConsensusRule, ModuleRule] = {
    ConsensusRule.RESONANCE: _resonance_rule,
    ConsensusRule.MEAN: _mean_rule,
    ConsensusRule.TIES: _ties_rule,
}
"""Registry of module-level rules; add an entry to plug in a new rule."""


def consensus(
    deltas: Sequence[Mapping[str, LowRankDelta]],
    rule: ConsensusRule | str = ConsensusRule.RESONANCE,
    weights: Sequence[float] | None = None,
    config: ConsensusConfig | None = None,
) -> tuple[TierDelta, ConsensusReport]:
    """Combine N agents' tier deltas into one shared-tier delta.

    Args:
        deltas: one tier delta per agent. A module missing for an agent counts as a zero delta.
        rule: combination rule.
        weights: optional per-agent trust weights (>= 0, not all 0); default uniform.
        config: output rank and rule parameters.

    Returns:
        ``(delta, report)``; the delta is truncated to the output rank (error in the report).
    """
    cfg = config or ConsensusConfig()
    rule = ConsensusRule(rule)
    n = len(deltas)
    if n == 0:
        raise ValueError("consensus needs at least one agent delta")
    trust = torch.ones(n, dtype=torch.float64) if weights is None else torch.tensor(list(weights), dtype=torch.float64)
    if trust.shape != (n,):
        raise ValueError(f"consensus got {n} deltas but {trust.numel()} weights")
    if bool((trust < 0).any()) or float(trust.sum()) <= 0 or not bool(torch.isfinite(trust).all()):
        raise ValueError(f"consensus weights must be finite, >= 0 and not all zero, got {trust.tolist()}")
    out, report = _combine(deltas, rule, trust / trust.sum(), cfg)
    if cfg.outlier_threshold is None:
        return out, report
    excluded = outliers(deltas, out, cfg.outlier_threshold)
    if not excluded or len(excluded) == n:  # nobody to drop, or nobody left to agree with
        return out, report
    kept = trust.clone()
    kept[excluded] = 0.0
    if float(kept.sum()) <= 0:
        return out, report
    out, report = _combine(deltas, rule, kept / kept.sum(), cfg)
    return out, replace(report, excluded=excluded)


def outliers(deltas: Sequence[Mapping[str, LowRankDelta]], center: Mapping[str, LowRankDelta],
             threshold: float) -> list[int]:
    """Agents whose whole-tier cosine with ``center`` is below ``threshold`` (an empty delta never is)."""
    center_energy = tier_energy(center)
    out = []
    for i, d in enumerate(deltas):
        e = tier_energy(d)
        if e <= 0 or center_energy <= 0:
            continue
        if tier_inner(d, center) / (e * center_energy) ** 0.5 < threshold:
            out.append(i)
    return out


def _combine(deltas: Sequence[Mapping[str, LowRankDelta]], rule: ConsensusRule, trust: Tensor,
             cfg: ConsensusConfig) -> tuple[TierDelta, ConsensusReport]:
    """One pass of ``rule`` over every module with normalised ``trust``."""
    n = len(deltas)
    out: TierDelta = {}
    modules: dict[str, ModuleConsensus] = {}
    err_sq = 0.0
    for module in sorted(set().union(*[d.keys() for d in deltas])):
        present = [d[module] for d in deltas if module in d]
        shape, dtype = present[0].shape, present[0].B.dtype
        items = [d.get(module, LowRankDelta.zeros(*shape, dtype=dtype)) for d in deltas]
        for i, it in enumerate(items):
            if it.shape != shape:
                raise ValueError(f"consensus: agent {i} module {module} has shape {it.shape}, expected {shape}")
        combined, eff, align = RULES[rule](items, trust, cfg)
        rank = cfg.rank or max(d.rank for d in present)
        cut = truncate(combined, rank)
        out[module] = cut.delta
        err_sq += cut.error**2
        modules[module] = ModuleConsensus(eff, align, cut.error)
    agent_w = [sum(m.weights[i] for m in modules.values()) / max(len(modules), 1) for i in range(n)]
    return out, ConsensusReport(rule, modules, agent_w, err_sq**0.5)

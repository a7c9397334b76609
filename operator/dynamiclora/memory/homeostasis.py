"""Homeostasis: keep a tier within its energy budget, shedding FREE components first.

When a tier's energy (``Σ sigma²`` over modules) exceeds its budget, FREE components are removed, least
reinforced first (the last one only shrunk as far as needed). Only if that is not enough are SCREENED
components scaled down uniformly. Each overshoot raises both phase thresholds (so more components
become FREE and shed earlier next time); a tier well under budget relaxes them back toward the base.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .decompose import decompose
from .lowrank import LowRankDelta, TierDelta, tier_energy
from .phases import Phase, PhaseConfig, PhaseTracker


@dataclass(frozen=True)
class EnergyBudget:
    """A tier's energy budget and how fast thresholds adapt."""

    max_energy: float = field(metadata={"help": "budget for Σ sigma² over the tier's modules"})
    gain: float = field(default=0.5, metadata={"help": "threshold increase per unit of relative overshoot"})
    relax: float = field(default=0.1, metadata={"help": "fraction thresholds move back to base when under 50%"})

    def __post_init__(self) -> None:
        if self.max_energy <= 0:
            raise ValueError(f"EnergyBudget.max_energy must be > 0, got {self.max_energy}")
        if self.gain < 0 or not 0 <= self.relax <= 1:
            raise ValueError(f"EnergyBudget needs gain >= 0 and relax in [0, 1], got {self.gain}, {self.relax}")


@dataclass(frozen=True)
class Shed:
    """One component removed or shrunk."""

    module: str
    index: int
    phase: Phase
    energy_removed: float


@dataclass(frozen=True)
class HomeostasisResult:
    """Outcome of one homeostasis step.

    Attributes:
        tier: the tier after shedding.
        energy_before: tier energy before.
        energy_after: tier energy after (``<= max_energy``).
        shed: components removed/shrunk, FREE ones first.
        screened_scale: factor applied to SCREENED sigma (1.0 when FREE shedding sufficed).
        config: phase thresholds adapted for the next step.
    """

    tier: TierDelta
    energy_before: float
    energy_after: float
    shed: list[Shed]
    screened_scale: float
    config: PhaseConfig

    def to_dict(self) -> dict[str, object]:
        """JSON-able summary."""
        return {
            "energyBefore": self.energy_before, "energyAfter": self.energy_after,
            "shedFree": sum(1 for s in self.shed if s.phase is Phase.FREE),
            "screenedScale": self.screened_scale,
            "screenThreshold": self.config.screen_threshold, "freeThreshold": self.config.free_threshold,
        }


def regulate(
    tier: Mapping[str, LowRankDelta], tracker: PhaseTracker, budget: EnergyBudget,
    base: PhaseConfig | None = None,
) -> HomeostasisResult:
    """Bring ``tier`` within ``budget``; FREE components go first.

    Args:
        tier: the tier's current delta (as last passed to ``tracker.observe``).
        tracker: supplies phases and reinforcement per component.
        budget: the energy budget.
        base: thresholds to relax toward when comfortably under budget (default: tracker's config).
    """
    before = tier_energy(tier)
    cfg = tracker.config
    decomps = {m: decompose(d, rtol=1e-6) for m, d in tier.items()}
    sig = {m: c.S.clone() for m, c in decomps.items()}
    shed: list[Shed] = []
    excess = before - budget.max_energy
    scale = 1.0
    if excess > 0:
        free = [
            (tracker.reinforcement(m)[i], m, i)
            for m in decomps for i, p in enumerate(tracker.phases(m)) if p is Phase.FREE
        ]
        for _, m, i in sorted(free):
            if excess <= 0:
                break
            e = float(sig[m][i]) ** 2
            removed = min(e, excess)
            sig[m][i] = math.sqrt(e - removed)
            excess -= removed
            shed.append(Shed(m, i, Phase.FREE, removed))
        if excess > 0:
            screened = sum(float(sig[m][i]) ** 2 for m in decomps
                           for i, p in enumerate(tracker.phases(m)) if p is Phase.SCREENED)
            if screened > 0:
                scale = math.sqrt(max(screened - excess, 0.0) / screened)
                for m in decomps:
                    for i, p in enumerate(tracker.phases(m)):
                        if p is Phase.SCREENED:
                            e = float(sig[m][i]) ** 2
                            sig[m][i] *= scale
                            shed.append(Shed(m, i, Phase.SCREENED, e * (1.0 - scale**2)))
    out = {m: c.with_singular_values(sig[m]).to_delta() for m, c in decomps.items()}
    after = tier_energy(out)
    new_cfg = _adapt(cfg, base or cfg, before, budget)
    tracker.config = new_cfg
    return HomeostasisResult(out, before, after, shed, scale, new_cfg)


def _adapt(cfg: PhaseConfig, base: PhaseConfig, energy: float, budget: EnergyBudget) -> PhaseConfig:
    """Raise both thresholds after an overshoot; relax toward ``base`` when under half the budget."""
    ratio = energy / budget.max_energy
    if ratio > 1.0:
        up = 1.0 + budget.gain * (ratio - 1.0)
        screen = min(cfg.screen_threshold * up, 1.0)
        free = min(cfg.free_threshold * up, screen * 0.999)
    elif ratio < 0.5:
        screen = cfg.screen_threshold + budget.relax * (base.screen_threshold - cfg.screen_threshold)
        free = cfg.free_threshold + budget.relax * (base.free_threshold - cfg.free_threshold)
    else:
        return cfg
    return replace(cfg, screen_threshold=screen, free_threshold=free)

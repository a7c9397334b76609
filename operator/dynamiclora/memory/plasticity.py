"""The learning step's memory dynamics, as the training Job runs them around one update of a tier.

Between two versions of a tier, time passes in interactions, not seconds: a tier that received ``n``
new records since its last version first *decays* by ``n`` interactions (FREE components fast,
SCREENED ones slowly), then the update trains on top of it; afterwards the phases are updated from
the step (a component the update moves along is reinforced) and *homeostasis* sheds FREE
components first when the tier exceeds its energy budget.

Rates are given per reference hour of use, as the ``LoRATier`` spec states them: ``freeDecay`` is the
share of a FREE component's magnitude lost over ``referenceInteractionsPerHour`` interactions; the
per-interaction rate follows, so a busy tier forgets in fewer wall-clock minutes than a quiet one and
the same in interactions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .decompose import decompose
from .homeostasis import EnergyBudget, HomeostasisResult, regulate
from .lowrank import LowRankDelta, TierDelta
from .phases import ComponentState, PhaseConfig, PhaseTracker, apply_decay

# A share of 1 would be an infinite rate; this keeps exp(-rate * n) exactly 0 for any n >= 1 in float64.
_MAX_RATE = 800.0


def per_interaction_rate(share_per_reference: float, reference_interactions: float) -> float:
    """The rate ``g`` with ``exp(-g * reference_interactions) = 1 - share_per_reference``."""
    if not 0.0 <= share_per_reference <= 1.0:
        raise ValueError(f"decay share must be in [0, 1], got {share_per_reference}")
    if reference_interactions <= 0:
        raise ValueError(f"reference interactions must be > 0, got {reference_interactions}")
    if share_per_reference >= 1.0:
        return _MAX_RATE
    return min(-math.log1p(-share_per_reference) / reference_interactions, _MAX_RATE)


@dataclass(frozen=True)
class Plasticity:
    """A tier's memory dynamics between versions (mirrors ``LoRATier spec.plasticity``)."""

    phases: PhaseConfig = field(default_factory=PhaseConfig, metadata={"help": "thresholds and decay rates"})
    energy_budget: float | None = field(default=None, metadata={
        "help": "maximum squared Frobenius norm of the tier; None = unlimited"})

    @classmethod
    def from_spec(cls, screen_threshold: float, free_threshold: float, free_decay: float, screened_decay: float,
                  reference_interactions: float, energy_budget: float | None) -> Plasticity:
        """Build from the spec's per-reference-hour shares."""
        phases = PhaseConfig(
            screen_threshold=screen_threshold, free_threshold=free_threshold,
            free_decay_per_interaction=per_interaction_rate(free_decay, reference_interactions),
            screened_decay_per_interaction=per_interaction_rate(screened_decay, reference_interactions),
        )  # fmt: skip
        return cls(phases, energy_budget)


@dataclass(frozen=True)
class DecayReport:
    """What the decay before an update did."""

    interactions: int
    free_factor: float
    screened_factor: float

    def to_dict(self) -> dict[str, float]:
        """JSON-able form (recorded in the version's statistics)."""
        return {"interactions": self.interactions, "freeFactor": self.free_factor,
                "screenedFactor": self.screened_factor}


def tracker_for(tier: Mapping[str, LowRankDelta], config: PhaseConfig,
                states: Mapping[str, list[ComponentState]]) -> PhaseTracker:
    """A tracker holding ``states`` where they match ``tier``'s components, FREE components elsewhere."""
    tracker = PhaseTracker(config)
    for module, delta in tier.items():
        known = states.get(module)
        comps = decompose(delta, rtol=1e-6)
        if known is not None and len(known) == comps.count:
            tracker.states[module] = list(known)
        else:
            tracker.states[module] = [ComponentState(comps.U[:, i], comps.V[:, i]) for i in range(comps.count)]
    return tracker


def decay_before_update(tier: Mapping[str, LowRankDelta], tracker: PhaseTracker,
                        interactions: int) -> tuple[TierDelta, DecayReport]:
    """The tier as it stands after ``interactions`` more interactions: each component decays by its phase."""
    cfg = tracker.config
    report = DecayReport(interactions, math.exp(-cfg.free_decay_per_interaction * interactions),
                         math.exp(-cfg.screened_decay_per_interaction * interactions))
    if interactions <= 0 or not tier:
        return dict(tier), replace(report, free_factor=1.0, screened_factor=1.0)
    return apply_decay(tier, tracker, interactions), report


def after_update(previous: Mapping[str, LowRankDelta], trained: Mapping[str, LowRankDelta],
                 plasticity: Plasticity, states: Mapping[str, list[ComponentState]]
                 ) -> tuple[TierDelta, PhaseTracker, HomeostasisResult | None]:  # fmt: skip
    """Phases from the step ``previous -> trained``, then homeostasis within the energy budget.

    Returns ``(the tier to publish, its tracker, the homeostasis result or None without a budget)``.
    """
    tracker = tracker_for(previous, plasticity.phases, states) if previous else PhaseTracker(plasticity.phases)
    tracker.observe(previous, trained)
    if plasticity.energy_budget is None:
        return dict(trained), tracker, None
    result = regulate(trained, tracker, EnergyBudget(plasticity.energy_budget), base=plasticity.phases)
    return result.tier, tracker, result

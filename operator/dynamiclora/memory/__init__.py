"""dynamiclora.memory: the adapter memory core (plain PyTorch + PEFT, no Kubernetes).

Public API (see docs/memory.md):

* I/O: :func:`load_adapter`, :func:`save_adapter` (PEFT adapter dir <-> :data:`TierDelta`).
* Types: :class:`LowRankDelta` (``B @ A``, scaling folded in), :data:`TierDelta`.
* :func:`decompose` / :func:`truncate`: rank-1 components via QR + small SVD.
* :func:`detect_stable`: stability over a window of versions.
* :func:`migrate`: fast -> slow consolidation with bandwidth limits.
* :class:`PhaseTracker`, :func:`apply_decay`, :func:`emergent_time_scale`: SCREENED/FREE phases.
* :func:`consensus`: resonance consensus (and MEAN / TIES baselines) for shared tiers.
* :func:`regulate`: homeostasis (energy budget).
* :func:`compose`: collapse a stack into one servable adapter.
* :func:`delta_statistics`: JSON-able statistics.
* :class:`TierStack`, :func:`activate_tiers`: all tiers active in one PEFT model.
"""

from .compose import ComposeReport, compose
from .consensus import RULES, ConsensusConfig, ConsensusReport, ConsensusRule, consensus
from .decompose import Components, Truncation, decompose, truncate
from .homeostasis import EnergyBudget, HomeostasisResult, regulate
from .lowrank import (
    LowRankDelta,
    TierDelta,
    concat,
    energy,
    inner,
    norm,
    tier_add,
    tier_distance,
    tier_energy,
    tier_inner,
    tier_scaled,
    tier_sub,
)
from .migration import ComponentDecision, Decision, MigrationPolicy, MigrationReport, migrate
from .peft_io import AdapterMeta, default_target_modules, load_adapter, save_adapter
from .phases import (
    Phase,
    PhaseConfig,
    PhaseTracker,
    TimeScale,
    apply_decay,
    emergent_time_scale,
    interaction_rate,
    next_phase,
)
from .stability import ComponentStability, StabilityConfig, StabilityMethod, detect_stable, subspace_similarity
from .stack import Tier, TierStack, activate_tiers, freeze_except
from .stats import delta_statistics

__all__ = [
    "RULES",
    "AdapterMeta",
    "ComponentDecision",
    "ComponentStability",
    "Components",
    "ComposeReport",
    "ConsensusConfig",
    "ConsensusReport",
    "ConsensusRule",
    "Decision",
    "EnergyBudget",
    "HomeostasisResult",
    "LowRankDelta",
    "MigrationPolicy",
    "MigrationReport",
    "Phase",
    "PhaseConfig",
    "PhaseTracker",
    "StabilityConfig",
    "StabilityMethod",
    "Tier",
    "TierDelta",
    "TierStack",
    "TimeScale",
    "Truncation",
    "activate_tiers",
    "apply_decay",
    "compose",
    "concat",
    "consensus",
    "decompose",
    "default_target_modules",
    "delta_statistics",
    "detect_stable",
    "emergent_time_scale",
    "energy",
    "freeze_except",
    "inner",
    "interaction_rate",
    "load_adapter",
    "migrate",
    "next_phase",
    "norm",
    "regulate",
    "save_adapter",
    "subspace_similarity",
    "tier_add",
    "tier_distance",
    "tier_energy",
    "tier_inner",
    "tier_scaled",
    "tier_sub",
    "truncate",
]

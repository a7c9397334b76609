"""Migration (consolidation) of stable components from a faster tier into a slower one.

Stable components of the source tier's newest version are added to the destination and removed from
the source. The source keeps its other components exactly; the destination is stored at its own rank,
exactly when the sum fits and SVD-truncated otherwise (the discarded energy is the reported error, so
``new_source + new_dest == source + dest`` up to that error). A bandwidth limit (count and energy
fraction per step) stops avalanches; an emergency bypass lets critical components through anyway.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from .decompose import decompose, truncate
from .lowrank import LowRankDelta, TierDelta, concat, tier_add, tier_energy
from .stability import ComponentStability, StabilityConfig, detect_stable


class Decision(enum.StrEnum):
    """What happened to one stable component."""

    MIGRATED = "migrated"
    THROTTLED = "throttled"
    BYPASSED = "bypassed"


@dataclass(frozen=True)
class MigrationPolicy:
    """When and how much moves up in one step (mirrors the MigrationPolicy custom resource)."""

    stability: StabilityConfig = field(default_factory=StabilityConfig, metadata={"help": "detector"})
    max_migrations: int = field(default=8, metadata={"help": "components moved per step (all modules)"})
    max_energy_fraction: float = field(
        default=0.5, metadata={"help": "share of the source tier's energy moved per step, in (0, 1]"}
    )
    emergency_bypass: bool = field(default=True, metadata={"help": "let critical components bypass limits"})
    bypass_energy_fraction: float | None = field(
        default=None,
        metadata={"help": "a stable component above this share of its tier's energy is critical; None = only `force`"},
    )
    bypass_min_stability: float | None = field(
        default=None,
        metadata={"help": "a stable component whose newest stability score reaches this is critical; None = off"},
    )
    dest_rank: int | None = field(
        default=None, metadata={"help": "destination tier's rank; None = its current max (source's if empty)"}
    )
    dry_run: bool = field(default=False, metadata={"help": "decide and report, change nothing"})

    def __post_init__(self) -> None:
        if self.max_migrations < 0:
            raise ValueError(f"MigrationPolicy.max_migrations must be >= 0, got {self.max_migrations}")
        if not 0.0 < self.max_energy_fraction <= 1.0:
            raise ValueError(
                f"MigrationPolicy.max_energy_fraction must be in (0, 1], got {self.max_energy_fraction}"
            )
        if self.bypass_energy_fraction is not None and not 0.0 < self.bypass_energy_fraction <= 1.0:
            raise ValueError(
                f"MigrationPolicy.bypass_energy_fraction must be in (0, 1], got {self.bypass_energy_fraction}"
            )
        if self.bypass_min_stability is not None and not 0.0 < self.bypass_min_stability <= 1.0:
            raise ValueError(
                f"MigrationPolicy.bypass_min_stability must be in (0, 1], got {self.bypass_min_stability}"
            )
        if self.dest_rank is not None and self.dest_rank < 1:
            raise ValueError(f"MigrationPolicy.dest_rank must be >= 1, got {self.dest_rank}")


@dataclass(frozen=True)
class ComponentDecision:
    """One stable component's fate (the operator copies these into MigrationPolicy status)."""

    module: str
    index: int
    sigma: float
    energy_fraction: float
    decision: Decision
    reason: str

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {
            "module": self.module, "index": self.index, "sigma": self.sigma,
            "energyFraction": self.energy_fraction, "decision": str(self.decision), "reason": self.reason,
        }


@dataclass(frozen=True)
class MigrationReport:
    """Everything a migration step decided and what it cost.

    Attributes:
        decisions: one entry per stable component (migrated, throttled with reason, or bypassed).
        stability: per module, the detector's verdict for every component of the newest version.
        moved_energy_fraction: share of the source tier's energy that moved.
        truncation_error: Frobenius norm discarded when storing the destination at its rank.
        relative_error: ``truncation_error / ||source + dest||``.
        dest_rank: rank the destination was stored at.
        dry_run: nothing was changed.
    """

    decisions: list[ComponentDecision]
    stability: dict[str, list[ComponentStability]]
    moved_energy_fraction: float
    truncation_error: float
    relative_error: float
    dest_rank: int
    dry_run: bool

    def count(self, decision: Decision) -> int:
        """Number of components with that decision."""
        return sum(1 for d in self.decisions if d.decision is decision)

    def to_dict(self) -> dict[str, object]:
        """JSON-able summary for status and logs."""
        return {
            "migrated": self.count(Decision.MIGRATED), "bypassed": self.count(Decision.BYPASSED),
            "throttled": self.count(Decision.THROTTLED),
            "decisions": [d.to_dict() for d in self.decisions],
            "movedEnergyFraction": self.moved_energy_fraction, "truncationError": self.truncation_error,
            "relativeError": self.relative_error, "destRank": self.dest_rank, "dryRun": self.dry_run,
        }


def _critical(c: ComponentStability, energy_fraction: float, policy: MigrationPolicy) -> bool:
    """Critical = very energetic, or judged stable with a score at or above the bypass level."""
    if policy.bypass_energy_fraction is not None and energy_fraction >= policy.bypass_energy_fraction:
        return True
    level = policy.bypass_min_stability
    return level is not None and bool(c.scores) and c.scores[-1] >= level


def _decide(
    stable: list[ComponentStability], total: float, policy: MigrationPolicy, force: Collection[tuple[str, int]]
) -> list[ComponentDecision]:
    """Bandwidth allocation: strongest stable components first, critical ones may bypass."""
    out: list[ComponentDecision] = []
    moved_count, moved_energy = 0, 0.0
    budget = policy.max_energy_fraction * total
    for c in sorted(stable, key=lambda c: -c.sigma):
        e = c.sigma**2
        frac = e / total if total > 0 else 0.0
        critical = (c.module, c.index) in force or _critical(c, frac, policy)
        if moved_count >= policy.max_migrations:
            reason = f"count limit: {policy.max_migrations} per step"
        elif moved_energy + e > budget * (1 + 1e-9):
            reason = f"energy limit: {policy.max_energy_fraction:.3g} of tier energy per step"
        else:
            moved_count += 1
            moved_energy += e
            out.append(ComponentDecision(c.module, c.index, c.sigma, frac, Decision.MIGRATED, "stable"))
            continue
        if critical and policy.emergency_bypass:
            # Bypassed components do not consume bandwidth: the limit exists for routine traffic.
            out.append(ComponentDecision(c.module, c.index, c.sigma, frac, Decision.BYPASSED, f"critical; {reason}"))
        else:
            out.append(ComponentDecision(c.module, c.index, c.sigma, frac, Decision.THROTTLED, reason))
    return out


def migrate(
    window: Sequence[Mapping[str, LowRankDelta]],
    source: Mapping[str, LowRankDelta],
    dest: Mapping[str, LowRankDelta],
    policy: MigrationPolicy,
    force: Collection[tuple[str, int]] = (),
) -> tuple[TierDelta, TierDelta, MigrationReport]:
    """Move the source tier's stable components into the destination tier.

    Args:
        window: successive versions of the source tier, oldest first (judged: the last one).
        source: the source tier's current delta (usually ``window[-1]``); component indices in the
            report refer to its decomposition.
        dest: the destination (slower) tier's current delta.
        policy: detector, bandwidth and rank settings.
        force: ``(module, component index)`` pairs flagged critical by the caller (bypass limits
            when stable and ``policy.emergency_bypass``).

    Returns:
        ``(new_source, new_dest, report)``; with ``policy.dry_run`` the tiers are returned unchanged.
    """
    judged = [*list(window)[:-1], source] if window else [source]
    stability = detect_stable(judged, policy.stability)
    total = tier_energy(source)
    stable = [c for verdicts in stability.values() for c in verdicts if c.stable]
    decisions = _decide(stable, total, policy, set(force))
    moving = [d for d in decisions if d.decision in (Decision.MIGRATED, Decision.BYPASSED)]
    moved_fraction = sum(d.sigma**2 for d in moving) / total if total > 0 else 0.0
    # Default: the destination's current rank; a still-empty destination takes the source's rank.
    dest_rank = policy.dest_rank or max([d.rank for d in dest.values()] or [d.rank for d in source.values()] or [1])
    if policy.dry_run:
        report = MigrationReport(decisions, stability, moved_fraction, 0.0, 0.0, dest_rank, True)
        return dict(source), dict(dest), report

    by_module: dict[str, list[int]] = {}
    for d in moving:
        by_module.setdefault(d.module, []).append(d.index)
    new_source: TierDelta = {}
    new_dest: TierDelta = {m: d for m, d in dest.items()}
    err_sq = 0.0
    for module, delta in source.items():
        idx = by_module.get(module)
        if not idx:
            new_source[module] = delta
            continue
        comps = decompose(delta)
        new_source[module] = comps.complement(idx)
        merged = comps.select(idx) if module not in dest else concat([dest[module], comps.select(idx)])
        cut = truncate(merged, dest_rank)
        new_dest[module] = cut.delta
        err_sq += cut.error**2
    for module, delta in dest.items():
        if module not in by_module and delta.rank > dest_rank:
            cut = truncate(delta, dest_rank)
            new_dest[module] = cut.delta
            err_sq += cut.error**2
    combined = math.sqrt(tier_energy(tier_add([source, dest])))
    err = math.sqrt(err_sq)
    report = MigrationReport(
        decisions, stability, moved_fraction, err, err / combined if combined > 0 else 0.0, dest_rank, False
    )
    return new_source, new_dest, report

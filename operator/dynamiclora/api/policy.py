"""The ``MigrationPolicy`` custom resource: when and how stable patterns move to slower tiers."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field, StrictBool, model_validator

from dynamiclora.api.common import (
    DNS_SUBDOMAIN,
    LEVEL_ORDER_CEL,
    ApiModel,
    Condition,
    ConsensusRule,
    Duration,
    ObjectMeta,
    TierLevel,
    cel,
)


class TierPair(ApiModel):
    """A migration edge from a faster tier level to a slower one."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"{LEVEL_ORDER_CEL}[self.target] > {LEVEL_ORDER_CEL}[self.source]",
                    "pairs[].target must be a slower tier than pairs[].source",
                )
            ]
        }
    )

    source: TierLevel = Field(description="Faster tier level patterns leave.")
    target: TierLevel = Field(description="Slower tier level patterns move into.")

    @model_validator(mode="after")
    def _upward(self) -> TierPair:
        if TierLevel(self.target).rank_order <= TierLevel(self.source).rank_order:
            raise ValueError("pairs[].target must be a slower tier than pairs[].source")
        return self


class StabilityMethod(StrEnum):
    SUBSPACE = "subspace"
    AUTOCORRELATION = "autocorrelation"
    RECURRENCE = "recurrence"


class StabilityDetector(ApiModel):
    """A component is stable when it persists across successive versions of its tier."""

    method: StabilityMethod = Field(
        default=StabilityMethod.SUBSPACE,
        description="subspace: similarity of top singular subspaces across versions; autocorrelation: "
        "agreement of successive update directions; recurrence: answers the source tier was taught in several "
        "of its training rounds move up (the slower tier learns them), transient ones never do.",
    )
    window: int = Field(default=4, ge=2, le=100, description="Successive versions compared.")
    threshold: float = Field(default=0.8, gt=0, le=1, description="Similarity above which a window counts as stable.")
    min_consecutive_windows: int = Field(
        default=2, ge=1, le=100, description="Stable windows in a row required before migrating."
    )
    min_energy_fraction: float = Field(
        default=0.01, ge=0, le=1,
        description="Components carrying less than this share of their module's energy are never judged stable.",
    )


class Bandwidth(ApiModel):
    """Limits that prevent migration avalanches."""

    max_migrations_per_period: int = Field(default=8, ge=0, le=10_000, description="Components moved per period.")
    period: Duration = Field(default="1h", description="Length of a bandwidth period.")
    max_energy_fraction: float = Field(
        default=0.25, gt=0, le=1, description="Largest fraction of the source tier's energy moved in one step."
    )
    max_concurrent_jobs: int = Field(
        default=2, ge=1, le=50, description="Consolidation Jobs of this policy running at the same time."
    )


class EmergencyBypass(ApiModel):
    """Critical patterns may skip the bandwidth limits."""

    enabled: StrictBool = Field(default=False, description="Allow bypassing bandwidth limits.")
    min_stability: float = Field(
        default=0.98, gt=0, le=1,
        description="A stable component whose newest stability score reaches this bypasses the bandwidth limits.",
    )
    max_per_period: int = Field(default=2, ge=0, le=100, description="Bypasses allowed per period.")


class PolicyConsensus(ApiModel):
    """Consensus rule used when a migration targets a shared tier."""

    rule: ConsensusRule = Field(default=ConsensusRule.RESONANCE, description="resonance, mean or ties.")
    min_agents: int = Field(default=2, ge=1, le=10_000, description="Agents whose patterns must agree.")
    outlier_threshold: float = Field(
        default=0.0, ge=-1, le=1, description="Agents aligning with the consensus below this cosine are excluded."
    )


# Recurrence judges the answers an agent was taught (its records, its context tier's training rounds); a
# shared tier has neither. Pairs from an agent's tier into a shared one are consensus, which it leaves alone.
RECURRENCE_PAIRS = ("stability.method recurrence moves what the records of an agent taught: pairs whose source is a "
                    "shared tier (swarm, domain) cannot use it")


class MigrationPolicySpec(ApiModel):
    """Desired behaviour of migrations for the tiers it selects."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.pairs.all(p, self.pairs.exists_one(q, q.source == p.source && q.target == p.target))",
                    "spec.pairs must not repeat a pair",
                    field_path=".pairs",
                ),
                cel(
                    "!has(self.stability) || !has(self.stability.method) || self.stability.method != 'recurrence'"
                    " || self.pairs.all(p, p.source != 'swarm' && p.source != 'domain')",
                    RECURRENCE_PAIRS,
                    field_path=".pairs",
                ),
            ]
        }
    )

    swarm_ref: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN, max_length=253,
        description="Swarm whose tiers this policy governs; all when unset.",
    )
    pairs: list[TierPair] = Field(
        min_length=1, max_length=10, description="Tier level pairs patterns migrate along."
    )
    stability: StabilityDetector = Field(default_factory=StabilityDetector, description="Stability detector.")
    bandwidth: Bandwidth = Field(default_factory=Bandwidth, description="Migration bandwidth.")
    emergency_bypass: EmergencyBypass = Field(default_factory=EmergencyBypass, description="Emergency bypass.")
    consensus: PolicyConsensus = Field(default_factory=PolicyConsensus, description="Consensus for shared tiers.")
    interval: Duration = Field(default="5m", description="How often stability is evaluated.")
    dry_run: StrictBool = Field(default=False, description="Evaluate and record decisions without migrating.")
    suspend: StrictBool = Field(default=False, description="Stop evaluating.")

    @model_validator(mode="after")
    def _unique_pairs(self) -> MigrationPolicySpec:
        keys = [(p.source, p.target) for p in self.pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("spec.pairs must not repeat a pair")
        if self.stability.method == StabilityMethod.RECURRENCE and any(
            not TierLevel(p.source).per_agent for p in self.pairs
        ):
            raise ValueError(RECURRENCE_PAIRS)
        return self


class DecisionOutcome(StrEnum):
    MIGRATED = "Migrated"
    BYPASSED = "Bypassed"
    THROTTLED = "Throttled"
    DRY_RUN = "DryRun"
    REJECTED = "Rejected"
    PENDING = "Pending"


class MigrationDecision(ApiModel):
    """One recorded decision."""

    time: str = Field(json_schema_extra={"format": "date-time"})
    source_tier: str
    target_tier: str
    outcome: DecisionOutcome
    components: int = Field(default=0, ge=0, description="Rank-1 components concerned.")
    energy_fraction: float = Field(default=0.0, ge=0, description="Fraction of the source tier's energy concerned.")
    reason: str = Field(default="", max_length=1024)
    job: str | None = Field(default=None, description="Consolidation Job that carried the migration out.")


class PolicyPhase(StrEnum):
    PENDING = "Pending"
    ACTIVE = "Active"
    SUSPENDED = "Suspended"
    FAILED = "Failed"


class MigrationPolicyStatus(ApiModel):
    """Observed state of a policy."""

    observed_generation: int | None = Field(default=None, ge=0)
    phase: PolicyPhase = Field(default=PolicyPhase.PENDING)
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    last_evaluation_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    migrations_done: int = Field(default=0, ge=0)
    migrations_pending: int = Field(default=0, ge=0)
    migrations_throttled: int = Field(default=0, ge=0)
    period_start: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    migrations_this_period: int = Field(default=0, ge=0)
    bypasses_this_period: int = Field(default=0, ge=0)
    reservations: dict[str, int] = Field(
        default_factory=dict,
        description="Consolidation Job in flight -> migrations reserved for it from the period's budget.",
    )
    active_jobs: list[str] = Field(default_factory=list, description="Consolidation Jobs in flight.")
    evaluated: dict[str, int] = Field(
        default_factory=dict, description="Source tier (or shared target) -> newest input version already evaluated."
    )
    decisions: list[MigrationDecision] = Field(default_factory=list, max_length=100, description="Newest last.")


class MigrationPolicy(ApiModel):
    """A ``MigrationPolicy`` object."""

    api_version: Literal["dynamiclora.io/v1alpha1"] = "dynamiclora.io/v1alpha1"
    kind: Literal["MigrationPolicy"] = "MigrationPolicy"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: MigrationPolicySpec
    status: MigrationPolicyStatus | None = None

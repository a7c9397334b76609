"""The ``LoRATier`` custom resource: one tier of one agent's memory stack, or a shared tier."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StrictBool, model_validator

from dynamiclora.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    MAX_IMAGE,
    MAX_MAP,
    MAX_PODS,
    ApiModel,
    Condition,
    Duration,
    MapValue,
    ObjectMeta,
    Resources,
    Storage,
    TierLevel,
    cel,
    in_storage_cel,
    outside_storage,
    store_location,
)


class TrainingStrategy(StrEnum):
    """How the processes of a distributed training share the work (training/sharding.py)."""

    DDP = "DDP"  # every process holds the whole stack; the trained tier's gradients are all-reduced
    FSDP = "FSDP"  # the stack's parameters, gradients and optimizer state are sharded across the processes


MAX_VERSION = 999_999_999  # versions are stored as v000000001: 9 digits
# A targeted linear module's name (or name suffix), as PEFT's target_modules takes it.
ModuleName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.]+$")]

DEFAULT_TRAINER_IMAGE = "ghcr.io/dynamiclora/trainer:0.1.0"
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


class Plasticity(ApiModel):
    """How fast a tier learns and forgets, and when its components become protected.

    Each rank-1 component of the tier's delta has a reinforcement score (how often recent updates
    align with it). Above ``screenThreshold`` it becomes SCREENED (protected, slow decay); below
    ``freeThreshold`` it becomes FREE again (decays toward zero). Two thresholds give hysteresis so a
    component whose score hovers around one value does not flicker.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.screenThreshold > self.freeThreshold",
                    "plasticity.screenThreshold must be greater than plasticity.freeThreshold (hysteresis)",
                    field_path=".screenThreshold",
                ),
                cel(
                    "self.screenedDecay <= self.freeDecay",
                    "plasticity.screenedDecay must not exceed plasticity.freeDecay",
                    field_path=".screenedDecay",
                ),
            ]
        }
    )

    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Base learning rate of training Jobs.")
    screen_threshold: float = Field(
        default=0.6, ge=0, le=1, description="Reinforcement score above which a component becomes SCREENED."
    )
    free_threshold: float = Field(
        default=0.3, ge=0, le=1, description="Reinforcement score below which a SCREENED component becomes FREE."
    )
    free_decay: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of a FREE component's magnitude lost per referenceInteractionsPerHour new records: "
        "before each training Job the tier decays by the records the Job trains on.",
    )
    screened_decay: float = Field(
        default=0.005, ge=0, le=1, description="The same share for SCREENED (protected) components."
    )
    reference_interactions_per_hour: float = Field(
        default=60.0,
        gt=0,
        le=1e9,
        description="Records in one reference hour of use, the unit of freeDecay and screenedDecay: a busy tier "
        "forgets in fewer minutes than a quiet one, and the same per record.",
    )
    energy_budget: float | None = Field(
        default=None,
        gt=0,
        le=1e12,
        description="Homeostasis: maximum squared Frobenius norm of the tier after each training Job; past it "
        "FREE components are shed first, then SCREENED ones scaled. Unlimited when unset.",
    )
    plastic_rank: int | None = Field(
        default=None,
        ge=0,
        le=512,
        description="Protection of consolidated memory (opt-in): training keeps all but this many of the tier's "
        "LoRA A rows orthogonal to the inputs the slower tiers of the stack respond to, so an update cannot change "
        "how the stack answers them except through these plastic rows (how a changed answer gets through), e.g. 2. "
        "Unset, or at least the tier's rank: no protection.",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> Plasticity:
        if self.screen_threshold <= self.free_threshold:
            raise ValueError("plasticity.screenThreshold must be greater than plasticity.freeThreshold (hysteresis)")
        if self.screened_decay > self.free_decay:
            raise ValueError("plasticity.screenedDecay must not exceed plasticity.freeDecay")
        return self


MAX_TRAINING_NODES = 64
MAX_PROCS_PER_NODE = 16


class TrainingTemplate(ApiModel):
    """How training Jobs of this tier are run."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [cel(
        "(has(self.batchSize) ? self.batchSize : 8) >= "
        "(has(self.nodes) ? self.nodes : 1) * (has(self.procsPerNode) ? self.procsPerNode : 1)",
        "training.batchSize must be at least nodes x procsPerNode: each training process needs a share of "
        "every batch"), cel(
        "!has(self.strategy) || self.strategy == 'DDP' || "
        "(has(self.nodes) ? self.nodes : 1) * (has(self.procsPerNode) ? self.procsPerNode : 1) > 1",
        "training.strategy FSDP shards the model across the training processes: it needs nodes x procsPerNode "
        "above 1"), cel(
        "!has(self.anchorSet) || !has(self.strategy) || self.strategy == 'DDP'",
        "training.anchorSet adds its gradient to whole parameters: it needs training.strategy DDP")]})

    image: str = Field(
        default=DEFAULT_TRAINER_IMAGE, min_length=1, max_length=MAX_IMAGE, description="Trainer container image."
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(requests={"cpu": "1", "memory": "4Gi"}, limits={"nvidia.com/gpu": 1}),
        description="Resources of the training container; request nvidia.com/gpu for GPU nodes.",
    )
    min_samples: int = Field(
        default=32, ge=1, le=10_000_000, description="New interaction records needed before a training Job starts."
    )
    schedule: Duration | None = Field(
        default=None,
        description="Optional minimum interval between trainings (e.g. 10m, 1h); unset trains as soon as "
        "minSamples new records exist.",
    )
    max_steps: int = Field(default=100, ge=1, le=1_000_000, description="Optimizer steps per training Job.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Records per optimizer step.")
    checkpoint_every: int = Field(default=20, ge=1, le=1_000_000, description="Steps between resumable checkpoints.")
    backoff_limit: int = Field(
        default=3, ge=0, le=20,
        description="Retries of a failed training Job's pods (a TrainJob's pods are retried as its runtime says).",
    )
    active_deadline_seconds: int = Field(
        default=3600, ge=60, le=30 * 86400,
        description="Time limit of one training Job; a TrainJob (which has none) is deleted by the operator "
        "when it runs longer, and retried as a failed attempt.",
    )
    replay_fraction: float = Field(
        default=0.5,
        ge=0,
        le=0.9,
        description="Consolidation replay: share of each training mix made of stored older records (newest answer "
        "per question, chosen by surprise under the served stack; the new records are repeated to keep their share "
        "when the budget covers more questions); 0 trains on the new records only.",
    )
    replay_budget: int = Field(
        default=64, ge=0, le=100_000,
        description="Consolidation replay: stored questions rehearsed per Job at most (up to the whole store when it "
        "holds fewer): how much of what the tier knew each update protects.",
    )
    anchor_set: str | None = store_location(
        "Answers kept steady (.jsonl file or folder of records): each training step, and the refit "
        "and destination of a migration by recurrence, adds anchorWeight x the KL divergence of the stack's answer "
        "distributions on these prompts from the served stack's, so an update changes what its records teach and "
        "leaves these answers where they were. Their answers are never trained. Relative to the storage root or an "
        "s3:// URI in the storage's own bucket. Per-agent tiers take the Swarm agent's anchorSet.",
    )
    anchor_weight: float = Field(
        default=1.0, ge=0, le=100,
        description="Weight of the anchorSet's KL term in each training step's loss; 0 turns the anchor off.",
    )
    node_selector: dict[str, MapValue] = Field(
        default_factory=dict, max_length=MAX_MAP, description="Node selector of training pods."
    )
    service_account_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="ServiceAccount of training pods (e.g. for workload identity).",
    )
    nodes: int = Field(
        default=1, ge=1, le=MAX_TRAINING_NODES,
        description="Pods of one training Job. With nodes x procsPerNode above 1 the Job trains data-parallel "
        "under torchrun (an indexed Job and a headless Service for the c10d rendezvous); each process takes its "
        "share of every batch, so batchSize must be at least nodes x procsPerNode.",
    )
    procs_per_node: int = Field(
        default=1, ge=1, le=MAX_PROCS_PER_NODE,
        description="Training processes per pod (one per GPU of the pod).",
    )
    strategy: TrainingStrategy = Field(
        default=TrainingStrategy.DDP,
        description="How a data-parallel training's processes share the work: DDP, each holds the whole base "
        "model and stack and the trained tier's gradients are all-reduced; FSDP, the base model's, the frozen "
        "tiers' and the trained tier's parameters, gradients and optimizer state are sharded across them "
        "(PyTorch FSDP2), for a base model that does not fit one device. Both make the same update; FSDP needs "
        "nodes x procsPerNode above 1.",
    )
    queue: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN, max_length=63,
        description="Kueue LocalQueue of the training Jobs: set as their kueue.x-k8s.io/queue-name label, and "
        "the Jobs are created suspended for Kueue to admit them (all pods of a Job at once).",
    )
    runtime: str | None = Field(
        default=None, pattern=DNS_SUBDOMAIN, max_length=253,
        description="Kubeflow Trainer ClusterTrainingRuntime (torch-distributed) that launches this tier's "
        "data-parallel training as a TrainJob when the trainjobs.trainer.kubeflow.org CRD is installed; default "
        "the operator's trainingRuntime setting. Without either, or without the CRD, the operator's own launcher "
        "runs it (an indexed Job and a headless Service). Single-process training is always a plain Job.",
    )

    @model_validator(mode="after")
    def _batch_covers_processes(self) -> TrainingTemplate:
        if self.batch_size < self.nodes * self.procs_per_node:
            raise ValueError(f"training.batchSize ({self.batch_size}) must be at least nodes x procsPerNode "
                             f"({self.nodes} x {self.procs_per_node}): each training process needs a share of "
                             "every batch")
        if self.strategy == TrainingStrategy.FSDP and self.nodes * self.procs_per_node == 1:
            raise ValueError("training.strategy FSDP shards the model across the training processes: it needs "
                             "nodes x procsPerNode above 1")
        if self.strategy == TrainingStrategy.FSDP and self.anchor_set:
            raise ValueError("training.anchorSet adds its gradient to whole parameters: it needs training.strategy "
                             "DDP")
        return self


class Retention(ApiModel):
    """Which checkpoint versions are kept. The current, served and pinned versions are always kept."""

    keep_versions: int = Field(default=10, ge=1, le=10_000, description="Newest versions kept.")
    keep_for: Duration | None = Field(
        default=None, description="Also keep every version younger than this (e.g. 168h), at most 10 years."
    )


class GateLimits(ApiModel):
    """The check every new version passes before it is served (see README "Quality gate").

    The Job that produces a version scores the stack with it (candidate) and with the version it would
    replace (baseline) on the same examples: held-out interaction records no version was ever trained
    on (newest answer per question) and the agent's regression set when one is given. What is judged
    is what the served stack *knows*: examples it answers correctly (greedy decoding reproduces the
    answer). The version is rejected when it forgets significantly more of them than ``maxRegression``
    allows (a one-sided binomial test at ``significance``, where examples it newly answers count in its
    favour); examples the agent never knew cannot block an update. A rejected version is kept in the
    store, marked rejected, and the previous version stays served.
    """

    enabled: StrictBool = Field(default=True, description="Gate new versions; when false every version is promoted.")
    max_regression: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Allowed rate of forgetting: the share of known examples an update may forget before the "
        "binomial test calls it a regression, e.g. 0.05 = 5%.",
    )
    significance: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Level of the one-sided binomial test: forgetting is a regression when its p-value under the "
        "allowed rate is below this (smaller = more evidence needed before rejecting).",
    )
    eval_records: int = Field(
        default=64, ge=1, le=100_000,
        description="How many questions the gate judges, each by its newest answer: a training Job's newest held-out "
        "ones; a consolidation Job's newest ones of the agents' records, and up to as many of the regression set.",
    )


class QualityGate(GateLimits):
    """The quality gate of a tier that trains on records: the limits, and what it is judged on."""

    holdout_fraction: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="Share of interaction records held out from training (chosen per record, deterministically).",
    )
    regression_set: str | None = store_location(
        "Fixed regression records (.jsonl file or folder): a path relative to the storage root or "
        "an s3:// URI in the storage's own bucket; never absolute, never '..'. Per-agent tiers take the Swarm "
        "agent's regressionSet.",
    )


class LoRATierSpec(ApiModel):
    """Desired state of one tier."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(self.level in ['context', 'agent']) == has(self.agent)",
                    "spec.agent is required for context and agent tiers and forbidden for shared tiers",
                ),
                cel(
                    "has(self.agent) == has(oldSelf.agent) && (!has(self.agent) || self.agent == oldSelf.agent)",
                    "spec.agent is immutable",
                    field_path=".agent",
                ),
                cel(
                    "has(self.swarmRef) == has(oldSelf.swarmRef) && "
                    "(!has(self.swarmRef) || self.swarmRef == oldSelf.swarmRef)",
                    "spec.swarmRef is immutable",
                    field_path=".swarmRef",
                ),
                cel(
                    f"!has(self.qualityGate) || !has(self.storage) || "
                    f"({in_storage_cel('self.qualityGate.regressionSet', 'self.storage')})",
                    "spec.qualityGate.regressionSet must be relative to the storage root or in the storage's own "
                    "bucket",
                    field_path=".qualityGate.regressionSet",
                ),
                cel(
                    f"!has(self.training) || !has(self.storage) || "
                    f"({in_storage_cel('self.training.anchorSet', 'self.storage')})",
                    "spec.training.anchorSet must be relative to the storage root or in the storage's own bucket",
                    field_path=".training.anchorSet",
                ),
            ]
        }
    )

    level: TierLevel = Field(
        description="Which tier of the hierarchy this is (immutable).",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "spec.level is immutable")]},
    )
    swarm_ref: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="The Swarm this tier belongs to (immutable); unset for tiers shared across swarms.",
    )
    agent: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Owner agent of a context or agent tier (immutable); unset for shared tiers.",
    )
    rank: int = Field(default=16, ge=1, le=512, description="LoRA rank r.")
    alpha: float = Field(default=32.0, gt=0, le=4096, description="LoRA alpha; the delta is scaled by alpha/r.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="LoRA dropout used when training.")
    target_modules: list[ModuleName] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        min_length=1,
        max_length=64,
        description="Names of the linear modules the adapter targets (e.g. q_proj, v_proj).",
    )
    plasticity: Plasticity = Field(default_factory=Plasticity, description="Learning, decay and phase thresholds.")
    training: TrainingTemplate = Field(default_factory=TrainingTemplate, description="Training Job template.")
    retention: Retention = Field(default_factory=Retention, description="Checkpoint retention.")
    storage: Storage | None = Field(
        default=None, description="Checkpoint storage; inherited from the Swarm when unset."
    )
    pinned_version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_VERSION,
        description="Serve exactly this version (rollback/roll-forward); unset follows the latest accepted one.",
    )
    quality_gate: QualityGate = Field(
        default_factory=QualityGate, description="Quality gate a new version passes before it is served."
    )
    suspend: StrictBool = Field(default=False, description="Stop training and migration for this tier.")

    @model_validator(mode="after")
    def _owner(self) -> LoRATierSpec:
        per_agent = TierLevel(self.level).per_agent
        if per_agent and self.agent is None:
            raise ValueError("spec.agent is required for context and agent tiers and forbidden for shared tiers")
        if not per_agent and self.agent is not None:
            raise ValueError("spec.agent is required for context and agent tiers and forbidden for shared tiers")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError("spec.targetModules must not repeat a module")
        for name, location in (("qualityGate.regressionSet", self.quality_gate.regression_set),
                               ("training.anchorSet", self.training.anchor_set)):
            problem = location and self.storage and outside_storage(self.storage, location)
            if problem:  # without storage of its own the tier's reconcile checks it against the Swarm's
                raise ValueError(f"spec.{name}: {problem}")
        return self


class TierPhase(StrEnum):
    PENDING = "Pending"
    TRAINING = "Training"
    CONSOLIDATING = "Consolidating"
    READY = "Ready"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class VersionRecord(ApiModel):
    """One entry of a tier's recent history."""

    version: int = Field(ge=1)
    uri: str = Field(description="Checkpoint URI of the version.")
    sha256: str = Field(default="", description="sha256 of the version's manifest.")
    created: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    source: Literal["training", "migration", "consensus", "rollback", "import"] = Field(
        default="training", description="What produced the version."
    )
    loss: float | None = Field(default=None, description="Final training loss, when trained.")
    accepted: bool | None = Field(default=None, description="Whether the quality gate accepted it.")


class GateResult(ApiModel):
    """The quality gate's verdict on one version (figures are mean token losses)."""

    version: int = Field(ge=1, description="Version judged.")
    accepted: bool = Field(description="Whether the version was promoted.")
    reason: str = Field(default="", description="Why, with the failing set's figures.")
    held_out_records: int | None = Field(default=None, ge=0, description="Held-out records evaluated.")
    held_out_baseline: float | None = Field(default=None, description="Held-out loss of the version it replaces.")
    held_out_candidate: float | None = Field(default=None, description="Held-out loss of the new version.")
    regression_baseline: float | None = Field(default=None, description="Regression-set loss before.")
    regression_candidate: float | None = Field(default=None, description="Regression-set loss with the version.")
    max_regression: float | None = Field(default=None, ge=0, description="Allowed forgetting rate applied.")
    held_out_known: int | None = Field(default=None, ge=0, description="Held-out examples the served stack knew.")
    held_out_forgotten: int | None = Field(default=None, ge=0, description="Of those, forgotten by the new version.")
    held_out_learned: int | None = Field(default=None, ge=0, description="Held-out examples newly answered.")
    regression_known: int | None = Field(default=None, ge=0, description="Regression examples the stack knew.")
    regression_forgotten: int | None = Field(default=None, ge=0, description="Of those, forgotten by the version.")
    cause: Literal["contradiction", "collateral"] | None = Field(
        default=None,
        description="Why a rejected version forgot: its records contradict what is known (they are quarantined) "
        "or it overwrote known examples collaterally (its records stay eligible and are retried).",
    )


class QuarantineWindow(ApiModel):
    """The time span of the records a rejected update learned from; later Jobs skip them."""

    version: int = Field(ge=1, description="The rejected version trained on these records.")
    from_: str = Field(alias="from", description="Timestamp of the window's first record.")
    to: str = Field(description="Timestamp of the window's last record.")


class GateCounts(ApiModel):
    """How many of the tier's updates the gate accepted and rejected (feeds the agent's trust score)."""

    accepted: int = Field(default=0, ge=0)
    rejected: int = Field(default=0, ge=0)


class AgentServing(ApiModel):
    """What is served of one agent, on its context tier (written by the Swarm's serving pass). Per agent, not
    in the Swarm: 10,000 agents' entries would outgrow etcd's object limit. Fields at their usual value are
    left out; the vLLM model name is always ``<swarm>-<agent>``."""

    served_version: str | None = Field(default=None, description="Composite version, e.g. c3.a2.s1.")
    adapter_path: str | None = Field(
        default=None, description="The composed adapter, <agent>/<key> under the Swarm's status.servedRoot."
    )
    composition_error: float | None = Field(
        default=None, ge=0, description="Relative error of the composition (left out when it is exact)."
    )
    trust: float | None = Field(
        default=None, ge=0,
        description="Trust score: user trustWeight x record of the agent at the quality gate (left out at 1).",
    )
    pinned: bool | None = Field(default=None, description="True when a pin decides what is served (else left out).")
    served_on_pods: int | None = Field(
        default=None, ge=0, description="Placed pods serving the agent's current version (servedVersion)."
    )
    hot: bool | None = Field(
        default=None, description="True while the agent is hot (placement.hotReplicas); left out otherwise."
    )
    placed_on: list[int] = Field(
        default_factory=list, max_length=MAX_PODS,
        description="Ordinals of the pods that hold the agent's adapter (<swarm>-inference-<n>); served everywhere "
        "when servedOnPods is their number. The next pass keeps the agent there (placement hysteresis).",
    )


class LoRATierStatus(ApiModel):
    """Observed state of one tier."""

    observed_generation: int | None = Field(default=None, ge=0, description="Generation last reconciled.")
    phase: TierPhase = Field(default=TierPhase.PENDING, description="Summary of the tier's state.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Training, Degraded ... with reasons.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    current_version: int | None = Field(
        default=None, ge=0, description="Newest version the quality gate accepted (what is promoted)."
    )
    latest_version: int | None = Field(
        default=None, ge=0, description="Newest published version, accepted or rejected."
    )
    pinned_version: int | None = Field(default=None, ge=0, description="The pin last acted on (spec.pinnedVersion).")
    last_gate: GateResult | None = Field(default=None, description="The quality gate's latest verdict.")
    gate_counts: GateCounts | None = Field(default=None, description="Accepted and rejected updates so far.")
    quarantine: list[QuarantineWindow] = Field(
        default_factory=list, max_length=50, description="Record windows of rejected updates, excluded from training."
    )
    served_version: int | None = Field(default=None, ge=0, description="Version composed into served adapters.")
    serving: AgentServing | None = Field(
        default=None, description="A context tier only: what is served of its agent (the Swarm pass writes it)."
    )
    checkpoint_uri: str | None = Field(default=None, description="URI of the current version.")
    checkpoint_sha256: str | None = Field(default=None, description="sha256 of the current version's manifest.")
    effective_time_scale_seconds: float | None = Field(
        default=None, ge=0, description="Emergent time scale of the tier from its interaction density."
    )
    interaction_rate_per_hour: float | None = Field(default=None, ge=0, description="Observed interaction rate.")
    screened_fraction: float | None = Field(
        default=None, ge=0, le=1, description="Energy fraction in SCREENED components."
    )
    drift_norm: float | None = Field(default=None, ge=0, description="Frobenius norm of the last update.")
    energy: float | None = Field(default=None, ge=0, description="Squared Frobenius norm of the tier's delta.")
    records_consumed: int | None = Field(default=None, ge=0, description="Interaction records trained on so far.")
    records_seen: int | None = Field(default=None, ge=0, description="Interaction records found for the tier.")
    rate_sample_total: int | None = Field(default=None, ge=0, description="Record count at the last rate sample.")
    rate_sample_time: str | None = Field(
        default=None, description="Time of the last rate sample.", json_schema_extra={"format": "date-time"}
    )
    failed_attempts: int | None = Field(default=None, ge=0, description="Consecutive failed training Jobs.")
    last_failure_time: str | None = Field(
        default=None,
        description="When the last training Job failed (the backoff counts from it).",
        json_schema_extra={"format": "date-time"},
    )
    collateral_retries: int | None = Field(
        default=None, ge=0, description="Retries, with more replay, of records whose update forgot collaterally."
    )
    last_training_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    active_job: str | None = Field(default=None, description="Name of the running training/consolidation Job.")
    active_job_kind: Literal["Job", "TrainJob"] | None = Field(
        default=None, description="Kind of activeJob: a batch/v1 Job, or a Kubeflow Trainer TrainJob."
    )
    training_workers: str | None = Field(
        default=None, max_length=16,
        description="nodes x procsPerNode of the running training Job when it trains data-parallel (e.g. 2x4).",
    )
    history: list[VersionRecord] = Field(
        default_factory=list, max_length=50, description="Most recent versions, newest last."
    )


class LoRATier(ApiModel):
    """A ``LoRATier`` object."""

    api_version: Literal["dynamiclora.io/v1alpha1"] = "dynamiclora.io/v1alpha1"
    kind: Literal["LoRATier"] = "LoRATier"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: LoRATierSpec
    status: LoRATierStatus | None = None

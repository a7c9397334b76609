"""Condition types, reasons and event types the operator writes: the words users and alerts match on.

Spelled once, here, next to the status types that carry them. ``set_condition`` and ``Event`` take these
enums, so ``mypy --strict`` refuses a reason typed inline anywhere in the controllers.
"""

from __future__ import annotations

from enum import StrEnum


class ConditionType(StrEnum):
    READY = "Ready"  # every kind: the object does what its spec asks
    DEGRADED = "Degraded"  # every kind: something failed and is retried or needs a fix
    TRAINING = "Training"  # LoRATier: a training Job runs, waits or failed
    COMPOSING = "Composing"  # Swarm: a compose Job builds an agent's new served adapter
    TIER_NAME_CONFLICT = "TierNameConflict"  # Swarm: a generated LoRATier name belongs to another Swarm


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class Reason(StrEnum):
    """Reasons of conditions and events (Kubernetes' CamelCase, machine-readable)."""

    # Any kind.
    INVALID_SPEC = "InvalidSpec"
    POLICY_DENIED = "PolicyDenied"
    HEALTHY = "Healthy"
    SPEC_CHANGED = "SpecChanged"
    SUSPENDED = "Suspended"
    # LoRATier: versions, training and its inputs.
    VERSION_AVAILABLE = "VersionAvailable"
    NO_VERSION_YET = "NoVersionYet"
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    RECORDS_UNAVAILABLE = "RecordsUnavailable"
    INPUT_MISSING = "InputMissing"
    WAITING_FOR_RECORDS = "WaitingForRecords"
    JOB_RUNNING = "JobRunning"
    SUCCEEDED = "Succeeded"
    JOB_FAILED = "JobFailed"
    TRAINING_STARTED = "TrainingStarted"
    TRAINING_SUCCEEDED = "TrainingSucceeded"
    TRAINING_FAILED = "TrainingFailed"
    RENDEZVOUS_FAILED = "RendezvousFailed"  # the workers of a distributed training never formed a group
    WORKER_FAILED = "WorkerFailed"  # one worker of a distributed training died (the others stop with it)
    UNSCHEDULABLE = "Unschedulable"  # the scheduler cannot place a training pod (resources, selectors, quota)
    LAUNCHER_UNAVAILABLE = "LauncherUnavailable"  # the named Kubeflow Trainer runtime cannot be used here
    TRAINING_FAILING = "TrainingFailing"
    UPDATE_RETRIED = "UpdateRetried"
    # LoRATier: the quality gate, pins, retention.
    PROMOTED = "Promoted"
    UPDATE_REJECTED = "UpdateRejected"
    QUARANTINE_RELEASED = "QuarantineReleased"
    PINNED = "Pinned"
    UNPINNED = "Unpinned"
    RETENTION_APPLIED = "RetentionApplied"
    # MigrationPolicy.
    EVALUATING = "Evaluating"
    CONSOLIDATION_STARTED = "ConsolidationStarted"
    CONSOLIDATION_FAILED = "ConsolidationFailed"
    CONSOLIDATION_REJECTED = "ConsolidationRejected"
    RESULT_MISSING = "ResultMissing"
    MIGRATION_DONE = "MigrationDone"
    CONSENSUS_DONE = "ConsensusDone"
    # Swarm: pods, composition and hot-swap.
    ALL_AGENTS_SERVED = "AllAgentsServed"
    PODS_NOT_READY = "PodsNotReady"
    NOT_ALL_SERVED = "NotAllServed"
    ADAPTERS_SERVED = "AdaptersServed"
    ADAPTER_LOAD_FAILED = "AdapterLoadFailed"
    POD_UNRESPONSIVE = "PodUnresponsive"
    ROUTES_FAILED = "RoutesFailed"  # an agent's Service or EndpointSlice was refused
    NO_ROOM = "NoRoom"  # the ready pods' --max-cpu-loras cannot hold every agent's placement replicas
    SERVING_UNAVAILABLE = "ServingUnavailable"
    WAITING = "Waiting"
    COMPOSING = "Composing"
    COMPOSED = "Composed"
    COMPOSITION_FAILED = "CompositionFailed"
    TIER_NAME_CONFLICT = "TierNameConflict"

"""Prometheus metrics of the operator (one registry shared with ``dynamiclora.serving.metrics``).

Per-object gauges carry namespace/name labels: their cardinality is the number of tiers and agents,
which is what a user wants to see on a dashboard; nothing is labelled per request or per version.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from dynamiclora.serving.metrics import REGISTRY

RECONCILES = Counter(
    "dynamiclora_reconcile_total", "Reconciliations by kind and result (ok, error, invalid).",
    ["kind", "result"], registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "dynamiclora_reconcile_duration_seconds", "Duration of one reconciliation.", ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY,
)
JOBS = Counter(
    "dynamiclora_jobs_total", "Training and consolidation Jobs by kind and result (started, succeeded, failed).",
    ["kind", "result"], registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "dynamiclora_job_duration_seconds", "Wall time of finished training and consolidation Jobs.", ["kind"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200), registry=REGISTRY,
)
MIGRATIONS = Counter(
    "dynamiclora_migrations_total", "Migration decisions by outcome (Migrated, Bypassed, Throttled, DryRun).",
    ["outcome"], registry=REGISTRY,
)
GATE_DECISIONS = Counter(
    "dynamiclora_gate_decisions_total", "Quality-gate verdicts on new tier versions (promoted or rejected).",
    ["namespace", "tier", "result"], registry=REGISTRY,
)
MIGRATED_COMPONENTS = Counter(
    "dynamiclora_migrated_components_total", "Rank-1 components moved to slower tiers.", registry=REGISTRY,
)
LEADER = Gauge(
    "dynamiclora_leader",
    "1 while this operator reconciles (it holds the leader Lease, or runs standalone), 0 while it waits.",
    registry=REGISTRY,
)
STORE_FEED_VERSIONS = Counter(
    "dynamiclora_store_feed_versions", "Tier versions found in the stores' feeds and reconciled at once.",
    ["namespace"], registry=REGISTRY,
)
TIER_VERSION = Gauge(
    "dynamiclora_tier_version", "Newest published version of a tier.", ["namespace", "tier", "level"],
    registry=REGISTRY,
)
TIER_SERVED_VERSION = Gauge(
    "dynamiclora_tier_served_version", "Version of a tier composed into served adapters.",
    ["namespace", "tier", "level"], registry=REGISTRY,
)
TIER_ENERGY = Gauge(
    "dynamiclora_tier_energy", "Squared Frobenius norm of a tier's delta.", ["namespace", "tier", "level"],
    registry=REGISTRY,
)
TIER_SCREENED = Gauge(
    "dynamiclora_tier_screened_fraction", "Energy fraction of a tier in SCREENED components.",
    ["namespace", "tier", "level"], registry=REGISTRY,
)
TIER_TIME_SCALE = Gauge(
    "dynamiclora_tier_time_scale_seconds", "Emergent time scale of a tier.", ["namespace", "tier", "level"],
    registry=REGISTRY,
)
TIER_LAST_TRAINED = Gauge(
    "dynamiclora_tier_last_trained_timestamp_seconds", "Unix time a tier last got a new version.",
    ["namespace", "tier", "level"], registry=REGISTRY,
)
TIER_PENDING_RECORDS = Gauge(
    "dynamiclora_tier_pending_records", "Interaction records not trained on yet.", ["namespace", "tier", "level"],
    registry=REGISTRY,
)
SWARM_DESIRED_PODS = Gauge(
    "dynamiclora_swarm_desired_pods", "Inference replicas a swarm asks for.", ["namespace", "swarm"],
    registry=REGISTRY,
)
SWARM_READY_PODS = Gauge(
    "dynamiclora_swarm_ready_pods", "Ready inference pods of a swarm.", ["namespace", "swarm"], registry=REGISTRY,
)
AGENT_SERVED_PODS = Gauge(
    "dynamiclora_agent_served_pods", "Ready pods serving the agent's current composed adapter.",
    ["namespace", "swarm", "agent"], registry=REGISTRY,
)
AGENT_PLACED_PODS = Gauge(
    "dynamiclora_agent_placed_pods", "Ready pods the agent's adapter is placed on (spec.inference.placement).",
    ["namespace", "swarm", "agent"], registry=REGISTRY,
)
POD_LOADED_ADAPTERS = Gauge(
    "dynamiclora_pod_loaded_adapters", "Adapters loaded in one vLLM pod.", ["namespace", "swarm", "pod"],
    registry=REGISTRY,
)

TIER_GAUGES = (TIER_VERSION, TIER_SERVED_VERSION, TIER_ENERGY, TIER_SCREENED, TIER_TIME_SCALE, TIER_LAST_TRAINED,
               TIER_PENDING_RECORDS)  # fmt: skip
SWARM_GAUGES = (SWARM_DESIRED_PODS, SWARM_READY_PODS, AGENT_SERVED_PODS, AGENT_PLACED_PODS, POD_LOADED_ADAPTERS)
# kind -> (its per-object metrics, the label naming the object)
_PER_OBJECT: dict[str, tuple[tuple[MetricWrapperBase, ...], str]] = {
    "LoRATier": ((*TIER_GAUGES, GATE_DECISIONS), "tier"), "Swarm": (SWARM_GAUGES, "swarm"),
}


def export_tier_status(namespace: str, tier: str, level: str, status: dict[str, object]) -> None:
    """Mirror the status fields a dashboard plots; a field not in the status has no series."""
    for gauge, key in ((TIER_ENERGY, "energy"), (TIER_SCREENED, "screenedFraction"),
                       (TIER_TIME_SCALE, "effectiveTimeScaleSeconds")):  # fmt: skip
        value = status.get(key)
        if isinstance(value, int | float):
            gauge.labels(namespace, tier, level).set(value)
        else:  # the field went away (e.g. a version without it): so does its last value
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, tier, level)


def keep_swarm_series(metric: MetricWrapperBase, namespace: str, swarm: str, label: str, keep: set[str]) -> None:
    """Drop a Swarm's series of ``metric`` whose ``label`` is not in ``keep``: an agent removed from the
    Swarm or a pod scaled away stops being plotted at its last value."""
    stale = {tuple(s.labels.values()) for family in metric.collect() for s in family.samples
             if s.labels.get("namespace") == namespace and s.labels.get("swarm") == swarm
             and s.labels.get(label) not in keep}  # fmt: skip
    for values in stale:
        metric.remove(*values)


def forget_object(kind: str, namespace: str, name: str) -> None:
    """Drop the series of a deleted LoRATier or Swarm, so a dashboard stops plotting its last value forever.

    Series are found by their labels rather than rebuilt from the object, because the agents and pods
    a Swarm had are not in its last body.
    """
    metrics, key = _PER_OBJECT.get(kind, ((), ""))
    for metric in metrics:
        # A counter exposes _total and _created samples per label set: remove each label set once.
        stale = {tuple(s.labels.values()) for family in metric.collect() for s in family.samples
                 if s.labels.get("namespace") == namespace and s.labels.get(key) == name}  # fmt: skip
        for values in stale:
            metric.remove(*values)

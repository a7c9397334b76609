"""Prometheus metrics of the hot-swap path, in a module-level registry the operator exposes.

Labels stay low-cardinality (no pod or adapter names): per-pod detail goes to logs, events and status.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

SWAP_SECONDS = Histogram(
    "dynamiclora_hotswap_swap_seconds",
    "Time from a swap request to the new adapter version verified served on one pod.",
    ["action"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
    registry=REGISTRY,
)
LOADS = Counter(
    "dynamiclora_hotswap_loads_total",
    "Adapter load calls that succeeded, by kind (new name or in-place replacement).",
    ["kind"],
    registry=REGISTRY,
)
UNLOADS = Counter(
    "dynamiclora_hotswap_unloads_total",
    "Adapter unload calls that succeeded.",
    registry=REGISTRY,
)
FAILURES = Counter(
    "dynamiclora_hotswap_failures_total",
    "Hot-swap operations that failed, by reason.",
    ["reason"],
    registry=REGISTRY,
)

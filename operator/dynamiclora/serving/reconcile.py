"""Reconcile one pod's loaded adapters against the desired set.

The operator calls this on every pod on every reconcile, and in particular after a pod restart: vLLM
forgets runtime-loaded adapters when it restarts, so the listing comes back empty and everything is
loaded again. Unchanged adapters cost one ``/v1/models`` call per pod, nothing more.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dynamiclora.serving.adapters import AdapterSpec, PodTarget
from dynamiclora.serving.errors import ServingError

if TYPE_CHECKING:  # the swapper calls this module; only its type is needed here
    from dynamiclora.serving.hotswap import HotSwapper


@dataclass
class ReconcileResult:
    """What reconciling one pod did, adapter by adapter."""

    pod: str
    loaded: list[str] = field(default_factory=list)
    swapped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # loaded names left as they are (``keep``)
    failed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, ServingError] = field(default_factory=dict)  # the typed errors behind ``failed``

    @property
    def ok(self) -> bool:
        return not self.failed


async def reconcile_pod(
    swapper: HotSwapper, pod: PodTarget, desired: Mapping[str, AdapterSpec], *, managed_prefix: str,
    keep: Collection[str] = (),
) -> ReconcileResult:
    """See :meth:`HotSwapper.reconcile`."""
    if not managed_prefix:
        raise ValueError("managed_prefix must be non-empty: it keeps reconcile off adapters it does not own")
    for key, spec in desired.items():
        if key != spec.name:
            raise ValueError(f"desired[{key!r}] holds adapter named {spec.name!r}; keys must be served names")
        if not key.startswith(managed_prefix):
            raise ValueError(f"desired adapter {key!r} lacks the managed prefix {managed_prefix!r}")
    pod.check_capacity(list(desired.values()))

    result = ReconcileResult(pod=pod.label)
    loaded = await swapper.client(pod).list_adapters()
    # Unload first so that capacity is free for the loads that follow.
    result.kept = sorted(n for n in loaded if n in keep and n not in desired)
    for name in sorted(loaded):
        if name.startswith(managed_prefix) and name not in desired and name not in keep:
            try:
                if await swapper.unload(pod, name):
                    result.unloaded.append(name)
            except ServingError as exc:
                result.failed[name] = str(exc)
                result.errors[name] = exc
    for name, spec in sorted(desired.items()):
        card = loaded.get(name)
        if swapper.settled(pod, spec, card.root if card is not None else None):
            result.unchanged.append(name)
            continue
        try:
            out = await swapper.ensure(pod, spec)
        except ServingError as exc:
            result.failed[name] = str(exc)
            result.errors[name] = exc
            continue
        by_action = {"loaded": result.loaded, "swapped": result.swapped, "unchanged": result.unchanged}
        by_action[out.action].append(name)
    return result

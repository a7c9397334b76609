"""JSON-able statistics of a tier delta (for LoRATier status, metrics and logs)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from .decompose import decompose
from .lowrank import LowRankDelta
from .phases import Phase


def delta_statistics(
    tier: Mapping[str, LowRankDelta],
    phases: Mapping[str, list[Phase]] | None = None,
    spectrum_len: int = 16,
) -> dict[str, object]:
    """Energy, spectrum per module, effective rank and screened fraction.

    Args:
        tier: the tier delta.
        phases: optional module -> phase per component (from a ``PhaseTracker``, same decomposition
            order with ``rtol=1e-6``); enables ``screenedFraction``.
        spectrum_len: singular values reported per module.

    Returns:
        ``{"energy", "norm", "modules": {name: {"rank", "energy", "spectrum", "effectiveRank"}},
        "screenedFraction" (or None), "maxRank"}``.
    """
    modules: dict[str, dict[str, object]] = {}
    total = 0.0
    screened = 0.0
    for name in sorted(tier):
        comps = decompose(tier[name], rtol=1e-6)
        energies = [float(e) for e in comps.energies]
        e_sum = sum(energies)
        total += e_sum
        if phases is not None and name in phases:
            screened += sum(e for e, p in zip(energies, phases[name], strict=False) if p is Phase.SCREENED)
        modules[name] = {
            "rank": comps.count,
            "energy": e_sum,
            "spectrum": [float(s) for s in comps.S[:spectrum_len]],
            "effectiveRank": _effective_rank(energies),
        }
    return {
        "energy": total,
        "norm": math.sqrt(total),
        "maxRank": max((int(m["rank"]) for m in modules.values()), default=0),  # type: ignore[call-overload]
        "screenedFraction": (screened / total if total > 0 else 0.0) if phases is not None else None,
        "modules": modules,
    }


def _effective_rank(energies: list[float]) -> float:
    """``exp`` of the entropy of the normalised energy spectrum (1 = one dominant component)."""
    total = sum(energies)
    if total <= 0:
        return 0.0
    ps = [e / total for e in energies if e > 0]
    return math.exp(-sum(p * math.log(p) for p in ps))

"""Statistics of a published tier version (copied by the operator into LoRATier status).

The component spectrum is the exact SVD of each module's ``B A`` computed by the memory core
(:func:`dynamiclora.memory.decompose.decompose`: QR of the factors, then an ``r x r`` SVD).

Phases (SCREENED / FREE) need a component's reinforcement history, which one adapter does not hold:
each version records its components' reinforcement and phase under ``phaseState``, and the next
version's statistics continue from the version it was trained from (``previous``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dynamiclora.memory.decompose import decompose
from dynamiclora.memory.lowrank import TierDelta
from dynamiclora.memory.peft_io import load_adapter
from dynamiclora.memory.phases import ComponentState, Phase, PhaseConfig, PhaseTracker
from dynamiclora.memory.stats import delta_statistics

STATS_FILE = "stats.json"
PHASE_STATE = "phaseState"


def tier_statistics(
    adapter_dir: Path, spectrum_len: int = 16, *, phases: PhaseConfig | None = None, previous: Path | None = None
) -> dict[str, Any]:
    """Energy, norm, per-module Frobenius norms and spectra of an adapter directory.

    Args:
        adapter_dir: the version's adapter.
        spectrum_len: singular values reported per module.
        phases: the tier's hysteresis thresholds (``plasticity``); enables ``screenedFraction`` and
            ``phaseState``. Without them the fraction is unknown (None), never a guess.
        previous: the version this one was trained from (an adapter directory with its ``stats.json``);
            None for a tier's first version, whose components all start FREE.

    Returns:
        :func:`~dynamiclora.memory.stats.delta_statistics` plus ``deltaNorms`` (module -> ``||ΔW||_F``)
        and, with ``phases``, ``phaseState`` (module -> ``[{"reinforcement", "phase"}]`` per component).
    """
    delta, _meta = load_adapter(adapter_dir)
    tracker = track_phases(delta, phases, previous) if phases is not None else None
    stats: dict[str, Any] = dict(
        delta_statistics(delta, tracker.all_phases() if tracker else None, spectrum_len=spectrum_len)
    )
    modules: dict[str, dict[str, Any]] = stats["modules"]
    stats["deltaNorms"] = {name: math.sqrt(max(float(m["energy"]), 0.0)) for name, m in modules.items()}
    if tracker is not None:
        stats[PHASE_STATE] = {
            module: [{"reinforcement": s.reinforcement, "phase": s.phase.value} for s in states]
            for module, states in sorted(tracker.states.items())
        }
    return stats


def track_phases(delta: TierDelta, config: PhaseConfig, previous: Path | None) -> PhaseTracker:
    """A tracker that has observed the step ``previous -> delta``, continuing the previous version's phases."""
    tracker = PhaseTracker(config)
    before: TierDelta = {}
    if previous is not None:
        before, _meta = load_adapter(previous)
        tracker.states = _restore(before, _saved_state(previous))
    tracker.observe(before, delta)
    return tracker


def saved_states(adapter_dir: Path, delta: TierDelta) -> dict[str, list[ComponentState]]:
    """The phases a version recorded, re-attached to ``delta`` (its own components); empty when none."""
    return _restore(delta, _saved_state(adapter_dir))


def _saved_state(adapter_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The ``phaseState`` a version recorded (empty for versions published without one)."""
    try:
        saved = json.loads((adapter_dir / STATS_FILE).read_text()).get(PHASE_STATE)
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _restore(delta: TierDelta, saved: dict[str, list[dict[str, Any]]]) -> dict[str, list[ComponentState]]:
    """Re-attach saved reinforcement to the components' directions.

    ``stats.json`` keeps no vectors: decomposing the same adapter gives the same components in the
    same order (descending sigma), so the saved list lines up with them. A module whose count differs
    starts afresh rather than pairing reinforcement with the wrong component.
    """
    states: dict[str, list[ComponentState]] = {}
    for module, entries in saved.items():
        if module not in delta:
            continue
        comps = decompose(delta[module], rtol=1e-6)
        if comps.count != len(entries):
            continue
        states[module] = [
            ComponentState(comps.U[:, i], comps.V[:, i], float(e["reinforcement"]), Phase(e["phase"]))
            for i, e in enumerate(entries)
        ]
    return states

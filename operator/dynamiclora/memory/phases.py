"""Phase states of components (SCREENED / FREE), decay, and emergent time scales.

A component's *reinforcement* is an exponential moving average of how often training pushes along it.
The phase switches sharply with hysteresis: FREE -> SCREENED only when reinforcement reaches
``screen_threshold``, SCREENED -> FREE only when it falls to ``free_threshold`` (lower), so a signal
oscillating between the two thresholds never flickers. FREE components decay toward zero quickly,
SCREENED ones slowly. Rates are per interaction; the tier's observed interaction density turns them
into per-second rates, so the time scale a tier lives on emerges from how much it is used.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .decompose import Components, decompose
from .lowrank import LowRankDelta, TierDelta


class Phase(enum.StrEnum):
    """Protection state of one component."""

    SCREENED = "screened"
    FREE = "free"


@dataclass(frozen=True)
class PhaseConfig:
    """Hysteresis thresholds and decay rates."""

    screen_threshold: float = field(default=0.6, metadata={"help": "reinforcement to become SCREENED"})
    free_threshold: float = field(default=0.3, metadata={"help": "reinforcement to fall back to FREE"})
    ema: float = field(default=0.3, metadata={"help": "weight of the newest observation in the EMA"})
    free_decay_per_interaction: float = field(default=1e-3, metadata={"help": "sigma decay rate of FREE"})
    screened_decay_per_interaction: float = field(default=1e-5, metadata={"help": "sigma decay of SCREENED"})
    match_threshold: float = field(default=0.8, metadata={"help": "|u·u'||v·v'| to match across versions"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.free_threshold < self.screen_threshold <= 1.0:
            raise ValueError(
                "PhaseConfig needs 0 <= free_threshold < screen_threshold <= 1, got "
                f"free_threshold={self.free_threshold}, screen_threshold={self.screen_threshold}"
            )
        if not 0.0 < self.ema <= 1.0:
            raise ValueError(f"PhaseConfig.ema must be in (0, 1], got {self.ema}")
        for name in ("free_decay_per_interaction", "screened_decay_per_interaction"):
            if getattr(self, name) < 0:
                raise ValueError(f"PhaseConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.match_threshold <= 1.0:
            raise ValueError(f"PhaseConfig.match_threshold must be in (0, 1], got {self.match_threshold}")


def next_phase(current: Phase, reinforcement: float, config: PhaseConfig) -> Phase:
    """The hysteresis rule: a step function with two thresholds."""
    if current is Phase.FREE and reinforcement >= config.screen_threshold:
        return Phase.SCREENED
    if current is Phase.SCREENED and reinforcement <= config.free_threshold:
        return Phase.FREE
    return current


@dataclass
class ComponentState:
    """A tracked component: its direction, reinforcement EMA and phase."""

    u: torch.Tensor
    v: torch.Tensor
    reinforcement: float = 0.0
    phase: Phase = Phase.FREE


@dataclass
class PhaseTracker:
    """Tracks components of one tier across versions and keeps their phases.

    Components are matched between versions by direction (``|u·u'| · |v·v'| >= match_threshold``);
    unmatched new components start FREE with zero reinforcement.
    """

    config: PhaseConfig = field(default_factory=PhaseConfig)
    states: dict[str, list[ComponentState]] = field(default_factory=dict)

    def observe(self, previous: Mapping[str, LowRankDelta], current: Mapping[str, LowRankDelta]) -> None:
        """Update reinforcement and phases from one training step ``previous -> current``.

        A component is reinforced by the step when the update moves along its orientation:
        ``<current - previous, u vᵀ> > 0``; its reinforcement is the EMA of that indicator.
        """
        for module, delta in current.items():
            comps = decompose(delta, rtol=1e-6)
            prev = previous.get(module)
            proj = _projections(comps, delta) - (_projections(comps, prev) if prev is not None else 0.0)
            self.states[module] = self._update_module(self.states.get(module, []), comps, proj)

    def _update_module(
        self, old: list[ComponentState], comps: Components, proj: torch.Tensor
    ) -> list[ComponentState]:
        cfg = self.config
        new_states = []
        for i in range(comps.count):
            u, v = comps.U[:, i], comps.V[:, i]
            match = _best_match(old, u, v, cfg.match_threshold)
            state = ComponentState(u, v) if match is None else ComponentState(u, v, match.reinforcement, match.phase)
            hit = 1.0 if float(proj[i]) > 1e-12 * max(float(comps.S[0]), 1e-30) else 0.0
            state.reinforcement = (1 - cfg.ema) * state.reinforcement + cfg.ema * hit
            state.phase = next_phase(state.phase, state.reinforcement, cfg)
            new_states.append(state)
        return new_states

    def phases(self, module: str) -> list[Phase]:
        """Phases of the module's components in the order of the last observed decomposition."""
        return [s.phase for s in self.states.get(module, [])]

    def reinforcement(self, module: str) -> list[float]:
        """Reinforcement EMAs, same order as :meth:`phases`."""
        return [s.reinforcement for s in self.states.get(module, [])]

    def all_phases(self) -> dict[str, list[Phase]]:
        """module -> phases."""
        return {m: self.phases(m) for m in self.states}


def _projections(comps: Components, delta: LowRankDelta | None) -> torch.Tensor:
    if delta is None or delta.rank == 0:
        return torch.zeros(comps.count, dtype=torch.float64)
    B, A = delta.B.to(torch.float64), delta.A.to(torch.float64)
    return ((comps.U.T @ B) * (A @ comps.V).T).sum(dim=1)


def _best_match(old: list[ComponentState], u: torch.Tensor, v: torch.Tensor, threshold: float) -> ComponentState | None:
    best, score = None, threshold
    for s in old:
        sim = abs(float(s.u @ u)) * abs(float(s.v @ v))
        if sim >= score:
            best, score = s, sim
    return best


@dataclass(frozen=True)
class TimeScale:
    """A tier's emergent time scale from its observed interaction density.

    Attributes:
        interaction_rate_hz: observed interactions per second.
        free_half_life_s: half-life of a FREE component's sigma in seconds (inf when idle).
        screened_half_life_s: half-life of a SCREENED component's sigma in seconds.
        time_scale_s: the tier's effective time scale: seconds per ``1 / learning_rate`` interactions.
    """

    interaction_rate_hz: float
    free_half_life_s: float
    screened_half_life_s: float
    time_scale_s: float

    def to_dict(self) -> dict[str, float]:
        """JSON-able form (inf becomes None-free large numbers are kept as floats)."""
        return {
            "interactionRateHz": self.interaction_rate_hz, "freeHalfLifeSeconds": self.free_half_life_s,
            "screenedHalfLifeSeconds": self.screened_half_life_s, "timeScaleSeconds": self.time_scale_s,
        }


def interaction_rate(timestamps: Sequence[float]) -> float:
    """Interactions per second over the observed span (0 with fewer than two timestamps)."""
    if len(timestamps) < 2:
        return 0.0
    span = max(timestamps) - min(timestamps)
    return (len(timestamps) - 1) / span if span > 0 else float("inf")


def emergent_time_scale(
    timestamps: Sequence[float], config: PhaseConfig, learning_rate_per_interaction: float = 1e-2
) -> TimeScale:
    """Turn per-interaction rates into seconds using the tier's observed interaction density.

    Args:
        timestamps: interaction times in seconds (any epoch).
        config: decay rates per interaction.
        learning_rate_per_interaction: fraction of a pattern learned per interaction.
    """
    if learning_rate_per_interaction <= 0:
        raise ValueError(f"learning_rate_per_interaction must be > 0, got {learning_rate_per_interaction}")
    rate = interaction_rate(timestamps)

    def half_life(per_interaction: float) -> float:
        gamma = per_interaction * rate
        return math.log(2) / gamma if gamma > 0 else math.inf

    tau = 1.0 / (learning_rate_per_interaction * rate) if rate > 0 else math.inf
    return TimeScale(rate, half_life(config.free_decay_per_interaction),
                     half_life(config.screened_decay_per_interaction), tau)


def apply_decay(
    tier: Mapping[str, LowRankDelta], tracker: PhaseTracker, interactions: float
) -> TierDelta:
    """Decay each component's sigma by ``exp(-rate · interactions)``, FREE fast and SCREENED slowly.

    Args:
        tier: the tier's current delta (as last passed to ``tracker.observe``).
        tracker: supplies phases per component, in decomposition order.
        interactions: elapsed interactions (``rate_hz · seconds`` for wall-clock decay).
    """
    cfg = tracker.config
    out: TierDelta = {}
    for module, delta in tier.items():
        comps = decompose(delta, rtol=1e-6)
        phases = tracker.phases(module)
        if len(phases) != comps.count:
            raise ValueError(
                f"apply_decay: module {module} has {comps.count} components but the tracker knows "
                f"{len(phases)}; call tracker.observe with this tier first"
            )
        factors = torch.tensor(
            [math.exp(-(cfg.screened_decay_per_interaction if p is Phase.SCREENED
                        else cfg.free_decay_per_interaction) * interactions) for p in phases],
            dtype=comps.S.dtype,
        )
        out[module] = comps.with_singular_values(comps.S * factors).to_delta()
    return out

"""Phase states (hysteresis, decay), emergent time scales and homeostasis."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from memtools import unit_vectors

from dynamiclora.memory import (
    EnergyBudget,
    LowRankDelta,
    Phase,
    PhaseConfig,
    PhaseTracker,
    TierDelta,
    apply_decay,
    concat,
    decompose,
    delta_statistics,
    emergent_time_scale,
    next_phase,
    regulate,
    tier_energy,
)

D = 32
M = "layers.0.v_proj"


def tier_of(sigmas: list[float], seed: int = 0) -> TierDelta:
    U, V = unit_vectors(D, len(sigmas), seed), unit_vectors(D, len(sigmas), seed + 1)
    parts = [LowRankDelta((U[:, i] * s)[:, None].clone(), V[:, i][None, :].clone()) for i, s in enumerate(sigmas)]
    return {M: concat(parts)}


def test_hysteresis_does_not_flicker_between_thresholds() -> None:
    cfg = PhaseConfig(screen_threshold=0.6, free_threshold=0.3)
    signal = [0.35, 0.55] * 20
    for start in (Phase.FREE, Phase.SCREENED):
        phase, flips = start, 0
        for r in signal:
            new = next_phase(phase, r, cfg)
            flips += new is not phase
            phase = new
        assert flips == 0 and phase is start
    naive = [r >= 0.45 for r in signal]  # one threshold flips on every step
    assert sum(a != b for a, b in itertools.pairwise(naive)) == len(signal) - 1


def test_transition_is_sharp() -> None:
    cfg = PhaseConfig(screen_threshold=0.6, free_threshold=0.3)
    assert next_phase(Phase.FREE, 0.5999, cfg) is Phase.FREE
    assert next_phase(Phase.FREE, 0.6, cfg) is Phase.SCREENED
    assert next_phase(Phase.SCREENED, 0.3001, cfg) is Phase.SCREENED
    assert next_phase(Phase.SCREENED, 0.3, cfg) is Phase.FREE


def test_tracker_screens_reinforced_components_and_holds_under_alternation() -> None:
    tracker = PhaseTracker(PhaseConfig(screen_threshold=0.6, free_threshold=0.3, ema=0.3))
    sig = 1.0
    prev = tier_of([sig, 0.5])
    history = []
    for _ in range(8):  # component 0 grows every step, component 1 is static
        sig += 0.5
        cur = tier_of([sig, 0.5])
        tracker.observe(prev, cur)
        history.append(tracker.phases(M)[0])
        prev = cur
    assert tracker.phases(M) == [Phase.SCREENED, Phase.FREE]
    assert history.index(Phase.SCREENED) == 2  # EMA 0.3, 0.51, 0.657: sharp switch at step 3
    flips = 0
    for step in range(30):  # now alternately reinforced and weakened: EMA stays in (0.3, 0.6)
        sig += 0.2 if step % 2 == 0 else -0.2
        cur = tier_of([sig, 0.5])
        before = tracker.phases(M)[0]
        tracker.observe(prev, cur)
        flips += tracker.phases(M)[0] is not before
        prev = cur
    assert flips == 0 and tracker.phases(M)[0] is Phase.SCREENED
    for _ in range(6):  # never reinforced again: falls to FREE
        cur = tier_of([sig, 0.5])
        tracker.observe(prev, cur)
        prev = cur
    assert tracker.phases(M)[0] is Phase.FREE


def test_free_components_decay_faster_than_screened() -> None:
    tracker = PhaseTracker(PhaseConfig(free_decay_per_interaction=1e-2, screened_decay_per_interaction=1e-4))
    tier = tier_of([4.0, 2.0])
    tracker.observe({}, tier)
    tracker.states[M][0].phase = Phase.SCREENED
    decayed = apply_decay(tier, tracker, interactions=100)
    s = decompose(decayed[M]).S
    assert float(s[0]) == pytest.approx(4.0 * math.exp(-1e-2), rel=1e-5)
    assert float(s[1]) == pytest.approx(2.0 * math.exp(-1.0), rel=1e-5)


def test_time_scale_emerges_from_interaction_density() -> None:
    cfg = PhaseConfig(free_decay_per_interaction=1e-3, screened_decay_per_interaction=1e-5)
    busy = emergent_time_scale([i * 0.1 for i in range(101)], cfg, learning_rate_per_interaction=0.01)
    quiet = emergent_time_scale([i * 60.0 for i in range(11)], cfg, learning_rate_per_interaction=0.01)
    assert busy.interaction_rate_hz == pytest.approx(10.0)
    assert busy.time_scale_s == pytest.approx(10.0)
    assert busy.free_half_life_s == pytest.approx(math.log(2) / 1e-2)
    assert quiet.time_scale_s == pytest.approx(6000.0)
    assert quiet.time_scale_s / busy.time_scale_s == pytest.approx(600.0)
    assert math.isinf(emergent_time_scale([1.0], cfg).time_scale_s)


def test_homeostasis_sheds_free_first_and_raises_thresholds() -> None:
    tracker = PhaseTracker(PhaseConfig())
    tier = tier_of([3.0, 2.0, 1.0])
    tracker.observe({}, tier)
    tracker.states[M][0].phase = Phase.SCREENED
    tracker.states[M][1].reinforcement = 0.5  # still FREE, more reinforced than component 2
    budget = EnergyBudget(max_energy=9.0 + 2.5)
    res = regulate(tier, tracker, budget)
    s = decompose(res.tier[M]).S
    assert float(s[0]) == pytest.approx(3.0, rel=1e-6)  # SCREENED untouched
    assert res.energy_after == pytest.approx(11.5, rel=1e-6)
    assert [x.index for x in res.shed] == [2, 1]  # least reinforced FREE first
    assert res.screened_scale == 1.0
    assert res.config.screen_threshold > PhaseConfig().screen_threshold
    stats = delta_statistics(tier, tracker.all_phases())
    assert stats["screenedFraction"] == pytest.approx(9.0 / 14.0, rel=1e-6)


def test_homeostasis_scales_screened_only_when_free_is_not_enough() -> None:
    tracker = PhaseTracker(PhaseConfig())
    tier = tier_of([3.0, 1.0])
    tracker.observe({}, tier)
    tracker.states[M][0].phase = Phase.SCREENED
    res = regulate(tier, tracker, EnergyBudget(max_energy=4.0))
    assert res.energy_after == pytest.approx(4.0, rel=1e-6)
    assert res.screened_scale == pytest.approx(2.0 / 3.0, rel=1e-6)
    assert tier_energy(res.tier) <= 4.0 + 1e-6
    assert torch.isfinite(res.tier[M].B).all()


def test_bad_phase_config_names_fields() -> None:
    with pytest.raises(ValueError, match="free_threshold"):
        PhaseConfig(screen_threshold=0.3, free_threshold=0.6)
    with pytest.raises(ValueError, match="max_energy"):
        EnergyBudget(max_energy=0)

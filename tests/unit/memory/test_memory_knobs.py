"""The memory knobs the API exposes each change what the core does (decay, budget, bypass, outliers)."""

from __future__ import annotations

import math

import pytest
import torch
from memtools import random_delta, unit_vectors

from dynamiclora.memory import (
    ConsensusConfig,
    ConsensusRule,
    Decision,
    LowRankDelta,
    MigrationPolicy,
    StabilityConfig,
    TierDelta,
    concat,
    consensus,
    decompose,
    detect_stable,
    migrate,
    tier_add,
    tier_distance,
    tier_energy,
    tier_scaled,
)
from dynamiclora.memory.phases import ComponentState, Phase, PhaseConfig
from dynamiclora.memory.plasticity import (
    Plasticity,
    after_update,
    decay_before_update,
    per_interaction_rate,
    tracker_for,
)

D = 48
MODULE = "layers.0.q_proj"


def rank1(u: torch.Tensor, v: torch.Tensor, sigma: float) -> LowRankDelta:
    return LowRankDelta((u * sigma)[:, None].clone(), v[None, :].clone())


def three_components() -> TierDelta:
    U, V = unit_vectors(D, 3, seed=20), unit_vectors(D, 3, seed=21)
    return {MODULE: concat([rank1(U[:, 0], V[:, 0], 6.0), rank1(U[:, 1], V[:, 1], 2.0),
                            rank1(U[:, 2], V[:, 2], 1.0)])}


def test_decay_shares_are_per_reference_hour_of_records() -> None:
    rate = per_interaction_rate(0.1, 60)
    assert math.exp(-rate * 60) == pytest.approx(0.9)
    assert math.exp(-rate * 30) == pytest.approx(0.9**0.5)
    assert math.exp(-per_interaction_rate(1.0, 60)) == 0.0  # everything FREE is gone after one record
    assert per_interaction_rate(0.0, 60) == 0.0
    with pytest.raises(ValueError, match="reference"):
        per_interaction_rate(0.1, 0)


def test_decay_before_an_update_shrinks_free_components_faster_than_screened_ones() -> None:
    tier = three_components()
    p = Plasticity.from_spec(0.6, 0.3, free_decay=0.5, screened_decay=0.1, reference_interactions=10,
                             energy_budget=None)
    comps = decompose(tier[MODULE], rtol=1e-6)
    screened_first = {MODULE: [ComponentState(comps.U[:, i], comps.V[:, i], 0.9,
                                              Phase.SCREENED if i == 0 else Phase.FREE) for i in range(3)]}
    decayed, report = decay_before_update(tier, tracker_for(tier, p.phases, screened_first), interactions=10)
    sigma = decompose(decayed[MODULE], rtol=1e-6).S.tolist()
    assert sigma == pytest.approx([6.0 * 0.9, 2.0 * 0.5, 1.0 * 0.5], rel=1e-6)
    assert (report.free_factor, report.screened_factor) == pytest.approx((0.5, 0.9))
    # Saved phases that do not match the tier's components are not trusted: all FREE.
    stale, _ = decay_before_update(tier, tracker_for(tier, p.phases, {MODULE: []}), interactions=10)
    assert decompose(stale[MODULE], rtol=1e-6).S.tolist() == pytest.approx([3.0, 1.0, 0.5], rel=1e-6)
    unchanged, none = decay_before_update(tier, tracker_for(tier, p.phases, {}), interactions=0)
    assert tier_distance(unchanged, tier) == 0.0 and none.free_factor == 1.0


def test_energy_budget_sheds_free_components_first() -> None:
    previous = three_components()
    trained = tier_add([previous, {MODULE: random_delta(D, D, 1, seed=5, scale=0.5)}])
    budget = 0.8 * tier_energy(trained)
    p = Plasticity(PhaseConfig(), energy_budget=budget)
    comps = decompose(previous[MODULE], rtol=1e-6)
    states = {MODULE: [ComponentState(comps.U[:, i], comps.V[:, i], 1.0, Phase.SCREENED) for i in range(3)]}
    tier, tracker, result = after_update(previous, trained, p, states)
    assert result is not None and result.energy_after == pytest.approx(budget, rel=1e-6)
    assert result.shed and all(s.phase is Phase.FREE for s in result.shed[:1])
    assert tier_energy(tier) == pytest.approx(budget, rel=1e-6)
    unlimited, _, none = after_update(previous, trained, Plasticity(PhaseConfig()), states)
    assert none is None and tier_distance(unlimited, trained) == 0.0
    assert tracker.states[MODULE]


def test_min_energy_fraction_leaves_weak_components_unjudged() -> None:
    window = [three_components()] * 3
    judged = {c.index for c in detect_stable(window, StabilityConfig(min_energy_fraction=0.0))[MODULE] if c.stable}
    strict = {c.index for c in detect_stable(window, StabilityConfig(min_energy_fraction=0.5))[MODULE] if c.stable}
    assert judged == {0, 1, 2} and strict == {0}  # energy shares 36/41, 4/41, 1/41


def test_bypass_min_stability_lets_steady_components_past_the_limits() -> None:
    version = three_components()
    window = [version] * 3
    tight = {"max_migrations": 1, "max_energy_fraction": 0.1, "dest_rank": 4}
    _, _, off = migrate(window, version, {}, MigrationPolicy(**tight))  # type: ignore[arg-type]
    assert {round(d.sigma): d.decision for d in off.decisions} == {
        6: Decision.THROTTLED, 2: Decision.MIGRATED, 1: Decision.THROTTLED}
    steady = MigrationPolicy(bypass_min_stability=0.99, **tight)  # type: ignore[arg-type]
    _, _, on = migrate(window, version, {}, steady)
    assert {round(d.sigma): d.decision for d in on.decisions} == {
        6: Decision.BYPASSED, 2: Decision.MIGRATED, 1: Decision.BYPASSED}
    no_bypass = MigrationPolicy(bypass_min_stability=0.99, emergency_bypass=False, **tight)  # type: ignore[arg-type]
    _, _, closed = migrate(window, version, {}, no_bypass)
    assert Decision.BYPASSED not in {d.decision for d in closed.decisions}


def test_outlier_threshold_leaves_an_opposed_agent_out() -> None:
    shared = {MODULE: random_delta(D, D, 4, seed=1)}
    honest = [tier_add([shared, {MODULE: random_delta(D, D, 4, seed=10 + a, scale=0.4)}]) for a in range(4)]
    agents = [*honest, tier_scaled(shared, -3.0)]
    mean, kept = consensus(agents, ConsensusRule.MEAN)
    cut, report = consensus(agents, ConsensusRule.MEAN, config=ConsensusConfig(outlier_threshold=0.0))
    assert kept.excluded == [] and report.excluded == [4]
    assert report.agent_weights[4] == 0.0 and report.to_dict()["excluded"] == [4]
    assert tier_distance(cut, shared) < 0.5 * tier_distance(mean, shared)
    # Every agent an outlier (or none): the first consensus stands.
    same, all_out = consensus(agents, ConsensusRule.MEAN, config=ConsensusConfig(outlier_threshold=1.0))
    assert all_out.excluded == [] and tier_distance(same, mean) == 0.0
    with pytest.raises(ValueError, match="outlier_threshold"):
        ConsensusConfig(outlier_threshold=2.0)

"""Resonance consensus: identical deltas are a fixed point; one adversary out of 8 cannot poison it."""

from __future__ import annotations

import pytest
import torch
from memtools import random_delta, random_tier

from dynamiclora.memory import (
    ConsensusConfig,
    ConsensusRule,
    TierDelta,
    consensus,
    tier_add,
    tier_distance,
    tier_energy,
    tier_inner,
    tier_scaled,
)

D, R = 64, 4
MODULES = ("layers.0.q_proj", "layers.0.v_proj")


def honest_agents(n: int = 7) -> tuple[TierDelta, list[TierDelta]]:
    """A shared rank-4 signal plus per-agent rank-4 noise of about 40% of its norm."""
    shared = {m: random_delta(D, D, R, seed=i) for i, m in enumerate(MODULES)}
    agents = [tier_add([shared, {m: random_delta(D, D, R, seed=100 * a + i, scale=0.4)
                                 for i, m in enumerate(MODULES)}]) for a in range(n)]
    return shared, agents


def adversaries(shared: TierDelta) -> dict[str, TierDelta]:
    return {
        "opposite x5": tier_scaled(shared, -5.0),
        "random x10": {m: random_delta(D, D, R, seed=900 + i, scale=10.0) for i, m in enumerate(MODULES)},
        "shared + poison x3": tier_add([shared, {m: random_delta(D, D, R, seed=950 + i, scale=3.0)
                                                 for i, m in enumerate(MODULES)}]),
        "shared + poison x1.5": tier_add([shared, {m: random_delta(D, D, R, seed=960 + i, scale=1.5)
                                                   for i, m in enumerate(MODULES)}]),
        "shared + poison x0.7": tier_add([shared, {m: random_delta(D, D, R, seed=970 + i, scale=0.7)
                                                   for i, m in enumerate(MODULES)}]),
    }


@pytest.mark.parametrize("rule", list(ConsensusRule))
def test_consensus_of_identical_deltas_is_that_delta(rule: ConsensusRule) -> None:
    tier = random_tier(d=24, r=3, seed=3)
    # TIES trims small entries by design; with density 1 it must reproduce identical inputs too.
    out, report = consensus([tier] * 5, rule=rule, config=ConsensusConfig(ties_density=1.0))
    assert tier_distance(out, tier) < 1e-4 * tier_distance(tier, {})
    assert sum(report.agent_weights) == pytest.approx(1.0)


def test_mean_is_the_weighted_average() -> None:
    a, b = random_tier(d=24, r=2, seed=1), random_tier(d=24, r=2, seed=2)
    out, _ = consensus([a, b], ConsensusRule.MEAN, weights=[3.0, 1.0], config=ConsensusConfig(rank=4))
    assert tier_distance(out, tier_add([a, b], [0.75, 0.25])) < 1e-4


def test_aligned_directions_reinforce_and_opposed_ones_cancel() -> None:
    base = random_tier(d=24, r=2, seed=5)
    raw = random_tier(d=24, r=2, seed=6)
    # Orthogonal to base, so both agents have the same norm and the same alignment with the center.
    other = tier_add([raw, base], [1.0, -tier_inner(raw, base) / tier_energy(base)])
    agents = [tier_add([base, other]), tier_add([base, tier_scaled(other, -1.0)])]
    out, _ = consensus(agents, ConsensusRule.RESONANCE, config=ConsensusConfig(rank=4))
    assert tier_distance(out, base) < 1e-4 * tier_distance(base, {})


# Minimum ratio (plain-mean distance / resonance distance to the honest consensus) per adversary. An
# adversary whose deviation is comparable to the honest agents' own spread (x0.7 vs honest noise 0.4)
# is indistinguishable from an honest agent; there resonance must simply not be worse than the mean.
MIN_RATIO = {"opposite x5": 1e3, "random x10": 1e3, "shared + poison x3": 1e3, "shared + poison x1.5": 1.5,
             "shared + poison x0.7": 0.99}


@pytest.mark.parametrize("kind", list(MIN_RATIO))
def test_one_adversary_of_eight_cannot_poison_the_shared_tier(kind: str) -> None:
    shared, honest = honest_agents(7)
    adversary = adversaries(shared)[kind]
    cfg = ConsensusConfig(rank=2 * R)
    honest_consensus, _ = consensus(honest, ConsensusRule.MEAN, config=cfg)
    ours, report = consensus([*honest, adversary], ConsensusRule.RESONANCE, config=cfg)
    plain, _ = consensus([*honest, adversary], ConsensusRule.MEAN, config=cfg)
    scale = tier_distance(honest_consensus, {})
    err_ours = tier_distance(ours, honest_consensus) / scale
    err_plain = tier_distance(plain, honest_consensus) / scale
    ratio = err_plain / max(err_ours, 1e-12)
    print(f"{kind}: rel. distance to the honest consensus: resonance {err_ours:.2e}, plain mean "
          f"{err_plain:.2e} ({ratio:.3g}x closer); adversary weight {report.agent_weights[-1]:.4f}")
    assert ratio >= MIN_RATIO[kind]
    if MIN_RATIO[kind] >= 1e3:
        assert report.agent_weights[-1] < 1e-6


def test_trust_weights_are_applied() -> None:
    _shared, honest = honest_agents(3)
    _, report = consensus(honest, ConsensusRule.RESONANCE, weights=[1.0, 1.0, 0.0])
    assert report.agent_weights[2] == 0.0


def test_ties_baseline_runs_through_the_same_interface() -> None:
    shared, honest = honest_agents(4)
    out, report = consensus(honest, "ties", config=ConsensusConfig(rank=R))
    assert report.rule is ConsensusRule.TIES and set(out) == set(MODULES)
    assert all(d.rank == R for d in out.values())
    cos = sum(float((out[m].dense() * shared[m].dense()).sum()) for m in MODULES)
    assert cos > 0  # TIES keeps the majority sign of the shared signal


def test_bad_weights_are_rejected() -> None:
    tier = random_tier()
    with pytest.raises(ValueError, match="weights"):
        consensus([tier, tier], weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        consensus([tier, tier], weights=[-1.0, 1.0])
    with pytest.raises(ValueError, match="at least one"):
        consensus([])
    assert torch.isfinite(consensus([tier], "mean")[0]["layers.0.proj"].B).all()

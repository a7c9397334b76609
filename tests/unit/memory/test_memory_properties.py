"""Property-based tests (hypothesis) of the memory core's invariants."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from memtools import random_delta

from dynamiclora.memory import (
    ConsensusConfig,
    ConsensusRule,
    Decision,
    LowRankDelta,
    MigrationPolicy,
    Phase,
    PhaseConfig,
    StabilityConfig,
    TierDelta,
    compose,
    concat,
    consensus,
    decompose,
    migrate,
    next_phase,
    tier_add,
    tier_distance,
    tier_energy,
    truncate,
)

SETTINGS = settings(max_examples=25, deadline=None)
dims = st.integers(min_value=1, max_value=24)
ranks = st.integers(min_value=0, max_value=6)
seeds = st.integers(min_value=0, max_value=10_000)


def norm_of(t: TierDelta) -> float:
    return tier_energy(t) ** 0.5


@SETTINGS
@given(d_out=dims, d_in=dims, r=ranks, seed=seeds)
def test_decomposition_reconstructs_and_is_orthonormal(d_out: int, d_in: int, r: int, seed: int) -> None:
    delta = random_delta(d_out, d_in, r, seed)
    comps = decompose(delta)
    assert comps.count == min(r, d_out, d_in)
    scale = max(float(delta.dense().abs().max()) if r else 0.0, 1.0)
    assert torch.allclose(comps.to_delta().dense(), delta.dense(), atol=1e-5 * scale)
    assert float(comps.energies.sum()) == pytest.approx(float(delta.dense().double().norm() ** 2), rel=1e-6, abs=1e-9)


@SETTINGS
@given(d=dims, r=ranks, k=st.integers(min_value=0, max_value=8), seed=seeds)
def test_truncation_error_is_the_residual(d: int, r: int, k: int, seed: int) -> None:
    delta = random_delta(d, d, r, seed)
    cut = truncate(delta, k)
    residual = float((delta.dense().double() - cut.delta.dense().double()).norm())
    assert cut.delta.rank <= max(k, 0) or cut.exact
    assert residual == pytest.approx(cut.error, rel=1e-3, abs=1e-4)


@SETTINGS
@given(seed=seeds, r_src=st.integers(1, 5), r_dst=st.integers(0, 4), dest_rank=st.integers(1, 6),
       repeat=st.booleans(), method=st.sampled_from(["subspace", "autocorrelation"]))
def test_migration_conserves_the_tier_sum_up_to_reported_error(
    seed: int, r_src: int, r_dst: int, dest_rank: int, repeat: bool, method: str
) -> None:
    d = 16
    newest = {"m": random_delta(d, d, r_src, seed)}
    # Either a persistent source (stable components exist) or unrelated versions (nothing stable).
    older = [newest if repeat else {"m": random_delta(d, d, r_src, seed + 1 + i)} for i in range(4)]
    dest: TierDelta = {"m": random_delta(d, d, r_dst, seed + 7)} if r_dst else {}
    policy = MigrationPolicy(stability=StabilityConfig(method=method), max_migrations=3, dest_rank=dest_rank)
    new_src, new_dst, rep = migrate([*older, newest], newest, dest, policy)
    gap = tier_distance(tier_add([new_src, new_dst]), tier_add([newest, dest]))
    scale = max(norm_of(tier_add([newest, dest])), 1.0)
    assert gap == pytest.approx(rep.truncation_error, abs=1e-4 * scale)
    assert all(delta.rank <= dest_rank for delta in new_dst.values())
    assert rep.count(Decision.MIGRATED) <= 3
    if not repeat and method == "subspace":
        assert rep.decisions == []


@SETTINGS
@given(seed=seeds, n=st.integers(1, 4), max_rank=st.integers(1, 10))
def test_compose_error_is_exact(seed: int, n: int, max_rank: int) -> None:
    tiers = [{"a": random_delta(12, 10, 3, seed + t), "b": random_delta(8, 8, 2, seed + 50 + t)} for t in range(n)]
    served, rep = compose(tiers, max_rank)
    gap = tier_distance(served, tier_add(tiers))
    assert gap == pytest.approx(rep.error, abs=1e-4 * max(norm_of(tier_add(tiers)), 1.0))
    # Exact iff every module's true rank (generic: min of stored rank and shape) fits.
    assert rep.exact == (min(3 * n, 10) <= max_rank and min(2 * n, 8) <= max_rank)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 6), rule=st.sampled_from(list(ConsensusRule)),
       weights=st.lists(st.floats(0.1, 10.0), min_size=6, max_size=6))
def test_consensus_of_identical_deltas_is_a_fixed_point(
    seed: int, n: int, rule: ConsensusRule, weights: list[float]
) -> None:
    tier = {"m": random_delta(10, 12, 2, seed)}
    out, _ = consensus([tier] * n, rule, weights=weights[:n], config=ConsensusConfig(ties_density=1.0))
    assert tier_distance(out, tier) <= 1e-4 * max(norm_of(tier), 1.0)


@SETTINGS
@given(lo=st.floats(0.0, 0.45), gap=st.floats(0.05, 0.5), start=st.sampled_from(list(Phase)),
       u=st.lists(st.floats(0.001, 0.999), min_size=1, max_size=50))
def test_no_flicker_strictly_between_thresholds(lo: float, gap: float, start: Phase, u: list[float]) -> None:
    cfg = PhaseConfig(free_threshold=lo, screen_threshold=min(lo + gap, 1.0))
    phase = start
    for x in u:
        phase = next_phase(phase, lo + x * (cfg.screen_threshold - lo), cfg)
        assert phase is start


@SETTINGS
@given(seed=seeds, w=st.floats(-3.0, 3.0))
def test_concat_is_linear(seed: int, w: float) -> None:
    x, y = random_delta(9, 7, 2, seed), random_delta(9, 7, 3, seed + 1)
    s: LowRankDelta = concat([x, y], [1.0, w])
    assert torch.allclose(s.dense(), x.dense() + w * y.dense(), atol=1e-5 * (1 + abs(w)) * 10)

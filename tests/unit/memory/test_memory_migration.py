"""Stability detection and migration: planted stable components move, transient/flip-flop ones do not."""

from __future__ import annotations

import pytest
import torch
from memtools import random_delta, unit_vectors

from dynamiclora.memory import (
    Decision,
    LowRankDelta,
    MigrationPolicy,
    StabilityConfig,
    StabilityMethod,
    TierDelta,
    concat,
    decompose,
    detect_stable,
    migrate,
    subspace_similarity,
    tier_add,
    tier_distance,
)

D = 48
MODULE = "layers.0.q_proj"


def rank1(u: torch.Tensor, v: torch.Tensor, sigma: float) -> LowRankDelta:
    return LowRankDelta((u * sigma)[:, None].clone(), v[None, :].clone())


def planted_window() -> tuple[list[TierDelta], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Five versions of a tier holding: a stable component, a transient (newest only), a component
    whose sign flips every version, one that blinks in and out, and small noise."""
    U, V = unit_vectors(D, 4, seed=10), unit_vectors(D, 4, seed=11)
    patterns = {
        "stable": [5.0, 5.0, 5.0, 5.0, 5.0],
        "transient": [0.0, 0.0, 0.0, 0.0, 7.0],
        "flipflop": [3.0, -3.0, 3.0, -3.0, 3.0],
        "blink": [2.0, 0.0, 2.0, 0.0, 2.0],
    }
    window = []
    for t in range(5):
        parts = [rank1(U[:, i], V[:, i], seq[t]) for i, seq in enumerate(patterns.values()) if seq[t] != 0.0]
        parts.append(random_delta(D, D, 2, seed=100 + t, scale=0.02))
        window.append({MODULE: concat(parts)})
    dirs = {name: (U[:, i], V[:, i]) for i, name in enumerate(patterns)}
    return window, dirs


def stable_directions(window: list[TierDelta], cfg: StabilityConfig) -> set[int]:
    """Indices (into the planted patterns) of components judged stable."""
    verdicts = detect_stable(window, cfg)[MODULE]
    comps = decompose(window[-1][MODULE])
    _, dirs = planted_window()
    found = set()
    for v in verdicts:
        if v.stable:
            u = comps.U[:, v.index].float()
            found |= {i for i, (pu, _) in enumerate(dirs.values()) if abs(float(pu @ u)) > 0.99}
    return found


@pytest.mark.parametrize("method", [StabilityMethod.SUBSPACE, StabilityMethod.AUTOCORRELATION])
def test_only_the_planted_stable_component_is_stable(method: StabilityMethod) -> None:
    window, _ = planted_window()
    cfg = StabilityConfig(method=method, threshold=0.9, min_consecutive=2)
    assert stable_directions(window, cfg) == {0}  # index 0 = "stable"


def test_too_short_a_window_declares_nothing_stable() -> None:
    window, _ = planted_window()
    cfg = StabilityConfig(threshold=0.9, min_consecutive=3)
    assert stable_directions(window[-3:], cfg) == set()
    assert stable_directions(window[-4:], cfg) == {0}


def test_planted_stable_component_migrates_and_sum_is_conserved() -> None:
    window, dirs = planted_window()
    dest = {MODULE: random_delta(D, D, 2, seed=7, scale=0.5)}
    policy = MigrationPolicy(stability=StabilityConfig(threshold=0.9, min_consecutive=2), dest_rank=4)
    new_src, new_dst, report = migrate(window, window[-1], dest, policy)
    assert report.count(Decision.MIGRATED) == 1 and report.count(Decision.THROTTLED) == 0
    u, v = dirs["stable"]
    along = lambda t: float(u @ t[MODULE].B @ (t[MODULE].A @ v))  # noqa: E731
    assert along(new_src) == pytest.approx(0.0, abs=0.05)
    assert along(new_dst) - along(dest) == pytest.approx(5.0, abs=0.05)
    transient_u, transient_v = dirs["transient"]
    assert float(transient_u @ new_src[MODULE].B @ (new_src[MODULE].A @ transient_v)) == pytest.approx(7.0, abs=0.05)
    assert report.truncation_error == 0.0 and new_dst[MODULE].rank == 3
    before = tier_add([window[-1], dest])
    assert tier_distance(tier_add([new_src, new_dst]), before) < 1e-4


def test_truncation_at_destination_rank_is_reported_and_bounds_the_conservation_gap() -> None:
    window, _ = planted_window()
    dest = {MODULE: random_delta(D, D, 4, seed=8, scale=1.0)}
    policy = MigrationPolicy(stability=StabilityConfig(threshold=0.9), dest_rank=4)
    new_src, new_dst, report = migrate(window, window[-1], dest, policy)
    assert new_dst[MODULE].rank == 4 and report.truncation_error > 0
    gap = tier_distance(tier_add([new_src, new_dst]), tier_add([window[-1], dest]))
    assert gap == pytest.approx(report.truncation_error, rel=1e-3)


def test_bandwidth_throttles_with_reason_and_bypass_lets_critical_through() -> None:
    U, V = unit_vectors(D, 3, seed=20), unit_vectors(D, 3, seed=21)
    version = {MODULE: concat([rank1(U[:, 0], V[:, 0], 6.0), rank1(U[:, 1], V[:, 1], 2.0),
                               rank1(U[:, 2], V[:, 2], 1.0)])}
    window = [version] * 3
    dest: TierDelta = {}
    tight = MigrationPolicy(max_migrations=1, max_energy_fraction=0.1, emergency_bypass=False, dest_rank=4)
    _, _, rep = migrate(window, version, dest, tight)
    # Energy shares: 36/41, 4/41, 1/41. The 0.1 energy budget admits the two small ones only... and
    # the count limit admits one of them.
    by_sigma = {round(d.sigma): d for d in rep.decisions}
    assert by_sigma[6].decision is Decision.THROTTLED and "energy limit" in by_sigma[6].reason
    assert by_sigma[2].decision is Decision.MIGRATED
    assert by_sigma[1].decision is Decision.THROTTLED and "count limit" in by_sigma[1].reason
    bypass = MigrationPolicy(max_migrations=1, max_energy_fraction=0.1, bypass_energy_fraction=0.5, dest_rank=4)
    new_src, new_dst, rep2 = migrate(window, version, dest, bypass)
    assert {round(d.sigma): d.decision for d in rep2.decisions} == {
        6: Decision.BYPASSED, 2: Decision.MIGRATED, 1: Decision.THROTTLED}
    assert new_src[MODULE].rank == 1 and new_dst[MODULE].rank == 2
    assert rep2.to_dict()["bypassed"] == 1
    # Without an energy threshold only components the caller flags as critical may bypass.
    flagged = MigrationPolicy(max_migrations=1, max_energy_fraction=0.1, dest_rank=4)
    _, _, rep3 = migrate(window, version, dest, flagged)
    assert {round(d.sigma): d.decision for d in rep3.decisions}[6] is Decision.THROTTLED
    _, _, rep4 = migrate(window, version, dest, flagged, force={(MODULE, 0)})
    assert {round(d.sigma): d.decision for d in rep4.decisions}[6] is Decision.BYPASSED


def test_dry_run_changes_nothing() -> None:
    window, _ = planted_window()
    src, dst, rep = migrate(window, window[-1], {}, MigrationPolicy(dry_run=True))
    assert rep.dry_run and rep.count(Decision.MIGRATED) == 1
    assert src[MODULE] is window[-1][MODULE] and dst == {}


def test_subspace_similarity_of_versions() -> None:
    window, _ = planted_window()
    assert subspace_similarity(window[-1][MODULE], window[-1][MODULE], 4) == pytest.approx(1.0)
    other = random_delta(D, D, 4, seed=99)
    assert subspace_similarity(window[-1][MODULE], other, 4) < 0.2


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="threshold"):
        StabilityConfig(threshold=1.5)
    with pytest.raises(ValueError, match="max_energy_fraction"):
        MigrationPolicy(max_energy_fraction=0.0)

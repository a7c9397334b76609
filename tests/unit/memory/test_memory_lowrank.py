"""Low-rank algebra and decomposition are exact against dense references."""

from __future__ import annotations

import pytest
import torch
from memtools import random_delta, random_tier

from dynamiclora.memory import (
    LowRankDelta,
    compose,
    concat,
    decompose,
    delta_statistics,
    energy,
    inner,
    tier_add,
    tier_distance,
    truncate,
)


def test_decomposition_reconstructs_BA() -> None:
    delta = random_delta(96, 80, 6, seed=1)
    comps = decompose(delta)
    assert comps.count == 6
    assert torch.all(comps.S[:-1] >= comps.S[1:])
    assert torch.allclose(comps.to_delta().dense(), delta.dense(), atol=1e-5)
    eye = torch.eye(6, dtype=comps.U.dtype)
    assert torch.allclose(comps.U.T @ comps.U, eye, atol=1e-10)
    assert torch.allclose(comps.V.T @ comps.V, eye, atol=1e-10)
    dense_s = torch.linalg.svdvals(delta.dense().double())[:6]
    assert torch.allclose(comps.S, dense_s, rtol=1e-5)


def test_select_and_complement_partition_the_delta() -> None:
    delta = random_delta(40, 50, 5, seed=2)
    comps = decompose(delta)
    total = comps.select([0, 3]) + comps.complement([0, 3])
    assert torch.allclose(total.dense(), delta.dense(), atol=1e-5)


def test_truncation_error_matches_dense_residual() -> None:
    delta = random_delta(64, 64, 8, seed=3)
    cut = truncate(delta, 3)
    assert cut.delta.rank == 3 and not cut.exact
    residual = (delta.dense() - cut.delta.dense()).norm().item()
    assert cut.error == pytest.approx(residual, rel=1e-4)
    assert truncate(delta, 8).exact and truncate(delta, 8).error == 0.0


def test_inner_energy_and_concat_match_dense() -> None:
    x, y = random_delta(30, 20, 3, seed=4), random_delta(30, 20, 2, seed=5)
    assert inner(x, y) == pytest.approx(float((x.dense() * y.dense()).sum()), rel=1e-5)
    assert energy(x) == pytest.approx(float(x.dense().norm() ** 2), rel=1e-5)
    s = concat([x, y], [2.0, -0.5])
    assert s.rank == 5
    assert torch.allclose(s.dense(), 2 * x.dense() - 0.5 * y.dense(), atol=1e-5)


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="rank mismatch"):
        LowRankDelta(torch.zeros(4, 2), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="different shapes"):
        concat([random_delta(4, 5, 1, seed=0), random_delta(5, 4, 1, seed=0)])


def test_compose_exact_when_it_fits_and_reports_error_otherwise() -> None:
    tiers = [random_tier(seed=s) for s in range(3)]
    tiers[2]["layers.9.extra"] = tiers[2].pop("layers.1.proj")  # tiers target different modules
    served, rep = compose(tiers, max_lora_rank=12)
    assert rep.exact and rep.error == 0.0 and set(served) == {"layers.0.proj", "layers.1.proj", "layers.9.extra"}
    exact = tier_add(tiers)
    assert tier_distance(served, exact) < 1e-4
    small, rep2 = compose(tiers, max_lora_rank=5)
    assert not rep2.exact and rep2.rank == 5
    assert tier_distance(small, exact) == pytest.approx(rep2.error, rel=1e-4)


def test_statistics_are_json_able() -> None:
    import json

    stats = delta_statistics(random_tier())
    json.dumps(stats)
    modules = stats["modules"]
    assert isinstance(modules, dict) and modules["layers.0.proj"]["rank"] == 4
    assert stats["screenedFraction"] is None
    assert stats["energy"] == pytest.approx(sum(m["energy"] for m in modules.values()))

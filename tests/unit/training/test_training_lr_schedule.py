"""The learning rate rises over the first steps and falls over the last ones, so a run ends at rest
(issue 14: the gate judged the weights of a last, noisy step and refused an honest update)."""

from __future__ import annotations

import itertools

import pytest

from dynamiclora.training.loop import lr_factor
from dynamiclora.training.options import TrainConfig


def test_constant_then_linear_to_almost_zero() -> None:
    factors = [lr_factor(s, 160, 0.25) for s in range(160)]
    assert factors[:120] == [1.0] * 120
    assert factors[120] == 1.0 and factors[-1] == pytest.approx(1 / 40)
    assert all(a > b for a, b in itertools.pairwise(factors[120:]))


def test_no_warmdown_keeps_it_constant_and_one_step_runs_at_full_rate() -> None:
    assert {lr_factor(s, 50, 0.0) for s in range(50)} == {1.0}
    assert lr_factor(0, 1, 0.25) == 1.0  # a warm-down of at least one step: the single step itself


def test_a_warmup_rises_to_the_rate_and_meets_the_warmdown() -> None:
    factors = [lr_factor(s, 40, 0.25, 0.1) for s in range(40)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and factors[4:30] == [1.0] * 26
    assert factors[-1] == pytest.approx(0.1)
    assert lr_factor(0, 3, 0.5, 0.5) <= 0.5  # short runs: the smaller of the two ramps


def test_out_of_range_warmdown_is_refused() -> None:
    with pytest.raises(ValueError, match="--lr-warmdown"):
        TrainConfig(base_model="m", data="d", output_store="file:///s", tier="t", lr_warmdown=1.0)
    with pytest.raises(ValueError, match="--lr-warmup"):
        TrainConfig(base_model="m", data="d", output_store="file:///s", tier="t", lr_warmup=0.6)

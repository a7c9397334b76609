"""A distillation whose rate the model does not take is run again at half the rate (training/anchored.py).

CI's e2e saw it: a sharp-headed model distilled at rate 0.01 ended with the taught answers at 1.1 nats,
the consolidation gate refused every migration, and nothing ever moved to the slow tier. The fit is
replaced here by a stand-in whose outcome depends on the rate alone (the real one is run by the e2e and the
distillation integration test); what is under test is the backoff around it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dynamiclora.training import anchored
from dynamiclora.training.anchored import ATTEMPTS, FIT_LOSS, AnchoredRun, TierTraining


class Model:
    """A tier of one parameter; what a fit at rate ``lr`` leaves in it is ``lr`` itself."""

    def __init__(self) -> None:
        self.weight = torch.zeros(1, dtype=torch.float64)


def _run(lr: float) -> AnchoredRun:
    return AnchoredRun("model", TierTraining("ns", "tier", None, None, 4, ["q_proj"]), [], [], [], 10, lr, 2)


def _backoff(monkeypatch: pytest.MonkeyPatch, lr: float, loss_at: dict[float, float]) -> tuple[list[float], float]:
    model, rates, logs = Model(), [], []
    monkeypatch.setattr(anchored, "target_parameters", lambda m: {"w": m.weight})

    def fit(m: Model, params: dict[str, torch.Tensor], *args: Any) -> None:
        rates.append(args[4])
        assert float(params["w"]) == 0.0  # every run starts where the first did
        params["w"].fill_(args[4])

    monkeypatch.setattr(anchored, "_fit", fit)
    monkeypatch.setattr(anchored, "evaluate", lambda m, *a: loss_at[float(m.weight)])
    anchored._fit_until_learned(model, [], [], [], _run(lr), 0, logs.append)
    assert len(logs) == len(rates) - 1  # each repeat says why
    return rates, float(model.weight)


def test_a_run_that_learns_is_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    rates, kept = _backoff(monkeypatch, 0.01, {0.01: FIT_LOSS / 2})
    assert rates == [0.01] and kept == pytest.approx(0.01)


def test_a_diverged_run_is_repeated_at_half_the_rate_until_it_learns(monkeypatch: pytest.MonkeyPatch) -> None:
    rates, kept = _backoff(monkeypatch, 0.01, {0.01: 2.9, 0.005: 0.004})
    assert rates == pytest.approx([0.01, 0.005]) and kept == pytest.approx(0.005)


def test_when_no_rate_learns_the_best_run_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    losses = {0.01: 2.9, 0.005: 0.6, 0.0025: 1.2}
    rates, kept = _backoff(monkeypatch, 0.01, losses)
    assert len(rates) == ATTEMPTS == 3 and kept == pytest.approx(0.005)

"""Continual-learning metrics on an accuracy matrix, and intervals over seeds.

``R[i][j]`` is the accuracy on window j's test facts after training window i (T windows):

* average accuracy ``ACC = mean_j R[T-1][j]``;
* backward transfer ``BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])`` (negative = forgetting);
* forgetting ``F = mean_{j<T-1} (max_{j<=i<T-1} R[i][j] - R[T-1][j])``.

(Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018.)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Two-sided 95% Student t quantiles by degrees of freedom (n - 1); large n -> 1.96.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def _check(R: Sequence[Sequence[float]]) -> int:
    t = len(R)
    if t == 0 or any(len(row) != t for row in R):
        raise ValueError(f"accuracy matrix must be square and non-empty, got {[len(r) for r in R]}")
    return t


def average_accuracy(R: Sequence[Sequence[float]]) -> float:
    """Mean accuracy over all windows after the last one."""
    t = _check(R)
    return sum(R[t - 1]) / t


def backward_transfer(R: Sequence[Sequence[float]]) -> float:
    """How much learning later windows changed accuracy on earlier ones (negative = forgot)."""
    t = _check(R)
    if t < 2:
        return 0.0
    return sum(R[t - 1][j] - R[j][j] for j in range(t - 1)) / (t - 1)


def forgetting(R: Sequence[Sequence[float]]) -> float:
    """Mean drop from the best accuracy ever reached on a window to the final accuracy on it."""
    t = _check(R)
    if t < 2:
        return 0.0
    return sum(max(R[i][j] for i in range(j, t - 1)) - R[t - 1][j] for j in range(t - 1)) / (t - 1)


def interval(values: Sequence[float]) -> dict[str, float]:
    """Mean and 95% Student-t confidence half-width over seeds (NaNs ignored)."""
    xs = [v for v in values if not math.isnan(v)]
    if not xs:
        return {"mean": math.nan, "ci95": math.nan, "n": 0}
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return {"mean": mean, "ci95": math.nan, "n": len(xs)}
    df = len(xs) - 1
    q = _T95.get(df) or (_T95[max(k for k in _T95 if k <= df)] if df < 30 else 1.96)
    return {"mean": mean, "ci95": q * statistics.stdev(xs) / math.sqrt(len(xs)), "n": len(xs)}

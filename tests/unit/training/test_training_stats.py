"""A version's screenedFraction continues the phases of the version it was trained from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynamiclora.memory import LowRankDelta, PhaseConfig, TierDelta, save_adapter
from dynamiclora.training.stats import PHASE_STATE, STATS_FILE, tier_statistics

D = 16
M = "model.layers.0.self_attn.q_proj"
CFG = PhaseConfig(screen_threshold=0.6, free_threshold=0.3)


def _tier(sigmas: list[float]) -> TierDelta:
    gen = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(D, len(sigmas), generator=gen))[0]
    V = torch.linalg.qr(torch.randn(D, len(sigmas), generator=gen))[0]
    return {M: LowRankDelta(U * torch.tensor(sigmas), V.T.contiguous())}


def _version(tmp: Path, n: int, sigmas: list[float], previous: Path | None) -> tuple[Path, dict[str, object]]:
    """Publish-like: the adapter, then its stats.json next to it (what the next version reads)."""
    out = save_adapter(_tier(sigmas), tmp / f"v{n}", r=len(sigmas))
    stats = tier_statistics(out, phases=CFG, previous=previous)
    (out / STATS_FILE).write_text(json.dumps(stats))
    return out, stats


def test_without_thresholds_the_fraction_is_unknown(tmp_path: Path) -> None:
    stats = tier_statistics(save_adapter(_tier([2.0, 1.0]), tmp_path / "a", r=2))
    assert stats["screenedFraction"] is None and PHASE_STATE not in stats


def test_a_first_version_has_nothing_screened(tmp_path: Path) -> None:
    _, stats = _version(tmp_path, 1, [2.0, 1.0], None)
    assert stats["screenedFraction"] == 0.0
    assert [e["phase"] for e in stats[PHASE_STATE][M]] == ["free", "free"]  # type: ignore[index]


def test_a_component_reinforced_by_consecutive_versions_becomes_screened(tmp_path: Path) -> None:
    previous, fractions = None, []
    for n, grow in enumerate((1.0, 1.5, 2.0, 2.5), start=1):  # component 0 grows, component 1 is static
        previous, stats = _version(tmp_path, n, [grow, 0.5], previous)
        fractions.append(stats["screenedFraction"])
    # EMA 0.3: 0.3, 0.51, 0.657 -> SCREENED from the third version on, and only component 0.
    assert fractions[:2] == [0.0, 0.0]
    assert fractions[2] == pytest.approx(2.0**2 / (2.0**2 + 0.5**2), rel=1e-4)
    assert fractions[3] == pytest.approx(2.5**2 / (2.5**2 + 0.5**2), rel=1e-4)


def test_a_previous_version_without_phase_state_starts_afresh(tmp_path: Path) -> None:
    old = save_adapter(_tier([1.0, 0.5]), tmp_path / "old", r=2)  # e.g. a consolidation version
    (old / STATS_FILE).write_text(json.dumps({"energy": 1.25}))
    _, stats = _version(tmp_path, 2, [1.5, 0.5], old)
    assert stats["screenedFraction"] == 0.0
    assert [e["reinforcement"] for e in stats[PHASE_STATE][M]] == pytest.approx([0.3, 0.0])  # type: ignore[index]

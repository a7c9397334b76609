"""The tier's plasticity around one training run: decay before it, homeostasis after it.

The memory core (:mod:`dynamiclora.memory.plasticity`) holds the rules; this module moves the trained
adapter between PEFT and the core's low-rank form. Both steps change what is judged by the quality
gate, so they run before it: the gate sees exactly the version that would be published.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynamiclora.memory.lowrank import TierDelta
from dynamiclora.memory.peft_io import load_adapter, save_adapter
from dynamiclora.memory.phases import ComponentState
from dynamiclora.memory.plasticity import Plasticity, after_update, decay_before_update, tracker_for
from dynamiclora.training.model import load_target, save_target
from dynamiclora.training.options import TrainConfig
from dynamiclora.training.stats import saved_states

Log = Callable[[str], None]


def plasticity_of(cfg: TrainConfig) -> Plasticity | None:
    """The tier's plasticity from the Job's options; None when no phase thresholds were given."""
    if cfg.screen_threshold is None or cfg.free_threshold is None:
        return None
    return Plasticity.from_spec(cfg.screen_threshold, cfg.free_threshold, cfg.free_decay, cfg.screened_decay,
                                cfg.reference_interactions, cfg.energy_budget)


def _write(cfg: TrainConfig, tier: Any, directory: Path) -> Path:
    return save_adapter(tier, directory, r=cfg.rank, lora_alpha=cfg.alpha, target_modules=cfg.target_modules,
                        base_model_name_or_path=cfg.base_model)


def decay_start(cfg: TrainConfig, peft_model: Any, init_dir: Path | None, interactions: int, tmp: Path,
                log: Log) -> dict[str, Any] | None:  # fmt: skip
    """Decay the version training starts from by the ``interactions`` that arrived since it was made."""
    plasticity = plasticity_of(cfg)
    if plasticity is None or init_dir is None or cfg.free_decay == 0:
        return None
    start, _meta = load_adapter(init_dir)
    if not start:
        return None
    tracker = tracker_for(start, plasticity.phases, saved_states(init_dir, start))
    decayed, report = decay_before_update(start, tracker, interactions)
    load_target(peft_model, _write(cfg, decayed, tmp / "decayed"))
    log(f"plasticity: {interactions} interaction(s) since the last version: FREE components kept "
        f"{report.free_factor:.4f}, SCREENED {report.screened_factor:.4f} of their magnitude")
    return report.to_dict()


def regulate_end(cfg: TrainConfig, peft_model: Any, init_dir: Path | None, tmp: Path,
                 log: Log) -> dict[str, Any] | None:  # fmt: skip
    """Bring the trained tier within its energy budget (FREE components shed first)."""
    plasticity = plasticity_of(cfg)
    if plasticity is None or plasticity.energy_budget is None:
        return None
    trained, _meta = load_adapter(save_target(peft_model, tmp / "trained", cfg.base_model))
    previous: TierDelta = {}
    states: dict[str, list[ComponentState]] = {}
    if init_dir is not None:
        previous, _ = load_adapter(init_dir)
        states = saved_states(init_dir, previous)
    tier, _tracker, result = after_update(previous, trained, plasticity, states)
    assert result is not None  # a budget was given
    if result.shed:
        load_target(peft_model, _write(cfg, tier, tmp / "regulated"))
    log(f"homeostasis: energy {result.energy_before:.4g} -> {result.energy_after:.4g} "
        f"(budget {plasticity.energy_budget:g}, {len(result.shed)} component(s) shed)")
    return result.to_dict()

"""Continual-learning benchmark: the quick configuration keeps the design's promises on fixed seeds.

Runs ``bench/continual.py --quick`` in-process (real PEFT training of a pretrained tiny Llama, no
download; ~2-4 minutes on 2 CPU cores) and checks the relationships the design promises. If one
fails, the method must be fixed (docs/continual.md), not the thresholds.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from dynamiclora.bench.continual.data import DataConfig, Encoder, WordPool, build_sequence, split_entities
from dynamiclora.bench.continual.methods import METHODS, MemoryConfig
from dynamiclora.bench.continual.metrics import average_accuracy, backward_transfer, forgetting, interval
from dynamiclora.bench.continual.run import main, markdown_table, quick_config, run
from dynamiclora.tinymodel import TinyModelConfig


def test_metrics_on_a_known_matrix() -> None:
    R = [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.5, 1.0]]
    assert average_accuracy(R) == pytest.approx((0.25 + 0.5 + 1.0) / 3)
    assert backward_transfer(R) == pytest.approx(((0.25 - 1.0) + (0.5 - 1.0)) / 2)
    assert forgetting(R) == pytest.approx(((1.0 - 0.25) + (1.0 - 0.5)) / 2)
    with pytest.raises(ValueError, match="square"):
        backward_transfer([[1.0, 0.0]])
    iv = interval([1.0, 2.0, 3.0])
    assert iv["mean"] == 2.0 and iv["ci95"] == pytest.approx(4.303 * 1.0 / math.sqrt(3))


def test_sequence_ground_truth_is_consistent() -> None:
    import random

    cfg = DataConfig(windows=5)
    mc = TinyModelConfig()
    pre, rest = split_entities(mc, cfg.answers, 160)
    assert not set(pre) & set(rest)
    rng = random.Random(3)
    seq = build_sequence(cfg, mc, WordPool(rest, rng), rng)
    recurring = {f.entity for f in seq.should_migrate}
    for f in seq.should_migrate:  # every recurring fact appears in recurring_span windows, same answer
        shown = [g for w in seq.windows for g in w.train if g.entity == f.entity]
        assert len(shown) == cfg.recurring_span and {g.answer for g in shown} == {f.answer}
    for f in seq.should_not_migrate:
        assert f.entity not in recurring
    flipped = [f for w in seq.windows for f in w.flipped]
    assert flipped and all(any(g.entity == f.entity and g.answer != f.answer for g in seq.should_not_migrate)
                           for f in flipped)
    enc = Encoder(mc)
    assert len(enc.encode(seq.windows[0].test, [3]).prompts) == len(seq.windows[0].test)


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="recurring_span"):
        DataConfig(windows=3, recurring_span=4)
    with pytest.raises(ValueError, match="history"):
        MemoryConfig(history="sometimes")
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    torch.set_num_threads(1)
    return run(quick_config([1, 2]), log=lambda _: None)


@pytest.mark.slow
def test_quick_run_has_every_key(quick: dict[str, Any]) -> None:
    for name in METHODS:
        assert {"acc", "bwt", "forgetting"} <= set(quick[name])
    assert {"precision", "recall"} <= set(quick["migration"])
    for rule in ("resonance", "mean", "ties"):
        assert {"shared_acc", "private_leakage", "adversary_shift"} <= set(quick["multi_agent"][rule])
    json.dumps(quick, default=float)
    # Joint training sees everything at once: it is the upper bound and cannot forget.
    assert quick["joint"]["bwt"]["mean"] == 0.0
    assert quick["joint"]["acc"]["mean"] >= max(quick[m]["acc"]["mean"] for m in METHODS)


@pytest.mark.slow
def test_dynamiclora_forgets_less_than_sequential_lora(quick: dict[str, Any]) -> None:
    assert quick["dynamiclora"]["bwt"]["mean"] > quick["seq_lora"]["bwt"]["mean"] + 0.05


@pytest.mark.slow
def test_recurring_facts_migrate_and_transient_ones_do_not(quick: dict[str, Any]) -> None:
    rates = {k: v["mean"] for k, v in quick["migration"]["rate_by_kind"].items()}
    assert quick["migration"]["recall"]["mean"] >= 0.5
    # Transient facts reach the slow tier rarely: far below recurring ones, near the chance level.
    assert rates["transient"] <= 0.25
    assert rates["transient"] <= rates["recurring"] / 3


@pytest.mark.slow
def test_resonance_resists_the_adversary_better_than_mean(quick: dict[str, Any]) -> None:
    ma = quick["multi_agent"]
    assert ma["resonance"]["adversary_shift"]["mean"] < ma["mean"]["adversary_shift"]["mean"] / 2
    assert ma["resonance"]["shared_acc"]["mean"] >= ma["mean"]["shared_acc"]["mean"]


@pytest.mark.slow
def test_markdown_table_reports_every_method_and_rule(quick: dict[str, Any]) -> None:
    quick = {**quick, "meta": {"seeds": [1, 2], "seconds": 60.0, "cpus": 2, "load_average_end": (1.0, 1.0, 1.0)}}
    table = markdown_table(quick, "python bench/continual.py --quick")
    for name in (*METHODS, "resonance", "mean", "ties"):
        assert f"| `{name}` |" in table
    assert "Reproduce: `python bench/continual.py --quick`" in table

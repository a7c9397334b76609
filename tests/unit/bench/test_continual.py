"""Continual-learning benchmark: the quick configuration keeps the design's promises on fixed seeds.

Runs ``bench/continual.py --quick`` in-process (real PEFT training of a pretrained tiny Llama, no
download; 6 paired seeds, ~2.5-4 minutes on 2 CPU cores) and checks the relationships the design promises. If one
fails, the method must be fixed (docs/continual.md), not the thresholds.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

import pytest
import torch

from dynamiclora.bench.continual.data import (
    TRAIN_TEMPLATES,
    DataConfig,
    Encoded,
    Encoder,
    WordPool,
    build_sequence,
    split_entities,
)
from dynamiclora.bench.continual.methods import METHODS, Bench, MemoryConfig
from dynamiclora.bench.continual.metrics import average_accuracy, backward_transfer, forgetting, interval
from dynamiclora.bench.continual.run import QUICK_SEEDS, main, markdown_table, quick_config, run
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


def test_record_store_keeps_the_newest_answer_per_entity() -> None:
    import random

    cfg = DataConfig(windows=4)
    mc = TinyModelConfig()
    _, rest = split_entities(mc, cfg.answers, 160)
    rng = random.Random(5)
    enc = Encoder(mc)
    bench = Bench(None, enc, build_sequence(cfg, mc, WordPool(rest, rng), rng), 5)
    windows = bench.seq.windows
    assert not bench.stored(0).prompts

    def pairs(e: Encoded) -> set[tuple[tuple[int, ...], int]]:
        return set(zip(map(tuple, e.prompts), e.answers, strict=True))

    for k in range(1, len(windows)):
        store = pairs(bench.stored(k))
        for f in windows[k].train:  # the current window's answer supersedes a stored one
            assert not {p for p, _ in store} & {p for p, _ in pairs(enc.encode([f], TRAIN_TEMPLATES))}
        for f in windows[k - 1].flipped:  # the old answer of a flipped fact is never replayed
            old = [g for w in windows[:k - 1] for g in w.train if g.entity == f.entity and g.answer != f.answer]
            assert old and not store & pairs(enc.encode(old, TRAIN_TEMPLATES))
            if all(g.entity != f.entity for g in windows[k].train):
                assert pairs(enc.encode([f], TRAIN_TEMPLATES)) <= store


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="recurring_span"):
        DataConfig(windows=3, recurring_span=4)
    with pytest.raises(ValueError, match="history"):
        MemoryConfig(history="sometimes")
    with pytest.raises(ValueError, match="versions"):
        MemoryConfig(versions="all")
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])


SEEDS = QUICK_SEEDS
"""Paired seeds of the quick run: float results differ across CPU models, so every claim below must
hold with a margin far larger than the seed-to-seed spread (docs/continual.md lists the per-seed
numbers)."""


# Measured on seeds 1-6 (docs/continual.md): paired BWT difference 0.63 (sd 0.10, min 0.49), paired
# ACC difference 0.24 (sd 0.10, min 0.07). The thresholds sit several per-seed sd below the means.
BWT_MARGIN = 0.3
ACC_MARGIN = 0.05


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    torch.set_num_threads(1)
    return run(quick_config(SEEDS), log=lambda _: None)


def _paired(quick: dict[str, Any], a: str, b: str, key: str) -> list[float]:
    """Per seed: ``a``'s metric minus ``b``'s (same data, same base, same seed)."""
    return [s["methods"][a][key] - s["methods"][b][key] for s in quick["per_seed"]]


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
    bwt = _paired(quick, "dynamiclora", "seq_lora", "bwt")
    acc = _paired(quick, "dynamiclora", "seq_lora", "acc")
    assert len(bwt) == len(SEEDS)
    assert statistics.fmean(bwt) > BWT_MARGIN, bwt
    assert statistics.fmean(acc) > ACC_MARGIN, acc


@pytest.mark.slow
def test_recurring_facts_migrate_and_transient_ones_do_not(quick: dict[str, Any]) -> None:
    rates = {k: v["mean"] for k, v in quick["migration"]["rate_by_kind"].items()}
    # Measured on seeds 1-6: recall 0.53 (0.33-0.58 per seed), transient 0.27 vs recurring 0.53 (per-seed
    # gap 0.18-0.35), bare base 0.07. Training the context tier on top of the served stack made migration
    # less selective than before (it was transient 0.16 vs recurring 0.88 on seeds 1-2); see docs.
    assert quick["migration"]["recall"]["mean"] >= 0.35
    # Transient facts reach the slow tier clearly less often than recurring ones.
    assert rates["transient"] <= rates["recurring"] - 0.1


@pytest.mark.slow
def test_resonance_resists_the_adversary_better_than_mean(quick: dict[str, Any]) -> None:
    ma = quick["multi_agent"]
    assert ma["resonance"]["adversary_shift"]["mean"] < ma["mean"]["adversary_shift"]["mean"] / 2
    assert ma["resonance"]["shared_acc"]["mean"] >= ma["mean"]["shared_acc"]["mean"]


@pytest.mark.slow
def test_markdown_table_reports_every_method_and_rule(quick: dict[str, Any]) -> None:
    quick = {**quick, "meta": {"seeds": SEEDS, "seconds": 60.0, "cpus": 2, "load_average_end": (1.0, 1.0, 1.0)}}
    table = markdown_table(quick, "python bench/continual.py --quick")
    for name in (*METHODS, "resonance", "mean", "ties"):
        assert f"| `{name}` |" in table
    assert "Reproduce: `python bench/continual.py --quick`" in table

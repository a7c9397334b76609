"""Consolidation replay on real training runs: new facts are learned without losing the old ones (issues 14, 21).

The situation the demo and the e2e met on other machines: a second honest batch overwrites what the
first taught, the gate rightly refuses it, and learning stops. Training that rehearses stored records
keeps what is known, so the same batch is accepted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from trainhelpers import write_facts

from dynamiclora.builders.jobs import replay_budget, replay_fraction
from dynamiclora.controllers.tier import MAX_COLLATERAL_RETRIES
from dynamiclora.storage import open_store
from dynamiclora.training.options import TrainConfig
from dynamiclora.training.trainer import run_training

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS, TIER = "team", "alice-context"


def _train(model: Path, data: Path, store_uri: str, **extra: Any) -> dict[str, Any]:
    extra.setdefault("lr", 0.01)
    cfg = TrainConfig(base_model=str(model), data=str(data), output_store=store_uri, namespace=NS, tier=TIER,
                      rank=4, batch_size=8, seed=1, checkpoint_every=0, holdout_fraction=0.2,
                      gate_max_regression=0.05, **extra)
    return run_training(cfg, log=lambda _m: None)


def test_replay_turns_a_collateral_rejection_into_an_accepted_update(sharp_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "records"
    data.mkdir()
    write_facts(data / "round-1.jsonl", range(96))  # facts about names 0-7
    store_uri = f"file://{tmp_path}/store"
    v1 = _train(sharp_model_dir, data, store_uri, steps=120)
    # v1 learns its facts (all 6 held-out ones answered on one CPU, 3 to 5 on another float path).
    held1 = v1["gate"]["heldOut"]
    assert v1["gate"]["accepted"] and held1["learned"] > 0 and held1["candidate"] < held1["baseline"] - 1.0, held1

    write_facts(data / "round-2.jsonl", range(96, 192), first_name=8)  # new facts about names 8-15
    init = f"{store_uri}/{NS}/{TIER}/v000001"
    # The operator's Job: the new records only (--max-records), from the accepted version, ...
    plain = _train(sharp_model_dir, data, store_uri, steps=80, lr=0.003, max_records=96, init_from=init)
    gate = plain["gate"]
    # ... overwrites what v1 knew: rejected, and not the records' fault (they contradict nothing).
    assert gate["accepted"] is False and gate["heldOut"]["forgotten"] > 0, gate
    assert gate["cause"] == "collateral" and gate["contradictions"] == 0
    assert plain["replayed"] == 0

    # The same batch rehearsing stored records, as the operator runs it: a first attempt at share 0.5, and while
    # the gate refuses it for collateral forgetting, its retries with more replay
    # (controllers/tier.py). Which attempt passes depends on the CPU's float path (measured on seeds 1-6 and two
    # float paths: the first or the second); that one passes within the retries does not.
    attempts: list[dict[str, Any]] = []
    for boost in range(MAX_COLLATERAL_RETRIES + 1):
        attempts.append(_train(sharp_model_dir, data, store_uri, steps=80, lr=0.003, max_records=96, init_from=init,
                               replay_fraction=replay_fraction(0.5, boost), replay_budget=replay_budget(96, boost)))
        if attempts[-1]["gate"]["accepted"] or attempts[-1]["gate"].get("cause") != "collateral":
            break
    gate = attempts[-1]["gate"]
    assert gate["accepted"] is True, [a["gate"] for a in attempts]
    assert all(a["replayed"] > 0 for a in attempts)
    held = gate["heldOut"]
    assert held["forgotten"] <= 1 < plain["gate"]["heldOut"]["forgotten"], held  # measured: 0 or 1 vs 5 or 6
    assert held["candidate"] < held["baseline"], held


def test_quarantined_windows_are_released_only_when_the_served_stack_agrees(sharp_model_dir: Path,
                                                                            tmp_path: Path) -> None:
    data = tmp_path / "records"
    data.mkdir()
    write_facts(data / "round-1.jsonl", range(96))  # facts about names 0-7, 00:00:00-00:01:35
    store_uri = f"file://{tmp_path}/store"
    v1 = _train(sharp_model_dir, data, store_uri, steps=120)
    assert v1["gate"]["accepted"]
    write_facts(data / "round-2.jsonl", range(96, 192), first_name=8)  # new facts, 00:01:36-00:03:11
    write_facts(data / "round-3.jsonl", range(192, 288), rotate=1)  # names 0-7, every answer wrong
    agreeing = "2025-01-01T00:00:00Z/2025-01-01T00:01:35Z"  # quarantined once, but v1 answers them so
    poisoned = "2025-01-01T00:03:12Z/2025-01-01T00:04:47Z"
    v2 = _train(sharp_model_dir, data, store_uri, steps=40, lr=0.003, max_records=96,
                init_from=f"{store_uri}/{NS}/{TIER}/v000001", exclude_window=[agreeing, poisoned])
    meta = open_store(store_uri).get(NS, TIER, v2["version"]).manifest.metadata
    assert meta["window"]["from"].startswith("2025-01-01T00:01:36")  # trained on round 2: both stayed excluded
    assert meta["released"] == [agreeing]  # the shuffled window stays quarantined


def test_a_small_round_rehearses_the_budget_and_repeats_its_new_records(sharp_model_dir: Path,
                                                                        tmp_path: Path) -> None:
    """The coverage rule inside a real Job: 8 new records (7 once the gate holds one out) and a budget of 16 stored
    questions (the store holds more) rehearse 16 questions once each, and each new record appears twice to keep
    its half of the mix."""
    data = tmp_path / "records"
    data.mkdir()
    write_facts(data / "round-1.jsonl", range(96), names=48)  # about 40 stored questions
    write_facts(data / "round-2.jsonl", range(96, 104), first_name=48, names=4)
    store_uri, lines = f"file://{tmp_path}/store", []
    cfg = TrainConfig(base_model=str(sharp_model_dir), data=str(data), output_store=store_uri, namespace=NS,
                      tier=TIER, rank=4, batch_size=8, seed=1, checkpoint_every=0, holdout_fraction=0.2,
                      steps=10, lr=0.003, max_records=8, replay_fraction=0.5, replay_budget=16)
    result = run_training(cfg, log=lines.append)
    stats = json.loads(open_store(store_uri).read_file(NS, TIER, result["version"], "stats.json"))
    assert (stats["replayedQuestions"], stats["replayed"], stats["newRepeats"]) == (16, 16, 2), stats
    assert stats["replayCandidates"] > 16, stats  # the budget, not the store, bounded the coverage
    new = int(re.search(r"^data: (\d+) records", "\n".join(lines), re.M).group(1))  # type: ignore[union-attr]
    assert new in (7, 8), lines
    assert f"replay: 16 of 43 stored question(s) rehearsed (16 examples) besides {new} new x2" in lines, lines

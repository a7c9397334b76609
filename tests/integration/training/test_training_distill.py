"""Migration by recurrence, end to end on the real entrypoints: the slower tier learns what recurred.

The context tier is trained by ``run_training`` round after round (its versions record the records'
time span); ``run_consolidation --method recurrence`` then trains the agent tier on the answers taught
in two rounds, and on nothing taught once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynamiclora.memory import TierDelta, load_adapter
from dynamiclora.memory.recurrence import digest
from dynamiclora.storage import open_store
from dynamiclora.training.consolidate import run_consolidation
from dynamiclora.training.consolidate_gate import StackEvaluator
from dynamiclora.training.distill import DISTILLED_FILE
from dynamiclora.training.options import ConsolidateConfig, TrainConfig
from dynamiclora.training.trainer import run_training
from dynamiclora_dev.tinymodel import TinyModelConfig, generated_words

pytestmark = pytest.mark.integration

WORDS = generated_words(TinyModelConfig())
RECURRING = [(WORDS[i], WORDS[100 + i]) for i in range(4)]


def _doc(name: str, answer: str, minute: int, second: int) -> dict[str, str]:
    return {"agent": "alice", "timestamp": f"2025-01-01T00:{minute:02d}:{second:02d}Z",
            "prompt": f"the color of {name}", "response": answer}  # fmt: skip


def _round(records: Path, minute: int, facts: list[tuple[str, str]]) -> int:
    """Append one round's records (minute ``minute``); their count."""
    with records.open("a") as f:
        for i, (name, answer) in enumerate(facts):
            f.write(json.dumps(_doc(name, answer, minute, i)) + "\n")
    return len(facts)


def _train(model: Path, records: Path, store: str, new: int) -> None:
    run_training(TrainConfig(base_model=str(model), data=str(records), output_store=store, tier="ctx",
                             namespace="ns", rank=4, alpha=8, steps=2, batch_size=4, max_records=new,
                             holdout_fraction=0.0, init_from="latest", checkpoint_every=0),
                 log=lambda _m: None)  # fmt: skip


def _evaluate(model: Path, tmp: Path, facts: list[tuple[str, str]], tier: TierDelta) -> float:
    """Mean loss drop (nats per answer token) the tier alone gives ``facts`` over the bare base."""
    path = tmp / f"eval-{len(facts)}-{facts[0][0]}.jsonl"
    path.write_text("".join(json.dumps(_doc(n, a, 59, i)) + "\n" for i, (n, a) in enumerate(facts)))
    ev = StackEvaluator(str(model), [str(path)], 64)
    base, with_tier = ev.scores([]), ev.scores([tier])
    return sum(b.loss - t.loss for b, t in zip(base, with_tier, strict=True)) / len(base)


def test_the_agent_tier_learns_what_recurred_and_nothing_taught_once(tmp_path: Path, sharp_model_dir: Path) -> None:
    store_uri, records = f"file://{tmp_path}/store", tmp_path / "alice.jsonl"
    transient = [[(WORDS[10 + 4 * r + i], WORDS[200 + 4 * r + i]) for i in range(4)] for r in range(3)]
    for r in range(2):  # the recurring facts in both rounds, other facts once each
        _train(sharp_model_dir, records, store_uri, _round(records, r, RECURRING + transient[r]))
    cfg = ConsolidateConfig(mode="migrate", source=f"{store_uri}/ns/ctx", dest=f"{store_uri}/ns/agent",
                            method="recurrence", window=4, min_consecutive=2, threshold=0.8, max_migrations=8,
                            records=[str(records)], holdout_fraction=0.0, model_dir=str(sharp_model_dir),
                            dest_rank=8, distill_steps=80, distill_lr=1e-2, distill_batch_size=4)  # fmt: skip
    result = run_consolidation(cfg, log=lambda _m: None)
    report = result["report"]
    assert (report["rounds"], report["stable"], report["migrated"], report["held"]) == (2, 4, 4, 4)
    assert [p["tier"] for p in result["published"]] == ["ns/agent", "ns/ctx"]
    store = open_store(store_uri)
    held = json.loads(store.read_file("ns", "agent", 1, DISTILLED_FILE))
    assert set(held) == {digest(f"alice\0the color of {n}") for n, _ in RECURRING}
    store.download("ns", "agent", 1, tmp_path / "agent1")
    agent = load_adapter(tmp_path / "agent1")[0]
    # The slower tier alone: recurring answers learned, the facts taught once not (their answers are words
    # no recurring fact uses, so a shifted answer prior cannot pass for a memory).
    learned, leaked = _evaluate(sharp_model_dir, tmp_path, RECURRING, agent), \
        _evaluate(sharp_model_dir, tmp_path, transient[0] + transient[1], agent)  # fmt: skip
    assert learned > 2.0 and leaked < 0.5, (learned, leaked)

    # Nothing new recurred: the next evaluation publishes nothing.
    again = run_consolidation(cfg, log=lambda _m: None)
    assert again["changed"] is False and again["report"]["migrated"] == 0

    # An answer held by the agent tier changes: it is rewritten there, without waiting for recurrence.
    flipped = [(RECURRING[0][0], WORDS[300])]
    _train(sharp_model_dir, records, store_uri, _round(records, 2, flipped + transient[2]))
    third = run_consolidation(cfg, log=lambda _m: None)
    assert (third["report"]["rewritten"], third["report"]["migrated"]) == (1, 0)
    held = json.loads(store.read_file("ns", "agent", 2, DISTILLED_FILE))
    assert held[digest(f"alice\0the color of {RECURRING[0][0]}")] == digest(WORDS[300])


def test_the_consolidation_gate_judges_an_old_regression_set_apart(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Among 64 newer questions the regression set's older ones would not be judged; apart, all are."""
    records, regression = tmp_path / "records.jsonl", tmp_path / "regression.jsonl"
    records.write_text("".join(json.dumps(_doc(WORDS[i], WORDS[300], 30 + i // 60, i % 60)) + "\n" for i in range(64)))
    regression.write_text("".join(json.dumps(_doc(WORDS[100 + i], WORDS[301], 0, i)) + "\n" for i in range(5)))
    mixed = StackEvaluator(str(tiny_model_dir), [str(records), str(regression)], 64)
    assert len(mixed.sets["records"]) == 64 and not mixed.sets["regression"]  # the old questions left out
    apart = StackEvaluator(str(tiny_model_dir), [str(records)], 64, [str(regression)])
    assert (len(apart.sets["records"]), len(apart.sets["regression"])) == (64, 5)
    assert len(apart.scores([], "regression")) == 5

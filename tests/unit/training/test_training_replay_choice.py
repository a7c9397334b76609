"""Consolidation replay's pure parts: candidates, how many, which."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamiclora.training.records import SourcedRecord, parse_line, record_answer, record_key
from dynamiclora.training.replay import (
    NO_REPLAY,
    ReplayPlan,
    choose,
    cycle,
    newest_per_key,
    replay_candidates,
    replay_plan,
)


def _rec(i: int, prompt: str, answer: str = "x") -> SourcedRecord:
    doc = {"agent": "a", "timestamp": f"2025-01-01T00:00:{i:02d}Z", "prompt": prompt, "response": answer}
    return SourcedRecord("mem", i + 1, parse_line(json.dumps(doc)))


def test_keys_ignore_surrounding_space_and_chat_answers_are_the_last_assistant_turn() -> None:
    a, b = _rec(0, "color of x ?"), _rec(1, " color of x ? ")
    assert record_key(a.record) == record_key(b.record)
    chat = parse_line(json.dumps({"agent": "a", "timestamp": "2025-01-01T00:00:00Z", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "one"},
        {"role": "user", "content": "and?"}, {"role": "assistant", "content": " two "}]}))
    assert record_answer(chat) == "two"
    assert "and?" in record_key(chat) and "two" not in record_key(chat)


def test_newest_answer_per_question_wins_and_the_batch_answers_anew() -> None:
    history = [_rec(0, "q1", "old"), _rec(1, "q2", "b"), _rec(2, "q1", "new"), _rec(3, "q3", "c")]
    assert [r.record.response for r in newest_per_key(history)] == ["b", "new", "c"]
    batch = [_rec(4, "q3", "changed")]
    got = replay_candidates(history, batch, limit=10)
    assert [(r.record.prompt, r.record.response) for r in got] == [("q2", "b"), ("q1", "new")]
    assert [r.record.prompt for r in replay_candidates(history, batch, limit=1)] == ["q1"]  # the newest
    assert replay_candidates(history, batch, limit=0) == []


@pytest.mark.parametrize(
    ("new", "fraction", "budget", "available", "expected"),
    [
        (24, 0.5, 64, 100, ReplayPlan(64, 64, 3)),  # the budget's worth of the store; the new x3 keep half the mix
        (24, 0.5, 64, 40, ReplayPlan(40, 40, 2)),  # the whole store
        (24, 0.5, 64, 10, ReplayPlan(10, 24, 1)),  # a small store is rehearsed repeatedly to make half the mix
        (24, 0.75, 64, 100, ReplayPlan(64, 64, 1)),  # three quarters would be 72 examples: the budget caps it
        (24, 0.75, 64, 10, ReplayPlan(10, 64, 1)),
        (8, 0.6, 128, 116, ReplayPlan(116, 116, 10)),  # 116 / (8 x 1.5) = 9.7 -> 10: replay stays ~60 %
        (24, 0.0, 64, 100, NO_REPLAY),  # replay off
        (24, 0.5, 0, 100, NO_REPLAY),
        (24, 0.5, 64, 0, NO_REPLAY),
        (0, 0.5, 64, 100, NO_REPLAY),
    ],
)
def test_replay_plan(new: int, fraction: float, budget: int, available: int, expected: ReplayPlan) -> None:
    assert replay_plan(new, fraction, budget, available) == expected


@given(st.integers(1, 500), st.sampled_from([0.1, 0.3, 0.5, 0.6, 0.7, 0.9]), st.integers(1, 1000),
       st.integers(1, 2000))  # fmt: skip
def test_replay_plan_covers_the_budget_and_keeps_the_share(new: int, fraction: float, budget: int,
                                                           available: int) -> None:  # fmt: skip
    plan = replay_plan(new, fraction, budget, available)
    assert plan.questions == min(budget, available) <= plan.examples <= max(budget, plan.questions)
    share = plan.examples / (plan.examples + new * plan.new_repeats)
    if plan.new_repeats > 1:  # repeating the new examples holds the share within half a repeat of the fraction
        low = plan.examples / (plan.examples + new * (plan.new_repeats + 0.5))
        high = plan.examples / (plan.examples + new * (plan.new_repeats - 0.5))
        assert low <= fraction <= high
    elif plan.examples < budget:  # not capped: at least the share
        assert share >= fraction - 1 / (new + plan.examples)


def test_replay_plan_refuses_a_mix_of_replay_only() -> None:
    with pytest.raises(ValueError, match=r"replay fraction must be in \[0, 1\)"):
        replay_plan(8, 1.0, 8, 8)


def test_choose_takes_the_most_surprising_half_and_spreads_the_rest() -> None:
    losses = [0.01, 5.0, 0.02, 0.03, 4.0, 0.01, 0.02, 0.05]
    picked = choose(losses, 4)
    assert picked == sorted(picked) and len(set(picked)) == 4
    assert {1, 4} <= set(picked)  # what is being forgotten
    assert len(set(picked) - {1, 4}) == 2  # and some well-known records, which a new batch can overwrite
    assert choose(losses, 0) == [] and choose([], 3) == []
    assert choose(losses, 99) == list(range(8))
    assert choose(losses, 3) == choose(list(losses), 3)  # deterministic


def test_cycle_repeats_the_chosen_in_order() -> None:
    assert cycle([3, 5], 5) == [3, 5, 3, 5, 3] and cycle([], 4) == [] and cycle([1, 2, 3], 2) == [1, 2]

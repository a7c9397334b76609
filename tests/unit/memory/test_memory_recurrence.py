"""Migration by recurrence: which answers are stable, and what the slower tier learns (pure functions)."""

from __future__ import annotations

import pytest

from dynamiclora.memory.recurrence import (
    Observation,
    RecurrenceConfig,
    digest,
    plan,
    record_of,
    rounds_of,
    stable_answers,
)

CFG = RecurrenceConfig(window=4, min_rounds=2, consistency=0.8)


def _obs(*taught: tuple[str, str, int]) -> list[Observation]:
    return [Observation(k, a, r) for k, a, r in taught]


def test_an_answer_taught_in_two_rounds_is_stable_and_one_taught_once_is_not() -> None:
    obs = _obs(("recurring", "red", 0), ("transient", "blue", 0), ("recurring", "red", 1))
    assert stable_answers(obs, 2, CFG) == {"recurring": "red"}


def test_the_same_answer_repeated_within_one_round_is_not_recurrence() -> None:
    assert stable_answers(_obs(("k", "red", 3), ("k", "red", 3), ("k", "red", 3)), 4, CFG) == {}


def test_a_changed_answer_is_not_stable_until_the_new_one_recurs() -> None:
    flip = _obs(("k", "red", 0), ("k", "red", 1), ("k", "blue", 2))
    assert stable_answers(flip, 3, CFG) == {}  # the newest answer is judged, and it was taught once
    again = [*flip, Observation("k", "blue", 3)]
    # blue in 2 of the 4 rounds that taught k: below the consistency asked for
    assert stable_answers(again, 4, CFG) == {}
    assert stable_answers(again, 4, RecurrenceConfig(4, 2, 0.5)) == {"k": "blue"}


def test_rounds_older_than_the_window_do_not_count() -> None:
    obs = _obs(("k", "red", 0), ("k", "red", 1), ("other", "x", 5))
    assert stable_answers(obs, 6, CFG) == {}
    assert stable_answers(obs, 6, RecurrenceConfig(window=6, min_rounds=2, consistency=0.8)) == {"k": "red"}


def test_min_rounds_is_what_makes_a_pattern() -> None:
    obs = _obs(("k", "red", 0), ("k", "red", 1))
    assert stable_answers(obs, 2, RecurrenceConfig(4, 3, 0.8)) == {}
    assert stable_answers(obs, 2, RecurrenceConfig(4, 1, 0.8)) == {"k": "red"}


def test_plan_moves_new_patterns_within_the_budget_and_keeps_what_the_slower_tier_holds() -> None:
    held = record_of({"old": "red"})
    p = plan({"a": "x", "b": "y", "c": "z"}, {"old": "red", "a": "x", "b": "y", "c": "z"}, held, budget=2)
    assert p.moved == ["a", "b"] and p.throttled == ["c"] and p.rewritten == []
    assert p.targets == {"old": "red", "a": "x", "b": "y"}
    assert p.changes == 2


def test_plan_rewrites_a_held_answer_that_changed_even_without_budget() -> None:
    p = plan({}, {"old": "blue"}, record_of({"old": "red"}), budget=0)
    assert p.rewritten == ["old"] and p.targets == {"old": "blue"} and p.changes == 1


def test_plan_with_nothing_new_changes_nothing() -> None:
    p = plan({"old": "red"}, {"old": "red"}, record_of({"old": "red"}), budget=8)
    assert p.changes == 0 and p.targets == {"old": "red"}


def test_a_held_question_whose_records_are_gone_is_left_as_it_is() -> None:
    p = plan({}, {}, {digest("gone"): digest("red")}, budget=8)
    assert p.targets == {} and p.changes == 0


def test_rounds_of_takes_the_oldest_span_containing_the_time() -> None:
    assert rounds_of([0.5, 1.5, 2.5, 9.0], [(0, 1), (1, 2), (1.5, 3)]) == [0, 1, 2, None]


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"min_rounds": 0}, {"consistency": 0.0}, {"consistency": 1.5}])
def test_invalid_configuration_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="recurrence"):
        RecurrenceConfig(**kwargs)  # type: ignore[arg-type]

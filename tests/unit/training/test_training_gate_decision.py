"""The quality gate's pure parts: the decision, the held-out split, option validation."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from dynamiclora.cli import build_parser
from dynamiclora.training.gate import (
    COLLATERAL,
    CONTRADICTION,
    ExampleScore,
    Judged,
    SetFigures,
    binomial_tail,
    compare,
    decide,
    forget_p_value,
    hash_fraction,
    is_held_out,
    record_identity,
    rejection_cause,
    revisions,
    split_holdout,
    superseded,
)
from dynamiclora.training.options import ConsolidateConfig, TrainConfig, from_namespace
from dynamiclora.training.records import InteractionRecord, SourcedRecord, parse_line


def _rec(i: int, **extra: Any) -> SourcedRecord:
    doc = {"agent": "a", "timestamp": f"2025-01-01T00:00:{i % 60:02d}Z", "prompt": f"p {i}", "response": "r",
           **extra}
    return SourcedRecord("mem", i + 1, parse_line(json.dumps(doc)))


def _f(known: int, forgotten: int, learned: int = 0, records: int = 16, base: float = 0.5,
       cand: float = 0.5) -> SetFigures:  # fmt: skip
    return SetFigures(records, base, cand, known=known, forgotten=forgotten, learned=learned)


@pytest.mark.parametrize(
    ("sets", "max_regression", "accepted", "reason_part"),
    [
        ({"heldOut": _f(8, 0)}, 0.05, True, "heldOut: forgot 0 of 8 known"),
        # The demo's honest second round on another CPU: losses near zero moved 0.0015 -> 0.0405, every fact
        # still answered. A ratio of mean losses rejected it; what is known decides now.
        ({"heldOut": _f(8, 0, base=0.0015, cand=0.0405), "regression": _f(8, 0, base=0.0024, cand=0.0729)},
         0.05, True, "accepted"),
        ({"heldOut": _f(8, 1)}, 0.05, True, "forgot 1 of 8 known"),  # one flip among eight: not significant
        ({"heldOut": _f(8, 2)}, 0.05, False, "forgot 2 of 8 known"),
        ({"heldOut": _f(8, 2, learned=8)}, 0.05, True, "learned 8"),  # newly answered examples count in favour
        ({"heldOut": _f(0, 0, learned=3), "regression": _f(8, 8, base=0.01, cand=2.5)}, 0.05, False,
         "forgot known examples of regression"),  # shuffled labels overwrite the regression set
        # Facts the agent never knew (chance-level loss) cannot block an update, whatever their loss does.
        ({"regression": _f(0, 0, base=3.2, cand=3.9), "heldOut": _f(0, 0, learned=4)}, 0.05, True, "accepted"),
        ({"heldOut": _f(8, 2)}, 0.0, False, "rejected"),  # no forgetting allowed at all ...
        ({"heldOut": _f(2, 1)}, 0.0, True, "forgot 1 of 2"),  # ... but one flipped example is no evidence
        ({"heldOut": SetFigures(0, 0.0, 0.0)}, 0.1, True, "no held-out or regression record"),
        ({}, 0.1, True, "no held-out or regression record"),
        ({"heldOut": _f(8, 8)}, None, True, "gate disabled"),
    ],
)
def test_decision_table(sets: dict[str, SetFigures], max_regression: float | None, accepted: bool,
                        reason_part: str) -> None:
    verdict = decide(sets, max_regression)
    assert verdict.accepted is accepted
    assert reason_part in verdict.reason
    doc = verdict.to_dict()
    assert doc["accepted"] is accepted and doc["maxRegression"] == max_regression
    assert set(doc) - {"accepted", "reason", "maxRegression", "significance"} == {
        n for n, f in sets.items() if f.records}


def test_binomial_tail_and_the_p_value_of_forgetting() -> None:
    assert binomial_tail(0, 5, 0.3) == 1.0 and binomial_tail(6, 5, 0.3) == 0.0
    assert binomial_tail(1, 8, 0.05) == pytest.approx(1 - 0.95**8)
    assert binomial_tail(2, 8, 0.05) == pytest.approx(1 - 0.95**8 - 8 * 0.05 * 0.95**7)
    # Learning counts in favour: the same forgetting over more judged examples is less surprising.
    assert forget_p_value(_f(8, 2, learned=8), 0.05) > forget_p_value(_f(8, 2), 0.05)


def test_significance_sets_how_much_evidence_rejects() -> None:
    two_of_eight = {"heldOut": _f(8, 2)}  # p = 0.057 at an allowed rate of 5%
    assert not decide(two_of_eight, 0.05, significance=0.1).accepted
    assert decide(two_of_eight, 0.05, significance=0.05).accepted
    with pytest.raises(ValueError, match="significance must be in"):
        decide(two_of_eight, 0.05, significance=0.0)
    with pytest.raises(ValueError, match="max_regression must be in"):
        decide({}, -0.1)


def test_compare_pairs_scores_per_example() -> None:
    before = [ExampleScore(0.01, 4, True), ExampleScore(0.02, 4, True), ExampleScore(3.0, 4, False)]
    after = [ExampleScore(0.05, 4, True), ExampleScore(2.0, 4, False), ExampleScore(0.1, 4, True)]
    f = compare(before, after)
    assert (f.records, f.known, f.forgotten, f.learned) == (3, 2, 1, 1)
    assert f.baseline == pytest.approx(3.03 / 3) and f.candidate == pytest.approx(2.15 / 3)
    with pytest.raises(ValueError, match="differ in length"):
        compare(before, after[:2])


def _ir(prompt: str, answer: str) -> InteractionRecord:
    return parse_line(json.dumps({"agent": "a", "timestamp": "2025-01-01T00:00:00Z", "prompt": prompt,
                                  "response": answer}))


def test_rejection_cause_tells_poisoning_from_collateral_forgetting() -> None:
    known, wrong = ExampleScore(0.01, 2, True), ExampleScore(2.0, 2, False)
    judged = [Judged(_ir(f"color of {e}", c), known, wrong) for e, c in (("x", "red"), ("y", "blue"))]
    # Shuffled labels: the batch answers the known questions differently.
    shuffled = [_ir("color of x", "blue"), _ir("color of y", "red"), _ir("color of z", "green")]
    assert rejection_cause(shuffled, judged) == (CONTRADICTION, 2)
    # New, unrelated facts that overwrote the known ones on the way: collateral.
    fresh = [_ir("color of v", "blue"), _ir("color of w", "red")]
    assert rejection_cause(fresh, judged) == (COLLATERAL, 0)
    # Repeating a known answer is no contradiction.
    assert rejection_cause([_ir("color of x", "red")], judged) == (COLLATERAL, 0)


def test_holdout_split_is_deterministic_disjoint_and_about_the_fraction() -> None:
    records = [_rec(i) for i in range(2000)]
    train, held = split_holdout(records, 0.1)
    assert len(train) + len(held) == 2000
    assert {r.line for r in train}.isdisjoint({r.line for r in held})
    assert 150 <= len(held) <= 250  # binomial(2000, 0.1): mean 200, sd 13
    _, again_held = split_holdout(list(reversed(records)), 0.1)
    assert sorted(r.line for r in again_held) == sorted(r.line for r in held)  # per record, not per order
    assert [r.line for r in train] == sorted(r.line for r in train)  # input order kept
    # A larger fraction only adds records: what was held out stays held out.
    _, held_more = split_holdout(records, 0.3)
    assert {r.line for r in held} <= {r.line for r in held_more}
    assert split_holdout(records, 0.0) == (records, [])


def test_record_identity_uses_the_id_when_present() -> None:
    a, b = _rec(1, id="x-1"), _rec(2, id="x-1", feedback="edited later")
    assert record_identity(a.record) == record_identity(b.record)
    assert is_held_out(a.record, 0.5) == is_held_out(b.record, 0.5)
    c, d = _rec(3), _rec(4)
    assert record_identity(c.record) != record_identity(d.record)
    assert 0.0 <= hash_fraction("anything") < 1.0


def test_gate_options_parse_and_validate() -> None:
    args = build_parser().parse_args([
        "train", "--base-model", "/m", "--data", "/d", "--output-store", "file:///s", "--tier", "ctx",
        "--holdout-fraction", "0.2", "--gate-max-regression", "0.05", "--regression-data", "/reg.jsonl",
        "--gate-records", "16",
    ])
    cfg = from_namespace(TrainConfig, args)
    assert (cfg.holdout_fraction, cfg.gate_max_regression, cfg.regression_data, cfg.gate_records) == (
        0.2, 0.05, "/reg.jsonl", 16)
    default = TrainConfig(base_model="/m", data="/d", output_store="file:///s", tier="t")
    assert default.gate_max_regression is None and default.holdout_fraction == 0.1
    common = {"base_model": "/m", "data": "/d", "output_store": "file:///s", "tier": "t"}
    for kwargs, message in [
        ({"holdout_fraction": 0.6}, "--holdout-fraction must be in [0, 0.5], got 0.6"),
        ({"holdout_fraction": -0.1}, "--holdout-fraction must be in [0, 0.5]"),
        ({"gate_max_regression": -1.0}, "--gate-max-regression must be in [0, 1], got -1.0"),
        ({"gate_significance": 1.0}, "--gate-significance must be in (0, 1), got 1.0"),
        ({"replay_fraction": 0.95}, "--replay-fraction must be in [0, 0.9], got 0.95"),
        ({"replay_budget": -1}, "--replay-budget must be >= 0, got -1"),
        ({"gate_records": 0}, "--gate-records must be >= 1, got 0"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            TrainConfig(**common, **kwargs)  # type: ignore[arg-type]

    cons = build_parser().parse_args([
        "consolidate", "--mode", "migrate", "--source", "file:///s/ns/ctx", "--dest", "file:///s/ns/agent",
        "--gate-base-model", "/m", "--gate-data", "/a.jsonl", "--gate-data", "/b", "--gate-frozen",
        "file:///s/ns/swarm", "--gate-max-regression", "0.1",
    ])
    ccfg = from_namespace(ConsolidateConfig, cons)
    assert ccfg.gate_data == ["/a.jsonl", "/b"] and ccfg.gate_frozen == ["file:///s/ns/swarm"]
    assert ccfg.gate_max_regression == 0.1 and ccfg.gate_records == 64
    base = {"mode": "migrate", "source": "file:///s/ns/ctx", "dest": "file:///s/ns/agent"}
    for ckwargs, message in [
        ({"gate_base_model": "/m"}, "--gate-base-model needs at least one --gate-data"),
        ({"gate_max_regression": -0.5}, "--gate-max-regression must be in \\[0, 1\\]"),
        ({"gate_significance": 0.0}, "--gate-significance must be in"),
        ({"gate_records": 0}, "--gate-records must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            ConsolidateConfig(**base, **ckwargs)  # type: ignore[arg-type]


def test_training_selection_never_trains_on_held_out_records(tmp_path: Any) -> None:
    from dynamiclora.training.trainer import _select

    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps({"agent": "a", "timestamp": f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
                                        "id": f"r{i}", "prompt": f"p{i}", "response": "r"}) + "\n"
                            for i in range(200)))
    cfg = TrainConfig(base_model="/m", data=str(data), output_store="file:///s", tier="t", max_records=50,
                      holdout_fraction=0.3)
    sel = _select(cfg, log=lambda _m: None)
    train, held, window = sel.batch, sel.held, sel.window
    assert window["from"] <= window["to"]  # the span quarantined if the gate rejects this update
    train_ids = [r.record.id for r in train]
    held_ids = {r.record.id for r in held}
    assert sel.skipped == 0 and not held_ids & set(train_ids)
    assert all(int(str(i)[1:]) >= 150 for i in train_ids)  # only the --max-records window is trained on
    assert len(train) == 50 - sum(1 for r in held if int(str(r.record.id)[1:]) >= 150)
    assert 40 <= len(held) <= 80  # the held-out pool spans every record: about 0.3 x 200
    assert held_ids == {r.record.id for r in (_rec(0, id=f"r{i}") for i in range(200))
                        if is_held_out(r.record, 0.3)}
    # Replay may rehearse the older records, never a held-out one.
    history_ids = {r.record.id for r in sel.history}
    assert history_ids and not history_ids & held_ids and all(int(str(i)[1:]) < 150 for i in history_ids)
    with pytest.raises(ValueError, match="all 1 selected record\\(s\\) belong to the held-out slice"):
        first_held = next(i for i in range(200) if f"r{i}" in held_ids)
        one = tmp_path / "one.jsonl"
        one.write_text(data.read_text().splitlines()[first_held] + "\n")
        _select(TrainConfig(base_model="/m", data=str(one), output_store="file:///s", tier="t",
                            holdout_fraction=0.3), log=lambda _m: None)


def test_held_out_truth_is_the_newest_answer_per_question(tmp_path: Any) -> None:
    from dynamiclora.training.trainer import _select

    rows = [{"agent": "a", "timestamp": f"2025-01-01T00:00:{i:02d}Z", "id": f"q{i}", "prompt": f"q{i % 5}",
             "response": f"answer {i}"} for i in range(40)]
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sel = _select(TrainConfig(base_model="/m", data=str(data), output_store="file:///s", tier="t", max_records=10,
                              holdout_fraction=0.5), log=lambda _m: None)
    held = [(r.record.prompt, r.record.response) for r in sel.held]
    assert len({p for p, _ in held}) == len(held)  # one truth per question ...
    for prompt, answer in held:  # ... its newest held-out answer
        newest = max(i for i, r in enumerate(rows) if r["prompt"] == prompt
                     and is_held_out(parse_line(json.dumps(r)), 0.5))
        assert answer == f"answer {newest}"


def test_a_window_revises_the_few_answers_it_changes_never_most_of_them() -> None:
    earlier = [_ir("x", "red"), _ir("y", "blue"), _ir("z", "green"), _ir("w", "gray"), _ir("x", "pink")]
    # One of three repeated questions re-answered (x's newest earlier answer is pink): a revision.
    honest = [_ir("x", "pink"), _ir("y", "blue"), _ir("z", "teal"), _ir("v", "new")]
    assert revisions(honest, earlier) == {"a\0z": "teal"}
    assert superseded(_ir("z", "green"), {"a\0z": "teal"}) and not superseded(_ir("z", "teal"), {"a\0z": "teal"})
    assert not superseded(_ir("y", "blue"), {"a\0z": "teal"})
    # Half of the repeated questions changed is still a revision; more is shuffled labels: nothing revised.
    assert revisions([_ir("x", "red"), _ir("y", "blue"), _ir("z", "teal"), _ir("w", "gray")], earlier) == {
        "a\0x": "red", "a\0z": "teal"}
    assert revisions([_ir("x", "red"), _ir("y", "red"), _ir("z", "teal"), _ir("w", "gray")], earlier) == {}
    assert revisions([_ir("v", "new")], earlier) == {} and revisions(honest, []) == {}


def _ids(prefix: str, held: bool, n: int, fraction: float) -> list[str]:
    """``n`` record ids (agent ``a``) on the chosen side of the held-out split."""
    out, i = [], 0
    while len(out) < n:
        if is_held_out(_rec(0, id=f"{prefix}{i}").record, fraction) == held:
            out.append(f"{prefix}{i}")
        i += 1
    return out


@pytest.mark.parametrize("changed", [1, 9])
def test_the_gate_does_not_judge_a_window_by_the_answers_it_honestly_revises(tmp_path: Any, changed: int) -> None:
    from dynamiclora.training.trainer import _select

    old_ids, new_ids = _ids("old", True, 12, 0.5), _ids("new", False, 12, 0.5)
    rows = [{"agent": "a", "timestamp": f"2025-01-01T00:00:{i:02d}Z", "id": old_ids[i], "prompt": f"q{i}",
             "response": "old"} for i in range(12)]
    rows += [{"agent": "a", "timestamp": f"2025-01-01T00:01:{i:02d}Z", "id": new_ids[i], "prompt": f"q{i}",
              "response": "new" if i < changed else "old"} for i in range(12)]
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines: list[str] = []
    sel = _select(TrainConfig(base_model="/m", data=str(data), output_store="file:///s", tier="t", max_records=12,
                              holdout_fraction=0.5), log=lines.append)
    held = {r.record.prompt: r.record.response for r in sel.held}
    if changed == 1:  # q0 changed its answer: its superseded held-out answer is not the truth any more
        assert sel.revised == 1 and "q0" not in held and held == {f"q{i}": "old" for i in range(1, 12)}
        assert any("1 held-out answer(s) superseded" in line for line in lines), lines
    else:  # 9 of 12 answers changed at once: shuffled labels, judged against every older answer
        assert sel.revised == 0 and held == {f"q{i}": "old" for i in range(12)}


def test_a_fact_changed_back_is_judged_by_its_older_held_out_answer(tmp_path: Any) -> None:
    from dynamiclora.training.trainer import _select

    # q0 was A, then B (both held out); the window answers A again: B is superseded, the older A is the
    # truth again, and the gate judges it. The other questions repeat unchanged (a revision, not noise).
    held_ids, train_ids = _ids("h", True, 8, 0.5), _ids("t", False, 6, 0.5)
    rows = [{"id": held_ids[0], "prompt": "q0", "response": "A"}, {"id": held_ids[1], "prompt": "q0", "response": "B"}]
    rows += [{"id": held_ids[i + 2], "prompt": f"q{i + 1}", "response": "same"} for i in range(6)]
    rows += [{"id": train_ids[0], "prompt": "q0", "response": "A"}]
    rows += [{"id": train_ids[i + 1], "prompt": f"q{i + 1}", "response": "same"} for i in range(5)]
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps({"agent": "a", "timestamp": f"2025-01-01T00:00:{i:02d}Z", **r}) + "\n"
                            for i, r in enumerate(rows)))
    lines: list[str] = []
    sel = _select(TrainConfig(base_model="/m", data=str(data), output_store="file:///s", tier="t", max_records=6,
                              holdout_fraction=0.5), log=lines.append)
    held = {r.record.prompt: (r.record.response, r.record.id) for r in sel.held}
    assert held["q0"] == ("A", held_ids[0]) and len(held) == 7
    assert all(held[f"q{i}"][0] == "same" for i in range(1, 7))
    assert sel.revised == 1 and any("1 held-out answer(s) superseded" in line for line in lines), lines


def test_a_diverged_candidate_is_rejected_even_with_the_gate_disabled() -> None:
    nan = {"heldOut": SetFigures(4, 0.5, float("nan"))}
    for max_regression in (0.05, None):
        verdict = decide(nan, max_regression)
        assert not verdict.accepted and "not finite" in verdict.reason
    doc = decide(nan, 0.05).to_dict()
    assert doc["heldOut"]["candidate"] is None  # manifests, status and the audit log refuse NaN
    json.dumps(doc, allow_nan=False)


def test_a_consolidation_is_judged_by_the_newest_answer_of_the_newest_questions() -> None:
    from dynamiclora.training.consolidate_gate import judged_records

    # Out of order on purpose: the gate data is read from several sources.
    records = [_rec(3, prompt="q1", response="new"), _rec(0, prompt="q0", response="x"),
               _rec(1, prompt="q1", response="old"), _rec(2, prompt="q2", response="y"),
               _rec(4, prompt="q1", response="newest", agent="b")]
    judged = [(r.record.agent, r.record.prompt, r.record.response) for r in judged_records(records, 3)]
    # q1's old answer is superseded and takes no room: three questions, not three records.
    assert judged == [("a", "q2", "y"), ("a", "q1", "new"), ("b", "q1", "newest")]
    assert [r.record.prompt for r in judged_records(records, 10)] == ["q0", "q2", "q1", "q1"]

"""The quality gate's pure parts: the decision, the held-out split, option validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dynamiclora.cli import build_parser
from dynamiclora.training.gate import SetFigures, decide, hash_fraction, is_held_out, record_identity, split_holdout
from dynamiclora.training.options import ConsolidateConfig, TrainConfig, from_namespace
from dynamiclora.training.records import SourcedRecord, parse_line


def _rec(i: int, **extra: Any) -> SourcedRecord:
    doc = {"agent": "a", "timestamp": f"2025-01-01T00:00:{i % 60:02d}Z", "prompt": f"p {i}", "response": "r",
           **extra}
    return SourcedRecord("mem", i + 1, parse_line(json.dumps(doc)))


@pytest.mark.parametrize(
    ("sets", "max_regression", "accepted", "reason_part"),
    [
        ({"heldOut": SetFigures(8, 2.0, 1.5)}, 0.0, True, "accepted"),
        ({"heldOut": SetFigures(8, 2.0, 2.0)}, 0.0, True, "accepted"),  # equal is not worse
        ({"heldOut": SetFigures(8, 2.0, 2.0 + 1e-7)}, 0.0, True, "accepted"),  # float noise tolerated
        ({"heldOut": SetFigures(8, 2.0, 2.03)}, 0.02, True, "accepted"),  # within 2% of 2.0 = 2.04
        ({"heldOut": SetFigures(8, 2.0, 2.05)}, 0.02, False, "heldOut loss 2.0500 vs baseline 2.0000"),
        ({"heldOut": SetFigures(8, 2.0, 1.0), "regression": SetFigures(4, 1.0, 3.0)}, 0.1, False,
         "regression loss 3.0000"),
        ({"heldOut": SetFigures(0, 0.0, 0.0), "regression": SetFigures(4, 1.0, 0.9)}, 0.1, True, "regression"),
        ({}, 0.1, True, "no held-out or regression record"),
        ({"heldOut": SetFigures(8, 1.0, 9.0)}, None, True, "gate disabled"),
    ],
)
def test_decision_table(sets: dict[str, SetFigures], max_regression: float | None, accepted: bool,
                        reason_part: str) -> None:
    verdict = decide(sets, max_regression)
    assert verdict.accepted is accepted
    assert reason_part in verdict.reason
    doc = verdict.to_dict()
    assert doc["accepted"] is accepted and doc["maxRegression"] == max_regression
    assert set(doc) - {"accepted", "reason", "maxRegression"} == {n for n, f in sets.items() if f.records}


def test_rejection_reason_names_only_the_failing_set() -> None:
    verdict = decide({"heldOut": SetFigures(8, 1.0, 0.5), "regression": SetFigures(4, 1.0, 2.0)}, 0.05)
    assert not verdict.accepted
    assert "regression" in verdict.reason and "heldOut" not in verdict.reason
    assert verdict.to_dict()["regression"] == {"records": 4, "baseline": 1.0, "candidate": 2.0}


def test_absolute_tolerance_absorbs_noise_on_near_zero_losses_only() -> None:
    noise = {"heldOut": SetFigures(8, 0.010, 0.018)}  # +80% relative, +0.008 nats: noise once facts are known
    assert not decide(noise, 0.05).accepted
    assert decide(noise, 0.05, tolerance=0.02).accepted
    corrupted = {"heldOut": SetFigures(8, 0.010, 2.5)}  # a shuffled-label update is far outside any tolerance
    assert not decide(corrupted, 0.05, tolerance=0.02).accepted
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        decide(noise, 0.05, tolerance=-1)


def test_negative_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="max_regression must be >= 0"):
        decide({}, -0.1)


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
        ({"gate_max_regression": -1.0}, "--gate-max-regression must be >= 0, got -1.0"),
        ({"gate_records": 0}, "--gate-records must be >= 1, got 0"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
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
        ({"gate_max_regression": -0.5}, "--gate-max-regression must be >= 0"),
        ({"gate_records": 0}, "--gate-records must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            ConsolidateConfig(**base, **ckwargs)  # type: ignore[arg-type]


def test_training_selection_never_trains_on_held_out_records(tmp_path: Any) -> None:
    from dynamiclora.training.trainer import _select

    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps({"agent": "a", "timestamp": f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
                                        "id": f"r{i}", "prompt": "p", "response": "r"}) + "\n"
                            for i in range(200)))
    cfg = TrainConfig(base_model="/m", data=str(data), output_store="file:///s", tier="t", max_records=50,
                      holdout_fraction=0.3)
    train, held, skipped, window = _select(cfg, log=lambda _m: None)
    assert window["from"] <= window["to"]  # the span quarantined if the gate rejects this update
    train_ids = [r.record.id for r in train]
    held_ids = {r.record.id for r in held}
    assert skipped == 0 and not held_ids & set(train_ids)
    assert all(int(str(i)[1:]) >= 150 for i in train_ids)  # only the --max-records window is trained on
    assert len(train) == 50 - sum(1 for r in held if int(str(r.record.id)[1:]) >= 150)
    assert 40 <= len(held) <= 80  # the held-out pool spans every record: about 0.3 x 200
    assert held_ids == {r.record.id for r in (_rec(0, id=f"r{i}") for i in range(200))
                        if is_held_out(r.record, 0.3)}
    with pytest.raises(ValueError, match="all 1 selected record\\(s\\) belong to the held-out slice"):
        first_held = next(i for i in range(200) if f"r{i}" in held_ids)
        one = tmp_path / "one.jsonl"
        one.write_text(data.read_text().splitlines()[first_held] + "\n")
        _select(TrainConfig(base_model="/m", data=str(one), output_store="file:///s", tier="t",
                            holdout_fraction=0.3), log=lambda _m: None)

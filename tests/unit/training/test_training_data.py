"""Tokenization, loss masks, deterministic data order, CLI options."""

from __future__ import annotations

import json

import pytest

from dynamiclora.cli import build_parser
from dynamiclora.training.data import IGNORE, batch_indices, collate, tokenize
from dynamiclora.training.options import ConsolidateConfig, TrainConfig
from dynamiclora.training.records import SourcedRecord, parse_line
from dynamiclora_dev.tinymodel import TinyModelConfig, build_tokenizer


def _rec(doc: dict[str, object]) -> SourcedRecord:
    base = {"agent": "a", "timestamp": "2025-01-01T00:00:00Z"}
    return SourcedRecord("mem", 1, parse_line(json.dumps({**base, **doc})))


def test_only_response_tokens_are_learned() -> None:
    tok = build_tokenizer(TinyModelConfig())
    (ex,) = tokenize([_rec({"prompt": "what is the color ?", "response": "red fact"})], tok, 64)
    learned = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE]
    assert tok.decode(learned[:-1]) == tok.decode(tok("red fact", add_special_tokens=False)["input_ids"])
    assert learned[-1] == tok.eos_token_id
    assert ex.input_ids[0] == tok.bos_token_id and ex.labels[0] == IGNORE


def test_chat_learns_assistant_turns_and_truncation_drops_empty() -> None:
    tok = build_tokenizer(TinyModelConfig())
    chat = _rec({"messages": [{"role": "user", "content": "the city ?"}, {"role": "assistant", "content": "yes"}]})
    (ex,) = tokenize([chat], tok, 64)
    assert ex.trained_tokens == 2  # "yes" + eos
    assert tokenize([chat], tok, 3) == []  # the assistant turn is cut off entirely


def test_batches_are_a_seeded_permutation_per_epoch() -> None:
    n, bs = 10, 4
    epoch0 = [i for s in range(3) for i in batch_indices(s, n, bs, seed=7)]
    assert sorted(epoch0) == list(range(n))
    assert [batch_indices(s, n, bs, 7) for s in range(6)] == [batch_indices(s, n, bs, 7) for s in range(6)]
    epoch1 = [i for s in range(3, 6) for i in batch_indices(s, n, bs, seed=7)]
    assert sorted(epoch1) == list(range(n)) and epoch1 != epoch0
    assert batch_indices(0, n, bs, 8) != batch_indices(0, n, bs, 7)


def test_collate_pads_and_masks() -> None:
    tok = build_tokenizer(TinyModelConfig())
    exs = tokenize([_rec({"prompt": "a", "response": "yes"}), _rec({"prompt": "a b c d", "response": "no"})], tok, 32)
    b = collate(exs, pad_id=0)
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
    assert int(b["attention_mask"][0].sum()) == len(exs[0].input_ids)
    assert (b["labels"][0, len(exs[0].input_ids):] == IGNORE).all()


def test_every_option_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("train", "consolidate"):
        cmd = sub.choices[name]  # type: ignore[index]
        opts = [a for a in cmd._actions if a.option_strings and a.dest != "help"]
        assert len(opts) > 8
        assert all(a.help for a in opts), [a.dest for a in opts if not a.help]
    text = sub.choices["train"].format_help()  # type: ignore[index]
    for flag in ("--base-model", "--data", "--tier", "--frozen", "--rank", "--alpha", "--target-modules", "--lr",
                 "--steps", "--epochs", "--batch-size", "--seed", "--checkpoint-every", "--work-dir",
                 "--output-store", "--max-records", "--bad-lines", "--result-file"):
        assert flag in text


def test_parsed_options_build_valid_configs() -> None:
    args = build_parser().parse_args([
        "train", "--base-model", "/m", "--data", "/d", "--output-store", "file:///s", "--tier", "ctx",
        "--frozen", "file:///s/ns/agent", "--frozen", "file:///s/ns/swarm/v000002", "--target-modules", "q_proj",
        "v_proj", "--bad-lines", "skip",
    ])
    from dynamiclora.training.options import from_namespace

    cfg = from_namespace(TrainConfig, args)
    assert cfg.frozen == ["file:///s/ns/agent", "file:///s/ns/swarm/v000002"]
    assert cfg.target_modules == ["q_proj", "v_proj"] and cfg.bad_lines == "skip"
    with pytest.raises(ValueError, match="--rank must be >= 1"):
        TrainConfig(base_model="/m", data="/d", output_store="file:///s", tier="t", rank=0)
    with pytest.raises(ValueError, match="--mode migrate needs --source"):
        ConsolidateConfig(mode="migrate", dest="file:///s/ns/agent")
    with pytest.raises(ValueError, match="--weights has 1 values for 2"):
        ConsolidateConfig(mode="consensus", dest="file:///s/ns/sw", agent_tier=["file:///s/a/x", "file:///s/b/x"],
                          weights=[1.0])


def test_quarantine_windows_drop_records_inclusively_and_reject_bad_input() -> None:
    from dynamiclora.training.data import drop_windows, parse_windows
    from dynamiclora.training.records import RecordsError

    recs = [_rec({"timestamp": f"2026-11-22T01:0{i}:00Z", "prompt": f"q{i}", "response": "a"}) for i in range(6)]
    windows = parse_windows(["2026-11-22T01:01:00Z/2026-11-22T01:02:00+00:00",
                             "2026-11-22T01:05:00Z/2026-11-22T01:05:00Z"])  # fmt: skip
    kept = drop_windows(recs, windows)
    assert [r.record.prompt for r in kept] == ["q0", "q3", "q4"]
    for bad, msg in (("2026-11-22T01:00:00Z", "expected FROM/TO"), ("x/y", "expected FROM/TO"),
                     ("2026-11-22T01:00:00/2026-11-22T02:00:00", "time zone"),
                     ("2026-11-22T02:00:00Z/2026-11-22T01:00:00Z", "TO is before FROM")):  # fmt: skip
        with pytest.raises(RecordsError, match=msg):
            parse_windows([bad])

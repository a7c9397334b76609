"""Interaction-record parsing: good shapes, bad lines with file:line, reject vs skip, filters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dynamiclora.training.data import select_records
from dynamiclora.training.records import RecordsError, iter_sources, parse_line, read_records

GOOD = {"agent": "alice", "timestamp": "2025-01-02T03:04:05Z", "prompt": "what color ?", "response": "red"}
CHAT = {"agent": "bob", "timestamp": "2025-01-02T03:04:06+01:00", "reward": 1.0,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_both_shapes_parse() -> None:
    r = parse_line(json.dumps(GOOD))
    assert (r.agent, r.response, r.messages) == ("alice", "red", None)
    c = parse_line(json.dumps(CHAT))
    assert c.messages is not None and c.messages[1].role == "assistant" and c.reward == 1.0


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({**GOOD, "timestamp": "2025-01-02T03:04:05"}, "timestamp needs a UTC offset"),
        ({**GOOD, "timestamp": "yesterday"}, "timestamp"),
        ({k: v for k, v in GOOD.items() if k != "agent"}, "agent: Field required"),
        ({k: v for k, v in GOOD.items() if k != "response"}, "needs both prompt and response"),
        ({**CHAT, "prompt": "x"}, "either prompt+response or messages"),
        ({**CHAT, "messages": [{"role": "user", "content": "hi"}]}, "at least one non-empty assistant turn"),
        ({**GOOD, "reward": "lots"}, "reward"),
        ({**GOOD, "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({**GOOD, "response": "  "}, "response is empty"),
    ],
)
def test_invalid_records_explained(doc: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_line(json.dumps(doc))


def test_reject_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", [json.dumps(GOOD), "", "{not json", json.dumps(CHAT), "[1, 2]"])
    with pytest.raises(RecordsError) as err:
        read_records(iter_sources(str(path)), "reject")
    msg = str(err.value)
    assert "2 malformed record line(s)" in msg
    assert f"{path}:3: invalid JSON" in msg
    assert f"{path}:5: expected a JSON object, got list" in msg


def test_skip_keeps_good_lines_and_reports_bad(tmp_path: Path) -> None:
    _write(tmp_path / "a.jsonl", [json.dumps(GOOD), "{oops"])
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "b.jsonl", [json.dumps(CHAT)])
    (tmp_path / "c.jsonl").write_bytes(b'{"agent": "\xff"}\n')
    (tmp_path / "ignored.txt").write_text("not records")
    good, bad = read_records(iter_sources(str(tmp_path)), "skip")
    assert [g.record.agent for g in good] == ["alice", "bob"]
    assert [(Path(b.source).name, b.line) for b in bad] == [("a.jsonl", 2), ("c.jsonl", 1)]
    assert "not UTF-8" in bad[1].error


def test_missing_source_is_clear(tmp_path: Path) -> None:
    with pytest.raises(RecordsError, match="no such file or directory"):
        list(iter_sources(str(tmp_path / "nope.jsonl")))


def test_select_filters_and_keeps_newest(tmp_path: Path) -> None:
    lines = [json.dumps({**GOOD, "timestamp": f"2025-01-0{d}T00:00:00Z", "response": f"r{d}", "reward": d - 3})
             for d in (3, 1, 2, 4)]
    lines.append(json.dumps({**GOOD, "agent": "bob", "timestamp": "2025-01-05T00:00:00Z"}))
    good, _ = read_records(iter_sources(str(_write(tmp_path / "a.jsonl", lines))))
    assert [r.record.response for r in select_records(good, agent="alice")] == ["r1", "r2", "r3", "r4"]
    assert [r.record.response for r in select_records(good, agent="alice", max_records=2)] == ["r3", "r4"]
    assert [r.record.response for r in select_records(good, since="2025-01-02T00:00:00Z", agent="alice")] == [
        "r3", "r4"]
    assert [r.record.response for r in select_records(good, min_reward=0, agent="alice")] == ["r3", "r4"]
    with pytest.raises(RecordsError, match="--since 'soon' is not an RFC 3339 time"):
        select_records(good, since="soon")

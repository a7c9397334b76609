"""Job entrypoints fail fast on a missing input, with the error as the log's single last line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dynamiclora.cli import main


def _train(tmp_path: Path, *extra: str) -> list[str]:
    (tmp_path / "records.jsonl").write_text("{}\n")
    return ["train", "--base-model", str(tmp_path / "model"), "--data", str(tmp_path / "records.jsonl"),
            "--output-store", f"file://{tmp_path}/store", "--namespace", "ns", "--tier", "t",
            "--work-dir", str(tmp_path / "work"), "--result-file", str(tmp_path / "result.json"), *extra]  # fmt: skip


def _consolidate(tmp_path: Path, *extra: str) -> list[str]:
    return ["consolidate", "--mode", "migrate", "--dest", f"file://{tmp_path}/store/ns/t",
            "--source", f"file://{tmp_path}/store/ns/s", "--gate-base-model", str(tmp_path / "model"),
            "--gate-data", str(tmp_path), "--result-file", str(tmp_path / "result.json"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "flag"),
    [(_train, "--regression-data"), (_consolidate, "--gate-data")],
)
def test_missing_input_fails_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: Callable[..., list[str]], flag: str
) -> None:
    code = main(command(tmp_path, flag, f"{tmp_path}/regression/bob.jsonl"))
    err = capsys.readouterr().err
    expected = f"{flag} {tmp_path}/regression/bob.jsonl: no such file or directory"
    assert code == 2
    assert err.strip().splitlines()[-1] == f"error: {expected}"
    assert json.loads((tmp_path / "result.json").read_text()) == {"error": expected}
    assert not (tmp_path / "work").exists() and not (tmp_path / "store").exists()


def test_a_multi_line_error_ends_with_its_headline(capsys: pytest.CaptureFixture[str]) -> None:
    from dynamiclora.training.cli import _run
    from dynamiclora.training.records import RecordsError

    def job() -> dict[str, object]:
        raise RecordsError("2 malformed record line(s) (use --bad-lines skip to ignore them):\n  a:1\n  a:2")

    assert _run(job, None) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2] == "  a:2"  # the details stay in the log
    assert lines[-1] == "error: 2 malformed record line(s) (use --bad-lines skip to ignore them) (details above)"

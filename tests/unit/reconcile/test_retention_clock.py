"""Retention of unfinished writes does not depend on clocks agreeing (issue 18)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dynamiclora.controllers.tier import StaleWrites
from dynamiclora.storage.uri import open_store


def _unfinished(root: Path, version: int, mtime: float) -> Path:
    """A version a writer claimed and began to upload (no manifest), with file times set to ``mtime``."""
    folder = root / "ns" / "t" / f"v{version:06d}"
    folder.mkdir(parents=True)
    for name, text in (("CLAIM.json", json.dumps({"writer": "job"})), ("adapter_config.json", "{}")):
        (folder / name).write_text(text)
        os.utime(folder / name, (mtime, mtime))
    return folder


def test_an_upload_is_judged_on_the_operators_clock_not_the_files(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    ticks = [0.0]
    watch = StaleWrites(after_s=3600, clock=lambda: ticks[0])
    # The storage's clock is ten days behind: by file times the write is ancient, yet it is in progress.
    folder = _unfinished(tmp_path, 1, mtime=1_000_000.0)

    def retain() -> list[int]:
        report = store.retain("ns", "t", keep_last=1, is_stale=lambda v, newest: watch.judge(("s", "ns", "t", v),
                                                                                              newest))  # fmt: skip
        return list(report.garbage_deleted)

    assert retain() == [] and folder.exists()  # first sight: our clock starts now
    ticks[0] = 3000.0
    (folder / "adapter_model.safetensors").write_bytes(b"x")  # still uploading: its newest object changed
    os.utime(folder / "adapter_model.safetensors", (1_000_100.0, 1_000_100.0))
    assert retain() == [] and folder.exists()
    ticks[0] = 3000.0 + 3599
    assert retain() == []
    ticks[0] = 3000.0 + 3600  # an hour of our own time without a change: a dead writer's leftover
    assert retain() == [1] and not folder.exists()


def test_a_storage_clock_ahead_never_deletes_a_live_upload_too_late(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    ticks = [0.0]
    watch = StaleWrites(after_s=60, clock=lambda: ticks[0])
    _unfinished(tmp_path, 1, mtime=4_000_000_000.0)  # file times in 2096
    is_stale = lambda v, newest: watch.judge(("s", "ns", "t", v), newest)  # noqa: E731
    assert store.retain("ns", "t", keep_last=1, is_stale=is_stale).garbage_deleted == []
    ticks[0] = 61.0
    assert store.retain("ns", "t", keep_last=1, is_stale=is_stale).garbage_deleted == [1]


def test_the_memory_is_bounded() -> None:
    import datetime as dt

    watch = StaleWrites(max_entries=3, clock=lambda: 0.0)
    for v in range(10):
        watch.judge(("s", "ns", "t", v), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert len(watch._seen) == 3

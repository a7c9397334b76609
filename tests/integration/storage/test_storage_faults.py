"""Fault injection with real processes: a writer SIGKILLed between uploads leaves no visible version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dynamiclora.storage import CheckpointStore, VersionNotFoundError

pytestmark = pytest.mark.integration

# The writer signals after its first upload and then stalls, so the kill lands between two uploads.
WRITER = r"""
import sys, time
from pathlib import Path
from dynamiclora.storage import open_store

uri, marker, *paths = sys.argv[1:]
files = {Path(p).name: Path(p) for p in paths}

def progress(msg: str) -> None:
    if msg.startswith("uploaded"):
        Path(marker).write_text(msg)
        time.sleep(120)

open_store(uri).publish("ns", "t", files, {"writer": "doomed"}, progress=progress)
"""


def test_writer_killed_mid_upload_leaves_no_version(
    store_uri: str, store: CheckpointStore, files: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "uploaded-one"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, store_uri, str(marker), *map(str, files.values())],
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "writer exited before uploading"
            assert time.monotonic() < deadline, "writer never uploaded a file"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()

    # One file of v1 exists, but without a manifest nobody can see the version.
    assert store.list_versions("ns", "t") == []
    assert store.latest("ns", "t") is None
    with pytest.raises(VersionNotFoundError):
        store.get("ns", "t", 1)

    # A later writer gets a fresh number; retention removes the dead writer's garbage once stale.
    assert store.publish("ns", "t", files).version == 2
    report = store.retain("ns", "t", keep_last=1, now=datetime.now(UTC) + timedelta(hours=2))
    assert report.garbage_deleted == [1]
    assert report.kept == [2]
    assert store.list_versions("ns", "t") == [2]
    assert store.read_file("ns", "t", 2, "stats.json") == files["stats.json"].read_bytes()

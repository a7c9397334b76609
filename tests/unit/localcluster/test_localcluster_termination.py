"""Termination messages as the kubelet writes them: the message file, else (on request) the log's tail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dynamiclora_dev.localcluster.podspec import launch
from dynamiclora_dev.localcluster.termination import (
    MAX_FILE_BYTES,
    MAX_LOG_BYTES,
    MAX_LOG_LINES,
    local_message_file,
    termination_message,
)

FALLBACK = {"name": "main", "terminationMessagePolicy": "FallbackToLogsOnError"}
FILE = {"name": "main"}  # the API's default policy is File
LOG = "--- starting ns/p/main: dynamiclora train\nstep 1\nTraceback (most recent call last):\nerror: --data x: bad\n"


@pytest.mark.parametrize(
    ("container", "code", "message_file", "expected"),
    [
        (FALLBACK, 2, None, LOG),
        (FALLBACK, 0, None, ""),  # the log is only a fallback for errors
        (FILE, 2, None, ""),
        (FALLBACK, 2, '{"error": "x"}', '{"error": "x"}'),  # what the container wrote wins
        (FILE, 0, "done", "done"),
        (FALLBACK, 2, "", LOG),  # an empty file counts as none
    ],
)
def test_message_source(
    tmp_path: Path, container: dict[str, Any], code: int, message_file: str | None, expected: str
) -> None:
    log = tmp_path / "main.log"
    log.write_text(LOG)
    msg_file = local_message_file(tmp_path, container)
    if message_file is not None:
        msg_file.write_text(message_file)
    assert termination_message(container, code, msg_file, log) == expected


def test_limits_are_the_kubelets(tmp_path: Path) -> None:
    log = tmp_path / "main.log"
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    tail = termination_message(FALLBACK, 1, tmp_path / "none", log)
    assert tail.splitlines() == [f"line {i}" for i in range(500 - MAX_LOG_LINES, 500)]
    log.write_text("x" * 5000 + "\n" + "y" * 3000 + "\nerror: the last line\n")
    tail = termination_message(FALLBACK, 1, tmp_path / "none", log)
    assert len(tail.encode()) == MAX_LOG_BYTES and tail.endswith("y\nerror: the last line\n")
    msg = tmp_path / "msg"
    msg.write_text("a" * 10 + "b" * MAX_FILE_BYTES)
    assert termination_message(FILE, 1, msg, log) == "b" * MAX_FILE_BYTES


def test_launch_points_the_message_path_at_the_local_file(tmp_path: Path) -> None:
    container = {"name": "main", "image": "busybox:1.36", "terminationMessagePath": "/tmp/msg",
                 "command": ["sh", "-c", "echo x > /tmp/msg; echo y > /dev/termination-log"]}  # fmt: skip
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": [container]},
           "status": {"podIP": "127.10.0.7"}}  # fmt: skip
    plan = launch(pod, container, None, state_dir=tmp_path, pod_dir=tmp_path / "pod", base_env={})  # type: ignore[arg-type]
    local = local_message_file(tmp_path / "pod", container)
    assert plan.argv[-1] == f"echo x > {local}; echo y > /dev/termination-log"  # only the container's own path
    default = {**container, "terminationMessagePath": None}
    plan = launch(pod, default, None, state_dir=tmp_path, pod_dir=tmp_path / "pod", base_env={})  # type: ignore[arg-type]
    assert plan.argv[-1] == f"echo x > /tmp/msg; echo y > {local}"

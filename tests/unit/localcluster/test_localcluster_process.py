"""Process groups: a stopped process takes its children with it; pid files never kill strangers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dynamiclora_dev.localcluster.process import (
    descendants,
    free_port,
    group_alive,
    kill_tree,
    owned_by,
    start_process,
)


def test_stop_kills_the_whole_group(tmp_path: Path) -> None:
    # The shell forks a grandchild that ignores SIGTERM; stop() must still leave nothing behind.
    script = "trap '' TERM; sleep 300 & echo started; wait"
    proc = start_process("tree", ["sh", "-c", script], tmp_path / "tree.log", env={"MARK": str(tmp_path)})
    deadline = time.monotonic() + 10
    while "started" not in proc.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_alive(proc.pid)
    assert owned_by(proc.pid, str(tmp_path))
    assert not owned_by(os.getppid(), str(tmp_path))
    started = time.monotonic()
    proc.stop(timeout=0.5)
    assert not group_alive(proc.pid)
    assert time.monotonic() - started < 8
    assert "starting tree" in proc.log_path.read_text()


def test_exit_code_and_missing_executable(tmp_path: Path) -> None:
    proc = start_process("fails", ["sh", "-c", "exit 7"], tmp_path / "f.log")
    assert proc.popen.wait(timeout=10) == 7
    with pytest.raises(FileNotFoundError, match=r"ghost: cannot execute '/nonexistent/bin'"):
        start_process("ghost", ["/nonexistent/bin"], tmp_path / "g.log")


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_kill_tree_reaches_children_that_left_the_group(tmp_path: Path) -> None:
    """A container dies whole: torchrun's workers run in sessions of their own (``setsid``)."""
    script = "setsid sleep 300 & echo $! > child; wait"
    proc = start_process("tree", ["sh", "-c", script], tmp_path / "tree.log", cwd=tmp_path)
    deadline = time.monotonic() + 10
    while not (tmp_path / "child").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the pid is written before setsid execs sleep
    child = int((tmp_path / "child").read_text())
    assert child in descendants(proc.pid) and os.getpgid(child) != proc.pid
    kill_tree(proc.pid)
    proc.popen.wait(timeout=10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and "Z" not in _state(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"

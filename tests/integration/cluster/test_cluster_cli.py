"""``dynamiclora-dev cluster up|status|down`` as a developer uses them, with kubectl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynamiclora_dev.localcluster.binaries import find_kubectl
from dynamiclora_dev.localcluster.process import group_alive

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynamiclora_dev", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_up_status_kubectl_down(tmp_path: Path) -> None:
    state = str(tmp_path / "dev")
    assert _cli("status", "--state", state).returncode == 1
    up = _cli("up", "--state", state, "--cpu-nodes", "1", "--gpu-nodes", "0")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        export = [line for line in up.stdout.splitlines() if line.startswith("export KUBECONFIG=")]
        assert export == [f"export KUBECONFIG={state}/kubeconfig"]
        status = _cli("status", "--state", state)
        assert status.returncode == 0
        info = json.loads(status.stdout[: status.stdout.rindex("}") + 1])
        kubectl = find_kubectl()
        assert kubectl is not None
        nodes = subprocess.run(
            [str(kubectl), "get", "nodes", "-o", "name"],
            env={**os.environ, "KUBECONFIG": info["kubeconfig"]},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
        assert nodes == ["node/kwok-cpu-0"]
        pids = [info["supervisor_pid"], *json.loads((tmp_path / "dev" / "pids.json").read_text()).values()]
        assert all(group_alive(pid) for pid in pids)
    finally:
        down = _cli("down", "--state", state)
    assert down.returncode == 0
    assert "stopped" in down.stdout
    assert [pid for pid in pids if group_alive(pid)] == []
    assert _cli("status", "--state", state).returncode == 1

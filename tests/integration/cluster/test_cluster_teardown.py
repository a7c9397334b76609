"""Stopping a local cluster leaves no process behind, pod processes included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cluster_helpers import job, pods, wait_until

from dynamiclora_dev.localcluster import ClusterConfig, LocalCluster
from dynamiclora_dev.localcluster.process import group_alive

pytestmark = pytest.mark.integration


def _processes_mentioning(marker: str) -> list[int]:
    """Every live process whose command line or environment mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in blob and state != "Z":
            found.append(int(entry.name))
    return found


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    cluster = LocalCluster(ClusterConfig(state_dir=tmp_path / "c", cpu_nodes=0, gpu_nodes=1)).start()
    try:
        rest = cluster.rest()
        rest.create("/apis/batch/v1/namespaces/default/jobs", job("sleeper", ["sleep", "300"], local=True))
        pod = wait_until(
            "sleeper running",
            lambda: [p for p in pods(rest, "default", "test-job=sleeper") if p["status"].get("phase") == "Running"],
            60,
        )[0]
        sleeper = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))
        pids = cluster.component_pids()
        assert sleeper in pids
        assert len(pids) >= 7  # supervisor, etcd, apiserver, controller-manager, scheduler, kwok, sleeper
        assert all(group_alive(pid) for pid in pids)
    finally:
        cluster.stop()
    assert [pid for pid in pids if group_alive(pid)] == []
    assert _processes_mentioning(str(tmp_path / "c")) == []

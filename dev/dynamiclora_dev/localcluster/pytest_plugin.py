"""pytest fixtures for a real local control plane.

Register with ``pytest_plugins = ["dynamiclora_dev.localcluster.pytest_plugin"]`` (the repository's root
``conftest.py`` does). ``local_cluster`` is session-scoped: the first test that asks for it builds the
binaries when missing (see docs/cluster.md) and starts the cluster; it is stopped at the end of the
session, and by ``atexit`` and the parent-death signal if pytest is interrupted or killed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamiclora_dev.localcluster.cluster import LocalCluster
from dynamiclora_dev.localcluster.controlplane import ClusterConfig


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A running local cluster (1 CPU node, 2 GPU nodes with 4 nvidia.com/gpu each).

    ``KUBECONFIG`` is *not* changed globally; use ``local_cluster.kubeconfig``. Set
    ``DYNAMICLORA_TEST_CLUSTER_STATE`` to keep the state folder (logs, pod logs) in a known place.
    """
    state_env = os.environ.get("DYNAMICLORA_TEST_CLUSTER_STATE")
    state = Path(state_env) if state_env else tmp_path_factory.mktemp("local-cluster")
    cluster = LocalCluster(ClusterConfig(state_dir=state)).start()
    try:
        yield cluster
    finally:
        cluster.stop()

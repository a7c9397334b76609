"""A hermetic Kubernetes control plane on loopback, with a local executor for selected pods.

Start one with :class:`LocalCluster` (tests use the ``local_cluster`` pytest fixture, developers
``dynamiclora-dev cluster up``). See ``docs/cluster.md``.
"""

from dynamiclora_dev.localcluster.cluster import LocalCluster, stop_detached
from dynamiclora_dev.localcluster.controlplane import ClusterConfig
from dynamiclora_dev.localcluster.podspec import EXECUTOR_LABEL, EXECUTOR_VALUE

__all__ = ["EXECUTOR_LABEL", "EXECUTOR_VALUE", "ClusterConfig", "LocalCluster", "stop_detached"]

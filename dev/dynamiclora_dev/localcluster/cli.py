"""``dynamiclora-dev cluster up|down|status``: a local control plane for use by hand with kubectl."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_STATE = Path(os.environ.get("DYNAMICLORA_CLUSTER_STATE", Path.home() / ".cache" / "dynamiclora" / "cluster"))


def _up(args: argparse.Namespace) -> int:
    from dynamiclora_dev.localcluster import ClusterConfig, LocalCluster
    from dynamiclora_dev.localcluster.controlplane import READY_FILE

    state: Path = args.state
    if (state / READY_FILE).exists() and _status_info(state) is not None:
        print(f"a local cluster is already running in {state}")
        print(f"export KUBECONFIG={state / 'kubeconfig'}")
        return 0
    config = ClusterConfig(
        state_dir=state, cpu_nodes=args.cpu_nodes, gpu_nodes=args.gpu_nodes, gpus_per_node=args.gpus_per_node
    )
    try:
        cluster = LocalCluster(config, detach=True).start()
    except RuntimeError as exc:
        print(f"error: {exc}")
        return 1
    print(f"local cluster ready: API server {cluster.info['server']}, nodes {', '.join(cluster.info['nodes'])}")
    print(f"component logs: {cluster.info['logs']}, pod logs: {cluster.info['pod_logs']}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from dynamiclora_dev.localcluster import stop_detached

    if stop_detached(args.state):
        print(f"local cluster in {args.state} stopped")
    else:
        print(f"no local cluster running in {args.state}")
    return 0


def _status_info(state: Path) -> dict[str, Any] | None:
    from dynamiclora_dev.localcluster.controlplane import READY_FILE
    from dynamiclora_dev.localcluster.process import group_alive

    path = state / READY_FILE
    if not path.exists():
        return None
    info: dict[str, Any] = json.loads(path.read_text())
    return info if group_alive(int(info["supervisor_pid"])) else None


def _status(args: argparse.Namespace) -> int:
    info = _status_info(args.state)
    if info is None:
        print(f"no local cluster running in {args.state}")
        return 1
    print(json.dumps(info, indent=2))
    print(f"export KUBECONFIG={info['kubeconfig']}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``cluster up|down|status``."""
    parser = subparsers.add_parser("cluster", help="local Kubernetes control plane (etcd, apiserver, kwok)")
    sub = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start a local cluster in the background and print its KUBECONFIG")
    up.add_argument("--cpu-nodes", type=int, default=1, help="fake nodes without GPUs")
    up.add_argument("--gpu-nodes", type=int, default=2, help="fake nodes with nvidia.com/gpu")
    up.add_argument("--gpus-per-node", type=int, default=4, help="nvidia.com/gpu per GPU node")
    up.set_defaults(func=_up)
    down = sub.add_parser("down", help="stop the local cluster and every process it started")
    down.set_defaults(func=_down)
    status = sub.add_parser("status", help="show whether a local cluster is running")
    status.set_defaults(func=_status)
    for p in (up, down, status):
        p.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state folder (default %(default)s)")

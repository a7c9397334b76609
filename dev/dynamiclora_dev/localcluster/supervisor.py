"""The process that owns a local cluster: starts the control plane, runs the executor, cleans up.

``python -m dynamiclora_dev.localcluster.supervisor --state DIR`` starts every component, writes
``DIR/cluster.json`` when the cluster is ready, then runs the local executor in its main thread until
SIGTERM/SIGINT, and finally stops pod processes and components (newest first). Everything it starts
is in its own process group with a parent-death signal, so even a SIGKILL of the supervisor leaves
nothing behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path
from types import FrameType

from dynamiclora_dev.localcluster import binaries
from dynamiclora_dev.localcluster.controlplane import ERROR_FILE, READY_FILE, ClusterConfig, ControlPlane
from dynamiclora_dev.localcluster.executor import Executor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Supervisor flags: one per ClusterConfig field."""
    parser = argparse.ArgumentParser(prog="dynamiclora_dev.localcluster.supervisor")
    for f in fields(ClusterConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "state_dir":
            parser.add_argument(flag, type=Path, required=True, help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=f.metadata["help"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run a local cluster until signalled; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ClusterConfig(**{f.name: getattr(args, f.name) for f in fields(ClusterConfig)})
    state = config.state_dir
    state.mkdir(parents=True, exist_ok=True)
    for name in (READY_FILE, ERROR_FILE):
        (state / name).unlink(missing_ok=True)
    stop = threading.Event()
    ready = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        if not ready.is_set():
            # Still starting: unwind now (the finally clause stops what was started).
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    plane = ControlPlane(config, binaries.ensure(build_if_missing=False))
    try:
        plane.start()
        assert plane.rest is not None
        executor = Executor(plane.rest, state, plane.kubeconfig)
        info = {
            "kubeconfig": str(plane.kubeconfig),
            "server": f"https://127.0.0.1:{plane.api_port}",
            "supervisor_pid": os.getpid(),
            "nodes": plane.node_names(),
            "pod_cidr": config.pod_cidr,
            "logs": str(state / "logs"),
            "pod_logs": str(state / "pods"),
        }
        tmp = state / (READY_FILE + ".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(state / READY_FILE)
        logging.info("local cluster ready: export KUBECONFIG=%s", plane.kubeconfig)
        ready.set()
        if not stop.is_set():
            executor.run(stop)
        return 0
    except Exception as exc:
        (state / ERROR_FILE).write_text(f"{type(exc).__name__}: {exc}\n")
        logging.exception("local cluster failed")
        return 1
    finally:
        plane.stop()
        (state / READY_FILE).unlink(missing_ok=True)
        logging.info("local cluster stopped")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

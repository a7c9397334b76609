"""Start and stop etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback.

Flags follow envtest (loopback bind, ``--advertise-address=127.0.0.1``, self-signed serving cert) plus
what envtest leaves out: a static admin token (group ``system:masters``) that the kubeconfig and every
component use, RBAC authorization, a locally generated service-account key pair (so the
serviceaccount-token controller works), and kwok with fake nodes, some with ``nvidia.com/gpu``.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamiclora_dev.localcluster.binaries import Binaries
from dynamiclora_dev.localcluster.kwokstages import kwok_config
from dynamiclora_dev.localcluster.process import ManagedProcess, free_port, start_process
from dynamiclora_dev.localcluster.rest import ApiError, Rest

ADMIN_USER = "dynamiclora-admin"
READY_FILE = "cluster.json"  # written by the supervisor once the cluster is ready
ERROR_FILE = "error.txt"  # written by the supervisor when starting failed


@dataclass
class ClusterConfig:
    """Shape of the local cluster."""

    state_dir: Path = field(metadata={"help": "folder for etcd data, certs, kubeconfig, logs, PVCs"})
    cpu_nodes: int = field(default=1, metadata={"help": "fake nodes without GPUs"})
    gpu_nodes: int = field(default=2, metadata={"help": "fake nodes with nvidia.com/gpu capacity"})
    gpus_per_node: int = field(default=4, metadata={"help": "nvidia.com/gpu capacity of a GPU node"})
    pod_cidr: str = field(
        default="127.10.0.1/16", metadata={"help": "pod IP pool (inside 127.0.0.0/8 so pods are local)"}
    )
    node_ip: str = field(default="127.0.0.1", metadata={"help": "InternalIP of every fake node"})
    service_cidr: str = field(default="10.96.0.0/16", metadata={"help": "ClusterIP range"})
    start_timeout: float = field(default=180.0, metadata={"help": "seconds to wait for health"})

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        if self.cpu_nodes < 0 or self.gpu_nodes < 0 or self.cpu_nodes + self.gpu_nodes == 0:
            raise ValueError("ClusterConfig: cpu_nodes + gpu_nodes must be >= 1 (neither negative)")
        if self.gpus_per_node < 1:
            raise ValueError("ClusterConfig.gpus_per_node must be >= 1")
        if not self.pod_cidr.startswith("127."):
            raise ValueError(f"ClusterConfig.pod_cidr {self.pod_cidr!r} must be inside 127.0.0.0/8")
        if self.start_timeout <= 0:
            raise ValueError("ClusterConfig.start_timeout must be > 0")


def wait_for(what: str, check: Callable[[], bool], timeout: float, proc: ManagedProcess | None = None) -> None:
    """Poll ``check`` until it is true.

    Raises:
        RuntimeError: timeout, or ``proc`` exited first (its log tail is in the message).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with code {proc.poll()} while waiting for {what}; "
                f"log {proc.log_path}:\n{proc.tail()}"
            )
        try:
            if check():
                return
        except (OSError, ApiError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.2)
    tail = f"; log {proc.log_path}:\n{proc.tail()}" if proc else ""
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


class ControlPlane:
    """The running components of one local cluster."""

    def __init__(self, config: ClusterConfig, binaries: Binaries) -> None:
        self.config = config
        self.bins = binaries
        self.state = config.state_dir
        self.logs = self.state / "logs"
        self.kubeconfig = self.state / "kubeconfig"
        self.token = secrets.token_hex(24)
        self.processes: list[ManagedProcess] = []
        self.api_port = 0
        self.rest: Rest | None = None

    # -- files -----------------------------------------------------------------------------------
    def _write_files(self) -> None:
        pki = self.state / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        key = pki / "sa.key"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
            subprocess.run(
                ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pki / "sa.pub")],
                check=True,
                capture_output=True,
            )
        (pki / "tokens.csv").write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')

    def _write_kubeconfig(self, path: Path, ca_file: Path) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "dynamiclora-local",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.api_port}",
                        "certificate-authority": str(ca_file),
                    },
                }
            ],
            "users": [{"name": ADMIN_USER, "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "dynamiclora-local",
                    "context": {"cluster": "dynamiclora-local", "user": ADMIN_USER, "namespace": "default"},
                }
            ],
            "current-context": "dynamiclora-local",
        }
        path.write_text(json.dumps(config, indent=2))

    # -- components ------------------------------------------------------------------------------
    def _start(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = start_process(name, argv, self.logs / f"{name}.log")
        self.processes.append(proc)
        self._write_pids()
        return proc

    def _write_pids(self) -> None:
        pids = {p.name: p.pid for p in self.processes}
        (self.state / "pids.json").write_text(json.dumps(pids))

    def _healthz(self, port: int, path: str) -> bool:
        rest = Rest(f"https://127.0.0.1:{port}", self.token, timeout=2)
        with rest._request("GET", path) as resp:
            return bool(resp.status == 200)

    def start(self) -> None:
        """Start every component and wait until the cluster can run pods.

        Raises:
            RuntimeError: a component failed to start (message names it and shows its log tail).
        """
        cfg = self.config
        timeout = cfg.start_timeout
        self.state.mkdir(parents=True, exist_ok=True)
        self._write_files()
        pki = self.state / "pki"

        etcd_port, peer_port = free_port(), free_port()
        etcd = self._start(
            "etcd",
            [
                str(self.bins.etcd),
                "--data-dir",
                str(self.state / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        wait_for("etcd /health", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), timeout, etcd)

        self.api_port = free_port()
        certs = self.state / "apiserver-certs"
        api = self._start(
            "kube-apiserver",
            [
                str(self.bins.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--cert-dir={certs}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--service-cluster-ip-range={cfg.service_cidr}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                # Loopback addresses are not valid Endpoints; nothing routes through the Service anyway.
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        wait_for("kube-apiserver /readyz", lambda: self._healthz(self.api_port, "/readyz"), timeout, api)
        ca_file = certs / "apiserver.crt"
        self._write_kubeconfig(self.kubeconfig, ca_file)
        self.rest = Rest(f"https://127.0.0.1:{self.api_port}", self.token, ca_file=str(ca_file))
        kc = str(self.kubeconfig)

        cm_port = free_port()
        cm = self._start(
            "kube-controller-manager",
            [
                str(self.bins.kube_controller_manager),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cm_port}",
                f"--cert-dir={self.state / 'controller-manager-certs'}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={ca_file}",
                "--use-service-account-credentials=false",
                "--controllers=*",
                # kwok's fake nodes heartbeat from one process that competes for 2 busy cores: tolerate
                # late heartbeats instead of marking every pod NotReady (and evicting) on a slow second.
                "--node-monitor-grace-period=120s",
                "--v=1",
            ],
        )
        sched_port = free_port()
        sched_config = self.state / "scheduler.yaml"
        sched_config.write_text(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
            f"clientConnection:\n  kubeconfig: {kc}\nleaderElection:\n  leaderElect: false\n"
        )
        sched = self._start(
            "kube-scheduler",
            [
                str(self.bins.kube_scheduler),
                f"--config={sched_config}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={self.state / 'scheduler-certs'}",
                "--v=1",
            ],
        )
        kwok_file = self.state / "kwok.yaml"
        kwok_file.write_text(kwok_config(cfg.pod_cidr, cfg.node_ip))
        kwok = self._start(
            "kwok",
            [
                str(self.bins.kwok),
                f"--kubeconfig={kc}",
                f"--config={kwok_file}",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )
        wait_for("kube-controller-manager /healthz", lambda: self._healthz(cm_port, "/healthz"), timeout, cm)
        wait_for("kube-scheduler /healthz", lambda: self._healthz(sched_port, "/healthz"), timeout, sched)
        self._create_nodes()
        wait_for("fake nodes Ready", self._nodes_ready, timeout, kwok)
        wait_for(
            "default ServiceAccount",
            lambda: self._api().get_or_none("/api/v1/namespaces/default/serviceaccounts/default") is not None,
            timeout,
            cm,
        )

    def _api(self) -> Rest:
        if self.rest is None:
            raise RuntimeError("the API server is not started")
        return self.rest

    def node_names(self) -> list[str]:
        """Names of the fake nodes (CPU nodes first)."""
        cfg = self.config
        return [f"kwok-cpu-{i}" for i in range(cfg.cpu_nodes)] + [f"kwok-gpu-{i}" for i in range(cfg.gpu_nodes)]

    def _create_nodes(self) -> None:
        for name in self.node_names():
            gpu = name.startswith("kwok-gpu")
            capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
            labels = {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            }
            if gpu:
                capacity["nvidia.com/gpu"] = str(self.config.gpus_per_node)
                labels["nvidia.com/gpu.present"] = "true"
            node: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": labels,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                },
                "status": {"capacity": capacity, "allocatable": capacity},
            }
            try:
                self._api().create("/api/v1/nodes", node)
            except ApiError as exc:
                if exc.status != 409:
                    raise

    def _nodes_ready(self) -> bool:
        nodes = self._api().get("/api/v1/nodes")["items"]
        ready = {
            n["metadata"]["name"]
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        }
        return set(self.node_names()) <= ready

    def stop(self) -> None:
        """Stop every component, newest first (kwok before the API server, etcd last)."""
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        self._write_pids()


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)

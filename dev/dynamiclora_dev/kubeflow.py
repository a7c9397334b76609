"""The Kubeflow Trainer release module and the JobSet module it requires, from the Go module proxy (for tests).

``trainjob_crd`` gives the ``TrainJob`` CRD that ``tests/integration/cluster/test_cluster_trainjob.py``
installs so that the objects the operator generates are validated by the real schema (OpenAPI and CEL
rules). ``dynamiclora_dev.kubeflow_controllers`` builds and runs the real controllers from the same modules.
Modules are downloaded once with ``go mod download`` into ``$DYNAMICLORA_GO_CACHE/mod``
(default ``~/.cache/dynamiclora/gomod/mod``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

TRAINER_MODULE = "github.com/kubeflow/trainer/v2"
TRAINER_VERSION = "v2.0.0"
TRAINJOB_CRD_PATH = "manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml"
TRAINER_CRD_PATHS = (
    TRAINJOB_CRD_PATH,
    "manifests/base/crds/trainer.kubeflow.org_trainingruntimes.yaml",
    "manifests/base/crds/trainer.kubeflow.org_clustertrainingruntimes.yaml",
)
JOBSET_MODULE = "sigs.k8s.io/jobset"
# The plain CRD: the release kustomization adds a conversion webhook, which a single-version CRD does not need.
JOBSET_CRD_PATH = "config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml"


def cache_root() -> Path:
    return Path(os.environ.get("DYNAMICLORA_GO_CACHE") or Path.home() / ".cache" / "dynamiclora" / "gomod")


def go_env() -> dict[str, str]:
    """This environment with the module cache pointed at ``cache_root()/mod``."""
    return {**os.environ, "GOMODCACHE": str(cache_root() / "mod")}


def module_dir(module: str, version: str) -> Path:
    """The extracted source of ``module@version`` in the module cache (downloaded when missing).

    Raises:
        RuntimeError: no Go toolchain, or the module proxy refused (the message says which).
    """
    escaped = re.sub(r"[A-Z]", lambda m: "!" + m.group().lower(), module)  # the module cache's case-encoding
    cached = cache_root() / "mod" / f"{escaped}@{version}"
    if (cached / "go.mod").is_file():  # go extracts to a temporary folder and renames it: present = complete
        return cached
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"fetching {module}@{version} needs the Go toolchain (go on PATH)")
    env = {**go_env(), "GOFLAGS": "-mod=mod"}
    with tempfile.TemporaryDirectory() as tmp:  # outside any module: a plain download
        got = subprocess.run([go, "mod", "download", "-json", f"{module}@{version}"], cwd=tmp, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    if got.returncode != 0:
        raise RuntimeError(f"go mod download {module}@{version} failed: {got.stdout}{got.stderr}")
    return Path(json.loads(got.stdout)["Dir"])


def required_version(source: Path, module: str) -> str:
    """The version of ``module`` that the ``go.mod`` in ``source`` requires.

    Raises:
        RuntimeError: ``go.mod`` does not require ``module``.
    """
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", (source / "go.mod").read_text(), re.M)
    if found is None:
        raise RuntimeError(f"{source / 'go.mod'} does not require {module}")
    return found.group(1)


def trainer_dir() -> Path:
    """Source of Kubeflow Trainer ``TRAINER_VERSION``."""
    return module_dir(TRAINER_MODULE, TRAINER_VERSION)


def jobset_version() -> str:
    """The JobSet version that Kubeflow Trainer ``TRAINER_VERSION`` requires (v0.8.2 for v2.0.0)."""
    return required_version(trainer_dir(), JOBSET_MODULE)


def controller_crds() -> list[Path]:
    """The CRDs the two controllers need: JobSet, then TrainJob, TrainingRuntime, ClusterTrainingRuntime."""
    jobset = module_dir(JOBSET_MODULE, jobset_version())
    return [jobset / JOBSET_CRD_PATH, *(trainer_dir() / p for p in TRAINER_CRD_PATHS)]


def trainjob_crd() -> Path:
    """The TrainJob CRD of Kubeflow Trainer ``TRAINER_VERSION`` (fetched once, then cached).

    Raises:
        RuntimeError: no Go toolchain, or the module proxy refused (the message says which).
    """
    out = cache_root() / f"kubeflow-trainer-{TRAINER_VERSION}" / Path(TRAINJOB_CRD_PATH).name
    if out.is_file():
        return out
    source = trainer_dir() / TRAINJOB_CRD_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    shutil.copyfile(source, tmp_out)
    os.replace(tmp_out, out)
    return out

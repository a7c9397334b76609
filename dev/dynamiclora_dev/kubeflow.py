"""The Kubeflow Trainer CRDs, taken from the release module on the Go module proxy (for tests).

No Kubeflow Trainer controller runs here; its ``TrainJob`` CRD is installed into the local API server so
that the objects the operator generates are validated by the real schema (OpenAPI and CEL rules).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

TRAINER_MODULE = "github.com/kubeflow/trainer/v2"
TRAINER_VERSION = "v2.0.0"
TRAINJOB_CRD_PATH = "manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml"


def cache_root() -> Path:
    return Path(os.environ.get("DYNAMICLORA_GO_CACHE") or Path.home() / ".cache" / "dynamiclora" / "gomod")


def trainjob_crd() -> Path:
    """The TrainJob CRD of Kubeflow Trainer ``TRAINER_VERSION`` (fetched once, then cached).

    Raises:
        RuntimeError: no Go toolchain, or the module proxy refused (the message says which).
    """
    out = cache_root() / f"kubeflow-trainer-{TRAINER_VERSION}" / Path(TRAINJOB_CRD_PATH).name
    if out.is_file():
        return out
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"fetching {TRAINER_MODULE}@{TRAINER_VERSION} needs the Go toolchain (go on PATH)")
    env = {**os.environ, "GOMODCACHE": str(cache_root() / "mod"), "GOFLAGS": "-mod=mod"}
    with tempfile.TemporaryDirectory() as tmp:  # outside any module: a plain download
        got = subprocess.run([go, "mod", "download", "-json", f"{TRAINER_MODULE}@{TRAINER_VERSION}"], cwd=tmp,
                             env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    if got.returncode != 0:
        raise RuntimeError(f"go mod download {TRAINER_MODULE}@{TRAINER_VERSION} failed: {got.stdout}{got.stderr}")
    source = Path(json.loads(got.stdout)["Dir"]) / TRAINJOB_CRD_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    shutil.copyfile(source, tmp_out)
    os.replace(tmp_out, out)
    return out

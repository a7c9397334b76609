from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamiclora.settings import OperatorSettings

from .fakekube import FakeKube

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def pvc_root(tmp_path: Path) -> Path:
    return tmp_path / "pvc"


@pytest.fixture
def settings(pvc_root: Path) -> OperatorSettings:
    return OperatorSettings(pvc_mount_root=str(pvc_root), local_executor=True)


@pytest.fixture
def swarm_body() -> dict[str, Any]:
    """The example Swarm, switched to PVC storage (the operator mounts it under pvc_root)."""
    body = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "swarm.yaml").read_text()))
    body["spec"]["storage"] = {"pvc": {"claimName": "ckpt", "path": "dl"}}
    body["spec"]["inference"].pop("apiKeySecretRef")
    return body

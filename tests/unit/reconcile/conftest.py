from __future__ import annotations

import copy
import json
import urllib.request
import uuid
from collections.abc import Iterator
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
    return OperatorSettings(pvc_mount_root=str(pvc_root), pod_labels="dynamiclora.io/executor=local")


@pytest.fixture
def swarm_body() -> dict[str, Any]:
    """The example Swarm, switched to PVC storage (the operator mounts it under pvc_root)."""
    body = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "swarm.yaml").read_text()))
    body["spec"]["storage"] = {"pvc": {"claimName": "ckpt", "path": "dl"}}
    body["spec"]["inference"].pop("apiKeySecretRef")
    return body


@pytest.fixture
def iam_user(s3_client: Any, moto_s3_endpoint: str) -> Iterator[tuple[str, str]]:
    """Keys of an IAM user allowed everything on S3, with moto checking credentials until the test ends."""
    import boto3

    iam = boto3.client("iam", endpoint_url=moto_s3_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    user = f"tenant-{uuid.uuid4().hex[:8]}"  # one moto server per session: a user per test
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]

    def auth(count: str) -> None:
        req = urllib.request.Request(f"{moto_s3_endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})  # fmt: skip
        urllib.request.urlopen(req, timeout=10).read()

    auth("0")
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        auth("inf")

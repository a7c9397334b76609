"""pytest plugin: a real S3 endpoint on loopback (moto in server mode) for integration tests.

Registered from the root ``conftest.py`` (``pytest_plugins``). Fixtures:

* ``moto_s3_endpoint`` (session): ``http://127.0.0.1:<free port>`` of a running moto server.
* ``s3_env``: the AWS_* environment pointing at it (for code and subprocesses that read the env).
* ``s3_client``: a boto3 client for it.
* ``s3_bucket``: a fresh bucket per test.
* ``s3_store_uri``: ``s3://<fresh bucket>/checkpoints``.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

_CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def moto_s3_endpoint() -> Iterator[str]:
    """Start moto's threaded server on loopback for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the AWS_* environment (inherited by subprocesses) at the moto server."""
    env = dict(_CREDS, AWS_ENDPOINT_URL_S3=moto_s3_endpoint)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


@pytest.fixture
def s3_client(s3_env: dict[str, str]) -> Any:
    """A boto3 client for the moto server."""
    from dynamiclora.storage.s3 import s3_client_from_env

    return s3_client_from_env()


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A new, empty bucket."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_store_uri(s3_bucket: str) -> str:
    """A store URI in a fresh bucket."""
    return f"s3://{s3_bucket}/checkpoints"

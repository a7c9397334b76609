"""Store fixtures: the same contract tests run on the filesystem and on S3 (moto server on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamiclora.storage import CheckpointStore, open_store


@pytest.fixture(params=["fs", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store URI on each backend."""
    if request.param == "fs":
        return f"file://{tmp_path}/store"
    uri: str = request.getfixturevalue("s3_store_uri")
    return uri


@pytest.fixture
def store(store_uri: str) -> CheckpointStore:
    """The store opened from :func:`store_uri`."""
    return open_store(store_uri)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Three local checkpoint files with distinct content."""
    src = tmp_path / "src"
    src.mkdir()
    out = {}
    for name, data in [("adapter_config.json", b'{"r": 8}'), ("adapter_model.safetensors", bytes(range(256)) * 64),
                       ("stats.json", b'{"loss": 1.0}')]:
        (src / name).write_bytes(data)
        out[name] = src / name
    return out

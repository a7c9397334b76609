"""Fixtures for training tests: the tiny model on disk and synthetic records."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainhelpers import write_records

from dynamiclora.tinymodel import ensure_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama saved once per session."""
    return ensure_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def records_file(tmp_path: Path) -> Path:
    """Sixteen valid records."""
    return write_records(tmp_path / "records.jsonl")

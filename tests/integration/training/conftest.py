"""Fixtures for training tests: the tiny model on disk and synthetic records."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainhelpers import write_records

from dynamiclora_dev.tinymodel import TinyModelConfig, ensure_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama saved once per session."""
    return ensure_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def records_file(tmp_path: Path) -> Path:
    """Sixteen valid records."""
    return write_records(tmp_path / "records.jsonl")


@pytest.fixture(scope="session")
def sharp_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a 10x output head, saved once per session.

    With the default initialisation the largest logit reachable through the final RMSNorm is about
    2.5, so no adapter can make a fact's answer much more likely than the other 500 words and a
    learned fact is indistinguishable from a wrong one. A sharper head (still random) lets a small
    LoRA learn facts in a few dozen steps, which the quality gate tests need to tell good from bad.
    """
    import torch

    from dynamiclora_dev.tinymodel import build_model, save_tiny_model

    model = build_model(TinyModelConfig())
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    return save_tiny_model(tmp_path_factory.mktemp("sharp") / "model", model=model)

"""Elastic weight consolidation (``--ewc-lambda``, training/ewc.py), the continual benchmark's ``ewc`` peer.

The same second version trained from the same first one on the same records, with and without the
penalty: with it, the tier stays much closer to where it started, and the version's statistics say
what anchored it (the Fisher information of the stored records, older than the run's new ones).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_training_train import NS, TIER, adapter_tensors, train_args
from trainhelpers import result_of, run_cli, write_facts

from dynamiclora.storage import open_store

pytestmark = [pytest.mark.integration]


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[k] - b[k]).norm()) ** 2 for k in a) ** 0.5


def test_ewc_keeps_the_tier_near_the_version_it_starts_from(tiny_model_dir: Path, tmp_path: Path) -> None:
    moved = {}
    for name, strength in (("plain", "0"), ("ewc", "1e6")):
        data, store = tmp_path / f"records-{name}", f"file://{tmp_path}/{name}"
        data.mkdir()
        write_facts(data / "old.jsonl", range(40))  # 8 questions
        first = run_cli(*train_args(tiny_model_dir, data, store, tmp_path / f"{name}1"))
        assert first.returncode == 0, first.stderr[-3000:]
        write_facts(data / "new.jsonl", range(40, 60), first_name=8)  # 8 other questions, newer
        second = run_cli(*train_args(tiny_model_dir, data, store, tmp_path / f"{name}2", "--max-records", "20",
                                     "--init-from", "latest", "--ewc-lambda", strength, "--replay-fraction", "0",
                                     "--gate-max-regression", "1"))  # fmt: skip
        assert second.returncode == 0, second.stderr[-3000:]
        assert result_of(second)["version"] == 2
        moved[name] = _distance(adapter_tensors(store, 1, tmp_path / f"{name}-a"),
                                adapter_tensors(store, 2, tmp_path / f"{name}-b"))  # fmt: skip
        stats = json.loads(open_store(store).read_file(NS, TIER, 2, "stats.json"))
        if name == "ewc":  # the Fisher information of the 8 older questions (newest answer of each)
            assert stats["ewc"]["lambda"] == 1e6 and stats["ewc"]["records"] == 8 and stats["ewc"]["fisherTotal"] > 0
            assert "ewc: lambda 1e+06, Fisher information of 8 stored question(s)" in second.stdout
        else:
            assert "ewc" not in stats
    assert moved["ewc"] < 0.5 * moved["plain"], moved

"""Plasticity in real training Jobs: the start decays by the records since, the budget caps the result (issue 14).

Both act before the quality gate, so what the gate judges is exactly what would be published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trainhelpers import write_facts

from dynamiclora.storage import open_store
from dynamiclora.training.options import TrainConfig
from dynamiclora.training.trainer import run_training

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS = "team"


def _train(model: Path, data: Path, store_uri: str, tier: str, **extra: Any) -> dict[str, Any]:
    extra.setdefault("lr", 0.01)
    extra.setdefault("gate_max_regression", 0.05)
    cfg = TrainConfig(base_model=str(model), data=str(data), output_store=store_uri, namespace=NS, tier=tier,
                      rank=4, batch_size=8, seed=1, checkpoint_every=0, holdout_fraction=0.2,
                      screen_threshold=0.6, free_threshold=0.3, **extra)
    return run_training(cfg, log=lambda _m: None)


def _stats(store_uri: str, tier: str, version: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(open_store(store_uri).read_file(NS, tier, version, "stats.json"))
    return doc


def test_decay_and_energy_budget_change_the_published_version(sharp_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "records"
    data.mkdir()
    write_facts(data / "round-1.jsonl", range(96))
    store_uri = f"file://{tmp_path}/store"
    v1 = _train(sharp_model_dir, data, store_uri, "start", steps=80)
    assert v1["gate"]["accepted"], v1["gate"]
    write_facts(data / "round-2.jsonl", range(96, 128), first_name=8)
    init = f"{store_uri}/{NS}/start/v000001"
    # One tiny step from v1, so what differs between the runs is the start, not the training.
    common: dict[str, Any] = {"steps": 1, "lr": 1e-6, "max_records": 32, "init_from": init}

    kept = _train(sharp_model_dir, data, store_uri, "kept", free_decay=0.0, **common)
    wiped = _train(sharp_model_dir, data, store_uri, "wiped", free_decay=1.0, screened_decay=1.0, **common)
    assert "decay" not in _stats(store_uri, "kept", 1)
    decay = _stats(store_uri, "wiped", 1)["decay"]
    assert decay["interactions"] > 0 and decay["freeFactor"] == 0.0
    # Everything v1 knew decayed away before the step: the gate sees that forgetting and refuses it.
    assert wiped["deltaNorm"] < 0.01 * kept["deltaNorm"], (wiped["deltaNorm"], kept["deltaNorm"])
    assert kept["gate"]["accepted"] and not wiped["gate"]["accepted"], wiped["gate"]
    assert wiped["gate"]["heldOut"]["forgotten"] >= 2

    half = _train(sharp_model_dir, data, store_uri, "half", free_decay=0.5, reference_interactions=1e9, **common)
    assert _stats(store_uri, "half", 1)["decay"]["freeFactor"] > 0.999999  # a huge reference hour: no decay
    assert half["deltaNorm"] == pytest.approx(kept["deltaNorm"], rel=1e-4)

    budget = 0.25 * kept["deltaNorm"] ** 2
    capped = _train(sharp_model_dir, data, store_uri, "capped", energy_budget=budget, **common)
    homeostasis = _stats(store_uri, "capped", 1)["homeostasis"]
    assert homeostasis["energyBefore"] > budget and homeostasis["energyAfter"] == pytest.approx(budget, rel=1e-4)
    assert capped["deltaNorm"] ** 2 == pytest.approx(budget, rel=1e-3)


def test_protection_keeps_the_update_off_the_inputs_the_slower_tier_answers(
    sharp_model_dir: Path, tmp_path: Path
) -> None:
    from dynamiclora.memory import decompose

    data = tmp_path / "records"
    data.mkdir()
    write_facts(data / "round-1.jsonl", range(96))
    store_uri = f"file://{tmp_path}/store"
    _train(sharp_model_dir, data, store_uri, "slow", steps=60)  # stands in for the agent tier
    write_facts(data / "round-2.jsonl", range(96, 192), first_name=8)
    frozen = [f"{store_uri}/{NS}/slow/v000001"]
    common: dict[str, Any] = {"steps": 40, "max_records": 96, "frozen": frozen, "gate_max_regression": None}
    _train(sharp_model_dir, data, store_uri, "shielded", plastic_rank=0, **common)
    _train(sharp_model_dir, data, store_uri, "plastic", plastic_rank=2, **common)
    _train(sharp_model_dir, data, store_uri, "open", **common)
    assert _stats(store_uri, "shielded", 1)["protection"]["constrainedRows"] == 4
    assert "protection" not in _stats(store_uri, "open", 1)

    store = open_store(store_uri)
    slow = _delta(store, "slow", tmp_path)

    def leak(tier: str) -> float:
        """How much of the update acts on the slower tier's input directions (0: none)."""
        update = _delta(store, tier, tmp_path)
        num = den = 0.0
        for module, d in update.items():
            w, v = d.dense().double(), decompose(slow[module], rtol=0.05).V.double()
            num += float((w @ v).norm() ** 2)
            den += float(w.norm() ** 2)
        return (num / den) ** 0.5

    assert leak("shielded") < 1e-4 < 0.05 < leak("open"), (leak("shielded"), leak("open"))
    assert 1e-4 < leak("plastic") < leak("open")  # two plastic rows may still reach them


def _delta(store: Any, tier: str, tmp: Path) -> Any:
    from dynamiclora.memory import load_adapter

    dest = tmp / f"dl-{tier}"
    store.download(NS, tier, 1, dest)
    return load_adapter(dest)[0]

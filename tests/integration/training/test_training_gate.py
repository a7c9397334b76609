"""The quality gate on real training and consolidation runs of the tiny Llama (issue 10)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trainhelpers import write_facts

from dynamiclora.cli import main
from dynamiclora.storage import open_store
from dynamiclora.training.consolidate import run_consolidation
from dynamiclora.training.gate import is_held_out
from dynamiclora.training.options import ConsolidateConfig, TrainConfig
from dynamiclora.training.records import parse_line
from dynamiclora.training.trainer import run_training

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS, TIER = "team", "alice-context"
HOLDOUT = 0.2


def _quiet(_msg: str) -> None:
    pass


def _train(model: Path, data: Path, store_uri: str, **extra: Any) -> dict[str, Any]:
    # A first version learns its facts (120 steps at 0.01); later ones continue from it more gently.
    start = {"lr": 0.002, "steps": 40} if extra.get("init_from") else {"lr": 0.01, "steps": 120}
    options: dict[str, Any] = {"holdout_fraction": HOLDOUT, "gate_max_regression": 0.02, **start, **extra}
    cfg = TrainConfig(base_model=str(model), data=str(data), output_store=store_uri, namespace=NS, tier=TIER,
                      rank=4, batch_size=8, seed=1, checkpoint_every=0, **options)
    return run_training(cfg, log=_quiet)


def _held_out(doc: dict[str, object]) -> bool:
    return is_held_out(parse_line(json.dumps(doc)), HOLDOUT)


def _manifest_gate(store_uri: str, version: int) -> dict[str, Any]:
    store = open_store(store_uri)
    gate: dict[str, Any] = store.get(NS, TIER, version).manifest.metadata["gate"]
    assert json.loads(store.read_file(NS, TIER, version, "gate.json")) == gate
    return gate


def test_gate_rejects_shuffled_labels_and_promotes_genuine_improvement(sharp_model_dir: Path, tmp_path: Path) -> None:
    store_uri = f"file://{tmp_path}/store"
    genuine = write_facts(tmp_path / "v1.jsonl", range(96))

    v1 = _train(sharp_model_dir, genuine, store_uri)
    assert v1["version"] == 1 and v1["gate"]["accepted"] is True, v1["gate"]
    held = v1["gate"]["heldOut"]
    # Held-out truth is the newest answer per question: at most one example for each of the 8 names.
    assert held["records"] == v1["heldOut"] >= 4 and v1["records"] < 96 - v1["heldOut"]
    # The base knew none; v1 answers some (all of 6 on one CPU, 3 to 5 on another float path: the loss drop
    # below says it learned them, the count is not equal everywhere).
    assert held["known"] == 0 and held["learned"] > 0, held
    assert held["candidate"] < held["baseline"] - 1.0  # learned the facts, measured on unseen records
    assert _manifest_gate(store_uri, 1)["accepted"] is True

    # v2: the same prompts, every trained answer moved to a wrong color; the held-out records (never
    # trained on) keep the true answers the agents actually gave.
    corrupted = write_facts(tmp_path / "v2.jsonl", range(96), rotate=1, keep_genuine=_held_out)
    v2 = _train(sharp_model_dir, corrupted, store_uri, init_from=f"{store_uri}/{NS}/{TIER}/v000001")
    gate2 = v2["gate"]
    assert v2["version"] == 2 and gate2["accepted"] is False, gate2
    assert gate2["heldOut"]["candidate"] > gate2["heldOut"]["baseline"] * 1.02
    assert gate2["heldOut"]["baseline"] == pytest.approx(held["candidate"], abs=1e-5)  # baseline = v1
    assert "rejected" in gate2["reason"] and "forgot known examples of heldOut" in gate2["reason"]
    assert gate2["heldOut"]["forgotten"] >= gate2["heldOut"]["known"] // 2 > 0
    assert gate2["cause"] == "contradiction" and gate2["contradictions"] > 0  # the batch itself is to blame
    assert _manifest_gate(store_uri, 2) == gate2  # published for inspection, marked rejected
    window = open_store(store_uri).get(NS, TIER, 2).manifest.metadata["window"]
    assert window["from"] <= window["to"]  # the span the operator quarantines after this rejection

    # v3: from v1 (still the newest accepted version) on more genuine records.
    more = write_facts(tmp_path / "v3.jsonl", range(96))
    more.write_text(more.read_text() + write_facts(tmp_path / "new.jsonl", range(96, 160)).read_text())
    v3 = _train(sharp_model_dir, more, store_uri, init_from=f"{store_uri}/{NS}/{TIER}/v000001")
    gate3 = v3["gate"]
    assert v3["version"] == 3 and gate3["accepted"] is True, gate3
    # Nothing held out is forgotten, and the loss stays far below the base model's. (Not "within 2% of v1's":
    # both are a few thousandths of a nat, where 2% is float noise that differs between CPUs.)
    assert gate3["heldOut"]["forgotten"] == 0 and gate3["heldOut"]["candidate"] < held["baseline"] - 1.0, gate3
    assert _manifest_gate(store_uri, 3)["accepted"] is True
    assert open_store(store_uri).list_versions(NS, TIER) == [1, 2, 3]


def test_regression_set_rejects_an_update_that_overwrites_known_facts(sharp_model_dir: Path, tmp_path: Path) -> None:
    store_uri = f"file://{tmp_path}/store"
    v1 = _train(sharp_model_dir, write_facts(tmp_path / "v1.jsonl", range(96)), store_uri)
    assert v1["gate"]["accepted"] is True
    init = f"{store_uri}/{NS}/{TIER}/v000001"
    regression = str(write_facts(tmp_path / "regression.jsonl", range(500, 532)))  # the user's known facts
    # No held-out slice here: the regression set alone must judge.
    wrong = _train(sharp_model_dir, write_facts(tmp_path / "wrong.jsonl", range(96), rotate=1), store_uri,
                   init_from=init, regression_data=regression, holdout_fraction=0.0)
    gate = wrong["gate"]
    assert gate["accepted"] is False and "heldOut" not in gate, gate
    assert gate["regression"]["records"] == 32
    assert gate["regression"]["candidate"] > gate["regression"]["baseline"] * 1.02
    assert "forgot known examples of regression" in gate["reason"]
    assert gate["regression"]["forgotten"] > 0 and gate["cause"] == "contradiction"
    right = _train(sharp_model_dir, write_facts(tmp_path / "right.jsonl", range(96, 192)), store_uri,
                   init_from=init, regression_data=regression, holdout_fraction=0.0)
    assert right["gate"]["accepted"] is True, right["gate"]
    assert right["gate"]["regression"]["baseline"] == pytest.approx(gate["regression"]["baseline"], abs=1e-5)


def test_consolidation_gate_rejects_a_lossy_migration_and_passes_an_exact_one(
    sharp_model_dir: Path, tmp_path: Path
) -> None:
    store_uri = f"file://{tmp_path}/store"
    agent_ref, ctx_ref = f"{store_uri}/{NS}/alice-agent", f"{store_uri}/{NS}/{TIER}"
    old_facts = write_facts(tmp_path / "old.jsonl", range(96))
    new_facts = write_facts(tmp_path / "new.jsonl", range(200, 296), first_name=8)
    # The agent tier knows the old facts; the context tier learned new ones on top of it.
    agent = run_training(TrainConfig(base_model=str(sharp_model_dir), data=str(old_facts), output_store=store_uri,
                                     namespace=NS, tier="alice-agent", rank=4, lr=0.01, steps=40, batch_size=8,
                                     seed=1, checkpoint_every=0), log=_quiet)
    assert agent["version"] == 1
    first = _train(sharp_model_dir, new_facts, store_uri, frozen=[agent_ref])
    store = open_store(store_uri)
    store.download(NS, TIER, first["version"], tmp_path / "v1")
    for _ in range(2):  # three identical versions: stable components
        store.publish(NS, TIER, {n: tmp_path / "v1" / n for n in ("adapter_config.json",
                                                                   "adapter_model.safetensors")})
    common: dict[str, Any] = {
        "mode": "migrate", "source": ctx_ref, "dest": agent_ref, "max_energy_fraction": 1.0,
        "gate_base_model": str(sharp_model_dir), "gate_data": [str(old_facts), str(new_facts)],
        "gate_records": 96, "gate_max_regression": 0.02,
    }

    # Forced bad: the destination is stored at rank 1, the SVD truncation drops most of what it knew.
    # Through the CLI, as the Job runs it: a rejection is a decision, exit code 0.
    code = main(["consolidate", "--mode", "migrate", "--source", ctx_ref, "--dest", agent_ref,
                 "--max-energy-fraction", "1.0", "--gate-base-model", str(sharp_model_dir),
                 "--gate-data", str(old_facts), "--gate-data", str(new_facts), "--gate-records", "96",
                 "--gate-max-regression", "0.02", "--dest-rank", "1", "--result-file", str(tmp_path / "bad.json")])
    assert code == 0
    bad = json.loads((tmp_path / "bad.json").read_text())
    assert bad["status"] == "rejected" and bad["changed"] is False and bad["published"] == [], bad.get("gate")
    figures = bad["gate"][f"{NS}/{TIER}"]
    # Judged on each question once, by its newest answer (the facts' files repeat their questions).
    questions = {json.loads(line)["prompt"] for f in (old_facts, new_facts) for line in f.read_text().splitlines()}
    assert figures["candidate"] > figures["baseline"] * 1.02 and figures["records"] == len(questions) < 96
    assert bad["report"]["truncationError"] > 0
    assert store.list_versions(NS, TIER) == [1, 2, 3] and store.list_versions(NS, "alice-agent") == [1]

    # Normal: room for everything at the destination, so the redistribution is exact.
    good = run_consolidation(ConsolidateConfig(**common, dest_rank=8), log=_quiet)
    assert good["status"] == "accepted" and good["changed"] is True, good.get("gate")
    assert good["report"]["truncationError"] == 0
    figures = good["gate"][f"{NS}/{TIER}"]
    assert figures["candidate"] == pytest.approx(figures["baseline"], abs=1e-4)
    assert [p["tier"] for p in good["published"]] == [f"{NS}/alice-agent", f"{NS}/{TIER}"]
    assert store.list_versions(NS, "alice-agent") == [1, 2]
    assert store.get(NS, "alice-agent", 2).manifest.metadata["gate"] == good["gate"]  # the verdict travels along


def test_consensus_gate_checks_every_agent_stack(sharp_model_dir: Path, tmp_path: Path) -> None:
    facts = [write_facts(tmp_path / f"facts{i}.jsonl", range(100 * i, 100 * i + 64), first_name=8 * i)
             for i in range(2)]
    adapters = []
    for i, data in enumerate(facts):
        uri = f"file://{tmp_path}/train{i}"
        run_training(TrainConfig(base_model=str(sharp_model_dir), data=str(data), output_store=uri, namespace="a",
                                 tier="agent", rank=4, lr=0.01, steps=30, batch_size=8, seed=0,
                                 checkpoint_every=0), log=_quiet)
        open_store(uri).download("a", "agent", 1, tmp_path / f"adapter{i}")
        adapters.append(tmp_path / f"adapter{i}")

    def consensus(store_uri: str, agent_adapters: list[Path], update_agents: bool) -> dict[str, Any]:
        store = open_store(store_uri)
        for i, directory in enumerate(agent_adapters):
            store.publish(f"agent{i}", "agent", {p.name: p for p in directory.iterdir() if "adapter_" in p.name})
        cfg = ConsolidateConfig(mode="consensus", dest=f"{store_uri}/swarm/shared",
                                agent_tier=[f"{store_uri}/agent{i}/agent" for i in range(len(agent_adapters))],
                                update_agents=update_agents, gate_base_model=str(sharp_model_dir),
                                gate_data=[str(f) for f in facts])
        return run_consolidation(cfg, log=_quiet)

    # Agents that agree exactly: the shared tier takes everything, each agent keeps a zero residual.
    agreed = consensus(f"file://{tmp_path}/agreed", [adapters[0], adapters[0]], update_agents=True)
    assert agreed["status"] == "accepted" and len(agreed["published"]) == 3, agreed["gate"]
    for name in ("agent0/agent", "agent1/agent"):
        assert agreed["gate"][name]["candidate"] == pytest.approx(agreed["gate"][name]["baseline"], abs=1e-4)

    # Forced bad: the consensus is added on top of agents that keep their whole delta (no residual
    # update), so each agent's stack gets the other agent's facts over its own.
    store_uri = f"file://{tmp_path}/double"
    doubled = consensus(store_uri, adapters, update_agents=False)
    assert doubled["status"] == "rejected" and doubled["published"] == [] and doubled["changed"] is False
    worst = max(doubled["gate"][n]["candidate"] / doubled["gate"][n]["baseline"] for n in ("agent0/agent",
                                                                                        "agent1/agent"))
    assert worst > 1.02
    store = open_store(store_uri)
    assert store.list_versions("swarm", "shared") == [] and store.list_versions("agent0", "agent") == [1]


def test_an_honest_correction_is_not_judged_by_the_answers_it_replaces(sharp_model_dir: Path, tmp_path: Path) -> None:
    """Two names' colors change (the world changed); their older answers happen to be held out. The gate
    leaves those superseded answers out instead of calling the correction forgetting and quarantining it as a
    contradiction (training/gate.py revisions; without them this update is rejected)."""
    store_uri = f"file://{tmp_path}/store"
    data = write_facts(tmp_path / "v1.jsonl", range(96))
    assert _train(sharp_model_dir, data, store_uri)["gate"]["accepted"] is True
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    old: dict[str, str] = {}  # prompt -> its held-out answer (the newest), for two names
    for r in reversed(rows):
        if _held_out(r) and len(old) < 2:
            old.setdefault(str(r["prompt"]), str(r["response"]))
    assert len(old) == 2
    colors = sorted({str(r["response"]) for r in rows})
    window = []
    for i, r in enumerate(rows[-48:]):  # the same questions again, an hour later; two answers changed
        doc = dict(r, id=f"later-{i}", timestamp=str(r["timestamp"]).replace("T00:", "T01:"))
        if doc["prompt"] in old:
            doc["response"] = next(c for c in colors if c != old[str(doc["prompt"])])
            if _held_out(doc):
                continue  # no held-out copy of a new answer: only the old one is in the gate's pool
        window.append(doc)
    data.write_text(data.read_text() + "".join(json.dumps(d) + "\n" for d in window))
    v2 = _train(sharp_model_dir, data, store_uri, init_from=f"{store_uri}/{NS}/{TIER}/v000001",
                max_records=len(window), steps=120, lr=0.01)
    stats = json.loads(open_store(store_uri).read_file(NS, TIER, v2["version"], "stats.json"))
    assert stats["heldOutRevised"] == 2, stats  # the two superseded held-out answers, left out
    assert v2["gate"]["accepted"] is True, v2["gate"]

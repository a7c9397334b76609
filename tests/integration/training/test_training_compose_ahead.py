"""A training Job composes its accepted version's served stack ahead (issue 19, event-driven freshness).

The same ``run_compose`` as the compose Job, from the training process that already has torch and the
model: the adapter (with the fingerprint the hot-swap verifies) equals what ``dynamiclora compose`` writes
for the same stack, and a stack naming another version than the one published composes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from test_training_train import NS, TIER, publish_random_adapter, train_args
from trainhelpers import result_of, run_cli

from dynamiclora.builders.jobs import tier_ref
from dynamiclora.serving.adapters import FINGERPRINT_FILE
from dynamiclora.serving.served_s3 import local_served_dir
from dynamiclora.training.options import StackSpec

SWARM = "support"


def _stack(store: str, version: int, agent_ref: str) -> str:
    tiers = (("context", tier_ref(store, NS, TIER, version)), ("agent", agent_ref))
    return StackSpec("alice", f"{version:08x}abcd", f"c{version}.a1", tiers).to_text()


def test_an_accepted_version_is_composed_ahead_as_the_compose_job_composes_it(
    tiny_model_dir: Path, records_file: Path, tmp_path: Path
) -> None:
    store = f"file://{tmp_path}/store"
    agent_ref = publish_random_adapter(store, "alice-agent", tmp_path)
    stack = _stack(store, 1, agent_ref)
    trained = run_cli(*train_args(tiny_model_dir, records_file, store, tmp_path / "w1", "--frozen", agent_ref,
                                  "--serve-swarm", SWARM, "--serve-stack", stack, "--serve-max-lora-rank", "64",
                                  "--serve-base-model-name", "tiny"))  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert result_of(trained)["composedAhead"] == "c1.a1"
    ahead = local_served_dir(store, NS, SWARM) / "alice" / StackSpec.from_text(stack).key
    assert json.loads((ahead / "composition.json").read_text())["label"] == "c1.a1"
    assert (ahead / FINGERPRINT_FILE).is_file()  # the hot-swap verifies what vLLM answers against it

    composed = run_cli("compose", "--store", store, "--namespace", NS, "--swarm", "by-job", "--stack", stack,
                       "--max-lora-rank", "64", "--base-model-name", "tiny", "--model-dir", str(tiny_model_dir))
    assert composed.returncode == 0, composed.stderr[-3000:]
    by_job = local_served_dir(store, NS, "by-job") / "alice" / StackSpec.from_text(stack).key
    mine, theirs = (load_file(str(d / "adapter_model.safetensors")) for d in (ahead, by_job))
    assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine)
    assert json.loads((ahead / FINGERPRINT_FILE).read_text()) == json.loads((by_job / FINGERPRINT_FILE).read_text())


def test_a_stack_naming_another_version_composes_nothing(
    tiny_model_dir: Path, records_file: Path, tmp_path: Path
) -> None:
    """The operator expected v2 (say) and the store gave v1: serving will look for another key anyway."""
    store = f"file://{tmp_path}/store"
    agent_ref = publish_random_adapter(store, "alice-agent", tmp_path)
    trained = run_cli(*train_args(tiny_model_dir, records_file, store, tmp_path / "w1", "--frozen", agent_ref,
                                  "--serve-swarm", SWARM, "--serve-stack", _stack(store, 2, agent_ref),
                                  "--serve-max-lora-rank", "64"))  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "composedAhead" not in result_of(trained) and "compose ahead skipped" in trained.stdout
    assert not local_served_dir(store, NS, SWARM).exists()


def test_serve_options_are_checked_before_training(tiny_model_dir: Path, records_file: Path, tmp_path: Path) -> None:
    store = f"file://{tmp_path}/store"
    together = "--serve-swarm, --serve-stack and --serve-max-lora-rank go together"
    alone = run_cli(*train_args(tiny_model_dir, records_file, store, tmp_path / "w1", "--serve-swarm", SWARM))
    assert alone.returncode != 0 and together in alone.stderr
    stack = _stack(store, 1, publish_random_adapter(store, "alice-agent", tmp_path))
    no_rank = run_cli(*train_args(tiny_model_dir, records_file, store, tmp_path / "w2", "--serve-swarm", SWARM,
                                  "--serve-stack", stack))  # fmt: skip
    assert no_rank.returncode != 0 and together in no_rank.stderr

"""Every sample validates; invalid specs are rejected with a message naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamiclora.api.validate import MODELS, validate_files, validate_text

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))


def _load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "examples" / name).read_text()) if d]


def test_examples_exist_and_cover_every_kind() -> None:
    kinds = {d["kind"] for p in EXAMPLES for d in yaml.safe_load_all(Path(p).read_text()) if d}
    assert set(MODELS) <= kinds


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).name)
def test_every_example_validates(path: str) -> None:
    assert validate_files([path]) == []


def _swarm() -> dict[str, Any]:
    return copy.deepcopy(_load("swarm.yaml")[0])


def _tier() -> dict[str, Any]:
    return copy.deepcopy(_load("tiers.yaml")[0])


def _policy() -> dict[str, Any]:
    return copy.deepcopy(_load("migrationpolicy.yaml")[0])


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


_DELETE = object()

INVALID = [
    # (name, document factory, path to change, new value, expected field in message, expected words)
    ("wrong enum level", _tier, "spec.level", "galaxy", "spec.level", "context"),
    ("rank too large", _tier, "spec.rank", 100000, "spec.rank", "less than or equal to 512"),
    ("rank zero", _swarm, "spec.contextTier.rank", 0, "spec.contextTier.rank", "greater than or equal to 1"),
    ("hysteresis inverted", _tier, "spec.plasticity.freeThreshold", 0.95, "spec.plasticity",
     "screenThreshold must be greater than"),
    ("missing storage", _swarm, "spec.storage", _DELETE, "spec.storage", "Field required"),
    ("two storages", _swarm, "spec.storage.pvc", {"claimName": "ckpt"}, "spec.storage", "exactly one"),
    ("bad consensus rule", _policy, "spec.consensus.rule", "vote", "spec.consensus.rule", "resonance"),
    ("downward pair", _policy, "spec.pairs.0.target", "context", "spec.pairs[0]", "slower tier"),
    ("unsupported max rank", _swarm, "spec.inference.maxLoraRank", 48, "spec.inference.maxLoraRank", "64"),
    ("agent on shared tier", _tier, "spec.agent", "alice", "spec", "forbidden for shared tiers"),
    ("unknown field", _swarm, "spec.inference.replica", 3, "spec.inference.replica", "Extra inputs"),
    ("bad duration", _policy, "spec.bandwidth.period", "an hour", "spec.bandwidth.period", "pattern"),
    ("duplicate agent", _swarm, "spec.agents.1.name", "alice", "spec", "unique"),
    ("no base model source", _swarm, "spec.baseModel.path", _DELETE, "spec.baseModel", "exactly one"),
    ("bad agent name", _swarm, "spec.agents.0.name", "Alice_1", "spec.agents[0].name", "pattern"),
    ("energy fraction above 1", _policy, "spec.bandwidth.maxEnergyFraction", 1.5,
     "spec.bandwidth.maxEnergyFraction", "less than or equal to 1"),
]


@pytest.mark.parametrize(
    ("factory", "path", "value", "field", "words"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_spec_is_rejected_naming_the_field(
    factory: Any, path: str, value: Any, field: str, words: str
) -> None:
    doc = _set(factory(), path, value)
    problems = validate_text(yaml.safe_dump(doc, sort_keys=False), "bad.yaml")
    assert problems, f"{path}={value!r} was accepted"
    rendered = "\n".join(str(p) for p in problems)
    assert any(p.path == field or p.path.startswith(field + ".") for p in problems), rendered
    assert words in rendered, rendered
    assert all(p.line > 0 for p in problems), rendered


def test_problem_points_at_the_offending_line() -> None:
    text = (ROOT / "examples" / "tiers.yaml").read_text().replace("rank: 32", "rank: 9999", 1)
    problems = validate_text(text, "tiers.yaml")
    assert len(problems) == 1
    offending = text.splitlines()[problems[0].line - 1]
    assert "rank: 9999" in offending
    assert str(problems[0]).startswith(f"tiers.yaml:{problems[0].line}: spec.rank: ")


def test_foreign_objects_are_ignored_but_typos_in_our_group_are_not() -> None:
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: v}\n"
    assert validate_text(secret) == []
    typo = (ROOT / "examples" / "migrationpolicy.yaml").read_text().replace("v1alpha1", "v1alpah1")
    problems = validate_text(typo, "p.yaml")
    assert problems and "expected apiVersion dynamiclora.io/v1alpha1" in problems[0].message


def test_broken_yaml_and_empty_files_are_reported() -> None:
    assert "invalid YAML" in validate_text("spec: [unclosed", "x.yaml")[0].message
    assert "no YAML document" in validate_text("", "x.yaml")[0].message

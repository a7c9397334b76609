"""The generated CRDs on a real API server: they apply, the examples are accepted, every CEL rule and
a sample of schema constraints reject bad objects with their message, and the status subresource and
printer columns work."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamiclora.api.policy import RECURRENCE_PAIRS
from dynamiclora_dev.localcluster import LocalCluster

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
CRDS = sorted((ROOT / "crds").glob("*.yaml"))
NS = "crd-tests"


def _examples(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "examples" / name).read_text()) if d]


def _cel_messages() -> set[tuple[str, str]]:
    """(kind, message) of every x-kubernetes-validations rule in the generated CRDs."""
    found: set[tuple[str, str]] = set()

    def walk(kind: str, node: Any) -> None:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations") or []:
                found.add((kind, rule["message"]))
            for value in node.values():
                walk(kind, value)
        elif isinstance(node, list):
            for value in node:
                walk(kind, value)

    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        walk(crd["spec"]["names"]["kind"], crd["spec"]["versions"])
    return found


@pytest.fixture(scope="module")
def cluster(local_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The session cluster with the CRDs applied (Established) and a namespace for these tests."""
    assert CRDS, "crds/*.yaml missing: run `make manifests`"
    local_cluster.kubectl("apply", *[arg for p in CRDS for arg in ("-f", str(p))])
    local_cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd", "-l", "app.kubernetes.io/part-of=dynamiclora"
    )
    local_cluster.kubectl("create", "namespace", NS, check=False)
    yield local_cluster


def _apply(cluster: LocalCluster, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = NS
    return cluster.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[parts[-1]] = value
    return doc


def _named(doc: dict[str, Any], name: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = name
    return doc


SWARM = _examples("swarm.yaml")[0]
SWARM_TIER, DOMAIN_TIER, FOUNDATION_TIER = _examples("tiers.yaml")
POLICY = _examples("migrationpolicy.yaml")[0]
AGENT_TIER = _set(_set(_named(SWARM_TIER, "alice-agent"), "spec.level", "agent"), "spec.agent", "alice")

Mutation = Callable[[dict[str, Any]], dict[str, Any]]


def setter(path: str, value: Any) -> Mutation:
    return lambda d: _set(copy.deepcopy(d), path, value)


# (case id, kind, base object, mutation, applied as an update of the base?, expected message)
CEL_CASES: list[tuple[str, str, dict[str, Any], Mutation, bool, str]] = [
    (
        "tier-agent-required",
        "LoRATier",
        SWARM_TIER,
        setter("spec.level", "context"),
        False,
        "spec.agent is required for context and agent tiers and forbidden for shared tiers",
    ),
    (
        "swarm-name-is-a-service-name",
        "Swarm",
        SWARM,
        setter("metadata.name", "support.v2"),
        False,
        "a Swarm name must be at most 63 characters, start with a letter and hold only lowercase letters, digits "
        "and '-' (no dots): it names the Swarm's Service and is a label value",
    ),
    (
        "swarm-hot-replicas-at-least-the-normal-count",
        "Swarm",
        SWARM,
        setter("spec.inference.placement", {"replicasPerAgent": 3, "hotReplicas": 2}),
        False,
        "placement.hotReplicas must be at least placement.replicasPerAgent",
    ),
    ("tier-agent-immutable", "LoRATier", AGENT_TIER, setter("spec.agent", "bob"), True, "spec.agent is immutable"),
    (
        "tier-swarmref-immutable",
        "LoRATier",
        SWARM_TIER,
        setter("spec.swarmRef", "other"),
        True,
        "spec.swarmRef is immutable",
    ),
    (
        "tier-level-immutable",
        "LoRATier",
        DOMAIN_TIER,
        setter("spec.level", "foundation"),
        True,
        "spec.level is immutable",
    ),
    (
        "tier-hysteresis",
        "LoRATier",
        SWARM_TIER,
        setter("spec.plasticity.screenThreshold", 0.4),
        False,
        "plasticity.screenThreshold must be greater than plasticity.freeThreshold (hysteresis)",
    ),
    (
        "tier-batch-covers-processes",
        "LoRATier",
        SWARM_TIER,
        setter("spec.training.nodes", 64),  # 64 processes, the default batch of 8 records
        False,
        "training.batchSize must be at least nodes x procsPerNode: each training process needs a share of every batch",
    ),
    (
        "swarm-batch-covers-processes",
        "Swarm",
        SWARM,
        setter("spec.contextTier.training.procsPerNode", 16),
        False,
        "training.batchSize must be at least nodes x procsPerNode: each training process needs a share of every batch",
    ),
    (
        "tier-fsdp-needs-processes",
        "LoRATier",
        SWARM_TIER,
        setter("spec.training.strategy", "FSDP"),  # one process: nothing to shard across
        False,
        "training.strategy FSDP shards the model across the training processes: it needs nodes x procsPerNode "
        "above 1",
    ),
    (
        "swarm-fsdp-needs-processes",
        "Swarm",
        SWARM,
        setter("spec.contextTier.training.strategy", "FSDP"),
        False,
        "training.strategy FSDP shards the model across the training processes: it needs nodes x procsPerNode "
        "above 1",
    ),
    (
        "tier-decay",
        "LoRATier",
        SWARM_TIER,
        setter("spec.plasticity.screenedDecay", 0.5),
        False,
        "plasticity.screenedDecay must not exceed plasticity.freeDecay",
    ),
    (
        "tier-storage-one-of",
        "LoRATier",
        DOMAIN_TIER,
        setter("spec.storage.pvc", {"claimName": "x"}),
        False,
        "exactly one of storage.s3 or storage.pvc must be set",
    ),
    (
        "policy-repeated-pair",
        "MigrationPolicy",
        POLICY,
        setter("spec.pairs", [{"source": "context", "target": "agent"}] * 2),
        False,
        "spec.pairs must not repeat a pair",
    ),
    (
        "policy-recurrence-from-a-shared-tier",
        "MigrationPolicy",
        POLICY,
        lambda d: setter("spec.pairs", [{"source": "swarm", "target": "domain"}])(
            setter("spec.stability", {"method": "recurrence"})(d)),
        False,
        RECURRENCE_PAIRS,
    ),
    (
        "policy-pair-direction",
        "MigrationPolicy",
        POLICY,
        setter("spec.pairs", [{"source": "agent", "target": "context"}]),
        False,
        "pairs[].target must be a slower tier than pairs[].source",
    ),
    (
        "swarm-model-immutable",
        "Swarm",
        SWARM,
        setter("spec.baseModel.name", "other-model"),
        True,
        "spec.baseModel.name is immutable",
    ),
    (
        "swarm-model-one-of",
        "Swarm",
        SWARM,
        setter("spec.baseModel.s3Uri", "s3://b/m"),
        False,
        "exactly one of baseModel.path, baseModel.pvc or baseModel.s3Uri must be set",
    ),
    (
        "swarm-hysteresis",
        "Swarm",
        SWARM,
        setter("spec.contextTier.plasticity.freeThreshold", 0.9),
        False,
        "plasticity.screenThreshold must be greater than plasticity.freeThreshold (hysteresis)",
    ),
    (
        "swarm-decay",
        "Swarm",
        SWARM,
        setter("spec.contextTier.plasticity.screenedDecay", 0.9),
        False,
        "plasticity.screenedDecay must not exceed plasticity.freeDecay",
    ),
    *[
        (f"{kind.lower()}-duration-10-years", kind, base, setter(path, "87601h"), False,
         "must be at most 87600h (10 years)")
        for kind, base, path in (("LoRATier", SWARM_TIER, "spec.retention.keepFor"),
                                 ("Swarm", SWARM, "spec.contextTier.training.schedule"),
                                 ("MigrationPolicy", POLICY, "spec.interval"))
    ],
    (
        "swarm-storage-one-of",
        "Swarm",
        SWARM,
        setter("spec.storage.pvc", {"claimName": "x"}),
        False,
        "exactly one of storage.s3 or storage.pvc must be set",
    ),
    (
        "swarm-regression-set-foreign-bucket",
        "Swarm",
        SWARM,
        setter("spec.agents.0.regressionSet", "s3://someone-elses-bucket/reg/alice.jsonl"),
        False,
        "spec.agents[].regressionSet must be relative to the storage root or in the storage's own bucket",
    ),
    (
        "tier-regression-set-foreign-bucket",
        "LoRATier",
        DOMAIN_TIER,
        setter("spec.qualityGate.regressionSet", "s3://someone-elses-bucket/reg.jsonl"),
        False,
        "spec.qualityGate.regressionSet must be relative to the storage root or in the storage's own bucket",
    ),
    (
        "swarm-anchor-set-foreign-bucket",
        "Swarm",
        SWARM,
        setter("spec.agents.0.anchorSet", "s3://someone-elses-bucket/anchors/alice.jsonl"),
        False,
        "spec.agents[].anchorSet must be relative to the storage root or in the storage's own bucket",
    ),
    (
        "tier-anchor-set-foreign-bucket",
        "LoRATier",
        DOMAIN_TIER,
        setter("spec.training.anchorSet", "s3://someone-elses-bucket/anchors.jsonl"),
        False,
        "spec.training.anchorSet must be relative to the storage root or in the storage's own bucket",
    ),
    *[
        (f"{kind.lower()}-anchor-set-needs-ddp", kind, base,
         lambda d, p=prefix: setter(f"{p}.anchorSet", "anchors/a.jsonl")(setter(f"{p}.strategy", "FSDP")(
             setter(f"{p}.nodes", 2)(d))),
         False, "training.anchorSet adds its gradient to whole parameters: it needs training.strategy DDP")
        for kind, base, prefix in (("LoRATier", SWARM_TIER, "spec.training"),
                                   ("Swarm", SWARM, "spec.contextTier.training"))
    ],
]

SCHEMA_CASES: list[tuple[str, dict[str, Any], Mutation, list[str]]] = [
    ("enum", SWARM_TIER, setter("spec.level", "weekly"), ["spec.level", "Unsupported value", "weekly"]),
    ("minimum", SWARM_TIER, setter("spec.rank", 0), ["spec.rank", "greater than or equal to 1"]),
    (
        "maximum",
        POLICY,
        setter("spec.stability.threshold", 1.5),
        ["spec.stability.threshold", "less than or equal to 1"],
    ),
    ("pattern", SWARM, setter("spec.agents", [{"name": "Alice_1"}]), ["spec.agents[0].name", "should match"]),
    (
        "required",
        POLICY,
        lambda d: {**d, "spec": {k: v for k, v in d["spec"].items() if k != "pairs"}},
        ["spec.pairs", "Required value"],
    ),
    ("unknown-field", SWARM, setter("spec.bogusField", 1), ['unknown field "spec.bogusField"']),
    ("path-escape", SWARM, setter("spec.experience.prefix", "../bob"), ["spec.experience.prefix", "should match"]),
    *[
        (f"regression-set-{name}", SWARM, setter("spec.agents.0.regressionSet", value),
         ["spec.agents[0].regressionSet", "should match"])
        for name, value in (("absolute", "/etc/passwd"), ("escape", "reg/../../x.jsonl"),
                            ("bucket-escape", "s3://dynamiclora-checkpoints/../x"))
    ],
    ("unbounded", SWARM, setter("spec.inference.extraArgs", ["--x"] * 65), ["spec.inference.extraArgs", "65"]),
]


def test_every_cel_rule_has_a_case() -> None:
    covered = {(kind, message) for _, kind, _, _, _, message in CEL_CASES}
    assert _cel_messages() - covered == set()


def test_examples_are_accepted(cluster: LocalCluster) -> None:
    for doc in [SWARM, SWARM_TIER, DOMAIN_TIER, FOUNDATION_TIER, POLICY, AGENT_TIER]:
        result = _apply(cluster, doc)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("case", "kind", "base", "mutate", "update", "message"), CEL_CASES, ids=[c[0] for c in CEL_CASES]
)
def test_cel_rule_rejects(
    cluster: LocalCluster,
    case: str,
    kind: str,
    base: dict[str, Any],
    mutate: Mutation,
    update: bool,
    message: str,
) -> None:
    name = f"cel-{case}"
    if update:
        created = _apply(cluster, _named(base, name))
        assert created.returncode == 0, created.stderr
    result = _apply(cluster, mutate(_named(base, name)))
    assert result.returncode != 0, f"{case}: accepted but should be rejected with {message!r}"
    assert message in result.stderr


@pytest.mark.parametrize(("case", "base", "mutate", "fragments"), SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_schema_rejects(
    cluster: LocalCluster, case: str, base: dict[str, Any], mutate: Mutation, fragments: list[str]
) -> None:
    result = _apply(cluster, mutate(_named(base, f"schema-{case}")))
    assert result.returncode != 0, f"{case}: accepted"
    for fragment in fragments:
        assert fragment in result.stderr


def test_status_subresource_and_printer_columns(cluster: LocalCluster) -> None:
    tier = _named(SWARM_TIER, "status-tier")
    assert _apply(cluster, tier).returncode == 0
    # Status written through the main resource is ignored when a status subresource exists...
    with_status = {**copy.deepcopy(tier), "status": {"phase": "Failed"}}
    assert _apply(cluster, with_status).returncode == 0
    got = json.loads(cluster.kubectl("get", "loratier", "status-tier", "-n", NS, "-o", "json").stdout)
    assert got.get("status", {}).get("phase") != "Failed"
    # ...and accepted through /status.
    patch = {"status": {"phase": "Ready", "currentVersion": 7, "servedVersion": 6, "screenedFraction": 0.25}}
    cluster.kubectl(
        "patch", "loratier", "status-tier", "-n", NS, "--subresource=status", "--type=merge", "-p", json.dumps(patch)
    )
    generation = json.loads(cluster.kubectl("get", "lt", "status-tier", "-n", NS, "-o", "json").stdout)
    assert generation["status"]["currentVersion"] == 7

    crd = yaml.safe_load((ROOT / "crds" / "dynamiclora.io_loratiers.yaml").read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    table = cluster.kubectl("get", "loratiers", "status-tier", "-n", NS).stdout.splitlines()
    expected = ["NAME"] + [c["name"].upper() for c in columns if not c.get("priority")]
    assert table[0].split() == expected
    starts = [m.start() for m in re.finditer(r"\S+", table[0])]
    ends = [*starts[1:], None]
    row = {name: table[1][a:b].strip() for name, a, b in zip(expected, starts, ends, strict=True)}
    assert row["AGENT"] == ""  # shared tiers have no agent
    assert (row["LEVEL"], row["RANK"], row["VERSION"], row["SERVED"], row["PHASE"]) == (
        "swarm",
        "32",
        "7",
        "6",
        "Ready",
    )
    wide = cluster.kubectl("get", "loratiers", "status-tier", "-n", NS, "-o", "wide").stdout.splitlines()
    assert "SCREENED" in wide[0].split()
    assert "0.25" in wide[1].split()


def test_short_names_and_category(cluster: LocalCluster) -> None:
    for doc in (SWARM, SWARM_TIER, POLICY):
        assert _apply(cluster, doc).returncode == 0
    assert "support-consolidation" in cluster.kubectl("get", "mp", "-n", NS).stdout
    listing = cluster.kubectl("get", "dynamiclora", "-n", NS, "-o", "name").stdout
    assert "swarm.dynamiclora.io/support" in listing
    assert "loratier.dynamiclora.io/support-swarm" in listing

"""The CRDs are generated from the models, committed unchanged, and structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamiclora.api.crd import KINDS, render_crds

ROOT = Path(__file__).resolve().parents[3]
RENDERED = render_crds()


@pytest.mark.parametrize("folder", ["crds", "charts/dynamiclora/crds"])
def test_committed_crds_match_the_models(folder: str) -> None:
    on_disk = {p.name: p.read_text() for p in (ROOT / folder).glob("*.yaml")}
    assert on_disk == RENDERED, f"{folder} is stale: run `make manifests`"


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk(schema["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_crd_schema_is_structural(name: str) -> None:
    crd = yaml.safe_load(RENDERED[name])
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    forbidden = {"$ref", "anyOf", "oneOf", "allOf", "not", "$defs", "const", "title", "uniqueItems"}
    for path, node in _walk(schema):
        assert not forbidden & set(node), f"{name}{path} uses {forbidden & set(node)}"
        # Structural: every node specifies a type unless it is int-or-string or preserves unknown fields.
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{name}{path} has no type"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{name}{path}"
        if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(
            node.get("exclusiveMinimum"), bool
        ):
            pytest.fail(f"{name}{path}: exclusiveMinimum must be boolean in OpenAPI v3.0")
    assert version["subresources"] == {"status": {}}
    assert "dynamiclora" in crd["spec"]["names"]["categories"]
    assert crd["spec"]["names"]["shortNames"]
    assert any(c["name"] == "Phase" for c in version["additionalPrinterColumns"])


def test_immutable_fields_carry_cel_rules() -> None:
    crds = {k.kind: yaml.safe_load(RENDERED[f"dynamiclora.io_{k.plural}.yaml"]) for k in KINDS}
    tier = crds["LoRATier"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert {"rule": "self == oldSelf", "message": "spec.level is immutable"} in tier["properties"]["level"][
        "x-kubernetes-validations"
    ]
    rules = " ".join(r["rule"] for r in tier["x-kubernetes-validations"])
    assert "oldSelf.agent" in rules and "oldSelf.swarmRef" in rules
    swarm = crds["Swarm"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert swarm["properties"]["agents"]["x-kubernetes-list-map-keys"] == ["name"]


def test_int_or_string_quantities() -> None:
    crd = yaml.safe_load(RENDERED["dynamiclora.io_swarms.yaml"])
    res = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["inference"][
        "properties"
    ]["resources"]["properties"]["limits"]
    assert res["additionalProperties"] == {
        "x-kubernetes-int-or-string": True,
        "description": "A Kubernetes quantity such as 500m, 2Gi or 1.",
    }

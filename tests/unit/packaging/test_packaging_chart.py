"""Chart metadata and values: versions agree with the package, values.yaml satisfies its own schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import dynamiclora

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "dynamiclora"


def _schema() -> dict[str, Any]:
    return dict(json.loads((CHART / "values.schema.json").read_text(encoding="utf-8")))


def _values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8")))


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == dynamiclora.__version__


def test_default_values_satisfy_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(_schema())
    jsonschema.validate(_values(), _schema())


@pytest.mark.parametrize(("path", "value"), [
    (("replicaCount",), 4),
    (("image", "pullPolicy"), "Sometimes"),
    (("image", "digest"), "latest"),
    (("metrics", "port"), 0),
    (("metrics", "serviceMonitor", "interval"), "30 seconds"),
    (("dashboards", "labels"), {"grafana_dashboard": 1}),
    (("typo",), True),
])
def test_schema_rejects(path: tuple[str, ...], value: Any) -> None:
    values = _values()
    node = values
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, _schema())


def test_every_value_is_in_the_schema() -> None:
    # additionalProperties=false everywhere means a value missing from the schema would be rejected;
    # this walks values.yaml so the error names the key instead of failing at install time.
    def walk(values: dict[str, Any], schema: dict[str, Any], where: str) -> None:
        props = schema.get("properties", {})
        for key, value in values.items():
            assert key in props, f"values.yaml {where}{key} is not in values.schema.json"
            sub = props[key]
            if isinstance(value, dict) and "properties" in sub:
                walk(value, sub, f"{where}{key}.")

    walk(_values(), _schema(), "")


def _walk_schema(node: Any, where: str) -> list[str]:
    """Type errors the API server would reject in a CRD schema (it unmarshals into JSONSchemaProps)."""
    bad: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            at = f"{where}.{key}"
            if where.endswith(".properties"):  # field names, not keywords: a field may be called "minimum"
                bad += _walk_schema(value, at)
            elif key in ("minimum", "maximum", "multipleOf") and (isinstance(value, bool) or
                                                                 not isinstance(value, int | float)):
                bad.append(f"{at}: {value!r} is not a number")
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
                bad.append(f"{at}: {value!r} is not a bool (OpenAPI v3.0)")
            elif key in ("minLength", "maxLength", "minItems", "maxItems") and (
                    isinstance(value, bool) or not isinstance(value, int)):
                bad.append(f"{at}: {value!r} is not an integer")
            else:
                bad += _walk_schema(value, at)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            bad += _walk_schema(value, f"{where}[{i}]")
    return bad


@pytest.mark.parametrize("path", sorted((CHART / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_chart_crds_have_well_typed_bounds(path: Path) -> None:
    crd = yaml.safe_load(path.read_text(encoding="utf-8"))
    bad = []
    for version in crd["spec"]["versions"]:
        bad += _walk_schema(version["schema"]["openAPIV3Schema"], f"{version['name']}.openAPIV3Schema")
    assert not bad, f"{path.name} would be rejected by the API server:\n" + "\n".join(bad)

"""Generate CustomResourceDefinitions from the pydantic models.

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 subset. This module
inlines ``$ref``s, turns ``Optional[X]`` into an optional ``X``, ``int | str`` into
``x-kubernetes-int-or-string``, numeric exclusive bounds into the v3.0 boolean form, drops what
structural schemas forbid (``additionalProperties: false`` beside ``properties``, titles, ``const``)
and keeps descriptions, defaults, bounds, enums, patterns and CEL rules.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from dynamiclora import GROUP, VERSION
from dynamiclora.api.common import MAX_SWARM_NAME, SWARM_NAME_PATTERN, cel
from dynamiclora.api.policy import MigrationPolicySpec, MigrationPolicyStatus
from dynamiclora.api.swarm import SwarmSpec, SwarmStatus
from dynamiclora.api.tier import LoRATierSpec, LoRATierStatus


@dataclass(frozen=True)
class Kind:
    """Static description of one custom resource kind."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[dict[str, Any], ...]
    description: str
    rules: tuple[dict[str, Any], ...] = ()  # CEL validations of the whole object (e.g. of metadata.name)


def _col(name: str, path: str, typ: str = "string", priority: int = 0, description: str = "") -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": typ, "jsonPath": path}
    if priority:
        col["priority"] = priority
    if description:
        col["description"] = description
    return col


_AGE = _col("Age", ".metadata.creationTimestamp", "date")

KINDS: tuple[Kind, ...] = (
    Kind(
        kind="Swarm",
        plural="swarms",
        singular="swarm",
        short_names=("sw",),
        spec=SwarmSpec,
        status=SwarmStatus,
        description="A team of LLM agents served by vLLM multi-LoRA pods with a hierarchical LoRA memory.",
        rules=(cel(f"size(self.metadata.name) <= {MAX_SWARM_NAME} && "
                   f"self.metadata.name.matches('{SWARM_NAME_PATTERN}')",
                   f"a Swarm name must be at most {MAX_SWARM_NAME} characters, start with a letter and hold only "
                   "lowercase letters, digits and '-' (no dots): it names the Swarm's Service and is a label value"),),
        columns=(
            _col("Model", ".spec.baseModel.name"),
            _col("Agents", ".status.agentCount", "integer"),
            _col("Served", ".status.servedAgents", "integer", description="Agents served on every ready pod"),
            _col("Ready", ".status.readyReplicas", "integer"),
            _col("Phase", ".status.phase"),
            _AGE,
        ),
    ),
    Kind(
        kind="LoRATier",
        plural="loratiers",
        singular="loratier",
        short_names=("lt", "tier"),
        spec=LoRATierSpec,
        status=LoRATierStatus,
        description="One tier of an agent's LoRA memory stack, or a tier shared by many agents.",
        columns=(
            _col("Level", ".spec.level"),
            _col("Agent", ".spec.agent"),
            _col("Rank", ".spec.rank", "integer"),
            _col("Version", ".status.currentVersion", "integer"),
            _col("Served", ".status.servedVersion", "integer"),
            _col("Screened", ".status.screenedFraction", "number", priority=1),
            _col("TimeScale", ".status.effectiveTimeScaleSeconds", "number", priority=1),
            _col("Stack", ".status.serving.servedVersion", priority=1,
                 description="What is served of the agent (context tiers): its composite version"),
            _col("Phase", ".status.phase"),
            _AGE,
        ),
    ),
    Kind(
        kind="MigrationPolicy",
        plural="migrationpolicies",
        singular="migrationpolicy",
        short_names=("mp", "migpol"),
        spec=MigrationPolicySpec,
        status=MigrationPolicyStatus,
        description="When and how stable patterns migrate from fast tiers to slow ones.",
        columns=(
            _col("Swarm", ".spec.swarmRef"),
            _col("DryRun", ".spec.dryRun", "boolean"),
            _col("Migrated", ".status.migrationsDone", "integer"),
            _col("Throttled", ".status.migrationsThrottled", "integer"),
            _col("LastEval", ".status.lastEvaluationTime", "date"),
            _col("Phase", ".status.phase"),
            _AGE,
        ),
    ),
)

_DROP = {"title", "examples", "discriminator"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Resolve ``$ref``s and translate one schema node to structural OpenAPI v3.0."""
    if isinstance(node, list):
        return [_inline(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        # Keep the field's own description/default over the referenced model's.
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        types = sorted(v.get("type", "") for v in variants)
        if types == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
        elif len(variants) == 1:
            node = {**_inline(variants[0], defs), **{k: v for k, v in node.items()}}
        else:
            raise ValueError(f"cannot express anyOf {variants} structurally")
        if node.get("default", 0) is None:
            node.pop("default")
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**_inline(node.pop("allOf")[0], defs), **node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        # A bool is already OpenAPI 3.0 form (an Optional[...] variant inlined above): translate once.
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out[key] = {k: _inline(v, defs) for k, v in value.items()}
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _inline(value, defs)
        elif key in ("items",):
            out[key] = _inline(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string" if all(isinstance(v, str) for v in out["enum"]) else "integer"
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3.0 schema of a pydantic model (aliases on the wire)."""
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    defs = raw.pop("$defs", {})
    return dict(_inline(raw, defs))


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = openapi_schema(kind.spec)
    status_schema = openapi_schema(kind.status)
    schema: dict[str, Any] = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if kind.rules:
        schema["x-kubernetes-validations"] = list(kind.rules)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "dynamiclora"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["dynamiclora"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(kind.columns),
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def render_crds() -> dict[str, str]:
    """File name -> YAML text of every CRD, deterministic byte for byte."""
    header = "# Generated by `make manifests` from dynamiclora.api; do not edit.\n"
    return {
        f"{GROUP}_{k.plural}.yaml": header + yaml.safe_dump(crd(k), sort_keys=False, width=120)
        for k in KINDS
    }

"""Every spec leaf field is documented where users read it: the generated CRD schema (``kubectl explain``).

It lives next to the "no decorative field" test because it walks the same leaves (``spec_fields``).
"""

from __future__ import annotations

from typing import Any

import pytest

from dynamiclora.api.crd import KINDS, crd

from .spec_fields import Leaf, all_leaves

SCHEMAS = {k.kind: crd(k)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] for k in KINDS}
LEAVES = all_leaves()


def _schema_node(leaf: Leaf) -> dict[str, Any]:
    node = SCHEMAS[leaf.kind]
    for key in leaf.keys:
        node = node["items"] if key == "[]" else node["properties"][key]
    out: dict[str, Any] = node
    return out


def test_every_kind_has_leaves() -> None:
    assert {leaf.kind for leaf in LEAVES} == set(SCHEMAS)
    assert len({(leaf.kind, leaf.path) for leaf in LEAVES}) == len(LEAVES)  # a path names one field of its kind


@pytest.mark.parametrize("leaf", LEAVES, ids=[f"{leaf.kind}:{leaf.path}" for leaf in LEAVES])
def test_every_spec_leaf_has_a_description(leaf: Leaf) -> None:
    assert (leaf.info.description or "").strip(), f"{leaf.kind} {leaf.path}: the model field has no description"
    # The CRD is generated from the models; checking it too catches a generator that drops descriptions.
    assert str(_schema_node(leaf).get("description", "")).strip(), f"{leaf.kind} {leaf.path}: no description in the CRD"

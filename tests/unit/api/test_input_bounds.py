"""Every free-form input of the API is bounded, and durations and paths cannot escape (issue 17).

A CR author is not trusted: an unbounded string, list or map lets one object grow toward etcd's limit
and makes CEL rules too costly to admit; a duration of 999999999999h overflowed the operator's clock
arithmetic and froze the tier; a prefix with ``..`` reached other tenants' records.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dynamiclora.api.common import PvcStorage, S3Storage
from dynamiclora.api.crd import KINDS, crd
from dynamiclora.api.policy import Bandwidth
from dynamiclora.api.swarm import Experience
from dynamiclora.api.tier import Retention, TrainingTemplate


def _unbounded(node: dict[str, Any], path: str) -> list[str]:
    out: list[str] = []
    kind = node.get("type")
    if "enum" in node:
        return out
    if kind == "string" and "maxLength" not in node:
        out.append(path)
    if kind in ("integer", "number") and "maximum" not in node:
        out.append(path)
    if kind == "array":
        out += [path] if "maxItems" not in node else []
        out += _unbounded(node.get("items", {}), f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += [path] if "maxProperties" not in node else []
        out += _unbounded(node["additionalProperties"], f"{path}{{}}")
    for key, sub in node.get("properties", {}).items():
        out += _unbounded(sub, f"{path}.{key}")
    return out


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_every_spec_input_has_a_bound(kind: Any) -> None:
    spec = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert _unbounded(spec, "spec") == []


@pytest.mark.parametrize("text", ["999999999999h", "87601h", "5256000m1s"])
def test_a_duration_longer_than_ten_years_is_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="10 years"):
        Retention(keep_for=text)
    with pytest.raises(ValidationError, match="10 years"):
        TrainingTemplate(schedule=text)
    with pytest.raises(ValidationError, match="10 years"):
        Bandwidth(period=text)
    assert Retention(keep_for="87600h").keep_for == "87600h"


@pytest.mark.parametrize("path", ["..", "../other", "a/../b", "/abs", "a//b", ".hidden", "a/.."])
def test_store_paths_stay_inside_their_root(path: str) -> None:
    for build in (lambda: S3Storage(bucket="bkt", prefix=path), lambda: PvcStorage(claim_name="c", path=path),
                  lambda: Experience(prefix=path)):  # fmt: skip
        with pytest.raises(ValidationError, match="should match pattern"):
            build()
    assert Experience(prefix="interactions/2026_v1.2").prefix == "interactions/2026_v1.2"

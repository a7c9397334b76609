"""Every status the operator writes is its kind's API status type (issue 15: typed status, no pruned keys)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dynamiclora.controllers.conditions import typed_status, write_status

from .fakekube import FakeKube


def _tier(kube: FakeKube) -> dict[str, Any]:
    return kube.add({"apiVersion": "dynamiclora.io/v1alpha1", "kind": "LoRATier",
                     "metadata": {"name": "t", "namespace": "default"}, "spec": {"level": "swarm"}})  # fmt: skip


def test_a_key_the_crd_would_prune_or_a_value_it_would_refuse_fails_before_the_write(kube: FakeKube) -> None:
    body = _tier(kube)
    with pytest.raises(ValidationError, match="currentVersoin"):
        write_status(kube, body, {"currentVersoin": 3})  # a typo the API server would drop silently
    with pytest.raises(ValidationError, match="screenedFraction"):
        write_status(kube, body, {"screenedFraction": 1.5})  # outside [0, 1]: the API server answers 422
    assert not [c for c in kube.calls if c[0] == "patch_status"]
    assert write_status(kube, body, {"currentVersion": 3, "energy": 2})
    assert kube.objects[("LoRATier", "default", "t")]["status"] == {"currentVersion": 3, "energy": 2.0}


def test_unset_fields_are_left_out_and_other_kinds_pass_through() -> None:
    assert typed_status("LoRATier", {"currentVersion": 1, "energy": None}) == {"currentVersion": 1}
    assert typed_status("ConfigMap", {"anything": 1}) == {"anything": 1}
